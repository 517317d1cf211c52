//! The proxy door's edge: WebSocket tunnels (relay, identity headers, refusals, idle,
//! expiry, re-checks, drain), CORS, W3C trace context and OTLP span export.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{
    Setup, TestGateway, echoed_header, eventually, get, hs256_token, hs256_users, raw, send,
};

const SECRET: &[u8] = b"edge-test-secret-of-32-bytes-min!";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === a WebSocket echo upstream ===

/// A WebSocket echo server recording each handshake's request headers, and the binary
/// messages and close frames it receives (`binary N`, `close CODE REASON`).
struct WsEcho {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    got: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsEcho {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (Arc::clone(&seen), Arc::clone(&got));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, g) = (Arc::clone(&s), Arc::clone(&g));
                tokio::spawn(async move {
                    #[expect(
                        clippy::result_large_err,
                        reason = "tungstenite's handshake callback type"
                    )]
                    let record =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                            s.lock().unwrap().push(req.headers().clone());
                            Ok(resp)
                        };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if let Message::Binary(b) = &msg {
                            g.lock().unwrap().push(format!("binary {}", b.len()));
                        }
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        } else if let Message::Close(frame) = msg {
                            let said = frame.map_or("close".to_owned(), |f| {
                                format!("close {} {}", u16::from(f.code), f.reason)
                            });
                            g.lock().unwrap().push(said);
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            got,
            task,
        }
    }

    /// What it received, once `settled` says it is all there (within 3 s).
    async fn got_when(&self, settled: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            let got = self.got.lock().unwrap().clone();
            if settled(&got) || std::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn last(&self) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a handshake")
    }

    fn handshakes(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket to `path` through the gateway with extra headers.
async fn connect(
    gw: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}{path}", gw.addr())
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("handshake in time")
    .map(|(ws, _)| ws)
}

/// Sends a text frame and expects it back.
async fn echo_once<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("a frame")
        .expect("no error");
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

/// Waits up to `within` for the tunnel to end (closed, reset or a close frame); returns how
/// long it took, or `None` if it is still open.
async fn ends_within<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    within: Duration,
) -> Option<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None | Some(Err(_))) => return Some(start.elapsed()),
            Ok(Some(Ok(m))) if m.is_close() => return Some(start.elapsed()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Waits up to `within` for the tunnel to end, and returns the close frame it ended with
/// (code and reason); fails if it stays open or ends without one.
async fn close_frame_within<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    within: Duration,
) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (u16::from(f.code), f.reason.to_string());
            }
            Ok(Some(Ok(Message::Close(None)))) => panic!("a close frame without a code"),
            Ok(None | Some(Err(_))) => panic!("ended without a close frame"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn ws_rule(extra: &str) -> String {
    format!(
        "rules:
  - name: chat
    match: {{paths: [\"/ws/**\"]}}
    effect: allow
    authenticators: [users]
    upstream: ws
    identity_headers: {{x-user-id: \"{{principal.id}}\"}}
    upgrade:
      protocols: [websocket]
{extra}  - name: plain
    match: {{paths: [\"/plain/**\"]}}
    effect: allow
    authenticators: [users]
    upstream: ws
    identity_headers: {{x-user-id: \"{{principal.id}}\"}}
  - name: http
    match: {{paths: [\"/http/**\"]}}
    effect: allow
    anonymous: true
    upstream: echo
"
    )
}

fn ws_setup(ws: &WsEcho, rule_extra: &str) -> Setup {
    ws_setup_at(ws.addr, rule_extra)
}

fn ws_setup_at(upstream: SocketAddr, rule_extra: &str) -> Setup {
    Setup {
        upstreams: format!("  ws:\n    url: http://{upstream}\n"),
        policies: vec![("10-ws.yaml".into(), ws_rule(rule_extra))],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: hs256_users("{}"),
        ..Setup::default()
    }
}

/// A gateway relaying WebSockets to `upstream` on a manual clock, and an `Authorization`
/// value whose token expires a minute from the clock's now.
async fn ws_gateway_expiring(
    upstream: SocketAddr,
) -> (TestGateway, portcullis::clock::Clock, String) {
    let clock = portcullis::clock::Clock::manual_now();
    let mut setup = ws_setup_at(upstream, "");
    setup.clock = clock.clone();
    let gw = setup.start().await;
    let auth = bearer(&hs256_token(
        SECRET,
        &json!({"exp": clock.unix_secs() + 60}),
    ));
    (gw, clock, auth)
}

async fn ws_gateway(ws: &WsEcho, rule_extra: &str) -> TestGateway {
    ws_setup(ws, rule_extra).start().await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn websocket_is_relayed_with_identity_set_and_spoofed_identity_stripped() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "").await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut ws = connect(
        &gw,
        "/ws/room",
        &[("authorization", &auth), ("x-user-id", "mallory")],
    )
    .await
    .expect("upgraded");
    echo_once(&mut ws, "hello").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_data().as_ref(), [1, 2, 3]);
    echo_once(&mut ws, &"x".repeat(100_000)).await;
    let seen = upstream.last();
    let ids: Vec<_> = seen.get_all("x-user-id").iter().collect();
    assert_eq!(ids, ["alice"], "the gateway's identity, the client's gone");
    assert!(seen.contains_key("x-request-id"));
    assert!(seen.contains_key("traceparent"));
    assert_eq!(seen.get("upgrade").unwrap(), "websocket");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_over_http2_extended_connect_is_relayed_and_refused_where_not_opted_in() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let upstream = WsEcho::start().await;
    let mut gw = ws_gateway(&upstream, "").await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // By the first answer, the gateway's SETTINGS (extended CONNECT enabled) have arrived.
    let first = Request::get(format!("http://{}/http/x", gw.addr()))
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        sender.send_request(first).await.unwrap().status(),
        StatusCode::OK
    );
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let connect = |path: &str, auth: Option<&str>| {
        let mut req = Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}{path}", gw.addr()))
            .header("sec-websocket-version", "13")
            .header("x-user-id", "mallory");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut req = req.body(Empty::<Bytes>::new()).unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    let mut resp = sender
        .send_request(connect("/ws/room", Some(&auth)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    echo_once(&mut ws, "over h2").await;
    echo_once(&mut ws, &"y".repeat(70_000)).await;
    let seen = upstream.last();
    let ids: Vec<_> = seen.get_all("x-user-id").iter().collect();
    assert_eq!(ids, ["alice"]);
    assert_eq!(seen.get("upgrade").unwrap(), "websocket");
    // Refused: without a credential (401), and on a rule that relays no upgrade (403), with
    // nothing sent upstream.
    let handshakes = upstream.handshakes();
    let resp = sender
        .send_request(connect("/ws/room", None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = sender
        .send_request(connect("/plain/room", Some(&auth)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("upgrade_not_allowed"));
    assert_eq!(upstream.handshakes(), handshakes);
    // The tunnel lives on beside other streams, and ends with the drain, which it does not
    // hold to its grace period, with a close frame each way in the stream.
    echo_once(&mut ws, "still here").await;
    let app = gw.app.take().unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .expect("shutdown in time");
    assert!(drained);
    let said = close_frame_within(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(said, (1001, "tunnel_drained".to_owned()));
    let got = upstream
        .got_when(|g| g.iter().any(|e| e.starts_with("close")))
        .await;
    assert_eq!(
        got.last().map(String::as_str),
        Some("close 1001 tunnel_drained")
    );
}

/// An HTTP/2 stream's tunnel counts against `server.max_connections` while it lives, as an
/// HTTP/1.1 one does: with a cap of 4 (one permit waits in the accept loop for the next
/// connection, one is the HTTP/2 connection's), that connection opens two tunnels, and the
/// third is refused with 503 `overloaded` before the upstream is asked; one closed, another
/// opens. (One connection opened a hundred, each an upstream socket and a task.)
#[tokio::test]
async fn http2_tunnels_count_against_max_connections() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let upstream = WsEcho::start().await;
    let mut setup = ws_setup(&upstream, "");
    setup.server = "  max_connections: 4\n".into();
    let gw = setup.start().await;
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let first = Request::get(format!("http://{}/http/x", gw.addr()))
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        sender.send_request(first).await.unwrap().status(),
        StatusCode::OK
    );
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let connect = || {
        let mut req = Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}/ws/room", gw.addr()))
            .header("sec-websocket-version", "13")
            .header("authorization", &auth)
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut resp = sender.send_request(connect()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
        tunnels.push(
            tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Client,
                None,
            )
            .await,
        );
    }
    let handshakes = upstream.handshakes();
    let resp = sender.send_request(connect()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("overloaded"));
    assert_eq!(
        upstream.handshakes(),
        handshakes,
        "the upstream was not asked"
    );
    for ws in &mut tunnels {
        echo_once(ws, "still open").await;
    }
    // One closed: its permit is back.
    let mut gone = tunnels.pop().unwrap();
    gone.close(None).await.unwrap();
    drop(gone);
    let mut opened = false;
    for _ in 0..50 {
        let resp = sender.send_request(connect()).await.unwrap();
        if resp.status() == StatusCode::OK {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(opened, "a closed tunnel gives its permit back");
}

#[tokio::test]
async fn websocket_without_a_credential_is_refused_and_never_reaches_the_upstream() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "").await;
    match connect(&gw, "/ws/room", &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    assert_eq!(upstream.handshakes(), 0);
}

#[tokio::test]
async fn upgrade_on_a_rule_without_opt_in_is_stripped_and_never_switches() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "").await;
    // The echo upstream answers a plain request: the client asked to switch, it gets a 200.
    let r = raw(
        gw.addr(),
        b"GET /http/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(echoed_header(&gw.echo, "upgrade").is_none());
    // A WebSocket client on the rule without `upgrade` never gets its 101.
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    assert!(
        connect(&gw, "/plain/room", &[("authorization", &auth)])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn h2c_upgrade_is_refused_even_on_a_rule_that_relays_upgrades() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "").await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let r = raw(
        gw.addr(),
        format!(
            "GET /ws/room HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\
             Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert!(r.body.contains("h2c_upgrade"));
    assert_eq!(upstream.handshakes(), 0);
}

#[tokio::test]
async fn tunnel_is_closed_when_its_token_expires() {
    let upstream = WsEcho::start().await;
    let (gw, clock, auth) = ws_gateway_expiring(upstream.addr).await;
    let mut ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    echo_once(&mut ws, "before expiry").await;
    clock.advance(Duration::from_secs(59));
    echo_once(&mut ws, "a second before").await;
    clock.advance(Duration::from_secs(1));
    // A close frame each way, so that the client can tell an expired token from a broken
    // network (1006): 1008, the reason code as its reason. The upstream's is masked, as a
    // client's must be (tungstenite refuses an unmasked one).
    let said = (1008, "tunnel_credential_expired".to_owned());
    assert_eq!(
        close_frame_within(&mut ws, Duration::from_secs(2)).await,
        said
    );
    let got = upstream.got_when(|g| !g.is_empty()).await;
    assert_eq!(got, ["close 1008 tunnel_credential_expired"]);
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("limit=\"tunnel_credential_expired\"} 1"),
        "{metrics}"
    );
}

/// A raw WebSocket client through the gateway: the handshake, then bytes as written.
async fn raw_ws(gw: &TestGateway, auth: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let head = format!(
        "GET /ws/room HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: {auth}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "{answer:?}");
        answer.push(byte[0]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tcp
}

/// What a raw client reads until the gateway closes the connection (within 4 s).
async fn read_to_end(tcp: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(4), tcp.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .expect("closed without a reset");
    all
}

/// A WebSocket upstream that accepts one handshake and counts the bytes it then receives,
/// until the gateway ends the connection (`done` is set then).
async fn counting_ws_upstream() -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    use base64::Engine as _;
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, d) = (Arc::clone(&count), Arc::clone(&done));
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .expect("a key");
        let mut sha = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
        sha.update(key.as_bytes());
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finish().as_ref());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        tcp.write_all(answer.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = tcp.read(&mut buf).await {
            c.fetch_add(n, SeqCst);
        }
        d.store(true, SeqCst);
    });
    (addr, count, done)
}

/// A frame's length is the client's to choose: one declared huge and still streaming when
/// its token expires may send at most 64 KiB more, and is then cut (no close frame can
/// follow it), not relayed for the whole grace.
#[tokio::test]
async fn a_huge_frame_in_flight_at_expiry_gets_no_more_than_its_allowance() {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::AsyncWriteExt;
    let (up, count, done) = counting_ws_upstream().await;
    let (gw, clock, auth) = ws_gateway_expiring(up).await;
    let mut tcp = raw_ws(&gw, &auth).await;
    // A masked binary frame of 2^40 bytes (mask key 0), of which 200 KB go before expiry.
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 40).to_be_bytes());
    head.extend_from_slice(&[0; 4]);
    tcp.write_all(&head).await.unwrap();
    let chunk = vec![b'a'; 8192];
    for _ in 0..25 {
        tcp.write_all(&chunk).await.unwrap();
    }
    let before = head.len() + 25 * chunk.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while count.load(SeqCst) < before {
        assert!(
            std::time::Instant::now() < deadline,
            "relayed before expiry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // 2 MB more, as fast as the gateway takes them (it soon takes none).
    let more = async {
        for _ in 0..256 {
            if tcp.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), more).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !done.load(SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream was never cut"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = count.load(SeqCst) - before;
    assert!(after <= 64 * 1024, "{after} bytes relayed after expiry");
}

/// A close frame goes only between two frames: a frame the client is still sending when its
/// token expires is let through to its end first, and a frame never finished leaves that
/// side without a close frame (cut after a second), while the other side still gets its own.
#[tokio::test]
async fn a_frame_in_flight_at_expiry_is_finished_before_the_close_frame() {
    use tokio::io::AsyncWriteExt;
    let upstream = WsEcho::start().await;
    let (gw, clock, auth) = ws_gateway_expiring(upstream.addr).await;
    // A masked binary frame of 1000 bytes (mask key 0: the payload as it is).
    let mut frame = vec![0x82, 0x80 | 126, 0x03, 0xe8, 0, 0, 0, 0];
    frame.resize(frame.len() + 1000, b'a');
    let server_close = [&[0x88, 27, 0x03, 0xf0][..], b"tunnel_credential_expired"].concat();

    // Finished within the grace: the upstream gets the whole frame, then the close frame.
    let mut tcp = raw_ws(&gw, &auth).await;
    tcp.write_all(&frame[..400]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(400)).await;
    tcp.write_all(&frame[400..]).await.unwrap();
    assert_eq!(read_to_end(&mut tcp).await, server_close);
    let got = upstream.got_when(|g| g.len() == 2).await;
    assert_eq!(got, ["binary 1000", "close 1008 tunnel_credential_expired"]);

    // Never finished: the client still gets its close frame; the upstream only the cut.
    upstream.got.lock().unwrap().clear();
    let mut tcp = raw_ws(
        &gw,
        &bearer(&hs256_token(
            SECRET,
            &json!({"exp": clock.unix_secs() + 60}),
        )),
    )
    .await;
    tcp.write_all(&frame[..400]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    clock.advance(Duration::from_secs(60));
    let started = std::time::Instant::now();
    assert_eq!(read_to_end(&mut tcp).await, server_close);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.got.lock().unwrap().clone(), Vec::<String>::new());
}

/// A token already past `exp` but within its verifier's leeway (30 s) opens the tunnel, which
/// then lives until the leeway ends (when the same token would be refused), not a moment
/// less and not for ever.
#[tokio::test]
async fn a_tunnel_opened_within_the_leeway_ends_with_it() {
    let upstream = WsEcho::start().await;
    let clock = portcullis::clock::Clock::manual_now();
    let mut setup = ws_setup(&upstream, "");
    setup.clock = clock.clone();
    let gw = setup.start().await;
    let auth = bearer(&hs256_token(
        SECRET,
        &json!({"exp": clock.unix_secs() - 10}),
    ));
    let mut ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded within the leeway");
    echo_once(&mut ws, "opened").await;
    clock.advance(Duration::from_secs(19));
    echo_once(&mut ws, "a second before the leeway ends").await;
    clock.advance(Duration::from_secs(1));
    ends_within(&mut ws, Duration::from_secs(2))
        .await
        .expect("closed when the leeway ends");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("limit=\"tunnel_credential_expired\"} 1"),
        "{metrics}"
    );
    // The same token is refused now.
    assert!(
        connect(&gw, "/ws/room", &[("authorization", &auth)])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tunnel_is_closed_at_its_max_lifetime_however_busy() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "      max_lifetime: 1s\n").await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    let start = std::time::Instant::now();
    let mut i = 0;
    let ended = loop {
        i += 1;
        if ws.send(Message::text(format!("ping {i}"))).await.is_err() {
            break start.elapsed();
        }
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(m))) if m.is_text() => {}
            _ => break start.elapsed(),
        }
        assert!(start.elapsed() < Duration::from_secs(4), "still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ended >= Duration::from_millis(900), "{ended:?}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("limit=\"tunnel_max_lifetime\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn tunnel_is_closed_after_its_idle_timeout_and_kept_while_busy() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "      idle_timeout: 800ms\n").await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    // Busy for twice the idle timeout: kept.
    for i in 0..8 {
        echo_once(&mut ws, &format!("ping {i}")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = std::time::Instant::now();
    let said = close_frame_within(&mut ws, Duration::from_secs(4)).await;
    assert_eq!(said, (1001, "tunnel_idle_timeout".to_owned()));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("limit=\"tunnel_idle_timeout\"} 1"),
        "{metrics}"
    );
}

/// A client that leaves its tunnel (its socket closed, no close frame) frees the tunnel's
/// client connection slot within a few seconds, though the upstream neither reads, writes nor
/// closes (before, the slot and the upstream connection stayed until the 5-minute idle
/// timeout).
#[tokio::test]
async fn a_tunnel_the_client_left_frees_its_upstream_and_slot() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            // A sleeping backend: the handshake, then nothing at all.
            if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                held.push(ws);
            }
        }
    });
    let gw = ws_setup_at(upstream, "").start().await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    let open = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_connections_open "))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(
        open(&gw.admin_get("/metrics").await.1).as_deref(),
        Some("1")
    );
    // The client goes, without a close frame.
    drop(ws);
    let start = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            open(&gw.admin_get("/metrics").await.1).as_deref() == Some("0")
        })
        .await,
        "the client connection's slot is free"
    );
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "{:?}",
        start.elapsed()
    );
    task.abort();
}

/// A tunnel whose client has ended its sending half stays open while the upstream still sends:
/// the half-closed grace counts from the last byte that moved.
#[tokio::test]
async fn a_half_closed_tunnel_still_sending_stays_open() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                // Output for 8 s, a line a second, whatever the client does.
                for i in 0..8 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if ws.send(Message::text(format!("line {i}"))).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let gw = ws_setup_at(upstream, "").start().await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut tcp = raw_ws(&gw, &auth).await;
    // The client's input ends: its sending half closes.
    tokio::io::AsyncWriteExt::shutdown(&mut tcp).await.unwrap();
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(Ok(n)) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("line 7"),
        "cut after {:?}: {text:?}",
        start.elapsed()
    );
    task.abort();
}

/// The idle deadline counts from the last frame: one echo, then silence, closes the tunnel
/// `idle_timeout` after that echo, not up to twice as late.
#[tokio::test]
async fn websocket_idle_timeout_counts_from_the_last_frame() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "      idle_timeout: 1s\n").await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    // Past the watchdog's first look (at the idle deadline from the opening), which sees that
    // bytes moved.
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo_once(&mut ws, "the last frame").await;
    let took = ends_within(&mut ws, Duration::from_secs(3))
        .await
        .expect("closed when idle");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1600),
        "closed {took:?} after the last frame, with idle_timeout 1s"
    );
}

/// Under least request, an open WebSocket counts in flight on its endpoint until it closes,
/// as a streamed response does: tunnels are what least request must spread.
#[tokio::test]
async fn least_request_counts_a_websocket_until_it_closes() {
    let (a, b) = (WsEcho::start().await, WsEcho::start().await);
    let gw = Setup {
        upstreams: format!(
            "  ws:\n    url: http://ws.test\n    endpoints: [\"{}\", \"{}\"]\n    balance: least_request\n",
            a.addr, b.addr
        ),
        ..ws_setup(&a, "")
    }
    .start()
    .await;
    let in_flight = |metrics: &str| crate::support::in_flight(metrics, "ws");
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    echo_once(&mut ws, "hi").await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(
        in_flight(&metrics),
        1,
        "the open tunnel in flight:\n{metrics}"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let ended = crate::support::eventually(Duration::from_secs(5), || async {
        in_flight(&gw.admin_get("/metrics").await.1) == 0
    })
    .await;
    assert!(ended, "the tunnel closed, its count stayed");
}

/// On a rule with CORS, a WebSocket opened from an origin the rule does not name is refused
/// (browsers apply no CORS to WebSockets: cross-site WebSocket hijacking); from a named one, or
/// without `Origin` (not a browser), it opens.
#[tokio::test]
async fn websocket_from_an_origin_the_rule_does_not_name_is_refused() {
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(
        &upstream,
        "    cors:\n      allowed_origins: [\"https://app.example.com\"]\n",
    )
    .await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let refused = connect(
        &gw,
        "/ws/room",
        &[("authorization", &auth), ("origin", "https://evil.example")],
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert_eq!(upstream.handshakes(), 0, "the upstream was never asked");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(
            "portcullis_denials_total{door=\"proxy\",reason=\"cors_origin_not_allowed\"} 1"
        ),
        "counted as a denial:\n{metrics}"
    );
    for origin in [Some("https://app.example.com"), None] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(origin.map(|o| ("origin", o)));
        let mut ws = connect(&gw, "/ws/room", &headers)
            .await
            .unwrap_or_else(|e| panic!("{origin:?}: {e}"));
        echo_once(&mut ws, "hi").await;
    }
}

/// A re-check decides the tunnel as the current rules would decide its opening: an edit
/// that stops relaying its protocol, or adds a `cors` that does not name its origin, closes
/// it; an edit that leaves both alone does not.
#[tokio::test]
async fn a_recheck_closes_a_websocket_the_current_rule_would_refuse() {
    let upstream = WsEcho::start().await;
    let every = "    reauthorize_every: 1s\n";
    let gw = ws_gateway(&upstream, every).await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let headers = [
        ("authorization", auth.as_str()),
        ("origin", "https://app.example.com"),
    ];
    // Unchanged in what matters (another origin added): kept.
    let mut ws = connect(&gw, "/ws/room", &headers).await.expect("upgraded");
    echo_once(&mut ws, "hi").await;
    let cors = |origins: &str| format!("{every}    cors:\n      allowed_origins: [{origins}]\n");
    edit_ws_rule(
        &gw,
        &cors("\"https://app.example.com\", \"https://b.example\""),
        "websocket",
    )
    .await;
    assert_eq!(
        ends_within(&mut ws, Duration::from_millis(2500)).await,
        None
    );
    echo_once(&mut ws, "still").await;
    // Its origin no longer named.
    edit_ws_rule(&gw, &cors("\"https://b.example\""), "websocket").await;
    let said = close_frame_within(&mut ws, Duration::from_secs(4)).await;
    assert_eq!(said, (1008, "tunnel_reauthorization_denied".to_owned()));
    // Its protocol no longer relayed (the rule still relays another).
    edit_ws_rule(&gw, every, "websocket").await;
    let mut ws = connect(&gw, "/ws/room", &headers).await.expect("upgraded");
    echo_once(&mut ws, "hi").await;
    edit_ws_rule(&gw, every, "chat-v2").await;
    assert!(
        ends_within(&mut ws, Duration::from_secs(4)).await.is_some(),
        "a tunnel whose protocol the rule no longer relays stayed open"
    );
}

/// Rewrites the WebSocket rule with `extra` and the upgrade `protocols`, and reloads.
async fn edit_ws_rule(gw: &TestGateway, extra: &str, protocols: &str) {
    let policy = ws_rule(extra).replace(
        "protocols: [websocket]",
        &format!("protocols: [{protocols}]"),
    );
    gw.write("policies/10-ws.yaml", policy);
    gw.app().reload().await.unwrap();
}

#[tokio::test]
async fn tunnel_is_closed_on_shutdown() {
    let upstream = WsEcho::start().await;
    let mut gw = ws_gateway(&upstream, "").await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut ws = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    echo_once(&mut ws, "hi").await;
    let app = gw.app.take().unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .expect("shutdown in time");
    assert!(drained, "the tunnel did not hold the drain to its grace");
    let said = close_frame_within(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(said, (1001, "tunnel_drained".to_owned()));
    let got = upstream.got_when(|g| !g.is_empty()).await;
    assert_eq!(got, ["close 1001 tunnel_drained"]);
}

// === continuous authorization through introspection ===

/// A loopback introspection endpoint: `{"active": true, …}` for the tokens marked active.
struct Idp {
    addr: SocketAddr,
    active: Arc<Mutex<std::collections::HashSet<String>>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    /// Set: the endpoint holds each answer 10 s (down, as seen from a client with a timeout).
    hang: Arc<std::sync::atomic::AtomicBool>,
    /// The `exp` of active tokens, when not 0 (else five minutes on).
    exp: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let active = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exp = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (a, h) = (Arc::clone(&active), Arc::clone(&hits));
        let (hg, ex) = (Arc::clone(&hang), Arc::clone(&exp));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (a, h) = (Arc::clone(&a), Arc::clone(&h));
                let (hg, ex) = (Arc::clone(&hg), Arc::clone(&ex));
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (a, h) = (Arc::clone(&a), Arc::clone(&h));
                            let (hg, ex) = (Arc::clone(&hg), Arc::clone(&ex));
                            async move {
                                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                if hg.load(std::sync::atomic::Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_secs(10)).await;
                                }
                                let exp = match ex.load(std::sync::atomic::Ordering::SeqCst) {
                                    0 => now() + 300,
                                    at => at,
                                };
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let body = String::from_utf8_lossy(&body).into_owned();
                                let token = body
                                    .split('&')
                                    .find_map(|kv| kv.strip_prefix("token="))
                                    .unwrap_or("")
                                    .to_owned();
                                // Made-up tokens are slow: they hold the caller's slots.
                                if token.starts_with("junk-") || token.starts_with("slow-") {
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                }
                                let answer = if a.lock().unwrap().contains(&token) {
                                    json!({"active": true, "sub": "bob", "aud": "api", "exp": exp})
                                } else {
                                    json!({"active": false})
                                };
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(answer.to_string())))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            active,
            hits,
            hang,
            exp,
            task,
        }
    }

    fn set_active(&self, token: &str, active: bool) {
        let mut a = self.active.lock().unwrap();
        if active {
            a.insert(token.into());
        } else {
            a.remove(token);
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway relaying WebSockets on `/ws/**` to `upstream` for tokens `idp` introspects,
/// re-checked every second; its verified-token cache long, so a re-check asks the endpoint.
/// `introspection` adds lines to the authenticator (six spaces in).
async fn rechecked_gateway(upstream: &WsEcho, idp: &Idp, introspection: &str) -> TestGateway {
    let policy = "rules:
  - name: chat
    match: {paths: [\"/ws/**\"]}
    effect: allow
    authenticators: [opaque]
    upstream: ws
    reauthorize_every: 1s
    upgrade: {protocols: [websocket]}
";
    Setup {
        upstreams: format!("  ws:\n    url: http://{}\n", upstream.addr),
        policies: vec![("10-ws.yaml".into(), policy.into())],
        files: vec![("client.secret".into(), b"s3cret".to_vec())],
        extra: format!(
            "authenticators:
  opaque:
    introspection:
      endpoint: http://{}/introspect
      client_id: gateway
      client_secret: {{file: client.secret}}
      audiences: [api]
      cache_ttl: 600s
{introspection}authn:
  cache:
    revalidate_after: 600s
",
            idp.addr
        ),
        ..Setup::default()
    }
    .start()
    .await
}

#[tokio::test]
async fn periodic_recheck_closes_the_tunnel_once_introspection_says_inactive() {
    let upstream = WsEcho::start().await;
    let idp = Idp::start().await;
    idp.set_active("opaque-ws", true);
    // A long cache: the re-check must ask the endpoint, not the cache.
    let gw = rechecked_gateway(&upstream, &idp, "").await;
    let mut ws = connect(&gw, "/ws/room", &[("authorization", "Bearer opaque-ws")])
        .await
        .expect("upgraded");
    echo_once(&mut ws, "while active").await;
    // Still active: re-checks keep it.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    echo_once(&mut ws, "still active").await;
    let checks = idp.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!(checks >= 2, "re-checks asked the endpoint: {checks}");
    idp.set_active("opaque-ws", false);
    let took = ends_within(&mut ws, Duration::from_secs(4))
        .await
        .expect("closed once revoked");
    assert!(took <= Duration::from_millis(2500), "{took:?}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("limit=\"tunnel_reauthorization_denied\"} 1"),
        "{metrics}"
    );
}

/// A credential's expiry holds while a re-check waits on an introspection endpoint that has
/// stopped answering: the tunnel is closed at `exp`, not when the call times out.
#[tokio::test]
async fn a_credential_expires_on_time_while_its_recheck_waits() {
    let upstream = WsEcho::start().await;
    let idp = Idp::start().await;
    idp.set_active("opaque-ws", true);
    let exp = now() + 3;
    idp.exp.store(exp, std::sync::atomic::Ordering::SeqCst);
    let gw = rechecked_gateway(&upstream, &idp, "      timeout: 10s\n").await;
    let mut ws = connect(&gw, "/ws/room", &[("authorization", "Bearer opaque-ws")])
        .await
        .expect("upgraded");
    echo_once(&mut ws, "while answered").await;
    // The endpoint stops answering: the next re-check waits up to its 10 s timeout.
    idp.hang.store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, reason) = close_frame_within(&mut ws, Duration::from_secs(6)).await;
    assert_eq!((code, reason.as_str()), (1008, "tunnel_credential_expired"));
    let late = now().saturating_sub(exp);
    assert!(late <= 1, "closed {late} s after exp");
}

/// A client whose token was revoked cannot keep its tunnel open by filling the introspection
/// slots with made-up tokens from its own address: re-checks take no share of the client's
/// and wait for a slot. (Shed, a re-check "could not decide" and kept the tunnel for as long
/// as the flood lasted.)
#[tokio::test]
async fn a_client_cannot_shed_its_own_recheck() {
    let upstream = WsEcho::start().await;
    let idp = Idp::start().await;
    idp.set_active("opaque-ws", true);
    let gw = rechecked_gateway(
        &upstream,
        &idp,
        "      inactive_ttl: 0s\n      max_in_flight: 1\n      max_in_flight_per_client: 1\n",
    )
    .await;
    let mut ws = connect(&gw, "/ws/room", &[("authorization", "Bearer opaque-ws")])
        .await
        .expect("upgraded");
    echo_once(&mut ws, "while active").await;
    // The flood: four callers from the tunnel's own address, each always waiting on a
    // made-up token (300 ms at the endpoint), so the one slot is never free for long.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for n in 0..4 {
        let (addr, stop) = (gw.addr(), Arc::clone(&stop));
        flood.spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let req = Request::get("/ws/x")
                    .header("authorization", format!("Bearer junk-{n}-{i}"))
                    .body(Full::default())
                    .unwrap();
                let _ = send(addr, req).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    idp.set_active("opaque-ws", false);
    let took = ends_within(&mut ws, Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join_all().await;
    let took = took.expect("closed during the flood");
    assert!(took <= Duration::from_millis(3000), "{took:?}");
}

/// Re-checks of one token due together share one introspection call: five tunnels of one
/// client, re-checked every second, ask the endpoint once a round, not five times.
/// (In the requests' slots, and ahead of them, a client with many streams re-checked often
/// would have shed everyone else's calls.)
#[tokio::test]
async fn rechecks_of_one_token_share_a_call() {
    let upstream = WsEcho::start().await;
    let idp = Idp::start().await;
    idp.set_active("slow-shared", true);
    let gw = rechecked_gateway(&upstream, &idp, "").await;
    let opened = futures_util::future::join_all(
        (0..5).map(|_| connect(&gw, "/ws/room", &[("authorization", "Bearer slow-shared")])),
    )
    .await;
    let mut tunnels: Vec<_> = opened.into_iter().map(|t| t.expect("upgraded")).collect();
    let before = idp.hits.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let rechecks = idp.hits.load(std::sync::atomic::Ordering::SeqCst) - before;
    for ws in &mut tunnels {
        echo_once(ws, "still open").await;
    }
    // Two rounds of re-checks (each 1 s after the last ended, the call taking 300 ms), one
    // call each (a round may split in two at worst); unshared, ten.
    assert!(
        (2..=4).contains(&rechecks),
        "{rechecks} calls for 10 re-checks"
    );
}

// === CORS ===

fn cors_gateway_setup() -> Setup {
    let policy = "rules:
  - name: api
    match: {paths: [\"/api/**\"]}
    effect: allow
    authenticators: [users]
    upstream: echo
    cors:
      allowed_origins: [\"https://app.example.com\"]
      allowed_methods: [GET, PUT]
      allowed_headers: [authorization, content-type]
      expose_headers: [x-request-id]
      allow_credentials: true
      max_age: 600s
";
    Setup {
        policies: vec![("10-api.yaml".into(), policy.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: hs256_users("{}"),
        ..Setup::default()
    }
}

async fn preflight(
    gw: &TestGateway,
    origin: &str,
    method: &str,
    headers: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    send(
        gw.addr(),
        Request::options("/api/items/1")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn cors_preflight_from_an_allowed_origin_is_answered_without_credential_or_upstream() {
    let gw = cors_gateway_setup().start().await;
    let (status, h, _) = preflight(
        &gw,
        "https://app.example.com",
        "PUT",
        "Authorization, Content-Type",
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT, HEAD");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "origin");
    assert_eq!(gw.echo.count(), 0, "a preflight never reaches the upstream");
}

#[tokio::test]
async fn cors_preflight_from_another_origin_method_or_header_gets_no_allow_origin() {
    let gw = cors_gateway_setup().start().await;
    for (origin, method, headers, reason) in [
        (
            "https://evil.example.com",
            "PUT",
            "authorization",
            "cors_origin_not_allowed",
        ),
        (
            "https://app.example.com.evil.com",
            "GET",
            "",
            "cors_origin_not_allowed",
        ),
        (
            "https://app.example.com",
            "DELETE",
            "",
            "cors_method_not_allowed",
        ),
        (
            "https://app.example.com",
            "GET",
            "x-admin",
            "cors_header_not_allowed",
        ),
    ] {
        let (status, h, body) = preflight(&gw, origin, method, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin} {method} {headers}");
        assert!(!h.contains_key("access-control-allow-origin"), "{origin}");
        assert!(String::from_utf8_lossy(&body).contains(reason), "{reason}");
    }
    // Two `Origin` lines, an allowed one first: no browser sends them, and which one a
    // reader takes is a guess.
    let (status, h, body) = send(
        gw.addr(),
        Request::options("/api/items/1")
            .header("origin", "https://app.example.com")
            .header("origin", "https://evil.example.com")
            .header("access-control-request-method", "GET")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!h.contains_key("access-control-allow-origin"));
    assert!(String::from_utf8_lossy(&body).contains("cors_origin_not_allowed"));
    // Two `Access-Control-Request-Method` lines, an allowed one first: no preflight (the
    // first decided; Envoy joins them into `GET,DELETE`, no method), so an `OPTIONS` that
    // needs its credential like any request.
    let (status, h, _) = send(
        gw.addr(),
        Request::options("/api/items/1")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .header("access-control-request-method", "DELETE")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!h.contains_key("access-control-allow-methods"));
    // Two `Access-Control-Request-Headers` lines alike.
    let (status, h, _) = send(
        gw.addr(),
        Request::options("/api/items/1")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .header("access-control-request-headers", "x-admin")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!h.contains_key("access-control-allow-headers"));
    assert_eq!(gw.echo.count(), 0);
}

#[tokio::test]
async fn cors_is_no_bypass_a_real_request_still_needs_its_credential() {
    let gw = cors_gateway_setup().start().await;
    // The real request (not a preflight: no Access-Control-Request-Method), as OPTIONS too.
    for method in ["GET", "OPTIONS"] {
        let (status, h, _) = send(
            gw.addr(),
            Request::builder()
                .method(method)
                .uri("/api/items/1")
                .header("origin", "https://app.example.com")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method}");
        // The browser may read the denial.
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    }
    assert_eq!(gw.echo.count(), 0);
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let (status, h, _) = send(
        gw.addr(),
        Request::get("/api/items/1")
            .header("origin", "https://app.example.com")
            .header("authorization", &auth)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-request-id");
    assert_eq!(h["vary"], "origin");
    // Another origin: the response, but nothing that lets its script read it.
    let (status, h, _) = send(
        gw.addr(),
        Request::get("/api/items/1")
            .header("origin", "https://evil.example.com")
            .header("authorization", &auth)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!h.contains_key("access-control-allow-origin"));
    assert!(!h.contains_key("access-control-allow-credentials"));
}

/// An answer on a CORS rule to a request without `Origin` is cached like any other: it says
/// that it varies with `Origin`, and an upstream's own `Access-Control-Allow-Origin: *`
/// never passes the rule's word, with or without `Origin`.
#[tokio::test]
async fn cors_rule_answers_without_origin_vary_and_carry_no_upstream_acao() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let resp = http::Response::builder()
                        .header("access-control-allow-origin", "*")
                        .header("access-control-allow-credentials", "true")
                        .header("access-control-expose-headers", "x-secret")
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    let mut setup = cors_gateway_setup();
    setup.upstreams = format!("  open:\n    url: http://{addr}\n");
    setup.policies[0].1 = setup.policies[0]
        .1
        .replace("upstream: echo", "upstream: open");
    let gw = setup.start().await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    // Two `Origin` fields (no browser sends that), the allowed one first: none is echoed.
    let twice: &[&str] = &["https://app.example.com", "https://evil.example.com"];
    for (origin, auth) in [
        (&[][..], Some(auth.as_str())),
        (&[][..], None),
        (&["https://evil.example.com"][..], Some(auth.as_str())),
        (twice, Some(auth.as_str())),
    ] {
        let mut req = Request::get("/api/items/1");
        for o in origin {
            req = req.header("origin", *o);
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, h, _) = send(gw.addr(), req.body(Full::default()).unwrap()).await;
        let expected = if auth.is_some() { 200 } else { 401 };
        assert_eq!(status.as_u16(), expected, "{origin:?}");
        assert_eq!(
            h.get("vary").map(|v| v.to_str().unwrap()),
            Some("origin"),
            "{origin:?}: {h:?}"
        );
        assert!(
            !h.contains_key("access-control-allow-origin"),
            "{origin:?}: {h:?}"
        );
        assert!(
            !h.contains_key("access-control-allow-credentials"),
            "{origin:?}: {h:?}"
        );
        assert!(
            !h.contains_key("access-control-expose-headers"),
            "{origin:?}: {h:?}"
        );
    }
    server.abort();
}

// === trace context ===

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn parse_traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1].len(), 32);
    assert_eq!(parts[2].len(), 16);
    assert!(
        v.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{v}"
    );
    assert_ne!(parts[1], "0".repeat(32));
    assert_ne!(parts[2], "0".repeat(16));
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn traceparent_is_propagated_with_a_new_span_generated_when_absent_and_replaced_when_malformed()
 {
    let gw = Setup::default().start().await;
    // Propagated: the same trace, a new span, the flags and the state kept.
    let (status, _, _) = send(
        gw.addr(),
        Request::get("/a")
            .header("traceparent", TRACEPARENT)
            .header("tracestate", "congo=t61rcWkgMzE")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (trace, span, flags) = parse_traceparent(&echoed_header(&gw.echo, "traceparent").unwrap());
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(span, "00f067aa0ba902b7");
    assert_eq!(flags, "01");
    assert_eq!(
        echoed_header(&gw.echo, "tracestate").unwrap(),
        "congo=t61rcWkgMzE"
    );

    // Absent: a new trace.
    get(gw.addr(), "/b").await;
    let (first, _, _) = parse_traceparent(&echoed_header(&gw.echo, "traceparent").unwrap());
    get(gw.addr(), "/c").await;
    let (second, _, _) = parse_traceparent(&echoed_header(&gw.echo, "traceparent").unwrap());
    assert_ne!(
        first, second,
        "each request without one starts its own trace"
    );

    // Malformed (uppercase hex, all-zero ids, bad version, wrong length): replaced, and its
    // state dropped with it.
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    ] {
        send(
            gw.addr(),
            Request::get("/d")
                .header("traceparent", bad)
                .header("tracestate", "congo=t61rcWkgMzE")
                .body(Full::default())
                .unwrap(),
        )
        .await;
        let (trace, _, _) = parse_traceparent(&echoed_header(&gw.echo, "traceparent").unwrap());
        assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
        assert!(echoed_header(&gw.echo, "tracestate").is_none(), "{bad}");
    }
}

// === OTLP ===

/// A collector accepting `POST /v1/traces` and keeping each body.
struct Collector {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<(String, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = Arc::clone(&bodies);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let b = Arc::clone(&b);
                            async move {
                                let path = req.uri().path().to_owned();
                                let ct = req
                                    .headers()
                                    .get("content-type")
                                    .map(|v| v.to_str().unwrap().to_owned())
                                    .unwrap_or_default();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let status = if path == "/v1/traces" { 200 } else { 404 };
                                b.lock().unwrap().push((ct, body));
                                // An empty ExportTraceServiceResponse: full success.
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/x-protobuf")
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, bodies, task }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<OtlpSpan> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        let mut out = Vec::new();
        for (_, body) in self.bodies.lock().unwrap().iter() {
            let export = ExportTraceServiceRequest::decode(body.clone()).unwrap();
            for rs in export.resource_spans {
                let resource = rs.resource.unwrap();
                let name = resource
                    .attributes
                    .iter()
                    .find(|a| a.key == "service.name")
                    .and_then(|a| string_of(a.value.as_ref()));
                assert_eq!(name, Some("edge-test"));
                for ss in rs.scope_spans {
                    out.extend(ss.spans);
                }
            }
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type OtlpSpan = opentelemetry_proto::tonic::trace::v1::Span;

fn string_of(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<&str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attribute<'s>(span: &'s OtlpSpan, key: &str) -> Option<&'s str> {
    string_of(
        span.attributes
            .iter()
            .find(|a| a.key == key)?
            .value
            .as_ref(),
    )
}

fn int_attribute(span: &OtlpSpan, key: &str) -> Option<i64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?
    {
        Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A gateway that allows everything but `/admin/**` and exports its spans to `collector`,
/// batched every `interval`.
fn traced(collector: &Collector, interval: &str) -> Setup {
    Setup {
        policies: vec![(
            "10-all.yaml".into(),
            crate::support::ALLOW_ALL_BUT_ADMIN.into(),
        )],
        extra: format!(
            "tracing:\n  otlp:\n    endpoint: http://{}/v1/traces\n    service_name: edge-test\n    interval: {interval}\n",
            collector.addr
        ),
        ..Setup::default()
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_with_decision_reason_rule_and_door() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    let collector = Collector::start().await;
    let gw = traced(&collector, "100ms").start().await;
    let (status, _, _) = send(
        gw.addr(),
        Request::get("/admin/users-secret-path")
            .header("traceparent", TRACEPARENT)
            .header("authorization", "Bearer not-a-real-token-in-spans")
            .header("x-private", "header-value-never-exported")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(get(gw.addr(), "/open").await.0, StatusCode::OK);
    let found = crate::support::eventually(Duration::from_secs(5), || async {
        collector.spans().len() >= 2
    })
    .await;
    assert!(found, "spans exported");
    for (content_type, body) in collector.bodies.lock().unwrap().iter() {
        assert_eq!(content_type, "application/x-protobuf");
        // Strings travel verbatim in protobuf: none of the request's own may be there.
        for secret in [
            "users-secret-path",
            "not-a-real-token-in-spans",
            "header-value-never-exported",
        ] {
            assert!(
                !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} exported"
            );
        }
    }
    let spans = collector.spans();
    let denied = spans
        .iter()
        .find(|s| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the denied request's span, in the client's trace");
    assert_eq!(hex(&denied.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(denied.span_id.len(), 8);
    assert_ne!(hex(&denied.span_id), "00f067aa0ba902b7");
    assert_eq!(denied.kind, SpanKind::Server as i32);
    assert!(denied.end_time_unix_nano >= denied.start_time_unix_nano);
    assert_eq!(attribute(denied, "portcullis.door"), Some("proxy"));
    assert_eq!(attribute(denied, "portcullis.decision"), Some("deny"));
    assert_eq!(attribute(denied, "portcullis.reason"), Some("forbidden"));
    assert_eq!(attribute(denied, "portcullis.rule"), Some("admin"));
    assert_eq!(
        int_attribute(denied, "http.response.status_code"),
        Some(403)
    );
    let allowed = spans
        .iter()
        .find(|s| attribute(s, "portcullis.decision") == Some("allow"))
        .expect("the allowed request's span");
    assert_eq!(attribute(allowed, "portcullis.rule"), Some("all"));
    assert!(allowed.parent_span_id.is_empty());
    assert_eq!(allowed.trace_id.len(), 16);
    // (Counted for the process: `cargo test` runs the other gateways in it too.)
    let (_, metrics) = gw.admin_get("/metrics").await;
    let exported = metric(
        &metrics,
        "portcullis_otlp_spans_total{outcome=\"exported\"}",
    );
    assert!(exported >= 2, "{metrics}");
}

/// The value of the sample `name` (with its labels) in a Prometheus exposition.
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
}

/// A collector that refuses every batch (404: a wrong endpoint path) costs spans, not
/// requests, and says so: the spans are counted as failed on `/metrics`.
#[tokio::test]
async fn spans_a_collector_refuses_are_counted_as_failed() {
    let collector = Collector::start().await;
    let mut setup = traced(&collector, "100ms");
    setup.extra = setup.extra.replace("/v1/traces", "/v1/wrong");
    let gw = setup.start().await;
    for _ in 0..3 {
        assert_eq!(get(gw.addr(), "/open").await.0, StatusCode::OK);
    }
    // (Counted for the process: `cargo test` runs the other gateways in it too, so at least
    // these three.)
    let mut failed = 0;
    for _ in 0..100 {
        let (_, metrics) = gw.admin_get("/metrics").await;
        failed = metric(&metrics, "portcullis_otlp_spans_total{outcome=\"failed\"}");
        if failed >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(failed >= 3, "the refused batch's spans counted: {failed}");
    assert!(
        !collector.bodies.lock().unwrap().is_empty(),
        "the collector was asked"
    );
}

/// A decision door records its span in the peer's trace (a child of the span its
/// `traceparent` names, sampled as it says), or in a trace of its own when the peer sent
/// none; the door is an attribute, and the answer hands the peer no trace headers: the
/// peer owns the request it forwards.
#[tokio::test]
async fn decision_doors_record_spans_in_the_peers_trace() {
    let collector = Collector::start().await;
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: doors\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n".into(),
        ..traced(&collector, "100ms")
    }
    .start()
    .await;
    let ask = |uri: &'static str, traceparent: Option<&'static str>| {
        let mut req = Request::get("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "app.test")
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-for", "127.0.0.1");
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        send(gw.addr_of("doors"), req.body(Full::default()).unwrap())
    };
    let (status, h, _) = ask("/open", Some(TRACEPARENT)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        h.get("traceparent").is_none(),
        "the peer's trace is left alone"
    );
    assert_eq!(ask("/admin/x", None).await.0, StatusCode::FORBIDDEN);
    // Not sampled by the peer: no span.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    assert_eq!(ask("/open", Some(unsampled)).await.0, StatusCode::OK);
    let found = crate::support::eventually(Duration::from_secs(5), || async {
        collector.spans().len() >= 2
    })
    .await;
    assert!(found, "spans exported");
    let spans = collector.spans();
    let allowed = spans
        .iter()
        .find(|s| hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the allowed request's span, in the peer's trace");
    assert_eq!(hex(&allowed.parent_span_id), "00f067aa0ba902b7");
    assert_ne!(hex(&allowed.span_id), "00f067aa0ba902b7");
    assert_eq!(attribute(allowed, "portcullis.door"), Some("forward-auth"));
    assert_eq!(attribute(allowed, "portcullis.decision"), Some("allow"));
    assert_eq!(attribute(allowed, "portcullis.rule"), Some("all"));
    assert_eq!(attribute(allowed, "http.request.method"), Some("GET"));
    let denied = spans
        .iter()
        .find(|s| attribute(s, "portcullis.decision") == Some("deny"))
        .expect("the denied request's span");
    assert!(denied.parent_span_id.is_empty(), "a trace of its own");
    assert_eq!(attribute(denied, "portcullis.door"), Some("forward-auth"));
    assert_eq!(attribute(denied, "portcullis.reason"), Some("forbidden"));
    assert_eq!(
        int_attribute(denied, "http.response.status_code"),
        Some(403)
    );
    assert!(
        !spans
            .iter()
            .any(|s| hex(&s.trace_id) == "11111111111111111111111111111111"),
        "an unsampled request is not recorded"
    );
    assert_eq!(spans.len(), 2, "{spans:?}");
}

#[tokio::test]
async fn queued_spans_are_sent_on_graceful_shutdown() {
    let collector = Collector::start().await;
    let mut gw = traced(&collector, "1h").start().await;
    assert_eq!(get(gw.addr(), "/open").await.0, StatusCode::OK);
    // Batches go out hourly: the span waits in the queue.
    assert!(collector.spans().is_empty());
    let app = gw.app.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), app.shutdown())
        .await
        .expect("shutdown in time");
    let spans = collector.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(attribute(&spans[0], "portcullis.decision"), Some("allow"));
}

// === long responses ===

/// An upstream answering every request with an endless event stream: a chunk every 100 ms.
async fn event_stream_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        // A gRPC client gets each event as one length-prefixed message.
                        let grpc = req.headers().get("content-type")
                            == Some(&http::HeaderValue::from_static("application/grpc"));
                        let events = futures_util::stream::unfold(0u32, move |i| async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let event = format!("data: {i}\n\n");
                            let event = if grpc {
                                let mut m = vec![0];
                                m.extend_from_slice(&(event.len() as u32).to_be_bytes());
                                m.extend_from_slice(event.as_bytes());
                                Bytes::from(m)
                            } else {
                                Bytes::from(event)
                            };
                            Some((Ok::<_, std::convert::Infallible>(Frame::data(event)), i + 1))
                        });
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(StreamBody::new(events))
                                .unwrap(),
                        )
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A gateway in front of `events` ([`event_stream_upstream`]): `/events/**` re-checked every
/// second, `/plain/**` not, both for the `users` authenticator.
async fn events_gateway(events: SocketAddr) -> TestGateway {
    let policy = "rules:
  - name: events
    match: {paths: [\"/events/**\"]}
    effect: allow
    authenticators: [users]
    upstream: events
    reauthorize_every: 1s
  - name: plain
    match: {paths: [\"/plain/**\"]}
    effect: allow
    authenticators: [users]
    upstream: events
";
    Setup {
        upstreams: format!("  events:\n    url: http://{events}\n    response_timeout: 2s\n"),
        policies: vec![("10-events.yaml".into(), policy.into())],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: hs256_users("{}"),
        ..Setup::default()
    }
    .start()
    .await
}

/// Opens `/events/feed` and `/plain/feed` on one HTTP/2 connection to `gw`, with a token
/// living 2 s (as gRPC calls when `grpc`); returns the connection and each feed's body once
/// its head said 200.
async fn two_feeds(
    gw: &TestGateway,
    grpc: bool,
) -> (
    h2::client::SendRequest<Bytes>,
    Vec<(&'static str, h2::RecvStream)>,
) {
    let auth = bearer(&hs256_token(SECRET, &json!({"exp": now() + 2})));
    let tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for path in ["/events/feed", "/plain/feed"] {
        let mut req = Request::get(format!("http://{}{path}", gw.addr()))
            .header("authorization", &auth)
            .body(())
            .unwrap();
        if grpc {
            *req.method_mut() = http::Method::POST;
            let h = req.headers_mut();
            h.insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            h.insert("te", http::HeaderValue::from_static("trailers"));
        }
        send = send.ready().await.unwrap();
        streams.push((path, send.send_request(req, true).unwrap().0));
    }
    let mut bodies = Vec::new();
    for (path, resp) in streams {
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("response head")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        bodies.push((path, resp.into_body()));
    }
    (send, bodies)
}

/// Over HTTP/2, a stream the gateway cuts on purpose (its credential expired, with or without
/// re-checks) is reset with `CANCEL`, as a slow reader's is, never `INTERNAL_ERROR` (which
/// says the gateway failed); the connection and its other streams go on.
#[tokio::test]
async fn an_h2_stream_cut_by_its_credential_is_reset_with_cancel() {
    let (events, task) = event_stream_upstream().await;
    let gw = events_gateway(events).await;
    let (mut send, feeds) = two_feeds(&gw, false).await;
    for (path, mut body) in feeds {
        let mut chunks = 0;
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(6), body.data())
                .await
                .expect("cut within its credential's life")
            {
                Some(Ok(_)) => chunks += 1,
                Some(Err(e)) => break e,
                None => panic!("{path}: ended as if complete"),
            }
        };
        assert!(chunks >= 3, "{path}: it streamed until then: {chunks}");
        assert_eq!(end.reason(), Some(h2::Reason::CANCEL), "{path}: {end:?}");
    }
    // The connection goes on.
    let req = Request::get(format!("http://{}/events/again", gw.addr()))
        .body(())
        .unwrap();
    send = send.ready().await.unwrap();
    let resp = send.send_request(req, true).unwrap().0.await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    task.abort();
}

/// A gRPC client's stream cut for its credential (with or without re-checks) ends with
/// `grpc-status: 16` and the reason in trailers, not a reset the client reads as CANCELLED:
/// it can tell an expired token, refresh it and call again.
#[tokio::test]
async fn a_grpc_stream_cut_by_its_credential_ends_with_its_status() {
    let (events, task) = event_stream_upstream().await;
    let gw = events_gateway(events).await;
    let (_send, feeds) = two_feeds(&gw, true).await;
    for (path, mut body) in feeds {
        let mut chunks = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(6), body.data())
                .await
                .expect("cut within its credential's life")
            {
                Some(Ok(_)) => chunks += 1,
                Some(Err(e)) => panic!("{path}: reset ({e:?}), not ended with a status"),
                None => break,
            }
        }
        assert!(chunks >= 3, "{path}: it streamed until then: {chunks}");
        let trailers = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers["grpc-status"], "16", "{path}");
        assert_eq!(
            trailers["grpc-message"], "stream_credential_expired",
            "{path}"
        );
    }
    task.abort();
}

#[tokio::test]
async fn a_long_response_is_cut_when_its_token_expires_with_or_without_rechecks() {
    let (events, task) = event_stream_upstream().await;
    let gw = events_gateway(events).await;
    let auth = bearer(&hs256_token(SECRET, &json!({"exp": now() + 3})));
    // How long the stream runs, at most `within`, and whether it ended in an error.
    let stream_for = |path: &'static str, within: Duration| {
        let auth = auth.clone();
        let addr = gw.addr();
        async move {
            let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let req = Request::get(format!("http://{addr}{path}"))
                .header("authorization", &auth)
                .body(Full::default())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let (mut chunks, start) = (0, std::time::Instant::now());
            let deadline = tokio::time::Instant::now() + within;
            loop {
                match tokio::time::timeout_at(deadline, body.frame()).await {
                    Err(_) => return (chunks, start.elapsed(), false),
                    Ok(Some(Ok(_))) => chunks += 1,
                    Ok(Some(Err(_)) | None) => return (chunks, start.elapsed(), true),
                }
            }
        }
    };
    let (watched, plain) = tokio::join!(
        stream_for("/events/feed", Duration::from_secs(6)),
        stream_for("/plain/feed", Duration::from_secs(5)),
    );
    let (chunks, took, ended) = watched;
    assert!(ended, "cut at expiry");
    // Kept by the re-check at 1 s (the token still valid), cut once it expired: by the
    // expiry timer or by the re-check that finds it expired, whichever comes first.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took <= Duration::from_secs(5), "{took:?}");
    assert!(chunks >= 10, "it streamed until then: {chunks}");
    // A rule that does not re-check cuts its streams at the credential's expiry too (issue
    // 14: a long-lived stream is closed when its credential expires).
    let (chunks, took, ended) = plain;
    assert!(
        ended,
        "the stream of a rule without reauthorize_every was cut at expiry"
    );
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took <= Duration::from_secs(5), "{took:?}");
    assert!(chunks >= 10, "it streamed until then: {chunks}");
    let (_, metrics) = gw.admin_get("/metrics").await;
    let count = |limit: &str| {
        metrics
            .lines()
            .find(|l| l.contains(&format!("limit=\"{limit}\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        count("stream_credential_expired") + count("stream_reauthorization_denied"),
        2,
        "{metrics}"
    );
    task.abort();
}

/// `check` warns when a rule's CORS allows a method its `match.methods` never matches (GET
/// brings HEAD), naming the field; a method the rule matches is not said.
#[test]
fn cors_methods_the_rule_never_matches_warn() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - name: app\n    match: {paths: [\"/api/**\"], methods: [GET, POST]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n    cors:\n      allowed_origins: [\"https://app.example.com\"]\n      allowed_methods: [GET, HEAD, DELETE]\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "a warning, not an error: {text}");
    assert!(
        text.contains("p.yaml:9:36: warning: rules[0].cors.allowed_methods[2]: `DELETE` is not among the rule's `match.methods`"),
        "{text}"
    );
    assert!(
        !text.contains("allowed_methods[0]") && !text.contains("allowed_methods[1]"),
        "{text}"
    );
}

/// A tunnel holds one of its endpoint's `max_connections` while it lives: a second WebSocket
/// past the cap is refused (503 `upstream_busy`) after the connect timeout, and opens once the
/// first has closed.
#[tokio::test]
async fn a_tunnel_counts_against_max_connections() {
    let upstream = WsEcho::start().await;
    let gw = Setup {
        upstreams: format!(
            "  ws:\n    url: http://{}\n    max_connections: 1\n    connect_timeout: 300ms\n",
            upstream.addr
        ),
        ..ws_setup(&upstream, "")
    }
    .start()
    .await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let mut first = connect(&gw, "/ws/a", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    echo_once(&mut first, "one").await;
    match connect(&gw, "/ws/b", &[("authorization", &auth)]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("upstream_busy"), "{body}");
        }
        other => panic!(
            "a second tunnel past the cap: {:?}",
            other.map(|_| "opened")
        ),
    }
    assert_eq!(upstream.handshakes(), 1);
    first.close(None).await.unwrap();
    drop(first);
    let reopened = crate::support::eventually(Duration::from_secs(5), || async {
        connect(&gw, "/ws/c", &[("authorization", &auth)])
            .await
            .is_ok()
    })
    .await;
    assert!(reopened, "the slot came back when the tunnel closed");
}

/// A tunnel on a rule with a delegate and `reauthorize_every` is closed once the delegate's
/// answer turns to deny (access revoked there), not only when the token does; the re-check
/// asks the delegate afresh, past its answer cache.
#[tokio::test]
async fn periodic_recheck_closes_the_tunnel_once_the_delegate_denies() {
    let opa = crate::delegate::Opa::default();
    let opa_addr = crate::delegate::serve(opa.clone()).await;
    let upstream = WsEcho::start().await;
    let gw = Setup {
        extra: format!(
            "{}delegates:\n  opa:\n    grpc: http://{opa_addr}\n    timeout: 1s\n    cache_ttl: 60s\n    failure_mode: deny\n",
            hs256_users("{}")
        ),
        ..ws_setup(&upstream, "    reauthorize_every: 1s\n    delegate: opa\n")
    }
    .start()
    .await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let headers = [("authorization", auth.as_str()), ("x-delegate-says", "yes")];
    let mut ws = connect(&gw, "/ws/room", &headers).await.expect("upgraded");
    echo_once(&mut ws, "hi").await;
    // Still allowed: re-checks keep it.
    assert_eq!(
        ends_within(&mut ws, Duration::from_millis(2500)).await,
        None
    );
    echo_once(&mut ws, "still").await;
    opa.revoked.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        ends_within(&mut ws, Duration::from_secs(4)).await.is_some(),
        "a tunnel the delegate now denies stayed open"
    );
    // A new one is refused outright.
    match connect(&gw, "/ws/room", &headers).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        }
        other => panic!(
            "a tunnel the delegate denies: {:?}",
            other.map(|_| "opened")
        ),
    }
}

/// Reads a request head off `conn`; false if it closed first.
async fn read_head(conn: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
            return false;
        }
        head.push(byte[0]);
    }
    true
}

/// An upstream that declines every WebSocket upgrade with a 200 whose chunked body streams
/// for `secs` seconds (the upgrade ignored), one request per connection.
async fn declining_upstream(secs: u64) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut conn).await {
                    return;
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                for _ in 0..secs * 10 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if conn.write_all(b"1\r\nx\r\n").await.is_err() {
                        return;
                    }
                }
                let _ = conn.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

/// The status line of an upgrade request sent through the gateway on a connection kept open
/// (returned with it, so its answer's body may go on streaming).
async fn upgrade_status(gw: &TestGateway, auth: &str) -> (String, TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    let req = format!(
        "GET /ws/room HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    (text, tcp)
}

/// An upgrade spends its rule's limit and, as every allowed answer, its `101` says what is
/// left; the next request by the same principal sees the budget it spent.
#[tokio::test]
async fn an_upgrade_is_told_what_its_limit_left() {
    let upstream = WsEcho::start().await;
    let mut setup = ws_setup(&upstream, "    rate_limit: per_user\n");
    setup
        .extra
        .push_str("rate_limits:\n  per_user: {key: principal, requests: 3, per: 1h}\n");
    let gw = setup.start().await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    for left in ["2", "1"] {
        let (head, _tcp) = upgrade_status(&gw, &auth).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("ratelimit-limit: 3\r\n"), "{head}");
        assert!(
            lower.contains(&format!("ratelimit-remaining: {left}\r\n")),
            "{head}"
        );
        assert!(lower.contains("ratelimit-reset: "), "{head}");
    }
    let (head, _tcp) = upgrade_status(&gw, &auth).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("ratelimit-remaining: 0\r\n"),
        "{head}"
    );
    let (head, _tcp) = upgrade_status(&gw, &auth).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
}

/// An upstream answering `101 Upgrade: websocket` without `Sec-WebSocket-Accept` (a status an
/// attacker could reflect, say) opens no tunnel: the client gets 502, and the request the
/// client sent after the handshake never reaches the upstream undecided. (It opened one, and
/// a pipelined `GET /admin` with a spoofed identity reached the upstream.) One answering with
/// the right accept for the client's key still opens it.
#[tokio::test]
async fn a_101_without_the_websocket_accept_opens_no_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    // `websocket/13` too: a rule relaying `websocket` allows it, and it asked for no key.
    for protocol in ["websocket", "websocket/13"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
        let upstream_seen = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = Arc::clone(&upstream_seen);
                tokio::spawn(async move {
                    if !read_head(&mut conn).await {
                        return;
                    }
                    let _ = conn
                        .write_all(format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n").as_bytes())
                        .await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        let gw = ws_setup_at(addr, "").start().await;
        let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
        let req = format!(
            "GET /ws/room HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: gw\r\nx-user-id: root\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 502"), "{protocol}: {text}");
        assert!(text.contains("upstream_upgrade_mismatch"), "{text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        assert!(
            !seen.contains("/admin/secret"),
            "{protocol}: reached the upstream: {seen}"
        );
        server.abort();
    }
    // A real WebSocket upstream (its accept matches the client's key) still opens.
    let ws = WsEcho::start().await;
    let gw = ws_setup_at(ws.addr, "").start().await;
    let mut client = connect(&gw, "/ws/room", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    echo_once(&mut client, "through").await;
}

/// An HTTP/1.1 WebSocket handshake goes upstream with the client's own key, so the accept
/// the client gets is the one it can check: a key sent twice alike is one key; none, or two
/// that differ, is refused (400 `invalid_websocket_key`) before the upstream is asked.
#[tokio::test]
async fn websocket_keys_are_the_clients_own() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = WsEcho::start().await;
    let gw = ws_gateway(&upstream, "").await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let handshake = |keys: &[&str]| {
        let keys: String = keys
            .iter()
            .map(|k| format!("Sec-WebSocket-Key: {k}\r\n"))
            .collect();
        format!(
            "GET /ws/room HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{keys}\r\n"
        )
    };
    let answer = |req: String| {
        let addr = gw.addr();
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    // RFC 6455's example: this key's accept is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
    for keys in [vec![key], vec![key, key]] {
        let text = answer(handshake(&keys)).await;
        assert!(text.starts_with("HTTP/1.1 101"), "{keys:?}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{keys:?}: {text}"
        );
    }
    let handshakes = upstream.handshakes();
    for keys in [vec![], vec![key, "AAAAAAAAAAAAAAAAAAAAAA=="]] {
        let text = answer(handshake(&keys)).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{keys:?}: {text}");
        assert!(text.contains("invalid_websocket_key"), "{keys:?}: {text}");
    }
    assert_eq!(
        upstream.handshakes(),
        handshakes,
        "refused before the upstream"
    );
}

/// A declined upgrade's answer is an ordinary response: a body that stalls is cut at the
/// rule's idle timeout, and counted.
#[tokio::test]
async fn a_declined_upgrades_stalled_answer_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut conn).await {
                    return;
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n")
                    .await;
                // Then nothing, with the connection open.
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let gw = ws_setup_at(addr, "    timeouts: {idle: 300ms}\n")
        .start()
        .await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let started = std::time::Instant::now();
    let (first, mut tcp) = upgrade_status(&gw, &auth).await;
    assert!(first.starts_with("HTTP/1.1 426"), "{first}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the stalled answer was not cut"
    );
    assert_eq!(gw.idle_cuts().await, 1);
    server.abort();
}

/// A declined upgrade's answer (a long stream the upstream gave instead of switching) ends
/// with its credential, as the same request without `Upgrade` does, whether the rule
/// re-checks or not. It streamed on past the token's expiry and every re-check.
#[tokio::test]
async fn a_declined_upgrades_answer_ends_with_its_credential() {
    use tokio::io::AsyncReadExt;
    let addr = declining_upstream(8).await;
    let auth = bearer(&hs256_token(SECRET, &json!({"exp": now() + 2})));
    let run = |rule_extra: &'static str| {
        let auth = auth.clone();
        async move {
            let gw = ws_setup_at(addr, rule_extra).start().await;
            let started = std::time::Instant::now();
            let (first, mut tcp) = upgrade_status(&gw, &auth).await;
            assert!(first.starts_with("HTTP/1.1 200"), "{rule_extra}: {first}");
            let mut rest = first.into_bytes();
            let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&rest).into_owned();
            assert!(
                took < Duration::from_secs(6),
                "{rule_extra}: not cut: {took:?}"
            );
            assert!(
                !text.ends_with("0\r\n\r\n"),
                "{rule_extra}: streamed whole: {text}"
            );
            assert!(
                text.contains("\r\nx\r\n"),
                "{rule_extra}: streamed until then: {text}"
            );
            took
        }
    };
    let (plain, rechecked) = tokio::join!(run(""), run("    reauthorize_every: 1s\n"));
    assert!(plain >= Duration::from_millis(900), "{plain:?}");
    assert!(rechecked >= Duration::from_millis(900), "{rechecked:?}");
}

/// An answer whose head comes after the credential expired (a slow upstream: here the clock
/// moves two minutes on while it works), on a rule that re-checks and on one that does not,
/// over HTTP/1.1 and HTTP/2, goes out whole or not at all: a short one (16 bytes with a
/// length, or chunked) is the upstream's answer to what was authorized and goes out whole;
/// a long one (100 KiB) or a slow one (its second chunk 3 s later) has sent nothing yet and
/// is refused, 401 `stream_credential_expired`, logged and counted as such. (Each was cut
/// at its first frame: HTTP/1.1 clients got no status line at all, HTTP/2 ones a 200 and a
/// reset, and the access log said 200.)
#[tokio::test]
async fn an_answer_that_comes_after_the_credential_expired_goes_out_whole_or_not_at_all() {
    use http_body_util::StreamBody;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock = portcullis::clock::Clock::manual_now();
    let moved = clock.clone();
    type Chunks = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let moved = moved.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let moved = moved.clone();
                async move {
                    moved.advance(Duration::from_secs(120));
                    let path = req.uri().path().to_owned();
                    let chunks = |slow: bool| {
                        let s = futures_util::stream::unfold(0, move |i| async move {
                            match i {
                                0 => Some((
                                    Ok(hyper::body::Frame::data(Bytes::from_static(b"the whole "))),
                                    1,
                                )),
                                1 => {
                                    if slow {
                                        tokio::time::sleep(Duration::from_secs(3)).await;
                                    }
                                    Some((
                                        Ok(hyper::body::Frame::data(Bytes::from_static(b"answer"))),
                                        2,
                                    ))
                                }
                                _ => None,
                            }
                        });
                        Chunks::new(StreamBody::new(s))
                    };
                    let body: Chunks = if path.ends_with("/long") {
                        Chunks::new(Full::new(Bytes::from(vec![b'x'; 100 * 1024])))
                    } else if path.ends_with("/chunked") {
                        chunks(false)
                    } else if path.ends_with("/slow") {
                        chunks(true)
                    } else {
                        Chunks::new(Full::new(Bytes::from_static(b"the whole answer")))
                    };
                    Ok::<_, std::convert::Infallible>(http::Response::new(body))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    let mut setup = ws_setup_at(addr, "    reauthorize_every: 1s\n");
    setup.clock = clock.clone();
    let gw = setup.start().await;
    let mut refused = 0;
    for rule in ["/plain", "/ws"] {
        for kind in ["short", "chunked", "long", "slow"] {
            let path = format!("{rule}/{kind}");
            let whole = matches!(kind, "short" | "chunked");
            // A fresh token for each: the clock has moved on.
            let auth = bearer(&hs256_token(
                SECRET,
                &json!({"exp": clock.unix_secs() + 60}),
            ));
            let r = crate::support::raw(
                gw.addr(),
                format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            if whole {
                assert_eq!(r.status, 200, "{path}: {}", r.head);
                assert_eq!(r.body, "the whole answer", "{path}");
            } else {
                assert_eq!(r.status, 401, "{path}: {}", r.head);
                assert!(
                    r.body.contains("stream_credential_expired"),
                    "{path}: {}",
                    r.body
                );
                refused += 1;
            }
            if kind == "slow" {
                // Once over HTTP/1.1 is enough for the slow one.
                continue;
            }
            // HTTP/2.
            let auth = bearer(&hs256_token(
                SECRET,
                &json!({"exp": clock.unix_secs() + 60}),
            ));
            let mut h2 = crate::support::h2c(gw.addr()).await;
            let resp = h2
                .send_request(
                    Request::get(format!("http://gw{path}"))
                        .header("authorization", &auth)
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("a whole body")
                .to_bytes();
            let body = String::from_utf8_lossy(&body);
            if whole {
                assert_eq!(status, StatusCode::OK, "{path} over HTTP/2");
                assert_eq!(body, "the whole answer", "{path} over HTTP/2");
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} over HTTP/2");
                assert!(body.contains("stream_credential_expired"), "{path}");
                refused += 1;
            }
        }
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    let counted = metrics
        .lines()
        .find(|l| l.contains("limit=\"stream_credential_expired\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u32>().ok());
    assert_eq!(counted, Some(refused), "{metrics}");
    server.abort();
}

/// An upload (a chunked POST still streaming) ends with its credential, as a long response
/// does, on a rule that re-checks and on one that does not: the upstream stops receiving it
/// and the client is answered 401 `stream_credential_expired`. It reached the upstream whole,
/// long after its token expired.
#[tokio::test]
async fn an_upload_ends_with_its_credential() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&received);
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let counted = Arc::clone(&counted);
                async move {
                    let mut body = req.into_body();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Some(d) = frame.data_ref() {
                            counted.fetch_add(d.len(), Ordering::Relaxed);
                        }
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"stored"),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    let gw = ws_setup_at(addr, "    reauthorize_every: 1s\n")
        .start()
        .await;
    let auth = bearer(&hs256_token(SECRET, &json!({"exp": now() + 2})));
    // 200 bytes every 200 ms for 6 s: well above the slowest rate allowed.
    let upload = |path: &'static str| {
        let (auth, addr) = (auth.clone(), gw.addr());
        async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            let (mut rd, mut wr) = tcp.into_split();
            let writer = tokio::spawn(async move {
                for _ in 0..30 {
                    let chunk = format!("c8\r\n{}\r\n", "x".repeat(200));
                    if wr.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = wr.write_all(b"0\r\n\r\n").await;
            });
            let started = std::time::Instant::now();
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
            writer.abort();
            (
                String::from_utf8_lossy(&buf).into_owned(),
                started.elapsed(),
            )
        }
    };
    let ((plain, plain_took), (rechecked, rechecked_took)) =
        tokio::join!(upload("/plain/upload"), upload("/ws/upload"));
    for (text, took) in [(&plain, plain_took), (&rechecked, rechecked_took)] {
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(text.contains("stream_credential_expired"), "{text}");
        assert!(took < Duration::from_secs(5), "{took:?}: {text}");
    }
    let got = received.load(Ordering::Relaxed);
    assert!(got > 0, "the uploads streamed until their token expired");
    assert!(got < 2 * 6000, "the upstream got both whole: {got} bytes");
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("limit=\"stream_credential_expired\"} 2"),
        "{metrics}"
    );
    server.abort();
}

/// A declined upgrade's answer holds its connection's slot while its body streams: a second
/// upgrade past a cap of one is refused (503 `upstream_busy`). The slot went with the
/// answer's head, and any number of such answers streamed at once past the cap.
#[tokio::test]
async fn a_declined_upgrade_keeps_its_connection_slot_while_its_body_streams() {
    let addr = declining_upstream(3).await;
    let ws = WsEcho::start().await;
    let gw = Setup {
        upstreams: format!(
            "  ws:\n    url: http://{addr}\n    max_connections: 1\n    connect_timeout: 300ms\n"
        ),
        ..ws_setup(&ws, "")
    }
    .start()
    .await;
    let auth = bearer(&hs256_token(SECRET, &json!({})));
    let (first, _streaming) = upgrade_status(&gw, &auth).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (second, _) = upgrade_status(&gw, &auth).await;
    assert!(second.starts_with("HTTP/1.1 503"), "{second}");
    assert!(second.contains("upstream_busy"), "{second}");
}
