//! The shipped examples and deployment files that no peer here can run: each is parsed and
//! the fields that make it work are checked against the Portcullis config it goes with
//! (addresses, identity headers, status maps). The Portcullis configs pass `check`; the Kong
//! plugin's Lua is syntax-checked and run against stand-ins for Kong.
//! nginx and Caddy run for real in `peers`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

use crate::peers::{example, tool};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&example(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn lower(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// The names of a config's `identity_headers`, lower-cased.
fn identity_headers(config: &str) -> BTreeSet<String> {
    let c = yaml(config);
    let names = c["identity_headers"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_owned());
    let set = lower(names);
    assert!(set.contains("x-user-id"), "{config}: {set:?}");
    set
}

/// The listener `name` of a config.
fn listener(config: &str, name: &str) -> Value {
    yaml(config)["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{config}: no listener {name}"))
        .clone()
}

/// `portcullis check -c config` from the crate root: passes, and its last line is the verdict.
fn check(config: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(config)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout
                .lines()
                .last()
                .unwrap_or("")
                .starts_with("ok: version"),
        "check {}: {}\n{stdout}{}",
        config.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn portcullis_example_config_checks() {
    check(Path::new("examples/portcullis/portcullis.yaml"));
}

/// nginx passes only 2xx, 401 and 403 from `auth_request`: the door maps every other status
/// to one of those, and the nginx config has a branch giving each mapped status back.
#[test]
fn nginx_branches_match_the_door_status_map() {
    let door = listener("examples/portcullis/portcullis.yaml", "nginx");
    let map = door["door"]["forward_auth"]["status_map"]
        .as_mapping()
        .unwrap();
    let mut mapped = BTreeSet::new();
    for (from, to) in map {
        let to = to.as_u64().unwrap();
        assert!(to == 401 || to == 403, "{from:?} maps to {to}");
        mapped.insert(from.as_u64().unwrap());
    }
    let conf = example("examples/nginx/nginx.conf");
    let branches: BTreeSet<u64> = conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("if ($pc_status = "))
        .map(|rest| rest.split(')').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        branches, mapped,
        "nginx.conf branches vs the nginx listener's status_map"
    );
    for code in &branches {
        if *code != 302 {
            assert!(
                conf.contains(&format!("return {code} $pc_body;")),
                "the {code} branch answers {code} with the JSON body"
            );
        }
    }
    // The identity headers it copies are the ones the example config sets.
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        let var = name.replace('-', "_");
        assert!(
            conf.contains(&format!("$upstream_http_{var};")),
            "nginx.conf does not copy {name}"
        );
    }
}

#[test]
fn caddy_copies_and_strips_the_identity_headers() {
    let conf = example("examples/caddy/Caddyfile").to_ascii_lowercase();
    let copy = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("copy_headers "))
        .expect("copy_headers");
    let copied = lower(copy.split_whitespace().map(str::to_owned));
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        assert!(copied.contains(&name), "copy_headers lacks {name}");
        assert!(
            conf.contains(&format!("request_header -{name}\n")),
            "{name}"
        );
        let underscored = name.replace('-', "_");
        assert!(
            conf.contains(&format!("request_header -{underscored}\n")),
            "{underscored}"
        );
    }
    let door = listener("examples/portcullis/portcullis.yaml", "forward-auth");
    let address = door["address"].as_str().unwrap();
    assert!(
        conf.contains(&format!("forward_auth {address} {{")),
        "{address}"
    );
    assert!(door["door"]["forward_auth"]["status_map"].is_null());
}

/// The door address and identity headers of a forward-auth peer's config, against the
/// `forward-auth` listener of examples/portcullis.
fn forward_auth_door_url() -> String {
    let door = listener("examples/portcullis/portcullis.yaml", "forward-auth");
    format!("http://{}/auth", door["address"].as_str().unwrap())
}

#[test]
fn traefik_forward_auth_middleware() {
    let c = yaml("examples/traefik/dynamic.yaml");
    let http = &c["http"];
    let fa = &http["middlewares"]["portcullis"]["forwardAuth"];
    assert_eq!(fa["address"].as_str(), Some(&*forward_auth_door_url()));
    assert_eq!(
        fa["trustForwardHeader"].as_bool(),
        Some(false),
        "Traefik at the edge must not believe client X-Forwarded-*"
    );
    let copied = lower(strings(&fa["authResponseHeaders"]));
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        assert!(copied.contains(&name), "authResponseHeaders lacks {name}");
    }
    let strip = &http["middlewares"]["strip-identity"]["headers"]["customRequestHeaders"];
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        let underscored = name.replace('-', "_");
        let removed = strip.as_mapping().unwrap().iter().any(|(k, v)| {
            k.as_str().unwrap().eq_ignore_ascii_case(&underscored) && v.as_str() == Some("")
        });
        assert!(removed, "strip-identity does not remove {underscored}");
    }
    let router = &http["routers"]["app"];
    assert_eq!(
        strings(&router["middlewares"]),
        ["strip-identity", "portcullis"]
    );
    let service = router["service"].as_str().unwrap();
    assert!(http["services"][service]["loadBalancer"]["servers"][0]["url"].is_string());
}

#[test]
fn apisix_forward_auth_plugin() {
    let text = example("examples/apisix/apisix.yaml");
    assert!(
        text.trim_end().ends_with("#END"),
        "APISIX standalone files end with #END"
    );
    let c: Value = serde_yaml::from_str(&text).unwrap();
    let route = &c["routes"][0];
    let fa = &route["plugins"]["forward-auth"];
    assert_eq!(fa["uri"].as_str(), Some(&*forward_auth_door_url()));
    let sent = lower(strings(&fa["request_headers"]));
    for name in ["authorization", "cookie", "accept", "x-api-key"] {
        assert!(sent.contains(name), "request_headers lacks {name}");
    }
    let upstream = lower(strings(&fa["upstream_headers"]));
    let removed = lower(strings(
        &route["plugins"]["proxy-rewrite"]["headers"]["remove"],
    ));
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        assert!(upstream.contains(&name), "upstream_headers lacks {name}");
        assert!(
            removed.contains(&name),
            "proxy-rewrite keeps the client's {name}"
        );
        assert!(removed.contains(&name.replace('-', "_")), "{name}");
    }
    let client = lower(strings(&fa["client_headers"]));
    for name in [
        "www-authenticate",
        "location",
        "retry-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "x-request-id",
        "content-type",
    ] {
        assert!(client.contains(name), "client_headers lacks {name}");
    }
    assert!(route["upstream"]["nodes"].is_mapping());
}

/// The Kong plugin: Lua 5.1 syntax (Kong runs LuaJIT), its logic against stand-ins for
/// Kong's PDK (tests/kong/plugin_test.lua), and the declarative config naming it.
#[test]
fn kong_plugin_compiles_and_behaves() {
    let plugin = "examples/kong/kong/plugins/portcullis";
    let files = [
        format!("{plugin}/handler.lua"),
        format!("{plugin}/schema.lua"),
    ];
    let Some(compiler) = tool(&["luac5.1", "luajit"], "lua5.1") else {
        return;
    };
    for f in &files {
        let luajit = compiler.ends_with("luajit");
        let out = Command::new(&compiler)
            .args(if luajit { &["-bl"][..] } else { &["-p"][..] })
            .arg(f)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} {f}: {}",
            compiler.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let Some(lua) = tool(&["lua5.1", "luajit"], "lua5.1") else {
        return;
    };
    let out = Command::new(&lua)
        .arg("tests/kong/plugin_test.lua")
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let k = yaml("examples/kong/kong.yml");
    let p = &k["services"][0]["plugins"][0];
    assert_eq!(p["name"].as_str(), Some("portcullis"));
    assert_eq!(
        p["config"]["door_url"].as_str(),
        Some(&*forward_auth_door_url())
    );
    let ids = lower(strings(&p["config"]["identity_headers"]));
    assert_eq!(ids, identity_headers("examples/portcullis/portcullis.yaml"));
    let schema = example(&format!("{plugin}/schema.lua"));
    assert!(schema.contains("name = \"portcullis\""));
}

/// Every example is named in the README's "Behind your gateway" section, and every
/// examples/ path the README names exists.
#[test]
fn readme_names_every_example() {
    let readme = example("README.md");
    for path in [
        "examples/nginx/nginx.conf",
        "examples/caddy/Caddyfile",
        "examples/traefik/dynamic.yaml",
        "examples/apisix/apisix.yaml",
        "examples/kong/",
        "examples/portcullis/portcullis.yaml",
    ] {
        assert!(readme.contains(path), "README does not name {path}");
    }
    for word in readme.split(['`', ' ', '(', ')', ',', '\n']) {
        if let Some(rest) = word.strip_prefix("examples/") {
            let path = format!("examples/{}", rest.trim_end_matches(['.', ':', ';']));
            assert!(root().join(&path).exists(), "README names missing {path}");
        }
    }
}
