//! The other forms of `redis:`, against real servers started by each test on free loopback
//! ports: a Redis Cluster of three masters, where two gateway processes share budgets exactly
//! across keys on different masters; and a Sentinel, through which the gateway finds the
//! master, and again after the master is killed and the sentinel fails over to the replica.
//!
//! A missing `redis-server` or `redis-cli` skips these tests (saying so) unless
//! `PORTCULLIS_REQUIRE_PEERS` is set, as `.ci/run` does after installing them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use http_body_util::Full;

use super::{Gateway, RedisServer, free_port, metric, ping, timed};
use crate::support::{Setup, eventually, send};

/// `redis-cli`, or `None` (the test skips).
fn redis_cli() -> Option<PathBuf> {
    crate::peers::tool(&["redis-cli"], "redis-tools")
}

/// `redis-cli ARGS…`'s standard output, run off the test's runtime thread.
async fn cli(bin: &Path, args: &[String]) -> String {
    let (bin, args) = (bin.to_owned(), args.to_vec());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli -p PORT ARGS…`, with `password` when given.
async fn cli_at(bin: &Path, port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut all = vec!["-p".to_owned(), port.to_string()];
    if let Some(p) = password {
        all.extend(["-a", p, "--no-auth-warning"].map(str::to_owned));
    }
    all.extend(args.iter().map(|a| (*a).to_owned()));
    cli(bin, &all).await
}

/// The number after `field:` in an `INFO` reply.
fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(field)?
            .strip_prefix(':')?
            .parse()
            .ok()
    })
}

/// Three masters (no replicas) started with `cluster-enabled yes` and joined by
/// `redis-cli --cluster create`; two gateway processes with four limits, whose keys land on
/// different slots (each limit's name is part of its key) and, as checked, on more than one
/// master. Thirty-two requests at once, spread over both gateways, admit exactly each
/// limit's budget.
#[tokio::test]
async fn cluster_two_gateway_processes_share_budgets_across_slots() {
    let Some(bin) = redis_cli() else {
        return;
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        // Why the bus port is chosen too: by default it is the port + 10000, past 65535 for a
        // free port high in the ephemeral range, or taken by another test's socket; the node
        // then never answered (a CI run failed so).
        let bus = free_port().port().to_string();
        let Some(node) = RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus,
        ])
        .await
        else {
            return;
        };
        nodes.push(node);
    }
    let started = Instant::now();
    let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
    create.extend(nodes.iter().map(|n| n.addr().to_string()));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(str::to_owned));
    let out = cli(&bin, &create).await;
    assert!(out.contains("All 16384 slots covered"), "{out}");
    for n in &nodes {
        let (bin, port) = (&bin, n.port);
        let ok = eventually(Duration::from_secs(10), || async move {
            cli_at(bin, port, None, &["CLUSTER", "INFO"])
                .await
                .contains("cluster_state:ok")
        })
        .await;
        assert!(ok, "cluster_state:ok on {port}");
    }
    eprintln!("cluster up in {:?}", started.elapsed());

    let echo = portcullis::echo::Echo::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let names = ["a", "b", "c", "d"];
    // Two of the three nodes named: the gateway learns the third from them.
    let mut config = format!(
        "redis: {{cluster: [\"{}\", \"{}\"], timeout: 1s}}\nrate_limits:\n",
        nodes[0].url(),
        nodes[1].url()
    );
    let mut policy = "rules:\n".to_owned();
    for n in names {
        config.push_str(&format!(
            "  {n}: {{key: route, requests: 3, per: 1h, backend: redis, on_redis_failure: deny}}\n"
        ));
        policy.push_str(&format!(
            "  - {{name: {n}, match: {{paths: [\"/{n}/**\"]}}, effect: allow, anonymous: true, rate_limit: {n}, upstream: echo}}\n"
        ));
    }
    let gateways = [
        Gateway::spawn(echo.addr, &config, &policy).await,
        Gateway::spawn(echo.addr, &config, &policy).await,
    ];
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (addr, name) = (gateways[i % 2].listen, names[i / 2 % names.len()]);
        tasks.push(tokio::spawn(async move {
            let path = format!("/{name}/x");
            let status = send(addr, Request::get(path).body(Full::default()).unwrap())
                .await
                .0;
            (name, status)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    for n in names {
        let statuses: Vec<StatusCode> = results
            .iter()
            .filter(|(name, _)| *name == n)
            .map(|(_, s)| *s)
            .collect();
        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let limited = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert_eq!((ok, limited), (3, 5), "limit {n}: {statuses:?}");
    }
    assert_eq!(echo.count(), 12, "exactly the budgets reached the upstream");
    // One key per limit, on more than one master: the checks went to different slots' nodes.
    let mut holding = 0;
    let mut keys = 0;
    for n in &nodes {
        let size: u64 = cli_at(&bin, n.port, None, &["DBSIZE"])
            .await
            .trim()
            .parse()
            .unwrap();
        keys += size;
        holding += usize::from(size > 0);
    }
    assert_eq!(keys, 4, "one key per limit");
    assert!(holding >= 2, "the keys are spread over {holding} master(s)");
}

/// A `redis-server … --sentinel`, killed when dropped.
struct SentinelServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelServer {
    /// A sentinel watching the master at `master` as `limits`, quick to fail over: down
    /// after 300 ms without an answer, a failover given up after 2 s. Its clients need
    /// [`SENTINELS`]' password; it uses [`SERVERS`]' with the servers.
    async fn start(master: SocketAddr) -> Option<Self> {
        let bin = crate::peers::tool(&["redis-server"], "redis-server")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor limits {ip} {mport} 1\n\
                 sentinel down-after-milliseconds limits 300\n\
                 sentinel failover-timeout limits 2000\n\
                 sentinel auth-pass limits {servers}\n\
                 requirepass {sentinels}\n",
                servers = SERVERS.unwrap_or_default(),
                sentinels = SENTINELS.unwrap_or_default(),
                dir = dir.path().display(),
                ip = master.ip(),
                mport = master.port(),
            ),
        )
        .unwrap();
        use std::os::unix::process::CommandExt as _;
        let child = Command::new(bin)
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("redis-server --sentinel starts");
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let up = eventually(Duration::from_secs(10), || async move {
            ping(addr).await.is_some_and(|r| r.starts_with("-NOAUTH"))
        })
        .await;
        assert!(
            up,
            "sentinel answers PING (asking for its password) on {addr}"
        );
        Some(server)
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Redis servers' password (master and replica alike), from a file at the gateway.
const SERVERS: Option<&str> = Some("servers-s3cret");

/// The sentinel's own password, from another file.
const SENTINELS: Option<&str> = Some("sentinels-s3cret");

/// One master, one replica and one sentinel, each requiring a password. The gateway, given
/// only the sentinel and the master's name, finds the master; the master is killed; once the
/// sentinel has promoted the replica, the gateway checks there, and the budget spent before
/// the failover stays spent.
#[tokio::test]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let Some(bin) = redis_cli() else {
        return;
    };
    // A replica's first sync starts at once, not after the default 5 s wait for others.
    let password = SERVERS.unwrap_or_default();
    let auth = ["--requirepass", password, "--masterauth", password];
    let Some(mut master) =
        RedisServer::start_with(&[&auth[..], &["--repl-diskless-sync-delay", "0"]].concat()).await
    else {
        return;
    };
    let master_port = master.port.to_string();
    let Some(replica) =
        RedisServer::start_with(&[&auth[..], &["--replicaof", "127.0.0.1", &master_port]].concat())
            .await
    else {
        return;
    };
    let (b, rport) = (&bin, replica.port);
    let linked = eventually(Duration::from_secs(10), || async move {
        cli_at(b, rport, SERVERS, &["INFO", "replication"])
            .await
            .contains("master_link_status:up")
    })
    .await;
    assert!(linked, "the replica follows the master");
    let Some(sentinel) = SentinelServer::start(master.addr()).await else {
        return;
    };
    let (b, sport) = (&bin, sentinel.port);
    let known = eventually(Duration::from_secs(10), || async move {
        cli_at(b, sport, SENTINELS, &["SENTINEL", "replicas", "limits"])
            .await
            .lines()
            .any(|l| l.trim() == rport.to_string())
    })
    .await;
    assert!(known, "the sentinel knows the replica");

    let gw = Setup {
        policies: vec![(
            "10-p.yaml".into(),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, rate_limit: l, upstream: echo}\n".into(),
        )],
        files: vec![
            ("redis.pass".into(), password.as_bytes().to_vec()),
            (
                "sentinel.pass".into(),
                SENTINELS.unwrap_or_default().as_bytes().to_vec(),
            ),
        ],
        extra: format!(
            "redis:
  sentinel: {{master: limits, urls: [\"redis://127.0.0.1:{sport}\"], password: {{file: sentinel.pass}}}}
  password: {{file: redis.pass}}
  timeout: 100ms
  connect_timeout: 200ms
  breaker_failures: 3
  breaker_cool_down: 100ms
rate_limits:
  l: {{key: client_ip, requests: 4, per: 1h, backend: redis, on_redis_failure: deny}}
"
        ),
        ..Setup::default()
    }
    .start()
    .await;
    // Fail closed: 200 means the master answered. The first waits for the lookup.
    let found = eventually(Duration::from_secs(10), || async {
        timed(&gw, "/x").await.0 != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(found, "the gateway finds the master through the sentinel");
    assert_eq!(timed(&gw, "/x").await.0, StatusCode::OK, "2 of 4 spent");
    // The replica has both writes before the master goes.
    let (b, mport) = (&bin, master.port);
    let synced = eventually(Duration::from_secs(10), || async move {
        let m = info_field(
            &cli_at(b, mport, SERVERS, &["INFO", "replication"]).await,
            "master_repl_offset",
        );
        let r = info_field(
            &cli_at(b, rport, SERVERS, &["INFO", "replication"]).await,
            "slave_repl_offset",
        );
        m.is_some() && m == r
    })
    .await;
    assert!(synced, "the replica caught up");

    master.kill();
    let killed = Instant::now();
    // Until the sentinel promotes the replica: 503 rate_limit_unavailable, fast. Then the
    // new master's verdict: the two left of the budget, then 429.
    let mut statuses = Vec::new();
    while killed.elapsed() < Duration::from_secs(15) {
        let (status, reason, took) = timed(&gw, "/x").await;
        assert!(
            took < super::BOUND,
            "a check during the failover took {took:?}"
        );
        if status != StatusCode::SERVICE_UNAVAILABLE {
            statuses.push(status);
            break;
        }
        assert_eq!(reason, "rate_limit_unavailable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!statuses.is_empty(), "limits work again after the failover");
    eprintln!(
        "limits back {:?} after the master was killed",
        killed.elapsed()
    );
    for _ in 0..2 {
        statuses.push(timed(&gw, "/x").await.0);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "the budget spent before the failover stays spent"
    );
    let now_master = cli_at(
        &bin,
        sport,
        SENTINELS,
        &["SENTINEL", "get-master-addr-by-name", "limits"],
    )
    .await;
    assert!(
        now_master.lines().any(|l| l.trim() == rport.to_string()),
        "the replica is the master now: {now_master}"
    );
    let (_, metrics) = gw.admin_get("/metrics").await;
    assert!(
        metric(&metrics, "portcullis_redis_errors_total{kind=\"error\"}")
            + metric(&metrics, "portcullis_redis_errors_total{kind=\"timeout\"}")
            > 0,
        "the failover was seen:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "portcullis_redis_breaker_state"),
        0,
        "{metrics}"
    );
    for page in ["/config", "/metrics"] {
        let (_, body) = gw.admin_get(page).await;
        assert!(!body.contains("s3cret"), "{page}: {body}");
    }
}
