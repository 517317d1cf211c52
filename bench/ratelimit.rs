//! Rate-limit micro-benchmarks (criterion): one check of a local limit and one of a Redis
//! limit (a round trip to a `redis-server` this bench starts on a free loopback port; skipped
//! with a message when none is installed), both through `Limit::check` as the decision core
//! calls it. `cargo bench --bench ratelimit`.

#![allow(
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    missing_docs,
    reason = "benchmark set-up"
)]

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::ratelimit::Checked;
use portcullis::ratelimit::gcra::Mode;
use portcullis::request::RequestFacts;
use portcullis::request::facts::ConnInfo;

/// A `redis-server` on a free port, killed on drop.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Option<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let r = Redis(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn benches(c: &mut Criterion) {
    let redis = redis();
    if redis.is_none() {
        println!(
            "redis-server not found: the Redis check is skipped (apt-get install redis-server)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: u}\n",
    )
    .unwrap();
    let mut config = "listeners: [{name: l, address: \"127.0.0.1:0\"}]\nupstreams: {u: {url: \"http://127.0.0.1:9\"}}\npolicies: {dir: policies}\n".to_owned();
    if let Some(r) = &redis {
        config.push_str(&format!(
            "redis: {{url: \"redis://127.0.0.1:{}\", timeout: 100ms}}\n",
            r.1
        ));
    }
    config.push_str("rate_limits:\n  local: {key: client_ip, requests: 1000000000, per: 1s}\n");
    if redis.is_some() {
        config.push_str("  remote: {key: client_ip, requests: 1000000, per: 1s, backend: redis, on_redis_failure: deny}\n");
    }
    std::fs::write(dir.path().join("c.yaml"), config).unwrap();
    let (snapshot, _) = portcullis::config::build(&dir.path().join("c.yaml"), None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn = ConnInfo::new("192.0.2.7:50000".parse().unwrap(), "l".into(), None);
    let (parts, ()) = http::Request::get("/api/orders/42")
        .header("host", "api.example.com")
        .body(())
        .unwrap()
        .into_parts();
    let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();

    let local = snapshot.rate_limits.get("local").unwrap();
    c.bench_function("check_local", |b| {
        b.iter(|| {
            let r = rt.block_on(local.check(black_box(&facts), None, "all", Mode::Spend));
            assert!(matches!(r, Checked::Allowed(Some(_))));
        });
    });
    if let Some(remote) = snapshot.rate_limits.get("remote") {
        // Connected and the script loaded before measuring.
        assert!(matches!(
            rt.block_on(remote.check(&facts, None, "all", Mode::Spend)),
            Checked::Allowed(Some(_))
        ));
        c.bench_function("check_redis", |b| {
            b.iter(|| {
                let r = rt.block_on(remote.check(black_box(&facts), None, "all", Mode::Spend));
                assert!(matches!(r, Checked::Allowed(Some(_))));
            });
        });
    }
    drop(redis);
}

criterion_group! {
    name = ratelimit;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(ratelimit);
