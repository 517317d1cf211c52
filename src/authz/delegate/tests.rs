//! Delegation tests: the headers a delegate is sent, the key its answers are cached under.

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;

use super::*;
use crate::request::facts::ConnInfo;

/// `f` of the facts of a request from `peer` (untrusted unless in 10.0.0.0/8) with
/// `headers`, and what the gateway would set: identity header `x-user-id: alice`.
fn with_request<T>(
    peer: &str,
    headers: &[(&str, &[u8])],
    f: impl FnOnce(&RequestFacts<'_>, UpstreamHeaders<'_>) -> T,
) -> T {
    let mut req = http::Request::get("/x?a=1").header("host", "h");
    for (k, v) in headers {
        req = req.header(*k, HeaderValue::from_bytes(v).unwrap());
    }
    let (parts, ()) = req.body(()).unwrap().into_parts();
    let conn = ConnInfo::new(peer.parse().unwrap(), Arc::from("l"), None);
    let trusted = ["10.0.0.0/8".parse().unwrap()];
    let facts = RequestFacts::from_parts(&parts, &conn, &trusted).unwrap();
    let user_id = HeaderName::from_static("x-user-id");
    let spoofable = Spoofable::new([&user_id], Vec::new());
    let identity = [(user_id, HeaderValue::from_static("alice"))];
    let upstream = UpstreamHeaders {
        spoofable: &spoofable,
        identity: &identity,
        request_id: &http::HeaderName::from_static("x-request-id"),
    };
    f(&facts, upstream)
}

/// The headers a delegate is sent for such a request.
fn sent(peer: &str, headers: &[(&str, &[u8])]) -> HashMap<String, String> {
    with_request(peer, headers, headers_sent)
}

/// The `CheckRequest` for such a request, anonymous, with a bearer token.
fn request() -> CheckRequest {
    let headers: &[(&str, &[u8])] = &[("authorization", b"Bearer t1"), ("x-a", b"1")];
    with_request("192.0.2.1:1", headers, |facts, upstream| {
        check_request(facts, facts.forwarded_path(), None, upstream)
    })
}

fn http_of(r: &mut CheckRequest) -> &mut HttpRequest {
    let attributes = r.attributes.as_mut().unwrap();
    attributes.request.as_mut().unwrap().http.as_mut().unwrap()
}

fn socket_of(r: &mut CheckRequest) -> &mut SocketAddress {
    let source = r.attributes.as_mut().unwrap().source.as_mut().unwrap();
    match source.address.as_mut().unwrap().address.as_mut().unwrap() {
        address::Address::SocketAddress(a) => a,
        other => panic!("{other:?}"),
    }
}

#[test]
fn forwarding_headers_only_from_trusted_proxies() {
    let h: &[(&str, &[u8])] = &[
        ("x-forwarded-for", b"6.6.6.6"),
        ("x-real-ip", b"6.6.6.6"),
        ("forwarded", b"for=6.6.6.6"),
        ("true-client-ip", b"6.6.6.6"),
        ("x_forwarded_for", b"6.6.6.6"),
    ];
    let untrusted = sent("192.0.2.1:1", h);
    let mut names: Vec<&str> = untrusted.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["host", "x-user-id"]);
    // A trusted proxy's chain and claims reach the upstream, so the delegate sees them;
    // another spelling never does.
    let trusted = sent("10.0.0.1:1", h);
    let mut names: Vec<&str> = trusted.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "forwarded",
            "host",
            "true-client-ip",
            "x-forwarded-for",
            "x-real-ip",
            "x-user-id"
        ]
    );
}

#[test]
fn host_is_sent_whatever_the_http_version() {
    // HTTP/2: the authority in the target (`:authority`), no `Host` field.
    let (parts, ()) = http::Request::get("https://api.example:8443/x")
        .version(http::Version::HTTP_2)
        .body(())
        .unwrap()
        .into_parts();
    let conn = ConnInfo::new("192.0.2.1:1".parse().unwrap(), Arc::from("l"), None);
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    let spoofable = Spoofable::new([], Vec::new());
    let upstream = UpstreamHeaders {
        spoofable: &spoofable,
        identity: &[],
        request_id: &http::HeaderName::from_static("x-request-id"),
    };
    let h2 = headers_sent(&facts, upstream);
    assert_eq!(h2["host"], "api.example:8443");
    // HTTP/1.1: its `Host`, as sent.
    assert_eq!(sent("192.0.2.1:1", &[])["host"], "h");
}

#[test]
fn host_is_the_decided_one() {
    // An absolute-form target names another host than the `Host` line: the rules, the
    // upstream and the delegate all go by the target's.
    let (parts, ()) = http::Request::get("http://evil.example/secret")
        .header("host", "good.example")
        .body(())
        .unwrap()
        .into_parts();
    let conn = ConnInfo::new("192.0.2.1:1".parse().unwrap(), Arc::from("l"), None);
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
    assert_eq!(facts.authority(), "evil.example");
    let spoofable = Spoofable::new([], Vec::new());
    let upstream = UpstreamHeaders {
        spoofable: &spoofable,
        identity: &[],
        request_id: &http::HeaderName::from_static("x-request-id"),
    };
    assert_eq!(headers_sent(&facts, upstream)["host"], "evil.example");
}

#[test]
fn identity_replaces_and_odd_bytes_are_kept() {
    let h = sent(
        "192.0.2.1:1",
        &[
            ("x-user-id", b"root"),
            ("x-tenant", b"\xffevil"),
            ("x-tenant", b"mine"),
        ],
    );
    assert_eq!(h["x-user-id"], "alice");
    assert_eq!(h["x-tenant"], "\u{fffd}evil,mine");
}

#[test]
fn key_covers_every_part_sent() {
    let base = request();
    let key = cache_key("r", &base).unwrap();
    assert_eq!(cache_key("r", &request()), Some(key), "deterministic");
    assert_ne!(cache_key("r2", &base), Some(key), "rule");
    type Change = fn(&mut CheckRequest);
    let changes: &[(&str, Change)] = &[
        ("source address", |r| {
            socket_of(r).address = "192.0.2.2".into()
        }),
        ("method", |r| http_of(r).method = "DELETE".into()),
        ("host", |r| http_of(r).host = "other".into()),
        ("path", |r| http_of(r).path = "/y?a=1".into()),
        ("query", |r| http_of(r).path = "/x?a=2".into()),
        ("scheme", |r| http_of(r).scheme = "https".into()),
        ("credential", |r| {
            http_of(r)
                .headers
                .insert("authorization".into(), "Bearer t2".into());
        }),
        ("header value", |r| {
            http_of(r).headers.insert("x-a".into(), "2".into());
        }),
        ("header added", |r| {
            http_of(r).headers.insert("x-b".into(), "1".into());
        }),
        ("header renamed", |r| {
            let h = &mut http_of(r).headers;
            let v = h.remove("x-a").unwrap();
            h.insert("x-b".into(), v);
        }),
        ("context", |r| {
            let attributes = r.attributes.as_mut().unwrap();
            attributes
                .context_extensions
                .insert("principal_id".into(), "alice".into());
        }),
    ];
    let mut seen = HashSet::from([key]);
    for (what, change) in changes {
        let mut r = request();
        change(&mut r);
        let k = cache_key("r", &r).unwrap();
        assert!(seen.insert(k), "{what} is outside the key");
    }
}

#[test]
fn key_parts_never_run_together() {
    // Length prefixes: bytes moved from one part to the next change the key.
    let (mut a, mut b) = (request(), request());
    http_of(&mut a).host = "ab".into();
    http_of(&mut a).method = "c".into();
    http_of(&mut b).host = "a".into();
    http_of(&mut b).method = "bc".into();
    assert_ne!(cache_key("r", &a), cache_key("r", &b));
    let (mut a, mut b) = (request(), request());
    http_of(&mut a).headers.insert("x-ab".into(), "c".into());
    http_of(&mut b)
        .headers
        .insert("x-abc".into(), String::new());
    assert_ne!(cache_key("r", &a), cache_key("r", &b));
    // Sorted maps: the order entries went in does not matter.
    let names: Vec<String> = (0..32).map(|i| format!("x-{i}")).collect();
    let (mut a, mut b) = (request(), request());
    for n in &names {
        http_of(&mut a).headers.insert(n.clone(), "v".into());
    }
    for n in names.iter().rev() {
        http_of(&mut b).headers.insert(n.clone(), "v".into());
    }
    assert_eq!(cache_key("r", &a), cache_key("r", &b));
}

#[test]
fn key_skips_unread_fields() {
    type Change = fn(&mut CheckRequest);
    let changes: &[(&str, Change)] = &[
        ("destination", |r| {
            r.attributes.as_mut().unwrap().destination = Some(Peer::default());
        }),
        ("port", |r| {
            socket_of(r).port_specifier = Some(PortSpecifier::PortValue(1));
        }),
        ("request id", |r| http_of(r).id = "1".into()),
        ("body", |r| http_of(r).body = "x".into()),
        ("header map", |r| {
            http_of(r).header_map = Some(Default::default())
        }),
        ("no attributes", |r| r.attributes = None),
    ];
    for (what, change) in changes {
        let mut r = request();
        change(&mut r);
        assert_eq!(cache_key("r", &r), None, "{what} is not read: never cached");
    }
}

#[test]
fn an_empty_answer_is_no_verdict() {
    use envoy_types::ext_authz::v3::pb::{CheckResponse, OkHttpResponse};
    use envoy_types::pb::google::rpc;
    let ok = |status: Option<i32>, http: Option<HttpResponse>| {
        verdict(
            &CheckResponse {
                status: status.map(|code| rpc::Status {
                    code,
                    ..rpc::Status::default()
                }),
                http_response: http,
                ..CheckResponse::default()
            },
            &[],
        )
    };
    // Nothing said: the failure mode decides, never an allow.
    assert_eq!(ok(None, None), Err(DelegateError::Garbage));
    // A status alone, or an OK response alone, is an answer.
    assert!(matches!(ok(Some(0), None), Ok(Verdict::Allow(_))));
    assert!(matches!(
        ok(
            None,
            Some(HttpResponse::OkResponse(OkHttpResponse::default()))
        ),
        Ok(Verdict::Allow(_))
    ));
    assert!(matches!(ok(Some(7), None), Ok(Verdict::Deny)));
}

#[tokio::test]
async fn a_cache_ttl_past_a_day_is_refused() {
    let compile = |ttl: &str| {
        let raw: crate::config::raw::RawDelegate = serde_yaml::from_str(&format!(
            "{{grpc: \"http://127.0.0.1:9191\", cache_ttl: {ttl}}}"
        ))
        .unwrap();
        Delegate::compile("opa", &raw, std::path::Path::new("."), None).map(|_| ())
    };
    assert!(compile("1d").is_ok());
    for ttl in ["25h", "1001y"] {
        let e = compile(ttl).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("cache_ttl", "at most 1d")
        );
    }
}

#[tokio::test]
async fn credentials_in_the_url_are_refused() {
    let compile = |url: &str| {
        let raw: crate::config::raw::RawDelegate =
            serde_yaml::from_str(&format!("grpc: \"{url}\"")).unwrap();
        Delegate::compile("opa", &raw, std::path::Path::new("."), None).map(|_| ())
    };
    assert!(compile("http://127.0.0.1:9191").is_ok());
    let e = compile("http://u:hunter2@127.0.0.1:9191").unwrap_err();
    assert!(
        e.message.contains("credentials in the URL are refused"),
        "{e:?}"
    );
    assert!(!e.message.contains("hunter2"), "{e:?}");
    // Wherever a parser would end the authority.
    for url in [
        "http://u:hunter2@127.0.0.1:9191:99",
        "http://u:hun#ter2@127.0.0.1:9191",
        "http://u:hun/ter2@127.0.0.1:9191",
    ] {
        let e = compile(url).unwrap_err();
        assert!(
            e.message.contains("credentials in the URL are refused"),
            "{e:?}"
        );
        assert!(!e.message.contains("ter2"), "{e:?}");
    }
}

#[test]
fn an_unverified_bearer_tokens_exp_is_read() {
    use base64::Engine as _;
    let token = |claims: &str| {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64("{\"alg\":\"none\"}"), b64(claims))
    };
    let exp = |value: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        super::unverified_exp(&h)
    };
    assert_eq!(
        exp(&format!("Bearer {}", token("{\"exp\":1700000000}"))),
        Some(1_700_000_000)
    );
    assert_eq!(
        exp(&format!("bearer {}", token("{\"exp\":1700000000.5}"))),
        Some(1_700_000_000)
    );
    assert_eq!(exp(&format!("Bearer {}", token("{\"sub\":\"a\"}"))), None);
    assert_eq!(exp(&format!("Basic {}", token("{\"exp\":1}"))), None);
    assert_eq!(exp("Bearer opaque-token"), None);
    assert_eq!(super::unverified_exp(&http::HeaderMap::new()), None);
}
