//! Resource bounds under abuse (issue 15): HTTP/2 rapid reset, slow readers, control-frame
//! floods, idle and header deadlines, memory per connection. Every test is bounded in count
//! and time and talks to 127.0.0.1 only.

use std::time::Duration;

use bytes::Bytes;
use http::Request;

use crate::support::*;

/// An HTTP/2 client over plain TCP (prior knowledge) with frame-level control.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

/// Opens `batch` streams (HEADERS with END_STREAM), lets the gateway accept them, resets them
/// all, pauses, `batches` times: the paced rapid reset of CVE-2023-44487 that h2's own
/// pending-accept limit does not see.
///
/// Why: h2 counts a reset of a stream the gateway has not yet accepted against its own
/// pending-accept limit (64), with GOAWAY `too_many_resets`: a gateway task that a busy
/// machine leaves unpolled for a few batches would trip it. Each batch ends with an answered
/// request, and h2 accepts in order, so no more than one batch is ever pending.
/// Regression: CI run on 3994751 (GOAWAY too_many_resets under `max_resets: 1000`).
async fn paced_rapid_reset(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    batches: usize,
    batch: usize,
    check: bool,
) -> Result<(), h2::Error> {
    // The upstream takes 20 ms: the exchange is under way at the reset.
    paced_rapid_reset_of(send, addr, (batches, batch), check, "/__echo/delay/20").await
}

/// [`paced_rapid_reset`] of GETs for `path` (not at a decision door).
async fn paced_rapid_reset_of(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    (batches, batch): (usize, usize),
    check: bool,
    path: &str,
) -> Result<(), h2::Error> {
    for _ in 0..batches {
        let mut streams = Vec::with_capacity(batch);
        for _ in 0..batch {
            *send = send.clone().ready().await?;
            // At a decision door, a Check whose message has not arrived: in flight until
            // reset, never answered first.
            let req = if check {
                check_request(addr)
            } else {
                Request::get(format!("http://{addr}{path}"))
                    .body(())
                    .unwrap()
            };
            let (_resp, stream) = send.send_request(req, !check)?;
            streams.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        for mut s in streams {
            s.send_reset(h2::Reason::CANCEL);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        // The barrier: answered only once every earlier stream was accepted.
        *send = send.clone().ready().await?;
        let (resp, _) = send.send_request(barrier(addr, check), true)?;
        match tokio::time::timeout(Duration::from_secs(5), resp).await {
            Ok(answered) => drop(answered?),
            Err(_) => panic!("the barrier request was not answered in 5 s"),
        }
    }
    Ok(())
}

/// The head of an Envoy `Authorization/Check` call to the gRPC door at `addr` (its message,
/// if any, sent by the caller).
fn check_request(addr: std::net::SocketAddr) -> Request<()> {
    Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .body(())
    .unwrap()
}

/// A request the gateway answers at once: a GET to the echo upstream, or at a decision door
/// a Check with no message (a gRPC error, in trailers, under HTTP 200).
fn barrier(addr: std::net::SocketAddr, check: bool) -> Request<()> {
    if check {
        check_request(addr)
    } else {
        Request::get(format!("http://{addr}/barrier"))
            .body(())
            .unwrap()
    }
}

/// A stream the client resets must not cost an upstream connection: a connect under way
/// finishes into the pool, an exchange under way finishes in the background and keeps its
/// connection.
#[tokio::test]
async fn paced_rapid_reset_reuses_upstream_connections() {
    let gw = Setup::default()
        .server("  http2: {max_resets: 1000}\n")
        .start()
        .await;
    let addr = gw.addr();
    let (mut send, _conn) = h2_client(addr).await;
    paced_rapid_reset(&mut send, addr, 40, 10, false)
        .await
        .unwrap();
    // The connection still serves.
    let req = Request::get(format!("http://{addr}/after"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Connections follow the concurrency of abandoned exchanges (10 per batch here, more
    // while a batch's connects are still finishing), not the 400 resets.
    let connections = gw.echo.connections();
    assert!(
        connections <= 100,
        "400 reset streams opened {connections} upstream connections"
    );
}

/// The same when the answer is larger than a client's stream window: the gateway reads and
/// discards its rest (up to 1 MiB, within 2 s) and keeps the connection.
///
/// Why: only 64 KiB were drained, so each reset stream of a 1 MB answer closed its upstream
/// connection: 301 new connections for 302 requests in an outside run, where the issue asks
/// that a reset never cost one.
#[tokio::test]
async fn paced_rapid_reset_of_large_answers_reuses_upstream_connections() {
    let gw = Setup::default()
        .server("  http2: {max_resets: 1000}\n")
        .start()
        .await;
    let addr = gw.addr();
    let (mut send, _conn) = h2_client(addr).await;
    paced_rapid_reset_of(&mut send, addr, (20, 8), false, "/__echo/bytes/1000000")
        .await
        .unwrap();
    let connections = gw.echo.connections();
    assert!(
        connections <= 60,
        "160 reset streams of 1 MB answers opened {connections} upstream connections"
    );
}

/// The same for POSTs whose body came in two DATA frames, the second with END_STREAM, just
/// before the reset: the body was whole, so the exchange finishes in the background and keeps
/// its connection (one taken for abandoned cost a connection per reset).
#[tokio::test]
async fn paced_rapid_reset_of_whole_posts_reuses_upstream_connections() {
    let gw = Setup::default()
        .server("  http2: {max_resets: 1000}\n")
        .start()
        .await;
    let addr = gw.addr();
    let (mut send, _conn) = h2_client(addr).await;
    for _ in 0..10 {
        let mut streams = Vec::new();
        for _ in 0..10 {
            send = send.clone().ready().await.unwrap();
            let req = Request::post(format!("http://{addr}/__echo/delay/20"))
                .header("content-length", "10")
                .body(())
                .unwrap();
            let (resp, mut body) = send.send_request(req, false).unwrap();
            body.send_data(Bytes::from_static(b"hello"), false).unwrap();
            streams.push((resp, body));
        }
        // The first halves are read ahead; the second ones stream, and end the bodies.
        tokio::time::sleep(Duration::from_millis(5)).await;
        for (_, body) in &mut streams {
            body.send_data(Bytes::from_static(b"world"), true).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        for (_, mut body) in streams {
            body.send_reset(h2::Reason::CANCEL);
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        send = send.clone().ready().await.unwrap();
        let (resp, _) = send.send_request(barrier(addr, false), true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("the barrier answered")
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let connections = gw.echo.connections();
    assert!(
        connections <= 40,
        "100 reset POSTs opened {connections} upstream connections"
    );
}

/// Past `max_resets` client resets in a window the connection gets GOAWAY
/// ENHANCE_YOUR_CALM and is closed, even when each reset comes after the gateway accepted its
/// stream (which h2's own limit does not count).
#[tokio::test]
async fn paced_rapid_reset_gets_goaway() {
    let gw = Setup::default()
        .server("  http2: {max_resets: 50, window: 10s}\n")
        .start()
        .await;
    let addr = gw.addr();
    let (mut send, conn) = h2_client(addr).await;
    // 200 resets; the client's sends fail once the GOAWAY has arrived.
    let _ = paced_rapid_reset(&mut send, addr, 20, 10, false).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closed by the gateway")
        .unwrap();
    let err = ended.expect_err("connection ended with GOAWAY");
    assert!(err.is_go_away(), "{err:?}");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="http2_resets"} 1"#),
        "{metrics}"
    );
    // Other clients are served.
    assert_eq!(get(addr, "/fine").await.0, http::StatusCode::OK);
}

/// A decision door's peer (Envoy) resets a Check when its timeout fires or its client
/// leaves, over the one connection that carries everyone's Checks: past `max_resets` that is
/// not abuse, and the connection goes on serving (the proxy door's clients keep the limit:
/// `paced_rapid_reset_gets_goaway`); past `max_peer_resets`, it is.
#[tokio::test]
async fn a_door_peer_may_reset_many_checks() {
    let gw = Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    http2: true\n    door: {envoy_grpc: {}}\n".into(),
        ..Setup::default()
    }
    .server("  http2: {max_resets: 50, window: 10s}\n")
    .start()
    .await;
    let addr = gw.addr_of("grpc");
    let (mut send, _conn) = h2_client(addr).await;
    paced_rapid_reset(&mut send, addr, 20, 10, true)
        .await
        .expect("no GOAWAY");
    let (resp, _) = send.send_request(check_request(addr), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("answered")
        .expect("the connection still serves");
    assert_eq!(resp.status(), 200);
    // A peer has its own limit all the same: past `max_peer_resets`, GOAWAY.
    let gw = Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    http2: true\n    door: {envoy_grpc: {}}\n".into(),
        ..Setup::default()
    }
    .server("  http2: {max_resets: 10, max_peer_resets: 50, window: 10s}\n")
    .start()
    .await;
    let addr = gw.addr_of("grpc");
    let (mut send, _conn) = h2_client(addr).await;
    let _ = paced_rapid_reset(&mut send, addr, 20, 10, true).await;
    let tripped = crate::support::eventually(Duration::from_secs(5), || async {
        let (_, metrics) = gw.admin_get("/metrics").await;
        metrics.contains(r#"portcullis_connection_limits_total{limit="http2_resets"} 1"#)
    })
    .await;
    assert!(tripped, "no GOAWAY past max_peer_resets");
}

/// A decision door's peer resets 100 Checks in one burst, before the gateway could take them
/// from h2's queue: the Check in flight beside them is still answered (h2's own bound on
/// such resets, 64, would have sent GOAWAY and dropped it). A client of the proxy door keeps
/// that bound.
#[tokio::test]
async fn a_door_peer_may_reset_a_burst_of_checks() {
    let gw = Setup {
        listeners: "  - name: grpc\n    address: 127.0.0.1:0\n    http2: true\n    door: {envoy_grpc: {}}\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let addr = gw.addr_of("grpc");
    let (mut send, conn) = h2_client(addr).await;
    // The Check in flight: its message not sent yet.
    send = send.ready().await.unwrap();
    let (waiting, mut body) = send.send_request(check_request(addr), false).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 100 whole Checks, each reset at once, in one write.
    for _ in 0..100 {
        let (_resp, mut stream) = send.send_request(check_request(addr), false).unwrap();
        stream
            .send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        stream.send_reset(h2::Reason::CANCEL);
    }
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered within 5 s")
        .expect("no GOAWAY");
    assert_eq!(answered.status(), 200);
    drop(send);
    conn.abort();
}

/// An HTTP/2 client that grants no flow-control window (and keeps pinging) has each of its
/// responses reset once a chunk has waited `send_timeout`; the connection goes on.
#[tokio::test]
async fn h2_slow_reader_stream_is_reset() {
    let gw = Setup::default()
        .server("  send_timeout: 300ms\n  idle_timeout: 5s\n")
        .start()
        .await;
    let addr = gw.addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, mut conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let mut ping = conn.ping_pong().unwrap();
    tokio::spawn(conn);
    // PINGs are control frames, no progress.
    let pinger = tokio::spawn(async move {
        for _ in 0..100 {
            if ping.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let req = Request::get(format!("http://{addr}/__echo/bytes/1048576"))
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        bodies.push(resp);
    }
    for resp in bodies {
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("response head")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let end = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("stream reset within the deadline");
        let err = end.expect("an error, not the end").expect_err("no data");
        assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err:?}");
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    pinger.abort();
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="send_timeout"} 3"#),
        "{metrics}"
    );
    // The connection still serves a client that reads.
    let req = Request::get(format!("http://{addr}/after"))
        .body(())
        .unwrap();
    send = send.ready().await.unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Opens `n` POSTs to `/upload` over `h2`, the i-th from client `client(i)` (by
/// `X-Forwarded-For`), each a head and a byte of body, then nothing more: the streams, to
/// hold, and how many were refused (503, `Retry-After: 1`), waited on together for 1.5 s
/// (refused ones answer at once, held ones not at all).
async fn stalled_uploads(
    mut h2: h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    n: usize,
    client: impl Fn(usize) -> String,
) -> (Vec<h2::SendStream<Bytes>>, usize) {
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for i in 0..n {
        let req = Request::post(format!("http://{addr}/upload"))
            .header("x-forwarded-for", client(i))
            .body(())
            .unwrap();
        h2 = h2.ready().await.unwrap();
        let (resp, mut body) = h2.send_request(req, false).unwrap();
        body.send_data(Bytes::from_static(b"x"), false).unwrap();
        held.push(body);
        answers.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(1500), resp).await
        }));
    }
    let mut refused = 0;
    for answer in answers {
        if let Ok(resp) = answer.await.unwrap() {
            let resp = resp.unwrap();
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "1");
            refused += 1;
        }
    }
    (held, refused)
}

/// One client's uploads that stop arriving hold at most `server.max_uploads_per_client` of
/// the proxy's `max_in_flight` permits: 12 stalled HTTP/2 POSTs (as many as the permits) from one client (behind a
/// trusted proxy) leave the others' requests served, streaming bodies included; the share
/// comes back when the client's streams go.
#[tokio::test]
async fn one_clients_stalled_uploads_cannot_shed_everyone() {
    let gw = Setup::default()
        .server(
            "  max_in_flight: 12\n  max_uploads_per_client: 4\n  trusted_proxies: [127.0.0.0/8]\n",
        )
        .start()
        .await;
    let addr = gw.addr();
    let post = |client: &str| {
        Request::post(format!("http://{addr}/upload"))
            .header("x-forwarded-for", client)
            .body(())
            .unwrap()
    };
    // The attacker's streams: a head and a byte, then nothing more of the body (read ahead,
    // the byte leaves the body waiting on the client, as one sent nothing does).
    let (attacker, attacker_conn) = h2_client(addr).await;
    let (held, refused) =
        stalled_uploads(attacker.clone(), addr, 12, |_| "203.0.113.7".into()).await;
    let pending = held.len() - refused;
    assert_eq!((pending, refused), (4, 8), "the client's share is 4");

    // Everyone else is served: a plain request and a streamed upload.
    let (status, _, _) = send(
        addr,
        Request::get("/x")
            .header("x-forwarded-for", "198.51.100.2")
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "another client is not shed");
    let (mut other, _other_conn) = h2_client(addr).await;
    other = other.ready().await.unwrap();
    let (resp, mut body) = other.send_request(post("198.51.100.2"), false).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    body.send_data(Bytes::from_static(b"hello"), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "another client's upload has its own share"
    );

    // The attacker's share comes back when its streams go.
    drop(held);
    drop(attacker);
    attacker_conn.abort();
    let (again, _again_conn) = h2_client(addr).await;
    let served = eventually(Duration::from_secs(5), || {
        let ready = again.clone().ready();
        async move {
            let mut s = ready.await.unwrap();
            let req = Request::post(format!("http://{addr}/upload"))
                .header("x-forwarded-for", "203.0.113.7")
                .body(())
                .unwrap();
            let (resp, mut body) = s.send_request(req, false).unwrap();
            body.send_data(Bytes::from_static(b"hello"), true).unwrap();
            resp.await.is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    assert!(served, "the share is given back");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="uploads_per_client"} 8"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"limit="max_in_flight""#),
        "nothing shed: {metrics}"
    );
}

/// A body that came whole with its head (a unary gRPC call's message right after its
/// HEADERS) takes no share: a client at its share still makes such calls.
#[tokio::test]
async fn a_body_that_came_whole_takes_no_share() {
    let gw = Setup::default()
        .server("  max_uploads_per_client: 1\n")
        .start()
        .await;
    let addr = gw.addr();
    let (mut h2, _conn) = h2_client(addr).await;
    // The client's one share, held by a stalled upload.
    h2 = h2.ready().await.unwrap();
    let req = Request::post(format!("http://{addr}/stalled"))
        .body(())
        .unwrap();
    let (stalled, mut held) = h2.send_request(req, false).unwrap();
    held.send_data(Bytes::from_static(b"x"), false).unwrap();
    // A streamed one is refused: the share is taken.
    h2 = h2.ready().await.unwrap();
    let req = Request::post(format!("http://{addr}/streamed"))
        .body(())
        .unwrap();
    let (refused, mut streamed) = h2.send_request(req, false).unwrap();
    streamed.send_data(Bytes::from_static(b"x"), false).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(refused.status(), 503);
    for i in 0..5 {
        h2 = h2.ready().await.unwrap();
        let req = Request::post(format!("http://{addr}/unary/{i}"))
            .body(())
            .unwrap();
        let (resp, mut body) = h2.send_request(req, false).unwrap();
        body.send_data(Bytes::from_static(b"message"), true)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(resp.status(), 200, "unary {i}");
    }
    drop((stalled, held, streamed));
}

/// Uploads in all hold at most half of `max_in_flight`: stalled uploads from many clients
/// (a /56 of /64s, or addresses behind a trusted proxy), each within its own share, still
/// leave the other half to everyone else.
#[tokio::test]
async fn many_clients_stalled_uploads_leave_half_the_permits() {
    let gw = Setup::default()
        .server(
            "  max_in_flight: 12\n  max_uploads_per_client: 4\n  trusted_proxies: [127.0.0.0/8]\n",
        )
        .start()
        .await;
    let addr = gw.addr();
    let (h2, _conn) = h2_client(addr).await;
    let (held, refused) = stalled_uploads(h2, addr, 12, |i| format!("2001:db8:0:{i:x}::1")).await;
    assert_eq!(refused, 6, "uploads hold 6 of the 12 permits");
    for i in 0..6 {
        let (status, _, body) = send(
            addr,
            Request::get("/x")
                .header("x-forwarded-for", format!("198.51.100.{i}"))
                .body(http_body_util::Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body:?}");
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="uploads"} 6"#),
        "{metrics}"
    );
    drop(held);
}

/// An upgrade request that says it has a body is refused at once (400
/// `upgrade_with_body`), before anything waits for the body: such requests from one client
/// held `max_in_flight` permits for `header_read_timeout` each.
#[tokio::test]
async fn an_upgrade_with_a_body_is_refused_at_once() {
    let policy = "rules:\n  - {name: ws, match: {paths: [\"/ws/**\"]}, effect: allow, anonymous: true, upstream: echo, upgrade: {protocols: [websocket]}}\n";
    let gw = Setup::with_policy(policy)
        .server("  header_read_timeout: 20s\n")
        .start()
        .await;
    // `raw` reads for 5 s at most: an answer only after the 20 s wait would be none.
    for framing in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
        let r = raw(
            gw.addr(),
            format!(
                "GET /ws/chat HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{framing}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 400, "{framing}: {}", r.head);
        assert!(
            r.body.contains("upgrade_with_body"),
            "{framing}: {}",
            r.body
        );
    }
    assert_eq!(gw.echo.count(), 0, "nothing reached the upstream");
}

/// Writes the client preface, then `count` copies of `frame`, and reads what the gateway
/// sends until it closes: the frames' (type, payload) pairs.
async fn flood(addr: std::net::SocketAddr, frame: &[u8], count: usize) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut got)).await;
        got
    });
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    for _ in 0..count {
        out.extend_from_slice(frame);
    }
    // The gateway stops reading once it has had enough: ignore a failed write.
    let _ = wr.write_all(&out).await;
    let bytes = reader.await.unwrap();
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        frames.push((rest[3], rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    frames
}

/// PING and SETTINGS frames past `max_control_frames` in a window end the connection with
/// GOAWAY ENHANCE_YOUR_CALM; until then each is acknowledged.
#[tokio::test]
async fn ping_and_settings_floods_get_goaway() {
    let gw = Setup::default()
        .server("  http2: {max_control_frames: 100}\n")
        .start()
        .await;
    let ping = [0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let settings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    for (frame, acked_kind) in [(&ping[..], 0x6), (&settings[..], 0x4)] {
        let frames = flood(gw.addr(), frame, 5000).await;
        let acks = frames.iter().filter(|(k, _)| *k == acked_kind).count();
        assert!(acks <= 102, "{acks} acknowledgements for 5000 frames");
        let goaway = frames.iter().find(|(k, _)| *k == 0x7).expect("a GOAWAY");
        assert_eq!(&goaway.1[4..8], &[0, 0, 0, 0xb], "ENHANCE_YOUR_CALM");
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="http2_control_frames"} 2"#),
        "{metrics}"
    );
}

/// Frames that cost work and move nothing (CVE-2019-9511, 9513): a WINDOW_UPDATE flood, a
/// PRIORITY flood and a flood of frames of an unknown type each end the connection with GOAWAY
/// ENHANCE_YOUR_CALM, counted as a control-frame flood.
#[tokio::test]
async fn frames_that_move_nothing_get_goaway() {
    let gw = Setup::default()
        .server("  http2: {max_control_frames: 100}\n")
        .start()
        .await;
    let window_update = [0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let priority = [0, 0, 5, 0x2, 0, 0, 0, 0, 3, 0, 0, 0, 1, 16];
    let unknown = [0, 0, 2, 0xfa, 0, 0, 0, 0, 0, 1, 2];
    for frame in [&window_update[..], &priority[..], &unknown[..]] {
        let frames = flood(gw.addr(), frame, 50_000).await;
        let goaway = frames
            .iter()
            .find(|(k, _)| *k == 0x7)
            .unwrap_or_else(|| panic!("a GOAWAY for {frame:?}: {frames:?}"));
        assert_eq!(&goaway.1[4..8], &[0, 0, 0, 0xb], "ENHANCE_YOUR_CALM");
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="http2_control_frames"} 3"#),
        "{metrics}"
    );
}

/// Streams opened and reset in one burst, before the gateway could take them from h2's queue,
/// meet h2's own bound (64): its GOAWAY ENHANCE_YOUR_CALM ends the connection, and is counted.
#[tokio::test]
async fn h2s_own_goaway_is_counted() {
    let gw = Setup::default().start().await;
    let mut burst = Vec::new();
    for i in 0..100u32 {
        let stream = (2 * i + 1).to_be_bytes();
        // HEADERS (END_STREAM | END_HEADERS): GET http://app.test/, the authority a literal
        // without indexing; then RST_STREAM CANCEL.
        let mut block = vec![0x82, 0x86, 0x84, 0x01, 8];
        block.extend_from_slice(b"app.test");
        burst.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5]);
        burst.extend_from_slice(&stream);
        burst.extend_from_slice(&block);
        burst.extend_from_slice(&[0, 0, 4, 0x3, 0]);
        burst.extend_from_slice(&stream);
        burst.extend_from_slice(&[0, 0, 0, 0x8]);
    }
    let frames = flood(gw.addr(), &burst, 1).await;
    let goaway = frames.iter().find(|(k, _)| *k == 0x7).expect("a GOAWAY");
    assert_eq!(&goaway.1[4..8], &[0, 0, 0, 0xb], "ENHANCE_YOUR_CALM");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="http2_library"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"limit="http2_resets""#),
        "h2's bound, not the gateway's: {metrics}"
    );
}

/// Reads until the gateway closes the connection (at most `within`): how long that took.
async fn time_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {within:?}");
    started.elapsed()
}

/// A raw connection to `gw` that sent `bytes` and was answered 200 (to the first request).
async fn served_once(gw: &TestGateway, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

const HEADER_300MS_IDLE_1500MS: &str = "  header_read_timeout: 300ms\n  idle_timeout: 1500ms\n";

/// A kept-alive HTTP/1.1 connection waiting for its next request is closed at the idle
/// timeout, not at the (shorter) header timeout.
#[tokio::test]
async fn h1_keep_alive_waits_for_the_idle_timeout() {
    let gw = Setup::default()
        .server(HEADER_300MS_IDLE_1500MS)
        .start()
        .await;
    let mut s = served_once(&gw, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let closed_after = time_to_close(&mut s, Duration::from_secs(4)).await;
    assert!(
        closed_after >= Duration::from_millis(1400),
        "closed after {closed_after:?}: the header timeout, not the idle timeout"
    );
}

/// Once a request head has started, the header timeout applies.
#[tokio::test]
async fn h1_started_head_gets_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let gw = Setup::default()
        .server(HEADER_300MS_IDLE_1500MS)
        .start()
        .await;
    let mut s = served_once(&gw, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").await;
    s.write_all(b"GET /two HTTP/1.1\r\nHo").await.unwrap();
    let closed_after = time_to_close(&mut s, Duration::from_secs(4)).await;
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < Duration::from_millis(1400),
        "closed after {closed_after:?}"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="header_read_timeout"} 1"#),
        "{metrics}"
    );
}

/// The start of a next request sent with the one before it (pipelined), then nothing: the
/// header timeout cuts it, not the idle timeout plus the drain. (Read while the first was in
/// flight, it started no header clock, and the connection spun, parked and replayed every
/// 100 ms, for 120 s.)
#[tokio::test]
async fn a_pipelined_unfinished_head_gets_the_header_timeout() {
    let gw = Setup::default()
        .server(HEADER_300MS_IDLE_1500MS)
        .start()
        .await;
    let mut s = served_once(
        &gw,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nX-Partial: ",
    )
    .await;
    let closed_after = time_to_close(&mut s, Duration::from_secs(4)).await;
    assert!(
        closed_after < Duration::from_millis(1400),
        "closed after {closed_after:?}"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="header_read_timeout"} 1"#),
        "{metrics}"
    );
    // A stray CRLF after a request (RFC 9112 §2.2: ignored) starts no head: the connection
    // stays for the idle timeout.
    let mut s = served_once(
        &gw,
        b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok\r\n",
    )
    .await;
    let closed_after = time_to_close(&mut s, Duration::from_secs(4)).await;
    assert!(
        closed_after >= Duration::from_millis(1200),
        "a stray CRLF was taken for a head: closed after {closed_after:?}"
    );
}

/// A connection that sends nothing, plain or after its TLS handshake, waits for its first
/// request for the idle timeout (the header timeout bounds the handshake and a started head).
#[tokio::test]
async fn connection_without_a_request_gets_the_idle_timeout() {
    use portcullis::tls::certs;
    let (ca, leaf, key) = certs::ca_and_leaf(&["localhost"]).unwrap();
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: https\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: leaf.crt\n          key: leaf.key\n".into(),
        files: vec![
            ("leaf.crt".into(), leaf.into_bytes()),
            ("leaf.key".into(), key.into_bytes()),
        ],
        ..Setup::default()
    }
    .server(HEADER_300MS_IDLE_1500MS)
    .start()
    .await;
    let mut plain = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.addr_of("https"))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_client(&[&ca], &[b"http/1.1"]));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let (plain_after, tls_after) = tokio::join!(
        time_to_close(&mut plain, Duration::from_secs(4)),
        time_to_close(&mut tls, Duration::from_secs(4)),
    );
    for closed_after in [plain_after, tls_after] {
        assert!(
            closed_after >= Duration::from_millis(1400),
            "closed after {closed_after:?}"
        );
    }
}

/// `server.max_in_flight` caps the proxy's requests and, apart, each decision door's
/// decisions: one more is shed at once (503 `overloaded`, gRPC `UNAVAILABLE`), never queued.
/// Requests the proxy or another door holds (a slow upstream's, a hung delegate's) never take
/// a decision door's permits: an Envoy Check shed as `UNAVAILABLE` is one
/// `failure_mode_allow: true` turns into an allow.
#[tokio::test]
async fn the_proxy_cannot_take_the_decision_doors_permits() {
    let (hung_addr, held) = silent_server().await;
    let policy = "rules:\n  - {name: judged, match: {paths: [\"/judged/**\"]}, effect: allow, anonymous: true, delegate: hung, upstream: echo}\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n";
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: forward\n    address: 127.0.0.1:0\n    door: {forward_auth: {timeout: 1500ms, status_map: {503: 403}}}\n  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        server: "  max_in_flight: 1\n".into(),
        policies: vec![("10-p.yaml".into(), policy.into())],
        extra: format!(
            "delegates:\n  hung: {{grpc: \"http://{hung_addr}\", timeout: 10s, failure_mode: deny}}\n"
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let forward = |path: &str| {
        Request::get("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", path)
            .header("x-forwarded-host", "app.test")
            .header("x-forwarded-for", "127.0.0.1")
            .body(http_body_util::Full::default())
            .unwrap()
    };
    let mut grpc = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", gw.addr_of("grpc")),
    )
    .await
    .unwrap();

    // The proxy's one permit held by a slow upstream: the proxy sheds, the doors decide.
    let addr = gw.addr();
    let slow = tokio::spawn(async move { get(addr, "/__echo/delay/800").await });
    assert!(
        eventually(Duration::from_secs(2), || async { gw.echo.count() == 1 }).await,
        "the slow request reached the upstream"
    );
    let started = std::time::Instant::now();
    let (status, h, body) = get(gw.addr(), "/x").await;
    assert_eq!(status, 503, "{body:?}");
    assert_eq!(h["retry-after"], "1");
    assert!(h.contains_key("x-request-id"));
    assert!(String::from_utf8_lossy(&body).contains("\"error\":\"overloaded\""));
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "shed at once, not queued behind the slow request"
    );
    let (status, _, _) = send(gw.addr_of("forward"), forward("/x")).await;
    assert_eq!(status, 200, "the forward-auth door keeps its own permits");
    let ok = grpc
        .check(crate::grpc::check("/x", "198.51.100.9", &[]))
        .await
        .expect("the gRPC door keeps its own permits")
        .into_inner();
    assert_eq!(ok.status.map(|s| s.code), Some(0));
    let (status, _, _) = slow.await.unwrap();
    assert_eq!(status, 200);

    // The forward-auth door's one permit held by a decision waiting on a hung delegate: that
    // door sheds; the proxy and the gRPC door (nginx's clients cannot crowd out Envoy) serve.
    let fa = gw.addr_of("forward");
    let judged = tokio::spawn(async move { send(fa, forward("/judged/x")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let (status, h, body) = send(gw.addr_of("forward"), forward("/x")).await;
    // As the door's own refusals: mapped for nginx, the real status and the reason told.
    assert_eq!(status, 403, "{body:?}");
    assert_eq!(h["x-portcullis-status"], "503");
    assert_eq!(h["x-portcullis-error"], "overloaded");
    assert_eq!(h["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "shed at once, not queued behind the waiting decision"
    );
    let ok = grpc
        .check(crate::grpc::check("/x", "198.51.100.9", &[]))
        .await
        .expect("the gRPC door keeps its own permits")
        .into_inner();
    assert_eq!(ok.status.map(|s| s.code), Some(0));
    assert_eq!(get(gw.addr(), "/x").await.0, 200, "the proxy keeps its own");
    // And the gRPC door's one permit, held the same way: it sheds as `UNAVAILABLE`.
    let mut waiting = grpc.clone();
    let judged_grpc = tokio::spawn(async move {
        waiting
            .check(crate::grpc::check("/judged/x", "198.51.100.9", &[]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = grpc
        .check(crate::grpc::check("/x", "198.51.100.9", &[]))
        .await
        .expect_err("shed");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    judged_grpc.abort();
    let (status, h, body) = judged.await.unwrap();
    assert_eq!(status, 403, "the hung delegate fails closed");
    assert_eq!(h["x-portcullis-status"], "503");
    assert!(
        String::from_utf8_lossy(&body).contains("delegate_unavailable"),
        "{body:?}"
    );
    assert_eq!(get(gw.addr(), "/x").await.0, 200, "passes again");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="max_in_flight"} 3"#),
        "{metrics}"
    );
    held.abort();
}

/// A decision door's connections from addresses not among its `peers` hold slots of a small
/// pool of their own: silent ones, as many as anyone opens, never keep the peer (Envoy,
/// nginx) out, and a stranger still gets its answer (403) while the pool has room.
#[tokio::test]
async fn strangers_cannot_take_a_decision_doors_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: forward\n    address: 127.0.0.1:0\n    door: {forward_auth: {peers: [127.0.0.2/32]}}\n".into(),
        server: "  max_connections: 4\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let door = gw.addr_of("forward");
    const ASK: &[u8] = b"GET /auth HTTP/1.1\r\nHost: door\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /x\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-For: 198.51.100.4\r\n\r\n";
    async fn ask_from(from: &str, door: std::net::SocketAddr) -> Option<[u8; 12]> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut tcp = socket.connect(door).await.ok()?;
        tcp.write_all(ASK).await.ok()?;
        let mut buf = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(3), tcp.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    }
    // A stranger is answered (refused: not a peer).
    assert_eq!(
        ask_from("127.0.0.1", door).await.as_ref().map(|b| &b[..]),
        Some(&b"HTTP/1.1 403"[..])
    );
    // Silent connections from a stranger, more than every pool holds.
    let mut silent = Vec::new();
    for _ in 0..(portcullis::server::listener::STRANGERS + 8) {
        silent.push(tokio::net::TcpStream::connect(door).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The peer is served, on connections of its own.
    for i in 0..3 {
        assert_eq!(
            ask_from("127.0.0.2", door).await.as_ref().map(|b| &b[..]),
            Some(&b"HTTP/1.1 200"[..]),
            "the peer's request {i}"
        );
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="door_strangers"}"#),
        "{metrics}"
    );
    drop(silent);
}

/// Connects to the gRPC door at `addr` and asks one Check, which must be allowed, each within
/// 3 s; the client, kept open.
async fn allowed_on_a_new_grpc_connection(
    addr: std::net::SocketAddr,
) -> envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
    tonic::transport::Channel,
> {
    let mut grpc = tokio::time::timeout(
        Duration::from_secs(3),
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
            format!("http://{addr}"),
        ),
    )
    .await
    .expect("the gRPC door accepts a new connection")
    .unwrap();
    let ok = tokio::time::timeout(
        Duration::from_secs(3),
        grpc.check(crate::grpc::check("/x", "198.51.100.9", &[])),
    )
    .await
    .expect("the gRPC door answers on it")
    .unwrap()
    .into_inner();
    assert_eq!(ok.status.map(|s| s.code), Some(0));
    grpc
}

/// `server.max_connections` counts the proxy's connections and, apart, each decision door's:
/// silent connections holding every proxy slot keep no Envoy or nginx peer out of its door
/// (a Check left waiting in the backlog times out, which `failure_mode_allow` turns into an
/// allow), and the proxy's own next client waits.
#[tokio::test]
async fn the_proxy_cannot_take_the_decision_doors_connections() {
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: forward\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n  - name: grpc\n    address: 127.0.0.1:0\n    door: {envoy_grpc: {}}\n".into(),
        server: "  max_connections: 4\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    // Every proxy slot (less the one each listener holds while it waits) taken by silence.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(tokio::net::TcpStream::connect(gw.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Each on a connection of its own (one each would pass anyway: a listener holds a slot
    // while it waits for its next connection).
    let mut held = Vec::new();
    for i in 0..3 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(gw.addr_of("forward"))
            .await
            .unwrap();
        tcp.write_all(b"GET /auth HTTP/1.1\r\nHost: door\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /x\r\nX-Forwarded-Host: app.test\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(3), tcp.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!("forward-auth request {i} unanswered while the proxy's slots are taken")
            })
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200", "{i}");
        // Kept open, as a peer's pooled connection is.
        held.push(tcp);
    }
    let grpc = allowed_on_a_new_grpc_connection(gw.addr_of("grpc")).await;
    // The forward-auth listener's own pool filled by silence too: the gRPC door still
    // answers (nginx's clients cannot keep Envoy out).
    for _ in 0..6 {
        held.push(
            tokio::net::TcpStream::connect(gw.addr_of("forward"))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = allowed_on_a_new_grpc_connection(gw.addr_of("grpc")).await;
    drop((held, grpc, fresh));
    // The proxy's own pool is full: its next client is not served until a slot frees.
    let waiting = tokio::time::timeout(Duration::from_millis(500), get(gw.addr(), "/x")).await;
    assert!(waiting.is_err(), "the proxy's pool was full: {waiting:?}");
    drop(silent);
}

/// A head hyper refuses and answers itself (a control byte in a field, a head over the size
/// limit), before any door sees a request, is still counted: a scanner's flood shows.
#[tokio::test]
async fn an_unreadable_head_is_counted() {
    let gw = Setup::default().start().await;
    let r = raw(
        gw.addr(),
        b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: a\x01b\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let r = raw(gw.addr(), big.as_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.head);
    for kind in ["unparsable_head", "headers_too_large"] {
        let series = format!(r#"portcullis_bad_requests_total{{door="proxy",kind="{kind}"}} 1"#);
        let counted = eventually(Duration::from_secs(5), || {
            let series = series.clone();
            let gw = &gw;
            async move { gw.admin_get("/metrics").await.1.contains(&series) }
        })
        .await;
        assert!(counted, "{series}");
    }
}

/// An HTTP/1.1 upstream that answers each connection's first request at once, without
/// reading its body, then reads and discards whatever comes; it records each connection's
/// request line.
async fn answering_before_the_body() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = std::sync::Arc::clone(&record);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                record
                    .lock()
                    .unwrap()
                    .push(line.lines().next().unwrap_or_default().to_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, seen)
}

/// A connection to `gw` whose `POST /up` declared `len` bytes of body and sent `abc`, once
/// [`answering_before_the_body`]'s `200 ok` to it has been read: the body is still arriving.
async fn early_answered_upload(gw: std::net::SocketAddr, len: usize) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    let head = format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {len}\r\n\r\nabc");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the upstream's early answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    s
}

/// The rest of a request's body, sent after its answer and a pause (long enough for an idle
/// connection to be parked), is read as that body, never as a request of its own: neither
/// when the upstream answered before the body had all come, nor when the gateway answered
/// 408 to a stalled body.
#[tokio::test]
async fn the_rest_of_a_body_is_never_read_as_a_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, seen) = answering_before_the_body().await;
    let gw = Setup {
        upstreams: format!("  early: {{url: \"http://{up}\"}}\n"),
        policies: route_all_to("early"),
        ..Setup::default()
    }
    .server("  header_read_timeout: 1s\n")
    .start()
    .await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let mut s = early_answered_upload(gw.addr(), 3 + smuggled.len()).await;
    // Quiet past the moment an idle connection is parked (100 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(smuggled).await.unwrap();
    let mut more = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(700), s.read_to_end(&mut more)).await;
    assert!(
        !String::from_utf8_lossy(&more).contains("HTTP/1.1"),
        "a second answer: {}",
        String::from_utf8_lossy(&more)
    );
    assert_eq!(*seen.lock().unwrap(), ["POST /up HTTP/1.1"]);

    // The gateway's own 408 to a body that stalls past `header_read_timeout`.
    let gw = Setup::default()
        .server("  header_read_timeout: 1s\n")
        .start()
        .await;
    let mut s = stalled_upload_answered_408(gw.addr(), 3 + smuggled.len()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The socket may be closed already: the write may fail, and nothing may be answered.
    let _ = s.write_all(smuggled).await;
    let mut more = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(700), s.read_to_end(&mut more)).await;
    let more = String::from_utf8_lossy(&more);
    assert!(!more.contains("HTTP/1.1 200"), "a second answer: {more}");
    // Time for the rest to reach the upstream, had the exchange gone on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = gw.echo.records();
    assert!(
        records.iter().all(|r| r.target != "/smuggled"),
        "the rest of the body reached the upstream as a request"
    );
    // Nor did it reach the upstream as the body of a request the client was told failed.
    assert!(
        records
            .iter()
            .all(|r| r.body_len < (3 + smuggled.len()) as u64),
        "the upstream got the whole body after the 408: {records:?}"
    );
}

/// An upload going on after the upstream answered early is that body's, not a late request
/// head: its bytes start no header deadline. It gets the header deadline from the answer's
/// end, under its own name (`body_timeout`), not the idle one.
#[tokio::test]
async fn an_upload_after_an_early_answer_is_no_request_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, _) = answering_before_the_body().await;
    let gw = Setup {
        upstreams: format!("  early: {{url: \"http://{up}\"}}\n"),
        policies: route_all_to("early"),
        ..Setup::default()
    }
    .server("  header_read_timeout: 2s\n  idle_timeout: 30s\n")
    .start()
    .await;
    let mut s = early_answered_upload(gw.addr(), 1000).await;
    let answered = std::time::Instant::now();
    // Ten bytes every 250 ms: the connection goes on past the moment a head started by the
    // first of them would have been late (2 s after it)...
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if s.write_all(&[b'x'; 10]).await.is_err() {
            break;
        }
    }
    // ... and ends at the header deadline counted from the answer, not the idle one.
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut [0u8; 64])).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "still open: {r:?}");
    let took = answered.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "cut after {took:?}"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_connection_limits_total{limit="body_timeout"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"limit="header_read_timeout""#),
        "{metrics}"
    );
}

/// A kept-alive HTTP/1.1 connection whose POST body came in two pieces (the second streamed
/// after the first was read ahead) is parked once idle, as one whose body came whole: the
/// body ended, it was not abandoned.
#[tokio::test]
async fn a_connection_after_a_streamed_body_is_parked_when_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Setup::default().start().await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"world").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\"body_bytes\":10") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the echo's answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let parked = crate::support::eventually(Duration::from_secs(5), || async {
        let (_, text) = gw.admin_get("/metrics").await;
        text.lines()
            .any(|l| l.trim() == "portcullis_connections_parked 1")
    })
    .await;
    assert!(parked, "the idle connection was never parked");
    drop(s);
}

/// A pooled upstream connection still carrying a request body (its answer came first) is not
/// handed to another client's request, which would wait behind that body.
#[tokio::test]
async fn an_upload_after_an_early_answer_holds_no_other_request() {
    let (up, seen) = answering_before_the_body().await;
    let gw = Setup {
        upstreams: format!("  early: {{url: \"http://{up}\", response_timeout: 2s}}\n"),
        policies: route_all_to("early"),
        ..Setup::default()
    }
    .server("  header_read_timeout: 10s\n")
    .start()
    .await;
    let s = early_answered_upload(gw.addr(), 100000).await;
    // The upload goes quiet; another client's request goes meanwhile.
    let (status, _, body) = get(gw.addr(), "/other").await;
    assert_eq!(status, http::StatusCode::OK, "{body:?}");
    assert_eq!(
        *seen.lock().unwrap(),
        ["POST /up HTTP/1.1", "GET /other HTTP/1.1"]
    );
    drop(s);
}
