//! Forwarding: headers, bodies, upstream failures, limits.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::{Setup, echoed_header, get, raw, send};

#[tokio::test]
async fn hop_by_hop_headers_removed_including_connection_named() {
    let gw = Setup::default().start().await;
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Something\r\n\
          X-Something: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: websocket\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = gw.echo.last().unwrap().headers;
    for gone in [
        "x-something",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(seen.get("x-kept").unwrap(), "yes");
    // Hyper's client speaks keep-alive to the upstream; the client's `close` is not forwarded.
    assert_ne!(
        seen.get("connection")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("close, X-Something".into())
    );
}

#[tokio::test]
async fn h2c_upgrade_refused() {
    let gw = Setup::default().start().await;
    let r = raw(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(r.body.contains("h2c_upgrade"));
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn spoofed_forwarding_headers_replaced_from_untrusted_client() {
    let gw = Setup::default().start().await;
    let req = Request::get("/who")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(gw.addr(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        echoed_header(&gw.echo, "x-forwarded-for").unwrap(),
        "127.0.0.1"
    );
    assert_eq!(echoed_header(&gw.echo, "x-real-ip").unwrap(), "127.0.0.1");
    assert_eq!(
        echoed_header(&gw.echo, "x-forwarded-proto").unwrap(),
        "http"
    );
    assert!(
        echoed_header(&gw.echo, "forwarded")
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http")
    );
}

#[tokio::test]
async fn trusted_proxy_chain_gives_real_client_ip() {
    let gw = Setup::default()
        .server("  trusted_proxies: [\"127.0.0.0/8\"]\n")
        .start()
        .await;
    let req = Request::get("/who")
        .header("x-forwarded-for", "203.0.113.9, 127.0.0.5")
        .body(Full::default())
        .unwrap();
    let (status, _, _) = send(gw.addr(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echoed_header(&gw.echo, "x-real-ip").unwrap(), "203.0.113.9");
    assert_eq!(
        echoed_header(&gw.echo, "x-forwarded-for").unwrap(),
        "203.0.113.9, 127.0.0.5, 127.0.0.1"
    );
}

#[tokio::test]
async fn request_id_generated_or_propagated() {
    let gw = Setup::default().start().await;
    let (_, headers, _) = get(gw.addr(), "/a").await;
    let generated = headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 32);
    assert_eq!(echoed_header(&gw.echo, "x-request-id").unwrap(), generated);

    let req = Request::get("/b")
        .header("x-request-id", "client-id-42")
        .body(Full::default())
        .unwrap();
    let (_, headers, _) = send(gw.addr(), req).await;
    assert_eq!(headers.get("x-request-id").unwrap(), "client-id-42");
    assert_eq!(
        echoed_header(&gw.echo, "x-request-id").unwrap(),
        "client-id-42"
    );
}

#[tokio::test]
async fn host_is_the_upstreams_unless_preserved() {
    let gw = Setup::default().start().await;
    let r = raw(
        gw.addr(),
        b"GET /h HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed_header(&gw.echo, "host").unwrap(),
        gw.echo.addr.to_string()
    );
    assert_eq!(
        echoed_header(&gw.echo, "x-forwarded-host").unwrap(),
        "app.test"
    );

    let gw2 = Setup {
        upstreams: "  kept:\n    url: http://{echo}\n    preserve_host: true\n".into(),
        policies: vec![(
            "p.yaml".into(),
            "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    upstream: kept\n".into(),
        )],
        ..Setup::default()
    }
    .start()
    .await;
    let r = raw(
        gw2.addr(),
        b"GET /h HTTP/1.1\r\nHost: App.Test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(echoed_header(&gw2.echo, "host").unwrap(), "app.test:8080");
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let gw = Setup::default()
        .server("  max_body_bytes: 67108864\n")
        .start()
        .await;
    // 32 MiB up: the upstream counts every byte.
    let body = Bytes::from(vec![b'z'; 32 * 1024 * 1024]);
    let req = Request::post("/upload").body(Full::new(body)).unwrap();
    let (status, _, _) = send(gw.addr(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.echo.last().unwrap().body_len, 32 * 1024 * 1024);
    // 48 MiB down, streamed by the upstream as it is sent.
    let (status, _, body) = get(gw.addr(), "/__echo/bytes/50331648").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 48 * 1024 * 1024);
}

#[tokio::test]
async fn body_over_limit_is_413() {
    let gw = Setup::default()
        .server("  max_body_bytes: 1024\n")
        .start()
        .await;
    let req = Request::post("/upload")
        .body(Full::new(Bytes::from(vec![b'z'; 4096])))
        .unwrap();
    let (status, _, body) = send(gw.addr(), req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("body_too_large"));
    // Chunked (no Content-Length): cut off while streaming.
    let mut chunked = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..8 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'y'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw(gw.addr(), &chunked).await;
    assert!(
        r.status == 413 || r.status == 502,
        "streamed overflow must not succeed: {}",
        r.head
    );
    assert_ne!(r.status, 200);
}

#[tokio::test]
async fn upstream_down_is_502() {
    // Bind then drop a listener: a port on which nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Setup {
        upstreams: format!("  dead:\n    url: http://{dead}\n"),
        policies: vec![(
            "p.yaml".into(),
            "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    upstream: dead\n".into(),
        )],
        ..Setup::default()
    }
    .start()
    .await;
    let (status, headers, body) = get(gw.addr(), "/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("upstream_unavailable"), "{body}");
    assert!(
        !body.contains("127.0.0.1"),
        "the body leaks no address: {body}"
    );
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let gw = Setup {
        upstreams: "  slow:\n    url: http://{echo}\n    response_timeout: 300ms\n".into(),
        policies: vec![(
            "p.yaml".into(),
            "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    upstream: slow\n".into(),
        )],
        ..Setup::default()
    }
    .start()
    .await;
    let started = std::time::Instant::now();
    let (status, _, body) = get(gw.addr(), "/__echo/delay/5000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(String::from_utf8_lossy(&body).contains("upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the deadline"
    );
}

#[tokio::test]
async fn default_deny_and_deny_rule() {
    let gw = Setup::with_policy(
        "rules:\n  - name: nope\n    match: {paths: [\"/secret/**\"]}\n    effect: deny\n  - name: read\n    match: {paths: [\"/pub/**\"], methods: [GET]}\n    effect: allow\n    upstream: echo\n",
    )
    .start()
    .await;
    let (s, _, b) = get(gw.addr(), "/secret/x").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&b).contains("\"forbidden\""));
    let (s, _, b) = get(gw.addr(), "/other").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&b).contains("no_matching_rule"));
    let (s, _, _) = send(
        gw.addr(),
        Request::post("/pub/x").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = get(gw.addr(), "/pub/x").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(gw.echo.count(), 1);
}

#[tokio::test]
async fn oversized_header_is_431() {
    let gw = Setup::default().start().await;
    let big = "a".repeat(20 * 1024);
    let r = raw(
        gw.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 431, "{}", r.head);
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn slowloris_header_read_times_out() {
    let gw = Setup::default()
        .server("  header_read_timeout: 300ms\n")
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Never finish the head: the gateway must close the connection on its own.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open after the header deadline"
    );
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn admin_endpoints_and_metrics() {
    let gw = Setup::default().start().await;
    let _ = get(gw.addr(), "/counted").await;
    assert_eq!(gw.admin_get("/healthz").await.0, StatusCode::OK);
    assert_eq!(gw.admin_get("/readyz").await.0, StatusCode::OK);
    let (s, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        metrics
            .contains(r#"portcullis_requests_total{door="proxy",decision="allow",status="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_request_duration_seconds_count 1"));
    let version = gw.app().version();
    assert!(metrics.contains(&format!(
        "portcullis_config_info{{version=\"{version}\"}} 1"
    )));
    let (s, config) = gw.admin_get("/config").await;
    assert_eq!(s, StatusCode::OK);
    assert!(config.contains(&*version));
    assert!(config.contains("\"last_reload_error\":null"));
    assert_eq!(gw.admin_get("/nope").await.0, StatusCode::NOT_FOUND);
}
