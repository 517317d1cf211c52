//! Memory per idle TLS keep-alive connection, on the real binary: starts it on a TLS listener
//! (a fresh self-signed certificate, an in-process echo upstream), reads its RSS idle, opens
//! `--conns` TLS connections that each make one request and stay open, reads the RSS again,
//! closes them and reads it 3 s and 15 s later, the gateway idle all along. Linux only
//! (`/proc`). Run by `bench/connections.sh`.
//!
//! ```sh
//! cargo build --release && cargo run --release --example idle-conns -- \
//!     --binary target/release/portcullis --conns 10000 [--hold SECS]
//! ```

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
use std::time::{Duration, Instant};

use portcullis::echo::Echo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
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
    let conns: usize = arg("--conns").map_or(10_000, |n| n.parse().unwrap());
    // Seconds to keep the gateway running once measured, with the connections open and again
    // once they closed, for a look from outside (`/proc/<pid>/smaps`, a heap profiler).
    let hold: u64 = arg("--hold").map_or(0, |n| n.parse().unwrap());

    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (ca, leaf, key) = portcullis::tls::certs::ca_and_leaf(&["localhost"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("leaf.crt"), &leaf).unwrap();
    std::fs::write(dir.path().join("leaf.key"), &key).unwrap();
    std::fs::write(
        dir.path().join("policies/all.yaml"),
        "rules:\n  - name: all\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: echo\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("portcullis.yaml"),
        format!(
            "listeners:\n  - name: https\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: leaf.crt\n          key: leaf.key\nadmin:\n  address: 127.0.0.1:0\nupstreams:\n  echo:\n    url: http://{}\npolicies:\n  dir: policies\nserver:\n  max_connections: {}\n  idle_timeout: 10m\nlogging:\n  format: json\n  access_log: false\n",
            echo.addr,
            conns + 100
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
    let (mut addr, mut admin) = (None::<SocketAddr>, None::<SocketAddr>);
    while addr.is_none() || admin.is_none() {
        let line = lines.next().unwrap().unwrap();
        let field = |k: &str| {
            let key = format!("\"{k}\":\"");
            let start = line.find(&key).unwrap() + key.len();
            line[start..start + line[start..].find('"').unwrap()].to_owned()
        };
        if line.contains("\"Listening\"") {
            addr = Some(field("addr").parse().unwrap());
        } else if line.contains("\"Admin listening\"") {
            admin = Some(field("addr").parse().unwrap());
        }
    }
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    let pid = child.id();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss(pid);

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));

    let started = Instant::now();
    let mut open = Vec::with_capacity(conns);
    for batch in 0..conns.div_ceil(100) {
        let mut tasks = Vec::new();
        for _ in (batch * 100)..((batch + 1) * 100).min(conns) {
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                let mut s = connector.connect(name, tcp).await.unwrap();
                s.write_all(b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                s
            }));
        }
        for t in tasks {
            open.push(t.await.unwrap());
        }
    }
    let opened_in = started.elapsed();
    // Wait for the idle connections to be parked (bounded: a build without parking, or one
    // that closes idle connections at its header timeout, is measured at once).
    for _ in 0..30 {
        if parked(admin).await >= conns {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parked_now = parked(admin).await;
    let busy = rss(pid);
    if hold > 0 {
        println!("gateway {pid}: {conns} connections held for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    drop(open);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss(pid);
    // jemalloc's background thread purges freed pages on a timer (its decay, 10 s): the
    // gateway gets its memory back while it stays idle, no request needed to wake it.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after_idle = rss(pid);
    if hold > 0 {
        println!("gateway {pid}: closed, held for {hold} s");
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    let mb = |b: u64| b as f64 / 1e6;
    let per_conn = busy.saturating_sub(idle) as f64 / conns as f64;
    println!(
        "idle RSS {:.1} MB; {conns} idle TLS connections (opened in {:.1} s, {parked_now} parked): RSS {:.1} MB, {:.1} KB per connection; all closed: RSS {:.1} MB 3 s later, {:.1} MB 15 s later (idle)",
        mb(idle),
        opened_in.as_secs_f64(),
        mb(busy),
        per_conn / 1e3,
        mb(after),
        mb(after_idle),
    );
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

async fn parked(admin: SocketAddr) -> usize {
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return 0;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_connections_parked "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as usize)
}
