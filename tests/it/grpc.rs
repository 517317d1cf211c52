//! Envoy's gRPC ext_authz door, asked by a tonic `Authorization` client over HTTP/2 on
//! 127.0.0.1: the same decisions as the proxy, rendered as `CheckResponse`s.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::json;

use crate::support::{Setup, TestGateway, hs256_token};

const SECRET: &[u8] = b"grpc-door-test-secret-grpc-door-test-secret-0";

const POLICY: &str = "rules:
  - name: admin
    match: {paths: [\"/admin/**\"]}
    effect: deny
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
    require: {scopes: {all_of: [orders:read]}}
  - name: office
    match: {paths: [\"/office/**\"]}
    effect: allow
    anonymous: true
    require: {networks: [203.0.113.0/24]}
  - name: open
    match: {paths: [\"/open/**\"]}
    effect: allow
    anonymous: true
";

async fn gateway(door: &str) -> TestGateway {
    Setup {
        listeners: format!("  - name: grpc\n    address: 127.0.0.1:0\n    door: {door}\n"),
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

/// A gRPC door whose `users` authenticator needs a JWKS nobody serves: never ready, and
/// any token needing the set cannot be decided.
async fn unfetched_keys_gateway() -> TestGateway {
    Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n"
            .into(),
        policies: vec![("10-p.yaml".into(), POLICY.replace("    require: {scopes: {all_of: [orders:read]}}\n", ""))],
        extra: "authenticators:\n  users:\n    jwt:\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{jwks_url: {url: \"http://127.0.0.1:9/jwks.json\"}}]\n          fetch: {timeout: 200ms, startup_timeout: 200ms}\n"
            .into(),
        ..Setup::default()
    }
    .start()
    .await
}

/// A client of the gRPC door's health service.
async fn health_client(
    gw: &TestGateway,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr_of("grpc")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
}

async fn client(gw: &TestGateway) -> AuthorizationClient<tonic::transport::Channel> {
    let url = format!("http://{}", gw.addr_of("grpc"));
    AuthorizationClient::connect(url).await.expect("connects")
}

/// A Check request for `path` from client `source` with `headers`.
pub(crate) fn check(path: &str, source: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    h.insert(":authority".into(), "app.test".into());
    h.insert(":path".into(), path.into());
    h.insert(":method".into(), "GET".into());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.into(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "app.test".into(),
                    path: path.into(),
                    scheme: "https".into(),
                    headers: h,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

/// A certificate as Envoy puts it in `source.certificate`: its PEM, URL-encoded.
pub(crate) fn envoy_pem(pem: &str) -> String {
    pem.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(0, |s| s.code)
}

fn denied(r: &CheckResponse) -> (i32, HashMap<String, String>, String) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (
            d.status.as_ref().map_or(0, |s| s.code),
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            d.body.clone(),
        ),
        other => panic!("not a denial: {other:?}"),
    }
}

/// The door's answer to a Check for `path` from 198.51.100.9 with a token allowed to read
/// orders and the `extra` headers.
async fn check_as_reader(gw: &TestGateway, path: &str, extra: &[(&str, &str)]) -> CheckResponse {
    let token = hs256_token(SECRET, &json!({"scope": "orders:read"}));
    let bearer = format!("Bearer {token}");
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    client(gw)
        .await
        .check(check(path, "198.51.100.9", &headers))
        .await
        .expect("an answer")
        .into_inner()
}

#[tokio::test]
async fn check_allows_with_identity_headers_and_metadata() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let resp = check_as_reader(
        &gw,
        "/api/orders?x=1",
        &[("x-user-id", "root"), ("x_user_id", "root")],
    )
    .await;
    assert_eq!(code(&resp), 0, "{resp:?}");
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("{resp:?}");
    };
    let set: HashMap<&str, &str> = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(set.get("x-user-id"), Some(&"alice"));
    // Every spoofed spelling and the stripped credential; what is set is never also removed
    // (Envoy removes after it sets). The families are named whether or not they were sent.
    let removed = &ok.headers_to_remove;
    for name in ["authorization", "x_user_id", "x-original-url", "forwarded"] {
        assert!(removed.iter().any(|r| r == name), "{name} in {removed:?}");
    }
    assert!(!removed.iter().any(|r| r == "x-user-id"), "{removed:?}");
    assert_eq!(set.get("x-real-ip"), Some(&"198.51.100.9"));
    let meta = resp.dynamic_metadata.as_ref().expect("metadata");
    let field = |k: &str| match meta.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(field("principal_id"), "alice");
    assert_eq!(field("principal_kind"), "user");
    assert_eq!(field("rule"), "api");
}

/// A denial's dynamic metadata (which Envoy emits for its access log and later filters) names
/// its reason code, and the rule and the principal when they are known.
#[tokio::test]
async fn denials_carry_their_reason_as_dynamic_metadata() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let field = |resp: &CheckResponse, k: &str| {
        let meta = resp.dynamic_metadata.as_ref().expect("metadata");
        match meta.fields.get(k).and_then(|v| v.kind.as_ref()) {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
            None => None,
            other => panic!("{k}: {other:?}"),
        }
    };
    // Authenticated, without the scope: the rule and who was refused.
    let token = hs256_token(SECRET, &json!({"scope": "orders:write"}));
    let bearer = format!("Bearer {token}");
    let resp = client(&gw)
        .await
        .check(check(
            "/api/orders",
            "198.51.100.9",
            &[("authorization", &bearer)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), 7, "{resp:?}");
    assert_eq!(
        field(&resp, "reason").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(field(&resp, "rule").as_deref(), Some("api"));
    assert_eq!(field(&resp, "principal_id").as_deref(), Some("alice"));
    assert_eq!(field(&resp, "principal_kind").as_deref(), Some("user"));
    // No credential: the rule, nobody.
    let resp = client(&gw)
        .await
        .check(check("/api/orders", "198.51.100.9", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), 16, "{resp:?}");
    assert_eq!(
        field(&resp, "reason").as_deref(),
        Some("missing_credential")
    );
    assert_eq!(field(&resp, "rule").as_deref(), Some("api"));
    assert_eq!(field(&resp, "principal_id"), None);
    // No rule at all; and a request refused before any decision.
    let resp = check_as_reader(&gw, "/nowhere", &[]).await;
    assert_eq!(field(&resp, "reason").as_deref(), Some("no_matching_rule"));
    assert_eq!(field(&resp, "rule"), None);
    let resp = check_as_reader(&gw, "/api/%2e%2e/admin", &[]).await;
    assert_eq!(code(&resp), 3, "{resp:?}");
    assert!(
        field(&resp, "reason").is_some_and(|r| !r.is_empty()),
        "{resp:?}"
    );
}

/// A header the request's `Connection` names is left out of the decision and named in
/// `headers_to_remove`, as at the HTTP doors (doors::headers_named_in_connection_are_removed_too).
#[tokio::test]
async fn headers_named_in_connection_are_removed_too() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let resp = check_as_reader(
        &gw,
        "/api/orders",
        &[("connection", "x-probe"), ("x-probe", "1")],
    )
    .await;
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("{resp:?}");
    };
    assert!(
        ok.headers_to_remove.iter().any(|r| r == "x-probe"),
        "{:?}",
        ok.headers_to_remove
    );
}

/// A Check without an `x-request-id` header falls back to Envoy's `id`: the door takes it only
/// as a header's is taken (1–128 of `[A-Za-z0-9._:-]`), and answers with a fresh one
/// otherwise.
#[tokio::test]
async fn a_peers_request_id_is_checked_as_a_headers() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    let long = "R".repeat(129);
    for (sent, kept) in [
        ("abc-123.x:y_z", true),
        (&*"R".repeat(128), true),
        (&*long, false),
        ("id\u{e9}", false),
        ("x\" status=500", false),
        ("a\tb", false),
        ("", false),
    ] {
        let mut req = check("/api/orders", "198.51.100.9", &[]);
        if let Some(h) = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            h.id = sent.into();
        }
        let resp = c.check(req).await.unwrap().into_inner();
        let (status, headers, body) = denied(&resp);
        assert_eq!(status, 401, "{sent:?}");
        let id = &headers["x-request-id"];
        if kept {
            assert_eq!(id, sent);
        } else {
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{sent:?} answered with {id:?}"
            );
        }
        assert!(body.contains(&format!("\"request_id\":\"{id}\"")), "{body}");
    }
}

/// Envoy fills `http.id` with its stream id, a number of its own; the id the client, the
/// upstream and Envoy's access log know is the request's `x-request-id`, in `headers` or in
/// `header_map`: the door answers (and logs) with that one, and with `http.id` only when the
/// request has no well-formed one.
#[tokio::test]
async fn the_request_id_is_the_requests_header_not_envoys_stream_id() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap as PbHeaderMap, HeaderValue};
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    let stream_id = "9140216482217041263";
    for (header, raw, expected) in [
        (
            Some("5f1b5a43-0c1e-4b5e-9d7a-2b1f0c9e8d7a"),
            false,
            "5f1b5a43-0c1e-4b5e-9d7a-2b1f0c9e8d7a",
        ),
        (
            Some("5f1b5a43-0c1e-4b5e-9d7a-2b1f0c9e8d7a"),
            true,
            "5f1b5a43-0c1e-4b5e-9d7a-2b1f0c9e8d7a",
        ),
        (Some("not well formed"), false, stream_id),
        (None, false, stream_id),
    ] {
        let mut req = check("/api/orders", "198.51.100.9", &[]);
        let http = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .expect("http attributes");
        http.id = stream_id.into();
        if let Some(id) = header {
            if raw {
                let mut list: Vec<HeaderValue> = http
                    .headers
                    .drain()
                    .map(|(key, v)| HeaderValue {
                        key,
                        raw_value: v.into_bytes(),
                        ..HeaderValue::default()
                    })
                    .collect();
                list.push(HeaderValue {
                    key: "x-request-id".into(),
                    raw_value: id.as_bytes().to_vec(),
                    ..HeaderValue::default()
                });
                http.header_map = Some(PbHeaderMap { headers: list });
            } else {
                http.headers.insert("x-request-id".into(), id.into());
            }
        }
        let resp = c.check(req).await.unwrap().into_inner();
        let (status, headers, body) = denied(&resp);
        assert_eq!(status, 401, "{header:?}");
        assert_eq!(headers["x-request-id"], expected, "{header:?} raw {raw}");
        assert!(
            body.contains(&format!("\"request_id\":\"{expected}\"")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn check_denials_carry_grpc_codes_status_challenge_and_body() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    // No credential: UNAUTHENTICATED, 401 with the challenge.
    let resp = c
        .check(check("/api/orders", "198.51.100.9", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), 16);
    let (status, headers, body) = denied(&resp);
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"portcullis\"");
    assert!(body.contains("\"error\":\"missing_credential\""), "{body}");
    // As every door's refusal: not cached, and its request id (the body's) in a header.
    assert_eq!(headers["cache-control"], "no-store", "{headers:?}");
    assert!(
        body.contains(&format!("\"request_id\":\"{}\"", headers["x-request-id"])),
        "{headers:?} {body}"
    );
    // A scope missing: PERMISSION_DENIED, 403 naming the scope.
    let weak = format!("Bearer {}", hs256_token(SECRET, &json!({"scope": "other"})));
    let resp = c
        .check(check(
            "/api/orders",
            "198.51.100.9",
            &[("authorization", &weak)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), 7);
    let (status, headers, _) = denied(&resp);
    assert_eq!(status, 403);
    assert!(headers["www-authenticate"].contains("scope=\"orders:read\""));
    // Deny rule by any path spelling; ambiguous paths refused as the proxy refuses them.
    for path in ["/admin/x", "/%61dmin/x"] {
        let resp = c
            .check(check(path, "198.51.100.9", &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(denied(&resp).0, 403, "{path}");
    }
    for path in [
        "/a%2Fb",
        "/open/%252e%252e/admin",
        "/open;x",
        "http://app.test/open/x",
        "",
        // Envoy forwards the path as sent (unless its `normalize_path` is on): one allowed
        // only once canonicalisation changed it is refused.
        "//open/x",
        "/admin/../open/x",
    ] {
        let resp = c
            .check(check(path, "198.51.100.9", &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&resp), 3, "{path}: {resp:?}");
        assert_eq!(denied(&resp).0, 400, "{path}");
    }
    // Denied on its canonical path: the proxy's answer.
    for path in ["//admin/x", "/open/../admin/x"] {
        let resp = c
            .check(check(path, "198.51.100.9", &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&resp), 7, "{path}: {resp:?}");
        let (status, _, body) = denied(&resp);
        assert_eq!(status, 403, "{path}");
        assert!(body.contains("\"forbidden\""), "{path}: {body}");
    }
    // The client address is Envoy's source address.
    let office = c
        .check(check("/office/x", "203.0.113.5", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&office), 0);
    let outside = c
        .check(check("/office/x", "198.51.100.9", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&outside).0, 403);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            r#"portcullis_denials_total{door="envoy-grpc",reason="missing_credential"} 1"#
        ),
        "{metrics}"
    );
}

/// A gRPC call's denial names its gRPC code in a `grpc-status` header, which Envoy's local
/// reply keeps: without it Envoy derives one from the HTTP status, and a 400 reached the
/// client as 13 INTERNAL (a 429 as 14 UNAVAILABLE, which clients retry at once), where the
/// proxy door answers 3 INVALID_ARGUMENT and 8 RESOURCE_EXHAUSTED. A call that is not gRPC
/// gets no such header.
#[tokio::test]
async fn a_grpc_client_is_denied_with_the_grpc_status_the_proxy_gives() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    for (path, status, grpc) in [
        ("/api/orders", 401, "16"),
        ("/admin/x", 403, "7"),
        ("/a%2Fb", 400, "3"),
    ] {
        for ct in ["application/grpc", "application/grpc+proto"] {
            let resp = c
                .check(check(path, "198.51.100.9", &[("content-type", ct)]))
                .await
                .unwrap()
                .into_inner();
            let (got, headers, _) = denied(&resp);
            assert_eq!(got, status, "{path} {ct}");
            assert_eq!(
                headers.get("grpc-status").map(String::as_str),
                Some(grpc),
                "{path} {ct}"
            );
            assert_eq!(code(&resp).to_string(), grpc, "{path} {ct}");
        }
        for ct in ["application/json", "application/grpc-web"] {
            let resp = c
                .check(check(path, "198.51.100.9", &[("content-type", ct)]))
                .await
                .unwrap()
                .into_inner();
            let (_, headers, _) = denied(&resp);
            assert!(
                !headers.contains_key("grpc-status"),
                "{path} {ct}: {headers:?}"
            );
        }
    }
}

#[tokio::test]
async fn bad_check_requests() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    let empty = c.check(CheckRequest::default()).await.unwrap().into_inner();
    assert_eq!(code(&empty), 3);
    let mut bad_header = check("/open/x", "198.51.100.9", &[]);
    if let Some(h) = bad_header
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        h.headers.insert("x-evil".into(), "a\r\nb".into());
    }
    assert_eq!(code(&c.check(bad_header).await.unwrap().into_inner()), 3);
    let mut huge = check("/open/x", "198.51.100.9", &[]);
    if let Some(h) = huge
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        h.headers.insert("x-big".into(), "a".repeat(64 * 1024));
    }
    assert_eq!(code(&c.check(huge).await.unwrap().into_inner()), 3);
    // Still serving afterwards.
    let ok = c
        .check(check("/open/x", "198.51.100.9", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&ok), 0);
}

/// Sends `bytes` as the Check message, as they are: what Envoy would send were a string
/// field not UTF-8.
async fn raw_check(gw: &TestGateway, bytes: Vec<u8>) -> CheckResponse {
    /// Writes the message's bytes as given; reads the answer as a `CheckResponse`.
    #[derive(Clone, Copy)]
    struct Raw;
    struct RawEncoder;
    impl tonic::codec::Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(
            &mut self,
            item: Vec<u8>,
            buf: &mut tonic::codec::EncodeBuf<'_>,
        ) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(buf, &item);
            Ok(())
        }
    }
    impl tonic::codec::Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = CheckResponse;
        type Encoder = RawEncoder;
        type Decoder = tonic_prost::ProstDecoder<CheckResponse>;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::default()
        }
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr_of("grpc")))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
    grpc.unary(tonic::Request::new(bytes), path, Raw)
        .await
        .expect("an answer, not a failed call (Envoy's failure_mode_allow would allow it)")
        .into_inner()
}

#[tokio::test]
async fn undecodable_check_is_denied_not_failed() {
    use prost::Message as _;
    let gw = gateway("{envoy_grpc: {}}").await;
    // A header value whose bytes are not UTF-8 (the client's, passed on), the rest intact;
    // the rule is anonymous, so only the bad bytes can refuse it.
    let mut bytes = check("/open/x", "198.51.100.9", &[("x-note", "MARKmark")]).encode_to_vec();
    let at = bytes
        .windows(8)
        .position(|w| w == b"MARKmark")
        .expect("the value is in the message");
    bytes[at] = 0xff;
    bytes[at + 1] = 0xfe;
    let truncated = check("/open/x", "198.51.100.9", &[]).encode_to_vec()[..20].to_vec();
    for (what, bytes) in [
        ("not UTF-8", bytes),
        ("truncated", truncated),
        ("garbage", vec![0xff; 16]),
    ] {
        let resp = raw_check(&gw, bytes).await;
        assert_eq!(code(&resp), 3, "{what}: INVALID_ARGUMENT: {resp:?}");
        let (status, _, body) = denied(&resp);
        assert_eq!(status, 400, "{what}");
        assert!(
            body.contains("\"error\":\"invalid_check_request\""),
            "{what}: {body}"
        );
    }
    // The same message with the value intact is allowed, on the same gateway.
    let ok = raw_check(
        &gw,
        check("/open/x", "198.51.100.9", &[("x-note", "MARKmark")]).encode_to_vec(),
    )
    .await;
    assert_eq!(code(&ok), 0, "{ok:?}");
}

/// Envoy's `encode_raw_headers: true`: the headers come in `header_map`, values as raw bytes,
/// and `headers` is empty; the credential there is read as from `headers`.
#[tokio::test]
async fn raw_header_map_is_read() {
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap as PbHeaderMap, HeaderValue};
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    let token = hs256_token(SECRET, &json!({"scope": "orders:read"}));
    let raw = |headers: &[(&str, String)]| {
        let mut req = check("/api/orders", "198.51.100.9", &[]);
        let http = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .expect("http attributes");
        http.headers.clear();
        http.host.clear();
        http.header_map = Some(PbHeaderMap {
            headers: headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    raw_value: v.clone().into_bytes(),
                    ..HeaderValue::default()
                })
                .collect(),
        });
        req
    };
    let with = raw(&[
        (":authority", "app.test".into()),
        (":path", "/api/orders".into()),
        ("authorization", format!("Bearer {token}")),
        ("x-user-id", "root".into()),
    ]);
    let resp = c.check(with).await.expect("an answer").into_inner();
    assert_eq!(code(&resp), 0, "{resp:?}");
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("{resp:?}");
    };
    let user = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-user-id")
        .map(|h| h.value.clone());
    assert_eq!(user.as_deref(), Some("alice"));
    // Without the credential, the same request is refused as at every door.
    let without = raw(&[
        (":authority", "app.test".into()),
        (":path", "/api/orders".into()),
    ]);
    let resp = c.check(without).await.expect("an answer").into_inner();
    assert_eq!(code(&resp), 16, "{resp:?}");
    assert_eq!(denied(&resp).0, 401);
    // Two `host` fields: refused, as the proxy door refuses them, whatever `:authority` says.
    let hosts = raw(&[
        (":authority", "app.test".into()),
        (":path", "/api/orders".into()),
        ("host", "app.test".into()),
        ("host", "admin.test".into()),
        ("authorization", format!("Bearer {token}")),
    ]);
    let resp = c.check(hosts).await.expect("an answer").into_inner();
    let (status, _, body) = denied(&resp);
    assert_eq!(status, 400, "{resp:?}");
    assert!(body.contains("multiple_hosts"), "{body}");
    // The scheme in any case, as the HTTP doors read `X-Forwarded-Proto`.
    let mut upper = check(
        "/api/orders",
        "198.51.100.9",
        &[("authorization", &format!("Bearer {token}"))],
    );
    if let Some(http) = upper
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.scheme = "HTTPS".into();
    }
    let resp = c.check(upper).await.expect("an answer").into_inner();
    assert_eq!(code(&resp), 0, "{resp:?}");
}

/// `match.context_extensions` narrows a rule to the Checks Envoy sends with those values (a
/// route or virtual host's `check_settings`); other Checks, and other doors, go on to the
/// next rule.
#[tokio::test]
async fn context_extensions_select_rules() {
    let policy = "rules:
  - name: billing-closed
    match: {paths: [\"/**\"], context_extensions: {service: billing, stage: prod}}
    effect: deny
  - name: everything
    match: {paths: [\"/**\"]}
    effect: allow
    anonymous: true
";
    let gw = Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n  - name: http\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n".into(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        ..Setup::default()
    }
    .start()
    .await;
    let mut c = client(&gw).await;
    let with = |pairs: &[(&str, &str)]| {
        let mut req = check("/invoices/1", "127.0.0.1", &[]);
        if let Some(a) = req.attributes.as_mut() {
            a.context_extensions = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        }
        req
    };
    let resp = c
        .check(with(&[
            ("service", "billing"),
            ("stage", "prod"),
            ("x", "y"),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), 7, "PERMISSION_DENIED: {resp:?}");
    let (status, _, body) = denied(&resp);
    assert_eq!(status, 403);
    assert!(body.contains("forbidden"), "{body}");
    // A value that differs, a name missing, no extensions at all: the next rule.
    for pairs in [
        &[("service", "billing"), ("stage", "test")][..],
        &[("service", "billing")][..],
        &[][..],
    ] {
        let resp = c.check(with(pairs)).await.unwrap().into_inner();
        assert_eq!(code(&resp), 0, "{pairs:?}: {resp:?}");
    }
    // Another door has no context extensions: the rule never matches there.
    let req = http::Request::get("/auth")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/invoices/1")
        .header("x-forwarded-host", "app.test")
        .header("x-forwarded-for", "127.0.0.1")
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, _, _) = crate::support::send(gw.addr_of("http"), req).await;
    assert_eq!(status, http::StatusCode::OK);
}

/// A gRPC door whose `users` take a bearer token or `?access_token=`, with `more` settings
/// (each line indented six spaces) for the authenticator.
async fn query_credential_gateway(more: &str) -> TestGateway {
    Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: crate::support::hs256_users("{}").replace(
            "    jwt:\n",
            &format!("    jwt:\n{more}      from: [bearer, {{query: access_token}}]\n"),
        ),
        ..Setup::default()
    }
    .start()
    .await
}

/// The door's `OkHttpResponse` to a Check for `target` from 198.51.100.9 with `headers`,
/// which must be an allow.
async fn allowed_ok(
    c: &mut AuthorizationClient<tonic::transport::Channel>,
    target: &str,
    headers: &[(&str, &str)],
) -> envoy_types::ext_authz::v3::pb::OkHttpResponse {
    let resp = c
        .check(check(target, "198.51.100.9", headers))
        .await
        .expect("an answer")
        .into_inner();
    assert_eq!(code(&resp), 0, "{target}: {resp:?}");
    match resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("{target}: {other:?}"),
    }
}

/// A credential the authenticator strips is named to Envoy when it came in the query (Envoy
/// removes it from the path it forwards), in the configured spelling and the one sent; a
/// parameter that merely looks like it stays.
#[tokio::test]
async fn query_credential_removed_by_envoy() {
    let gw = query_credential_gateway("").await;
    let mut c = client(&gw).await;
    let token = hs256_token(SECRET, &json!({"scope": "orders:read"}));
    for (query, removed) in [
        (
            format!("a=1&access_token={token}&b=2"),
            vec!["access_token"],
        ),
        (
            format!("access%5Ftoken={token}&access_token_hint=x"),
            vec!["access_token", "access%5Ftoken"],
        ),
    ] {
        let ok = allowed_ok(&mut c, &format!("/api/orders?{query}"), &[]).await;
        assert_eq!(ok.query_parameters_to_remove, removed, "{query}");
    }
    // A bearer credential leaves the query alone.
    let bearer = format!("Bearer {token}");
    let ok = allowed_ok(
        &mut c,
        "/api/orders?access_token_hint=x",
        &[("authorization", &bearer)],
    )
    .await;
    assert!(ok.query_parameters_to_remove.is_empty(), "{ok:?}");
}

/// An authenticator that keeps its credential for the upstream (`strip: false`) keeps a
/// header, but never a query credential: the proxy door cuts it from the target, and the
/// gRPC door names it for removal alike.
#[tokio::test]
async fn query_credential_removed_by_envoy_even_unstripped() {
    let gw = query_credential_gateway("      strip: false\n").await;
    let mut c = client(&gw).await;
    let token = hs256_token(SECRET, &json!({"scope": "orders:read"}));
    for (query, removed) in [
        (format!("a=1&access_token={token}"), vec!["access_token"]),
        // A method override in the query goes as the proxy door cuts it.
        (
            format!("access_token={token}&%5Fmethod=DELETE"),
            vec!["access_token", "%5Fmethod", "_method"],
        ),
        // After a `;` (a pair to Rack 2 and older Python): the `&` pair's key, as Envoy
        // reads it.
        (
            format!("access_token={token}&a=1;_method=DELETE"),
            vec!["access_token", "a"],
        ),
        // One that does not decode is named as sent, never as an empty name.
        (
            format!("access_token={token}&_method%00%ff=DELETE"),
            vec!["access_token", "_method%00%ff"],
        ),
    ] {
        let ok = allowed_ok(&mut c, &format!("/api/orders?{query}"), &[]).await;
        assert_eq!(ok.query_parameters_to_remove, removed, "{query}");
    }
    // A header credential is kept.
    let bearer = format!("Bearer {token}");
    let ok = allowed_ok(&mut c, "/api/orders", &[("authorization", &bearer)]).await;
    assert!(
        !ok.headers_to_remove.iter().any(|h| h == "authorization"),
        "{ok:?}"
    );
}

/// A query credential an authenticator strips cannot be removed behind Envoy's HTTP mode or
/// forward auth: `check` says so (a warning), and is silent without such a door.
#[test]
fn query_credential_behind_an_http_door_is_a_warning() {
    let users = crate::support::hs256_users("{}").replace(
        "    jwt:\n",
        "    jwt:\n      from: [bearer, {query: access_token}, {cookie: session}]\n",
    );
    let cfg = crate::support::ConfigDir::new(&users);
    cfg.write("hs.secret", SECRET);
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], upstream: echo}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("access_token"), "{text}");
    cfg.add_listeners("{name: nginx, address: \"127.0.0.1:0\", door: {forward_auth: {}}}");
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("authenticators.users.jwt.from[1]")
            && text.contains("`access_token` is not removed behind `nginx`"),
        "{text}"
    );
    // A cookie is cut out of `Cookie` only if the forward-auth peer applies the answer.
    assert!(
        text.contains("authenticators.users.jwt.from[2]")
            && text.contains("cookie `session` is stripped behind `nginx` only if"),
        "{text}"
    );
    // A query credential is never forwarded by the gateway, whatever `strip` says; the peer
    // forwards it all the same.
    let yaml = std::fs::read_to_string(cfg.dir.path().join("portcullis.yaml")).unwrap();
    std::fs::write(
        cfg.dir.path().join("portcullis.yaml"),
        yaml.replace("    jwt:\n", "    jwt:\n      strip: false\n"),
    )
    .unwrap();
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("`access_token` is not removed behind `nginx`"),
        "{text}"
    );
}

/// A credential header kept for the upstream (`strip: false`) that the gateway removes as
/// another proxy's identity header (ALB's signed `X-Amzn-Oidc-Data`): `check` says the
/// upstream never gets it, unless `server.trusted_proxy_headers` passes it.
#[test]
fn a_kept_credential_the_gateway_strips_is_a_warning() {
    let users = crate::support::hs256_users("{}").replace(
        "    jwt:\n",
        "    jwt:\n      strip: false\n      from: [{header: x-amzn-oidc-data}, {header: x-token}]\n",
    );
    let policy = "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], upstream: echo}\n";
    const SAID: &str =
        "`x-amzn-oidc-data` is kept for the upstream (`strip: false`), but the gateway removes it";
    for (server, warned) in [
        ("", true),
        (
            "server: {trusted_proxies: [10.0.0.0/8], trusted_proxy_headers: [\"x-amzn-oidc-*\"]}\n",
            false,
        ),
    ] {
        let cfg = crate::support::ConfigDir::new(&format!("{server}{users}"));
        cfg.write("hs.secret", SECRET);
        cfg.write("policies/p.yaml", policy);
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "a warning at most: {text}");
        assert_eq!(
            text.contains("authenticators.users.jwt.from[0]") && text.contains(SAID),
            warned,
            "{server}: {text}"
        );
        assert!(!text.contains("from[1]"), "{text}");
    }
}

/// `check` warns about a deny rule narrowed by context extensions when another door serves
/// requests it will never match there.
#[test]
fn check_warns_of_a_narrowed_deny_rule_beside_other_doors() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: closed, match: {paths: [\"/**\"], context_extensions: {svc: billing}}, effect: deny}\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("never matches at `http`") && text.contains("match.context_extensions"),
        "{text}"
    );
}

#[tokio::test]
async fn peer_not_allowed() {
    let gw = gateway("{envoy_grpc: {peers: [10.0.0.0/8]}}").await;
    let mut c = client(&gw).await;
    // A denial, not a failed call: Envoy's `failure_mode_allow: true` turns a failed call into
    // an allow, so a peers list that leaves Envoy out would have let everything through.
    let resp = c
        .check(check("/open/x", "198.51.100.9", &[]))
        .await
        .expect("a Check from a refused peer is answered")
        .into_inner();
    assert_eq!(code(&resp), 7, "PERMISSION_DENIED: {resp:?}");
    let (status, headers, body) = denied(&resp);
    assert_eq!(status, 403);
    assert!(body.contains("\"peer_not_allowed\""), "{body}");
    assert!(!headers.contains_key("www-authenticate"), "{headers:?}");
    // Anything else from that peer (the health service) fails the call.
    let mut health = health_client(&gw).await;
    let err = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

/// Regression: a refused peer's Check message was read in full before the refusal: a stream
/// announcing a 1 MiB message and sending a few bytes of it waited, holding an in-flight
/// permit and up to a megabyte, for as long as the peer liked (60 of them: every door 503).
/// The refusal now comes without a byte of the message read.
#[tokio::test]
async fn a_refused_peers_message_is_never_read() {
    let gw = gateway("{envoy_grpc: {peers: [10.0.0.0/8]}}").await;
    let addr = gw.addr_of("grpc");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    // A message of 1 MiB - 16 announced; 100 bytes of it sent; the stream left open.
    let mut frame = vec![0u8, 0x00, 0x0f, 0xff, 0xf0];
    frame.extend_from_slice(&[0x0a; 100]);
    stream.send_data(bytes::Bytes::from(frame), false).unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), resp)
        .await
        .expect("answered without waiting for the message")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(std::time::Duration::from_secs(5), body.data())
        .await
        .expect("the answer ends")
    {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let trailers = tokio::time::timeout(std::time::Duration::from_secs(5), body.trailers())
        .await
        .unwrap()
        .unwrap()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    // The CheckResponse: its denial is the refusal's (PERMISSION_DENIED, 403).
    let resp: CheckResponse = prost::Message::decode(&got[5..]).unwrap();
    assert_eq!(code(&resp), 7, "{resp:?}");
    let (status, _, body) = denied(&resp);
    assert_eq!(status, 403);
    assert!(body.contains("\"peer_not_allowed\""), "{body}");
    conn.abort();
}

#[tokio::test]
async fn keys_never_fetched_is_unavailable_for_envoys_failure_mode() {
    // A JWKS URL nobody serves: the decision cannot be known, so the call itself fails
    // UNAVAILABLE (Envoy's failure_mode_allow / status_on_error decide), not a denial.
    let gw = unfetched_keys_gateway().await;
    let mut c = client(&gw).await;
    // An ES256 token only the remote set could verify.
    let key =
        portcullis::authn::jwt::mint::SigningKey::generate(jsonwebtoken::Algorithm::ES256, "k1")
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key
        .sign(&json!({"iss": "https://iss.test", "aud": "api", "sub": "alice", "exp": now + 300}))
        .unwrap();
    let bearer = format!("Bearer {token}");
    let err = c
        .check(check(
            "/api/x",
            "198.51.100.9",
            &[("authorization", &bearer)],
        ))
        .await;
    match err {
        Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
        Ok(r) => panic!("expected UNAVAILABLE, got {:?}", r.into_inner()),
    }
    // Reported as what it was: a call that could not be decided, not a denial.
    let (_, metrics) = gw.admin_get("/metrics").await;
    let counted = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let grpc = r#"portcullis_requests_total{door="envoy-grpc","#;
    assert_eq!(
        counted(&format!(r#"{grpc}decision="error","#)),
        1,
        "{metrics}"
    );
    assert_eq!(
        counted(&format!(r#"{grpc}decision="deny","#)),
        0,
        "{metrics}"
    );
    assert_eq!(counted("portcullis_denials_total{"), 0, "{metrics}");
}

#[tokio::test]
async fn health_service_answers_serving() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut health = health_client(&gw).await;
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

/// Regression: the health service said SERVING from start to end, so Envoy's
/// `grpc_health_check` kept sending Checks to a gateway whose `/readyz` said not ready (here:
/// a key set never fetched), which could only answer UNAVAILABLE. It now says what `/readyz`
/// says, for the server and for the Authorization service.
#[tokio::test]
async fn health_follows_readiness() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let gw = unfetched_keys_gateway().await;
    let (ready, _) = gw.admin_get("/readyz").await;
    assert_eq!(ready, 503, "/readyz: not ready");
    let mut health = health_client(&gw).await;
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, ServingStatus::NotServing as i32, "{service:?}");
    }
}

/// A client built from Envoy's own protos (Python envoy-data-plane + grpcio), independent of
/// our code, gets the same answers. Skipped (with a message) when the package is missing,
/// unless `PORTCULLIS_REQUIRE_PEERS` is set, as `.ci/run` does after installing it.
#[tokio::test]
async fn independent_envoy_client_gets_the_answers() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import envoy_data_plane, grpc"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_PEERS").is_none(),
            "python3 with envoy-data-plane and grpcio is required"
        );
        eprintln!("skipped: python3 with envoy-data-plane and grpcio is not installed");
        return;
    }
    let gw = gateway("{envoy_grpc: {}}").await;
    let token = hs256_token(SECRET, &json!({"scope": "orders:read"}));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/envoy_check.py");
    let addr = gw.addr_of("grpc").to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &addr, &token])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["code"], 0);
    assert_eq!(lines[0]["set"]["x-user-id"], "alice");
    let remove = lines[0]["remove"].as_array().unwrap();
    assert!(remove.contains(&json!("authorization")), "{remove:?}");
    assert!(
        !remove.contains(&json!("x-user-id")),
        "set, never removed: {remove:?}"
    );
    assert_eq!(lines[1]["code"], 16);
    assert_eq!(lines[1]["status"], 401);
    assert_eq!(
        lines[1]["headers"]["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    assert_eq!(lines[1]["body"]["error"], "missing_credential");
    assert_eq!(lines[2]["code"], 7);
    assert_eq!(lines[2]["status"], 403);
    assert_eq!(lines[3]["code"], 3);
    assert_eq!(lines[3]["status"], 400);
}

/// Envoy's `source.certificate` authenticates only when the door says Envoy verifies client
/// certificates: Envoy passes on one it accepted untrusted, too.
#[tokio::test]
async fn source_certificate_only_when_configured() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["device-1.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device-1");
    let pem = params.self_signed(&key).unwrap().pem();
    let encoded = envoy_pem(&pem);
    for (door, want) in [
        ("{envoy_grpc: {}}", 16),
        ("{envoy_grpc: {client_certificates: true}}", 0),
    ] {
        let gw = Setup {
            listeners: format!("  - name: grpc\n    address: 127.0.0.1:0\n    door: {door}\n"),
            policies: vec![(
                "10-p.yaml".into(),
                "rules:\n  - {name: devices, match: {paths: [\"/devices/**\"]}, effect: allow, authenticators: [devices]}\n".into(),
            )],
            extra: "authenticators:\n  devices:\n    mtls: {}\nidentity_headers:\n  x-user-id: \"{principal.id}\"\n".into(),
            ..Setup::default()
        }
        .start()
        .await;
        let mut c = client(&gw).await;
        let mut req = check("/devices/x", "198.51.100.9", &[]);
        if let Some(source) = req.attributes.as_mut().and_then(|a| a.source.as_mut()) {
            source.certificate.clone_from(&encoded);
        }
        let resp = c.check(req).await.unwrap().into_inner();
        assert_eq!(code(&resp), want, "{door}: {resp:?}");
        if want == 0 {
            let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
                panic!("{resp:?}");
            };
            let id = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key == "x-user-id")
                .map(|h| h.value.clone());
            assert!(id.is_some_and(|v| v.contains("device-1")), "{ok:?}");
            // PEM around bytes that are no certificate is refused, not taken as one present.
            let garbage =
                envoy_pem("-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n");
            let mut req = check("/devices/x", "198.51.100.9", &[]);
            if let Some(source) = req.attributes.as_mut().and_then(|a| a.source.as_mut()) {
                source.certificate = garbage;
            }
            let resp = c.check(req).await.unwrap().into_inner();
            assert_eq!(code(&resp), 3, "{resp:?}");
        }
    }
}

/// A rule with CORS behind Envoy: a preflight is answered by the door (a denied response of
/// 204 with the CORS headers, which Envoy sends the client without the upstream), one from
/// another origin gets 403 without them; a real request's denial carries them for the
/// allowed origin, and an allow hands them back to add to the upstream's answer (`Vary`
/// appended to the upstream's own, the rest set over it).
#[tokio::test]
async fn cors_preflight_and_answers_at_the_grpc_door() {
    use envoy_types::ext_authz::v3::pb::HeaderAppendAction;
    let gw = Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        policies: vec![("10-p.yaml".into(), crate::support::CORS_API.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: crate::support::hs256_users("{}"),
        ..Setup::default()
    }
    .start()
    .await;
    let mut c = client(&gw).await;
    let options = |origin: &str| {
        let mut req = check(
            "/api/items/1",
            "198.51.100.9",
            &[
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "Authorization"),
            ],
        );
        let http = req
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.method = "OPTIONS".into();
        http.headers.insert(":method".into(), "OPTIONS".into());
        req
    };
    let resp = c
        .check(options("https://app.example.com"))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, body) = denied(&resp);
    assert_eq!((status, code(&resp)), (204, 7), "{resp:?}");
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://app.example.com")
    );
    assert_eq!(
        headers
            .get("access-control-allow-methods")
            .map(String::as_str),
        Some("GET, PUT, HEAD")
    );
    assert_eq!(
        headers
            .get("access-control-allow-credentials")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(headers.get("vary").map(String::as_str), Some("origin"));
    assert!(body.is_empty(), "{body}");

    let resp = c
        .check(options("https://evil.example"))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, body) = denied(&resp);
    assert_eq!(status, 403, "{resp:?}");
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "{headers:?}"
    );
    assert!(body.contains("cors_origin_not_allowed"), "{body}");

    // A real request without its credential: still refused, readable by the allowed origin.
    let resp = c
        .check(check(
            "/api/items/1",
            "198.51.100.9",
            &[("origin", "https://app.example.com")],
        ))
        .await
        .unwrap()
        .into_inner();
    let (status, headers, _) = denied(&resp);
    assert_eq!((status, code(&resp)), (401, 16), "{resp:?}");
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://app.example.com")
    );

    // Allowed: the CORS headers for the client's response.
    let bearer = format!("Bearer {}", hs256_token(SECRET, &json!({})));
    let resp = c
        .check(check(
            "/api/items/1",
            "198.51.100.9",
            &[
                ("origin", "https://app.example.com"),
                ("authorization", &bearer),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&resp), 0, "{resp:?}");
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("{resp:?}");
    };
    let added: HashMap<&str, (&str, i32)> = ok
        .response_headers_to_add
        .iter()
        .filter_map(|o| Some((o.header.as_ref()?, o.append_action)))
        .map(|(h, a)| (h.key.as_str(), (h.value.as_str(), a)))
        .collect();
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    let append = HeaderAppendAction::AppendIfExistsOrAdd as i32;
    assert_eq!(
        added.get("access-control-allow-origin"),
        Some(&("https://app.example.com", overwrite)),
        "{added:?}"
    );
    assert_eq!(added.get("vary"), Some(&("origin", append)), "{added:?}");
}

/// Upgrades at the gRPC door: as at the HTTP doors (`doors::UPGRADE_CASES`); Envoy relays
/// what the door allows.
#[tokio::test]
async fn upgrades_at_the_grpc_door_as_at_the_proxy() {
    let gw = Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        policies: vec![("10-p.yaml".into(), crate::doors::UPGRADE_POLICY.into())],
        ..Setup::default()
    }
    .start()
    .await;
    let mut c = client(&gw).await;
    for (name, path, headers, status, reason) in crate::doors::UPGRADE_CASES {
        let mut all = headers.to_vec();
        all.push(("connection", "upgrade"));
        let r = c
            .check(check(path, "198.51.100.9", &all))
            .await
            .expect("answers")
            .into_inner();
        if *status == 200 {
            assert_eq!(code(&r), 0, "{name}: {r:?}");
            continue;
        }
        let (got, _, body) = denied(&r);
        assert_eq!(got, i32::from(*status), "{name}: {body}");
        assert!(body.contains(reason.unwrap()), "{name}: {body}");
    }
}

/// The client is Envoy's `source` address: read bracketed or with a zone, never replaced by
/// the forwarded-for chain when it does not parse (400 `invalid_source_address`); without an
/// IP source (a pipe), the chain's last hop, which the proxy in front of Envoy appended.
#[tokio::test]
async fn source_addresses() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    // `/office/**` requires 203.0.113.0/24; every Check claims to be from it in the chain.
    let xff = [("x-forwarded-for", "203.0.113.9")];
    let at = |source: &str| check("/office/x", source, &xff);
    for (source, want) in [
        ("203.0.113.5", 200),
        ("fe80::1%eth0", 403),
        ("[2001:db8::1]", 403),
        ("::ffff:203.0.113.5", 200),
        ("198.51.100.9", 403),
        ("not-an-address", 400),
        ("203.0.113.5:8080", 400),
    ] {
        let r = c.check(at(source)).await.unwrap().into_inner();
        if want == 200 {
            assert_eq!(code(&r), 0, "{source}: {r:?}");
            continue;
        }
        let (status, _, body) = denied(&r);
        assert_eq!(status, want, "{source}: {body}");
        if want == 400 {
            assert!(body.contains("invalid_source_address"), "{source}: {body}");
        }
    }
    // A pipe has no client address: the chain's last hop decides.
    let mut piped = at("unused");
    let source = piped.attributes.as_mut().unwrap().source.as_mut().unwrap();
    source.address = Some(Address {
        address: Some(address::Address::Pipe(
            envoy_types::pb::envoy::config::core::v3::Pipe {
                path: "/run/envoy.sock".into(),
                ..Default::default()
            },
        )),
    });
    let r = c.check(piped).await.unwrap().into_inner();
    assert_eq!(code(&r), 0, "{r:?}");
}

/// Envoy's pseudo-headers and the fields it adds (`x-forwarded-proto`, `x-request-id`, ...)
/// are not the client's: a request within `server.max_headers` at the proxy door is within it
/// here too, and one past it is refused with 431 as there.
#[tokio::test]
async fn envoys_own_fields_do_not_count_against_max_headers() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    let bearer = format!(
        "Bearer {}",
        hs256_token(SECRET, &json!({"scope": "orders:read"}))
    );
    let ask = |pads: usize| {
        let mut fields: Vec<(String, String)> = (0..pads)
            .map(|i| (format!("x-pad-{i}"), "v".to_owned()))
            .collect();
        fields.push(("authorization".into(), bearer.clone()));
        fields.push(("x-forwarded-proto".into(), "https".into()));
        fields.push(("x-request-id".into(), "r-1".into()));
        fields.push(("x-envoy-expected-rq-timeout-ms".into(), "15000".into()));
        let refs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        check("/api/orders", "198.51.100.9", &refs)
    };
    // 98 client fields (with `authorization`) plus four pseudo-headers and three of Envoy's.
    let resp = c.check(ask(97)).await.expect("an answer").into_inner();
    assert_eq!(code(&resp), 0, "{resp:?}");
    let resp = c.check(ask(105)).await.expect("an answer").into_inner();
    let (status, _, body) = denied(&resp);
    assert_eq!(status, 431, "{resp:?}");
    assert!(body.contains("headers_too_many"), "{body}");
}

/// A Check whose header map holds more entries than any request the door takes (here
/// 400,000 empty ones in 800 KB, or one name sent again and again) is refused as such (431
/// `headers_too_many`) before any entry is decoded, and the gateway goes on answering.
///
/// Why: decoded first, such a message took 2 s of CPU per 20,000 entries (a quadratic pass
/// over names sent twice) on the door's thread, and 64 bytes per two-byte entry.
#[tokio::test]
async fn a_check_of_too_many_map_entries_is_refused_unread() {
    use prost::Message as _;
    // `attributes { request { http { <inner> } } }`.
    let wrap = |tag: u32, inner: &[u8]| {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(inner.len() as u64, &mut out);
        out.extend_from_slice(inner);
        out
    };
    let http = |inner: &[u8]| wrap(1, &wrap(4, &wrap(2, inner)));
    let gw = gateway("{envoy_grpc: {}}").await;
    let empty_entries: Vec<u8> = [0x1a, 0x00].repeat(400_000);
    let same_name: Vec<u8> = wrap(3, &[wrap(1, b"x-a"), wrap(2, b"v")].concat()).repeat(2_000);
    for (what, entries) in [("empty entries", empty_entries), ("one name", same_name)] {
        let mut bytes = check("/open/x", "198.51.100.9", &[]).encode_to_vec();
        bytes.extend(http(&entries));
        let resp = raw_check(&gw, bytes).await;
        let (status, _, body) = denied(&resp);
        assert_eq!(status, 431, "{what}: {resp:?}");
        assert!(
            body.contains("\"error\":\"headers_too_many\""),
            "{what}: {body}"
        );
    }
    let ok = raw_check(&gw, check("/open/x", "198.51.100.9", &[]).encode_to_vec()).await;
    assert_eq!(code(&ok), 0, "{ok:?}");
}

/// Sends `body` (written in `chunks` pieces) as a Check call's request body over a raw
/// HTTP/2 stream with `headers` added, the stream ended after it unless `open`; the call's
/// `grpc-status` and its `CheckResponse` (when it has one), within 5 s.
async fn h2_check(
    gw: &TestGateway,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    open: bool,
) -> (String, Option<CheckResponse>) {
    let path = "/envoy.service.auth.v3.Authorization/Check";
    let (status, got) = h2_call(gw, path, headers, body, open).await;
    let message = (got.len() > 5).then(|| prost::Message::decode(&got[5..]).unwrap());
    (status, message)
}

/// [`h2_check`] for any gRPC method: the `grpc-status` and the response body's bytes.
async fn h2_call(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    open: bool,
) -> (String, Vec<u8>) {
    let addr = gw.addr_of("grpc");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut stream) = send.send_request(req.body(()).unwrap(), false).unwrap();
    stream.send_data(bytes::Bytes::from(body), !open).unwrap();
    let five = std::time::Duration::from_secs(5);
    let resp = tokio::time::timeout(five, resp)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(five, body.data())
        .await
        .expect("the answer ends")
    {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    let status = match grpc_status {
        Some(s) => s,
        None => tokio::time::timeout(five, body.trailers())
            .await
            .unwrap()
            .unwrap()
            .expect("trailers")["grpc-status"]
            .to_str()
            .unwrap()
            .to_owned(),
    };
    conn.abort();
    (status, got)
}

/// A message framed as gRPC sends it: uncompressed, its length first.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A Check for the anonymous `/open/x` carrying a request body of `len` bytes (Envoy's
/// `with_request_body`).
fn check_with_body(len: usize) -> Vec<u8> {
    use prost::Message as _;
    let mut c = check("/open/x", "198.51.100.9", &[]);
    if let Some(h) = c
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        h.body = "a".repeat(len);
    }
    c.encode_to_vec()
}

/// Large Check messages share a budget per listener (64 MiB past each message's first
/// 64 KiB): twenty streams each holding 3.9 MB of a 4 MB message, stalled, get the budget's
/// worth read (seventeen, answered 408 at the deadline) and the rest denied at once with 503
/// `overloaded` (UNAVAILABLE). (Each stream held its 4 MiB: 828 MB under a tester's load.)
#[tokio::test]
async fn large_check_messages_share_a_budget() {
    let gw = Setup {
        listeners:
            "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {timeout: 3s}}\n"
                .into(),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: crate::support::hs256_users("{}"),
        ..Setup::default()
    }
    .start()
    .await;
    let addr = gw.addr_of("grpc");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    // A message announcing 4,000,000 bytes, of which 3,900,000 are sent.
    let mut partial = vec![0u8];
    partial.extend_from_slice(&4_000_000u32.to_be_bytes());
    partial.resize(3_900_005, b'a');
    let partial = bytes::Bytes::from(partial);
    let mut calls = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..20 {
        let req = http::Request::post(format!(
            "http://{addr}/envoy.service.auth.v3.Authorization/Check"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
        let (resp, mut stream) = send.send_request(req, false).unwrap();
        stream.reserve_capacity(partial.len());
        stream.send_data(partial.clone(), false).unwrap();
        streams.push(stream);
        calls.push(async move {
            let resp = tokio::time::timeout(std::time::Duration::from_secs(10), resp)
                .await
                .expect("answered")
                .unwrap();
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            let m: CheckResponse = prost::Message::decode(&got[5..]).unwrap();
            denied(&m).0
        });
        send = send.ready().await.unwrap();
    }
    let statuses = futures_util::future::join_all(calls).await;
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    let late = statuses.iter().filter(|&&s| s == 408).count();
    assert_eq!(busy + late, 20, "{statuses:?}");
    assert!((3..=6).contains(&busy), "{statuses:?}");
    drop(streams);
}

/// Regression: tonic failed the call on a Check message over 1 MiB (`OUT_OF_RANGE`), an
/// empty or truncated one (`INTERNAL`), a compressed one (`UNIMPLEMENTED`), and never
/// answered one that stalled; Envoy's `failure_mode_allow: true` turns a failed call into an
/// allow, so a client whose body (`with_request_body`) pushed the Check past 1 MiB was let
/// through. Each is now a denial, within the door's timeout; a Check as large as the largest
/// request the proxy takes is decided like any other.
#[tokio::test]
async fn an_unreadable_check_message_is_denied_not_failed() {
    let gw = Setup {
        listeners:
            "  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {timeout: 1s}}\n"
                .into(),
        server: "  max_body_bytes: 65536\n".into(),
        policies: vec![("10-p.yaml".into(), POLICY.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: crate::support::hs256_users("{}"),
        ..Setup::default()
    }
    .start()
    .await;
    let ok = framed(&check_with_body(10));
    let mut two = ok.clone();
    two.extend_from_slice(&ok);
    let mut compressed = ok.clone();
    compressed[0] = 1;
    let stalled = ok[..ok.len() - 3].to_vec();
    /// What is sent (headers, body, the stream left open) and the denial wanted (gRPC code,
    /// HTTP status, reason code).
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        Vec<u8>,
        bool,
        (i32, i32, &'a str),
    );
    let cases: [Case<'_>; 6] = [
        (
            "over the limit",
            &[],
            framed(&check_with_body(600_000)),
            false,
            (8, 413, "check_too_large"),
        ),
        (
            "no message",
            &[],
            Vec::new(),
            false,
            (3, 400, "invalid_check_request"),
        ),
        (
            "truncated frame",
            &[],
            ok[..ok.len() - 3].to_vec(),
            false,
            (3, 400, "invalid_check_request"),
        ),
        (
            "two messages",
            &[],
            two,
            false,
            (3, 400, "invalid_check_request"),
        ),
        (
            "compressed",
            &[("grpc-encoding", "gzip")],
            compressed,
            false,
            (3, 400, "invalid_check_request"),
        ),
        ("stalled", &[], stalled, true, (4, 408, "check_timeout")),
    ];
    for (what, headers, body, open, (want_code, want_status, want_error)) in cases {
        let started = std::time::Instant::now();
        let (status, resp) = h2_check(&gw, headers, body, open).await;
        assert_eq!(status, "0", "{what}: a denial, not a failed call");
        let resp = resp.unwrap_or_else(|| panic!("{what}: no CheckResponse"));
        assert_eq!(code(&resp), want_code, "{what}: {resp:?}");
        let (status, _, body) = denied(&resp);
        assert_eq!(status, want_status, "{what}");
        assert!(
            body.contains(&format!("\"error\":\"{want_error}\"")),
            "{what}: {body}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{what}: answered late"
        );
    }
    // An uncompressed message naming an encoding, and one within the limit, are decided.
    for (what, headers, body) in [
        (
            "grpc-encoding named",
            &[("grpc-encoding", "gzip")][..],
            ok.clone(),
        ),
        ("within the limit", &[], framed(&check_with_body(60_000))),
    ] {
        let (status, resp) = h2_check(&gw, headers, body, false).await;
        assert_eq!(status, "0", "{what}");
        assert_eq!(code(&resp.expect("a CheckResponse")), 0, "{what}: allowed");
    }
    // With the default limits (a 10 MiB body), a 1.1 MB Check is decided like any other.
    let gw = gateway("{envoy_grpc: {}}").await;
    let (status, resp) = h2_check(&gw, &[], framed(&check_with_body(1_100_000)), false).await;
    assert_eq!(status, "0");
    assert_eq!(code(&resp.expect("a CheckResponse")), 0, "allowed");
}

/// Regression: header values Envoy passed on as sent kept their surrounding spaces and tabs,
/// so `Authorization: ␠Bearer …` was 401 `missing_credential` here and allowed at every other
/// door (an HTTP/1 parser drops them, RFC 9110 §5.5).
#[tokio::test]
async fn header_values_lose_surrounding_whitespace() {
    let gw = gateway("{envoy_grpc: {}}").await;
    let mut c = client(&gw).await;
    let token = hs256_token(SECRET, &json!({"scope": "orders:read"}));
    for bearer in [
        format!(" Bearer {token}"),
        format!("\tBearer {token} "),
        format!("Bearer {token}\t"),
    ] {
        let resp = c
            .check(check(
                "/api/orders",
                "198.51.100.9",
                &[("authorization", &bearer)],
            ))
            .await
            .expect("an answer")
            .into_inner();
        assert_eq!(code(&resp), 0, "{bearer:?}: {resp:?}");
    }
}

/// Regression: a health call whose message stalled was never answered and held its in-flight
/// permit for as long as the peer kept the stream open (with `max_in_flight` of them, every
/// door answered 503). It now ends at the door's timeout.
#[tokio::test]
async fn a_stalled_health_call_ends_at_the_deadline() {
    let gw = gateway("{envoy_grpc: {timeout: 1s}}").await;
    let started = std::time::Instant::now();
    // A message of 5 bytes announced, 2 sent, the stream left open.
    let path = "/grpc.health.v1.Health/Check";
    let (status, _) = h2_call(&gw, path, &[], vec![0, 0, 0, 0, 5, 0x0a, 0x00], true).await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // A whole one is answered.
    let (status, _) = h2_call(&gw, path, &[], vec![0, 0, 0, 0, 0], false).await;
    assert_eq!(status, "0");
}

/// The gRPC door counts a head as Envoy's HTTP mode does: Envoy's `x-forwarded-proto` (one
/// field, a scheme) is not the client's, at either. The largest head Envoy's HTTP mode takes
/// passes the gRPC door, and one byte more is refused by both.
#[tokio::test]
async fn the_grpc_door_counts_a_head_as_envoys_http_mode() {
    let gw = Setup {
        listeners: "  - name: envoy\n    address: 127.0.0.1:0\n    door: {envoy_http: {}}\n  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        server: "  max_header_bytes: 8192\n".into(),
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: open, match: {paths: [\"/open/**\"]}, effect: allow, anonymous: true}\n".into(),
        )],
        ..Setup::default()
    }
    .start()
    .await;
    let http = |pad: usize| {
        format!(
            "GET /open/x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 127.0.0.1\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(pad)
        )
    };
    let mut largest = None;
    for pad in 8000..8192 {
        match crate::support::raw(gw.addr_of("envoy"), http(pad).as_bytes())
            .await
            .status
        {
            200 => largest = Some(pad),
            431 => break,
            s => panic!("pad {pad}: {s}"),
        }
    }
    let largest = largest.expect("a head Envoy's HTTP mode takes");
    let grpc = AuthorizationClient::connect(format!("http://{}", gw.addr_of("grpc")))
        .await
        .unwrap();
    let ask = |pad: usize| {
        let pad = "a".repeat(pad);
        let request = check(
            "/open/x",
            "127.0.0.1",
            &[
                ("x-forwarded-proto", "https"),
                ("connection", "close"),
                ("x-pad", &pad),
            ],
        );
        let mut grpc = grpc.clone();
        async move { grpc.check(request).await.unwrap().into_inner() }
    };
    let allowed = ask(largest).await;
    assert_eq!(code(&allowed), 0, "{allowed:?}");
    let refused = ask(largest + 1).await;
    let (status, _, body) = denied(&refused);
    assert_eq!(status, 431, "{refused:?}");
    assert!(body.contains("headers_too_large"), "{body}");
}
