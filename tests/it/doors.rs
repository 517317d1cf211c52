//! The HTTP decision doors: forward auth (nginx, Traefik, Caddy, APISIX, Kong) and Envoy's HTTP
//! mode, each asked over real HTTP on 127.0.0.1: admission by peer, the original request read
//! from the peer's description, the decision handed back as status, headers and body.

use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::{Setup, TestGateway, hs256_token, raw, send};

const SECRET: &[u8] = b"doors-test-secret-doors-test-secret-0123456";

/// `/api/**` needs a `users` token; `/admin/**` is denied; `/open/**` is anonymous.
const POLICY: &str = "rules:
  - name: admin
    match: {paths: [\"/admin/**\"]}
    effect: deny
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
  - name: open
    match: {paths: [\"/open/**\"]}
    effect: allow
    anonymous: true
";

async fn gateway(door: &str) -> TestGateway {
    Setup {
        listeners: format!("  - name: doors\n    address: 127.0.0.1:0\n    door: {door}\n"),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}identity_headers:\n  x-user-id: \"{{principal.id}}\"\n",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await
}

/// A gateway with one decision door, `door` (its YAML), and one policy file.
async fn one_door(door: &str, policy: &str) -> TestGateway {
    Setup {
        listeners: format!("  - name: doors\n    address: 127.0.0.1:0\n    door: {door}\n"),
        policies: vec![("10-p.yaml".into(), policy.into())],
        ..Setup::default()
    }
    .start()
    .await
}

/// Asks the door as its peer would: the given headers, and what every shipped peer sends
/// that the test did not set (the client as the last `X-Forwarded-For` entry; for forward
/// auth, the method and host). Returns status, headers and body text.
async fn ask(
    gw: &TestGateway,
    target: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut all = headers.to_vec();
    let mut default = |name: &'static str, value: &'static str, also: &str| {
        if !all
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name) || k.eq_ignore_ascii_case(also))
        {
            all.push((name, value));
        }
    };
    default("x-forwarded-for", "127.0.0.1", "x-forwarded-for");
    if target == "/auth" {
        default("x-forwarded-method", "GET", "x-original-method");
        default("x-forwarded-host", "app.test", "x-forwarded-host");
    }
    ask_exactly(gw, target, &all).await
}

/// Asks the door with exactly these headers.
async fn ask_exactly(
    gw: &TestGateway,
    target: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get(target);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, h, body) = send(gw.addr_of("doors"), req.body(Full::default()).unwrap()).await;
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

fn token() -> String {
    hs256_token(SECRET, &json!({}))
}

#[tokio::test]
async fn forward_auth_allows_with_identity_headers_and_denies_like_the_proxy() {
    let gw = gateway("{forward_auth: {}}").await;
    let bearer = format!("Bearer {}", token());
    // Traefik / Caddy style.
    let (status, h, body) = ask(
        &gw,
        "/auth",
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/orders?x=1"),
            ("x-forwarded-host", "app.test"),
            ("x-forwarded-proto", "https"),
            ("authorization", &bearer),
            ("x-user-id", "root"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        h["x-user-id"], "alice",
        "the gateway's value, not the client's"
    );
    // What the peer must remove: the stripped credential, the override and claim families,
    // but never a name it is told to set.
    let remove: Vec<&str> = h["x-portcullis-remove"]
        .to_str()
        .unwrap()
        .split(',')
        .collect();
    for name in [
        "authorization",
        "x-original-url",
        "true-client-ip",
        "forwarded",
    ] {
        assert!(remove.contains(&name), "{name} in {remove:?}");
    }
    assert!(!remove.contains(&"x-user-id"), "{remove:?}");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "app.test");
    // nginx style: X-Original-URI; no token: 401 with the challenge and the JSON body.
    let (status, h, body) = ask(
        &gw,
        "/auth",
        &[
            ("x-original-uri", "/api/orders"),
            ("x-original-method", "POST"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"portcullis\"");
    assert_eq!(h["x-portcullis-error"], "missing_credential");
    assert!(body.contains("\"error\":\"missing_credential\""), "{body}");
    // Path tricks are the proxy's: a deny rule by any spelling, ambiguous ones refused.
    for uri in ["/admin/x", "/%61dmin/x", "/ADMIN/x"] {
        let (status, _, _) = ask(&gw, "/auth", &[("x-forwarded-uri", uri)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
    }
    for uri in ["/a%2Fb", "/open/%252e%252e/admin", "/open;x"] {
        let (status, h, _) = ask(&gw, "/auth", &[("x-forwarded-uri", uri)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(h.contains_key("x-request-id"));
    }
    // The peer forwards the path as sent, so one that canonicalisation would change is
    // refused: `/admin/../open/x` was decided as `/open/x` while nginx forwarded it whole.
    for uri in ["/admin/../open/x", "//open/x", "/open/./x", "/open//x"] {
        let (status, h, _) = ask(&gw, "/auth", &[("x-forwarded-uri", uri)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(h["x-portcullis-error"], "non_canonical_path", "{uri}");
    }
    // Denied on its canonical path: the proxy's own answer, not the 400.
    for uri in ["/open/../admin/x", "//admin/x", "/open/./../admin/x"] {
        let (status, h, _) = ask(&gw, "/auth", &[("x-forwarded-uri", uri)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(h["x-portcullis-error"], "forbidden", "{uri}");
    }
    assert_eq!(
        ask(&gw, "/auth", &[("x-forwarded-uri", "/open/x")]).await.0,
        StatusCode::OK
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"portcullis_denials_total{door="forward-auth",reason="missing_credential"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn forward_auth_bad_descriptions() {
    let gw = gateway("{forward_auth: {}}").await;
    let complete = [
        ("x-forwarded-uri", "/open/x"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", "app.test"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    assert_eq!(ask_exactly(&gw, "/auth", &complete).await.0, StatusCode::OK);
    // Every part of the description is required: nothing falls back on the subrequest's own
    // method (nginx's is always GET) or host (the door's).
    for (missing, reason) in [
        ("x-forwarded-uri", "missing_original_uri"),
        ("x-forwarded-method", "missing_original_method"),
        ("x-forwarded-host", "missing_original_host"),
        ("x-forwarded-for", "missing_client_address"),
    ] {
        let headers: Vec<(&str, &str)> = complete
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let (status, h, body) = ask_exactly(&gw, "/auth", &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "without {missing}: {body}");
        assert_eq!(h["x-portcullis-error"], reason, "without {missing}");
    }
    for (headers, reason) in [
        (vec![], "missing_original_uri"),
        (
            vec![
                ("x-forwarded-uri", "/open/x"),
                ("x-forwarded-host", "a.test"),
                ("x-forwarded-host", "b.test"),
            ],
            "repeated_description_header",
        ),
        (
            vec![
                ("x-forwarded-uri", "/open/x"),
                ("x-forwarded-for", "203.0.113.9, not-an-address"),
            ],
            "invalid_forwarded_for",
        ),
        (
            vec![("x-forwarded-uri", "http://evil/api")],
            "invalid_original_uri",
        ),
        (vec![("x-forwarded-uri", "")], "invalid_original_uri"),
        (
            vec![
                ("x-forwarded-uri", "/open/x"),
                ("x-original-uri", "/admin/x"),
            ],
            "ambiguous_uri",
        ),
        (
            vec![
                ("x-forwarded-uri", "/open/x"),
                ("x-forwarded-method", "GET"),
                ("x-original-method", "DELETE"),
            ],
            "ambiguous_method",
        ),
        (
            vec![
                ("x-forwarded-uri", "/open/x"),
                ("x-forwarded-proto", "gopher"),
            ],
            "invalid_forwarded_proto",
        ),
    ] {
        let (status, h, body) = ask(&gw, "/auth", &headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{headers:?}: {body}");
        assert_eq!(h["x-portcullis-error"], reason, "{headers:?}");
    }
}

#[tokio::test]
async fn forward_auth_reads_the_headers_it_is_configured_with() {
    let gw = gateway(
        "{forward_auth: {headers: {method: X-Auth-Method, uri: X-Auth-Uri, host: X-Auth-Host, proto: X-Auth-Scheme}}}",
    )
    .await;
    let described = |uri: &'static str| {
        [
            ("x-auth-method", "GET"),
            ("x-auth-uri", uri),
            ("x-auth-host", "app.test"),
            ("x-auth-scheme", "https"),
            ("x-forwarded-for", "127.0.0.1"),
        ]
    };
    assert_eq!(
        ask_exactly(&gw, "/auth", &described("/open/x")).await.0,
        StatusCode::OK
    );
    // The configured header is the request: a usual one naming another path is not read,
    // in either direction.
    let mut to_admin = described("/admin/x").to_vec();
    to_admin.push(("x-forwarded-uri", "/open/x"));
    to_admin.push(("x-original-uri", "/open/x"));
    let (status, h, _) = ask_exactly(&gw, "/auth", &to_admin).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(h["x-portcullis-error"], "forbidden");
    // Without it, the request is not described, whatever the usual headers say.
    let usual = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/open/x"),
        ("x-forwarded-host", "app.test"),
        ("x-forwarded-for", "127.0.0.1"),
    ];
    let (status, h, _) = ask_exactly(&gw, "/auth", &usual).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h["x-portcullis-error"], "missing_original_method");
    // A scheme other than http or https is refused as from the usual header.
    let mut bad = described("/open/x").to_vec();
    bad[3] = ("x-auth-scheme", "gopher");
    let (status, h, _) = ask_exactly(&gw, "/auth", &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h["x-portcullis-error"], "invalid_forwarded_proto");
}

#[test]
fn explain_describes_in_the_headers_the_door_reads() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "portcullis.yaml",
        "listeners:\n  - name: doors\n    address: 127.0.0.1:0\n    door: {forward_auth: {headers: {method: X-Auth-Method, uri: X-Auth-Uri}}}\npolicies: {dir: policies}\n",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: open, match: {paths: [\"/open/**\"]}, effect: allow, anonymous: true}\n",
    );
    let (code, text) = cfg.run(
        "explain",
        &[
            "--door",
            "forward-auth",
            "--url",
            "http://app.test/open/x",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["decision"].as_str(), v["status"].as_u64()),
        (Some("allow"), Some(200)),
        "{text}"
    );
}

#[test]
fn forward_auth_headers_must_be_header_names_each_once() {
    for (headers, bad) in [
        ("{uri: \"X Auth Uri\"}", Some("headers.uri")),
        ("{method: X-Auth, uri: x-auth}", Some("headers.uri")),
        ("{host: X-Forwarded-Uri}", Some("headers.host")),
        ("{uri: Host}", Some("headers.uri")),
        ("{method: Connection}", Some("headers.method")),
        ("{host: X-Auth-Host}", None),
    ] {
        let cfg = crate::support::ConfigDir::new("");
        cfg.write(
            "portcullis.yaml",
            format!(
                "listeners:\n  - name: doors\n    address: 127.0.0.1:0\n    door: {{forward_auth: {{headers: {headers}}}}}\npolicies: {{dir: policies}}\n"
            ),
        );
        cfg.write(
            "policies/p.yaml",
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true}\n",
        );
        let (code, text) = cfg.run("check", &[]);
        match bad {
            None => assert_eq!(code, Some(0), "{headers}: {text}"),
            Some(field) => {
                assert_ne!(code, Some(0), "{headers}: {text}");
                assert!(text.contains(field), "{headers}: {text}");
                assert!(text.contains("portcullis.yaml"), "{headers}: {text}");
            }
        }
    }
}

#[tokio::test]
async fn forward_auth_peer_not_allowed() {
    let gw = gateway("{forward_auth: {peers: [10.0.0.0/8]}}").await;
    let (status, h, _) = ask(&gw, "/auth", &[("x-forwarded-uri", "/open/x")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(h["x-portcullis-error"], "peer_not_allowed");
}

#[tokio::test]
async fn forward_auth_status_map_for_nginx() {
    let gw = gateway("{forward_auth: {status_map: {400: 403, 302: 401}}}").await;
    let (status, h, _) = ask(&gw, "/auth", &[("x-original-uri", "/a%2Fb")]).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "nginx passes only 401 and 403"
    );
    assert_eq!(h["x-portcullis-status"], "400");
    assert_eq!(h["x-portcullis-error"], "encoded_slash");
}

#[tokio::test]
async fn forward_auth_client_address_comes_from_the_peer() {
    // `require.networks` sees the original client the peer names, not the peer.
    let policy = "rules:\n  - name: office\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    require: {networks: [203.0.113.0/24]}\n";
    let gw = one_door("{forward_auth: {}}", policy).await;
    let office = [
        ("x-forwarded-uri", "/x"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    assert_eq!(ask(&gw, "/auth", &office).await.0, StatusCode::OK);
    let elsewhere = [
        ("x-forwarded-uri", "/x"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    assert_eq!(ask(&gw, "/auth", &elsewhere).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn client_address_at_the_http_doors() {
    // The peer (loopback here) vouches for the last hop only; entries before it count only
    // through `server.trusted_proxies` (10.0.0.0/8 here), never through the door's peers.
    let policy = "rules:\n  - name: office\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    require: {networks: [203.0.113.0/24]}\n";
    let gw = Setup {
        listeners: "  - name: doors\n    address: 127.0.0.1:0\n    door: {forward_auth: {peers: [127.0.0.0/8]}}\n"
            .into(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        extra: "server:\n  trusted_proxies: [10.0.0.0/8]\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    for (chain, status) in [
        // The peer's own client.
        ("203.0.113.7", StatusCode::OK),
        // A client beside the peer (in its network) names an office address: not believed.
        ("203.0.113.7, 127.0.0.5", StatusCode::FORBIDDEN),
        // Through a trusted proxy: believed.
        ("203.0.113.7, 10.1.2.3", StatusCode::OK),
        // A spoofed entry before an untrusted hop: the hop is the client.
        ("203.0.113.7, 198.51.100.7", StatusCode::FORBIDDEN),
    ] {
        let (got, h, body) = ask(
            &gw,
            "/auth",
            &[("x-forwarded-uri", "/x"), ("x-forwarded-for", chain)],
        )
        .await;
        assert_eq!(got, status, "{chain}: {body}");
        if got == StatusCode::OK {
            assert_eq!(h["x-real-ip"], "203.0.113.7", "{chain}");
        }
    }
}

#[tokio::test]
async fn status_map_targets_are_refusals() {
    // A refusal mapped to 2xx or 3xx would be an allow at the peer: refused at load.
    for (map, ok) in [
        ("{403: 200}", false),
        ("{401: 302}", false),
        ("{200: 403}", false),
        ("{400: 403, 302: 401}", true),
    ] {
        let cfg = crate::support::ConfigDir::new("");
        cfg.write(
            "portcullis.yaml",
            format!(
                "listeners:\n  - name: doors\n    address: 127.0.0.1:0\n    door: {{forward_auth: {{status_map: {map}}}}}\npolicies: {{dir: policies}}\n"
            ),
        );
        cfg.write(
            "policies/p.yaml",
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true}\n",
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code == Some(0), ok, "{map}: {text}");
        if !ok {
            assert!(text.contains("status_map"), "{map}: {text}");
        }
    }
    // A rule's own denial status that a door's map leaves out: the peer that needs the map
    // would answer 500. A warning, naming the rule, the status and the listener.
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "portcullis.yaml",
        "listeners:\n  - name: nginx\n    address: 127.0.0.1:0\n    door: {forward_auth: {status_map: {404: 403}}}\npolicies: {dir: policies}\n",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: gone, match: {paths: [\"/old/**\"]}, effect: deny, denial: {status: 410}}\n  - {name: hidden, match: {paths: [\"/h/**\"]}, effect: deny, denial: {status: 404}}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("rule `gone` refuses with 410") && text.contains("`nginx`"),
        "{text}"
    );
    assert!(!text.contains("rule `hidden`"), "404 is mapped: {text}");
}

#[tokio::test]
async fn envoy_http_path_prefix() {
    let gw = gateway("{envoy_http: {path_prefix: /authz}}").await;
    let bearer = format!("Bearer {}", token());
    let (status, h, body) = ask(
        &gw,
        "/authz/api/orders?x=1",
        &[
            ("host", "app.test"),
            ("authorization", &bearer),
            ("x_user_id", "root"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h["x-user-id"], "alice");
    let remove = h["x-envoy-auth-headers-to-remove"].to_str().unwrap();
    let mut removed: Vec<&str> = remove.split(',').collect();
    removed.sort_unstable();
    for name in ["authorization", "x_user_id", "x-original-url", "forwarded"] {
        assert!(removed.contains(&name), "{name} in {remove}");
    }
    assert!(
        !removed.contains(&"x-user-id"),
        "set, so never removed: {remove}"
    );
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    // Denied: the real status, challenge and body for Envoy to pass on.
    let (status, h, body) = ask(&gw, "/authz/api/orders", &[("host", "app.test")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"portcullis\"");
    assert!(body.contains("missing_credential"), "{body}");
    assert_eq!(
        ask(&gw, "/authz/admin/x", &[("host", "app.test")]).await.0,
        StatusCode::FORBIDDEN
    );
    // Not under the prefix: Envoy did not send it.
    let (status, h, _) = ask(&gw, "/other/api", &[("host", "app.test")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h["x-portcullis-error"], "outside_path_prefix");
    // A prefix written with a trailing slash (or `/` alone): Envoy puts it before the path as
    // it is. Regression: stored trimmed, every request (`/authz//open/x`) was refused 400
    // `non_canonical_path`.
    for (prefix, sent) in [("/authz/", "/authz//open/x"), ("/", "//open/x")] {
        let gw = gateway(&format!("{{envoy_http: {{path_prefix: \"{prefix}\"}}}}")).await;
        let (status, _, body) = ask(&gw, sent, &[("host", "app.test")]).await;
        assert_eq!(status, StatusCode::OK, "{prefix}: {body}");
        let (status, _, _) = ask(
            &gw,
            &sent.replace("/open/", "/admin/"),
            &[("host", "app.test")],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{prefix}");
    }
}

/// A gateway with a proxy listener (`http`), an Envoy HTTP door (`envoy`, path prefix
/// `/authz`) and, when `forward` names it, a forward-auth door; one open rule; `server`
/// settings as YAML lines.
async fn beside_the_proxy(server: &str, forward: &str) -> TestGateway {
    let mut listeners = "  - name: http\n    address: 127.0.0.1:0\n  - name: envoy\n    address: 127.0.0.1:0\n    door: {envoy_http: {path_prefix: /authz}}\n".to_owned();
    if !forward.is_empty() {
        listeners.push_str(&format!(
            "  - name: {forward}\n    address: 127.0.0.1:0\n    door: {{forward_auth: {{}}}}\n"
        ));
    }
    Setup {
        listeners,
        server: server.into(),
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: open, match: {paths: [\"/open/**\"]}, effect: allow, anonymous: true, upstream: echo}\n".into(),
        )],
        ..Setup::default()
    }
    .start()
    .await
}

/// The `Host` Envoy's HTTP mode passes on is the client's: refused with the proxy door's
/// reason codes, not as a description of the door's own.
#[tokio::test]
async fn envoy_http_refuses_a_host_as_the_proxy_does() {
    let gw = beside_the_proxy("", "").await;
    for (name, hosts, reason) in [
        (
            "two hosts",
            &b"Host: a.test\r\nHost: b.test\r\n"[..],
            "multiple_hosts",
        ),
        (
            "a host that is no text",
            b"Host: caf\xe9.test\r\n",
            "invalid_host",
        ),
        // The first one's text is read before a second is seen, at both doors.
        (
            "a host that is no text, then another",
            b"Host: caf\xe9.test\r\nHost: x.test\r\n",
            "invalid_host",
        ),
        // And two are refused after the head's size, at both doors.
        (
            "two hosts in a head over the limit",
            &b"Host: a.test\r\nHost: b.test\r\nX-Pad: "
                .iter()
                .copied()
                .chain([b'a'; 20_000])
                .chain(*b"\r\n")
                .collect::<Vec<u8>>()[..],
            "headers_too_large",
        ),
    ] {
        let head = |target: &str| {
            let mut r = format!(
                "GET {target} HTTP/1.1\r\nConnection: close\r\nX-Forwarded-For: 127.0.0.1\r\n"
            )
            .into_bytes();
            r.extend_from_slice(hosts);
            r.extend_from_slice(b"\r\n");
            r
        };
        let status = if reason == "headers_too_large" {
            431
        } else {
            400
        };
        let proxy = raw(gw.addr_of("http"), &head("/open/x")).await;
        assert_eq!(proxy.status, status, "{name}: {}", proxy.body);
        assert!(proxy.body.contains(reason), "{name}: {}", proxy.body);
        let door = raw(gw.addr_of("envoy"), &head("/authz/open/x")).await;
        assert_eq!(door.status, status, "{name}: {}", door.head);
        assert!(
            door.head
                .to_ascii_lowercase()
                .contains(&format!("x-portcullis-error: {reason}")),
            "{name}: {}",
            door.head
        );
    }
}

/// A door holds the client to the proxy door's `server.max_header_bytes`: the fields its peer
/// adds to describe the request (the method, the target, the host, the scheme, the client
/// address) are not the client's bytes. The largest head the proxy door takes passes every
/// HTTP door, and one byte more is refused by each.
#[tokio::test]
async fn a_door_holds_the_client_to_the_proxy_doors_head_limit() {
    let gw = beside_the_proxy("  max_header_bytes: 8192\n", "forward").await;
    // The client's own head: the same through every door.
    let client = |pad: usize| {
        format!(
            "Host: app.test\r\nConnection: close\r\nX-Pad: {}\r\n",
            "a".repeat(pad)
        )
    };
    let proxy = |pad: usize| format!("GET /open/x HTTP/1.1\r\n{}\r\n", client(pad));
    // As nginx, Traefik and Caddy describe it (the subrequest's own `Host` is the door's).
    let forward = |pad: usize| {
        format!(
            "GET /auth HTTP/1.1\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /open/x\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 127.0.0.1\r\n{}\r\n",
            client(pad).replace("Host: app.test", "Host: door.local")
        )
    };
    let envoy = |pad: usize| {
        format!(
            "GET /authz/open/x HTTP/1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 127.0.0.1\r\n{}\r\n",
            client(pad)
        )
    };
    // The largest pad the proxy door takes, found by asking it.
    let mut largest = None;
    for pad in 8050..8192 {
        let r = raw(gw.addr_of("http"), proxy(pad).as_bytes()).await;
        match r.status {
            200 => largest = Some(pad),
            431 => break,
            s => panic!("pad {pad}: {s} {}", r.body),
        }
    }
    let largest = largest.expect("a pad the proxy door takes");
    let over = largest + 1;
    let r = raw(gw.addr_of("http"), proxy(over).as_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.body);
    for (door, ask) in [
        ("forward", &forward as &dyn Fn(usize) -> String),
        ("envoy", &envoy),
    ] {
        let r = raw(gw.addr_of(door), ask(largest).as_bytes()).await;
        assert_eq!(
            r.status, 200,
            "{door}, the proxy's largest head: {}",
            r.head
        );
        let r = raw(gw.addr_of(door), ask(over).as_bytes()).await;
        assert_eq!(r.status, 431, "{door}, one byte more: {}", r.head);
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("x-portcullis-error: headers_too_large"),
            "{door}: {}",
            r.head
        );
    }
    // `explain` counts as each door does, also when the client's `Connection` names the
    // description's scheme (the door then removes the field, and its bytes still count: the
    // door takes less). Its answer at the door's largest head and at one byte more.
    let config = gw.dir.path().join("portcullis.yaml");
    let explain = |door: &str, connection: &str, pad: usize| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["explain", "-c"])
            .arg(&config)
            .args(["--door", door, "--url", "https://app.test/open/x", "--json"])
            .args(["-H", &format!("Connection: {connection}")])
            .args(["-H", &format!("X-Pad: {}", "a".repeat(pad))])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        v["answer"]["status"].as_u64().unwrap()
    };
    for (door, ask) in [
        ("forward-auth", &forward as &dyn Fn(usize) -> String),
        ("envoy-http", &envoy),
    ] {
        for connection in ["close", "close, x-forwarded-proto"] {
            let sent = |pad: usize| {
                ask(pad).replace("Connection: close", &format!("Connection: {connection}"))
            };
            let listener = if door == "forward-auth" {
                "forward"
            } else {
                "envoy"
            };
            let mut at_door = None;
            for pad in (largest - 60)..=largest {
                match raw(gw.addr_of(listener), sent(pad).as_bytes()).await.status {
                    200 => at_door = Some(pad),
                    431 => break,
                    s => panic!("{door} {connection} {pad}: {s}"),
                }
            }
            let at_door = at_door.expect("a head the door takes");
            assert_eq!(
                raw(gw.addr_of(listener), sent(at_door + 1).as_bytes())
                    .await
                    .status,
                431
            );
            assert_eq!(
                explain(door, connection, at_door),
                200,
                "{door} {connection}"
            );
            assert_eq!(
                explain(door, connection, at_door + 1),
                431,
                "{door} {connection}"
            );
        }
    }
}

#[tokio::test]
async fn decision_only_config_needs_no_upstream() {
    let gw = one_door(
        "{forward_auth: {}}",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true}\n",
    )
    .await;
    assert_eq!(
        ask(&gw, "/auth", &[("x-forwarded-uri", "/x")]).await.0,
        StatusCode::OK
    );
}

/// Beside a proxy listener, a rule that matches `context_extensions` (which only the
/// `envoy_grpc` door carries) needs no upstream; the same rule without them still does.
#[test]
fn a_rule_only_the_grpc_door_matches_needs_no_upstream() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.add_listeners("{name: grpc, address: \"127.0.0.1:0\", door: {envoy_grpc: {}}}");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: billing, match: {paths: [\"/ctx/**\"], context_extensions: {service: billing}}, effect: allow, anonymous: true}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("never matches"), "{text}");
    // Without the gRPC listener, it never matches anywhere: said, still no upstream asked.
    let alone = crate::support::ConfigDir::new("");
    alone.write(
        "policies/p.yaml",
        "rules:\n  - {name: billing, match: {paths: [\"/ctx/**\"], context_extensions: {service: billing}}, effect: allow, anonymous: true}\n",
    );
    let (code, text) = alone.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: rules[0].match.context_extensions: rule `billing` never matches"),
        "{text}"
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: billing, match: {paths: [\"/ctx/**\"]}, effect: allow, anonymous: true}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("rules[0].upstream: an allow rule needs an upstream"),
        "{text}"
    );
}

/// `explain --listener` runs as that listener, with its own settings: of two forward-auth
/// listeners, the one with a status map answers through it; a listener of another door than
/// `--door`, or none of that name, is bad input.
#[test]
fn explain_runs_the_listener_named() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: hidden, match: {paths: [\"/hidden/**\"]}, effect: deny, denial: {status: 404}}\n",
    );
    cfg.add_listeners(
        "{name: nginx, address: \"127.0.0.1:0\", door: {forward_auth: {status_map: {404: 403}}}}, {name: plain, address: \"127.0.0.1:0\", door: {forward_auth: {}}}",
    );
    let explain = |extra: &[&str]| {
        let mut args = vec!["--url", "https://app.test/hidden/x", "--json"];
        args.extend_from_slice(extra);
        let (code, text) = cfg.run("explain", &args);
        (code, text)
    };
    let answer = |extra: &[&str]| {
        let (code, text) = explain(extra);
        assert_eq!(code, Some(1), "{extra:?}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (
            v["answer"]["status"].clone(),
            v["answer"]["headers"].to_string(),
        )
    };
    let (status, headers) = answer(&["--listener", "nginx"]);
    assert_eq!(status, 403, "{headers}");
    assert!(
        headers.contains("x-portcullis-status") && headers.contains("404"),
        "{headers}"
    );
    let (status, _) = answer(&["--listener", "plain", "--door", "forward-auth"]);
    assert_eq!(status, 404);
    // Without `--listener`, the first of the door, named, with a note that there are more.
    assert_eq!(answer(&["--door", "forward-auth"]).0, 403);
    let listener = |extra: &[&str]| {
        let v: serde_json::Value = serde_json::from_str(&explain(extra).1).unwrap();
        (v["listener"].clone(), v["listener_note"].clone())
    };
    let (name, note) = listener(&["--door", "forward-auth"]);
    assert_eq!(name, "nginx");
    assert!(
        note.as_str()
            .is_some_and(|n| n.contains("the first of 2 forward-auth listeners")),
        "{note}"
    );
    assert_eq!(
        listener(&["--listener", "plain"]),
        (serde_json::json!("plain"), serde_json::Value::Null)
    );
    let (code, text) = explain(&["--listener", "plain", "--door", "envoy-grpc"]);
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = explain(&["--listener", "missing"]);
    assert_eq!(code, Some(2), "{text}");
}

/// `explain --door` refuses a method override in the query where the HTTP doors do, and
/// allows it where the door removes it (the proxy cuts it, the gRPC door names it).
#[test]
fn explain_door_refuses_a_method_override_in_the_query() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: forms, match: {paths: [\"/forms/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    for (door, refused) in [
        ("forward-auth", true),
        ("envoy-http", true),
        ("envoy-grpc", false),
        ("proxy", false),
    ] {
        let (code, text) = cfg.run(
            "explain",
            &[
                "--door",
                door,
                "--method",
                "POST",
                "--url",
                "http://app.test/forms/1?_method=DELETE",
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if refused {
            assert_eq!(code, Some(1), "{door}: {text}");
            assert_eq!(v["answer"]["status"], 400, "{door}: {text}");
            assert!(text.contains("method_override_in_query"), "{door}: {text}");
        } else {
            assert_eq!(code, Some(0), "{door}: {text}");
            assert_eq!(v["decision"], "allow", "{door}: {text}");
        }
        // The gRPC door names it for Envoy to remove, and explain says so.
        if door == "envoy-grpc" {
            assert_eq!(
                v["answer"]["query_parameters_to_remove"],
                serde_json::json!(["_method"]),
                "{text}"
            );
        }
    }
}

/// `explain --door` runs that door's code: its reading of the request and its answer.
#[test]
fn explain_runs_each_doors_code() {
    let cfg = crate::support::ConfigDir::new(&format!(
        "{}identity_headers:\n  x-user-id: \"{{principal.id}}\"",
        crate::support::hs256_users("{}")
    ));
    cfg.write("hs.secret", SECRET);
    // The config has a proxy listener: its allow rules need an upstream.
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: api, match: {paths: [\"/api/**\"]}, effect: allow, authenticators: [users], upstream: echo}\n  - {name: admin, match: {paths: [\"/admin/**\"]}, effect: allow, authenticators: [users], require: {scopes: {all_of: [admin]}}, upstream: echo}\n",
    );
    let token = format!("Authorization: Bearer {}", token());
    // A denial of a known principal by a rule: the gRPC door's metadata names both, as the
    // live door's does (`grpc::denials_carry_their_reason_as_dynamic_metadata`).
    let (code, text) = cfg.run(
        "explain",
        &[
            "--door",
            "envoy-grpc",
            "--url",
            "https://app.test/admin/x",
            "-H",
            &token,
            "--json",
        ],
    );
    assert_eq!(code, Some(1), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let meta = &v["answer"]["dynamic_metadata"];
    assert_eq!(
        (&meta["reason"], &meta["rule"], &meta["principal_id"]),
        (
            &serde_json::json!("insufficient_scope"),
            &serde_json::json!("admin"),
            &serde_json::json!("alice")
        ),
        "{text}"
    );
    for door in ["proxy", "envoy-grpc", "envoy-http", "forward-auth"] {
        let (code, text) = cfg.run(
            "explain",
            &[
                "--door",
                door,
                "--url",
                "https://app.test/api/x",
                "-H",
                &token,
                "--json",
            ],
        );
        assert_eq!(code, Some(0), "{door}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["decision"], "allow", "{door}");
        assert_eq!(v["rule"]["name"], "api", "{door}");
        assert!(
            v["rule"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("p.yaml")),
            "{door}: the rule's file: {text}"
        );
        if door == "envoy-grpc" {
            let meta = &v["answer"]["dynamic_metadata"];
            assert_eq!(
                (&meta["principal_id"], &meta["rule"]),
                (&serde_json::json!("alice"), &serde_json::json!("api")),
                "{text}"
            );
        }
        if door != "proxy" {
            assert_eq!(v["answer"]["status"], 200, "{door}");
            let headers = v["answer"]["headers"].to_string();
            assert!(
                headers.contains("x-user-id") && headers.contains("alice"),
                "{door}: {headers}"
            );
            assert!(!text.contains(&token[22..]), "the token is never printed");
        }
        let (code, text) = cfg.run(
            "explain",
            &["--door", door, "--url", "https://app.test/api/x", "--json"],
        );
        assert_eq!(code, Some(1), "{door}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], 401, "{door}");
        if door == "envoy-grpc" {
            assert_eq!(v["answer"]["grpc_code"], 16);
        }
    }
    // What only the gRPC door's reading of a Check refuses (a scheme Envoy never sends), as
    // the door itself would.
    let (code, text) = cfg.run(
        "explain",
        &[
            "--door",
            "envoy-grpc",
            "--url",
            "ftp://app.test/api/x",
            "-H",
            &token,
            "--json",
        ],
    );
    assert_eq!(code, Some(1), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["status"].as_u64(), v["reason"].as_str()),
        (Some(400), Some("invalid_scheme")),
        "{text}"
    );
    // A fragment: the forward-auth and gRPC doors get the raw target (nginx's `$request_uri`)
    // and refuse it, as `explain` now says; the proxy drops it. Regression: the URL parser
    // dropped it, so `explain` allowed what the doors refuse.
    for (door, refused) in [
        ("forward-auth", true),
        ("envoy-grpc", true),
        ("proxy", false),
    ] {
        let (_, text) = cfg.run(
            "explain",
            &[
                "--door",
                door,
                "--url",
                "https://app.test/api/x#frag",
                "-H",
                &token,
                "--json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let status = v["status"].as_u64().or(v["answer"]["status"].as_u64());
        if refused {
            assert_eq!(status, Some(400), "{door}: {text}");
        } else {
            assert_eq!(v["decision"], "allow", "{door}: {text}");
        }
    }
}

/// `explain --door envoy-grpc --context name=value` sends the Check with those context
/// extensions, so a rule narrowed by `match.context_extensions` is explained as Envoy's route
/// would meet it; other doors carry none and refuse the flag.
#[test]
fn explain_passes_context_extensions_to_the_grpc_door() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: billing, match: {paths: [\"/**\"], context_extensions: {service: billing}}, effect: deny}\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let explain = |extra: &[&str]| {
        let mut args = vec!["--url", "https://app.test/x", "--json"];
        args.extend_from_slice(extra);
        let (code, text) = cfg.run("explain", &args);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        (code, v["rule"]["name"].as_str().map(str::to_owned), text)
    };
    let grpc = ["--door", "envoy-grpc"];
    let (code, rule, text) = explain(&[&grpc[..], &["--context", "service=billing"]].concat());
    assert_eq!(
        (code, rule.as_deref()),
        (Some(1), Some("billing")),
        "{text}"
    );
    let (code, rule, text) = explain(&[&grpc[..], &["--context", "service=orders"]].concat());
    assert_eq!((code, rule.as_deref()), (Some(0), Some("all")), "{text}");
    let (code, rule, text) = explain(&grpc);
    assert_eq!((code, rule.as_deref()), (Some(0), Some("all")), "{text}");
    // Given to a door that carries none, or not as `name=value`: bad input, said so.
    let refused = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["explain", "-c"])
            .arg(cfg.dir.path().join("portcullis.yaml"))
            .args(["--url", "https://app.test/x"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text) = refused(&["--context", "service=billing"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("only with --door envoy-grpc"), "{text}");
    let (code, text) = refused(&["--door", "envoy-grpc", "--context", "service"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("`service` is not `name=value`"), "{text}");
}

/// A rule with CORS: Envoy's HTTP mode gets the gateway's own answer to a preflight (204 with
/// the CORS headers, or 403), which Envoy passes on as any status but 200, without the
/// upstream; a denial there carries the CORS headers for the allowed origin. A forward-auth
/// peer would forward a preflight on any 2xx, so there a preflight is decided as any request
/// (here: no credential, 401).
#[tokio::test]
async fn envoy_doors_answer_cors_preflights_and_label_denials() {
    let start = |door: &'static str| {
        Setup {
            listeners: format!("  - name: doors\n    address: 127.0.0.1:0\n    door: {door}\n"),
            policies: vec![("10-p.yaml".into(), crate::support::CORS_API.into())],
            files: vec![("hs.secret".into(), SECRET.to_vec())],
            extra: crate::support::hs256_users("{}"),
            ..Setup::default()
        }
        .start()
    };
    let preflight =
        |origin: &'static str, target: &'static str, extra: &[(&'static str, &'static str)]| {
            let mut req = Request::options(target)
                .header("host", "app.test")
                .header("x-forwarded-for", "127.0.0.1")
                .header("origin", origin)
                .header("access-control-request-method", "PUT");
            for (k, v) in extra {
                req = req.header(*k, *v);
            }
            req.body(Full::default()).unwrap()
        };
    let gw = start("{envoy_http: {}}").await;
    let (status, h, _) = send(
        gw.addr_of("doors"),
        preflight("https://app.example.com", "/api/items/1", &[]),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT, HEAD");
    assert_eq!(h["vary"], "origin");
    let (status, h, body) = send(
        gw.addr_of("doors"),
        preflight("https://evil.example", "/api/items/1", &[]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!h.contains_key("access-control-allow-origin"), "{h:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("cors_origin_not_allowed"),
        "{body:?}"
    );
    let (status, h, _) = ask(
        &gw,
        "/api/items/1",
        &[("host", "app.test"), ("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["vary"], "origin");

    let gw = start("{forward_auth: {}}").await;
    let (status, h, _) = send(
        gw.addr_of("doors"),
        preflight(
            "https://app.example.com",
            "/auth",
            &[
                ("x-forwarded-method", "OPTIONS"),
                ("x-forwarded-uri", "/api/items/1"),
                ("x-forwarded-host", "app.test"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
}

/// `explain` answers a CORS preflight as each door does: the gateway's 204 at the proxy and
/// Envoy doors, a decision (here 401, no credential) at forward auth.
#[test]
fn explain_answers_a_preflight_as_the_door_does() {
    let cfg = crate::support::ConfigDir::new(&crate::support::hs256_users("{}"));
    cfg.write("hs.secret", SECRET);
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: api, match: {paths: [\"/api/**\"]}, effect: allow, authenticators: [users], upstream: echo, cors: {allowed_origins: [\"https://app.example.com\"], allowed_methods: [GET, PUT]}}\n",
    );
    for (door, status, code) in [
        ("proxy", 204, 0),
        ("envoy-grpc", 204, 0),
        ("envoy-http", 204, 0),
        ("forward-auth", 401, 1),
    ] {
        let (exit, text) = cfg.run(
            "explain",
            &[
                "--door",
                door,
                "--method",
                "OPTIONS",
                "--url",
                "https://app.test/api/x",
                "-H",
                "Origin: https://app.example.com",
                "-H",
                "Access-Control-Request-Method: PUT",
                "--json",
            ],
        );
        assert_eq!(exit, Some(code), "{door}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["status"], status, "{door}: {text}");
        if status == 204 {
            let headers = v["answer"]["headers"].to_string();
            assert!(
                headers.contains("access-control-allow-origin")
                    && headers.contains("https://app.example.com"),
                "{door}: {text}"
            );
        }
    }
}

/// `explain` shows a door's own answer to a request it refuses before any rule, as for a
/// decided one: the forward-auth door's status map applied (nginx gets 403 and the real 400
/// in `x-portcullis-status`), the gRPC door's INVALID_ARGUMENT.
/// `explain --door` counts the client's header fields against `server.max_headers` as each
/// door does: `Host` and 99 others pass, `Host` and 100 get 431 `headers_too_many` at every
/// door. (At the forward-auth and Envoy HTTP doors explain said allowed.)
#[test]
fn explain_counts_the_header_fields_as_the_http_doors_do() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: open, match: {paths: [\"/open/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    for door in ["proxy", "forward-auth", "envoy-http", "envoy-grpc"] {
        for (others, code, status) in [(99, 0, 200), (100, 1, 431)] {
            let pads: Vec<String> = (0..others).map(|i| format!("X-Pad-{i}: v")).collect();
            let mut args = vec!["--url", "https://app.test/open/x", "--json", "--door", door];
            for p in &pads {
                args.extend(["-H", p.as_str()]);
            }
            let (got, text) = cfg.run("explain", &args);
            assert_eq!(got, Some(code), "{door}, {others} others: {text}");
            if code == 1 {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                assert_eq!(
                    (&v["status"], &v["reason"]),
                    (
                        &serde_json::json!(status),
                        &serde_json::json!("headers_too_many")
                    ),
                    "{door}: {text}"
                );
            }
        }
    }
}

#[test]
fn explain_shows_the_door_answer_to_a_malformed_request() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.add_listeners(
        "{name: nginx, address: \"127.0.0.1:0\", door: {forward_auth: {status_map: {400: 403}}}}",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: open, match: {paths: [\"/open/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let explain = |extra: &[&str]| {
        let mut args = vec!["--url", "https://app.test/open/%2e%2e/x", "--json"];
        args.extend_from_slice(extra);
        let (code, text) = cfg.run("explain", &args);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        (code, v, text)
    };
    let (code, v, text) = explain(&["--listener", "nginx"]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(v["status"], 403, "{text}");
    assert_eq!(v["answer"]["status"], 403, "{text}");
    let headers = v["answer"]["headers"].to_string();
    assert!(
        headers.contains("\"x-portcullis-status\",\"400\""),
        "the real status for nginx's error_page: {text}"
    );
    let (code, v, text) = explain(&["--door", "envoy-grpc"]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(
        (&v["answer"]["status"], &v["answer"]["grpc_code"]),
        (&serde_json::json!(400), &serde_json::json!(3)),
        "{text}"
    );
    // The proxy door's refusals have their own statuses too, as the proxy answers them.
    let (code, v, text) = explain(&["--method", "CONNECT"]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(
        (&v["status"], &v["reason"]),
        (
            &serde_json::json!(405),
            &serde_json::json!("method_not_allowed")
        ),
        "{text}"
    );
}

/// A rule that relays WebSockets from one origin, and one that relays nothing.
pub(crate) const UPGRADE_POLICY: &str = "rules:
  - name: live
    match: {paths: [\"/live/**\"]}
    effect: allow
    anonymous: true
    upgrade: {protocols: [websocket]}
    cors:
      allowed_origins: [\"https://app.example.com\"]
  - name: open
    match: {paths: [\"/open/**\"]}
    effect: allow
    anonymous: true
";

/// Upgrades asked of a decision door, with what each door must answer (status, reason): as
/// the proxy door decides them, except that an upgrade the rule does not relay is refused
/// rather than sent on as a plain request, which a door cannot make its peer do.
/// (what, path, headers, status, reason).
pub(crate) type UpgradeCase = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
    Option<&'static str>,
);

pub(crate) const UPGRADE_CASES: &[UpgradeCase] = &[
    (
        "websocket from the rule's origin",
        "/live/x",
        &[WS, WS_KEY, ("origin", "https://app.example.com")],
        200,
        None,
    ),
    (
        "websocket without an origin",
        "/live/x",
        &[WS, WS_KEY],
        200,
        None,
    ),
    (
        "websocket from another origin",
        "/live/x",
        &[WS, WS_KEY, ("origin", "https://evil.example")],
        403,
        Some("cors_origin_not_allowed"),
    ),
    (
        "websocket the rule does not relay",
        "/open/x",
        &[WS, WS_KEY],
        403,
        Some("upgrade_not_allowed"),
    ),
    (
        "another protocol",
        "/live/x",
        &[("upgrade", "foo/1"), WS_KEY],
        403,
        Some("upgrade_not_allowed"),
    ),
    (
        "h2c",
        "/open/x",
        &[
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ],
        400,
        Some("h2c_upgrade"),
    ),
    ("no upgrade", "/open/x", &[], 200, None),
];
const WS: (&str, &str) = ("upgrade", "websocket");
const WS_KEY: (&str, &str) = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");

/// Upgrades at the HTTP decision doors (Caddy and Envoy relay what the door allows).
#[tokio::test]
async fn upgrades_at_the_decision_doors_as_at_the_proxy() {
    for door in ["{forward_auth: {}}", "{envoy_http: {}}"] {
        let gw = one_door(door, UPGRADE_POLICY).await;
        for (name, path, headers, status, reason) in UPGRADE_CASES {
            let mut all: Vec<(&str, &str)> = headers.to_vec();
            all.push(("connection", "upgrade"));
            let target = if door.contains("forward") {
                all.push(("x-forwarded-uri", path));
                "/auth"
            } else {
                all.push(("host", "app.test"));
                path
            };
            let (got, _, body) = ask(&gw, target, &all).await;
            assert_eq!(got.as_u16(), *status, "{door} {name}: {body}");
            if let Some(reason) = reason {
                assert!(body.contains(reason), "{door} {name}: {body}");
            }
        }
        // The refusals of a rule that allows the request are denials, as the proxy door
        // counts them; h2c is a malformed request.
        let (_, metrics) = gw.admin_get("/metrics").await;
        let label = if door.contains("forward") {
            "forward-auth"
        } else {
            "envoy-http"
        };
        for (reason, n) in [("upgrade_not_allowed", 2), ("cors_origin_not_allowed", 1)] {
            let line =
                format!("portcullis_denials_total{{door=\"{label}\",reason=\"{reason}\"}} {n}");
            assert!(metrics.contains(&line), "{line} in {metrics}");
        }
        assert!(
            !metrics.contains(r#"kind="upgrade_not_allowed"}"#),
            "{metrics}"
        );
        let line =
            format!("portcullis_bad_requests_total{{door=\"{label}\",kind=\"h2c_upgrade\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

/// Rules and delegates reading `request.headers['host']` at the forward-auth door see the
/// host the peer describes, as the proxy door's rules see the client's own: not the `Host`
/// of the peer's subrequest (Traefik, APISIX and the Kong plugin send the door's).
#[tokio::test]
async fn forward_auth_rules_read_the_described_host() {
    let policy = "rules:
  - name: not-internal
    match: {paths: [\"/cel/**\"]}
    effect: allow
    anonymous: true
    when: request.headers['host'] != 'internal.example'
";
    let gw = one_door("{forward_auth: {}}", policy).await;
    let at = |host: &'static str| {
        [
            ("host", "portcullis"),
            ("x-forwarded-uri", "/cel/x"),
            ("x-forwarded-host", host),
        ]
    };
    let (status, _, body) = ask(&gw, "/auth", &at("internal.example")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("condition_failed"), "{body}");
    let (status, _, body) = ask(&gw, "/auth", &at("app.test")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `explain --door` refuses an upgrade as the door does (`UPGRADE_CASES`).
#[test]
fn explain_refuses_upgrades_as_the_doors_do() {
    let cfg = crate::support::ConfigDir::new("");
    // The config has a proxy listener: its allow rules need an upstream.
    cfg.write(
        "policies/p.yaml",
        UPGRADE_POLICY.replace(
            "    anonymous: true\n",
            "    anonymous: true\n    upstream: echo\n",
        ),
    );
    for door in ["envoy-grpc", "envoy-http", "forward-auth"] {
        for (name, path, headers, status, reason) in UPGRADE_CASES {
            let url = format!("http://app.test{path}");
            let mut args = vec!["--door", door, "--url", &url, "--json"];
            let lines: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            for l in &lines {
                args.extend(["-H", l]);
            }
            let (_, text) = cfg.run("explain", &args);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["answer"]["status"], *status, "{door} {name}: {text}");
            if let Some(reason) = reason {
                assert_eq!(v["reason"], *reason, "{door} {name}: {text}");
            }
        }
    }
}

/// A header the request's `Connection` names is left out of the decision, as at the proxy
/// door, which forwards none of them; a decision door names it to its peer for removal too,
/// so a peer that does not honour `Connection` does not forward what was not decided on.
/// A name the answer sets stays set, never also removed.
#[tokio::test]
async fn headers_named_in_connection_are_removed_too() {
    let gw = gateway("{forward_auth: {}}").await;
    let (status, h, body) = ask(
        &gw,
        "/auth",
        &[
            ("x-forwarded-uri", "/open/x"),
            ("connection", "x-probe, x-real-ip"),
            ("x-probe", "1"),
            ("x-real-ip", "203.0.113.9"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let remove: Vec<&str> = h["x-portcullis-remove"]
        .to_str()
        .unwrap()
        .split(',')
        .collect();
    assert!(remove.contains(&"x-probe"), "{remove:?}");
    assert!(!remove.contains(&"x-real-ip"), "{remove:?}");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    // Nothing named: nothing more.
    let (_, h, _) = ask(
        &gw,
        "/auth",
        &[("x-forwarded-uri", "/open/x"), ("x-probe", "1")],
    )
    .await;
    let remove = h["x-portcullis-remove"].to_str().unwrap().to_owned();
    assert!(!remove.split(',').any(|n| n == "x-probe"), "{remove}");
}

/// A method override in the query (`POST /forms/1?_method=DELETE`, a DELETE to Symfony,
/// Laravel and Express's method-override) cannot be removed by an HTTP door's peer, which
/// forwards the query as the client sent it: the request is refused (400), never allowed
/// past a rule that denies DELETE. The proxy door cuts it; the gRPC door names it for removal.
#[tokio::test]
async fn query_method_override_refused_at_http_doors() {
    const FORMS: &str = "rules:
  - {name: no-delete, match: {paths: [\"/forms/**\"], methods: [DELETE]}, effect: deny}
  - {name: forms, match: {paths: [\"/forms/**\"]}, effect: allow, anonymous: true}
";
    for door in ["{forward_auth: {}}", "{envoy_http: {}}"] {
        let gw = one_door(door, FORMS).await;
        let ask_post = |target: &'static str| {
            let gw = &gw;
            async move {
                let mut req = Request::post(if door.contains("forward") {
                    "/auth"
                } else {
                    target
                })
                .header("x-forwarded-for", "127.0.0.1");
                if door.contains("forward") {
                    req = req
                        .header("x-forwarded-method", "POST")
                        .header("x-forwarded-host", "app.test")
                        .header("x-forwarded-uri", target);
                } else {
                    req = req.header("host", "app.test");
                }
                let (status, h, body) =
                    send(gw.addr_of("doors"), req.body(Full::default()).unwrap()).await;
                (status, h, String::from_utf8_lossy(&body).into_owned())
            }
        };
        for target in [
            "/forms/1?_method=DELETE",
            "/forms/1?a=1&%5Fmethod=DELETE",
            "/forms/1?_METHOD=delete",
            "/forms/1?_method[]=DELETE",
            "/forms/1?a=1;_method=DELETE",
        ] {
            let (status, h, body) = ask_post(target).await;
            let (status, reason) = if door.contains("envoy") {
                (status, body.clone())
            } else {
                (
                    status,
                    h.get("x-portcullis-error")
                        .map_or(String::new(), |v| v.to_str().unwrap().to_owned()),
                )
            };
            assert_eq!(status, StatusCode::BAD_REQUEST, "{door} {target}: {body}");
            assert!(
                reason.contains("method_override_in_query"),
                "{door} {target}: {reason} {body}"
            );
        }
        // Names that no framework reads as the override pass as before.
        for target in ["/forms/1?method=DELETE&payment_method=card", "/forms/1"] {
            let (status, _, body) = ask_post(target).await;
            assert_eq!(status, StatusCode::OK, "{door} {target}: {body}");
        }
    }
}

/// A request its peer abandons while the decision waits (here on an introspection endpoint
/// that never answers) is still counted and logged, as 499 `connection_closed`, at each
/// decision door, as at the proxy door: nginx, Envoy and their clients give up, and a scanner
/// that times its requests out must not be invisible.
#[tokio::test]
async fn a_request_the_peer_abandons_is_still_logged() {
    use tokio::io::AsyncWriteExt;
    // An introspection endpoint that reads and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let gw = Setup {
        listeners: "  - name: fa\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n  - name: eh\n    address: 127.0.0.1:0\n    door: {envoy_http: {}}\n  - name: eg\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - name: intro\n    match: {paths: [\"/intro/**\"]}\n    effect: allow\n    authenticators: [opaque]\n".into(),
        )],
        files: vec![("client.secret".into(), b"s3cret".to_vec())],
        extra: format!(
            "authenticators:\n  opaque:\n    introspection:\n      endpoint: http://{idp}/introspect\n      client_id: gateway\n      client_secret: {{file: client.secret}}\n      timeout: 10s\n      audiences: [api]\n"
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let heads = [
        (
            "fa",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-Uri: /intro/a\r\nX-Forwarded-For: 198.51.100.9\r\nAuthorization: Bearer opaque-token-1\r\n\r\n",
        ),
        (
            "eh",
            "GET /intro/a HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 198.51.100.9\r\nAuthorization: Bearer opaque-token-2\r\n\r\n",
        ),
    ];
    for (listener, head) in heads {
        let mut s = tokio::net::TcpStream::connect(gw.addr_of(listener))
            .await
            .unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(s);
    }
    // Envoy resets the call: the Check's future is dropped.
    let url = format!("http://{}", gw.addr_of("eg"));
    let mut c = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(url)
        .await
        .unwrap();
    let call = tokio::spawn(async move {
        let req = crate::grpc::check(
            "/intro/a",
            "198.51.100.9",
            &[("authorization", "Bearer opaque-token-3")],
        );
        let _ = c.check(req).await;
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    call.abort();
    let _ = call.await;
    for door in ["forward-auth", "envoy-http", "envoy-grpc"] {
        let series = format!(
            r#"portcullis_requests_total{{door="{door}",decision="error",status="other"}} 1"#
        );
        let counted = crate::support::eventually(std::time::Duration::from_secs(5), || {
            let series = series.clone();
            let gw = &gw;
            async move { gw.admin_get("/metrics").await.1.contains(&series) }
        })
        .await;
        assert!(counted, "{series}: {}", gw.admin_get("/metrics").await.1);
    }
    holder.abort();
}

/// An identity value the gateway leaves out (a subject with a line break) is counted at the
/// door that answered, as the proxy counts its own.
#[tokio::test]
async fn identity_values_left_out_are_counted_by_door() {
    let gw = gateway("{forward_auth: {}}").await;
    let bearer = format!(
        "Bearer {}",
        hs256_token(SECRET, &json!({"sub": "alice\r\nx-admin: true"}))
    );
    let (status, h, body) = ask(
        &gw,
        "/auth",
        &[
            ("x-forwarded-uri", "/api/orders"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!h.contains_key("x-user-id"), "{h:?}");
    assert!(!h.contains_key("x-admin"), "{h:?}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_identity_headers_refused_total{door="forward-auth"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_identity_headers_refused_total{door="proxy"} 0"#),
        "{metrics}"
    );
}

/// A body sent to a decision door with the head (Envoy's HTTP mode with `with_request_body`)
/// is dropped, and the peer's connection serves the next check; a large one ends the
/// connection after the answer. The door never waits for a body it does not need.
#[tokio::test]
async fn a_body_sent_to_a_door_keeps_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway("{envoy_http: {}}").await;
    let exchange = |request: Vec<u8>| {
        let addr = gw.addr_of("doors");
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(&request).await.unwrap();
            let mut buf = Vec::new();
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf))
                    .await;
            assert!(read.is_ok(), "the door left the connection open");
            String::from_utf8_lossy(&buf).into_owned()
        }
    };
    let next = "GET /open/x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n";
    for (target, status) in [("/admin/x", "403"), ("/open/x", "200")] {
        let text = exchange(
            format!(
                "POST {target} HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello{next}"
            )
            .into_bytes(),
        )
        .await;
        let statuses: Vec<_> = text
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, [status, "200"], "{text}");
        assert!(
            !text
                .split("\r\n\r\n")
                .next()
                .unwrap()
                .to_ascii_lowercase()
                .contains("connection: close"),
            "{text}"
        );
    }
    let mut big = format!(
        "POST /open/x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        100 * 1024
    )
    .into_bytes();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(next.as_bytes());
    let text = exchange(big).await;
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// A rate limit met at a decision door is counted under that door, as its denial is.
#[tokio::test]
async fn rate_limits_are_counted_by_door() {
    let gw = Setup {
        listeners: "  - name: doors\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n".into(),
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: two}\n".into(),
        )],
        extra: "rate_limits:\n  two: {key: client_ip, requests: 2, per: 1h}\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                ask(&gw, "/auth", &[("x-forwarded-uri", "/x")])
                    .await
                    .0
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 429]);
    let (_, metrics) = gw.admin_get("/metrics").await;
    for (door, outcome, n) in [
        ("forward-auth", "allowed", 2),
        ("forward-auth", "limited", 1),
        ("forward-auth", "shadow_limited", 0),
    ] {
        let line = format!(
            "portcullis_ratelimit_total{{limit=\"two\",door=\"{door}\",outcome=\"{outcome}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    // No series for a door the config does not serve (here not even the proxy).
    assert!(!metrics.contains("door=\"proxy\",outcome"), "{metrics}");
}
