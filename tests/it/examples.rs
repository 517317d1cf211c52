//! The shipped examples and deployment files that no peer here can run: each is parsed and
//! the fields that make it work are checked against the Portcullis config it goes with
//! (addresses, identity headers, status maps). The Portcullis configs pass `check`; the Kong
//! plugin's Lua is syntax-checked and run against stand-ins for Kong; the compose file's key
//! script runs, and the keys it makes authenticate through `config/compose.yaml`.
//! nginx and Caddy run for real in `peers`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

use crate::peers::{example, tool};

mod clearing;

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
pub(crate) fn identity_headers(config: &str) -> BTreeSet<String> {
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
fn caddy_copies_the_identity_headers() {
    let conf = example("examples/caddy/Caddyfile").to_ascii_lowercase();
    let copy = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("copy_headers "))
        .expect("copy_headers");
    let copied = lower(copy.split_whitespace().map(str::to_owned));
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        assert!(copied.contains(&name), "copy_headers lacks {name}");
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
    // Named for Traefik 3.3+ (older ones refuse the file for an unknown field).
    assert!(
        example("examples/traefik/dynamic.yaml").contains("# preserveLocationHeader: true"),
        "a relative login redirect is resolved against the door's address otherwise"
    );
    let copied = lower(strings(&fa["authResponseHeaders"]));
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        assert!(copied.contains(&name), "authResponseHeaders lacks {name}");
    }
    let router = &http["routers"]["app"];
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
    // Origin and Upgrade: without them a cross-site WebSocket is decided as a plain GET.
    for name in [
        "authorization",
        "cookie",
        "accept",
        "x-api-key",
        "origin",
        "upgrade",
    ] {
        assert!(sent.contains(name), "request_headers lacks {name}");
    }
    let upstream = lower(strings(&fa["upstream_headers"]));
    for name in identity_headers("examples/portcullis/portcullis.yaml") {
        assert!(upstream.contains(&name), "upstream_headers lacks {name}");
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

/// The `typed_config` of the HTTP filter `name` in an Envoy config, and the names of all
/// HTTP filters in order.
fn envoy_filter(c: &Value, name: &str) -> (Value, Vec<String>) {
    let hcm = &c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
    assert_eq!(
        hcm["name"].as_str(),
        Some("envoy.filters.network.http_connection_manager")
    );
    let tc = &hcm["typed_config"];
    assert_eq!(tc["use_remote_address"].as_bool(), Some(true));
    assert_eq!(
        tc["common_http_protocol_options"]["headers_with_underscores_action"].as_str(),
        Some("REJECT_REQUEST")
    );
    // The path decided on is the path forwarded: resolved before ext_authz, an encoded slash
    // refused (the doors refuse `.`, `..` and empty segments otherwise).
    assert_eq!(tc["normalize_path"].as_bool(), Some(true));
    assert_eq!(tc["merge_slashes"].as_bool(), Some(true));
    assert_eq!(
        tc["path_with_escaped_slashes_action"].as_str(),
        Some("REJECT_REQUEST")
    );
    let filters = tc["http_filters"].as_sequence().unwrap();
    let names = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    let f = filters
        .iter()
        .find(|f| f["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no filter {name}"));
    (f["typed_config"].clone(), names)
}

/// The address and port of an Envoy cluster's one endpoint.
fn envoy_endpoint(c: &Value, cluster: &str) -> (Value, String, u64) {
    let cl = c["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|x| x["name"].as_str() == Some(cluster))
        .unwrap_or_else(|| panic!("no cluster {cluster}"))
        .clone();
    let sa = &cl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    let (host, port) = (
        sa["address"].as_str().unwrap().to_owned(),
        sa["port_value"].as_u64().unwrap(),
    );
    (cl, host, port)
}

/// The port a listener of config/compose.yaml binds.
fn compose_port(name: &str) -> u64 {
    let l = listener("config/compose.yaml", name);
    l["address"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn envoy_grpc_ext_authz() {
    let c = yaml("examples/envoy/envoy-grpc.yaml");
    let (authz, order) = envoy_filter(&c, "envoy.filters.http.ext_authz");
    assert_eq!(
        order.last().map(String::as_str),
        Some("envoy.filters.http.router")
    );
    assert_eq!(
        authz["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    );
    assert_eq!(authz["transport_api_version"].as_str(), Some("V3"));
    assert_eq!(authz["failure_mode_allow"].as_bool(), Some(false));
    assert_eq!(
        authz["status_on_error"]["code"].as_str(),
        Some("ServiceUnavailable")
    );
    assert!(authz["with_request_body"].is_null(), "no request body");
    assert_eq!(authz["include_peer_certificate"].as_bool(), Some(true));
    assert!(authz["http_service"].is_null());
    let cluster = authz["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .unwrap();
    let (cl, host, port) = envoy_endpoint(&c, cluster);
    assert_eq!(
        (host.as_str(), port),
        ("portcullis", compose_port("envoy-grpc"))
    );
    assert!(
        cl["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"]["http2_protocol_options"]
            .is_mapping(),
        "gRPC needs HTTP/2 to the door"
    );
    assert_eq!(envoy_endpoint(&c, "app").1, "upstream");
}

#[test]
fn envoy_http_ext_authz() {
    let c = yaml("examples/envoy/envoy-http.yaml");
    let (authz, _) = envoy_filter(&c, "envoy.filters.http.ext_authz");
    assert_eq!(authz["failure_mode_allow"].as_bool(), Some(false));
    assert!(authz["grpc_service"].is_null());
    let svc = &authz["http_service"];
    let door = listener("config/compose.yaml", "envoy-http");
    assert_eq!(
        svc["path_prefix"].as_str(),
        door["door"]["envoy_http"]["path_prefix"].as_str()
    );
    let cluster = svc["server_uri"]["cluster"].as_str().unwrap();
    let port = compose_port("envoy-http");
    assert_eq!(
        svc["server_uri"]["uri"].as_str(),
        Some(&*format!("http://portcullis:{port}"))
    );
    assert_eq!(envoy_endpoint(&c, cluster).2, port);
    let exact = |list: &Value| -> BTreeSet<String> {
        list["patterns"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|p| p["exact"].as_str().map(str::to_owned))
            .collect()
    };
    let ids = identity_headers("config/compose.yaml");
    let upstream = exact(&svc["authorization_response"]["allowed_upstream_headers"]);
    let decided: BTreeSet<String> = ["x-real-ip", "x-forwarded-host", "cookie"]
        .map(str::to_owned)
        .into();
    assert_eq!(
        upstream,
        &ids | &decided,
        "allowed_upstream_headers: the identity headers, the decided forwarding ones, and what \
         is left of `Cookie` once a cookie credential is cut out"
    );
    // The door needs the client's address, and sees client copies of the identity,
    // forwarding and infrastructure headers, to name them for removal (the override and
    // claim names it names unseen).
    let sent = exact(&authz["allowed_headers"]);
    let wanted = [
        "accept",
        "x-api-key",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-real-ip",
        "x-forwarded-host",
        "forwarded",
    ];
    for name in ids
        .iter()
        .map(String::as_str)
        .chain(wanted)
        .chain(clearing::INFRASTRUCTURE.iter().copied())
    {
        assert!(sent.contains(name), "allowed_headers lacks {name}");
    }
    let prefixes: BTreeSet<&str> = authz["allowed_headers"]["patterns"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["prefix"].as_str())
        .collect();
    for p in clearing::infrastructure_prefixes() {
        assert!(prefixes.contains(p), "allowed_headers lacks {p}*");
    }
    // Names with a dot, which PHP reads as the dashed one (Envoy refuses underscores).
    assert!(
        authz["allowed_headers"]["patterns"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["safe_regex"]["regex"].as_str() == Some(".*[.].*")),
        "allowed_headers lacks names with a dot"
    );
    // A browser's preflight reaches the door, which answers it for a rule with `cors`; its
    // answers, and the CORS headers of denials and allows, reach the browser.
    assert!(sent.contains("origin"), "allowed_headers lacks origin");
    assert!(
        prefixes.contains("access-control-request-"),
        "allowed_headers lacks access-control-request-*"
    );
    for list in [
        "allowed_client_headers",
        "allowed_client_headers_on_success",
    ] {
        let l = &svc["authorization_response"][list];
        assert!(exact(l).contains("vary"), "{list} lacks vary");
        assert!(
            l["patterns"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|p| p["prefix"].as_str() == Some("access-control-")),
            "{list} lacks access-control-*"
        );
    }
    let client = &svc["authorization_response"]["allowed_client_headers"];
    let exact_client = exact(client);
    for name in [
        "www-authenticate",
        "location",
        "retry-after",
        "x-request-id",
    ] {
        assert!(
            exact_client.contains(name),
            "allowed_client_headers lacks {name}"
        );
    }
    assert!(
        client["patterns"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["prefix"].as_str() == Some("ratelimit-")),
        "allowed_client_headers lacks ratelimit-*"
    );
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

/// docker-compose.yml parses, names files that exist, puts Envoy where the doors' `peers`
/// let it ask; its key script makes files that `config/compose.yaml` accepts, and the keys
/// it makes authenticate.
#[test]
fn compose_file_and_its_keys() {
    let c = yaml("docker-compose.yml");
    let services = &c["services"];
    for name in ["envoy", "portcullis", "keys", "upstream", "redis"] {
        assert!(services[name].is_mapping(), "no service {name}");
    }
    // Bind mounts name files of this repository; ${ENVOY_CONFIG:-…} both ways.
    for (name, svc) in services.as_mapping().unwrap() {
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            if !source.starts_with("./") {
                continue;
            }
            let source = source.replace("${ENVOY_CONFIG", "");
            let candidates: Vec<String> = if let Some((head, default)) = source.split_once(":-") {
                let default = default.trim_end_matches('}');
                vec![format!("{head}{default}"), format!("{head}envoy-http.yaml")]
            } else {
                vec![source.clone()]
            };
            for f in candidates {
                assert!(root().join(&f).exists(), "{name:?} mounts missing {f}");
            }
        }
        if svc["build"].as_str() == Some(".") {
            assert!(root().join("Dockerfile").exists());
        }
    }
    let envoy_volume = strings(&services["envoy"]["volumes"]).join(" ");
    assert!(
        envoy_volume
            .contains("./examples/envoy/${ENVOY_CONFIG:-envoy-grpc.yaml}:/etc/envoy/envoy.yaml"),
        "{envoy_volume}"
    );
    // Portcullis reads config/compose.yaml through the ./config mount.
    assert_eq!(
        strings(&services["portcullis"]["command"]),
        ["run", "-c", "/etc/portcullis/compose.yaml"]
    );
    assert!(
        strings(&services["portcullis"]["volumes"])
            .contains(&"./config:/etc/portcullis:ro".to_owned())
    );
    assert_eq!(
        strings(&services["upstream"]["command"]),
        ["echo", "--listen", "0.0.0.0:3000"]
    );
    // Envoy's fixed address is on the network and is the doors' only peer.
    let envoy_ip = services["envoy"]["networks"]["mesh"]["ipv4_address"]
        .as_str()
        .unwrap();
    let subnet: ipnet::IpNet = c["networks"]["mesh"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(subnet.contains(&envoy_ip.parse::<std::net::IpAddr>().unwrap()));
    for (listener_name, door) in [("envoy-grpc", "envoy_grpc"), ("envoy-http", "envoy_http")] {
        let l = listener("config/compose.yaml", listener_name);
        assert_eq!(
            strings(&l["door"][door]["peers"]),
            [format!("{envoy_ip}/32")],
            "{listener_name}"
        );
    }

    // The key script, run as the `keys` service would (twice: the second run keeps the keys),
    // into a temp dir standing for the volume.
    let script = services["keys"]["command"][0].as_str().unwrap();
    assert_eq!(strings(&services["keys"]["entrypoint"]), ["/bin/sh", "-ec"]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let volume = keys.display().to_string();
    let script = script.replace("/var/lib/portcullis", &volume);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_portcullis"))
        .parent()
        .unwrap();
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let run = || {
        let out = Command::new("sh")
            .args(["-ec", &script])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keys script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let printed = run();
    // `apikey new` prints the key alone on its last line of stderr.
    let api_key = printed.lines().last().unwrap_or("").trim().to_owned();
    assert!(api_key.starts_with("pck_"), "no API key printed: {printed}");
    let apikeys = std::fs::read_to_string(keys.join("apikeys.yaml")).unwrap();
    run();
    assert_eq!(
        std::fs::read_to_string(keys.join("apikeys.yaml")).unwrap(),
        apikeys,
        "a second start keeps the keys"
    );

    // config/compose.yaml with the volume at the temp dir: it checks, and both kinds of
    // credential the keys service made are allowed on /v2/orders.
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(config_dir.join("compose/policies")).unwrap();
    std::fs::write(
        config_dir.join("compose.yaml"),
        example("config/compose.yaml").replace("/var/lib/portcullis", &volume),
    )
    .unwrap();
    std::fs::write(
        config_dir.join("compose/policies/10-routes.yaml"),
        example("config/compose/policies/10-routes.yaml"),
    )
    .unwrap();
    let config = config_dir.join("compose.yaml");
    check(&config);
    let portcullis = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let key = keys.join("users-1.key").display().to_string();
    let (ok, token) = portcullis(&[
        "token",
        "mint",
        "--key",
        &key,
        "--alg",
        "ES256",
        "--kid",
        "users-1",
        "--iss",
        "https://login.example.com/",
        "--aud",
        "my-api",
        "--sub",
        "alice",
        "--scope",
        "orders:read",
    ]);
    assert!(ok, "mint with the generated key");
    let config = config.display().to_string();
    for header in [
        format!("Authorization: Bearer {}", token.trim()),
        format!("x-api-key: {api_key}"),
    ] {
        let (ok, text) = portcullis(&[
            "explain",
            "-c",
            &config,
            "--url",
            "http://app.example/v2/orders/7",
            "-H",
            &header,
        ]);
        assert!(ok && text.contains("decision  allow"), "{text}");
    }
    let (_, text) = portcullis(&[
        "explain",
        "-c",
        &config,
        "--url",
        "http://app.example/v2/orders/7",
    ]);
    assert!(text.contains("decision  deny"), "{text}");
}

/// The Dockerfile: a dependency layer built from placeholders for every target Cargo.toml
/// names, the real sources after it, everything `include_str!` reads copied, a small
/// runtime image running as a non-root user; `.dockerignore` keeps build output out.
#[test]
fn dockerfile_builds_dependencies_first() {
    let docker = example("Dockerfile");
    let manifest = example("Cargo.toml");
    let first_build = docker
        .find("cargo build --release --locked")
        .expect("a locked release build");
    let copy_src = docker.find("COPY src src").expect("COPY src");
    assert!(
        first_build < copy_src,
        "dependencies build before the sources arrive"
    );
    assert!(
        docker[..first_build].contains("COPY Cargo.toml Cargo.lock"),
        "the dependency layer depends on the manifest and lock only"
    );
    for line in manifest.lines() {
        if let Some(path) = line.strip_prefix("path = \"") {
            let path = path.trim_end_matches('"');
            if path != "src/main.rs" {
                assert!(
                    docker[..first_build].contains(path),
                    "no placeholder for the target {path}"
                );
            }
        }
    }
    // What the sources include at compile time must be in the image's context too.
    let copied: Vec<&str> = docker
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let includes = ["include_str!(\"", "include_bytes!(\""]
            .into_iter()
            .flat_map(|m| text.split(m).skip(1));
        for quoted in includes {
            let rel = quoted.split('"').next().unwrap();
            let target = file.parent().unwrap().join(rel);
            let target = target.canonicalize().unwrap();
            let in_repo = target.strip_prefix(root().canonicalize().unwrap()).unwrap();
            assert!(
                copied
                    .iter()
                    .any(|c| in_repo.starts_with(c.trim_end_matches('/'))),
                "{} includes {}, which no COPY brings",
                file.display(),
                in_repo.display()
            );
        }
    }
    let runtime = docker.rsplit("\nFROM ").next().unwrap();
    assert!(runtime.starts_with("debian:bookworm-slim"), "{runtime}");
    assert!(runtime.contains("USER 65532:65532"));
    let ignore_file = example(".dockerignore");
    let ignore: BTreeSet<&str> = ignore_file.lines().map(str::trim).collect();
    for pattern in ["target/", ".git", "fuzz/target"] {
        assert!(ignore.contains(pattern), ".dockerignore lacks {pattern}");
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
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
        "examples/envoy/envoy-grpc.yaml",
        "examples/envoy/envoy-http.yaml",
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
