//! Credentials other than JWTs, through the proxy door: API keys (hashed file, shared secret,
//! `apikey new`), trusted identity headers, token introspection (RFC 7662) against a loopback
//! authorization server with faults, and client certificates (mTLS).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use portcullis::authn::apikey::{generate, hash_of};
use serde_json::{Value, json};

use crate::support::{Setup, TestGateway, eventually, raw, send};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `/api/**` needs `auth`; `/open/**` takes `auth` or nobody; `/jwt/**` only the JWT `users`.
fn policy(auth: &str) -> String {
    format!(
        "rules:
  - name: api
    match: {{paths: [\"/api/**\"]}}
    effect: allow
    authenticators: [{auth}]
    upstream: echo
  - name: open
    match: {{paths: [\"/open/**\"]}}
    effect: allow
    authenticators: [{auth}]
    anonymous: true
    upstream: echo
"
    )
}

async fn start(auth: &str, extra: String, files: Vec<(String, Vec<u8>)>) -> TestGateway {
    Setup {
        policies: vec![("10-p.yaml".into(), policy(auth))],
        files,
        extra,
        ..Setup::default()
    }
    .start()
    .await
}

async fn call(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> StatusCode {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(gw.addr(), req.body(Full::default()).unwrap()).await.0
}

/// A path, request headers and the status expected.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], StatusCode);

/// Asserts `status` and that the upstream saw nothing.
async fn refused(gw: &TestGateway, path: &str, headers: &[(&str, &str)], status: StatusCode) {
    let before = gw.echo.count();
    assert_eq!(call(gw, path, headers).await, status, "{headers:?}");
    assert_eq!(gw.echo.count(), before, "upstream saw {headers:?}");
}

// === API keys ===

fn key_file(entries: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut out = String::from("keys:\n");
    for (id, key, extra) in entries {
        out.push_str(&format!(
            "  - id: {id}\n    hash: {}\n    owner: owner-of-{id}\n{extra}",
            hash_of(key)
        ));
    }
    out.into_bytes()
}

const API_KEYS: &str =
    "authenticators:\n  partners:\n    api_key:\n      keys_file: apikeys.yaml\n";

#[tokio::test]
async fn api_keys_from_a_hashed_file() {
    let (good, disabled, expired) = (
        generate().unwrap(),
        generate().unwrap(),
        generate().unwrap(),
    );
    let file = key_file(&[
        (
            "good",
            &good,
            "    scopes: [reports:read]\n    plan: gold\n",
        ),
        ("off", &disabled, "    enabled: false\n"),
        ("old", &expired, "    expires: 2020-01-01T00:00:00Z\n"),
    ]);
    let gw = start(
        "partners",
        API_KEYS.into(),
        vec![("apikeys.yaml".into(), file)],
    )
    .await;
    let before = gw.echo.count();
    assert_eq!(
        call(&gw, "/api/x", &[("x-api-key", &good)]).await,
        StatusCode::OK
    );
    assert_eq!(gw.echo.count(), before + 1);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_api_keys{authenticator=\"partners\"} 3"),
        "{metrics}"
    );

    let guess = generate().unwrap();
    let bearer = format!("Bearer {good}");
    let hashed = hash_of(&good);
    let unauthorized = StatusCode::UNAUTHORIZED;
    let cases: [Case<'_>; 8] = [
        ("/api/x", &[("x-api-key", &disabled)], unauthorized),
        ("/api/x", &[("x-api-key", &expired)], unauthorized),
        ("/api/x", &[("x-api-key", &guess)], unauthorized),
        // A key one character short of a real one, and the hash itself, are not the key.
        (
            "/api/x",
            &[("x-api-key", &good[..good.len() - 1])],
            unauthorized,
        ),
        ("/api/x", &[("x-api-key", &hashed)], unauthorized),
        // Not in the configured header: no credential at all.
        ("/api/x", &[("authorization", &bearer)], unauthorized),
        // An invalid key never falls through to anonymous access.
        ("/open/x", &[("x-api-key", &guess)], unauthorized),
        // Two different keys: refused as ambiguous.
        (
            "/api/x",
            &[("x-api-key", &good), ("x-api-key", &guess)],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, headers, status) in cases {
        refused(&gw, path, headers, status).await;
    }
}

#[tokio::test]
async fn api_key_file_edits_apply_on_reload_and_a_broken_file_keeps_the_old_keys() {
    let (a, b) = (generate().unwrap(), generate().unwrap());
    let gw = start(
        "partners",
        API_KEYS.into(),
        vec![("apikeys.yaml".into(), key_file(&[("a", &a, "")]))],
    )
    .await;
    assert_eq!(
        call(&gw, "/api/x", &[("x-api-key", &a)]).await,
        StatusCode::OK
    );

    // A broken file names its own line and field; the running keys stay.
    let mut broken = key_file(&[("a", &a, "")]);
    broken.extend_from_slice(b"  - id: b\n    hash: sha256:abc\n    owner: x\n");
    gw.write("apikeys.yaml", &broken);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("apikeys.yaml:6:"), "{body}");
    assert!(body.contains("keys[1].hash"), "{body}");
    assert_eq!(
        call(&gw, "/api/x", &[("x-api-key", &a)]).await,
        StatusCode::OK
    );

    // Key a revoked, key b added.
    gw.write("apikeys.yaml", key_file(&[("b", &b, "")]));
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    refused(
        &gw,
        "/api/x",
        &[("x-api-key", &a)],
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        call(&gw, "/api/x", &[("x-api-key", &b)]).await,
        StatusCode::OK
    );

    // An emptied file (`>` where `>>` was meant) or one with an empty list is refused: the
    // running keys stay, rather than every key being revoked at once.
    for emptied in ["", "# nothing yet\n", "[]\n", "keys: []\n"] {
        gw.write("apikeys.yaml", emptied);
        let (status, body) = gw.admin_post("/reload").await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{emptied:?}: {body}"
        );
        assert!(
            body.contains("holds no key") || body.contains("expected a list of keys"),
            "{body}"
        );
        assert!(body.contains("apikeys.yaml"), "{body}");
        assert_eq!(
            call(&gw, "/api/x", &[("x-api-key", &b)]).await,
            StatusCode::OK
        );
    }

    // Duplicate ids are refused.
    gw.write("apikeys.yaml", key_file(&[("b", &b, ""), ("b", &a, "")]));
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("duplicate api key id `b`"), "{body}");
    assert!(body.contains("apikeys.yaml:5:"), "{body}");
}

/// Regression: in a file that is the list alone (what `apikey new … >>` makes), errors were
/// all located at line 1: they point at their entry, as in a `keys:` file.
#[tokio::test]
async fn api_key_file_errors_point_at_their_entry() {
    let (a, b) = (generate().unwrap(), generate().unwrap());
    let gw = start(
        "partners",
        API_KEYS.into(),
        vec![("apikeys.yaml".into(), key_file(&[("a", &a, "")]))],
    )
    .await;
    let bare = |entries: &[(&str, &str)]| {
        let mut out = String::new();
        for (id, hash) in entries {
            out.push_str(&format!("- id: {id}\n  hash: {hash}\n  owner: o\n"));
        }
        out
    };
    for (text, line, field) in [
        (
            bare(&[("a", &hash_of(&a)), ("a", &hash_of(&b))]),
            4,
            "[1].id",
        ),
        (
            bare(&[("a", &hash_of(&a)), ("b", "sha256:zz")]),
            5,
            "[1].hash",
        ),
    ] {
        gw.write("apikeys.yaml", &text);
        let (status, body) = gw.admin_post("/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body.contains(&format!("apikeys.yaml:{line}:")) && body.contains(field),
            "{line} {field}: {body}"
        );
    }
}

/// A key pasted into the key file where an entry belongs (after `apikey new` printed it) is
/// refused without being shown: not in the reload's answer, `GET /config` or `check`.
#[tokio::test]
async fn a_key_pasted_into_the_key_file_is_never_shown() {
    let a = generate().unwrap();
    let gw = start(
        "partners",
        API_KEYS.into(),
        vec![("apikeys.yaml".into(), key_file(&[("a", &a, "")]))],
    )
    .await;
    let pasted = generate().unwrap();
    for text in [
        format!("keys:\n  - {pasted}\n"),
        format!("{pasted}\n"),
        format!("keys:\n  - {{{pasted}: 1}}\n"),
        format!("{pasted}: 1\n{pasted}: 2\n"),
    ] {
        gw.write("apikeys.yaml", &text);
        let (status, body) = gw.admin_post("/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("apikeys.yaml:"), "{body}");
        assert!(!body.contains(&pasted), "{body}");
        let (_, shown) = gw.admin_get("/config").await;
        assert!(!shown.contains(&pasted), "{shown}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "-c"])
            .arg(gw.path("portcullis.yaml"))
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(printed.contains("apikeys.yaml:"), "{printed}");
        assert!(!printed.contains(&pasted), "{printed}");
    }
}

#[tokio::test]
async fn shared_secret_maps_to_a_fixed_identity() {
    let extra = "authenticators:
  cron:
    api_key:
      from: [bearer, {header: x-shared-secret}]
      strip: true
      keys:
        - id: cron-key
          owner: svc-cron
          kind: machine
          secret: {file: cron.secret}
";
    let gw = start(
        "cron",
        extra.into(),
        vec![(
            "cron.secret".into(),
            b"correct horse battery staple\n".to_vec(),
        )],
    )
    .await;
    let before = gw.echo.count();
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", "Bearer correct")]).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            &gw,
            "/api/x",
            &[("x-shared-secret", "correct horse battery staple")]
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(gw.echo.count(), before + 1);
    let seen = gw.echo.last().unwrap();
    assert!(
        !seen.headers.contains_key("x-shared-secret"),
        "strip: the secret does not reach the upstream"
    );

    // Too short a secret is a config error naming the field.
    gw.write("cron.secret", "short");
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("authenticators.cron.api_key.keys[0].secret"),
        "{body}"
    );
}

#[tokio::test]
async fn apikey_new_prints_the_key_once_and_an_entry_the_file_accepts() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "apikey",
            "new",
            "--id",
            "reports",
            "--owner",
            "svc-reports",
            "--kind",
            "machine",
            "--scope",
            "reports:read",
            "--plan",
            "gold",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let key = stderr.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("pck_"), "{stderr}");
    assert!(
        !stdout.contains(&key),
        "the entry holds the hash, not the key"
    );
    assert!(stdout.contains(&hash_of(&key)), "{stdout}");

    let file = format!("keys:\n{stdout}");
    let gw = start(
        "partners",
        API_KEYS.into(),
        vec![("apikeys.yaml".into(), file.into_bytes())],
    )
    .await;
    assert_eq!(
        call(&gw, "/api/x", &[("x-api-key", &key)]).await,
        StatusCode::OK
    );

    // `apikey hash` agrees with the file.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["apikey", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let hashed = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8(hashed.stdout).unwrap().trim(),
        hash_of(&key)
    );
}

// === trusted identity headers ===

fn trusted(networks: &str) -> String {
    format!(
        "authenticators:
  inner:
    trusted_headers:
      networks: [{networks}]
      id: x-auth-user
      scopes: x-auth-scopes
      claims: {{email: x-auth-email}}
"
    )
}

#[tokio::test]
async fn trusted_headers_from_a_trusted_peer_authenticate_and_never_reach_the_upstream() {
    let gw = start("inner", trusted("127.0.0.0/8"), vec![]).await;
    let before = gw.echo.count();
    assert_eq!(
        call(
            &gw,
            "/api/x",
            &[("x-auth-user", "alice"), ("x-auth-email", "a@example.com")]
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(gw.echo.count(), before + 1);
    let seen = gw.echo.last().unwrap();
    assert!(!seen.headers.contains_key("x-auth-user"));
    assert!(!seen.headers.contains_key("x-auth-email"));
    refused(&gw, "/api/x", &[], StatusCode::UNAUTHORIZED).await;
    refused(
        &gw,
        "/api/x",
        &[("x-auth-user", "alice"), ("x-auth-user", "root")],
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn spoofed_trusted_headers_from_an_untrusted_peer_are_ignored_and_stripped() {
    // Loopback is not in the trusted network: the test client is an outsider.
    let gw = start("inner", trusted("10.0.0.0/8"), vec![]).await;
    refused(
        &gw,
        "/api/x",
        &[("x-auth-user", "admin")],
        StatusCode::UNAUTHORIZED,
    )
    .await;

    // Anonymous route: the request passes, but no spelling of the header reaches upstream.
    let addr = gw.addr();
    let resp = raw(
        addr,
        b"GET /open/x HTTP/1.1\r\nHost: t\r\nX-Auth-User: admin\r\nX_Auth_User: admin\r\nx-auth-scopes: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    let seen = gw.echo.last().unwrap();
    for (name, _) in &seen.headers {
        assert!(
            !name.as_str().replace('_', "-").starts_with("x-auth-"),
            "{name} reached the upstream"
        );
    }
}

// === introspection ===

#[derive(Clone)]
enum Mode {
    Serve,
    Slow(Duration),
    Status(u16),
    Garbage,
}

#[derive(Default)]
struct IdpState {
    answers: std::collections::HashMap<String, Value>,
    mode: Option<Mode>,
    hits: usize,
    last_auth: Option<String>,
    last_body: String,
    conns: Vec<tokio::task::JoinHandle<()>>,
}

/// A loopback introspection endpoint: answers `{"active": false}` for unknown tokens.
struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(IdpState::default()));
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st2 = Arc::clone(&st);
                let st = Arc::clone(&st);
                let conn = tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let st = Arc::clone(&st);
                            async move {
                                let auth = req
                                    .headers()
                                    .get("authorization")
                                    .map(|v| v.to_str().unwrap().to_owned());
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let body = String::from_utf8(body.to_vec()).unwrap();
                                let token = body
                                    .split('&')
                                    .find_map(|kv| kv.strip_prefix("token="))
                                    .unwrap_or("")
                                    .to_owned();
                                let (mode, answer) = {
                                    let mut s = st.lock().unwrap();
                                    s.hits += 1;
                                    s.last_auth = auth;
                                    s.last_body = body;
                                    (
                                        s.mode.clone().unwrap_or(Mode::Serve),
                                        s.answers
                                            .get(&token)
                                            .cloned()
                                            .unwrap_or(json!({"active": false})),
                                    )
                                };
                                let (status, body) = match mode {
                                    Mode::Serve => (200, answer.to_string()),
                                    Mode::Slow(d) => {
                                        tokio::time::sleep(d).await;
                                        (200, answer.to_string())
                                    }
                                    Mode::Status(s) => (s, String::new()),
                                    Mode::Garbage => (200, "<html>login</html>".into()),
                                };
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
                st2.lock().unwrap().conns.push(conn);
            }
        });
        Self { addr, state, task }
    }

    fn answer(&self, token: &str, v: Value) {
        self.state.lock().unwrap().answers.insert(token.into(), v);
    }

    fn mode(&self, m: Mode) {
        self.state.lock().unwrap().mode = Some(m);
    }

    fn hits(&self) -> usize {
        self.state.lock().unwrap().hits
    }

    /// Stops listening and closes every open connection: the next call is refused.
    async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        for c in self.state.lock().unwrap().conns.drain(..) {
            c.abort();
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn introspection(idp: &Idp, extra: &str) -> String {
    format!(
        "authenticators:
  opaque:
    introspection:
      endpoint: http://{}/introspect
      client_id: gateway
      client_secret: {{file: client.secret}}
      timeout: 300ms
      audiences: [api]
{extra}",
        idp.addr
    )
}

async fn opaque_gateway(idp: &Idp, extra: &str) -> TestGateway {
    start(
        "opaque",
        introspection(idp, extra),
        vec![("client.secret".into(), b"s3cret:with&odd=chars".to_vec())],
    )
    .await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn introspection_active_token_is_accepted_and_cached() {
    let idp = Idp::start().await;
    idp.answer(
        "opaque-1",
        json!({"active": true, "sub": "alice", "aud": "api", "scope": "a b", "exp": now() + 300}),
    );
    let gw = opaque_gateway(&idp, "").await;
    let t = bearer("opaque-1");
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", &t)]).await,
        StatusCode::OK
    );
    {
        let s = idp.state.lock().unwrap();
        // client_secret_basic: form-encoded id and secret, then base64 (RFC 6749 §2.3.1).
        use base64::Engine as _;
        let expected =
            base64::engine::general_purpose::STANDARD.encode("gateway:s3cret%3Awith%26odd%3Dchars");
        assert_eq!(s.last_auth.as_deref(), Some(&*format!("Basic {expected}")));
        assert_eq!(s.last_body, "token=opaque-1");
    }
    for _ in 0..5 {
        assert_eq!(
            call(&gw, "/api/x", &[("authorization", &t)]).await,
            StatusCode::OK
        );
    }
    assert_eq!(idp.hits(), 1, "later requests are served from the cache");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            "portcullis_introspection_requests_total{authenticator=\"opaque\",result=\"ok\"} 1"
        ),
        "{metrics}"
    );
}

/// Requests arriving together with one uncached token make one call, and all get its
/// answer; another token makes its own. Before, 20 requests made 20 calls (each holding one
/// of the `max_in_flight` slots).
#[tokio::test]
async fn concurrent_requests_with_one_token_make_one_call() {
    let idp = Idp::start().await;
    for t in ["shared-1", "shared-2"] {
        idp.answer(
            t,
            json!({"active": true, "sub": t, "aud": "api", "exp": now() + 300}),
        );
    }
    idp.mode(Mode::Slow(Duration::from_millis(150)));
    let gw = opaque_gateway(&idp, "").await;
    let gw = &gw;
    let asks = (0..20).map(|i| async move {
        let t = bearer(if i % 10 == 0 { "shared-2" } else { "shared-1" });
        call(gw, "/api/x", &[("authorization", &t)]).await
    });
    let statuses = futures_util::future::join_all(asks).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(idp.hits(), 2, "one call per token");
}

/// Made-up tokens from one client take at most `max_in_flight_per_client` calls at once; the
/// rest of that client's requests needing a call get 503, and the shares come back.
/// Before, one client's 110 made-up tokens filled the 64 slots and everyone got 503.
#[tokio::test]
async fn one_client_cannot_fill_the_introspection_slots() {
    let idp = Idp::start().await;
    idp.answer(
        "valid-1",
        json!({"active": true, "sub": "alice", "aud": "api", "exp": now() + 300}),
    );
    idp.mode(Mode::Slow(Duration::from_millis(200)));
    let gw = opaque_gateway(&idp, "      max_in_flight_per_client: 2\n").await;
    let gw = &gw;
    let asks = (0..6).map(|i| async move {
        let t = bearer(&format!("made-up-{i}"));
        call(gw, "/api/x", &[("authorization", &t)]).await
    });
    let mut statuses = futures_util::future::join_all(asks).await;
    statuses.sort();
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
        ]
    );
    assert_eq!(idp.hits(), 2, "two calls for this client at once");
    // The shares are back: the client's next call is made.
    assert_eq!(
        call(gw, "/api/x", &[("authorization", &bearer("valid-1"))]).await,
        StatusCode::OK
    );
    assert_eq!(idp.hits(), 3);
}

/// A verification shed because the client's share of introspection calls is taken is a
/// refusal the gateway made (503 `authentication_busy`, `Retry-After: 1`), never "could not
/// decide": at Envoy's HTTP door a 403 with the real status in `x-portcullis-status`, at the
/// gRPC door a denied response, so `failure_mode_allow: true` never lets a client's flood of
/// made-up tokens through.
#[tokio::test]
async fn a_shed_verification_is_a_refusal_at_every_door() {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let idp = Idp::start().await;
    idp.mode(Mode::Slow(Duration::from_millis(200)));
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: envoy\n    address: 127.0.0.1:0\n    door: {envoy_http: {}}\n  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        policies: vec![("10-p.yaml".into(), policy("opaque"))],
        files: vec![("client.secret".into(), b"s3cret".to_vec())],
        extra: introspection(&idp, "      max_in_flight_per_client: 1\n"),
        ..Setup::default()
    }
    .start()
    .await;
    let gw = &gw;
    const N: usize = 4;

    // The proxy door: one call made, the others shed.
    let asks = (0..N).map(|i| async move {
        let req = Request::get("/api/x")
            .header("authorization", bearer(&format!("proxy-made-up-{i}")))
            .body(Full::default())
            .unwrap();
        send(gw.addr(), req).await
    });
    let mut answers = futures_util::future::join_all(asks).await;
    answers.sort_by_key(|(status, _, _)| *status);
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    for (status, headers, body) in &answers[1..] {
        let body = String::from_utf8_lossy(body);
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("\"error\":\"authentication_busy\""), "{body}");
        assert_eq!(headers["retry-after"], "1");
    }

    // Envoy's HTTP door: a 403 (Envoy takes a 5xx for a failed call), the real status told.
    let asks = (0..N).map(|i| async move {
        let req = Request::get("/api/x")
            .header("host", "app.test")
            .header("x-forwarded-for", "198.51.100.7")
            .header("authorization", bearer(&format!("envoy-made-up-{i}")))
            .body(Full::default())
            .unwrap();
        send(gw.addr_of("envoy"), req).await
    });
    let mut answers = futures_util::future::join_all(asks).await;
    answers.sort_by_key(|(status, _, _)| *status);
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    for (status, headers, body) in &answers[1..] {
        let body = String::from_utf8_lossy(body);
        assert_eq!(*status, StatusCode::FORBIDDEN, "not a 5xx: {body}");
        assert_eq!(headers["x-portcullis-status"], "503");
        assert_eq!(headers["x-portcullis-error"], "authentication_busy");
    }

    // The gRPC door: denied responses, not failed calls.
    let client =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
            format!("http://{}", gw.addr_of("grpc")),
        )
        .await
        .unwrap();
    let asks = (0..N).map(|i| {
        let mut client = client.clone();
        async move {
            let token = bearer(&format!("grpc-made-up-{i}"));
            client
                .check(crate::grpc::check(
                    "/api/x",
                    "198.51.100.8",
                    &[("authorization", &token)],
                ))
                .await
                .expect("a denial, not a failed call")
                .into_inner()
        }
    });
    let mut statuses: Vec<(u32, String)> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| match r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => {
                (d.status.map_or(0, |s| s.code as u32), d.body)
            }
            other => panic!("expected a denied response, got {other:?}"),
        })
        .collect();
    statuses.sort();
    assert_eq!(statuses[0].0, 401);
    for (status, body) in &statuses[1..] {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("authentication_busy"), "{body}");
    }
    assert_eq!(idp.hits(), 3, "one call for each client");
}

#[tokio::test]
async fn introspection_inactive_and_unusable_answers_are_refused() {
    let idp = Idp::start().await;
    idp.answer(
        "expired",
        json!({"active": true, "sub": "a", "aud": "api", "exp": now() - 60}),
    );
    idp.answer(
        "not-yet",
        json!({"active": true, "sub": "a", "aud": "api", "nbf": now() + 100}),
    );
    // Within the default 30 s leeway: the server's clock, ahead, said active.
    idp.answer(
        "skewed",
        json!({"active": true, "sub": "a", "aud": "api", "nbf": now() + 5}),
    );
    idp.answer(
        "just-expired",
        json!({"active": true, "sub": "a", "aud": "api", "exp": now() - 1}),
    );
    idp.answer(
        "other-aud",
        json!({"active": true, "sub": "a", "aud": "billing"}),
    );
    idp.answer(
        "string-active",
        json!({"active": "true", "sub": "a", "aud": "api"}),
    );
    idp.answer("no-sub", json!({"active": true, "aud": "api"}));
    // Some servers call a refresh token active: it is not an access token.
    idp.answer(
        "refresh",
        json!({"active": true, "sub": "a", "aud": "api", "token_type": "refresh_token"}),
    );
    idp.answer(
        "hydra-refresh",
        json!({"active": true, "sub": "a", "aud": "api", "token_use": "refresh_token"}),
    );
    idp.answer(
        "access",
        json!({"active": true, "sub": "a", "aud": "api", "token_type": "Bearer", "token_use": "access_token"}),
    );
    let gw = opaque_gateway(&idp, "").await;
    for t in ["access", "skewed"] {
        assert_eq!(
            call(&gw, "/api/x", &[("authorization", &bearer(t))]).await,
            StatusCode::OK,
            "{t}"
        );
    }
    for t in [
        "unknown",
        "expired",
        "just-expired",
        "not-yet",
        "other-aud",
        "no-sub",
        "refresh",
        "hydra-refresh",
    ] {
        refused(
            &gw,
            "/api/x",
            &[("authorization", &bearer(t))],
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    // `"active": "true"` is not the documented boolean: the answer is garbage, not a yes.
    refused(
        &gw,
        "/api/x",
        &[("authorization", &bearer("string-active"))],
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    // An inactive answer is remembered briefly: a repeated bad token costs the server nothing.
    let hits = idp.hits();
    refused(
        &gw,
        "/api/x",
        &[("authorization", &bearer("unknown"))],
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(idp.hits(), hits);
    // And it never falls through to anonymous access.
    refused(
        &gw,
        "/open/x",
        &[("authorization", &bearer("unknown"))],
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn introspection_client_secret_post() {
    let idp = Idp::start().await;
    idp.answer(
        "t",
        json!({"active": true, "sub": "a", "aud": ["x", "api"]}),
    );
    let gw = opaque_gateway(
        &idp,
        "      client_auth: client_secret_post\n      token_type_hint: access_token\n",
    )
    .await;
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", &bearer("t"))]).await,
        StatusCode::OK
    );
    let s = idp.state.lock().unwrap();
    assert_eq!(s.last_auth, None);
    assert_eq!(
        s.last_body,
        "client_id=gateway&client_secret=s3cret%3Awith%26odd%3Dchars&token=t&token_type_hint=access_token"
    );
}

/// A gateway whose one rule takes tokens `idp` introspects, behind a guard of three
/// failures an hour per client address.
async fn guarded_gateway(idp: &Idp) -> TestGateway {
    Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: api, match: {paths: [\"/**\"]}, effect: allow, authenticators: [opaque], guard: tries, upstream: echo}\n".into(),
        )],
        files: vec![("client.secret".into(), b"s3cret:with&odd=chars".to_vec())],
        extra: format!(
            "{}rate_limits:\n  tries: {{key: client_ip, requests: 3, per: 1h, count: failures}}\n",
            introspection(idp, "")
        ),
        ..Setup::default()
    }
    .start()
    .await
}

/// A brute-force guard holds against concurrent guesses: with an authenticator that takes
/// a while (introspection, 200 ms), twenty wrong tokens sent at once get three checks and
/// seventeen 429s, and the endpoint is asked three times. (The guard only looked before
/// verifying and spent after each failure: every guess sent before the first failure came
/// back was checked.) A valid token after them is refused too, before verifying.
#[tokio::test]
async fn concurrent_attempts_spend_the_guard() {
    let idp = Idp::start().await;
    idp.mode(Mode::Slow(Duration::from_millis(200)));
    let gw = guarded_gateway(&idp).await;
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..20 {
        let addr = gw.addr();
        guesses.spawn(async move {
            let req = Request::get("/api/x")
                .header("authorization", bearer(&format!("guess-{i}")))
                .body(Full::default())
                .unwrap();
            send(addr, req).await.0.as_u16()
        });
    }
    let mut statuses: Vec<u16> = guesses.join_all().await;
    statuses.sort_unstable();
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((checked, limited), (3, 17), "{statuses:?}");
    assert_eq!(idp.hits(), 3, "the endpoint asked once per allowed guess");
    idp.mode(Mode::Serve);
    idp.answer(
        "valid",
        json!({"active": true, "sub": "alice", "aud": "api"}),
    );
    refused(
        &gw,
        "/api/x",
        &[("authorization", &bearer("valid"))],
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(idp.hits(), 3, "refused before verifying");
}

/// Valid requests sent together from one address all pass a guard whose budget is smaller
/// than their number: each holds one request of the budget while it is checked (200 ms
/// here), and the others wait for it to come back instead of getting 429 with a
/// `Retry-After` of a whole interval. (They were refused: twelve valid tokens at once, three
/// 200s and nine 429s.) Nothing was spent: three wrong guesses after them are still checked.
#[tokio::test]
async fn valid_requests_sent_together_pass_the_guard() {
    let idp = Idp::start().await;
    idp.mode(Mode::Slow(Duration::from_millis(200)));
    for i in 0..12 {
        idp.answer(
            &format!("valid-{i}"),
            json!({"active": true, "sub": format!("user-{i}"), "aud": "api"}),
        );
    }
    let gw = guarded_gateway(&idp).await;
    let mut valid = tokio::task::JoinSet::new();
    for i in 0..12 {
        let addr = gw.addr();
        valid.spawn(async move {
            let req = Request::get("/api/x")
                .header("authorization", bearer(&format!("valid-{i}")))
                .body(Full::default())
                .unwrap();
            send(addr, req).await.0.as_u16()
        });
    }
    let statuses: Vec<u16> = valid.join_all().await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(idp.hits(), 12, "each token checked once");
    idp.mode(Mode::Serve);
    for i in 0..3 {
        refused(
            &gw,
            "/api/x",
            &[("authorization", &bearer(&format!("guess-{i}")))],
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    refused(
        &gw,
        "/api/x",
        &[("authorization", &bearer("valid-0"))],
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
}

#[tokio::test]
async fn introspection_server_down_slow_failing_or_garbage_gives_503_then_recovers() {
    let mut idp = Idp::start().await;
    idp.answer("t", json!({"active": true, "sub": "a", "aud": "api"}));
    let gw = opaque_gateway(&idp, "      cache_ttl: 0s\n").await;
    let t = bearer("t");
    for mode in [
        Mode::Slow(Duration::from_secs(3)),
        Mode::Status(500),
        Mode::Garbage,
    ] {
        idp.mode(mode);
        let started = std::time::Instant::now();
        refused(
            &gw,
            "/api/x",
            &[("authorization", &t)],
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded by the timeout"
        );
    }
    idp.mode(Mode::Serve);
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", &t)]).await,
        StatusCode::OK
    );
    // Down: connection refused.
    idp.stop().await;
    refused(
        &gw,
        "/api/x",
        &[("authorization", &t)],
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
}

#[tokio::test]
async fn introspection_cache_never_serves_a_token_past_its_exp() {
    let idp = Idp::start().await;
    let exp = now() + 2;
    idp.answer(
        "short",
        json!({"active": true, "sub": "a", "aud": "api", "exp": exp}),
    );
    let gw = opaque_gateway(&idp, "").await;
    let t = bearer("short");
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", &t)]).await,
        StatusCode::OK
    );
    while now() < exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = idp.hits();
    refused(
        &gw,
        "/api/x",
        &[("authorization", &t)],
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        idp.hits(),
        hits + 1,
        "asked again, not served from the cache"
    );
}

#[tokio::test]
async fn an_introspected_token_grants_only_routes_that_accept_its_authenticator() {
    let idp = Idp::start().await;
    idp.answer("t", json!({"active": true, "sub": "a", "aud": "api"}));
    let mut extra = introspection(&idp, "");
    extra.push_str("  partners:\n    api_key:\n      from: [bearer]\n      keys: []\n");
    let policy = format!(
        "{}  - name: partners\n    match: {{paths: [\"/partners/**\"]}}\n    effect: allow\n    authenticators: [partners]\n    upstream: echo\n",
        policy("opaque")
    );
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), policy)],
        files: vec![("client.secret".into(), b"s3cret-secret".to_vec())],
        extra,
        ..Setup::default()
    }
    .start()
    .await;
    let t = bearer("t");
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", &t)]).await,
        StatusCode::OK
    );
    refused(
        &gw,
        "/partners/x",
        &[("authorization", &t)],
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

// === mTLS ===

pub(crate) struct Pki {
    pub(crate) ca: String,
    pub(crate) server_cert: String,
    pub(crate) server_key: String,
    /// `CN=billing`, `URI:spiffe://corp.test/billing`, from `ca`.
    pub(crate) client: (String, String),
    rogue_ca: String,
    rogue_client: (String, String),
}

/// A clients CA with a server and a client certificate, and a rogue CA with a client.
pub(crate) fn pki() -> Pki {
    use rcgen::{
        CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType,
    };
    let ca = crate::support::private_ca;
    let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>, cn: &str, san: SanType, usage| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = vec![san];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let good = ca("clients CA");
    let rogue = ca("rogue CA");
    let (server_cert, server_key) = leaf(
        &good,
        "localhost",
        SanType::DnsName("localhost".try_into().unwrap()),
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let uri = |u: &str| SanType::URI(u.try_into().unwrap());
    Pki {
        ca: good.pem(),
        server_cert,
        server_key,
        client: leaf(
            &good,
            "billing",
            uri("spiffe://corp.test/billing"),
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        rogue_ca: rogue.pem(),
        rogue_client: leaf(
            &rogue,
            "billing",
            uri("spiffe://corp.test/billing"),
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    }
}

/// Secrets written inline where `{env:}`/`{file:}` belongs, and URLs with credentials in
/// them, are refused without being shown: `check` names the field, never the value.
#[test]
fn inline_secrets_and_url_credentials_are_never_shown() {
    let cfg = crate::support::ConfigDir::new(
        "authenticators:\n  opaque:\n    introspection:\n      endpoint: https://idp.example/introspect\n      client_id: gateway\n      client_secret: SuperSecretClientValue123\n      audiences: [api]\n  remote:\n    jwt:\n      providers:\n        - issuer: https://idp.example\n          audiences: [api]\n          keys: [{jwks_url: {url: \"https://u:JwksPassGHI@idp.example/jwks\"}}]\nredis:\n  url: \"default:RedisPassCCC@redis.internal:6379\"\n  password: 8675309112233\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    for secret in ["SuperSecret", "JwksPass", "RedisPass", "8675309"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(text.contains("client_secret"), "{text}");
}

/// An introspection authenticator without `audiences` takes a token issued for any client
/// of the authorization server: `check` says so; with them, nothing is said.
#[test]
fn introspection_without_audiences_warns() {
    let authn = |audiences: &str| {
        format!(
            "authenticators:\n  opaque:\n    introspection:\n      endpoint: http://127.0.0.1:9/introspect\n      client_id: gateway\n      client_secret: {{file: client.secret}}\n{audiences}"
        )
    };
    let cfg = crate::support::ConfigDir::new(&authn(""));
    cfg.write("client.secret", "s3cret");
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("warning: authenticators.opaque.introspection: no `audiences`"),
        "{text}"
    );
    let cfg = crate::support::ConfigDir::new(&authn("      audiences: [api]\n"));
    cfg.write("client.secret", "s3cret");
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("no `audiences`"), "{text}");
}

/// A client's certificate in `ca_file` (beside or instead of its CA): rustls takes it as a
/// trust anchor, and any certificate its key signs passes, whatever subject it names. `check`
/// warns and names it; the listener still loads; the CA alone draws no warning.
#[test]
fn client_auth_ca_file_that_is_not_a_ca_warns() {
    let pki = pki();
    let cfg = crate::support::ConfigDir::new("");
    cfg.write("server.crt", &pki.server_cert)
        .write("server.key", &pki.server_key)
        .write("clients.pem", &pki.ca);
    cfg.add_listeners(
        "{name: mtls, address: \"127.0.0.1:0\", tls: {certificates: [{cert: server.crt, key: server.key}], client_auth: {ca_file: clients.pem}}}",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("not a CA certificate"), "{text}");
    cfg.write("clients.pem", format!("{}{}", pki.ca, pki.client.0));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("warning: listeners[1].tls.client_auth.ca_file: certificate 2 in ")
            && text.contains("clients.pem (`CN=billing`) is not a CA certificate: clients are accepted with any certificate its key signs"),
        "{text}"
    );
    assert_eq!(text.matches("not a CA certificate").count(), 1, "{text}");
}

async fn mtls_gateway(pki: &Pki, required: bool) -> TestGateway {
    mtls_gateway_with(pki, required, "{}").await
}

async fn mtls_gateway_with(pki: &Pki, required: bool, mtls: &str) -> TestGateway {
    Setup {
        listeners: format!(
            "  - name: http\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{cert: server.crt, key: server.key}}\n      client_auth: {{ca_file: clients.pem, required: {required}}}\n  - name: internal\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{cert: server.crt, key: server.key}}\n      client_auth: {{ca_file: clients.pem}}\n"
        ),
        policies: vec![("10-p.yaml".into(), policy("devices"))],
        files: vec![
            ("server.crt".into(), pki.server_cert.clone().into_bytes()),
            ("server.key".into(), pki.server_key.clone().into_bytes()),
            ("clients.pem".into(), pki.ca.clone().into_bytes()),
        ],
        extra: format!(
            "authenticators:\n  devices:\n    mtls: {mtls}\n  partner-devices:\n    mtls: {{listeners: [http]}}\n"
        ),
        ..Setup::default()
    }
    .start()
    .await
}

/// GET `path` over TLS presenting `client` (cert, key) if any; `Err` when TLS refuses.
async fn mtls_get(
    addr: SocketAddr,
    ca: &str,
    client: Option<&(String, String)>,
    path: &str,
) -> Result<StatusCode, String> {
    mtls_request(addr, ca, client, "localhost", "localhost", path).await
}

/// [`mtls_get`] with the SNI and the `Host` header chosen; `trusted` may hold several PEMs.
async fn mtls_request(
    addr: SocketAddr,
    trusted: &str,
    client: Option<&(String, String)>,
    sni: &str,
    host: &str,
    path: &str,
) -> Result<StatusCode, String> {
    mtls_exchange(addr, trusted, client, sni, host, path)
        .await
        .map(|(status, _)| status)
}

/// A TLS client trusting the certificates in `trusted` (PEM, one or more), presenting
/// `client` (cert, key) if any.
fn client_tls(trusted: &str, client: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(trusted.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// [`mtls_request`], with the response body.
pub(crate) async fn mtls_exchange(
    addr: SocketAddr,
    trusted: &str,
    client: Option<&(String, String)>,
    sni: &str,
    host: &str,
    path: &str,
) -> Result<(StatusCode, Bytes), String> {
    use rustls::pki_types::ServerName;
    let cfg = client_tls(trusted, client);
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = send
            .send_request(
                Request::get(path)
                    .header("host", host)
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("in time")
}

/// A reload that replaces the client CA ends the authentication of connections whose
/// certificate the old one verified: their next request is misdirected (421, nothing reaches
/// the upstream), and a new connection is verified by the new CA. A reload that leaves the CA
/// alone leaves them be.
/// One kept-alive HTTP/1.1 connection over TLS with `sni`, trusting `trusted` (PEMs),
/// presenting `client` (cert, key) if any: `get(host, path)` sends on it.
struct KeptAlive(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl KeptAlive {
    async fn open(
        addr: SocketAddr,
        trusted: &[&str],
        client: Option<&(String, String)>,
        sni: &str,
    ) -> Self {
        use rustls::pki_types::ServerName;
        let cfg = client_tls(&trusted.concat(), client);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self(send)
    }

    async fn get(&mut self, host: &str, path: &str) -> StatusCode {
        let resp = self
            .0
            .send_request(
                Request::get(path)
                    .header("host", host)
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        status
    }
}

#[tokio::test]
async fn a_client_ca_change_ends_old_connections_authentication() {
    let pki = pki();
    let gw = mtls_gateway(&pki, true).await;
    let mut conn = KeptAlive::open(gw.addr(), &[&pki.ca], Some(&pki.client), "localhost").await;
    let mut get = async |path: &str| conn.get("localhost", path).await;
    assert_eq!(get("/api/1").await, StatusCode::OK);
    // A reload that changes nothing of the client CA.
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get("/api/2").await, StatusCode::OK);
    // A rollover: a second CA added beside the partner's. The connection's certificate is
    // still trusted, so the connection keeps working (no 421 for a still-trusted client).
    gw.write(
        "clients.pem",
        format!("{}{}", pki.rogue_ca, pki.ca).as_bytes(),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(get("/api/2b").await, StatusCode::OK);
    assert_eq!(get("/api/2c").await, StatusCode::OK);
    // The partner's CA is replaced by another.
    gw.write("clients.pem", pki.rogue_ca.as_bytes());
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = gw.echo.count();
    assert_eq!(get("/api/3").await, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(gw.echo.count(), before, "nothing reached the upstream");
    // A new connection: the old CA's client is refused, the new CA's accepted.
    assert!(
        mtls_get(gw.addr(), &pki.ca, Some(&pki.client), "/api/4")
            .await
            .is_err()
    );
    assert_eq!(
        mtls_get(gw.addr(), &pki.ca, Some(&pki.rogue_client), "/api/5").await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test]
async fn a_refused_client_certificate_is_counted_by_reason() {
    let pki = pki();
    let gw = mtls_gateway(&pki, true).await;
    // A certificate from an unknown CA, then none where one is required.
    assert!(
        mtls_get(gw.addr(), &pki.ca, Some(&pki.rogue_client), "/api/x")
            .await
            .is_err()
    );
    assert!(mtls_get(gw.addr(), &pki.ca, None, "/api/x").await.is_err());
    let counted = |metrics: &str, reason: &str| {
        metrics.contains(&format!(
            "portcullis_tls_handshake_errors_total{{reason=\"{reason}\"}} 1"
        ))
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, metrics) = gw.admin_get("/metrics").await;
            counted(&metrics, "client_cert_unknown_ca") && counted(&metrics, "client_cert_missing")
        })
        .await,
        "{}",
        gw.admin_get("/metrics").await.1
    );
}

#[tokio::test]
async fn client_certificate_is_a_credential() {
    let pki = pki();
    let gw = mtls_gateway(&pki, false).await;
    let before = gw.echo.count();
    assert_eq!(
        mtls_get(gw.addr(), &pki.ca, Some(&pki.client), "/api/x").await,
        Ok(StatusCode::OK)
    );
    assert_eq!(gw.echo.count(), before + 1);
    // No certificate: no credential; the anonymous route still works.
    assert_eq!(
        mtls_get(gw.addr(), &pki.ca, None, "/api/x").await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        mtls_get(gw.addr(), &pki.ca, None, "/open/x").await,
        Ok(StatusCode::OK)
    );
    // A certificate from another CA never gets a request through.
    let before = gw.echo.count();
    assert!(
        mtls_get(gw.addr(), &pki.ca, Some(&pki.rogue_client), "/api/x")
            .await
            .is_err()
    );
    assert_eq!(gw.echo.count(), before);
}

#[tokio::test]
async fn required_client_certificate_refuses_the_handshake_without_one() {
    let pki = pki();
    let gw = mtls_gateway(&pki, true).await;
    let before = gw.echo.count();
    assert!(mtls_get(gw.addr(), &pki.ca, None, "/open/x").await.is_err());
    assert_eq!(gw.echo.count(), before);
    assert_eq!(
        mtls_get(gw.addr(), &pki.ca, Some(&pki.client), "/api/x").await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test]
async fn a_certificate_counts_only_on_the_listeners_an_mtls_authenticator_names() {
    let pki = pki();
    // `devices` trusts only certificates from a listener named `internal`, which this
    // connection did not come through: its certificate is no credential here.
    let gw = mtls_gateway_with(&pki, false, "{listeners: [internal]}").await;
    assert_eq!(
        mtls_get(gw.addr(), &pki.ca, Some(&pki.client), "/api/x").await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        mtls_get(gw.addr_of("internal"), &pki.ca, Some(&pki.client), "/api/x").await,
        Ok(StatusCode::OK)
    );
}

/// The introspection client secret read from a file: overwrite it and reload, and the
/// authorization server is called with the new secret (the file is watched and hashed into
/// the config version).
#[tokio::test]
async fn rotated_introspection_client_secret_file_applies_on_reload() {
    let idp = Idp::start().await;
    for t in ["opaque-1", "opaque-2"] {
        idp.answer(
            t,
            json!({"active": true, "sub": "alice", "aud": "api", "exp": now() + 300}),
        );
    }
    let gw = opaque_gateway(&idp, "").await;
    let basic = |secret: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("gateway:{secret}"))
        )
    };
    let t1 = bearer("opaque-1");
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", &t1)]).await,
        StatusCode::OK
    );
    let first = idp.state.lock().unwrap().last_auth.clone();
    assert_eq!(
        first.as_deref(),
        Some(&*basic("s3cret%3Awith%26odd%3Dchars"))
    );

    let before = gw.app().version();
    std::fs::write(gw.path("client.secret"), "rotated-secret").unwrap();
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("applied"), "{body}");
    assert_ne!(gw.app().version(), before);
    let t2 = bearer("opaque-2");
    assert_eq!(
        call(&gw, "/api/x", &[("authorization", &t2)]).await,
        StatusCode::OK
    );
    let second = idp.state.lock().unwrap().last_auth.clone();
    assert_eq!(second.as_deref(), Some(&*basic("rotated-secret")));
}

/// One listener, two hosts, each requiring client certificates from its own CA. A client
/// certificate from CA-A gets in on a.test only: b.test refuses the handshake, and a request
/// for b.test sent over a connection made for a.test gets 421 (its upstream sees nothing).
/// A gateway with one listener for a.test (client CA-A, required when `a_required`) and
/// b.test (client CA-B, required), an `mtls` authenticator on `/api/**`, and the two server
/// certificates. CA-A is the `pki` clients CA; CA-B the other one (its client is
/// `rogue_client`).
async fn two_host_gateway(
    pki: &Pki,
    a_required: bool,
) -> (crate::support::TestGateway, String, String) {
    let (a_cert, a_key) = portcullis::tls::certs::self_signed(&["a.test"]).unwrap();
    let (b_cert, b_key) = portcullis::tls::certs::self_signed(&["b.test"]).unwrap();
    let listeners = format!(
        "  - name: http
    address: 127.0.0.1:0
    tls:
      certificates:
        - {{cert: a.crt, key: a.key, client_auth: {{ca_file: ca-a.pem, required: {a_required}}}}}
        - {{cert: b.crt, key: b.key, client_auth: {{ca_file: ca-b.pem, required: true}}}}
"
    );
    let gw = Setup {
        listeners,
        policies: vec![("10-p.yaml".into(), policy("devices"))],
        files: vec![
            ("a.crt".into(), a_cert.clone().into_bytes()),
            ("a.key".into(), a_key.into_bytes()),
            ("b.crt".into(), b_cert.clone().into_bytes()),
            ("b.key".into(), b_key.into_bytes()),
            ("ca-a.pem".into(), pki.ca.clone().into_bytes()),
            ("ca-b.pem".into(), pki.rogue_ca.clone().into_bytes()),
        ],
        extra: "authenticators:\n  devices:\n    mtls: {}\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    (gw, a_cert, b_cert)
}

#[tokio::test]
async fn client_ca_per_host() {
    let pki = pki();
    let (gw, a_cert, b_cert) = two_host_gateway(&pki, true).await;
    let trusted = format!("{a_cert}{b_cert}");
    let a_client = Some(&pki.client);
    let b_client = Some(&pki.rogue_client);
    let go = |client, sni: &'static str, host: &'static str| {
        let trusted = trusted.clone();
        let addr = gw.addr();
        async move { mtls_request(addr, &trusted, client, sni, host, "/api/x").await }
    };
    assert_eq!(go(a_client, "a.test", "a.test").await, Ok(StatusCode::OK));
    assert_eq!(go(b_client, "b.test", "b.test").await, Ok(StatusCode::OK));
    // The wrong CA for the host: no handshake.
    assert!(go(a_client, "b.test", "b.test").await.is_err());
    assert!(go(b_client, "a.test", "a.test").await.is_err());
    // Domain fronting: the handshake for a.test, the request for b.test.
    let before = gw.echo.count();
    assert_eq!(
        go(a_client, "a.test", "b.test").await,
        Ok(StatusCode::MISDIRECTED_REQUEST)
    );
    assert_eq!(
        go(a_client, "a.test", "B.TEST:443").await,
        Ok(StatusCode::MISDIRECTED_REQUEST)
    );
    assert_eq!(
        gw.echo.count(),
        before,
        "a misdirected request reaches no upstream"
    );
    // A host no certificate names belongs to the default (first) entry.
    assert_eq!(
        go(a_client, "a.test", "other.test").await,
        Ok(StatusCode::OK)
    );
}

/// b.test's certificate renewed without its name (its entry's names are the certificate's):
/// the reload is refused, so b.test keeps requiring CA-B, where it fell to the default entry
/// and its CA-A, and a CA-A certificate reached b.test's rule. Named in `server_names`, the
/// move is taken.
#[tokio::test]
async fn a_renewed_certificate_never_moves_a_host_to_another_client_ca() {
    let pki = pki();
    let (gw, a_cert, b_cert) = two_host_gateway(&pki, false).await;
    let (b2_cert, b2_key) = portcullis::tls::certs::self_signed(&["b2.test"]).unwrap();
    let (ab_cert, ab_key) = portcullis::tls::certs::self_signed(&["a.test", "b.test"]).unwrap();
    let trusted = format!("{a_cert}{b_cert}{b2_cert}{ab_cert}");
    let addr = gw.addr();
    let go = |sni: &'static str| {
        let trusted = trusted.clone();
        let client = pki.client.clone();
        async move { mtls_request(addr, &trusted, Some(&client), sni, sni, "/api/x").await }
    };
    assert!(go("b.test").await.is_err(), "CA-A on b.test");
    gw.write("b.crt", &b2_cert);
    gw.write("b.key", &b2_key);
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.contains("listeners[0].tls.certificates") && body.contains("`b.test` would move"),
        "{body}"
    );
    let before = gw.echo.count();
    assert!(
        go("b.test").await.is_err(),
        "CA-A on b.test after the reload"
    );
    assert_eq!(gw.echo.count(), before);
    // Moved on purpose: the operator names it (with a certificate for it).
    gw.write("a.crt", &ab_cert);
    gw.write("a.key", &ab_key);
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write(
        "portcullis.yaml",
        config.replace(
            "client_auth: {ca_file: ca-a.pem, required: false}}",
            "client_auth: {ca_file: ca-a.pem, required: false}, server_names: [a.test, b.test]}",
        ),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(go("b.test").await, Ok(StatusCode::OK));
}

/// A reload that gives each host its own client CA (where one CA bundle was shared) binds the
/// connections opened before it too: a connection made for a.test with a CA-A certificate
/// may no longer carry requests for b.test, which now requires CA-B (421), though its
/// certificate is still trusted for a.test.
#[tokio::test]
async fn a_reload_that_splits_client_cas_binds_old_connections() {
    let pki = pki();
    let (a_cert, a_key) = portcullis::tls::certs::self_signed(&["a.test"]).unwrap();
    let (b_cert, b_key) = portcullis::tls::certs::self_signed(&["b.test"]).unwrap();
    let shared = "        - {cert: a.crt, key: a.key}
        - {cert: b.crt, key: b.key}
      client_auth: {ca_file: both.pem, required: true}
";
    let split =
        "        - {cert: a.crt, key: a.key, client_auth: {ca_file: ca-a.pem, required: true}}
        - {cert: b.crt, key: b.key, client_auth: {ca_file: ca-b.pem, required: true}}
";
    let gw = Setup {
        listeners: format!(
            "  - name: http\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n{shared}"
        ),
        policies: vec![("10-p.yaml".into(), policy("devices"))],
        files: vec![
            ("a.crt".into(), a_cert.clone().into_bytes()),
            ("a.key".into(), a_key.into_bytes()),
            ("b.crt".into(), b_cert.clone().into_bytes()),
            ("b.key".into(), b_key.into_bytes()),
            (
                "both.pem".into(),
                format!("{}{}", pki.ca, pki.rogue_ca).into_bytes(),
            ),
            ("ca-a.pem".into(), pki.ca.clone().into_bytes()),
            ("ca-b.pem".into(), pki.rogue_ca.clone().into_bytes()),
        ],
        extra: "authenticators:\n  devices:\n    mtls: {}\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let mut conn =
        KeptAlive::open(gw.addr(), &[&a_cert, &b_cert], Some(&pki.client), "a.test").await;
    let mut get = async |host: &str| conn.get(host, "/api/x").await;
    // One CA for every host: the connection may carry either host.
    assert_eq!(get("a.test").await, StatusCode::OK);
    assert_eq!(get("b.test").await, StatusCode::OK);
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write("portcullis.yaml", config.replace(shared, split));
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Its own host still passes (CA-A still trusted for a.test); b.test now requires CA-B.
    assert_eq!(get("a.test").await, StatusCode::OK);
    let before = gw.echo.count();
    assert_eq!(get("b.test").await, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(gw.echo.count(), before, "nothing reached the upstream");
}

/// A reload that requires client certificates binds the connections made without one: their
/// next request is misdirected (421), as a new connection would fail its handshake.
#[tokio::test]
async fn a_reload_requiring_certificates_binds_old_connections() {
    let pki = pki();
    let (a_cert, a_key) = portcullis::tls::certs::self_signed(&["a.test"]).unwrap();
    let open = "        - {cert: a.crt, key: a.key}\n";
    let required = "        - {cert: a.crt, key: a.key}\n      client_auth: {ca_file: clients.pem, required: true}\n";
    let gw = Setup {
        listeners: format!(
            "  - name: http\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n{open}"
        ),
        policies: vec![("10-p.yaml".into(), policy("devices"))],
        files: vec![
            ("a.crt".into(), a_cert.clone().into_bytes()),
            ("a.key".into(), a_key.into_bytes()),
            ("clients.pem".into(), pki.ca.clone().into_bytes()),
        ],
        extra: "authenticators:\n  devices:\n    mtls: {}\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let mut conn = KeptAlive::open(gw.addr(), &[&a_cert], None, "a.test").await;
    let mut get = async || conn.get("a.test", "/open/x").await;
    assert_eq!(get().await, StatusCode::OK);
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write("portcullis.yaml", config.replace(open, required));
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = gw.echo.count();
    assert_eq!(get().await, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(gw.echo.count(), before, "nothing reached the upstream");
}

/// An API key sent in its own header is not a bearer token: a 401 challenges with the
/// `ApiKey` scheme (both schemes when the rule also takes bearer tokens), as do a 403 for a
/// missing scope and a 400 for two keys; the verified key is stripped before forwarding
/// unless the authenticator says `strip: false`.
#[tokio::test]
async fn api_key_challenges_name_their_scheme_and_keys_are_stripped_by_default() {
    let key = generate().unwrap();
    let extra = format!(
        "{}  partners:\n    api_key: {{keys_file: apikeys.yaml}}\n  internal:\n    api_key: {{keys_file: apikeys.yaml, from: [{{header: x-internal-key}}]}}\n",
        crate::support::hs256_users("{}")
    );
    let policy = "rules:
  - name: keys
    match: {paths: [\"/keys/**\"]}
    effect: allow
    authenticators: [partners]
    upstream: echo
  - name: both
    match: {paths: [\"/both/**\"]}
    effect: allow
    authenticators: [users, partners]
    upstream: echo
  - name: admin
    match: {paths: [\"/admin/**\"]}
    effect: allow
    authenticators: [partners]
    require: {scopes: {all_of: [admin]}}
    upstream: echo
  - name: keys-first
    match: {paths: [\"/either/**\"]}
    effect: allow
    authenticators: [partners, users]
    upstream: echo
  - name: two-keys
    match: {paths: [\"/keys2/**\"]}
    effect: allow
    authenticators: [partners, internal]
    upstream: echo
";
    let gw = Setup {
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![
            ("apikeys.yaml".into(), key_file(&[("k1", &key, "")])),
            ("hs.secret".into(), vec![b's'; 32]),
        ],
        extra,
        ..Setup::default()
    }
    .start()
    .await;
    let challenge = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let addr = gw.addr();
        async move {
            let mut req = Request::get(path);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let (status, h, _) = send(addr, req.body(Full::default()).unwrap()).await;
            let c = h
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, c)
        }
    };
    assert_eq!(
        challenge("/keys/x", vec![]).await,
        (
            StatusCode::UNAUTHORIZED,
            Some("ApiKey realm=\"portcullis\"".into())
        )
    );
    assert_eq!(
        challenge("/keys/x", vec![("x-api-key", "pk_wrong".into())]).await,
        (
            StatusCode::UNAUTHORIZED,
            // The body's code (`invalid_token`): one refusal, one code.
            Some("ApiKey realm=\"portcullis\", error=\"invalid_token\"".into())
        )
    );
    // Regression: a valid key short of a scope, and two keys, were challenged `Bearer`.
    assert_eq!(
        challenge("/admin/x", vec![("x-api-key", key.clone())]).await,
        (
            StatusCode::FORBIDDEN,
            Some(
                "ApiKey realm=\"portcullis\", error=\"insufficient_scope\", scope=\"admin\"".into()
            )
        )
    );
    assert_eq!(
        challenge(
            "/keys/x",
            vec![("x-api-key", key.clone()), ("x-api-key", "pk_other".into())]
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            Some("ApiKey realm=\"portcullis\", error=\"invalid_request\"".into())
        )
    );
    // A key in another spelling (`X_Api_Key`, which CGI-style upstreams read as
    // X-Api-Key) beside a valid bearer token: a credential nobody verified, refused before it
    // rides along with alice's identity. The token alone passes.
    let token = format!(
        "Bearer {}",
        crate::support::hs256_token(&[b's'; 32], &json!({}))
    );
    let before = gw.echo.count();
    let (status, _) = challenge(
        "/both/x",
        vec![
            ("authorization", token.clone()),
            ("x_api_key", "pk_forged".into()),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.echo.count(), before, "nothing reached the upstream");
    let (status, _) = challenge("/both/x", vec![("authorization", token)]).await;
    assert_eq!(status, StatusCode::OK);
    // Two credentials of two schemes are neither's: the generic challenge, whichever
    // authenticator the rule lists first; a doubled bearer beside a key is the bearer's.
    let bearer_request = "Bearer realm=\"portcullis\", error=\"invalid_request\", error_description=\"The request carries more than one credential\"";
    assert_eq!(
        challenge(
            "/either/x",
            vec![
                ("x-api-key", key.clone()),
                ("authorization", "Bearer a.b.c".into())
            ]
        )
        .await,
        (StatusCode::BAD_REQUEST, Some(bearer_request.into()))
    );
    assert_eq!(
        challenge(
            "/either/x",
            vec![
                ("x-api-key", key.clone()),
                ("authorization", "Bearer a.b.c".into()),
                ("authorization", "Bearer d.e.f".into())
            ]
        )
        .await,
        (StatusCode::BAD_REQUEST, Some(bearer_request.into()))
    );
    // Two keys for two API-key authenticators: still the ApiKey scheme's.
    assert_eq!(
        challenge(
            "/keys2/x",
            vec![
                ("x-api-key", key.clone()),
                ("x-internal-key", "pk_other".into())
            ]
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            Some("ApiKey realm=\"portcullis\", error=\"invalid_request\"".into())
        )
    );
    assert_eq!(
        challenge("/both/x", vec![]).await,
        (
            StatusCode::UNAUTHORIZED,
            Some("Bearer realm=\"portcullis\", ApiKey realm=\"portcullis\"".into())
        )
    );
    let (status, c) = challenge(
        "/both/x",
        vec![("authorization", "Bearer not.a.jwt".into())],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        c.unwrap()
            .starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\"")
    );

    assert_eq!(
        challenge("/keys/x", vec![("x-api-key", key.clone())])
            .await
            .0,
        StatusCode::OK
    );
    let seen = gw.echo.last().unwrap();
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "stripped by default"
    );
}

/// `apikey new … >> apikeys.yaml` twice, on a file that did not exist: `check` accepts the
/// result, both keys work, and no error ever names an internal type.
#[tokio::test]
async fn apikey_new_appended_to_a_new_file_makes_a_valid_file() {
    let cfg = crate::support::ConfigDir::new(API_KEYS);
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - name: api\n    match: {paths: [\"/api/**\"]}\n    effect: allow\n    authenticators: [partners]\n    upstream: echo\n",
    );
    let path = cfg.dir.path().join("apikeys.yaml");
    let mut keys = Vec::new();
    for id in ["first", "second"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["apikey", "new", "--id", id, "--owner", "svc"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        keys.push(stderr.lines().last().unwrap().trim().to_owned());
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&out.stdout)
            .unwrap();
    }
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");

    // A file that is neither form names no internal type.
    cfg.write("apikeys.yaml", "just a string\n");
    let (code, text) = cfg.run("check", &[]);
    assert_ne!(code, Some(0));
    assert!(text.contains("apikeys.yaml:1:1"), "{text}");
    assert!(!text.contains("Raw"), "{text}");
    assert!(
        text.contains("a list of keys, or a mapping with `keys:`"),
        "{text}"
    );
}

/// The config snippet `keys new` prints names the public key by an absolute path: a config
/// reads relative paths from its own directory, not from where the command ran.
#[tokio::test]
async fn keys_new_snippet_path_is_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "new", "--kid", "k9", "--out", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .split("pem_file: {path: ")
        .nth(1)
        .and_then(|rest| rest.split(", kid:").next())
        .unwrap_or_else(|| panic!("no pem_file path: {text}"));
    let path = std::path::Path::new(path);
    assert!(path.is_absolute(), "{text}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        std::fs::read(dir.path().join("k9.pem")).unwrap()
    );
}

/// `keys new` never overwrites a key pair of the same id unless told to.
#[tokio::test]
async fn keys_new_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let run = |force: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        c.args(["keys", "new", "--kid", "k1", "--out"])
            .arg(dir.path());
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    assert!(run(false).status.success());
    let key = dir.path().join("k1.key");
    let first = std::fs::read(&key).unwrap();
    let again = run(false);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        first,
        "the private key is untouched"
    );
    assert!(run(true).status.success());
    assert_ne!(std::fs::read(&key).unwrap(), first);
}
