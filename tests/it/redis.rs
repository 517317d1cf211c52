//! Redis-backed rate limits against a real `redis-server`, started by each test on a free
//! loopback port (no persistence): two gateway processes share one budget exactly; Redis
//! stopped (SIGSTOP), killed, or replaced by a server answering garbage, mid-test, with each
//! `on_redis_failure` mode behaving as documented within the latency bound, and recovery
//! when Redis returns; a tightened limit after a reload grants no fresh burst.
//!
//! A missing `redis-server` skips these tests (saying so) unless `PORTCULLIS_REQUIRE_PEERS`
//! is set, as `.ci/run` does after installing it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Setup, TestGateway, eventually, send};

mod topologies;

/// Each check's time budget in these tests: generous, so a busy CI machine never times out a
/// healthy Redis; the latency bound asserted is this plus a margin.
const TIMEOUT_MS: u64 = 100;

/// The most a request may take while Redis is failing: the budget and scheduling slack.
const BOUND: Duration = Duration::from_millis(TIMEOUT_MS + 400);

// === Redis, real and fake ===

/// A `redis-server` on 127.0.0.1, killed when dropped.
struct RedisServer {
    bin: PathBuf,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port, or `None` (the test skips) when none is installed.
    async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// The same, with more `redis-server` arguments.
    async fn start_with(extra: &[&str]) -> Option<Self> {
        let bin = crate::peers::tool(&["redis-server"], "redis-server")?;
        let port = free_port().port();
        let mut server = Self {
            bin,
            port,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            _dir: tempfile::tempdir().unwrap(),
        };
        server.spawn().await;
        Some(server)
    }

    async fn spawn(&mut self) {
        use std::os::unix::process::CommandExt as _;
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let addr = self.addr();
        // PONG, or (with a password required) the refusal to answer without one.
        let up = eventually(Duration::from_secs(10), || async move {
            ping(addr)
                .await
                .is_some_and(|r| r == "+PONG" || r.starts_with("-NOAUTH"))
        })
        .await;
        assert!(up, "redis-server answers PING on {addr}");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGSTOP: connections stay open, nothing answers.
    fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL: connections reset, the port refuses.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process still dies of SIGKILL.
            self.kill();
        }
    }
}

/// `PING` over raw RESP: the first reply line.
async fn ping(addr: SocketAddr) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"PING\r\n").await.ok()?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
}

/// A server that accepts and answers every read with nonsense.
struct Garbage {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Garbage {
    /// `+garbage` (a well-formed reply the script never gives) or raw random-looking bytes.
    async fn start(addr: SocketAddr, bytes: &'static [u8]) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let task = tokio::spawn(async move {
            // Connections end with the server (the set aborts them when dropped).
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                connections.spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(bytes).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { task: Some(task) }
    }

    /// Closes the port and every connection, and waits until they are closed.
    async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Garbage {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A loopback port free now, for a server to bind.
fn free_port() -> SocketAddr {
    crate::support::closed_port()
}

// === gateways ===

/// One limit per failure mode, each on its own path, counted per client address:
/// `/deny/**` fails closed, `/allow/**` fails open (both 1000 an hour), `/local/**` (3 an
/// hour) falls back to this process's own budget of the same size.
fn modes_config(url: &str) -> String {
    format!(
        "redis:
  url: {url}
  timeout: {TIMEOUT_MS}ms
  connect_timeout: 200ms
  breaker_failures: 3
  breaker_cool_down: 300ms
rate_limits:
  closed: {{key: client_ip, requests: 1000, per: 1h, backend: redis, on_redis_failure: deny}}
  open: {{key: client_ip, requests: 1000, per: 1h, backend: redis, on_redis_failure: allow}}
  fallback: {{key: client_ip, requests: 3, per: 1h, backend: redis, on_redis_failure: local}}
"
    )
}

const MODES_POLICY: &str = "rules:
  - {name: closed, match: {paths: [\"/deny/**\"]}, effect: allow, anonymous: true, rate_limit: closed, upstream: echo}
  - {name: open, match: {paths: [\"/allow/**\"]}, effect: allow, anonymous: true, rate_limit: open, upstream: echo}
  - {name: fallback, match: {paths: [\"/local/**\"]}, effect: allow, anonymous: true, rate_limit: fallback, upstream: echo}
";

async fn modes_gateway(url: &str) -> TestGateway {
    Setup {
        policies: vec![("10-p.yaml".into(), MODES_POLICY.into())],
        extra: modes_config(url),
        ..Setup::default()
    }
    .start()
    .await
}

/// Waits until a healthy Redis has answered once (connected, script loaded).
async fn connected(gw: &TestGateway) {
    let up = eventually(Duration::from_secs(10), || async {
        timed(gw, "/deny/x").await.0 == StatusCode::OK
    })
    .await;
    assert!(up, "the gateway reaches Redis");
}

/// Status, `x-portcullis`-free body reason and time of one `GET path`.
async fn timed(gw: &TestGateway, path: &str) -> (StatusCode, String, Duration) {
    let start = Instant::now();
    let (status, _, body) =
        send(gw.addr(), Request::get(path).body(Full::default()).unwrap()).await;
    let took = start.elapsed();
    let reason = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, reason, took)
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(0, |v| v as u64)
}

/// While Redis fails: fail-closed answers 503 `rate_limit_unavailable`, fail-open lets
/// through, the local fallback enforces this process's budget; every answer within the bound.
/// Once the breaker opens, Redis is not even asked.
async fn each_mode_while_failing(gw: &TestGateway, what: &str) {
    for i in 0..4 {
        let (status, reason, took) = timed(gw, "/deny/x").await;
        assert_eq!(
            (status, reason.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable"),
            "{what}: fail closed, request {i}"
        );
        assert!(took < BOUND, "{what}: fail closed took {took:?}");
        let (status, _, took) = timed(gw, "/allow/x").await;
        assert_eq!(status, StatusCode::OK, "{what}: fail open, request {i}");
        assert!(took < BOUND, "{what}: fail open took {took:?}");
    }
    // The local fallback counts here: its first three pass, the next is refused.
    let mut local = Vec::new();
    for _ in 0..4 {
        let (status, _, took) = timed(gw, "/local/x").await;
        assert!(took < BOUND, "{what}: local fallback took {took:?}");
        local.push(status);
    }
    assert_eq!(
        local,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "{what}: local fallback"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metric(
            &metrics,
            "portcullis_redis_errors_total{kind=\"breaker_open\"}"
        ) > 0,
        "{what}: the breaker opened and spared Redis calls:\n{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "portcullis_ratelimit_redis_fallback_total{limit=\"open\",mode=\"allow\"}"
        ) >= 4,
        "{what}:\n{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "portcullis_ratelimit_redis_fallback_total{limit=\"closed\",mode=\"deny\"}"
        ) >= 4,
        "{what}:\n{metrics}"
    );
}

/// Redis answers again: within a few cool-downs every mode is back to Redis's verdict.
async fn recovers(gw: &TestGateway, what: &str) {
    let back = eventually(Duration::from_secs(10), || async {
        timed(gw, "/deny/x").await.0 == StatusCode::OK
    })
    .await;
    assert!(
        back,
        "{what}: fail-closed limit recovers when Redis returns"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "portcullis_redis_breaker_state"),
        0,
        "{what}:\n{metrics}"
    );
    // The local fallback's spent budget no longer matters: Redis decides again.
    assert_eq!(timed(gw, "/local/x").await.0, StatusCode::OK, "{what}");
}

#[tokio::test]
async fn redis_stopped_mid_test_each_mode_then_recovery() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = modes_gateway(&redis.url()).await;
    connected(&gw).await;
    for path in ["/deny/x", "/allow/x", "/local/x"] {
        assert_eq!(timed(&gw, path).await.0, StatusCode::OK, "{path}, Redis up");
    }
    redis.pause();
    each_mode_while_failing(&gw, "stopped").await;
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metric(&metrics, "portcullis_redis_errors_total{kind=\"timeout\"}") > 0,
        "a stopped Redis times out:\n{metrics}"
    );
    redis.resume();
    recovers(&gw, "stopped").await;
}

/// The half-open breaker's probe belongs to a request its client abandons before Redis
/// answers: the breaker still recovers once Redis is back (it stayed half-open for good,
/// with every `allow` limit off, until a restart).
#[tokio::test]
async fn an_abandoned_probe_does_not_keep_the_breaker_open() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = modes_gateway(&redis.url()).await;
    connected(&gw).await;
    redis.pause();
    for _ in 0..3 {
        timed(&gw, "/deny/x").await;
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "portcullis_redis_breaker_state"),
        1,
        "open:\n{metrics}"
    );
    // Past the cool-down, the next request is the probe: its client gives up at once.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let probe = tokio::time::timeout(Duration::from_millis(20), timed(&gw, "/allow/x")).await;
    assert!(probe.is_err(), "the probe waits on the stopped Redis");
    redis.resume();
    recovers(&gw, "probe abandoned").await;
}

/// A guard in Redis: attempts that succeed give back what they spent (any number pass, one
/// by one or sent together), twenty wrong tokens sent at once get three checks, and then even a valid token is refused
/// before verifying.
#[tokio::test]
async fn a_redis_guard_holds_against_concurrent_guesses() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (gw, good) = guard_gateway(&redis).await;
    let with = guard_request;
    for i in 0..5 {
        assert_eq!(
            send(gw.addr(), with(good.clone())).await.0,
            StatusCode::OK,
            "{i}"
        );
    }
    // Valid requests sent together all pass: each refused while others hold the budget
    // (their spends and refunds are Redis round trips) waits for them. (Registered only once
    // its spend came back, an attempt was unseen by those sent with it: 429s.)
    let mut together = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let addr = gw.addr();
        let req = with(good.clone());
        together.spawn(async move { send(addr, req).await.0.as_u16() });
    }
    let statuses = together.join_all().await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..20 {
        let addr = gw.addr();
        let req = with(format!("Bearer not.a.token{i}"));
        guesses.spawn(async move { send(addr, req).await.0.as_u16() });
    }
    let statuses = guesses.join_all().await;
    let checked = statuses.iter().filter(|&&s| s == 401).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((checked, limited), (3, 17), "{statuses:?}");
    assert_eq!(
        send(gw.addr(), with(good.clone())).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Guesses sent at once against the spent budget cost one Redis call each (nothing is
    // given back for them to ask again), and are answered at once. (Each waited on the
    // others and retried at every settling: N²/2 calls, 2 s per answer at 800.)
    let calls = |m: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with("portcullis_redis_calls_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = calls(&gw.admin_get("/metrics").await.1);
    let started = std::time::Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..100 {
        let addr = gw.addr();
        let req = with(format!("Bearer burst.{i}"));
        burst.spawn(async move { send(addr, req).await.0.as_u16() });
    }
    let statuses = burst.join_all().await;
    assert!(statuses.iter().all(|&s| s == 429), "{statuses:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let made = calls(&gw.admin_get("/metrics").await.1) - before;
    assert!(made <= 100, "{made} Redis calls for 100 guesses");
}

/// A request to [`guard_gateway`] with this `Authorization`.
fn guard_request(auth: String) -> Request<Full<bytes::Bytes>> {
    Request::get("/x")
        .header("authorization", auth)
        .body(Full::default())
        .unwrap()
}

/// A gateway whose one rule has a Redis guard of 3 failures an hour by client address, and
/// a valid `Authorization` for it, once the gateway reaches Redis.
async fn guard_gateway(redis: &RedisServer) -> (TestGateway, String) {
    const SECRET: &[u8] = b"redis-guard-secret-redis-guard-secret-0123456789";
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: api, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], guard: tries, upstream: echo}\n".into(),
        )],
        files: vec![("hs.secret".into(), SECRET.to_vec())],
        extra: format!(
            "{}redis:\n  url: {}\n  timeout: {TIMEOUT_MS}ms\nrate_limits:\n  tries: {{key: client_ip, requests: 3, per: 1h, count: failures, backend: redis, on_redis_failure: deny}}\n",
            crate::support::hs256_users("{}"),
            redis.url()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let good = format!(
        "Bearer {}",
        crate::support::hs256_token(SECRET, &serde_json::json!({"sub": "alice"}))
    );
    let up = eventually(Duration::from_secs(10), || async {
        send(gw.addr(), guard_request(good.clone())).await.0 == StatusCode::OK
    })
    .await;
    assert!(up, "the gateway reaches Redis");
    (gw, good)
}

/// Valid requests sent together after a failure (two requests of the budget left) all pass:
/// each refused waits for the one holding it, and a request given back goes to one waiter
/// while the others wait for its retry. (Woken together, the retries spent at once, and
/// those refused before the winner's spend came back saw nothing held: 4 to 26 of 30 got
/// 429 with a `Retry-After` of the whole hour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_sent_together_after_failures_pass_a_redis_guard() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (gw, good) = guard_gateway(&redis).await;
    // Two requests of the budget left; each round is a chain of ten, well within the wait
    // bound on a busy machine.
    let req = guard_request("Bearer wrong".to_owned());
    assert_eq!(send(gw.addr(), req).await.0, StatusCode::UNAUTHORIZED);
    for round in 0..4 {
        let started = std::time::Instant::now();
        let mut together = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let addr = gw.addr();
            let req = guard_request(good.clone());
            together.spawn(async move { send(addr, req).await.0.as_u16() });
        }
        let statuses = together.join_all().await;
        assert!(
            statuses.iter().all(|&s| s == 200),
            "round {round}, after {:?}: {statuses:?}",
            started.elapsed()
        );
    }
}

/// Closes every client connection but its own (`CLIENT KILL TYPE normal`), as a Redis
/// `timeout`, a load balancer's idle cut or a failover does to an idle pooled connection.
async fn drop_clients(addr: SocketAddr) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"*4\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n$4\r\nTYPE\r\n$6\r\nnormal\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // `:N`, the number of connections closed.
    assert!(
        buf[..n].starts_with(b":"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

/// A healthy Redis that closed the gateway's idle connection: the next request is checked
/// on a fresh one, not refused (a limit failing closed) nor let through unchecked (one
/// failing open).
#[tokio::test]
async fn a_connection_redis_closed_is_replaced_without_a_failure() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = modes_gateway(&redis.url()).await;
    connected(&gw).await;
    for _ in 0..3 {
        drop_clients(redis.addr()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, reason, _) = timed(&gw, "/deny/x").await;
        assert_eq!((status, reason.as_str()), (StatusCode::OK, ""));
    }
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "portcullis_redis_errors_total{kind=\"error\"}"),
        0,
        "{metrics}"
    );
}

/// A TCP relay to Redis whose connections can be frozen: from `freeze()` on, the
/// connections open then forward nothing either way, yet stay open (a NAT or firewall that
/// drops a flow silently); later ones pass.
struct FreezingRelay {
    addr: SocketAddr,
    /// Connections numbered below this forward nothing.
    frozen_below: Arc<std::sync::atomic::AtomicUsize>,
    /// While set, Redis's answers wait in the relay (then go, in order).
    held: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingRelay {
    async fn start(to: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (frozen, count) = (Arc::clone(&frozen_below), Arc::clone(&accepted));
        let hold = Arc::clone(&held);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (answers, (mut from, mut to)) in [(false, (cr, sw)), (true, (sr, cw))] {
                    let frozen = Arc::clone(&frozen);
                    let hold = Arc::clone(&hold);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf).await {
                            // Read and dropped: the other end never hears of it.
                            if id < frozen.load(Ordering::SeqCst) {
                                continue;
                            }
                            while answers && hold.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        // Kept open while frozen, as a silent network does.
                        if id < frozen.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            frozen_below,
            held,
            accepted,
            task,
        }
    }

    fn freeze(&self) {
        use std::sync::atomic::Ordering;
        let now = self.accepted.load(Ordering::SeqCst);
        self.frozen_below.store(now, Ordering::SeqCst);
    }
}

impl Drop for FreezingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One call that runs out of time after a quiet spell (longer than a connect takes) keeps a
/// connection that answers again: only a silence since the first call left unanswered
/// drops it.
#[tokio::test]
async fn one_slow_call_after_a_quiet_spell_keeps_the_connection() {
    use std::sync::atomic::Ordering;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let relay = FreezingRelay::start(redis.addr()).await;
    let gw = modes_gateway(&format!("redis://{}", relay.addr)).await;
    connected(&gw).await;
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 1);
    // Quiet for longer than `connect_timeout` and the call's `timeout`.
    tokio::time::sleep(Duration::from_millis(TIMEOUT_MS.max(200) + 400)).await;
    relay.held.store(true, Ordering::SeqCst);
    let (status, reason, _) = timed(&gw, "/deny/x").await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable"),
        "the held call ran out of time"
    );
    relay.held.store(false, Ordering::SeqCst);
    assert_eq!(timed(&gw, "/deny/x").await.0, StatusCode::OK);
    assert_eq!(
        relay.accepted.load(Ordering::SeqCst),
        1,
        "the connection that answers again was kept"
    );
}

/// A connection to Redis that stops answering without being closed is given up once nothing
/// has answered on it for longer than a connect takes: the limits are back to Redis's
/// verdict within a few cool-downs, not after minutes on their `on_redis_failure`.
#[tokio::test]
async fn a_connection_that_stopped_answering_is_replaced() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let relay = FreezingRelay::start(redis.addr()).await;
    let gw = modes_gateway(&format!("redis://{}", relay.addr)).await;
    connected(&gw).await;
    relay.freeze();
    // Frozen: refused as Redis is failing, within the bound.
    let (status, reason, took) = timed(&gw, "/deny/x").await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable")
    );
    assert!(took < BOUND, "{took:?}");
    recovers(&gw, "a silent connection").await;
    assert!(
        relay.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "a new connection was made"
    );
}

/// A gateway given the wrong Redis password says so in its log (the error's kind and Redis's
/// code), once, and never writes the password.
#[tokio::test]
async fn a_wrong_redis_password_is_logged_as_such() {
    let Some(redis) = RedisServer::start_with(&["--requirepass", "the-right-redis-password"]).await
    else {
        return;
    };
    let extra = format!(
        "redis: {{url: \"{}\", password: {{file: redis.pass}}, timeout: 2s}}\nrate_limits:\n  l: {{key: client_ip, requests: 10, per: 1h, backend: redis, on_redis_failure: deny}}\n",
        redis.url()
    );
    let policy = "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: l, upstream: echo}\n";
    let bin = crate::memory::Binary::start_with(
        redis.addr(),
        "  - name: http\n    address: 127.0.0.1:0\n",
        "",
        &extra,
        policy,
        &[("redis.pass", b"a-wrong-redis-password")],
        &[],
    );
    for _ in 0..3 {
        let (status, _, _) = crate::support::get(bin.addr("http"), "/x").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Each failed call's kind, as it happens: Redis's refusal, not an outage. (The call's
    // `timeout` is generous: on a loaded machine a 300 ms one ran out before Redis refused.)
    let said = eventually(Duration::from_secs(10), || async {
        bin.log_lines("Redis call failed")
            .iter()
            .any(|l| l.contains("\"kind\":\"AuthenticationFailed\""))
    })
    .await;
    let lines = bin.log_lines("Redis");
    assert!(said, "{lines:?}");
    assert!(
        lines.iter().all(|l| !l.contains("redis-password")),
        "{lines:?}"
    );
    // Once for each kind (the reconnect's timeouts, then the refusal), not once per request.
    assert!(bin.log_lines("Redis call failed").len() <= 2, "{lines:?}");
}

#[tokio::test]
async fn redis_killed_mid_test_each_mode_then_recovery() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let gw = modes_gateway(&redis.url()).await;
    connected(&gw).await;
    assert_eq!(timed(&gw, "/local/x").await.0, StatusCode::OK);
    redis.kill();
    each_mode_while_failing(&gw, "killed").await;
    // A new Redis on the same port knows no script: EVALSHA's NOSCRIPT loads it again.
    redis.spawn().await;
    recovers(&gw, "killed").await;
}

#[tokio::test]
async fn redis_answering_garbage_each_mode_then_recovery() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    redis.kill();
    for (what, bytes) in [
        (
            "a well-formed reply the script never gives",
            b"+garbage\r\n".as_slice(),
        ),
        (
            "bytes that are not RESP",
            b"\x07\xfe\x00garbage\x13\x9a\r\n".as_slice(),
        ),
    ] {
        let garbage = Garbage::start(redis.addr(), bytes).await;
        let gw = modes_gateway(&redis.url()).await;
        each_mode_while_failing(&gw, what).await;
        garbage.stop().await;
        redis.spawn().await;
        recovers(&gw, what).await;
        redis.kill();
    }
}

/// Two gateway processes (the real binary) on one Redis: a budget of 10 admits exactly 10
/// requests between them, however they are spread, and no more.
#[tokio::test]
async fn two_gateway_processes_share_one_budget_exactly() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let echo = portcullis::echo::Echo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let config = format!(
        "redis: {{url: \"{url}\", timeout: 1s}}
rate_limits:
  shared: {{key: client_ip, requests: 10, per: 1h, backend: redis, on_redis_failure: deny}}
",
        url = redis.url()
    );
    let policy = "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: shared, upstream: echo}\n";
    let gateways = [
        Gateway::spawn(echo.addr, &config, policy).await,
        Gateway::spawn(echo.addr, &config, policy).await,
    ];
    // 30 requests at once, alternating between the gateways.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let addr = gateways[i % 2].listen;
        tasks.push(tokio::spawn(async move {
            send(addr, Request::get("/x").body(Full::default()).unwrap())
                .await
                .0
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (10, 20), "{statuses:?}");
    assert_eq!(echo.count(), 10, "exactly the budget reached the upstream");
    // And both gateways refuse the next.
    for g in &gateways {
        let (status, headers, _) =
            send(g.listen, Request::get("/x").body(Full::default()).unwrap()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        // 10 an hour: the next one is 6 minutes away at most.
        assert!((1..=360).contains(&retry), "retry-after {retry}");
        assert_eq!(headers["ratelimit-limit"], "10");
    }
}

/// A gateway process, killed when dropped.
struct Gateway {
    child: Child,
    listen: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// The real binary with one listener, an admin listener, the upstream `echo` at `echo`,
    /// `config` (its `redis:` and `rate_limits:`) and `policy`; returns once it listens.
    async fn spawn(echo: SocketAddr, config: &str, policy: &str) -> Self {
        // Why: a port found free can be taken (as a client connection's local port, by a
        // test running alongside) before the gateway binds it; the gateway then exits, and
        // is started again on other ports rather than waited for.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (listen, admin) = (free_port(), free_port());
            std::fs::create_dir(dir.path().join("policies")).unwrap();
            std::fs::write(dir.path().join("policies/p.yaml"), policy).unwrap();
            std::fs::write(
                dir.path().join("portcullis.yaml"),
                format!(
                    "listeners: [{{name: http, address: \"{listen}\"}}]
admin: {{address: \"{admin}\"}}
upstreams: {{echo: {{url: \"http://{echo}\"}}}}
policies: {{dir: policies}}
logging: {{access_log: false}}
{config}"
                ),
            )
            .unwrap();
            let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .arg("run")
                .arg("--no-watch")
                .arg("-c")
                .arg(dir.path().join("portcullis.yaml"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if tokio::net::TcpStream::connect(listen).await.is_ok() {
                    return Self {
                        child,
                        listen,
                        _dir: dir,
                    };
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gateway on {listen} listens"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("the gateway exited at start three times");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tightening a Redis limit through a reload keeps what was spent: no fresh burst.
#[tokio::test]
async fn tightened_redis_limit_after_reload_grants_no_fresh_burst() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let limits = |requests: u32| {
        format!(
            "redis: {{url: \"{}\", timeout: 1s}}\nrate_limits:\n  l: {{key: client_ip, requests: {requests}, per: 1h, backend: redis, on_redis_failure: deny}}\n",
            redis.url()
        )
    };
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: l, upstream: echo}\n".into(),
        )],
        extra: limits(5),
        ..Setup::default()
    }
    .start()
    .await;
    for _ in 0..4 {
        assert_eq!(timed(&gw, "/x").await.0, StatusCode::OK);
    }
    let config = std::fs::read_to_string(gw.path("portcullis.yaml")).unwrap();
    gw.write(
        "portcullis.yaml",
        config.replace("requests: 5,", "requests: 2,"),
    );
    let (status, body) = gw.admin_post("/reload").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("applied"), "{body}");
    // 4 of the old 5 spent is 2 over the new 2: refused, with the wait the debt says.
    let (status, headers, _) =
        send(gw.addr(), Request::get("/x").body(Full::default()).unwrap()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["ratelimit-limit"], "2");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // 4 × 30 min of debt less the burst's 30 min: about 90 minutes.
    assert!((5300..=5400).contains(&retry), "retry-after {retry}");
}

/// The same Redis limit counts and refuses alike through the proxy and the forward-auth door:
/// `RateLimit-*` on each allowed answer, then 429 with `Retry-After` and `RateLimit-*`.
#[tokio::test]
async fn every_door_carries_the_redis_verdict() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = Setup {
        listeners: "  - name: http\n    address: 127.0.0.1:0\n  - name: doors\n    address: 127.0.0.1:0\n    door: {forward_auth: {}}\n".into(),
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: l, upstream: echo}\n".into(),
        )],
        extra: format!(
            "redis: {{url: \"{}\", timeout: 1s}}\nrate_limits:\n  l: {{key: route, requests: 2, per: 1m, backend: redis, on_redis_failure: deny}}\n",
            redis.url()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let door = || {
        Request::get("/auth")
            .header("x-forwarded-for", "127.0.0.1")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "app.test")
            .header("x-forwarded-uri", "/x")
            .body(Full::default())
            .unwrap()
    };
    // The shared budget counts down through both doors, and each allowed answer says so.
    let (status, first, _) =
        send(gw.addr(), Request::get("/x").body(Full::default()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, second, _) = send(gw.addr_of("doors"), door()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["ratelimit-limit"], "2");
    assert_eq!(first["ratelimit-remaining"], "1");
    assert_eq!(second["ratelimit-remaining"], "0");
    // 2 a minute: each spent request puts the whole budget 30 s further off.
    for (h, about) in [(&first, 30), (&second, 60)] {
        let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(
            (about - 2..=about).contains(&reset),
            "reset {reset}, about {about}"
        );
    }
    let (proxy_status, proxy, _) =
        send(gw.addr(), Request::get("/x").body(Full::default()).unwrap()).await;
    let (door_status, at_door, _) = send(gw.addr_of("doors"), door()).await;
    assert_eq!(proxy_status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(door_status, StatusCode::TOO_MANY_REQUESTS);
    for h in ["ratelimit-limit", "ratelimit-remaining"] {
        assert_eq!(proxy[h], at_door[h], "{h}");
    }
    for headers in [&proxy, &at_door] {
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry), "retry-after {retry}");
        assert_eq!(headers["ratelimit-reset"], headers["retry-after"]);
    }
}

/// A limit whose interval is no whole number of microseconds (3 per 10 s) says the same
/// `RateLimit-Remaining` in Redis as in this process: 2, 1, 0.
#[tokio::test]
async fn redis_and_local_limits_count_down_alike() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: r, match: {paths: [\"/redis/**\"]}, effect: allow, anonymous: true, rate_limit: r, upstream: echo}\n  - {name: l, match: {paths: [\"/local/**\"]}, effect: allow, anonymous: true, rate_limit: l, upstream: echo}\n".into(),
        )],
        extra: format!(
            "redis: {{url: \"{}\", timeout: 1s}}\nrate_limits:\n  r: {{key: route, requests: 3, per: 10s, backend: redis, on_redis_failure: deny}}\n  l: {{key: route, requests: 3, per: 10s}}\n",
            redis.url()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    for route in ["/redis/x", "/local/x"] {
        let mut left = Vec::new();
        for _ in 0..3 {
            let (status, headers, _) = send(
                gw.addr(),
                Request::get(route).body(Full::default()).unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{route}");
            left.push(headers["ratelimit-remaining"].to_str().unwrap().to_owned());
        }
        assert_eq!(left, ["2", "1", "0"], "{route}");
    }
}

/// A budget stored far ahead of Redis's clock (its clock stepped back after a failover, a
/// hand edit) counts as wholly spent: refused for one interval at most (6 s for 10 a
/// minute), not for as long as it is ahead. (Outside acceptance run: `Retry-After: 3546`
/// for a stored time an hour ahead, 18446744074 for one of 10^17 microseconds.)
#[tokio::test]
async fn a_budget_stored_far_ahead_refuses_no_longer_than_the_limit_can() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: r, match: {paths: [\"/r/**\"]}, effect: allow, anonymous: true, rate_limit: r, upstream: echo}\n".into(),
        )],
        extra: format!(
            "redis: {{url: \"{}\", timeout: 1s}}\nrate_limits:\n  r: {{key: route, requests: 10, per: 1m, backend: redis, on_redis_failure: deny}}\n",
            redis.url()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let ask = || async {
        send(
            gw.addr(),
            Request::get("/r/x").body(Full::default()).unwrap(),
        )
        .await
    };
    let (status, _, _) = ask().await;
    assert_eq!(status, StatusCode::OK);
    let keys = command(redis.addr(), &["KEYS", "portcullis:rl:r:*"]).await;
    let key = keys
        .lines()
        .find(|l| l.starts_with("portcullis:rl:r:"))
        .unwrap_or_else(|| panic!("the limit's key in {keys:?}"))
        .to_owned();
    // Microseconds some three thousand years ahead, kept as long (a clock stepped back
    // leaves the keys' expiry as far ahead).
    let set = command(redis.addr(), &["HSET", &key, "r", "99999999999999999"]).await;
    assert!(set.starts_with(':'), "{set}");
    let kept = command(redis.addr(), &["PERSIST", &key]).await;
    assert_eq!(kept, ":1");
    let (status, headers, _) = ask().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    let reset: u64 = headers["ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset <= 60, "RateLimit-Reset {reset}");
    // And written so: the key is refused no longer than that, and expires with it.
    let stored = command(redis.addr(), &["HGET", &key, "r"]).await;
    let stored: u64 = stored
        .lines()
        .nth(1)
        .unwrap_or("")
        .parse()
        .unwrap_or(u64::MAX);
    let time = command(redis.addr(), &["TIME"]).await;
    // `*2`, `$10`, the seconds.
    let now: u64 = time.lines().nth(2).unwrap_or("").parse().unwrap();
    assert!(
        stored <= (now + 61) * 1_000_000,
        "stored {stored}, now {now}"
    );
    let ttl = command(redis.addr(), &["PTTL", &key]).await;
    let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!((1..=61_000).contains(&ttl), "PTTL {ttl}");
    // A stored `nan` (a number to Lua, no time) is no budget spent: not a Redis failure
    // (503 here) until the key expires.
    let set = command(redis.addr(), &["HSET", &key, "r", "nan"]).await;
    assert!(set.starts_with(':'), "{set}");
    let (status, _, _) = ask().await;
    assert_eq!(status, StatusCode::OK, "a nan is read as no time");
}

/// An ACL user and password (from a file) reach a Redis that requires them; a wrong password
/// is a failure like any other (here: fail closed); the admin pages never show it.
#[tokio::test]
async fn password_from_a_file_authenticates() {
    let Some(redis) = RedisServer::start_with(&[
        "--user",
        "gw",
        "on",
        ">s3cret-redis-password",
        "~portcullis:*",
        "+@all",
        "--user",
        "default",
        "off",
    ])
    .await
    else {
        return;
    };
    let start = |password: &'static [u8]| {
        let url = redis.url();
        async move {
            Setup {
                policies: vec![(
                    "10-p.yaml".into(),
                    "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: l, upstream: echo}\n".into(),
                )],
                files: vec![("redis.pass".into(), password.to_vec())],
                extra: format!(
                    "redis: {{url: \"{url}\", username: gw, password: {{file: redis.pass}}, timeout: 1s}}\nrate_limits:\n  l: {{key: client_ip, requests: 1, per: 1h, backend: redis, on_redis_failure: deny}}\n"
                ),
                ..Setup::default()
            }
            .start()
            .await
        }
    };
    let gw = start(b"s3cret-redis-password\n").await;
    let reached = eventually(Duration::from_secs(10), || async {
        timed(&gw, "/x").await.0 == StatusCode::OK
    })
    .await;
    assert!(reached, "authenticated as gw");
    assert_eq!(timed(&gw, "/x").await.0, StatusCode::TOO_MANY_REQUESTS);
    for page in ["/config", "/metrics"] {
        let (_, body) = gw.admin_get(page).await;
        assert!(!body.contains("s3cret"), "{page}: {body}");
    }

    let wrong = start(b"not-the-password").await;
    let (status, reason, _) = timed(&wrong, "/x").await;
    assert_eq!(
        (status, reason.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable")
    );
}

/// A hung Redis (stopped: connections open, nothing answers) under a limit that fails closed,
/// with a Redis timeout longer than the Envoy doors' deadline: the call is cut to end before
/// the deadline, so the limit's own failure mode answers (`rate_limit_unavailable`, a
/// decision) rather than the door's deadline, which Envoy's `failure_mode_allow: true` would
/// turn into an allow.
#[tokio::test]
async fn a_hung_redis_failing_closed_is_a_denial_within_the_door_deadline() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let gw = Setup {
        listeners: "  - name: envoy\n    address: 127.0.0.1:0\n    door: {envoy_http: {timeout: 400ms}}\n".into(),
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: l}\n".into(),
        )],
        extra: format!(
            "redis: {{url: \"{}\", timeout: 10s}}\nrate_limits:\n  l: {{key: route, requests: 100, per: 1m, backend: redis, on_redis_failure: deny}}\n",
            redis.url()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let ask = || {
        Request::get("/x")
            .header("host", "app.test")
            .header("x-forwarded-for", "198.51.100.9")
            .body(Full::default())
            .unwrap()
    };
    // Connected, the script loaded: the next call is the one that hangs.
    let up = eventually(Duration::from_secs(10), || async {
        send(gw.addr_of("envoy"), ask()).await.0 == StatusCode::OK
    })
    .await;
    assert!(up, "allowed through Redis before it hangs");
    redis.pause();
    let started = std::time::Instant::now();
    let (status, headers, body) = send(gw.addr_of("envoy"), ask()).await;
    let elapsed = started.elapsed();
    redis.resume();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a decision, not a 5xx: {body}"
    );
    assert_eq!(headers["x-portcullis-status"], "503");
    assert_eq!(headers["x-portcullis-error"], "rate_limit_unavailable");
    // Bounded by the door's deadline, not Redis's 10 s (generous for a loaded machine).
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// One command over raw RESP: the first reply line.
async fn command(addr: SocketAddr, args: &[&str]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}

/// An ACL that leaves one limit's keys out: requests to that limit get its
/// `on_redis_failure`, and no number of them opens the breaker that every other limit's
/// verdict depends on (before, 30 of 30 passed a limit of 5 failing open).
#[tokio::test]
async fn a_refused_key_does_not_open_the_breaker_for_other_limits() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let ok = command(
        redis.addr(),
        &[
            "ACL",
            "SETUSER",
            "limited",
            "on",
            ">limited-pass",
            "~portcullis:rl:open:*",
            "+@all",
        ],
    )
    .await;
    assert_eq!(ok, "+OK");
    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:
  - {name: blocked, match: {paths: [\"/blocked/**\"]}, effect: allow, anonymous: true, rate_limit: blocked, upstream: echo}
  - {name: open, match: {paths: [\"/open/**\"]}, effect: allow, anonymous: true, rate_limit: open, upstream: echo}
"
            .into(),
        )],
        files: vec![("redis.pass".into(), b"limited-pass".to_vec())],
        extra: format!(
            "redis:
  url: {}
  username: limited
  password: {{file: redis.pass}}
  timeout: 2s
  breaker_failures: 3
  breaker_cool_down: 10s
rate_limits:
  blocked: {{key: client_ip, requests: 1000, per: 1h, backend: redis, on_redis_failure: deny}}
  open: {{key: client_ip, requests: 5, per: 1h, backend: redis, on_redis_failure: allow}}
",
            redis.url()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    for i in 0..10 {
        let (status, reason, _) = timed(&gw, "/blocked/x").await;
        assert_eq!(
            (status, reason.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable"),
            "request {i} to the limit whose keys Redis refuses"
        );
    }
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(timed(&gw, "/open/x").await.0);
    }
    assert_eq!(
        statuses,
        [
            [StatusCode::OK; 5].as_slice(),
            [StatusCode::TOO_MANY_REQUESTS; 3].as_slice()
        ]
        .concat(),
        "the other limit still counts in Redis"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "portcullis_redis_breaker_state"),
        0,
        "{metrics}"
    );
}

/// A server speaking enough RESP to pass for Redis, but never running the script: `EVALSHA`
/// answers NOSCRIPT, `SCRIPT LOAD` names another script, anything else `+OK`.
async fn scriptless(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            connections.spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // Each complete command (an array of bulk strings) gets its reply.
                    while let Some((name, used)) = resp_command(&pending) {
                        pending.drain(..used);
                        let reply: &[u8] = match name.to_ascii_uppercase().as_str() {
                            "EVALSHA" => b"-NOSCRIPT No matching script.\r\n",
                            "SCRIPT" => b"$40\r\n0000000000000000000000000000000000000000\r\n",
                            _ => b"+OK\r\n",
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    })
}

/// The name of the first complete RESP command in `buf` and the bytes it takes.
fn resp_command(buf: &[u8]) -> Option<(String, usize)> {
    let line = |at: usize| {
        buf[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| (std::str::from_utf8(&buf[at..at + i]).ok(), at + i + 2))
    };
    let (head, mut at) = line(0)?;
    let count: usize = head?.strip_prefix('*')?.parse().ok()?;
    let mut name = String::new();
    for i in 0..count {
        let (len, next) = line(at)?;
        let len: usize = len?.strip_prefix('$')?.parse().ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&buf[next..next + len]).into_owned();
        }
        at = next + len + 2;
    }
    Some((name, at))
}

/// A Redis that never runs the script (a proxy, an impostor) is a Redis failure: each limit
/// answers by its `on_redis_failure`, never a dropped connection (a debug build panicked on
/// the redis crate's assertion, at every request).
#[tokio::test]
async fn a_wrong_script_hash_is_a_redis_failure() {
    let addr = free_port();
    let server = scriptless(addr).await;
    let gw = modes_gateway(&format!("redis://{addr}")).await;
    each_mode_while_failing(&gw, "a server that never runs the script").await;
    server.abort();
}

/// A gateway whose own thread is too busy to read Redis's answer in time (a flood on its
/// cores) takes the limit's `on_redis_failure` for that call, but does not open the breaker
/// that every other client's limit depends on; Redis itself stopping still opens it.
#[tokio::test]
async fn a_gateway_too_busy_to_read_answers_keeps_the_breaker_closed() {
    use portcullis::ratelimit::gcra::{Mode, Plan, Rate};
    use portcullis::ratelimit::redis::{BreakerState, RedisError, RedisStore};
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let raw: portcullis::config::raw::RawRedis = serde_yaml::from_str(&format!(
        "url: {}\ntimeout: 50ms\nbreaker_failures: 1\nbreaker_cool_down: 30s\n",
        redis.url()
    ))
    .unwrap();
    let store = RedisStore::compile(&raw, std::path::Path::new("."), None, &mut Vec::new())
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let plan = Plan {
        rate: Rate::new(1000, Duration::from_secs(3600), None).unwrap(),
        quota: None,
    };
    assert!(matches!(
        store.check("busy", &plan, Mode::Spend, None).await,
        Ok(Ok(_))
    ));
    // The call is made, then this (only) thread is busy for four budgets: Redis answers at
    // once, but the gateway reads the answer only after its timeout. (On a loaded machine
    // the answer is sometimes read in time: tried again.)
    let mut late = Vec::new();
    for _ in 0..10 {
        let call = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.check("busy", &plan, Mode::Spend, None).await }
        });
        let busy = tokio::spawn(async { std::thread::sleep(Duration::from_millis(200)) });
        busy.await.unwrap();
        let answer = call.await.unwrap();
        let timed_out = matches!(answer, Err(RedisError::Timeout));
        late.push(answer);
        if timed_out {
            break;
        }
    }
    assert!(
        matches!(late.last(), Some(Err(RedisError::Timeout))),
        "{late:?}"
    );
    assert_eq!(store.breaker_state(), BreakerState::Closed);
    assert!(matches!(
        store.check("busy", &plan, Mode::Spend, None).await,
        Ok(Ok(_))
    ));
    // Redis stopped: the same timeout, on time, opens it.
    redis.pause();
    let stopped = store.check("busy", &plan, Mode::Spend, None).await;
    redis.resume();
    assert!(matches!(stopped, Err(RedisError::Timeout)), "{stopped:?}");
    assert_eq!(store.breaker_state(), BreakerState::Open);
}

/// A Redis over TLS with a private CA that requires client certificates (`tls-auth-clients
/// yes`, its default): reached with `ca_file`, `client_cert` and `client_key`, the limit
/// counted in Redis; without the client certificate, or without the CA, no check gets through
/// (the limit's failure mode). `redis://` with TLS files is refused at the field.
#[tokio::test]
async fn redis_over_tls_with_a_private_ca_and_a_client_certificate() {
    let pki = crate::credentials::pki();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (
        file("ca.pem", &pki.ca),
        file("server.crt", &pki.server_cert),
        file("server.key", &pki.server_key),
    );
    let tls_port = free_port().port().to_string();
    let Some(_redis) = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
    ])
    .await
    else {
        return;
    };
    let gateway = |tls: &str| {
        Setup {
            policies: vec![("10-p.yaml".into(), MODES_POLICY.into())],
            files: vec![
                ("ca.pem".into(), pki.ca.clone().into_bytes()),
                ("client.crt".into(), pki.client.0.clone().into_bytes()),
                ("client.key".into(), pki.client.1.clone().into_bytes()),
            ],
            extra: modes_config(&format!("rediss://localhost:{tls_port}\n{tls}"))
                .replace("timeout: 100ms", "timeout: 500ms"),
            ..Setup::default()
        }
        .start()
    };
    let gw =
        gateway("  ca_file: ca.pem\n  client_cert: client.crt\n  client_key: client.key").await;
    connected(&gw).await;
    // Counted in Redis: `fallback` allows 3 an hour, and no check fell back.
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(timed(&gw, "/local/x").await.0.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429]);
    let metrics = gw.admin_get("/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_ratelimit_redis_fallback_total{limit=\"fallback\",mode=\"local\"}"
        ),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "portcullis_redis_errors_total{kind=\"error\"}"),
        0
    );
    // Without the client certificate, or trusting only the system's roots: refused by the
    // TLS handshake, so the limit failing closed answers 503.
    for tls in ["  ca_file: ca.pem", ""] {
        let other = gateway(tls).await;
        let (status, reason, _) = timed(&other, "/deny/x").await;
        assert_eq!(
            (status, reason.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "rate_limit_unavailable"),
            "{tls}"
        );
    }
    // An expired client certificate is warned about at load (every handshake would fail).
    let expired = {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
        let ca = crate::support::private_ca("redis clients CA");
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "gateway");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
    };
    let cfg = crate::support::ConfigDir::new(&format!(
        "redis:\n  url: rediss://localhost:{tls_port}\n  ca_file: ca.pem\n  client_cert: c.crt\n  client_key: c.key\n"
    ));
    cfg.write("ca.pem", &pki.ca);
    cfg.write("c.crt", &expired.0);
    cfg.write("c.key", &expired.1);
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warning: redis.client_cert"), "{text}");
    // A CA file holding a server's own certificate (no CA, not self-signed) warns.
    let cfg = crate::support::ConfigDir::new(&format!(
        "redis:\n  url: rediss://localhost:{tls_port}\n  ca_file: leaf.pem\n"
    ));
    cfg.write("leaf.pem", &pki.server_cert);
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: redis.ca_file") && text.contains("neither a CA certificate"),
        "{text}"
    );
    // A CA file whose certificate does not decode: said once, at `ca_file`.
    let cfg = crate::support::ConfigDir::new(&format!(
        "redis:\n  url: rediss://localhost:{tls_port}\n  ca_file: junk.pem\n"
    ));
    cfg.write(
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("redis.ca_file"), "{text}");
    assert!(!text.contains("redis.url"), "{text}");
    // TLS files with `redis://`: said at the field, not ignored.
    let cfg = crate::support::ConfigDir::new(&format!(
        "redis:\n  url: redis://127.0.0.1:{tls_port}\n  ca_file: ca.pem\n"
    ));
    cfg.write("ca.pem", &pki.ca);
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("redis.ca_file") && text.contains("rediss://"),
        "{text}"
    );
}

/// The breaker says in the log when it opens and when it closes again, so an operator sees
/// the limits checked in Redis again (the gauge alone stayed "half-open" until traffic came).
#[tokio::test]
async fn the_breaker_logs_when_it_opens_and_when_it_closes() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let extra = format!(
        "redis: {{url: \"{}\", timeout: 100ms, breaker_failures: 1, breaker_cool_down: 200ms}}\nrate_limits:\n  l: {{key: client_ip, requests: 1000, per: 1h, backend: redis, on_redis_failure: deny}}\n",
        redis.url()
    );
    let policy = "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: l, upstream: echo}\n";
    let echo = portcullis::echo::Echo::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let bin = crate::memory::Binary::start_with(
        echo.addr,
        "  - name: http\n    address: 127.0.0.1:0\n",
        "",
        &extra,
        policy,
        &[],
        &[],
    );
    let status = || async { crate::support::get(bin.addr("http"), "/x").await.0 };
    let up = eventually(Duration::from_secs(10), || async {
        status().await == StatusCode::OK
    })
    .await;
    assert!(up, "the gateway reaches Redis");
    redis.pause();
    assert_eq!(status().await, StatusCode::SERVICE_UNAVAILABLE);
    redis.resume();
    let back = eventually(Duration::from_secs(10), || async {
        status().await == StatusCode::OK
    })
    .await;
    assert!(back, "the breaker's probe closes it");
    let logged = eventually(Duration::from_secs(5), || async {
        !bin.log_lines("Redis circuit breaker closed").is_empty()
    })
    .await;
    assert!(logged, "{:?}", bin.log_lines("Redis"));
    assert_eq!(bin.log_lines("Redis circuit breaker opened").len(), 1);
}
