//! One decision through every door. One gateway serves the proxy, the gRPC ext_authz, the
//! Envoy HTTP and the forward-auth doors on one snapshot; one corpus of requests (allowed;
//! denied for each reason code, a delegate's and the outages that fail closed among them;
//! rate limited; a login redirect; every path trick the proxy refuses; spoofed identity headers
//! in every spelling; missing, expired, wrong-audience and doubled credentials; API keys) is
//! replayed through each, and every door must give the same status, reason code, identity
//! headers, `RateLimit-*` and `Location`. Client certificates are compared where a door can
//! carry one (the proxy and the gRPC door).
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
    match: {paths: [\"/admin/**\", \"/v1/users:purge\", \"/@root/**\"]}
    effect: deny
  - name: at-pub
    match: {paths: [\"/@pub/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: cafe
    match: {paths: [\"/caf%C3%A9/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: user-priv
    match: {paths: [\"/{user}/priv/**\"]}
    effect: deny
  - name: trace
    match: {paths: [\"/trace/**\"], methods: [TRACE]}
    effect: allow
    anonymous: true
    upstream: echo
  - name: tunnel
    match: {paths: [\"/tunnel/**\"], methods: [CONNECT]}
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
  - name: keys-unreachable
    match: {paths: [\"/remote/**\"]}
    effect: allow
    authenticators: [remote]
    upstream: echo
  - name: judged
    match: {paths: [\"/judged/**\"]}
    effect: allow
    anonymous: true
    delegate: judge
    upstream: echo
  - name: judge-away
    match: {paths: [\"/judge-away/**\"]}
    effect: allow
    anonymous: true
    delegate: absent
    upstream: echo
  - name: shared-limit
    match: {paths: [\"/shared/**\"]}
    effect: allow
    anonymous: true
    rate_limit: shared
    upstream: echo
  - name: app
    match: {paths: [\"/app/**\"]}
    effect: allow
    authenticators: [users]
    denial: {login_url: \"https://login.example/start\"}
    upstream: echo
  - name: public
    match: {paths: [\"/public/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
";

/// Identity headers the config sets; compared at every door.
const IDENTITY: [&str; 4] = ["x-user-id", "x-user-roles", "x-api-key-id", "x-rule"];

/// A delegate (an ext_authz gRPC service) that allows a request carrying `x-judge: yes` and
/// denies every other one.
#[derive(Clone, Default)]
struct Judge;

#[tonic::async_trait]
impl envoy_types::ext_authz::v3::pb::Authorization for Judge {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::ext_authz::v3::pb::CheckResponse>, tonic::Status> {
        use envoy_types::ext_authz::v3::pb::{
            CheckResponse, DeniedHttpResponse, HttpStatus, OkHttpResponse,
        };
        use envoy_types::pb::google::rpc;
        let yes = request
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .is_some_and(|h| h.headers.get("x-judge").map(String::as_str) == Some("yes"));
        let (code, http_response) = if yes {
            (0, HttpResponse::OkResponse(OkHttpResponse::default()))
        } else {
            (
                7,
                HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    ..DeniedHttpResponse::default()
                }),
            )
        };
        Ok(tonic::Response::new(CheckResponse {
            status: Some(rpc::Status {
                code,
                ..rpc::Status::default()
            }),
            http_response: Some(http_response),
            ..CheckResponse::default()
        }))
    }
}

/// Serves the [`Judge`] on 127.0.0.1:0 until the test ends.
async fn judge() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper_util::service::TowerToHyperService::new(
                envoy_types::ext_authz::v3::pb::AuthorizationServer::new(Judge),
            );
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

async fn gateway() -> TestGateway {
    let judge = judge().await;
    let extra = format!(
        "{}  partners:
    api_key:
      keys: [{{id: k-1, hash: \"{}\", owner: svc-1, kind: machine, scopes: [orders:read]}}]
  remote:
    jwt:
      providers:
        - issuer: https://iss.test
          audiences: [api]
          keys: [{{jwks_url: {{url: \"http://127.0.0.1:9/jwks.json\"}}}}]
          fetch: {{timeout: 200ms, startup_timeout: 200ms}}
identity_headers:
  x-user-id: \"{{principal.id}}\"
  x-user-roles: \"{{principal.roles}}\"
  x-api-key-id: \"{{apikey.id}}\"
  x-rule: \"{{rule.name}}\"
delegates:
  judge: {{grpc: \"http://{judge}\", timeout: 2s}}
  absent: {{grpc: \"http://127.0.0.1:9\", timeout: 300ms, failure_mode: deny}}
redis: {{url: \"redis://127.0.0.1:9\", timeout: 200ms}}
rate_limits:
  one: {{key: header:x-bucket, requests: 1, per: 1h}}
  shared: {{key: route, requests: 100, per: 1m, backend: redis, on_redis_failure: deny}}
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

/// Cases whose target carries a `#`: the proxy and Envoy's HTTP mode never see it (hyper
/// drops a fragment, as Envoy does by default), while the gRPC and forward-auth doors get it
/// from a peer that forwards it as sent, and refuse it (400 `invalid_character`): an upstream
/// reading it as part of the path (Go's `path.Clean`) would serve `/admin`.
/// A `#` in the query is refused alike: `?a=1#&owner=alice` was decided on `owner`, which the
/// proxy (and an upstream cutting at `#`) never reads.
const FRAGMENTS: &[&str] = &["fragment with dot segments", "fragment in the query"];

/// Cases whose path has a `.`, `..` or empty segment, or an escaped unreserved character with
/// which the path as sent meets another rule or none (a raw-path router, Express or Envoy's
/// route table, reads `/%70ublic` as another name than `/public`; RFC 3986 asks that no client
/// escape these): every door decides the canonical path; the proxy forwards it,
/// while a decision door's peer would forward the path as sent, so what the proxy allows the
/// decision doors refuse (400 `non_canonical_path`), and what it refuses they refuse alike.
const REWRITTEN_SEGMENTS: &[&str] = &[
    "public canonical",
    "deny rule slashes",
    "deny rule dots",
    "another user's rows sideways",
    "escaped unreserved read two ways",
    "public encoded unreserved",
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
    /// Where a refusal sends the client (a login page).
    location: Option<String>,
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

/// An ES256 token for the `remote` authenticator, whose keys are never fetched (the
/// signature is never checked).
const REMOTE_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6InJlbW90ZSJ9.eyJpc3MiOiJodHRwczovL2lzcy50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYm9iIn0.c2lnbmF0dXJl";

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
        (
            "fragment with dot segments",
            "GET",
            "/public/x#/../../admin",
            vec![],
        ),
        ("fragment in the query", "GET", "/public/x?a=1#&b=2", vec![]),
        // As nginx's `$request_uri` carries it: the raw UTF-8 bytes.
        ("raw utf-8 path", "GET", "/public/caf\u{e9}", vec![]),
        ("raw utf-8 query", "GET", "/public/x?q=caf\u{e9}", vec![]),
        ("public query", "GET", "/public/x?a=1&b=2", vec![]),
        ("public head", "HEAD", "/public/x", vec![]),
        ("public post", "POST", "/public/form", vec![]),
        ("public canonical", "GET", "//public/./a/../x", vec![]),
        ("public encoded unreserved", "GET", "/%70ublic/x", vec![]),
        ("orders with token", "GET", "/orders/7", bearer(&good)),
        // Why: a header `Connection` names is hop-by-hop, gone before the decision; the gRPC
        // door alone honoured a credential named there.
        ("credential named in Connection", "GET", "/orders/7", {
            let mut v = bearer(&good);
            v.push((
                "connection".to_owned(),
                "keep-alive, Authorization".to_owned(),
            ));
            v
        }),
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
        // A head within `server.max_header_bytes` (16 KiB by default) and one past it: the
        // decision doors read what their peer describes within limits of their own, and
        // decided, and allowed, a head the proxy refused.
        (
            "header under the limit",
            "GET",
            "/public/x",
            vec![("x-big".to_owned(), "a".repeat(15_000))],
        ),
        (
            "header over the limit",
            "GET",
            "/public/x",
            vec![("x-big".to_owned(), "a".repeat(20_000))],
        ),
        // Why: the decision doors counted the head after removing hop-by-hop headers, the
        // proxy as it arrived. Regression: the hop-by-hop header case below.
        (
            "hop-by-hop header over the limit",
            "GET",
            "/public/x",
            vec![("keep-alive".to_owned(), "a".repeat(20_000))],
        ),
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
        ("deny rule dotless i", "GET", "/adm%C4%B1n/users", vec![]),
        ("deny rule slashes", "GET", "//admin/users", vec![]),
        ("deny rule dots", "GET", "/public/../admin/users", vec![]),
        ("deny rule encoded", "GET", "/%61dmin/users", vec![]),
        (
            "deny rule escaped colon",
            "GET",
            "/v1/users%3Apurge",
            vec![],
        ),
        ("deny rule escaped at", "GET", "/%40root/x", vec![]),
        // Decoded, `at-pub` allows it; read as sent (`/%40pub`, as Envoy's route table and
        // Express read it), `user-priv` denies it: refused at every door.
        ("escaped at read two ways", "GET", "/%40pub/priv/x", vec![]),
        // Decoded, `at-pub` allows it, and the proxy forwards `/@pub/priv/x`; a decision
        // door's peer forwards `/%40%70ub`... as sent, which an upstream routing on the raw
        // path reads as `/{user}/priv`: `user-priv` denies it there.
        (
            "escaped unreserved read two ways",
            "GET",
            "/@%70ub/priv/x",
            vec![],
        ),
        ("raw at", "GET", "/@pub/priv/x", vec![]),
        // Hex digits in either case are one path, as sent too (RFC 3986, 6.2.2.1).
        ("lowercase hex", "GET", "/caf%c3%a9/x", vec![]),
        ("trace refused", "TRACE", "/public/x", vec![]),
        ("track refused", "TRACK", "/public/x", vec![]),
        ("connect refused", "CONNECT", "/public/x", vec![]),
        ("connect named by its rule", "CONNECT", "/tunnel/x", vec![]),
        ("lowercase method", "delete", "/public/x", vec![]),
        ("asterisk target", "OPTIONS", "*", vec![]),
        ("connect authority form", "CONNECT", "app.test:443", vec![]),
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
        // Why: Envoy joins the two fields into `Basic …,Bearer …`, which the gRPC door read as
        // another scheme. Regression: this case.
        (
            "basic then a forged bearer",
            "GET",
            "/orders/7",
            vec![
                ("authorization".into(), "Basic eHl6".into()),
                ("authorization".into(), "Bearer forged.jwt.x".into()),
            ],
        ),
        (
            "two api keys",
            "GET",
            "/orders/7",
            vec![
                ("x-api-key".into(), API_KEY.into()),
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
            // PHP reads `x-user.roles` as `x_user_roles` too.
            h(&[
                ("x-user-roles", "admin"),
                ("x_user_roles", "admin"),
                ("x-user.roles", "admin"),
            ]),
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
        // A delegate's answers, and the outages that fail closed.
        (
            "delegate allows",
            "GET",
            "/judged/x",
            h(&[("x-judge", "yes")]),
        ),
        ("delegate denies", "GET", "/judged/x", vec![]),
        ("delegate unavailable", "GET", "/judge-away/x", vec![]),
        (
            "keys never fetched",
            "GET",
            "/remote/x",
            bearer(REMOTE_TOKEN),
        ),
        ("shared limit unavailable", "GET", "/shared/x", vec![]),
        // A browser without a credential goes to the login page; an API client gets 401.
        (
            "login redirect",
            "GET",
            "/app/home?tab=2",
            h(&[("accept", "text/html,*/*;q=0.8")]),
        ),
        ("login rule api client", "GET", "/app/home", vec![]),
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
    let mut answer = match door {
        Door::Proxy => via_proxy(gw, case, &headers).await,
        Door::EnvoyGrpc => via_grpc(gw, case, &headers).await,
        Door::EnvoyHttp => via_http_door(gw, "envoy", case, &headers).await,
        Door::ForwardAuth => via_http_door(gw, "forward", case, &headers).await,
    };
    // A redirect at the proxy has no body to name its reason (the decision doors name it for
    // their peer's log); its `Location` is compared instead.
    if (300..400).contains(&answer.status) {
        answer.reason = None;
    }
    answer
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
                if k.as_str().replace(['_', '.'], "-") == name {
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
        location: header_of(&r.head, "location"),
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
    // A door that may not pass a status to its peer (a 5xx the gateway decided, at Envoy's
    // HTTP door) names the real one.
    let status = header_of(&r.head, "x-portcullis-status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(r.status);
    Answer {
        status,
        reason: if r.status == 200 {
            None
        } else {
            header_of(&r.head, "x-portcullis-error")
        },
        identity,
        limits: limits_of(&r.head, r.status),
        location: header_of(&r.head, "location"),
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
    let resp = match client.check(request).await {
        Ok(r) => r.into_inner(),
        // What cannot be decided fails the call, for Envoy's failure mode: the proxy's 503.
        Err(e) if e.code() == tonic::Code::Unavailable => {
            return Answer {
                status: 503,
                reason: Some(e.message().to_owned()),
                identity: BTreeMap::new(),
                limits: BTreeMap::new(),
                location: None,
            };
        }
        Err(e) => panic!("{}: the call failed: {e}", case.name),
    };
    grpc_answer(resp, case.name)
}

/// A `CheckResponse` in door-neutral terms.
fn grpc_answer(resp: envoy_types::ext_authz::v3::pb::CheckResponse, name: &str) -> Answer {
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
            location: None,
        },
        Some(HttpResponse::DeniedResponse(d)) => Answer {
            status: d
                .status
                .and_then(|s| u16::try_from(s.code).ok())
                .unwrap_or(403),
            location: d
                .headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .find(|h| h.key == "location")
                .map(|h| h.value.clone()),
            reason: resp.status.map(|s| s.message),
            identity: BTreeMap::new(),
            limits: BTreeMap::new(),
        },
        other => panic!("{name}: no answer: {other:?}"),
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
        ("fragment with dot segments", (200, None)),
        ("fragment in the query", (200, None)),
        ("raw utf-8 path", (400, Some("non_ascii"))),
        ("raw utf-8 query", (200, None)),
        ("limited first", (200, None)),
        ("delegate allows", (200, None)),
        ("delegate denies", (403, Some("delegate_denied"))),
        ("delegate unavailable", (503, Some("delegate_unavailable"))),
        (
            "keys never fetched",
            (503, Some("authentication_unavailable")),
        ),
        (
            "shared limit unavailable",
            (503, Some("rate_limit_unavailable")),
        ),
        ("login redirect", (302, None)),
        ("login rule api client", (401, Some("missing_credential"))),
        ("public canonical", (200, None)),
        ("deny rule dots", (403, Some("forbidden"))),
        ("deny rule escaped colon", (403, Some("forbidden"))),
        ("deny rule escaped at", (403, Some("forbidden"))),
        (
            "escaped at read two ways",
            (400, Some("non_canonical_path")),
        ),
        ("raw at", (200, None)),
        ("lowercase hex", (200, None)),
        ("escaped unreserved read two ways", (200, None)),
        ("lowercase method", (400, Some("invalid_method"))),
        ("trace refused", (405, Some("method_not_allowed"))),
        // The gateway tunnels nothing: 405 at every door, even where a rule names CONNECT.
        ("connect refused", (405, Some("method_not_allowed"))),
        (
            "connect named by its rule",
            (405, Some("method_not_allowed")),
        ),
        ("connect authority form", (405, Some("method_not_allowed"))),
        ("asterisk target", (400, Some("unsupported_target"))),
        ("encoded slash", (400, Some("encoded_slash"))),
        ("missing credential", (401, Some("missing_credential"))),
        (
            "credential named in Connection",
            (401, Some("missing_credential")),
        ),
        ("header under the limit", (200, None)),
        ("header over the limit", (431, Some("headers_too_large"))),
        (
            "hop-by-hop header over the limit",
            (431, Some("headers_too_large")),
        ),
        ("basic then a forged bearer", (400, Some("invalid_request"))),
        ("two api keys", (400, Some("invalid_request"))),
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
            // path as sent, so there a path canonicalisation changed is refused when allowed.
            let refused = |reason: &str| Answer {
                status: 400,
                reason: Some(reason.into()),
                identity: BTreeMap::new(),
                limits: BTreeMap::new(),
                location: None,
            };
            let expected = if REWRITTEN_SEGMENTS.contains(&case.name)
                && (200..300).contains(&reference.status)
            {
                refused("non_canonical_path")
            } else if FRAGMENTS.contains(&case.name)
                && matches!(door, Door::EnvoyGrpc | Door::ForwardAuth)
            {
                refused("invalid_character")
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

/// `server.max_headers` (100 here) is one limit at every door, the client's host counted as
/// one of its fields wherever it arrives (`Host`, `:authority`, a door's description): `Host`
/// and 99 other fields pass everywhere, `Host` and 100 get 431 everywhere (over HTTP/1.1 the
/// proxy's is hyper's bare 431). (The decision doors allowed the second, and so did the proxy
/// door over HTTP/2.)
#[tokio::test]
async fn the_header_count_limit_is_the_same_at_every_door() {
    use bytes::Bytes;
    use http_body_util::Full;
    let gw = gateway().await;
    for (others, expected) in [(99, 200), (100, 431)] {
        let headers: Vec<(String, String)> = (0..others)
            .map(|i| (format!("x-pad-{i}"), "v".to_owned()))
            .collect();
        let case = Case {
            name: "padded",
            method: "GET",
            path: "/public/x".into(),
            headers: headers.clone(),
        };
        let request = || {
            let mut req = http::Request::get(format!("http://app.test{}", case.path));
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            req.body(Full::<Bytes>::default()).unwrap()
        };
        // HTTP/1.1 as hyper's client sends it: `Host` and the others, nothing else.
        let before = gw.echo.count();
        let (status, _, _) = crate::support::send(gw.addr_of("http"), request()).await;
        assert_eq!(
            status.as_u16(),
            expected,
            "proxy over HTTP/1.1, {others} others"
        );
        assert_eq!(gw.echo.count() > before, expected == 200, "{others}");
        // HTTP/2: the host is `:authority`.
        let mut h2 = crate::support::h2c(gw.addr_of("http")).await;
        let resp = h2.send_request(request()).await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            expected,
            "proxy over HTTP/2, {others} others"
        );
        for door in Door::ALL.into_iter().filter(|d| *d != Door::Proxy) {
            let answer = match door {
                Door::Proxy => unreachable!(),
                Door::EnvoyGrpc => via_grpc(&gw, &case, &headers).await,
                Door::EnvoyHttp => via_http_door(&gw, "envoy", &case, &headers).await,
                Door::ForwardAuth => via_http_door(&gw, "forward", &case, &headers).await,
            };
            let reason = (expected != 200).then(|| "headers_too_many".to_owned());
            assert_eq!(
                (answer.status, answer.reason),
                (expected, reason),
                "{}, {others} others",
                door.as_str()
            );
        }
    }
}

/// mTLS where a door can carry a client certificate: the proxy (its own TLS listener asking
/// for one) and the gRPC door (Envoy's `source.certificate`, believed with
/// `client_certificates: true`). The HTTP doors cannot be told one. The same certificate (or
/// none) gets the same status, reason code and principal at both.
#[tokio::test]
async fn client_certificates_decide_alike_where_a_door_carries_them() {
    let pki = crate::credentials::pki();
    let policy = "rules:
  - name: billing-only
    match: {paths: [\"/ledger/**\"]}
    effect: allow
    authenticators: [devices]
    when: principal.id == 'spiffe://corp.test/shipping'
    upstream: echo
  - name: devices
    match: {paths: [\"/devices/**\"]}
    effect: allow
    authenticators: [devices]
    upstream: echo
  - name: open
    match: {paths: [\"/open/**\"]}
    effect: allow
    anonymous: true
    upstream: echo
";
    let gw = Setup {
        listeners: "  - name: https
    address: 127.0.0.1:0
    tls:
      certificates:
        - {cert: server.crt, key: server.key}
      client_auth: {ca_file: clients.pem}
  - name: grpc
    address: 127.0.0.1:0
    door: {envoy_grpc: {client_certificates: true}}
"
        .into(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![
            ("server.crt".into(), pki.server_cert.clone().into_bytes()),
            ("server.key".into(), pki.server_key.clone().into_bytes()),
            ("clients.pem".into(), pki.ca.clone().into_bytes()),
        ],
        extra: "authenticators:\n  devices:\n    mtls: {}\nidentity_headers:\n  x-user-id: \"{principal.id}\"\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let encoded = crate::grpc::envoy_pem(&pki.client.0);
    let mut failures = Vec::new();
    for (name, path, with_cert, expected) in [
        ("certificate", "/devices/x", true, (200, None)),
        (
            "no certificate",
            "/devices/x",
            false,
            (401, Some("missing_credential")),
        ),
        (
            "certificate of another service",
            "/ledger/x",
            true,
            (403, Some("condition_failed")),
        ),
        ("certificate on an open route", "/open/x", true, (200, None)),
    ] {
        let before = gw.echo.count();
        let client = with_cert.then_some(&pki.client);
        let (status, body) = crate::credentials::mtls_exchange(
            gw.addr_of("https"),
            &pki.ca,
            client,
            "localhost",
            "app.test",
            path,
        )
        .await
        .expect("the handshake");
        let user = (gw.echo.count() > before)
            .then(|| crate::support::echoed_header(&gw.echo, "x-user-id"))
            .flatten();
        let proxy = Answer {
            status: status.as_u16(),
            reason: if status.is_success() {
                None
            } else {
                reason_of_body(&String::from_utf8_lossy(&body))
            },
            identity: user.into_iter().map(|u| ("x-user-id".into(), u)).collect(),
            limits: BTreeMap::new(),
            location: None,
        };
        assert_eq!(
            (proxy.status, proxy.reason.as_deref()),
            expected,
            "{name}: the proxy's answer"
        );
        if name == "certificate" {
            assert_eq!(
                proxy.identity.get("x-user-id").map(String::as_str),
                Some("spiffe://corp.test/billing"),
                "the certificate's principal"
            );
        }
        let mut check = crate::grpc::check(path, "127.0.0.1", &[]);
        if with_cert && let Some(source) = check.attributes.as_mut().and_then(|a| a.source.as_mut())
        {
            source.certificate.clone_from(&encoded);
        }
        let mut c = AuthorizationClient::connect(format!("http://{}", gw.addr_of("grpc")))
            .await
            .unwrap();
        let grpc = grpc_answer(c.check(check).await.unwrap().into_inner(), name);
        if grpc != proxy {
            failures.push(format!("{name}: proxy {proxy:?}, envoy-grpc {grpc:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
