//! The gateway under a paced HTTP/2 rapid reset (CVE-2023-44487): CPU it spends, what a normal
//! client sees (p50/p99 latency), and what the upstream sees (TCP connections opened). Starts
//! the given binary on a plain listener in front of an in-process echo upstream; the attacker
//! opens 10 streams, pauses 2 ms, resets them, pauses 3 ms, and reconnects when it gets a
//! GOAWAY, for `--secs` seconds. Linux only (`/proc`). Run by `bench/rapid_reset.sh`.

#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]
#![allow(
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark fails loudly"
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis::echo::Echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let binary = arg("--binary").unwrap_or_else(|| "target/release/portcullis".into());
    let secs: u64 = arg("--secs").map_or(10, |n| n.parse().unwrap());

    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/all.yaml"),
        "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("portcullis.yaml"),
        format!(
            "listeners:\n  - name: http\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\nupstreams:\n  echo:\n    url: http://{}\npolicies:\n  dir: policies\nlogging:\n  format: json\n  access_log: false\n",
            echo.addr
        ),
    )
    .unwrap();
    let mut child = Command::new(&binary)
        .args(["run", "--no-watch", "-c"])
        .arg(dir.path().join("portcullis.yaml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the portcullis binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().unwrap().unwrap();
        if line.contains("\"Listening\"") {
            let start = line.find("\"addr\":\"").unwrap() + 8;
            break line[start..start + line[start..].find('"').unwrap()]
                .parse()
                .unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let goaways = Arc::new(AtomicUsize::new(0));
    let resets = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, goaways, resets) =
            (Arc::clone(&stop), Arc::clone(&goaways), Arc::clone(&resets));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                let Ok((mut send, conn)) = h2::client::handshake(tcp).await else {
                    continue;
                };
                let conn = tokio::spawn(conn);
                'attack: while !stop.load(Ordering::Relaxed) {
                    let mut streams = Vec::with_capacity(10);
                    for _ in 0..10 {
                        let Ok(ready) = send.clone().ready().await else {
                            break 'attack;
                        };
                        send = ready;
                        let req = http::Request::get(format!("http://{addr}/attack"))
                            .body(())
                            .unwrap();
                        let Ok((_resp, stream)) = send.send_request(req, true) else {
                            break 'attack;
                        };
                        streams.push(stream);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    for mut s in streams {
                        s.send_reset(h2::Reason::CANCEL);
                        resets.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                if let Ok(Err(e)) = conn.await
                    && e.is_go_away()
                {
                    goaways.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // The normal client: sequential requests on one kept-alive HTTP/1.1 connection.
    let cpu_before = cpu_ticks(pid);
    let upstream_before = echo.connections();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0usize;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    while started.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        if s.write_all(b"GET /normal HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .is_err()
            || !read_response(&mut s).await
        {
            errors += 1;
            s = tokio::net::TcpStream::connect(addr).await.unwrap();
            continue;
        }
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), attacker).await;
    let upstream = echo.connections() - upstream_before;
    let _ = child.kill();
    let _ = child.wait();

    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "{:.0} s of paced rapid reset ({} streams reset, {} GOAWAYs): gateway CPU {:.0}% of a core; normal client {} requests, p50 {:.2} ms, p99 {:.2} ms, {} errors; upstream TCP connections opened: {}",
        elapsed.as_secs_f64(),
        resets.load(Ordering::Relaxed),
        goaways.load(Ordering::Relaxed),
        cpu / elapsed.as_secs_f64() * 100.0,
        latencies.len(),
        pct(0.5),
        pct(0.99),
        errors,
        upstream,
    );
}

/// Reads one response with a Content-Length (the echo's); false on a closed connection.
async fn read_response(s: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let Ok(n) = s.read(&mut chunk).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return true;
            }
        }
    }
}

/// User plus system CPU of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
