//! Graceful shutdown drains in-flight requests; the real binary on signals.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;
use portcullis::echo::Echo;

use crate::support::{ALLOW_ALL, Setup, get};

/// A request for `path` through the gateway, in flight: returned once the upstream has it, so
/// a shutdown after this finds it there.
async fn reaching_upstream(
    gw: &crate::support::TestGateway,
    path: &'static str,
) -> tokio::task::JoinHandle<(StatusCode, http::HeaderMap, bytes::Bytes)> {
    let addr = gw.addr();
    let in_flight = tokio::spawn(async move { get(addr, path).await });
    let echo = gw.echo.clone();
    assert!(
        crate::support::eventually(Duration::from_secs(3), || {
            let echo = echo.clone();
            async move { echo.count() == 1 }
        })
        .await,
        "the request never reached the upstream"
    );
    in_flight
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_request() {
    let mut gw = Setup::default()
        .server("  shutdown_grace: 5s\n")
        .start()
        .await;
    let addr = gw.addr();
    let in_flight = reaching_upstream(&gw, "/__echo/delay/700").await;
    let app = gw.app.take().unwrap();
    let drained = app.shutdown().await;
    assert!(drained, "drained within the grace period");
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "in-flight request completed");
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// An HTTP/2 client that never acknowledges the GOAWAY's PING (nor anything else), with no
/// request in flight, does not hold the drain for the whole grace: its connection is closed
/// soon after the drain starts.
#[tokio::test]
async fn a_silent_http2_client_does_not_hold_the_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut gw = Setup::default()
        .server("  shutdown_grace: 8s\n")
        .start()
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    // The preface and an empty SETTINGS, then silence: nothing acknowledged, ever.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(
        head[3], 4,
        "the gateway's SETTINGS: the connection is served"
    );
    let reader = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let app = gw.app.take().unwrap();
    assert!(app.shutdown().await, "drained within the grace");
    reader.await.unwrap();
}

/// While the doors drain, the admin listener still answers, on new connections too: alive,
/// not ready. Once the doors are drained it stops and drains as well.
#[tokio::test]
async fn admin_answers_while_the_doors_drain_then_stops() {
    let mut gw = Setup::default()
        .server("  shutdown_grace: 5s\n")
        .start()
        .await;
    let addr = gw.addr();
    let admin = gw.app().admin_addr();
    let in_flight = reaching_upstream(&gw, "/__echo/delay/1500").await;
    let app = gw.app.take().unwrap();
    let shutdown = tokio::spawn(app.shutdown());
    // The doors no longer accept; the admin does, and says so.
    assert!(
        crate::support::eventually(Duration::from_secs(2), || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    );
    assert_eq!(
        get(admin, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(admin, "/healthz").await.0, StatusCode::OK);
    assert!(
        !shutdown.is_finished(),
        "the slow request still holds the drain"
    );
    assert!(shutdown.await.unwrap(), "drained within the grace period");
    assert_eq!(in_flight.await.unwrap().0, StatusCode::OK);
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

/// The binary's log lines, collected as they are written.
type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts the real binary on a config pointing at `echo`; returns it, its listener address
/// read from its log, and the log.
fn spawn_binary(dir: &std::path::Path, echo: SocketAddr) -> (std::process::Child, SocketAddr, Log) {
    spawn_binary_with(dir, echo, ALLOW_ALL, "")
}

/// [`spawn_binary`] with a policy and more config (appended).
fn spawn_binary_with(
    dir: &std::path::Path,
    echo: SocketAddr,
    policy: &str,
    extra: &str,
) -> (std::process::Child, SocketAddr, Log) {
    spawn_binary_seeing(dir, echo, policy, extra, |_, _| {})
}

/// [`spawn_binary_with`], calling `seen` with the child and each log line written before it
/// listens.
fn spawn_binary_seeing(
    dir: &std::path::Path,
    echo: SocketAddr,
    policy: &str,
    extra: &str,
    mut seen: impl FnMut(&std::process::Child, &str),
) -> (std::process::Child, SocketAddr, Log) {
    let mut child = start_binary(dir, echo, policy, extra);
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("log line").unwrap();
        seen(&child, &line);
        if line.contains("\"Listening\"") {
            let start = line.find("\"addr\":\"").unwrap() + 8;
            let end = line[start..].find('"').unwrap() + start;
            break line[start..end].parse().unwrap();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let log = Log::default();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, addr, log)
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Writes the config (one listener, upstream `echo` at `echo`, `policy`, then `extra`) into
/// `dir` and starts the binary on it, its log on a pipe.
fn start_binary(
    dir: &std::path::Path,
    echo: SocketAddr,
    policy: &str,
    extra: &str,
) -> std::process::Child {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/10-all.yaml"), policy).unwrap();
    std::fs::write(
        dir.join("portcullis.yaml"),
        format!(
            "listeners:\n  - name: http\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nupstreams:\n  echo:\n    url: http://{echo}\npolicies:\n  dir: policies\nserver:\n  shutdown_grace: 5s\nlogging:\n  format: json\n{extra}"
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--no-watch", "-c"])
        .arg(dir.join("portcullis.yaml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Whether a line holding `needle` is in `log` within 5 s.
async fn logged(log: &Log, needle: &'static str) -> bool {
    crate::support::eventually(Duration::from_secs(5), || {
        let log = log.clone();
        async move { log.lock().unwrap().iter().any(|l| l.contains(needle)) }
    })
    .await
}

/// Whether `echo` has a request whose target starts with `prefix` within 3 s.
async fn upstream_has(echo: &Echo, prefix: &'static str) -> bool {
    crate::support::eventually(Duration::from_secs(3), || {
        let echo = echo.clone();
        async move { echo.records().iter().any(|r| r.target.starts_with(prefix)) }
    })
    .await
}

/// Makes `path` a named pipe nobody writes: a read of it blocks (a hung mount, a secret fed
/// through a pipe).
fn fifo(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo");
}

/// Waits up to `within` for `child` to exit; kills it (and fails) if it does not.
fn exits_within(mut child: std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {within:?} after the stop signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A key file turned into a pipe fails the reload at once (it used to block the reload, and
/// every later one, reading it: `config::files`); the running config still serves, and the
/// stop signal ends the gateway as usual. (A reload stuck otherwise, on a hung mount, is
/// abandoned by the stop signal: `the reload is abandoned`.)
#[tokio::test]
async fn a_pipe_fails_a_reload_at_once_and_the_stop_signal_still_ends_the_gateway() {
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hs.secret"),
        "a shared HS256 secret of at least 32 bytes",
    )
    .unwrap();
    let policy = "rules:\n  - name: api\n    match: {paths: [\"/api/**\"]}\n    effect: allow\n    authenticators: [users]\n    upstream: echo\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n";
    let (child, addr, log) = spawn_binary_with(
        dir.path(),
        echo.addr,
        policy,
        &crate::support::hs256_users("{}"),
    );
    assert_eq!(get(addr, "/x").await.0, StatusCode::OK);
    fifo(&dir.path().join("hs.secret"));
    signal(&child, "-HUP");
    let seen = |needle: &'static str| logged(&log, needle);
    assert!(seen("SIGHUP: reloading").await);
    assert!(
        seen("not a regular file").await,
        "the reload failed, saying why"
    );
    assert_eq!(get(addr, "/x").await.0, StatusCode::OK);
    signal(&child, "-TERM");
    let exit = tokio::task::spawn_blocking(move || exits_within(child, Duration::from_secs(8)))
        .await
        .unwrap();
    assert!(exit.success(), "drained and exited: {exit:?}");
}

/// A request still open when the shutdown's grace runs out is cut by the gateway, and its log
/// line says so (`shutdown_grace`), not that its client left (`connection_closed`).
#[tokio::test]
async fn requests_cut_at_the_end_of_the_grace_say_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, log) = spawn_binary(dir.path(), echo.addr);
    let config = dir.path().join("portcullis.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("shutdown_grace: 5s", "shutdown_grace: 1s"),
    )
    .unwrap();
    signal(&child, "-HUP");
    let seen = |needle: &'static str| logged(&log, needle);
    assert!(seen("Config reloaded").await, "the 1 s grace applied");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /__echo/delay/6000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(upstream_has(&echo, "/__echo/delay").await);
    signal(&child, "-TERM");
    let exit = tokio::task::spawn_blocking(move || exits_within(child, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(1), "the grace ran out: {exit:?}");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(seen("/__echo/delay/6000").await);
    let lines = log.lock().unwrap();
    let cut = lines
        .iter()
        .find(|l| l.contains("/__echo/delay/6000"))
        .unwrap();
    assert!(cut.contains("\"reason\":\"shutdown_grace\""), "{cut}");
    assert!(cut.contains("\"status\":499"), "{cut}");
}

/// A start stuck reading a file (a key behind a pipe) ends at SIGTERM, said so, with a
/// failure.
#[tokio::test]
async fn a_stop_signal_ends_a_stuck_start() {
    let dir = tempfile::tempdir().unwrap();
    fifo(&dir.path().join("hs.secret"));
    let policy = "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    authenticators: [users]\n    upstream: echo\n";
    let mut child = start_binary(
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
        policy,
        &crate::support::hs256_users("{}"),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines.next().expect("a log line").unwrap();
    assert!(started.contains("\"Starting\""), "{started}");
    // The start is now stuck on the pipe; give it the time to get there.
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-TERM");
    let exit = tokio::task::spawn_blocking(move || exits_within(child, Duration::from_secs(8)))
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(1), "{exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("did not start")), "{rest:?}");
    assert!(!rest.iter().any(|l| l.contains("Listening")), "{rest:?}");
}

#[tokio::test]
async fn binary_reloads_on_sighup_and_drains_on_sigterm() {
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, log) = spawn_binary(dir.path(), echo.addr);
    assert_eq!(get(addr, "/x").await.0, StatusCode::OK);

    // The access log names the request but never a credential, cookie or query value.
    let req = http::Request::get("/logged?token=QUERYSECRET")
        .header("authorization", "Bearer HEADERSECRET")
        .header("cookie", "session=COOKIESECRET")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(crate::support::send(addr, req).await.0, StatusCode::OK);
    assert!(logged(&log, "/logged").await, "access log line written");
    {
        let lines = log.lock().unwrap();
        let access = lines.iter().find(|l| l.contains("/logged")).unwrap();
        assert!(access.contains("\"status\":200"), "{access}");
        assert!(access.contains("\"decision\":\"allow\""), "{access}");
        assert!(access.contains("\"request_id\":"), "{access}");
        for secret in ["QUERYSECRET", "HEADERSECRET", "COOKIESECRET"] {
            assert!(lines.iter().all(|l| !l.contains(secret)), "{secret} logged");
        }
    }

    std::fs::write(
        dir.path().join("policies/05-deny.yaml"),
        "rules:\n  - name: deny-x\n    match: {paths: [\"/x\"]}\n    effect: deny\n",
    )
    .unwrap();
    signal(&child, "-HUP");
    let reloaded = crate::support::eventually(Duration::from_secs(5), || async move {
        get(addr, "/x").await.0 == StatusCode::FORBIDDEN
    })
    .await;
    assert!(reloaded, "SIGHUP reloaded the policies");
    // A SIGHUP that changes nothing is logged too.
    signal(&child, "-HUP");
    let seen = |needle: &'static str| logged(&log, needle);
    assert!(seen("SIGHUP: reloading").await, "the signal is logged");
    assert!(
        seen("nothing changed").await,
        "a no-change reload is logged"
    );

    // A request refused before any rule (400) names its host and path, as sent.
    assert_eq!(crate::support::raw_status(addr, "/a%2Fb", "").await, 400);
    assert!(seen("encoded_slash").await);
    {
        let lines = log.lock().unwrap();
        let refused = lines.iter().find(|l| l.contains("encoded_slash")).unwrap();
        assert!(refused.contains("\"path\":\"/a%2Fb\""), "{refused}");
        assert!(refused.contains("\"host\":\"t\""), "{refused}");
    }

    let in_flight = tokio::spawn(async move { get(addr, "/__echo/delay/700").await });
    assert!(upstream_has(&echo, "/__echo/delay").await);
    signal(&child, "-TERM");
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "in-flight request drained");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "clean exit after drain: {exit:?}");
}

/// A supervisor's reload sent while the gateway starts is queued, not fatal: SIGHUP's default
/// action ends the process, and the gateway installs its handler before it binds anything.
#[tokio::test]
async fn a_sighup_as_the_gateway_starts_reloads_it() {
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sent = false;
    let (mut child, addr, log) =
        spawn_binary_seeing(dir.path(), echo.addr, ALLOW_ALL, "", |child, line| {
            // The first line, written before the config is loaded and the listeners bound.
            if !sent && line.contains("\"Starting\"") {
                signal(child, "-HUP");
                sent = true;
            }
        });
    assert!(sent, "the start is logged before the listeners");
    assert_eq!(get(addr, "/x").await.0, StatusCode::OK);
    let reloaded = crate::support::eventually(Duration::from_secs(5), || {
        let log = log.clone();
        async move {
            log.lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("SIGHUP: reloading"))
        }
    })
    .await;
    assert!(reloaded, "the SIGHUP reloaded the config");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    signal(&child, "-TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");
}

#[tokio::test]
async fn demo_starts_and_every_printed_curl_line_gets_its_status() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Each "… (NNN) …:" line is followed by the curl line that must get NNN.
    let (cases, mint) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut cases = Vec::new();
        let mut mint = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(code) = line
                .split_once('(')
                .and_then(|(_, r)| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
            {
                cases.push((
                    code,
                    lines.next().and_then(Result::ok).expect("a curl line"),
                ));
            }
            if line.starts_with("Mint more tokens") {
                mint = lines.next().and_then(Result::ok);
                break;
            }
        }
        (cases, mint.expect("a mint line"))
    })
    .await
    .unwrap();
    assert!(cases.len() >= 10, "{cases:?}");
    assert!(
        cases
            .iter()
            .any(|(c, cmd)| *c == 200 && cmd.contains("x-api-key: pck_")),
        "an API key line: {cases:?}"
    );
    assert!(cases.iter().any(|(c, _)| *c == 401) && cases.iter().any(|(c, _)| *c == 200));
    let run = |cmd: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{} -sS -o /dev/null -w '%{{http_code}}' --max-time 5",
                cmd.trim().replace(" -i ", " ")
            ))
            .output()
            .unwrap()
    };
    for (code, cmd) in &cases {
        let out = run(cmd);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            code.to_string(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The printed mint command makes a token the gateway accepts.
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let mint = mint.trim().replacen("portcullis", bin, 1);
    let out = Command::new("sh").arg("-c").arg(&mint).output().unwrap();
    assert!(
        out.status.success(),
        "{mint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (_, allowed) = cases
        .iter()
        .find(|(c, cmd)| *c == 200 && cmd.contains("Bearer"))
        .unwrap();
    let with_minted = allowed.replacen(
        allowed
            .split("Bearer ")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap(),
        &token,
        1,
    );
    assert_eq!(
        String::from_utf8_lossy(&run(&with_minted).stdout),
        "200",
        "{with_minted}"
    );
    signal(&child, "-TERM");
    let exit = child.wait().unwrap();
    assert!(exit.success());
}

/// A rate-limited request's access-log line names who was throttled.
#[tokio::test]
async fn throttled_requests_log_their_principal() {
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = [b's'; 32];
    std::fs::write(dir.path().join("hs.secret"), secret).unwrap();
    let policy = "rules:\n  - name: api\n    match: {paths: [\"/**\"]}\n    effect: allow\n    authenticators: [users]\n    rate_limit: one\n    upstream: echo\n";
    let extra = format!(
        "{}rate_limits:\n  one: {{key: principal, requests: 1, per: 1m, burst: 1}}\n",
        crate::support::hs256_users("{}")
    );
    let (mut child, addr, log) = spawn_binary_with(dir.path(), echo.addr, policy, &extra);
    let token = crate::support::hs256_token(&secret, &serde_json::json!({"sub": "carol"}));
    let auth = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(crate::support::raw_status(addr, "/first", &auth).await, 200);
    assert_eq!(
        crate::support::raw_status(addr, "/second", &auth).await,
        429
    );
    let logged = crate::support::eventually(Duration::from_secs(3), || {
        let log = log.clone();
        async move { log.lock().unwrap().iter().any(|l| l.contains("/second")) }
    })
    .await;
    assert!(logged);
    {
        let lines = log.lock().unwrap();
        let line = lines.iter().find(|l| l.contains("/second")).unwrap();
        assert!(line.contains("\"status\":429"), "{line}");
        assert!(line.contains("\"principal\":\"carol\""), "{line}");
        assert!(
            lines.iter().all(|l| !l.contains(&token)),
            "the token is never logged"
        );
    }
    signal(&child, "-TERM");
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// A request whose client leaves before the answer (the upstream has it, and is slow) is
/// still counted and logged, as 499 `connection_closed` (and `allow`: it had been); a userinfo in a refused request's
/// authority (`alice:S3cret@`) is never logged. (The first left no line at all: a POST the
/// upstream acted on, unseen at the gateway; the second logged the password.)
#[tokio::test]
async fn a_request_whose_client_leaves_is_still_logged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = silent.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, log) = spawn_binary(dir.path(), upstream);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /left HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET http://alice:S3cretPW@127.0.0.1:1/x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));
    let logged = crate::support::eventually(Duration::from_secs(5), || {
        let log = log.clone();
        async move {
            let lines = log.lock().unwrap();
            lines.iter().any(|l| l.contains("/left")) && lines.iter().any(|l| l.contains("/x"))
        }
    })
    .await;
    assert!(logged, "both requests logged: {:?}", log.lock().unwrap());
    {
        let lines = log.lock().unwrap();
        let left = lines.iter().find(|l| l.contains("/left")).unwrap();
        assert!(left.contains("\"status\":499"), "{left}");
        assert!(left.contains("connection_closed"), "{left}");
        assert!(
            left.contains("\"decision\":\"allow\""),
            "allowed, then left: {left}"
        );
        assert!(
            lines.iter().all(|l| !l.contains("S3cretPW")),
            "password logged"
        );
    }
    signal(&child, "-TERM");
    let _ = child.wait();
    holder.abort();
}

/// The address of the admin listener, from its "Admin listening" log line.
async fn admin_addr(log: &Log) -> SocketAddr {
    assert!(logged(log, "\"Admin listening\"").await);
    let lines = log.lock().unwrap();
    let line = lines
        .iter()
        .find(|l| l.contains("\"Admin listening\""))
        .unwrap();
    let start = line.find("\"addr\":\"").unwrap() + 8;
    let end = line[start..].find('"').unwrap() + start;
    line[start..end].parse().unwrap()
}

/// With `server.shutdown_delay`, a stop signal first takes the gateway out of rotation
/// (`/readyz` 503) while it goes on accepting and serving new connections for the delay, then
/// drains and exits.
#[tokio::test]
async fn the_shutdown_delay_serves_on_not_ready() {
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, log) = spawn_binary(dir.path(), echo.addr);
    let admin = admin_addr(&log).await;
    let config = dir.path().join("portcullis.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "shutdown_grace: 5s",
            "shutdown_grace: 5s\n  shutdown_delay: 1500ms",
        ),
    )
    .unwrap();
    signal(&child, "-HUP");
    assert!(logged(&log, "Config reloaded").await, "the delay applied");
    assert_eq!(get(admin, "/readyz").await.0, StatusCode::OK);
    let stopped = std::time::Instant::now();
    signal(&child, "-TERM");
    assert!(logged(&log, "serving on for the shutdown delay").await);
    // Out of rotation at once, still serving new connections.
    assert_eq!(
        get(admin, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, _, _) = get(addr, "/during-the-delay").await;
    assert_eq!(status, StatusCode::OK, "a new connection is served");
    assert!(
        stopped.elapsed() < Duration::from_millis(1500),
        "checked within the delay: {:?}",
        stopped.elapsed()
    );
    let exit = tokio::task::spawn_blocking(move || exits_within(child, Duration::from_secs(6)))
        .await
        .unwrap();
    assert!(exit.success(), "drained: {exit:?}");
    assert!(
        stopped.elapsed() >= Duration::from_millis(1400),
        "not before the delay: {:?}",
        stopped.elapsed()
    );
}

/// A second SIGINT ends the gateway at once, without waiting for the drain's grace (a second
/// Ctrl-C means now), exiting 1; a second SIGTERM does not (systemd may send two for one stop).
#[tokio::test]
async fn a_second_stop_signal_exits_at_once() {
    use tokio::io::AsyncWriteExt;
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, log) = spawn_binary(dir.path(), echo.addr);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /__echo/delay/8000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(upstream_has(&echo, "/__echo/delay").await);
    signal(&child, "-TERM");
    assert!(logged(&log, "Shutting down").await);
    // The 5 s grace is running: the in-flight request holds the drain. A second SIGTERM (a
    // supervisor's) does not cut it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = child;
    signal(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a second SIGTERM leaves the drain going"
    );
    let second = std::time::Instant::now();
    signal(&child, "-INT");
    let exit = tokio::task::spawn_blocking(move || exits_within(child, Duration::from_secs(4)))
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(1), "{exit:?}");
    assert!(
        second.elapsed() < Duration::from_millis(2500),
        "at once, not at the grace's end: {:?}",
        second.elapsed()
    );
    assert!(logged(&log, "Second stop signal").await);
}
