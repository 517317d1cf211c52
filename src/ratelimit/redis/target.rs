//! Where the Redis of the shared limits is, and the one connection to it the store uses: a
//! single server, a Redis Cluster, or the master a Redis Sentinel names.
//!
//! Invariants:
//! - Every form runs the same script the same way: one key per call (`KEYS[1]`), so in a
//!   cluster each `EVALSHA` goes to the master of its key's slot, with no cross-slot call
//!   ever (`SCRIPT LOAD` goes to every master).
//! - A Sentinel's master is asked for again (in one background task at a time, never on the
//!   request path) whenever the connection to it is dropped: after an error, a timeout or a
//!   `READONLY` reply from a master demoted by a failover.
//! - Credentials are set on the connection settings only, never written into a URL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionInfo, RedisConnectionInfo};

use super::redacted_url;
use crate::config::FieldError;
use crate::config::raw::RawRedis;

/// The servers, as configured.
pub(super) enum Target {
    /// One server, reconnected by its `ConnectionManager`.
    Single {
        /// The server, with its credentials.
        client: redis::Client,
        /// Timeouts and reconnection back-off.
        config: ConnectionManagerConfig,
    },
    /// A Redis Cluster; its connection follows slots, `MOVED` and `ASK` by itself.
    Cluster(ClusterClient),
    /// The master a Sentinel names.
    Sentinel(Arc<SentinelTarget>),
}

/// What a Sentinel target needs to find (again) its master.
pub(super) struct SentinelTarget {
    /// The sentinels, and how to reach the master they name (its credentials, TLS or not).
    /// Only the resolving task locks it.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The master's name.
    master: Box<str>,
    /// The master's connection's timeouts and back-off.
    config: ConnectionManagerConfig,
    /// Bounds one lookup and connection.
    connect_timeout: Duration,
    /// A resolving task is running.
    resolving: AtomicBool,
}

/// A connection of any target: cheap to clone, every clone pipelined on the same sockets.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server (a single one, or a Sentinel's master).
    Server(ConnectionManager),
    /// Every master of a cluster.
    Cluster(ClusterConnection),
}

/// The connection settings the forms share: credentials for the Redis servers, the sentinels'
/// own, and the timeouts.
pub(super) struct Settings<'a> {
    /// The Redis servers' ACL user.
    pub username: Option<&'a str>,
    /// The Redis servers' password.
    pub password: Option<&'a str>,
    /// The sentinels' ACL user.
    pub sentinel_username: Option<&'a str>,
    /// The sentinels' password.
    pub sentinel_password: Option<&'a str>,
    /// Bounds connecting, and a stalled connection.
    pub connect_timeout: Duration,
    /// A private CA and a client certificate for `rediss://` (`ca_file`, `client_cert`).
    pub tls: Option<redis::TlsCertificates>,
}

// === impl Target ===

impl Target {
    /// Compiles `url`, `cluster` or `sentinel` (exactly one) with `settings`.
    pub(super) fn compile(
        raw: &RawRedis,
        settings: &Settings<'_>,
    ) -> Result<Self, Vec<FieldError>> {
        let forms = [
            raw.url.is_some().then_some("url"),
            raw.cluster.is_some().then_some("cluster"),
            raw.sentinel.is_some().then_some("sentinel"),
        ];
        let mut given = forms.iter().flatten();
        let Some(first) = given.next() else {
            return Err(vec![FieldError::new(
                "",
                "one of `url` (one server), `cluster` (node URLs) or `sentinel` (master and sentinel URLs) is required",
            )]);
        };
        if let Some(second) = given.next() {
            return Err(vec![FieldError::new(
                *second,
                format!("`{first}` is given too: keep one of `url`, `cluster` and `sentinel`"),
            )]);
        }
        // A connection stalled past this is dropped; each check has its own, shorter budget.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.connect_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        if let Some(url) = &raw.url {
            let info = parse_url("url", url)?;
            tls_needs_rediss(raw, settings, is_tls(&info), "url")?;
            let own = credentials(
                info.redis_settings().clone(),
                settings.username,
                settings.password,
            );
            let info = info.set_redis_settings(own);
            let client = match &settings.tls {
                None => redis::Client::open(info),
                Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            }
            .map_err(|e| vec![FieldError::new("url", reason(&e))])?;
            Ok(Self::Single { client, config })
        } else if let Some(urls) = &raw.cluster {
            let nodes = parse_urls("cluster", urls, "Redis Cluster has only database 0")?;
            tls_needs_rediss(raw, settings, nodes.first().is_some_and(is_tls), "cluster")?;
            let mut builder = ClusterClient::builder(nodes)
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.connect_timeout)
                // Each check has a budget of a few milliseconds: a couple of quick retries
                // (after `MOVED` during a resharding, say) and no more.
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if let Some(u) = settings.username {
                builder = builder.username(u);
            }
            if let Some(p) = settings.password {
                builder = builder.password(p);
            }
            if let Some(certs) = &settings.tls {
                builder = builder.certs(certs.clone());
            }
            let client = builder
                .build()
                .map_err(|e| vec![FieldError::new("cluster", reason(&e))])?;
            Ok(Self::Cluster(client))
        } else if let Some(s) = &raw.sentinel {
            let mut errors = Vec::new();
            if s.master.trim().is_empty() {
                errors.push(FieldError::new(
                    "sentinel.master",
                    "the master's name (`sentinel monitor NAME …`) must not be empty",
                ));
            }
            let sentinels = match parse_urls(
                "sentinel.urls",
                &s.urls,
                "a sentinel has no database: its master uses database 0",
            ) {
                Ok(v) => v,
                Err(mut es) => {
                    errors.append(&mut es);
                    Vec::new()
                }
            };
            if !errors.is_empty() {
                return Err(errors);
            }
            let tls = sentinels.first().is_some_and(is_tls);
            tls_needs_rediss(raw, settings, tls, "sentinel.urls")?;
            let invalid = |field: &'static str| {
                move |e: redis::RedisError| vec![FieldError::new(field, reason(&e))]
            };
            let addrs = sentinels.iter().map(|i| i.addr().clone());
            let mut builder =
                SentinelClientBuilder::new(addrs, s.master.as_str(), SentinelServerType::Master)
                    .map_err(invalid("sentinel.urls"))?;
            if let Some(u) = settings.sentinel_username {
                builder = builder.set_client_to_sentinel_username(u);
            }
            if let Some(p) = settings.sentinel_password {
                builder = builder.set_client_to_sentinel_password(p);
            }
            if let Some(u) = settings.username {
                builder = builder.set_client_to_redis_username(u);
            }
            if let Some(p) = settings.password {
                builder = builder.set_client_to_redis_password(p);
            }
            if tls {
                builder = builder.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
            }
            if let Some(certs) = &settings.tls {
                builder = builder
                    .set_client_to_sentinel_certificates(certs.clone())
                    .set_client_to_redis_certificates(certs.clone());
            }
            let sentinel = builder.build().map_err(invalid("sentinel.urls"))?;
            Ok(Self::Sentinel(Arc::new(SentinelTarget {
                sentinel: tokio::sync::Mutex::new(sentinel),
                master: s.master.as_str().into(),
                config,
                connect_timeout: settings.connect_timeout,
                resolving: AtomicBool::new(false),
            })))
        } else {
            // The first check returned when none is given.
            Err(Vec::new())
        }
    }

    /// `single`, `cluster` or `sentinel`, for the logs.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Single { .. } => "single",
            Self::Cluster(_) => "cluster",
            Self::Sentinel(_) => "sentinel",
        }
    }

    /// A new connection, made lazily, when one can be made at once; a Sentinel's master is
    /// looked up in the background and stored into `slot` when found (then `None`).
    pub(super) fn connect(&self, slot: &Arc<ArcSwapOption<Conn>>) -> Option<Conn> {
        match self {
            Self::Single { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .ok()
                    .map(Conn::Server)
            }
            Self::Cluster(client) => Some(Conn::Cluster(
                client.get_pending_async_connection_with_config(Default::default()),
            )),
            Self::Sentinel(s) => {
                s.resolve(Arc::downgrade(slot));
                None
            }
        }
    }

    /// Whether a failed call drops the connection: always for a Sentinel's master (the
    /// failure may be a failover), else only when the connection answered something that
    /// makes no sense (IO errors reconnect by themselves).
    pub(super) fn drops_on_failure(&self) -> bool {
        matches!(self, Self::Sentinel(_))
    }
}

// === impl SentinelTarget ===

impl SentinelTarget {
    /// Starts the task that asks the sentinels for the master and connects to it, unless one
    /// is running. It retries (after 50 ms, doubling to 500 ms: a failover takes a second or
    /// two, and a lookup is one small query) until it connects or the store is gone.
    fn resolve(self: &Arc<Self>, slot: Weak<ArcSwapOption<Conn>>) {
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let target = Arc::clone(self);
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                if slot.strong_count() == 0 {
                    break;
                }
                match tokio::time::timeout(target.connect_timeout, target.master()).await {
                    Ok(Ok(conn)) => {
                        // Cleared first: a failure of this very connection looks up again.
                        target.resolving.store(false, Ordering::Release);
                        if let Some(slot) = slot.upgrade() {
                            slot.store(Some(Arc::new(Conn::Server(conn))));
                        }
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(master = %target.master, error = %e, "Sentinel gave no reachable master");
                    }
                    Err(_) => {
                        tracing::debug!(master = %target.master, "Sentinel master lookup timed out");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            target.resolving.store(false, Ordering::Release);
        });
    }

    /// The master the sentinels name now (the client checks it says `master` to `ROLE`),
    /// connected.
    async fn master(&self) -> redis::RedisResult<ConnectionManager> {
        let client = self.sentinel.lock().await.async_get_client().await?;
        ConnectionManager::new_with_config(client, self.config.clone()).await
    }
}

// === impl Conn ===

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// `settings` with the user and password, if any.
fn credentials(
    mut settings: RedisConnectionInfo,
    username: Option<&str>,
    password: Option<&str>,
) -> RedisConnectionInfo {
    if let Some(u) = username {
        settings = settings.set_username(u);
    }
    if let Some(p) = password {
        settings = settings.set_password(p);
    }
    settings
}

/// Why redis-rs refused a setting: its detail, else its whole message (a TLS file's, say).
fn reason(e: &redis::RedisError) -> String {
    e.detail().map_or_else(|| e.to_string(), str::to_owned)
}

/// Whether a URL is `rediss://`.
fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
}

/// The first TLS file field written, for errors about them.
fn tls_field(raw: &RawRedis) -> Option<&'static str> {
    [
        (raw.ca_file.is_some(), "ca_file"),
        (raw.client_cert.is_some(), "client_cert"),
        (raw.client_key.is_some(), "client_key"),
    ]
    .into_iter()
    .find_map(|(set, field)| set.then_some(field))
}

/// TLS files need `rediss://` URLs: with `redis://` they would be ignored, and the
/// connection sent in clear text though the config asks for a private CA.
fn tls_needs_rediss(
    raw: &RawRedis,
    settings: &Settings<'_>,
    tls: bool,
    urls: &str,
) -> Result<(), Vec<FieldError>> {
    match tls_field(raw) {
        Some(field) if settings.tls.is_some() && !tls => Err(vec![FieldError::new(
            field,
            format!("needs `rediss://` URLs (TLS); `{urls}` says `redis://`"),
        )]),
        _ => Ok(()),
    }
}

/// One `redis://` or `rediss://` URL without credentials.
fn parse_url(field: &str, url: &str) -> Result<ConnectionInfo, Vec<FieldError>> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(vec![FieldError::new(
            field,
            format!(
                "`{}`: expected redis://HOST:PORT or rediss://HOST:PORT",
                redacted_url(url)
            ),
        )]);
    }
    if url.contains('@') {
        return Err(vec![FieldError::new(
            field,
            "credentials do not belong in the URL: use `username` and `password` (from `env` or `file`)",
        )]);
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
        vec![FieldError::new(
            field,
            format!(
                "`{}`: {}",
                redacted_url(url),
                e.detail().unwrap_or("invalid URL")
            ),
        )]
    })
}

/// A non-empty list of URLs, all TLS or none, each on database 0 (`no_db` says why).
fn parse_urls(
    field: &str,
    urls: &[String],
    no_db: &str,
) -> Result<Vec<ConnectionInfo>, Vec<FieldError>> {
    if urls.is_empty() {
        return Err(vec![FieldError::new(field, "at least one URL is required")]);
    }
    let mut errors = Vec::new();
    let mut infos = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let at = format!("{field}[{i}]");
        match parse_url(&at, url) {
            Ok(info) if info.redis_settings().db() != 0 => {
                errors.push(FieldError::new(at, no_db));
            }
            Ok(info) => infos.push(info),
            Err(mut es) => errors.append(&mut es),
        }
    }
    let tls = |u: &String| u.starts_with("rediss://");
    if let Some(i) = urls.iter().position(|u| tls(u) != tls(&urls[0])) {
        errors.push(FieldError::new(
            format!("{field}[{i}]"),
            "`redis://` and `rediss://` mixed: all use TLS or none does",
        ));
    }
    if errors.is_empty() {
        Ok(infos)
    } else {
        Err(errors)
    }
}
