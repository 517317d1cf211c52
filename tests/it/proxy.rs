//! Forwarding: headers, bodies, upstream failures, limits.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::{
    Setup, TestGateway, echoed_header, get, h2c, raw, raw_get, route_all_to, send,
};

#[tokio::test]
async fn hop_by_hop_headers_removed_including_connection_named() {
    let gw = Setup::default().start().await;
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: close, X-Something\r\n\
          X-Something: secret\r\nKeep-Alive: timeout=5\r\nTE: deflate, trailers\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: websocket\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = gw.echo.last().unwrap().headers;
    for gone in [
        "x-something",
        "keep-alive",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(seen.get("x-kept").unwrap(), "yes");
    // The client's codings stay with it; that it takes trailers is the gateway's to say, with
    // the `Connection` option a `TE` needs (RFC 9110 §10.1.4).
    assert_eq!(seen.get("te").unwrap(), "trailers");
    assert_eq!(seen.get("connection").unwrap(), "te");
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

/// Behind a trusted proxy that appends the client's address to the client's own
/// `X-Forwarded-For` line (nginx's `$proxy_add_x_forwarded_for`, Envoy), a client that
/// makes its part unreadable (one `\xff`) is still itself: refused by a rule for the proxy's
/// network, and named to the upstream. (The line was dropped whole, and the client passed
/// as the proxy.)
/// A gateway behind a trusted proxy on 127.0.0.1: `/internal/**` for the proxy's own
/// address only, anything else open.
async fn behind_a_trusted_proxy() -> TestGateway {
    Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: internal, match: {paths: [\"/internal/**\"]}, effect: allow, anonymous: true, require: {networks: [127.0.0.1/32]}, upstream: echo}\n  - {name: open, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n".into(),
        )],
        ..Setup::default()
    }
    .server("  trusted_proxies: [\"127.0.0.1/32\"]\n")
    .start()
    .await
}

/// A trusted proxy written IPv4-mapped is the IPv4 proxy: its client is the one it names,
/// not the proxy inside a network meant for it alone.
#[tokio::test]
async fn a_trusted_proxy_written_ipv4_mapped_is_trusted() {
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: internal, match: {paths: [\"/internal/**\"]}, effect: allow, anonymous: true, require: {networks: [\"::ffff:127.0.0.1\"]}, upstream: echo}\n".into(),
        )],
        ..Setup::default()
    }
    .server("  trusted_proxies: [\"::ffff:127.0.0.0/104\"]\n")
    .start()
    .await;
    let r = raw(
        gw.addr(),
        b"GET /internal/x HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("network_not_allowed"), "{r:?}");
    let r = raw(
        gw.addr(),
        b"GET /internal/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(gw.echo.count(), 1);
}

#[tokio::test]
async fn an_unreadable_forwarded_for_line_does_not_make_the_client_the_proxy() {
    let gw = behind_a_trusted_proxy().await;
    let ask = |path: &str| {
        let mut r =
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: ").into_bytes();
        r.extend_from_slice(b"\xff, 203.0.113.5\r\nConnection: close\r\n\r\n");
        r
    };
    let r = raw(gw.addr(), &ask("/internal/x")).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("network_not_allowed"), "{r:?}");
    let r = raw(gw.addr(), &ask("/open/x")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed_header(&gw.echo, "x-real-ip").unwrap(), "203.0.113.5");
    let xff = gw.echo.last().unwrap().headers["x-forwarded-for"].clone();
    assert_eq!(xff.as_bytes(), b"\xff, 203.0.113.5, 127.0.0.1");
}

/// A trusted proxy that writes the client with a port (Azure Application Gateway) names that
/// client, not itself; one whose entry is no address names an unknown client, never the
/// proxy's own address (before, both passed a networks rule naming the proxy's network); a
/// client's own `Forwarded` never reaches the upstream past a trusted proxy.
#[tokio::test]
async fn a_trusted_proxys_client_entry_is_read_or_unknown_never_taken_for_the_proxy() {
    let gw = behind_a_trusted_proxy().await;
    let ask = |path: &str, xff: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: {xff}\r\nForwarded: for=198.51.100.1;proto=https\r\nConnection: close\r\n\r\n"
        )
    };
    for xff in ["203.0.113.9:1234", "[2001:db8::9]:443"] {
        let r = raw(gw.addr(), ask("/internal/x", xff).as_bytes()).await;
        assert_eq!(r.status, 403, "{xff}: {r:?}");
        assert!(r.body.contains("network_not_allowed"), "{r:?}");
    }
    let r = raw(gw.addr(), ask("/open/x", "203.0.113.9:1234").as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed_header(&gw.echo, "x-real-ip").unwrap(), "203.0.113.9");
    assert_eq!(
        echoed_header(&gw.echo, "forwarded").unwrap(),
        "for=203.0.113.9;proto=http, for=127.0.0.1;proto=http;host=\"app.test\""
    );
    // No address where the trusted proxy names the client: an unknown client (0.0.0.0),
    // outside the proxy's network; the request itself goes on.
    for xff in ["unknown", "evil, 203.0.113.9:x", "unix:"] {
        let before = gw.echo.count();
        let r = raw(gw.addr(), ask("/internal/x", xff).as_bytes()).await;
        assert_eq!(r.status, 403, "{xff}: {r:?}");
        assert!(r.body.contains("network_not_allowed"), "{r:?}");
        assert_eq!(gw.echo.count(), before);
        let r = raw(gw.addr(), ask("/open/x", xff).as_bytes()).await;
        assert_eq!(r.status, 200, "{xff}: {r:?}");
        assert_eq!(echoed_header(&gw.echo, "x-real-ip").unwrap(), "0.0.0.0");
    }
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
        policies: route_all_to("kept"),
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
    let dead = crate::support::refused_port();
    let gw = Setup {
        upstreams: format!("  dead:\n    url: http://{dead}\n"),
        policies: route_all_to("dead"),
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
        policies: route_all_to("slow"),
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
        "rules:\n  - name: nope\n    match: {paths: [\"/secret/**\"]}\n    effect: deny\n  - name: read\n    match: {paths: [\"/pub/**\"], methods: [GET]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n",
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
    assert!(metrics.contains(r#"portcullis_request_duration_seconds_count{door="proxy"} 1"#));
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

/// An https upstream trusted through `ca_file`: forwarded over rustls with the upstream's
/// name checked; the same upstream without that CA is refused with 502.
#[tokio::test]
async fn https_upstream_with_ca_file() {
    let (ca, tls) = crate::support::tls_peer(&["localhost"], false);
    let secure = portcullis::echo::Echo::start_tls("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    let port = secure.addr.port();
    let gw = Setup {
        upstreams: format!(
            "  secure:\n    url: https://localhost:{port}/base\n    ca_file: ca.pem\n  untrusted:\n    url: https://localhost:{port}\n"
        ),
        files: vec![("ca.pem".into(), ca.into_bytes())],
        policies: vec![(
            "p.yaml".into(),
            "rules:\n  - name: bad\n    match: {paths: [\"/untrusted/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: untrusted\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: secure\n".into(),
        )],
        ..Setup::default()
    }
    .start()
    .await;
    let (status, _, _) = get(gw.addr(), "/x?y=1").await;
    assert_eq!(status, StatusCode::OK);
    let seen = secure.last().unwrap();
    assert_eq!(seen.target, "/base/x?y=1");
    assert_eq!(
        seen.headers.get("host").unwrap(),
        &format!("localhost:{port}")
    );

    let before = secure.count();
    let (status, _, body) = get(gw.addr(), "/untrusted/x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(
        secure.count(),
        before,
        "no request sent over an unverified connection"
    );
}

#[tokio::test]
async fn idle_connection_closed_after_idle_timeout() {
    let gw = Setup::default()
        .server("  idle_timeout: 300ms\n")
        .start()
        .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Read the first response, then stay idle: the gateway closes the connection.
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection still open");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn h2_prior_knowledge_on_plain_listener() {
    let gw = Setup::default().start().await;
    let mut sender = h2c(gw.addr()).await;
    let req = Request::get(format!("http://{}/h2c", gw.addr()))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(gw.echo.last().unwrap().target, "/h2c");
    // The upstream is spoken to in HTTP/1.1 whatever the client used.
    assert_eq!(gw.echo.last().unwrap().version, http::Version::HTTP_11);
}

/// An HTTP/2 client's cookie crumbs (one field each) reach an HTTP/1.1 upstream as one
/// `Cookie` field joined with `; ` (RFC 9113 §8.2.3).
#[tokio::test]
async fn http2_cookie_crumbs_reach_the_upstream_as_one_field() {
    let gw = Setup::default().start().await;
    let mut sender = h2c(gw.addr()).await;
    let req = Request::get(format!("http://{}/crumbs", gw.addr()))
        .header("cookie", "a=1")
        .header("cookie", "csrf=xyz")
        .header("cookie", "b=2")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = gw.echo.last().unwrap();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; csrf=xyz; b=2"]);
}

/// `server.max_headers` bounds an HTTP/2 request's fields as it bounds an HTTP/1.1 one's
/// (hyper counts only HTTP/1 fields): 431 `headers_too_many`, nothing upstream. Cookie
/// crumbs count as the one field they become. (500 fields reached the upstream.)
#[tokio::test]
async fn http2_requests_get_the_header_count_limit() {
    let gw = Setup::default().server("  max_headers: 20\n").start().await;
    let mut sender = h2c(gw.addr()).await;
    let with = |n: usize, name: &str| {
        let mut req = Request::get(format!("http://{}/many", gw.addr()));
        for i in 0..n {
            req = req.header(name, format!("v{i}"));
        }
        req.body(Full::<Bytes>::default()).unwrap()
    };
    let before = gw.echo.count();
    let resp = sender.send_request(with(30, "x-many")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("headers_too_many"));
    assert_eq!(gw.echo.count(), before, "nothing reached the upstream");
    let resp = sender.send_request(with(30, "cookie")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "crumbs are one field");
    let resp = sender.send_request(with(15, "x-few")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// An HTTP/2 field value with a leading or trailing space or tab is malformed (RFC 9113
/// §8.2.1): refused with 400 `invalid_header`, before any rule reads it untrimmed, and
/// never sent upstream, where an HTTP/1.1 parser would trim it.
#[tokio::test]
async fn http2_padded_field_values_are_refused() {
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: w, match: {paths: [\"/w/**\"]}, effect: allow, anonymous: true, when: \"request.headers['x-role'] != 'admin'\", upstream: echo}\n".into(),
        )],
        ..Setup::default()
    }
    .start()
    .await;
    let mut sender = h2c(gw.addr()).await;
    for padded in [" admin", "admin\t", "\tadmin "] {
        let req = Request::get(format!("http://{}/w/x", gw.addr()))
            .header("x-role", padded)
            .body(Full::<Bytes>::default())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{padded:?}");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("invalid_header"),
            "{padded:?}"
        );
    }
    assert_eq!(gw.echo.count(), 0, "nothing reached the upstream");
    // Inner spaces are the value's own; the rule decides as over HTTP/1.1.
    let req = Request::get(format!("http://{}/w/x", gw.addr()))
        .header("x-role", "ad min")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    let req = Request::get(format!("http://{}/w/x", gw.addr()))
        .header("x-role", "admin")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

/// HTTP/2 PINGs move bytes but are no request: a client pinging every 100 ms still has its
/// connection closed once no request has run for the idle timeout.
#[tokio::test]
async fn h2_pings_do_not_keep_a_connection_open() {
    let gw = Setup::default()
        .server("  idle_timeout: 300ms\n")
        .start()
        .await;
    let stream = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_while_idle(true)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/ping", gw.addr()))
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    let started = std::time::Instant::now();
    // The gateway ends the connection (GOAWAY, close): the client's driver returns.
    let ended = tokio::time::timeout(Duration::from_secs(4), driver).await;
    assert!(ended.is_ok(), "a pinging idle connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn max_connections_holds_further_clients_until_one_leaves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Setup::default()
        .server("  max_connections: 1\n")
        .start()
        .await;
    let mut first = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    first
        .write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second client waits in the kernel's queue while the first holds the only slot.
    let mut second = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    second
        .write_all(b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "second connection served beyond max_connections"
    );
    drop(first);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut out))
        .await
        .expect("served once the first client left")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn route_override_headers_never_forwarded() {
    let gw = Setup::default().start().await;
    let req = Request::get("/public")
        .header("x-original-url", "/admin/users")
        .header("x-rewrite-url", "/admin/users")
        .header("x-http-method-override", "DELETE")
        .header("true-client-ip", "6.6.6.6")
        .header("x-forwarded-ssl", "on")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(gw.addr(), req).await.0, StatusCode::OK);
    for gone in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "true-client-ip",
        "x-forwarded-ssl",
    ] {
        assert!(echoed_header(&gw.echo, gone).is_none(), "{gone} forwarded");
    }
}

/// A client that asks for a large body and stops reading must not hold its connection (and an
/// upstream connection) forever: cut at `send_timeout`, long before the idle timeout.
#[tokio::test]
async fn stalled_reader_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Setup::default()
        .server("  idle_timeout: 30s\n  send_timeout: 300ms\n")
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /__echo/bytes/209715200 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Stop reading long enough for the send deadline to pass (once the socket buffers are
    // full).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "connection still open");
    assert!(
        got.len() < 209_715_200,
        "the whole body was delivered: no stall detected"
    );
}

/// Every spelling of the forwarding and override families, and infrastructure headers, from
/// an untrusted client: none reaches the upstream (raw bytes, so the spellings arrive as sent).
#[tokio::test]
async fn forwarding_override_and_infrastructure_headers_in_every_spelling_stripped() {
    let gw = Setup::default().start().await;
    let spoofed = [
        "X_Real_IP",
        "x_real-ip",
        "X_Forwarded_For",
        "x_forwarded_host",
        "X_Forwarded_Proto",
        "X_Original_URL",
        "X-Original-URI",
        "x_original_uri",
        "X-Forwarded-Uri",
        "X-Forwarded-Path",
        "X-Envoy-Original-Path",
        "X-Forwarded-Client-Cert",
        "X-Client-Cert-Chain",
        "X-SSL-Client-Verify",
        "X-Envoy-Internal",
        "X-Envoy-Expected-Rq-Timeout-Ms",
        "X-Portcullis-User",
        "x_portcullis_decision",
        // The request id: the gateway writes `x-request-id`; another spelling beside it would
        // be a second id, the client's.
        "X_Request_Id",
        "x_request-id",
    ];
    let mut request =
        String::from("GET /public HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for name in spoofed {
        request.push_str(&format!("{name}: 6.6.6.6\r\n"));
    }
    request.push_str("X-Kept: yes\r\n\r\n");
    let r = raw(gw.addr(), request.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.head);
    let seen = gw.echo.last().unwrap().headers;
    for name in spoofed {
        let lower = name.to_ascii_lowercase();
        assert!(
            !seen.contains_key(lower.as_str()),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
}

/// From a trusted proxy, the infrastructure headers `server.trusted_proxy_headers` names pass;
/// others (and every override) still go. From an untrusted peer nothing passes.
#[tokio::test]
async fn infrastructure_headers_pass_only_from_trusted_proxies_by_configuration() {
    let request = "GET /public HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\
         X-Forwarded-Client-Cert: Hash=abc;Subject=\"CN=client\"\r\nX-Envoy-Internal: true\r\n\
         X-Portcullis-User: mallory\r\nX-Envoy-Original-Path: /admin\r\nTrue-Client-IP: 1.2.3.4\r\n\r\n";
    let trusted = Setup::default()
        .server(
            "  trusted_proxies: [\"127.0.0.0/8\"]\n  trusted_proxy_headers: [x-forwarded-client-cert, \"x-envoy-*\"]\n",
        )
        .start()
        .await;
    assert_eq!(raw(trusted.addr(), request.as_bytes()).await.status, 200);
    let seen = trusted.echo.last().unwrap().headers;
    assert_eq!(
        seen["x-forwarded-client-cert"],
        "Hash=abc;Subject=\"CN=client\""
    );
    assert_eq!(seen["x-envoy-internal"], "true");
    assert_eq!(
        seen["true-client-ip"], "1.2.3.4",
        "a trusted proxy's claim is kept"
    );
    assert!(
        !seen.contains_key("x-portcullis-user"),
        "not listed: removed"
    );
    assert!(
        !seen.contains_key("x-envoy-original-path"),
        "an override never passes"
    );

    // The same list, but the peer is not a trusted proxy.
    let untrusted = Setup::default()
        .server("  trusted_proxies: [\"10.0.0.0/8\"]\n  trusted_proxy_headers: [x-forwarded-client-cert, \"x-envoy-*\"]\n")
        .start()
        .await;
    assert_eq!(raw(untrusted.addr(), request.as_bytes()).await.status, 200);
    let seen = untrusted.echo.last().unwrap().headers;
    for gone in [
        "x-forwarded-client-cert",
        "x-envoy-internal",
        "x-portcullis-user",
        "x-envoy-original-path",
        "true-client-ip",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
}

/// Malformed chunked framing in the request body (bad, negative or overflowing chunk size,
/// bare LF, a broken second chunk) is the client's fault: 400 `invalid_body`, and the upstream
/// never sees the request.
#[tokio::test]
async fn malformed_chunked_body_is_400_and_never_reaches_the_upstream() {
    let gw = Setup::default().start().await;
    let bodies: &[&[u8]] = &[
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\n0\n\n",
        b"5\r\nhello\r\nzz\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
    ];
    for body in bodies {
        let mut req =
            b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        req.extend_from_slice(body);
        let r = raw(gw.addr(), &req).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(r.status, 400, "{shown:?}: {}", r.head);
        assert!(r.body.contains("invalid_body"), "{shown:?}: {}", r.body);
    }
    assert_eq!(gw.echo.count(), 0, "nothing acted on upstream");
    // A well-formed chunked body still goes through.
    let r = raw(
        gw.addr(),
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(gw.echo.last().unwrap().body_len, 5);
}

/// RFC 9112 §3: a request target over the limit is 414, with the usual refusal body; a head
/// over `max_header_bytes` is 431 with one too. Neither reaches the upstream.
#[tokio::test]
async fn long_target_is_414_and_long_head_431_with_a_body() {
    let gw = Setup::default().start().await;
    for target in [
        format!("/{}", "a".repeat(9000)),
        format!("/x?q={}", "b".repeat(9000)),
        format!("/{}", "c/".repeat(6000)),
    ] {
        let r = raw_get(gw.addr(), &target).await;
        assert_eq!(r.status, 414, "{}", r.head);
        assert!(r.body.contains("\"error\":\"uri_too_long\""), "{}", r.body);
        assert!(
            r.head.to_ascii_lowercase().contains("x-request-id"),
            "{}",
            r.head
        );
    }
    // Headers over 16 KiB together, each well-formed.
    let mut headers = String::new();
    for i in 0..20 {
        headers.push_str(&format!("X-Filler-{i}: {}\r\n", "h".repeat(900)));
    }
    let r = raw(
        gw.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 431, "{}", r.head);
    assert!(
        r.body.contains("\"error\":\"headers_too_large\""),
        "{}",
        r.body
    );
    assert_eq!(gw.echo.count(), 0);
    // Counted under their own statuses, not `other`.
    let (_, metrics) = gw.admin_get("/metrics").await;
    for line in [
        "portcullis_requests_total{door=\"proxy\",decision=\"error\",status=\"414\"} 3",
        "portcullis_requests_total{door=\"proxy\",decision=\"error\",status=\"431\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    // Just under both limits: served.
    let r = raw_get(gw.addr(), &format!("/{}", "a".repeat(8000))).await;
    assert_eq!(r.status, 200, "{}", r.head);
}

/// The connection metrics are the doors': idle keep-alive connections to the admin listener
/// (a scraper's, a health checker's) are neither open nor parked client connections.
#[tokio::test]
async fn admin_connections_stay_out_of_the_doors_metrics() {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let gw = Setup::default().start().await;
    // Each client keeps its connection idle in its pool once its request is answered.
    let keep_alive = |addr: std::net::SocketAddr, path: &'static str| async move {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .get(format!("http://{addr}{path}").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.into_body().collect().await.unwrap();
        client
    };
    let admin = gw.app().admin_addr();
    let _admin_idle = [
        keep_alive(admin, "/healthz").await,
        keep_alive(admin, "/readyz").await,
        keep_alive(admin, "/metrics").await,
    ];
    let _door_idle = keep_alive(gw.addr(), "/x").await;
    let metric = |text: &str, name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    // The door's idle connection is parked; the admin's, idle as long, count nowhere.
    let parked = crate::support::eventually(Duration::from_secs(5), || async {
        let (_, text) = gw.admin_get("/metrics").await;
        metric(&text, "portcullis_connections_parked") == Some(1.0)
    })
    .await;
    assert!(parked, "the door's idle connection was never parked");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, text) = gw.admin_get("/metrics").await;
    assert_eq!(
        metric(&text, "portcullis_connections_parked"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "portcullis_connections_open"),
        Some(1.0),
        "{text}"
    );
}

/// A method override in the query (`_method=DELETE`, which Symfony, Laravel and Express's
/// method-override honour) never reaches the upstream, in any spelling they read: the upstream
/// serves the method that was decided on, as with the header forms.
#[tokio::test]
async fn query_method_override_never_reaches_the_upstream() {
    let gw = Setup::default().start().await;
    for (target, forwarded) in [
        ("/users/1?_method=DELETE&a=1", "/users/1?a=1"),
        ("/users/1?a=1&_METHOD=DELETE", "/users/1?a=1"),
        ("/users/1?%5Fmethod=DELETE&b=2", "/users/1?b=2"),
        ("/users/1?_method[]=DELETE&c=3", "/users/1?c=3"),
        ("/users/1?_method=DELETE", "/users/1"),
        // After a `;`, a pair to Rack 2, Bottle and older Python: its whole `&` pair goes.
        ("/users/1?a=1;_method=DELETE&b=2", "/users/1?b=2"),
        ("/users/1?b=2&a=1;%5Fmethod=DELETE", "/users/1?b=2"),
        ("/users/1?a=1;x-http-method-override=PUT", "/users/1"),
        ("/users/1?a=1;b=2", "/users/1?a=1;b=2"),
        // Other names stay.
        (
            "/users/1?method=x&payment_method=card",
            "/users/1?method=x&payment_method=card",
        ),
    ] {
        let r = raw(
            gw.addr(),
            format!("POST {target} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{target}: {}", r.head);
        assert_eq!(gw.echo.last().unwrap().target, forwarded, "{target}");
    }
}
