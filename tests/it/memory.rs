//! Memory per connection, measured on the real binary (its allocator, its buffers) from
//! `/proc/<pid>/status` (Linux only). Counts are kept small (a few hundred connections) so the
//! suite stays quick.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis::echo::Echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::ALLOW_ALL;

/// The real binary on a config with `listeners` and `server` blocks, its listeners' addresses
/// by name, read from its log. Killed when dropped.
pub struct Binary {
    child: Child,
    pub addrs: Vec<(String, SocketAddr)>,
    _dir: tempfile::TempDir,
}

impl Binary {
    pub fn start(echo: SocketAddr, listeners: &str, server: &str, files: &[(&str, &[u8])]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/10-all.yaml"), ALLOW_ALL).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        std::fs::write(
            dir.path().join("portcullis.yaml"),
            format!(
                "listeners:\n{listeners}admin:\n  address: 127.0.0.1:0\nupstreams:\n  echo:\n    url: http://{echo}\npolicies:\n  dir: policies\nserver:\n  max_connections: 20000\n{server}logging:\n  format: json\n  access_log: false\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--no-watch", "-c"])
            .arg(dir.path().join("portcullis.yaml"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let wanted = listeners.matches("- name:").count();
        let mut addrs = Vec::new();
        while addrs.len() < wanted {
            let line = lines.next().expect("log line").unwrap();
            if line.contains("\"Listening\"") {
                let field = |name: &str| {
                    let key = format!("\"{name}\":\"");
                    let start = line.find(&key).unwrap() + key.len();
                    let end = line[start..].find('"').unwrap() + start;
                    line[start..end].to_owned()
                };
                addrs.push((field("listener"), field("addr").parse().unwrap()));
            }
        }
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Self {
            child,
            addrs,
            _dir: dir,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// Resident set size, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Waits (bounded) until the RSS stops growing: two samples 200 ms apart within 1%.
async fn settled_rss(bin: &Binary) -> u64 {
    let mut last = bin.rss();
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = bin.rss();
        if now.abs_diff(last) * 100 <= last {
            return now;
        }
        last = now;
    }
    last
}

const PLAIN: &str = "  - name: http\n    address: 127.0.0.1:0\n";

/// HTTP/1.1 clients that ask for a large body and stop reading cost the gateway a bounded
/// buffer each (whatever the kernel's socket buffers hold aside).
#[tokio::test]
async fn h1_slow_readers_hold_a_bounded_buffer_each() {
    const READERS: usize = 40;
    let echo = Echo::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let bin = Binary::start(echo.addr, PLAIN, "", &[]);
    let addr = bin.addr("http");
    // Warm up: one whole exchange, so lazily built state is not counted.
    let mut warm = tokio::net::TcpStream::connect(addr).await.unwrap();
    warm.write_all(b"GET /__echo/bytes/1048576 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    warm.read_to_end(&mut sink).await.unwrap();
    let before = settled_rss(&bin).await;
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /__echo/bytes/1073741824 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 1024];
        let n = s.read(&mut head).await.unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"));
        readers.push(s);
    }
    let stalled = settled_rss(&bin).await;
    let per_reader = stalled.saturating_sub(before) / READERS as u64;
    eprintln!("RSS {before} -> {stalled}: {per_reader} bytes per stalled HTTP/1.1 reader");
    assert!(
        per_reader <= 256 * 1024,
        "{per_reader} bytes per stalled reader"
    );
}
