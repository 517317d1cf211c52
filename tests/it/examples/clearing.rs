//! What each shipped peer config clears of a client's request: the door's families of
//! spoofable headers (`authz::spoofable`), checked name by name against the lists the door
//! itself uses, so a name added there fails here until every example clears it (or says why
//! it cannot). nginx and Caddy also run for real in `peers`; these checks cover the names
//! those tests do not send, and the peers that cannot run here.

use std::collections::BTreeSet;
use std::process::Command;

use http::HeaderName;
use portcullis::authz::spoofable::{Family, Spoofable, family};

use super::{identity_headers, lower, strings, yaml};
use crate::peers::{example, tool};

/// The infrastructure family's exact names (the door names them only when it sees them): the
/// list its `family` matches against, so a name added there fails here until every example
/// clears it.
pub const INFRASTRUCTURE: &[&str] = portcullis::authz::spoofable::INFRASTRUCTURE_NAMES;

/// The infrastructure family's prefixes, from the same place.
pub fn infrastructure_prefixes() -> Vec<&'static str> {
    portcullis::authz::spoofable::infrastructure_prefixes().collect()
}

/// Every name a peer in front of the forward-auth door clears by name, lowercase: the
/// override and client-address-claim families as the door names them, the infrastructure
/// names, and `forwarded`.
fn cleared_by_name() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in Spoofable::new(std::iter::empty::<&HeaderName>(), Vec::new()).named_for_removal(false)
    {
        let f = family(n.as_str());
        assert!(
            matches!(f, Some(Family::Override | Family::Claim)),
            "{n}: {f:?}"
        );
        out.insert(n.as_str().to_owned());
    }
    for &n in INFRASTRUCTURE {
        assert_eq!(family(n), Some(Family::Infrastructure), "{n}");
        out.insert(n.to_owned());
    }
    for p in infrastructure_prefixes() {
        assert_eq!(
            family(&format!("{p}x")),
            Some(Family::Infrastructure),
            "{p}"
        );
    }
    assert_eq!(family("forwarded"), Some(Family::Forwarding));
    out.insert("forwarded".to_owned());
    out
}

/// Every spelling of a dashed name with `_` or `-` at each separator, the dashed one first.
fn spellings(dashed: &str) -> Vec<String> {
    let parts: Vec<&str> = dashed.split('-').collect();
    let seps = parts.len() - 1;
    (0..1u32 << seps)
        .map(|mask| {
            let mut s = parts[0].to_owned();
            for (i, p) in parts[1..].iter().enumerate() {
                s.push(if mask & (1 << i) == 0 { '-' } else { '_' });
                s.push_str(p);
            }
            s
        })
        .collect()
}

/// A header name as Go's `CanonicalHeaderKey` writes it (Caddy and Traefik match prefixes
/// against it): upper case after each `-`, lower case elsewhere.
fn go_canonical(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// What the example config's identity headers are.
fn identity() -> BTreeSet<String> {
    identity_headers("examples/portcullis/portcullis.yaml")
}

#[test]
fn spellings_and_canonical_names() {
    assert_eq!(
        spellings("x-user-id"),
        ["x-user-id", "x_user-id", "x-user_id", "x_user_id"]
    );
    assert_eq!(spellings("forwarded"), ["forwarded"]);
    assert_eq!(go_canonical("x-ssl-client-"), "X-Ssl-Client-");
}

/// nginx: every name cleared in `location /` (`proxy_set_header NAME ""`), the decided values
/// set, the credentials removed when the door lists them, underscore names dropped.
#[test]
fn nginx_clears_every_family_it_can() {
    let conf = example("examples/nginx/nginx.conf");
    let start = conf.find("        location / {").expect("location /");
    let end = start
        + conf[start..]
            .find("\n        }\n")
            .expect("end of location /");
    let location = &conf[start..end];
    let set: Vec<(String, &str)> = location
        .lines()
        .filter_map(|l| l.trim().strip_prefix("proxy_set_header "))
        .map(|l| {
            let (name, value) = l.split_once(' ').unwrap();
            (name.to_ascii_lowercase(), value.trim_end_matches(';'))
        })
        .collect();
    let value = |name: &str| {
        let v: Vec<&str> = set.iter().filter(|(n, _)| n == name).map(|x| x.1).collect();
        assert_eq!(v.len(), 1, "location / sets {name} {} times", v.len());
        v[0]
    };
    for name in cleared_by_name() {
        assert_eq!(value(&name), "\"\"", "location / does not clear {name}");
    }
    for name in identity() {
        let var = format!("$pc_{}", name.trim_start_matches("x-").replace('-', "_"));
        assert_eq!(value(&name), var, "{name}");
    }
    assert_eq!(value("x-real-ip"), "$pc_real_ip");
    assert_eq!(value("x-forwarded-host"), "$pc_forwarded_host");
    assert_eq!(value("authorization"), "$pc_authorization");
    assert_eq!(value("x-api-key"), "$pc_api_key");
    for line in [
        "auth_request_set $pc_real_ip $upstream_http_x_real_ip;",
        "auth_request_set $pc_forwarded_host $upstream_http_x_forwarded_host;",
        "auth_request_set $pc_remove $upstream_http_x_portcullis_remove;",
        "map $pc_remove $pc_authorization {",
        "\"~*(^|,)authorization(,|$)\" \"\";",
        "default $http_authorization;",
        "map $pc_remove $pc_api_key {",
        "\"~*(^|,)x-api-key(,|$)\" \"\";",
        "default $http_x_api_key;",
        "underscores_in_headers off;",
        "ignore_invalid_headers on;",
        "load_module /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so;",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "nginx.conf lacks `{line}`"
        );
    }
}

/// nginx: the prefix families go with headers-more, in the server block (before the auth
/// subrequest), matched case-insensitively.
#[test]
fn nginx_clears_the_prefix_families() {
    let conf = example("examples/nginx/nginx.conf");
    let line = conf
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("more_clear_input_headers "))
        .expect("more_clear_input_headers");
    let cleared: BTreeSet<String> = line
        .trim_start_matches("more_clear_input_headers ")
        .trim_end_matches(';')
        .split_whitespace()
        .map(|p| p.trim_matches('"').to_ascii_lowercase())
        .collect();
    for p in infrastructure_prefixes() {
        assert!(cleared.contains(&format!("{p}*")), "nginx.conf keeps {p}*");
    }
    let server = conf.find("    server {").expect("server");
    let location = conf.find("        location / {").expect("location /");
    let at = conf.find("        more_clear_input_headers ").unwrap();
    assert!(
        server < at && at < location,
        "in the server block, before the locations"
    );
}

/// Caddy: every name and prefix deleted before `forward_auth` (prefixes as Go spells them),
/// every underscore name, X-Real-IP copied from the door, the credentials removed when the
/// door lists them.
#[test]
fn caddy_clears_every_family() {
    let conf = example("examples/caddy/Caddyfile");
    let at = conf.find("\t\tforward_auth ").expect("forward_auth");
    let before = &conf[..at];
    let deleted: Vec<&str> = before
        .lines()
        .filter_map(|l| l.trim().strip_prefix("request_header -"))
        .collect();
    let lowered: BTreeSet<String> = deleted.iter().map(|d| d.to_ascii_lowercase()).collect();
    for name in cleared_by_name().into_iter().chain(identity()) {
        assert!(lowered.contains(&name), "Caddyfile keeps {name}");
    }
    assert!(deleted.contains(&"*_*"), "Caddyfile keeps underscore names");
    assert!(deleted.contains(&"*.*"), "Caddyfile keeps names with a dot");
    assert!(lowered.contains("x-real-ip"));
    for p in infrastructure_prefixes() {
        let pattern = format!("{}*", go_canonical(p));
        assert!(deleted.contains(&&*pattern), "Caddyfile keeps {pattern}");
    }
    let copy = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("copy_headers "))
        .expect("copy_headers");
    let copied = lower(copy.split_whitespace().map(str::to_owned));
    for name in ["x-real-ip", "x-portcullis-remove"] {
        assert!(copied.contains(name), "copy_headers lacks {name}");
    }
    for line in [
        "@strip_authorization header_regexp X-Portcullis-Remove (^|,)authorization(,|$)",
        "request_header @strip_authorization -Authorization",
        "@strip_api_key header_regexp X-Portcullis-Remove (^|,)x-api-key(,|$)",
        "request_header @strip_api_key -X-Api-Key",
        "request_header -X-Portcullis-Remove",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == line),
            "Caddyfile lacks `{line}`"
        );
    }
    let after = &conf[at..];
    assert!(
        after.find("-X-Portcullis-Remove\n").unwrap() < after.find("\t\treverse_proxy ").unwrap(),
        "the list is removed before the request goes on"
    );
}

/// Traefik: the names in front of ForwardAuth, every spelling of the identity headers, but not
/// X-Forwarded-Port and -Server (Traefik's own for a client it does not trust); the prefixes
/// and underscore names through ForwardAuth's authResponseHeadersRegex.
#[test]
fn traefik_clears_what_it_can() {
    let c = yaml("examples/traefik/dynamic.yaml");
    let http = &c["http"];
    assert_eq!(
        strings(&http["routers"]["app"]["middlewares"]),
        ["strip-spoofable", "portcullis"]
    );
    let strip = http["middlewares"]["strip-spoofable"]["headers"]["customRequestHeaders"]
        .as_mapping()
        .expect("customRequestHeaders");
    let mut removed = BTreeSet::new();
    for (k, v) in strip {
        assert_eq!(v.as_str(), Some(""), "{k:?} is set, not removed");
        // Traefik deletes Go's canonical spelling: case does not matter, `_` and `-` do.
        removed.insert(k.as_str().unwrap().to_ascii_lowercase());
    }
    let owned = ["x-forwarded-port", "x-forwarded-server"];
    for name in cleared_by_name() {
        if !owned.contains(&name.as_str()) {
            assert!(removed.contains(&name), "strip-spoofable keeps {name}");
        }
    }
    for name in identity() {
        // The dashed spelling is authResponseHeaders' to replace.
        for s in spellings(&name).into_iter().skip(1) {
            assert!(removed.contains(&s), "strip-spoofable keeps {s}");
        }
    }
    let fa = &http["middlewares"]["portcullis"]["forwardAuth"];
    let copied = lower(strings(&fa["authResponseHeaders"]));
    assert!(copied.contains("x-real-ip"));
    // The prefixes and every underscore name, deleted by the regex ForwardAuth copies with.
    let prefixes = infrastructure_prefixes().join("|");
    assert_eq!(
        fa["authResponseHeadersRegex"].as_str(),
        Some(&*format!("(?i)^({prefixes})|[_.]")),
        "authResponseHeadersRegex"
    );
}

/// APISIX: the serverless pre-function (rewrite phase, before forward-auth) removes every
/// name, prefix and underscore name; forward-auth hands the door's list to the post-function
/// (access phase, after it). tests/apisix/functions_test.lua runs both with Lua 5.1.
#[test]
fn apisix_clears_every_family() {
    let c = yaml("examples/apisix/apisix.yaml");
    let plugins = &c["routes"][0]["plugins"];
    let function = |plugin: &str, phase: &str| {
        let p = &plugins[plugin];
        assert_eq!(p["phase"].as_str(), Some(phase), "{plugin}");
        let functions = strings(&p["functions"]);
        assert_eq!(functions.len(), 1, "{plugin}");
        functions[0].clone()
    };
    let pre = function("serverless-pre-function", "rewrite");
    let post = function("serverless-post-function", "access");
    for name in cleared_by_name().into_iter().chain(identity()) {
        assert!(
            pre.contains(&format!("\"{name}\"")),
            "the pre-function keeps {name}"
        );
    }
    for p in infrastructure_prefixes()
        .into_iter()
        .chain(["x-forwarded-", "x-original-"])
    {
        assert!(
            pre.contains(&format!("\"{p}\"")),
            "the pre-function keeps {p}*"
        );
    }
    let upstream = lower(strings(&plugins["forward-auth"]["upstream_headers"]));
    assert!(upstream.contains("x-portcullis-remove"));

    let Some(lua) = tool(&["lua5.1", "luajit"], "lua5.1") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (pre_path, post_path) = (dir.path().join("pre.lua"), dir.path().join("post.lua"));
    std::fs::write(&pre_path, pre).unwrap();
    std::fs::write(&post_path, post).unwrap();
    let out = Command::new(&lua)
        .arg("tests/apisix/functions_test.lua")
        .arg(&pre_path)
        .arg(&post_path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/apisix/functions_test.lua: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kong: the plugin's own infrastructure lists (it applies the door's list for the rest;
/// tests/kong/plugin_test.lua runs it).
#[test]
fn kong_plugin_clears_infrastructure() {
    let handler = example("examples/kong/kong/plugins/portcullis/handler.lua");
    for &name in INFRASTRUCTURE {
        assert!(
            handler.contains(&format!("[\"{name}\"] = true")),
            "handler.lua lacks {name}"
        );
    }
    let prefixes = handler
        .lines()
        .find(|l| l.starts_with("local INFRASTRUCTURE_PREFIXES"))
        .expect("INFRASTRUCTURE_PREFIXES");
    for p in infrastructure_prefixes() {
        assert!(
            prefixes.contains(&format!("\"{p}\"")),
            "handler.lua lacks {p}"
        );
    }
}
