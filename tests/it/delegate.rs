//! Delegation: a rule asks an external ext_authz gRPC service (a Check server written here)
//! before it allows; answers are cached per rule, request and credential; failures follow
//! the delegate's failure mode; only configured headers of its answer reach the upstream; the
//! delegate is told the headers the upstream gets; a throttled request is never asked about.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::support::{Setup, TestGateway, hs256_token, send};

const SECRET: &[u8] = b"delegate-test-secret-delegate-test-secret-0123";

/// Allows when the request carries `x-delegate-says: yes` and its bearer token's `scope` is
/// not `low`, setting `x-opa-note` (allowed by the config) and `x-sneaky` (not allowed);
/// counts calls; may be slow.
#[derive(Clone, Default)]
pub(crate) struct Opa {
    calls: Arc<AtomicUsize>,
    /// Denies everything while set (access revoked).
    pub(crate) revoked: Arc<std::sync::atomic::AtomicBool>,
    delay: Arc<std::sync::Mutex<Duration>>,
    principal: Arc<std::sync::Mutex<Option<String>>>,
    /// The headers of the last request it was asked about.
    seen: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// The path (and query) of every request it was asked about, in order.
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    /// The `traceparent` and `tracestate` of the last call's gRPC metadata.
    metadata_trace: Arc<std::sync::Mutex<(Option<String>, Option<String>)>>,
}

impl Opa {
    /// The paths it was asked about, sorted (two readings of one path are asked at once).
    fn asked(&self) -> Vec<String> {
        let mut paths = self.paths.lock().unwrap().clone();
        paths.sort();
        paths
    }
}

#[tonic::async_trait]
impl Authorization for Opa {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let text = |k: &str| {
            let v = request.metadata().get(k)?;
            v.to_str().ok().map(str::to_owned)
        };
        *self.metadata_trace.lock().unwrap() = (text("traceparent"), text("tracestate"));
        let attributes = request.into_inner().attributes.unwrap_or_default();
        // Who, as the delegate reads it: the id and the issuer it is unique within.
        let context = |k: &str| attributes.context_extensions.get(k).cloned();
        *self.principal.lock().unwrap() = context("principal_id").map(|id| {
            format!(
                "{id} of {}",
                context("principal_issuer").unwrap_or_default()
            )
        });
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        self.paths.lock().unwrap().push(http.path.clone());
        let evil = http.path.contains("evil");
        let headers = http.headers;
        self.seen.lock().unwrap().clone_from(&headers);
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.into(),
                value: v.into(),
                ..HeaderValue::default()
            }),
            ..HeaderValueOption::default()
        };
        let low_scope = headers
            .get("authorization")
            .is_some_and(|a| claims(a)["scope"] == "low");
        let says_yes = headers.get("x-delegate-says").map(String::as_str) == Some("yes");
        let revoked = self.revoked.load(Ordering::SeqCst);
        let resp = if says_yes && !low_scope && !revoked && !evil {
            CheckResponse {
                status: Some(rpc::Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-opa-note", "checked"), header("x-sneaky", "1")],
                    ..OkHttpResponse::default()
                })),
                ..CheckResponse::default()
            }
        } else {
            CheckResponse {
                status: Some(rpc::Status {
                    code: 7,
                    ..rpc::Status::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    ..DeniedHttpResponse::default()
                })),
                ..CheckResponse::default()
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

/// The claims of a `Bearer` JWT, unverified (the gateway verified it).
fn claims(authorization: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = authorization.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// Serves `opa` on 127.0.0.1:0 until the test ends; returns its address.
pub(crate) async fn serve(opa: Opa) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper_util::service::TowerToHyperService::new(AuthorizationServer::new(
                opa.clone(),
            ));
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

/// Serves `opa` over TLS (ALPN `h2`) with `tls` on 127.0.0.1:0; returns its address.
async fn serve_tls(opa: Opa, tls: Arc<rustls::ServerConfig>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (opa, tls) = (opa.clone(), Arc::clone(&tls));
            tokio::spawn(async move {
                let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await else {
                    return;
                };
                let svc =
                    hyper_util::service::TowerToHyperService::new(AuthorizationServer::new(opa));
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            });
        }
    });
    addr
}

/// An `https://` delegate is spoken to over TLS, its certificate checked: a Check server
/// with a certificate from the configured private CA is asked and believed; a plaintext
/// server behind the same `https://` URL is never sent a check (and so never sees the
/// token), nor is one whose certificate the roots do not vouch for: both fail closed (503).
#[tokio::test]
async fn https_delegate_is_reached_over_tls_only() {
    let (ca_pem, tls) = crate::support::tls_peer(&["localhost"], true);
    let gateway_to = |port: u16, ca: bool| {
        let ca_line = if ca { "    ca_file: ca.pem\n" } else { "" };
        Setup {
            policies: vec![(
                "10-p.yaml".into(),
                "rules:\n  - name: reports\n    match: {paths: [\"/reports/**\"]}\n    effect: allow\n    authenticators: [users]\n    delegate: opa\n    upstream: echo\n".into(),
            )],
            files: vec![
                ("hs.secret".into(), SECRET.to_vec()),
                ("ca.pem".into(), ca_pem.clone().into_bytes()),
            ],
            extra: format!(
                "{}delegates:\n  opa:\n    grpc: https://localhost:{port}\n{ca_line}    timeout: 1s\n    failure_mode: deny\n",
                crate::support::hs256_users("{}")
            ),
            ..Setup::default()
        }
    };
    let secure = Opa::default();
    let secure_port = serve_tls(secure.clone(), tls).await.port();
    let gw = gateway_to(secure_port, true).start().await;
    assert_eq!(
        get(&gw, "/reports/1", "yes", "alice").await.0,
        StatusCode::OK
    );
    assert_eq!(secure.calls.load(Ordering::SeqCst), 1);

    // Regression: the check went out in cleartext to whatever listened there.
    let plain = Opa::default();
    let port = serve(plain.clone()).await.port();
    let gw = gateway_to(port, true).start().await;
    let (status, body) = get(&gw, "/reports/2", "yes", "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("delegate_unavailable"), "{body}");
    assert_eq!(
        plain.calls.load(Ordering::SeqCst),
        0,
        "a check sent in cleartext"
    );

    // Without `ca_file`, the webpki roots, which do not vouch for the private CA.
    let gw = gateway_to(secure_port, false).start().await;
    let (status, _) = get(&gw, "/reports/3", "yes", "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        secure.calls.load(Ordering::SeqCst),
        1,
        "an unverified server was asked"
    );
}

/// Rules: `reports` (users, delegated), `public` (anonymous, delegated), `limited` (users,
/// delegated, over a rate limit of one request a minute per principal).
async fn gateway(grpc: &str, failure_mode: &str) -> TestGateway {
    gateway_with(grpc, failure_mode, &Setup::default().listeners).await
}

/// [`gateway`] with these listeners.
async fn gateway_with(grpc: &str, failure_mode: &str, listeners: &str) -> TestGateway {
    let policy = "rules:
  - name: reports
    match: {paths: [\"/reports/**\"]}
    effect: allow
    authenticators: [users]
    delegate: opa
    upstream: echo
  - name: public
    match: {paths: [\"/public/**\"]}
    effect: allow
    anonymous: true
    delegate: opa
    upstream: echo
  - name: limited
    match: {paths: [\"/limited/**\"]}
    effect: allow
    authenticators: [users]
    rate_limit: one
    delegate: opa
    upstream: echo
";
    Setup {
        listeners: listeners.to_owned(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}identity_headers:\n  x-user-id: \"{{principal.id}}\"\n  x-user-roles: \"{{principal.roles}}\"\ndelegates:\n  opa:\n    grpc: {grpc}\n    timeout: 300ms\n    failure_mode: {failure_mode}\n    headers: [x-opa-note]\nrate_limits:\n  one: {{key: principal, requests: 1, per: 1m, burst: 1}}\n",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await
}

/// A token for `claims` (`sub` at least), the same for the same claims: a fixed `exp`, so
/// two requests in different seconds carry one credential.
fn token(claims: &serde_json::Value) -> String {
    let mut c = claims.clone();
    c["exp"] = json!(4_000_000_000_u64);
    hs256_token(SECRET, &c)
}

async fn get(gw: &TestGateway, path: &str, says: &str, sub: &str) -> (StatusCode, String) {
    let token = token(&json!({"sub": sub}));
    let req = Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .header("x-delegate-says", says)
        .header("x-opa-note", "forged")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(gw.addr(), req).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A request's own identifiers are not sent to the delegate: requests that differ only in
/// their `traceparent`, `tracestate` or request id (an instrumented client sends a fresh one
/// each time; a malformed one is replaced before the upstream) are one request to the
/// delegate, answered once and then from the cache. The call itself is a hop of the trace:
/// its gRPC metadata carries the `traceparent` the upstream gets (the client's trace, the
/// gateway's span), never the client's own.
#[tokio::test]
async fn trace_context_and_request_id_do_not_defeat_the_cache() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;
    let token = token(&json!({"sub": "alice"}));
    for i in 0..4 {
        let req = Request::get("/reports/traced")
            .header("authorization", format!("Bearer {token}"))
            .header("x-delegate-says", "yes")
            .header(
                "traceparent",
                format!("00-4bf92f3577b34da6a3ce929d0e0e47{i:02x}-00f067aa0ba902b7-01"),
            )
            .header("tracestate", format!("vendor=v{i}"))
            .header("x-request-id", format!("request-{i}"))
            .body(Full::default())
            .unwrap();
        assert_eq!(send(gw.addr(), req).await.0, StatusCode::OK, "request {i}");
        if i == 0 {
            let upstream = crate::support::echoed_header(&gw.echo, "traceparent")
                .expect("the upstream gets a traceparent");
            let (parent, state) = opa.metadata_trace.lock().unwrap().clone();
            let parent = parent.expect("the Check call carries a traceparent");
            assert_eq!(parent, upstream, "the delegate's parent is the upstream's");
            assert!(
                parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4700-")
                    && !parent.contains("00f067aa0ba902b7"),
                "the client's trace, the gateway's span: {parent}"
            );
            assert_eq!(state.as_deref(), Some("vendor=v0"));
        }
    }
    assert_eq!(
        opa.calls.load(Ordering::SeqCst),
        1,
        "asked once, then cached"
    );
    let metrics = gw.admin_get("/metrics").await.1;
    for want in [
        "portcullis_delegate_checks_total{delegate=\"opa\",result=\"allow\"} 1",
        "portcullis_delegate_checks_total{delegate=\"opa\",result=\"cached\"} 3",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    let seen = opa.seen.lock().unwrap().clone();
    for name in ["traceparent", "tracestate", "x-request-id"] {
        assert!(
            !seen.contains_key(name),
            "{name} sent to the delegate: {seen:?}"
        );
    }
    assert_eq!(seen["x-delegate-says"], "yes", "other headers still are");
}

/// The delegate is asked about the path as the upstream receives it: asked about `/@x`
/// decoded, a delegate allowing `/public/@` allowed `/public/%40x`, which an upstream routing
/// on the raw path serves from another handler.
#[tokio::test]
async fn the_delegate_is_asked_about_the_path_as_forwarded() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;
    // Asked about the path as forwarded, then, when the rules read another, about that too.
    for (sent, asked) in [
        (
            "/public/%40x?q=1",
            &["/public/%40x?q=1", "/public/@x?q=1"][..],
        ),
        ("/public/@x", &["/public/@x"]),
        ("/public/%61/./b", &["/public/a/b"]),
    ] {
        opa.paths.lock().unwrap().clear();
        let (status, body) = get(&gw, sent, "yes", "alice").await;
        assert_eq!(status, StatusCode::OK, "{sent}: {body}");
        assert_eq!(opa.asked(), asked, "{sent}");
        let forwarded = gw.echo.last().unwrap().target;
        assert_eq!(
            forwarded, asked[0],
            "{sent}: what the delegate saw is what was forwarded"
        );
    }
}

/// At a decision door the peer forwards the path as the client sent it, and the upstream
/// decodes it: the delegate is asked about that path and the canonical one, and refuses at
/// every door what it refuses at the proxy.
#[tokio::test]
async fn the_delegate_is_asked_about_both_readings_of_a_path() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway_with(
        &format!("http://{addr}"),
        "deny",
        "  - name: http\n    address: 127.0.0.1:0\n  - name: doors\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n",
    )
    .await;
    let door = |uri: &'static str| {
        let req = Request::get("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "app.test")
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-for", "127.0.0.1")
            .header("x-delegate-says", "yes")
            .body(Full::default())
            .unwrap();
        send(gw.addr_of("doors"), req)
    };
    // The proxy forwards the canonical path: one reading, refused.
    assert_eq!(
        get(&gw, "/public/z/%65vil", "yes", "alice").await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(*opa.paths.lock().unwrap(), ["/public/z/evil"]);
    opa.paths.lock().unwrap().clear();
    let (status, _, _) = door("/public/z/%65vil").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(opa.asked(), ["/public/z/%65vil", "/public/z/evil"]);
    // A path with one reading is asked about once, and allowed.
    opa.paths.lock().unwrap().clear();
    let (status, _, _) = door("/public/z/fine").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(*opa.paths.lock().unwrap(), ["/public/z/fine"]);
}

/// The two readings are asked at once, each with the delegate's whole `timeout`: one after
/// the other, the second got what the first left of a door's deadline (400 ms here, the
/// delegate answering in 200 ms), ran out, and a delegate failing open let the refused
/// reading through.
#[tokio::test]
async fn both_readings_are_asked_at_once() {
    let opa = Opa::default();
    *opa.delay.lock().unwrap() = Duration::from_millis(200);
    let addr = serve(opa.clone()).await;
    let gw = gateway_with(
        &format!("http://{addr}"),
        "allow",
        "  - name: http\n    address: 127.0.0.1:0\n  - name: doors\n    address: 127.0.0.1:0\n    door: {forward_auth: {timeout: 400ms}}\n",
    )
    .await;
    let req = Request::get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-host", "app.test")
        .header("x-forwarded-uri", "/public/z/%65vil")
        .header("x-forwarded-for", "127.0.0.1")
        .header("x-delegate-says", "yes")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(gw.addr_of("doors"), req).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(opa.asked(), ["/public/z/%65vil", "/public/z/evil"]);
}

#[tokio::test]
async fn delegate_allows_denies_and_caches() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;

    let (status, body) = get(&gw, "/reports/q1", "yes", "alice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = gw.echo.last().unwrap().headers;
    assert_eq!(
        seen["x-opa-note"], "checked",
        "the delegate's header, not the client's"
    );
    assert!(
        !seen.contains_key("x-sneaky"),
        "only configured headers pass"
    );
    assert_eq!(
        opa.principal.lock().unwrap().as_deref(),
        Some("alice of https://iss.test")
    );

    // The same rule, request and credential: answered from the cache.
    assert_eq!(
        get(&gw, "/reports/q1", "yes", "alice").await.0,
        StatusCode::OK
    );
    assert_eq!(opa.calls.load(Ordering::SeqCst), 1);
    // Another credential or path is asked again.
    assert_eq!(
        get(&gw, "/reports/q1", "yes", "bob").await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&gw, "/reports/q2", "yes", "alice").await.0,
        StatusCode::OK
    );
    assert_eq!(opa.calls.load(Ordering::SeqCst), 3);

    let before = gw.echo.count();
    let (status, body) = get(&gw, "/reports/q3", "no", "alice").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("delegate_denied"), "{body}");
    assert_eq!(gw.echo.count(), before);
}

#[tokio::test]
async fn delegate_failures_follow_the_failure_mode() {
    let opa = Opa::default();
    *opa.delay.lock().unwrap() = Duration::from_secs(2);
    let addr = serve(opa.clone()).await;
    // Too slow, fail closed: 503, quickly.
    let gw = gateway(&format!("http://{addr}"), "deny").await;
    let started = std::time::Instant::now();
    let (status, body) = get(&gw, "/reports/q1", "yes", "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("delegate_unavailable"), "{body}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "bounded by its timeout"
    );
    // Too slow, fail open: allowed.
    let gw = gateway(&format!("http://{addr}"), "allow").await;
    assert_eq!(
        get(&gw, "/reports/q1", "yes", "alice").await.0,
        StatusCode::OK
    );
    // Nobody listening: fail closed.
    let down = gateway("http://127.0.0.1:9", "deny").await;
    assert_eq!(
        get(&down, "/reports/q1", "yes", "alice").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Each counted as what it was: a timeout (the fail-open gateway), an error.
    let line = |result: &str, n: u32| {
        format!("portcullis_delegate_checks_total{{delegate=\"opa\",result=\"{result}\"}} {n}")
    };
    let metrics = gw.admin_get("/metrics").await.1;
    for want in [line("timeout", 1), line("error", 0), line("allow", 0)] {
        assert!(metrics.contains(&want), "{want} in\n{metrics}");
    }
    let metrics = down.admin_get("/metrics").await.1;
    for want in [line("error", 1), line("timeout", 0)] {
        assert!(metrics.contains(&want), "{want} in\n{metrics}");
    }
}

/// At the gRPC door, a delegate that fails closed is a denied response (503), not a failed
/// call: Envoy's `failure_mode_allow: true` would turn a failed call into an allow.
#[tokio::test]
async fn fail_closed_delegate_is_a_denial_at_the_grpc_door() {
    let policy = "rules:\n  - name: reports\n    match: {paths: [\"/reports/**\"]}\n    effect: allow\n    authenticators: [users]\n    delegate: opa\n";
    let gw = Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}delegates:\n  opa:\n    grpc: http://127.0.0.1:9\n    timeout: 300ms\n    failure_mode: deny\n",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let bearer = format!("Bearer {}", hs256_token(SECRET, &json!({"sub": "alice"})));
    grpc_denies_delegate_unavailable(&gw, &bearer).await;
}

/// A Check of `/reports/q1` with `bearer` at the gateway's `grpc` door is a denied response
/// (503 `delegate_unavailable`), never a failed call.
async fn grpc_denies_delegate_unavailable(gw: &TestGateway, bearer: &str) {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

    let mut client = AuthorizationClient::connect(format!("http://{}", gw.addr_of("grpc")))
        .await
        .unwrap();
    let resp = client
        .check(crate::grpc::check(
            "/reports/q1",
            "198.51.100.9",
            &[("authorization", bearer)],
        ))
        .await
        .expect("a denial, not a failed call")
        .into_inner();
    match resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.map(|s| s.code), Some(503), "{d:?}");
            assert!(d.body.contains("delegate_unavailable"), "{}", d.body);
        }
        other => panic!("expected a denied response, got {other:?}"),
    }
}

/// A gateway with `listeners` whose `/reports/**` rule asks a fail-closed delegate (timeout
/// 10 s) that accepts connections and never says a word, not even the HTTP/2 preface; and the
/// task holding those connections.
async fn hung_delegate_gateway(listeners: &str) -> (TestGateway, tokio::task::JoinHandle<()>) {
    let (hung_addr, held) = crate::support::silent_server().await;
    let policy = "rules:\n  - name: reports\n    match: {paths: [\"/reports/**\"]}\n    effect: allow\n    authenticators: [users]\n    delegate: opa\n";
    let gw = Setup {
        listeners: listeners.into(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}delegates:\n  opa:\n    grpc: http://{hung_addr}\n    timeout: 10s\n    failure_mode: deny\n",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await;
    (gw, held)
}

/// A fail-closed delegate that hangs, with a timeout longer than the door's: the call is cut
/// to end before the door's deadline, so the rule's failure mode answers (a denial) rather
/// than the deadline (UNAVAILABLE, or a 503 `decision_timeout`), which Envoy's
/// `failure_mode_allow: true` turns into an allow.
#[tokio::test]
async fn a_hung_fail_closed_delegate_is_a_denial_within_the_door_deadline() {
    let (gw, held) = hung_delegate_gateway(
        "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {timeout: 400ms}}\n  - name: envoy\n    address: 127.0.0.1:0\n    door: {envoy_http: {timeout: 400ms}}\n",
    )
    .await;
    let bearer = format!("Bearer {}", hs256_token(SECRET, &json!({"sub": "alice"})));
    let started = std::time::Instant::now();
    grpc_denies_delegate_unavailable(&gw, &bearer).await;
    // Bounded by the door's deadline, not the delegate's 10 s (generous for a loaded machine).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let req = Request::get("/reports/q2")
        .header("host", "app.test")
        .header("x-forwarded-for", "198.51.100.9")
        .header("authorization", &bearer)
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(gw.addr_of("envoy"), req).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::FORBIDDEN, "not a 5xx: {body}");
    assert_eq!(headers["x-portcullis-status"], "503");
    assert_eq!(headers["x-portcullis-error"], "delegate_unavailable");
    held.abort();
}

/// A TCP relay to `to`: each connection it accepts is piped to a new one to `to`, until
/// `freeze` is raised past its number (counted from 1): then it stops passing bytes either
/// way, and holds both sockets open (a peer that hangs without closing). Returns its address,
/// the connections accepted, and `freeze`.
async fn freezable_relay(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, freeze) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, f) = (Arc::clone(&accepted), Arc::clone(&freeze));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [(cr, sw), (sr, cw)].map(|(r, w)| {
                (
                    Box::new(r) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    w,
                )
            }) {
                let f = Arc::clone(&f);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let Ok(read) = from.read(&mut buf).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        if f.load(Ordering::SeqCst) >= n {
                            // Frozen: hold both halves, pass nothing.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buf[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, accepted, freeze)
}

/// The delegate's connection stops answering without closing (it hangs behind a relay): the
/// gateway's pings go unanswered, it drops the connection, and the next calls reach the
/// delegate on a new one.
#[tokio::test]
async fn a_delegate_connection_that_stops_answering_is_replaced() {
    let opa = Opa::default();
    let (relay, accepted, freeze) = freezable_relay(serve(opa.clone()).await).await;
    let gw = gateway(&format!("http://{relay}"), "deny").await;
    assert_eq!(
        get(&gw, "/reports/0", "yes", "alice").await.0,
        StatusCode::OK
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    freeze.store(1, Ordering::SeqCst);
    // A new path each time, never answered from the cache.
    let (status, _) = get(&gw, "/reports/1", "yes", "alice").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the hung connection"
    );
    let started = std::time::Instant::now();
    let mut i = 2;
    let recovered = loop {
        if get(&gw, &format!("/reports/{i}"), "yes", "alice").await.0 == StatusCode::OK {
            break true;
        }
        // Pings every 1.5 s (5 × the 300 ms timeout), each answered within as long: a few
        // seconds; 20 is for a loaded machine.
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        recovered,
        "still failing {:?} later, {} connection(s)",
        started.elapsed(),
        accepted.load(Ordering::SeqCst)
    );
    assert!(accepted.load(Ordering::SeqCst) >= 2, "a new connection");
}

/// Envoy sends its ext_authz `timeout` as `grpc-timeout` and stops waiting then: the door's
/// deadline is the earlier of its own and the caller's, so a hung fail-closed delegate is cut
/// to answer (a denial) while Envoy still listens, not when the door's 10 s run out.
#[tokio::test]
async fn the_callers_grpc_timeout_bounds_the_check() {
    let (gw, held) = hung_delegate_gateway(
        "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {timeout: 10s}}\n",
    )
    .await;
    let bearer = format!("Bearer {}", hs256_token(SECRET, &json!({"sub": "alice"})));
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", gw.addr_of("grpc")),
    )
    .await
    .unwrap();
    let mut req = tonic::Request::new(crate::grpc::check(
        "/reports/q1",
        "198.51.100.9",
        &[("authorization", &bearer)],
    ));
    // Envoy's default ext_authz timeout is 200 ms; a little more for a loaded machine.
    req.set_timeout(Duration::from_millis(600));
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.check(req))
        .await
        .expect("answered")
        .expect("a denial, not a failed call")
        .into_inner();
    let took = started.elapsed();
    match resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.map(|s| s.code), Some(503), "{d:?}");
            assert!(d.body.contains("delegate_unavailable"), "{}", d.body);
        }
        other => panic!("expected a denied response, got {other:?}"),
    }
    // Within the caller's 600 ms (with slack for a loaded machine), not the door's 10 s.
    assert!(took < Duration::from_secs(4), "{took:?}");
    held.abort();
}

/// At Envoy's HTTP door, a delegate that fails closed is a 403 with the real status in
/// `x-portcullis-status`: Envoy takes any 5xx answer for a failed call, which
/// `failure_mode_allow: true` turns into an allow. What cannot be decided (keys never
/// fetched) stays a 503, for Envoy's failure mode, as at the gRPC door.
#[tokio::test]
async fn fail_closed_delegate_is_a_denial_at_the_envoy_http_door() {
    let policy = "rules:\n  - name: reports\n    match: {paths: [\"/reports/**\"]}\n    effect: allow\n    authenticators: [users]\n    delegate: opa\n  - name: remote\n    match: {paths: [\"/remote/**\"]}\n    effect: allow\n    authenticators: [remote]\n";
    let gw = Setup {
        listeners: "  - name: envoy\n    address: 127.0.0.1:0\n    door: {envoy_http: {}}\n".into(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}  remote:\n    jwt:\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{{jwks_url: {{url: \"http://127.0.0.1:9/jwks.json\"}}}}]\n          fetch: {{timeout: 200ms, startup_timeout: 200ms}}\ndelegates:\n  opa:\n    grpc: http://127.0.0.1:9\n    timeout: 300ms\n    failure_mode: deny\n",
            crate::support::hs256_users("{}")
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let ask = |path: &str, bearer: String| {
        Request::get(path)
            .header("host", "app.test")
            .header("x-forwarded-for", "198.51.100.9")
            .header("authorization", bearer)
            .body(Full::default())
            .unwrap()
    };
    let bearer = format!("Bearer {}", hs256_token(SECRET, &json!({"sub": "alice"})));
    let (status, headers, body) = send(gw.addr_of("envoy"), ask("/reports/q1", bearer)).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::FORBIDDEN, "not a 5xx: {body}");
    assert_eq!(headers["x-portcullis-status"], "503");
    assert_eq!(headers["x-portcullis-error"], "delegate_unavailable");
    assert!(body.contains("delegate_unavailable"), "{body}");
    // Keys that were never fetched: the answer cannot be known, a 503 for Envoy to handle.
    let es256 = "eyJhbGciOiJFUzI1NiIsImtpZCI6InJlbW90ZSJ9.eyJpc3MiOiJodHRwczovL2lzcy50ZXN0IiwiYXVkIjoiYXBpIiwic3ViIjoiYm9iIn0.c2lnbmF0dXJl";
    let (status, headers, body) = send(
        gw.addr_of("envoy"),
        ask("/remote/x", format!("Bearer {es256}")),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers["x-portcullis-error"], "authentication_unavailable");
    assert!(headers.get("x-portcullis-status").is_none());
}

/// Regression (L6): the rate limit is checked before the delegate, so requests over it (each
/// to a path the cache has not seen) never cost a delegate call.
#[tokio::test]
async fn rate_limited_request_never_reaches_the_delegate() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;

    assert_eq!(
        get(&gw, "/limited/a", "yes", "alice").await.0,
        StatusCode::OK
    );
    assert_eq!(opa.calls.load(Ordering::SeqCst), 1);
    for path in ["/limited/b", "/limited/c?x=1", "/limited/d"] {
        let (status, body) = get(&gw, path, "yes", "alice").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}: {body}");
    }
    assert_eq!(
        opa.calls.load(Ordering::SeqCst),
        1,
        "a throttled request is not asked about"
    );
}

/// Sends `GET path` with a token for `claims` (none: anonymous) and `headers` (repeated
/// names kept, in order).
async fn get_with(
    gw: &TestGateway,
    path: &str,
    claims: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> StatusCode {
    let mut req = Request::get(path);
    if let Some(c) = claims {
        req = req.header("authorization", format!("Bearer {}", token(&c)));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(gw.addr(), req.body(Full::default()).unwrap()).await.0
}

/// Regression (M4): the delegate is told what the upstream will get, not what the client
/// sent: the gateway's identity headers, no spoofed identity, override or forwarding header
/// in any spelling; the credential stays (delegates read the JWT).
#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_delegate() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;

    let status = get_with(
        &gw,
        "/reports/q1",
        Some(json!({"sub": "alice"})),
        &[
            ("x-delegate-says", "yes"),
            ("x-user-id", "root"),
            ("x_user_id", "root"),
            ("x-user-roles", "admin"),
            ("X_User_Roles", "admin"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-portcullis-user", "root"),
            ("x-kept", "1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = opa.seen.lock().unwrap().clone();
    assert_eq!(
        seen.get("x-user-id").map(String::as_str),
        Some("alice"),
        "{seen:?}"
    );
    for spoofed in [
        "x_user_id",
        "x-user-roles",
        "x_user_roles",
        "x-original-url",
        "x-http-method-override",
        "x-forwarded-for",
        "x-real-ip",
        "x-portcullis-user",
    ] {
        assert!(
            !seen.contains_key(spoofed),
            "{spoofed} reached the delegate"
        );
    }
    assert_eq!(seen.get("x-kept").map(String::as_str), Some("1"));
    assert!(
        seen.get("authorization")
            .is_some_and(|a| a.starts_with("Bearer ")),
        "the credential stays: {seen:?}"
    );
    // What the upstream got agrees.
    let upstream = gw.echo.last().unwrap().headers;
    assert_eq!(upstream["x-user-id"], "alice");
    assert!(!upstream.contains_key("x-user-roles"));
    assert!(!upstream.contains_key("x_user_id"));
}

/// Regression (M4): a repeated header reaches the delegate as every value joined in order
/// (`Cookie` with `; `), not as the last one, which an upstream reading the first never sees.
#[tokio::test]
async fn repeated_header_reaches_the_delegate_joined() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;

    let status = get_with(
        &gw,
        "/reports/q1",
        Some(json!({"sub": "alice"})),
        &[
            ("x-delegate-says", "yes"),
            ("x-tenant", "evil"),
            ("x-tenant", "mine"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = opa.seen.lock().unwrap().clone();
    assert_eq!(seen.get("x-tenant").map(String::as_str), Some("evil,mine"));
    assert_eq!(seen.get("cookie").map(String::as_str), Some("a=1; b=2"));
    let upstream = gw.echo.last().unwrap().headers;
    let tenants: Vec<_> = upstream.get_all("x-tenant").iter().collect();
    assert_eq!(tenants, ["evil", "mine"]);
}

/// Regression (M3): the cache is keyed by the credential, not by who it names. alice's
/// full-scope token gets an allow; a third-party app holding her low-scope token (same `sub`
/// and `iss`) must be asked about, not handed the cached allow: the delegate decided on the
/// token's claims.
#[tokio::test]
async fn low_scope_token_does_not_get_a_cached_allow() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;
    let says = [("x-delegate-says", "yes")];

    let full = json!({"sub": "alice", "scope": "orders:delete"});
    let low = json!({"sub": "alice", "scope": "low"});
    assert_eq!(
        get_with(&gw, "/reports/7", Some(full.clone()), &says).await,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&gw, "/reports/7", Some(low), &says).await,
        StatusCode::FORBIDDEN,
        "the low-scope token got the full-scope token's cached allow"
    );
    assert_eq!(opa.calls.load(Ordering::SeqCst), 2);
    // The same token again: from the cache.
    assert_eq!(
        get_with(&gw, "/reports/7", Some(full), &says).await,
        StatusCode::OK
    );
    assert_eq!(opa.calls.load(Ordering::SeqCst), 2);
}

/// Regression (M3): a header the delegate reads is part of what its answer is cached for.
#[tokio::test]
async fn cached_allow_is_not_reused_for_other_headers() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;
    let alice = Some(json!({"sub": "alice"}));

    let yes = get_with(
        &gw,
        "/reports/q1",
        alice.clone(),
        &[("x-delegate-says", "yes")],
    );
    assert_eq!(yes.await, StatusCode::OK);
    let no = get_with(&gw, "/reports/q1", alice, &[("x-delegate-says", "no")]);
    assert_eq!(no.await, StatusCode::FORBIDDEN);
    assert_eq!(opa.calls.load(Ordering::SeqCst), 2);
}

/// Anonymous answers are cached too: the key is everything the delegate was told, so two
/// requests share an answer only when the delegate could not tell them apart.
#[tokio::test]
async fn anonymous_answers_are_cached_under_the_full_request() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;

    for _ in 0..2 {
        let status = get_with(&gw, "/public/a", None, &[("x-delegate-says", "yes")]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(opa.calls.load(Ordering::SeqCst), 1);
    let status = get_with(&gw, "/public/a", None, &[("x-delegate-says", "no")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(opa.calls.load(Ordering::SeqCst), 2);
}

/// A delegate that cannot be reached is logged with the call's gRPC code, the delegate and
/// the rule, so a delegate down tells itself apart from one that serves no Check.
#[tokio::test]
async fn a_failed_delegate_call_is_logged_with_its_code() {
    let closed = crate::support::closed_port();
    let echo = portcullis::echo::Echo::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let bin = crate::memory::Binary::start_with(
        echo.addr,
        "  - name: http\n    address: 127.0.0.1:0\n",
        "",
        &format!("delegates:\n  opa:\n    grpc: http://{closed}\n    timeout: 2s\n"),
        "rules:\n  - {name: checked, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, delegate: opa, upstream: echo}\n",
        &[],
        &[],
    );
    let (status, _, _) = crate::support::get(bin.addr("http"), "/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let said = crate::support::eventually(Duration::from_secs(10), || async {
        bin.log_lines("Delegate gave no answer").iter().any(|l| {
            l.contains("call failed: Unavailable")
                && l.contains("\"rule\":\"checked\"")
                && l.contains("\"delegate\":\"opa\"")
        })
    })
    .await;
    assert!(said, "{:?}", bin.log_lines("Delegate"));
}

/// A request a fail-open setting lets through is logged as an allow with the failure it let
/// through as its reason, at the proxy and at a decision door: an audit tells it from a
/// checked allow.
#[tokio::test]
async fn fail_open_allows_are_logged_with_the_failure_let_through() {
    let closed = crate::support::closed_port();
    let echo = portcullis::echo::Echo::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let bin = crate::memory::Binary::start_with(
        echo.addr,
        "  - name: http\n    address: 127.0.0.1:0\n  - name: auth\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n",
        "",
        &format!(
            "logging:\n  format: json\n  access_log: true\ndelegates:\n  opa:\n    grpc: http://{closed}\n    timeout: 2s\n    failure_mode: allow\nredis:\n  url: redis://{closed}\n  timeout: 300ms\nrate_limits:\n  shared: {{key: client_ip, requests: 100, per: 1h, backend: redis, on_redis_failure: allow}}\n  shadowed: {{key: client_ip, requests: 100, per: 1h, backend: redis, on_redis_failure: allow, shadow: true}}\n"
        ),
        "rules:\n  - {name: delegated, match: {paths: [\"/d/**\"]}, effect: allow, anonymous: true, delegate: opa, upstream: echo}\n  - {name: limited, match: {paths: [\"/r/**\"]}, effect: allow, anonymous: true, rate_limit: shared, upstream: echo}\n  - {name: plain, match: {paths: [\"/p/**\"]}, effect: allow, anonymous: true, upstream: echo}\n  - {name: shadow, match: {paths: [\"/s/**\"]}, effect: allow, anonymous: true, rate_limit: shadowed, upstream: echo}\n  - {name: slow, match: {paths: [\"/__echo/**\"]}, effect: allow, anonymous: true, delegate: opa, upstream: echo}\n",
        &[],
        &[],
    );
    for path in ["/d/x", "/r/x", "/p/x", "/s/x"] {
        let (status, _, _) = crate::support::get(bin.addr("http"), path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let req = Request::get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-host", "app.test")
        .header("x-forwarded-uri", "/d/door")
        .header("x-forwarded-for", "127.0.0.1")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(bin.addr("auth"), req).await.0, StatusCode::OK);
    // A client that leaves before the answer is logged as gone, whatever let it through.
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        crate::support::get(bin.addr("http"), "/__echo/delay/3000"),
    )
    .await;
    assert!(gone.is_err(), "the upstream answers after 3 s");
    let access = |path: &str| {
        bin.log_lines("\"target\":\"access\"")
            .into_iter()
            .find(|l| l.contains(&format!("\"path\":\"{path}\"")))
    };
    let logged = crate::support::eventually(Duration::from_secs(10), || async {
        [
            "/d/x",
            "/r/x",
            "/p/x",
            "/s/x",
            "/d/door",
            "/__echo/delay/3000",
        ]
        .iter()
        .all(|p| access(p).is_some())
    })
    .await;
    assert!(logged, "{:?}", bin.log_lines("access"));
    for (path, reason) in [
        ("/d/x", "\"reason\":\"delegate_unavailable\""),
        ("/r/x", "\"reason\":\"rate_limit_unavailable\""),
        ("/d/door", "\"reason\":\"delegate_unavailable\""),
        ("/p/x", "\"reason\":\"-\""),
        // A shadow-mode limit never refuses: nothing was let through.
        ("/s/x", "\"reason\":\"-\""),
    ] {
        let line = access(path).unwrap();
        assert!(line.contains("\"decision\":\"allow\""), "{line}");
        assert!(line.contains(reason), "{reason} in {line}");
    }
    let line = access("/__echo/delay/3000").unwrap();
    assert!(
        line.contains("\"status\":499") && line.contains("\"reason\":\"connection_closed\""),
        "{line}"
    );
}

/// On an anonymous rule (the delegate verifies the token itself), an answer is never
/// cached past the `exp` of the bearer token it was about: asked again once it passed.
#[tokio::test]
async fn an_anonymous_answer_is_not_cached_past_the_tokens_exp() {
    let opa = Opa::default();
    let addr = serve(opa.clone()).await;
    let gw = gateway(&format!("http://{addr}"), "deny").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = hs256_token(SECRET, &json!({"sub": "alice", "exp": now + 2}));
    let ask = || {
        let req = Request::get("/public/exp")
            .header("authorization", format!("Bearer {short}"))
            .header("x-delegate-says", "yes")
            .body(Full::default())
            .unwrap();
        send(gw.addr(), req)
    };
    assert_eq!(ask().await.0, StatusCode::OK);
    assert_eq!(ask().await.0, StatusCode::OK);
    // Within 30 s of `cache_ttl`, but 2 s of the token's life: never cached.
    assert_eq!(opa.calls.load(Ordering::SeqCst), 2);
    // A token with long to live is cached as before.
    for _ in 0..2 {
        let status = get_with(
            &gw,
            "/public/exp",
            Some(json!({"sub": "bob"})),
            &[("x-delegate-says", "yes")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(opa.calls.load(Ordering::SeqCst), 3);
}

/// `check` warns about a delegate header the gateway owns: an identity header (an allowing
/// delegate's value replaces the gateway's, so the upstream believes the delegate's identity)
/// or one the gateway sets after the answer (the delegate's value never arrives). The config
/// still loads, and a header of the delegate's own draws no warning.
#[test]
fn check_warns_about_delegate_headers_the_gateway_owns() {
    let cfg = crate::support::ConfigDir::new(
        "identity_headers: {x-user-id: \"{principal.id}\"}\nserver: {request_id_header: x-trace-id}\ndelegates:\n  opa:\n    grpc: http://127.0.0.1:9191\n    headers: [x-opa-note, X-User-Id, traceparent, x-trace-id]\n",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    delegate: opa\n    upstream: echo\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        "warning: delegates.opa.headers: `x-user-id` is also an identity header: an allowing delegate's value replaces the gateway's",
        "warning: delegates.opa.headers: `traceparent` is set by the gateway after the delegate answers",
        "warning: delegates.opa.headers: `x-trace-id` is set by the gateway after the delegate answers",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    assert!(!text.contains("`x-opa-note`"), "{text}");
    // The gateway's and Envoy's own names are refused outright.
    for name in [
        "x-portcullis-assertion",
        "X_Portcullis_Remove",
        "x-envoy-auth-headers-to-remove",
    ] {
        let cfg = crate::support::ConfigDir::new(&format!(
            "delegates:\n  opa:\n    grpc: http://127.0.0.1:9191\n    headers: [x-opa-note, {name}]\n"
        ));
        cfg.write(
            "policies/p.yaml",
            "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    delegate: opa\n    upstream: echo\n",
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(1), "{name}: {text}");
        let refused = format!("delegates.opa.headers: `{name}` is the gateway's or Envoy's own");
        assert!(text.contains(&refused), "{text}");
    }
}
