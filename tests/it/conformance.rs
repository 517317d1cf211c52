//! One decision through every door. One gateway serves the proxy, the gRPC ext_authz, the
//! Envoy HTTP and the forward-auth doors on one snapshot; one corpus of requests (allowed;
//! denied for each reason code; rate limited; every path trick the proxy refuses; spoofed
//! identity headers in every spelling; missing, expired, wrong-audience and doubled
//! credentials; API keys) is replayed through each, and every door must give the same
//! status, reason code and identity headers.
//!
//! A door is added to `Door::ALL` and to [`ask`]'s `match`, which has no wildcard arm: a new
//! door does not compile until this test asks it too.

use std::collections::{BTreeMap, HashMap};

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis::authn::apikey::hash_of;
use portcullis::request::facts::Door;
use serde_json::{Value, json};

use crate::support::{Setup, TestGateway, hs256_token, raw};

const SECRET: &[u8] = b"conformance-secret-conformance-secret-0123456";
const API_KEY: &str = "pck_conformance_key_0123456789abcdefghijklmnop";

const POLICY: &str = "rules:
  - name: admin
    match: {paths: [\"/admin/**\"]}
    effect: deny
  - name: trace
    match: {paths: [\"/trace/**\"], methods: [TRACE]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: orders
    match: {paths: [\"/orders/**\"]}
    effect: allow
    authenticators: [users, partners]
    require: {scopes: {all_of: [orders:read]}}
    upstream: echo
  - name: staff
    match: {paths: [\"/staff/**\"]}
    effect: allow
    authenticators: [users]
    require: {roles: {any_of: [staff]}}
    upstream: echo
  - name: own
    match: {paths: [\"/users/{id}/**\"]}
    effect: allow
    authenticators: [users]
    when: params.id == principal.id
    upstream: echo
  - name: hidden
    match: {paths: [\"/hidden/**\"]}
    effect: allow
    authenticators: [users]
    require: {roles: {any_of: [ops]}}
    denial: {status: 404}
    upstream: echo
  - name: limited
    match: {paths: [\"/limited/**\"]}
    effect: allow
    anonymous: true
    rate_limit: one
    upstream: echo
  - name: office
    match: {paths: [\"/office/**\"]}
    effect: allow
    anonymous: true
    require: {networks: [10.0.0.0/8]}
    upstream: echo
  - name: public
    match: {paths: [\"/public/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
";

/// Identity headers the config sets; compared at every door.
const IDENTITY: [&str; 4] = ["x-user-id", "x-user-roles", "x-api-key-id", "x-rule"];

async fn gateway() -> TestGateway {
    let extra = format!(
        "{}  partners:
    api_key:
      keys: [{{id: k-1, hash: \"{}\", owner: svc-1, kind: machine, scopes: [orders:read]}}]
identity_headers:
  x-user-id: \"{{principal.id}}\"
  x-user-roles: \"{{principal.roles}}\"
  x-api-key-id: \"{{apikey.id}}\"
  x-rule: \"{{rule.name}}\"
rate_limits:
  one: {{key: header:x-bucket, requests: 1, per: 1h}}
",
        crate::support::hs256_users("{roles_claim: roles}"),
        hash_of(API_KEY),
    );
    Setup {
        listeners: "  - name: http
    address: 127.0.0.1:0
  - name: grpc
    address: 127.0.0.1:0
    door: {envoy_grpc: {}}
  - name: envoy
    address: 127.0.0.1:0
    door: {envoy_http: {path_prefix: /authz}}
  - name: forward
    address: 127.0.0.1:0
    door: {forward_auth: {}}
"
        .into(),
        // The header-keyed limit believes the header only from trusted proxies.
        server: "  trusted_proxies: [127.0.0.0/8]\n".into(),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra,
        ..Setup::default()
    }
    .start()
    .await
}

/// Cases whose path has a `.`, `..` or empty segment: the proxy decides (and forwards) the
/// canonical path, the decision doors refuse them (their peer would forward them as sent).
const REWRITTEN_SEGMENTS: &[&str] = &[
    "public canonical",
    "deny rule slashes",
    "deny rule dots",
    "another user's rows sideways",
];

/// One request of the corpus.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
}

/// What a door answered, in door-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// The reason code (`None` when allowed).
    reason: Option<String>,
    /// Identity headers the upstream gets (allowed requests).
    identity: BTreeMap<String, String>,
    /// The `RateLimit-*` headers the client gets (allowed requests; a 429's are its own).
    limits: BTreeMap<String, String>,
}

/// What an allowed request under a limit is told at every door.
const LIMIT_HEADERS: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: &Value) -> String {
    hs256_token(SECRET, claims)
}

fn corpus() -> Vec<Case> {
    let good = token(&json!({"scope": "orders:read", "roles": ["staff", "dev"]}));
    let no_scope = token(&json!({"scope": "orders:list"}));
    let expired = token(&json!({"exp": now() - 3600}));
    let future = token(&json!({"nbf": now() + 3600}));
    let wrong_aud = token(&json!({"aud": "someone-else"}));
    let wrong_iss = token(&json!({"iss": "https://evil.test"}));
    let bob = token(&json!({"sub": "bob"}));
    let roles_comma = token(&json!({"roles": ["staff", "a,b"]}));
    let forged = {
        let mut t = good.clone();
        t.pop();
        t.push(if good.ends_with('A') { 'B' } else { 'A' });
        t
    };
    let bearer = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let mut cases = vec![
        // Allowed.
        ("public", "GET", "/public/x", vec![]),
        ("public query", "GET", "/public/x?a=1&b=2", vec![]),
        ("public head", "HEAD", "/public/x", vec![]),
        ("public post", "POST", "/public/form", vec![]),
        ("public canonical", "GET", "//public/./a/../x", vec![]),
        ("public encoded unreserved", "GET", "/%70ublic/x", vec![]),
        ("orders with token", "GET", "/orders/7", bearer(&good)),
        (
            "orders with api key",
            "GET",
            "/orders/7",
            h(&[("x-api-key", API_KEY)]),
        ),
        ("staff role", "GET", "/staff/list", bearer(&good)),
        ("own rows", "GET", "/users/alice/orders", bearer(&good)),
        ("trace named by its rule", "TRACE", "/trace/x", vec![]),
        ("limited first", "GET", "/limited/x", vec![]),
        ("public trailing slash", "GET", "/public/", vec![]),
        (
            "public encoded dot in a name",
            "GET",
            "/public/a%2eb",
            vec![],
        ),
        ("own rows of bob", "GET", "/users/bob/x", bearer(&bob)),
        (
            "office through a trusted chain",
            "GET",
            "/office/x",
            h(&[("x-forwarded-for", "10.1.2.3")]),
        ),
        // Denied: no rule, deny rule, methods.
        ("no rule", "GET", "/nowhere", vec![]),
        ("deny rule", "GET", "/admin/users", vec![]),
        ("deny rule case", "GET", "/ADMIN/users", vec![]),
        ("deny rule slashes", "GET", "//admin/users", vec![]),
        ("deny rule dots", "GET", "/public/../admin/users", vec![]),
        ("deny rule encoded", "GET", "/%61dmin/users", vec![]),
        ("trace refused", "TRACE", "/public/x", vec![]),
        ("track refused", "TRACK", "/public/x", vec![]),
        ("lowercase method", "delete", "/public/x", vec![]),
        // Credentials.
        ("missing credential", "GET", "/orders/7", vec![]),
        ("malformed bearer", "GET", "/orders/7", bearer("not-a-jwt")),
        ("forged signature", "GET", "/orders/7", bearer(&forged)),
        ("expired", "GET", "/orders/7", bearer(&expired)),
        ("not yet valid", "GET", "/orders/7", bearer(&future)),
        ("wrong audience", "GET", "/orders/7", bearer(&wrong_aud)),
        ("wrong issuer", "GET", "/orders/7", bearer(&wrong_iss)),
        (
            "unknown api key",
            "GET",
            "/orders/7",
            h(&[("x-api-key", "pck_nope")]),
        ),
        (
            "token and api key",
            "GET",
            "/orders/7",
            vec![
                ("authorization".into(), format!("Bearer {good}")),
                ("x-api-key".into(), API_KEY.into()),
            ],
        ),
        (
            "two bearer tokens",
            "GET",
            "/orders/7",
            vec![
                ("authorization".into(), format!("Bearer {good}")),
                ("authorization".into(), format!("Bearer {bob}")),
            ],
        ),
        (
            "basic auth",
            "GET",
            "/orders/7",
            h(&[("authorization", "Basic YTpi")]),
        ),
        // Requirements.
        ("scope missing", "GET", "/orders/7", bearer(&no_scope)),
        ("role missing", "GET", "/staff/list", bearer(&bob)),
        (
            "another user's rows",
            "GET",
            "/users/alice/orders",
            bearer(&bob),
        ),
        (
            "another user's rows sideways",
            "GET",
            "/users/bob/../alice/orders",
            bearer(&bob),
        ),
        ("hidden route", "GET", "/hidden/x", bearer(&good)),
        ("network", "GET", "/office/x", vec![]),
        (
            "api key where only tokens count",
            "GET",
            "/staff/list",
            h(&[("x-api-key", API_KEY)]),
        ),
        ("hidden route without a token", "GET", "/hidden/x", vec![]),
        // Spoofed identity headers, in every spelling.
        ("spoofed user id", "GET", "/staff/list", {
            let mut v = bearer(&good);
            v.extend(h(&[("x-user-id", "root"), ("X_User_Id", "root")]));
            v
        }),
        (
            "spoofed roles anonymous",
            "GET",
            "/public/x",
            h(&[("x-user-roles", "admin"), ("x_user_roles", "admin")]),
        ),
        ("spoofed api key id", "GET", "/orders/7", {
            let mut v = bearer(&good);
            v.extend(h(&[("X-Api-Key-Id", "k-admin")]));
            v
        }),
        (
            "spoofed rule",
            "GET",
            "/public/x",
            h(&[("x-rule", "admin")]),
        ),
        ("ambiguous role", "GET", "/staff/list", bearer(&roles_comma)),
        (
            "override headers",
            "GET",
            "/public/x",
            h(&[
                ("x-original-url", "/admin"),
                ("x-http-method-override", "DELETE"),
            ]),
        ),
    ];
    // Every path trick the proxy refuses.
    for (name, path) in [
        ("encoded slash", "/public/a%2Fb"),
        ("encoded backslash", "/public/a%5Cb"),
        ("semicolon", "/public;x"),
        ("encoded semicolon", "/admin%3Bx"),
        ("encoded question mark", "/admin%3Fx"),
        ("encoded hash", "/admin%23x"),
        ("double encoding", "/public/%252e%252e/admin"),
        ("double encoding mixed", "/public/%25%32%65%25%32%65/admin"),
        ("encoded dot segment", "/public/%2e%2e/admin"),
        ("dot segment above root", "/.."),
        ("control character", "/public/a%00b"),
        ("invalid percent", "/public/a%zz"),
        ("invalid utf8", "/public/%C3"),
    ] {
        cases.push((name, "GET", path, vec![]));
    }
    cases
        .into_iter()
        .map(|(name, method, path, headers)| Case {
            name,
            method,
            path: path.to_owned(),
            headers,
        })
        .collect()
}

/// Sends `case` through `door` (the rate-limit bucket named per door, so each door starts
/// with a full budget).
async fn ask(gw: &TestGateway, door: Door, case: &Case) -> Answer {
    let mut headers = case.headers.clone();
    headers.push((
        "x-bucket".into(),
        format!("{}-{}", door.as_str(), case.name),
    ));
    match door {
        Door::Proxy => via_proxy(gw, case, &headers).await,
        Door::EnvoyGrpc => via_grpc(gw, case, &headers).await,
        Door::EnvoyHttp => via_http_door(gw, "envoy", case, &headers).await,
        Door::ForwardAuth => via_http_door(gw, "forward", case, &headers).await,
    }
}

/// A raw request (paths go out exactly as written) and its parsed answer.
async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
) -> crate::support::RawResponse {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes()).await
}

fn header_of(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The `RateLimit-*` headers of an allowed answer.
fn limits_of(head: &str, status: u16) -> BTreeMap<String, String> {
    if status != 200 {
        return BTreeMap::new();
    }
    LIMIT_HEADERS
        .iter()
        .filter_map(|n| Some(((*n).to_owned(), header_of(head, n)?)))
        .collect()
}

fn reason_of_body(body: &str) -> Option<String> {
    serde_json::from_str::<Value>(body.trim())
        .ok()?
        .get("error")?
        .as_str()
        .map(str::to_owned)
}

async fn via_proxy(gw: &TestGateway, case: &Case, headers: &[(String, String)]) -> Answer {
    let before = gw.echo.count();
    let r = raw_request(gw.addr_of("http"), case.method, &case.path, headers).await;
    let forwarded = gw.echo.count() > before;
    let mut identity = BTreeMap::new();
    if forwarded {
        let seen = gw.echo.last().unwrap();
        for name in IDENTITY {
            // Every spelling of the name the upstream got.
            for (k, v) in &seen.headers {
                if k.as_str().replace('_', "-") == name {
                    identity.insert(k.as_str().to_owned(), v.to_str().unwrap().to_owned());
                }
            }
        }
    }
    Answer {
        status: r.status,
        reason: if r.status == 200 {
            None
        } else {
            reason_of_body(&r.body)
        },
        identity,
        limits: limits_of(&r.head, r.status),
    }
}

async fn via_http_door(
    gw: &TestGateway,
    listener: &str,
    case: &Case,
    headers: &[(String, String)],
) -> Answer {
    // The peer (on loopback) adds its own client to the chain, as nginx's
    // `$proxy_add_x_forwarded_for` and Envoy do.
    let mut headers = headers.to_vec();
    match headers
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-forwarded-for"))
    {
        Some((_, v)) => v.push_str(", 127.0.0.1"),
        None => headers.push(("x-forwarded-for".into(), "127.0.0.1".into())),
    }
    let headers = &headers[..];
    let r = if listener == "envoy" {
        raw_request(
            gw.addr_of(listener),
            case.method,
            &format!("/authz{}", case.path),
            headers,
        )
        .await
    } else {
        let mut h = headers.to_vec();
        h.push(("x-forwarded-method".into(), case.method.into()));
        h.push(("x-forwarded-uri".into(), case.path.clone()));
        h.push(("x-forwarded-host".into(), "app.test".into()));
        raw_request(gw.addr_of(listener), "GET", "/auth", &h).await
    };
    let mut identity = BTreeMap::new();
    if r.status == 200 {
        for name in IDENTITY {
            if let Some(v) = header_of(&r.head, name) {
                identity.insert(name.to_owned(), v);
            }
        }
    }
    Answer {
        status: r.status,
        reason: if r.status == 200 {
            None
        } else {
            header_of(&r.head, "x-portcullis-error")
        },
        identity,
        limits: limits_of(&r.head, r.status),
    }
}

async fn via_grpc(gw: &TestGateway, case: &Case, headers: &[(String, String)]) -> Answer {
    let mut h: HashMap<String, String> = HashMap::new();
    for (k, v) in headers {
        // Envoy lower-cases names and joins repeated headers with a comma.
        h.entry(k.to_ascii_lowercase())
            .and_modify(|e: &mut String| {
                e.push(',');
                e.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: case.method.into(),
                    host: "app.test".into(),
                    path: case.path.clone(),
                    scheme: "http".into(),
                    headers: h,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    };
    let mut client = AuthorizationClient::connect(format!("http://{}", gw.addr_of("grpc")))
        .await
        .unwrap();
    let resp = client.check(request).await.unwrap().into_inner();
    match resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => Answer {
            status: 200,
            reason: None,
            identity: ok
                .headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .filter(|h| IDENTITY.contains(&h.key.as_str()))
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            // What Envoy adds to the client's response.
            limits: ok
                .response_headers_to_add
                .iter()
                .filter_map(|o| o.header.as_ref())
                .filter(|h| LIMIT_HEADERS.contains(&h.key.as_str()))
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
        },
        Some(HttpResponse::DeniedResponse(d)) => Answer {
            status: d
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .unwrap_or(403),
            reason: resp.status.map(|s| s.message),
            identity: BTreeMap::new(),
            limits: BTreeMap::new(),
        },
        other => panic!("{}: no answer: {other:?}", case.name),
    }
}

#[tokio::test]
async fn every_door_gives_the_same_decision() {
    let gw = gateway().await;
    let cases = corpus();
    assert!(cases.len() >= 60, "the corpus shrank to {}", cases.len());
    let mut failures = Vec::new();
    // The proxy's answers for a few cases, so that agreement is on the right answer.
    let pinned: HashMap<&str, (u16, Option<&str>)> = [
        ("public", (200, None)),
        ("limited first", (200, None)),
        ("public canonical", (200, None)),
        ("deny rule dots", (403, Some("forbidden"))),
        ("lowercase method", (400, Some("invalid_method"))),
        ("trace refused", (405, Some("method_not_allowed"))),
        ("encoded slash", (400, Some("encoded_slash"))),
        ("missing credential", (401, Some("missing_credential"))),
    ]
    .into_iter()
    .collect();
    for case in &cases {
        let reference = ask(&gw, Door::Proxy, case).await;
        if let Some((status, reason)) = pinned.get(case.name) {
            assert_eq!(
                (reference.status, reference.reason.as_deref()),
                (*status, *reason),
                "{}: the proxy's answer",
                case.name
            );
        }
        // An allowed request under a limit says what is left; under none, nothing.
        let told: Vec<&str> = reference.limits.values().map(String::as_str).collect();
        let expected_told: &[&str] = if case.name == "limited first" {
            &["1", "0", "3600"]
        } else {
            &[]
        };
        assert_eq!(
            told, expected_told,
            "{}: the proxy's RateLimit-*",
            case.name
        );
        for door in Door::ALL.into_iter().filter(|d| *d != Door::Proxy) {
            let answer = ask(&gw, door, case).await;
            // The proxy forwards the canonical path; the peer of a decision door forwards the
            // path as sent, so there a path canonicalisation would change is refused.
            let expected = if REWRITTEN_SEGMENTS.contains(&case.name) {
                Answer {
                    status: 400,
                    reason: Some("non_canonical_path".into()),
                    identity: BTreeMap::new(),
                    limits: BTreeMap::new(),
                }
            } else {
                reference.clone()
            };
            if answer != expected {
                failures.push(format!(
                    "{}: proxy {reference:?}, expected {expected:?}, but {} {answer:?}",
                    case.name,
                    door.as_str()
                ));
            }
        }
    }
    // The second request of a one-request budget is 429 at every door.
    let limited = Case {
        name: "limited first",
        method: "GET",
        path: "/limited/x".into(),
        headers: vec![],
    };
    for door in Door::ALL {
        let again = ask(&gw, door, &limited).await;
        if again.status != 429 || again.reason.as_deref() != Some("rate_limited") {
            failures.push(format!(
                "{}: second limited request {again:?}",
                door.as_str()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
