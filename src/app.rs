//! The running gateway: binds every listener (port 0 allowed), reports their addresses, serves,
//! reloads and shuts down gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::admin::{self, AdminState};
use crate::config::reload::{ReloadError, ReloadOutcome, Reloader, Trigger};
use crate::config::{self, Diagnostic};
use crate::door::DoorHandler;
use crate::request::facts::Door;
use crate::server::Shared;
use crate::server::listener::{AcceptLoop, Handler, Place, ProxyHandler};
use crate::telemetry::metrics::Metrics;

/// A started gateway.
#[derive(Debug)]
pub struct App {
    reloader: Arc<Reloader>,
    admin: Arc<AdminState>,
    listeners: Vec<(Arc<str>, SocketAddr)>,
    admin_addr: SocketAddr,
    public_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    drain_tx: Option<mpsc::Sender<()>>,
    drain_rx: mpsc::Receiver<()>,
    /// Stops the admin listeners, once the doors have drained.
    admin_shutdown: watch::Sender<bool>,
    /// Held by every admin connection (the sender, dropped at shutdown) and awaited.
    admin_drain: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    /// Set once the shutdown's grace is over (`Shared::grace_over`).
    grace_over: Arc<AtomicBool>,
    /// Set at the stop signal (`Shared::stopping`).
    stopping: Arc<AtomicBool>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config has errors.
    #[error("invalid config:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<Diagnostic>),
    /// A listener could not bind.
    #[error("cannot bind {name} to {address}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Options that are not in the config file.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch files and reload on change.
    pub watch: bool,
    /// Quiet period before a watched change is reloaded.
    pub watch_debounce: Duration,
    /// The clock decisions read (tests move a manual one).
    pub clock: crate::clock::Clock,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            watch: true,
            watch_debounce: Duration::from_millis(200),
            clock: crate::clock::Clock::system(),
        }
    }
}

// === impl App ===

impl App {
    /// Loads the config, binds every listener and starts serving.
    pub async fn start(config_path: &Path, options: Options) -> Result<Self, StartError> {
        let path: PathBuf = config_path.to_path_buf();
        let clock = options.clock.clone();
        let (loaded, built) = tokio::task::spawn_blocking(move || {
            let loaded = config::reload::Loaded::before(&path);
            (loaded, config::build_with_clock(&path, None, clock))
        })
        .await
        .map_err(|e| {
            StartError::Config(vec![Diagnostic::file_error(
                &config_path.display().to_string(),
                format!("config task failed: {e}"),
            )])
        })?;
        let (snapshot, warnings) = built.map_err(StartError::Config)?;
        for w in &warnings {
            tracing::warn!(diagnostic = %w, "Config warning");
        }
        let metrics = Arc::new(Metrics::new());
        // Key fetches start now, in the background; /readyz waits for them.
        snapshot.authn.start();
        snapshot.rate_limits.start();

        let mut bound = Vec::with_capacity(snapshot.listeners.len());
        for l in &snapshot.listeners {
            bound.push(bind(&l.name, l.address).await?);
        }
        let (admin_tcp, admin_addr) = bind("admin", snapshot.admin_address).await?;
        let public_tcp = match snapshot.restart.public_address {
            Some(address) => Some(bind("admin public", address).await?),
            None => None,
        };
        let max_connections = snapshot.restart.max_connections;
        let max_in_flight = snapshot.restart.max_in_flight;
        let names: Vec<Arc<str>> = snapshot.listeners.iter().map(|l| l.name.clone()).collect();
        let doors: Vec<Door> = snapshot.listeners.iter().map(|l| l.door.door()).collect();
        let version = snapshot.version.clone();

        let reloader = Arc::new(Reloader::new(
            config_path.to_path_buf(),
            snapshot,
            Arc::clone(&metrics),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let grace_over = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            current: Arc::clone(reloader.current()),
            metrics: Arc::clone(&metrics),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            decisions_in_flight: Arc::new(Semaphore::new(max_in_flight)),
            decision_listener: None,
            shutdown: shutdown_rx.clone(),
            grace_over: Arc::clone(&grace_over),
            stopping: Arc::clone(&stopping),
            uploads: Arc::default(),
        });
        let (drain_tx, drain_rx) = mpsc::channel(1);
        let connections = Arc::new(Semaphore::new(max_connections));
        let was_ready = Arc::clone(reloader.ready_latch());

        let mut listeners = Vec::with_capacity(bound.len());
        for (index, ((tcp, addr), (name, door))) in bound
            .into_iter()
            .zip(names.into_iter().zip(doors))
            .enumerate()
        {
            listeners.push((Arc::clone(&name), addr));
            tracing::info!(listener = &*name, %addr, door = door.as_str(), "Listening");
            // Why: one pool for every listener let connections to a proxy listener (anyone's,
            // silent ones) take every slot, or requests it held (a slow upstream's) every
            // permit, and the decision doors' peers then waited in the kernel's backlog or were
            // shed: an Envoy Check that fails or times out is one `failure_mode_allow: true`
            // turns into an allow. The same holds between two decision doors (nginx's clients
            // crowding out Envoy's Checks), so each decision listener has pools of its own, as
            // large as the proxy's; the proxy's listeners share theirs.
            // Regression: tests (it) abuse::the_proxy_cannot_take_the_decision_doors_connections,
            // abuse::the_proxy_cannot_take_the_decision_doors_permits
            let (shared, connections) = match door {
                Door::Proxy => (Arc::clone(&shared), Arc::clone(&connections)),
                _ => (
                    Arc::new(Shared {
                        current: Arc::clone(&shared.current),
                        metrics: Arc::clone(&shared.metrics),
                        in_flight: Arc::clone(&shared.in_flight),
                        decisions_in_flight: Arc::new(Semaphore::new(max_in_flight)),
                        decision_listener: Some(index),
                        shutdown: shared.shutdown.clone(),
                        grace_over: Arc::clone(&shared.grace_over),
                        stopping: Arc::clone(&shared.stopping),
                        uploads: Arc::default(),
                    }),
                    Arc::new(Semaphore::new(max_connections)),
                ),
            };
            let spawn = Spawn {
                index,
                name,
                listener: tcp,
                shared: Arc::clone(&shared),
                connections,
                shutdown: shutdown_rx.clone(),
                drain: drain_tx.clone(),
            };
            match door {
                Door::Proxy => spawn.run(ProxyHandler(Arc::clone(&shared)), door),
                Door::ForwardAuth => spawn.run(
                    DoorHandler {
                        door: Arc::new(crate::forward_auth::ForwardAuth),
                        shared: Arc::clone(&shared),
                        index,
                    },
                    door,
                ),
                Door::EnvoyHttp => spawn.run(
                    DoorHandler {
                        door: Arc::new(crate::extauthz::http::EnvoyHttp),
                        shared: Arc::clone(&shared),
                        index,
                    },
                    door,
                ),
                Door::EnvoyGrpc => spawn.run(
                    crate::extauthz::grpc::GrpcHandler::new(
                        Arc::clone(&shared),
                        index,
                        Arc::clone(&was_ready),
                    )
                    .await,
                    door,
                ),
            }
        }

        // Why: the admin listeners outlive the doors' drain, so health checks and scrapes are
        // answered (`/readyz`: not ready) while the doors finish their requests; they are
        // drained after. Their requests count against limits of their own, never the doors'.
        let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
        let (admin_drain_tx, admin_drain_rx) = mpsc::channel(1);
        let admin_loop = AdminLoop {
            current: Arc::clone(reloader.current()),
            uncounted: Arc::new(Metrics::new()),
            shutdown: admin_shutdown_rx,
            drain: admin_drain_tx,
        };
        let admin = Arc::new(AdminState {
            reloader: Arc::clone(&reloader),
            metrics,
            ready: AtomicBool::new(true),
            was_ready,
        });
        tracing::info!(addr = %admin_addr, "Admin listening");
        let public_addr = public_tcp.map(|(tcp, addr)| {
            tracing::info!(%addr, "Public admin listening (health and JWKS only)");
            admin_listener(
                &admin_loop,
                "admin public",
                tcp,
                &admin,
                admin::Scope::Public,
            );
            addr
        });
        admin_listener(&admin_loop, "admin", admin_tcp, &admin, admin::Scope::Full);
        drop(shutdown_rx);

        if options.watch
            && let Err(e) = config::reload::spawn_watcher(
                Arc::clone(&reloader),
                options.watch_debounce,
                &loaded,
            )
        {
            tracing::warn!(error = %e, "File watching unavailable; reload with SIGHUP or POST /reload");
        }
        tracing::info!(version = &*version, "Portcullis started");
        Ok(Self {
            reloader,
            admin,
            listeners,
            admin_addr,
            public_addr,
            shutdown,
            drain_tx: Some(drain_tx),
            drain_rx,
            admin_shutdown,
            admin_drain: Some((admin_loop.drain, admin_drain_rx)),
            grace_over,
            stopping,
        })
    }

    /// The bound address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    /// Every client listener with its bound address, in config order.
    pub fn listener_addrs(&self) -> &[(Arc<str>, SocketAddr)] {
        &self.listeners
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The public admin listener's bound address, when configured.
    pub fn public_admin_addr(&self) -> Option<SocketAddr> {
        self.public_addr
    }

    /// Reloads the config now (what SIGHUP does).
    pub async fn reload(&self) -> Result<ReloadOutcome, ReloadError> {
        self.reloader.reload(Trigger::Signal).await
    }

    /// The active config version.
    pub fn version(&self) -> Arc<str> {
        self.reloader.current().load().version.clone()
    }

    /// Stops accepting, lets in-flight requests finish within the configured grace period,
    /// then returns. Returns whether every connection drained in time.
    pub async fn shutdown(mut self) -> bool {
        let grace = self.reloader.current().load().server.shutdown_grace;
        self.admin.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        self.drain_tx = None;
        let drained = tokio::time::timeout(grace, self.drain_rx.recv())
            .await
            .is_ok();
        if drained {
            tracing::info!("All connections drained");
        } else {
            self.grace_over.store(true, Ordering::Relaxed);
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "Shutdown grace period over; closing remaining connections"
            );
        }
        // Then the admin listeners: a request being answered (a reload, a scrape) finishes.
        let _ = self.admin_shutdown.send(true);
        if let Some((tx, mut rx)) = self.admin_drain.take() {
            drop(tx);
            let _ = tokio::time::timeout(ADMIN_DRAIN, rx.recv()).await;
        }
        // The spans of the last requests, sent while the runtime still runs.
        let otlp = self.reloader.current().load().otlp.clone();
        if let Some(otlp) = otlp {
            otlp.shutdown().await;
        }
        drained
    }

    /// Serves until SIGTERM or SIGINT (then drains); SIGHUP reloads.
    ///
    /// Why a reload runs beside the signals rather than before the next one is read: a
    /// reload stuck reading a file (a hung mount, a secret fed through a named pipe) held
    /// SIGTERM and SIGINT unread, and only SIGKILL ended the gateway. A stop signal now
    /// abandons the reload (its reading thread is left behind; the process ends anyway).
    /// (A named pipe no longer blocks a reload: `config::files` refuses it at once. Its test
    /// was that pipe; a hung mount, which nothing on a test machine can stage, is what is
    /// left for this to catch.) Regression: tests (it)
    /// shutdown::a_pipe_fails_a_reload_at_once_and_the_stop_signal_still_ends_the_gateway
    pub async fn run_until_signal(self, signals: Signals) -> bool {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = signals;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let reload = self.reloader.reload(Trigger::Signal);
                    let stopped = tokio::select! {
                        _ = reload => false,
                        _ = term.recv() => true,
                        _ = int.recv() => true,
                    };
                    if stopped {
                        tracing::warn!("Stop signal during a reload: the reload is abandoned");
                        break;
                    }
                }
            }
        }
        tracing::info!("Shutting down");
        // Why: the doors stopped accepting at once, while a load balancer (Kubernetes'
        // endpoints, spread to every node's proxies) still sent new connections for a few
        // seconds: refused, each a failed request of every rollout. `shutdown_delay` keeps
        // serving, not ready, for that long first.
        // Regression: tests (it) shutdown::the_shutdown_delay_serves_on_not_ready
        let delay = self.reloader.current().load().server.shutdown_delay;
        self.admin.ready.store(false, Ordering::Relaxed);
        self.stopping.store(true, Ordering::Relaxed);
        // Only a second SIGINT (a second Ctrl-C): a supervisor may send SIGTERM twice for one
        // stop (systemd's `ExecStop=kill -TERM`, then its own `KillSignal`), which must not
        // cut the drain.
        let second = async {
            loop {
                tokio::select! {
                    _ = term.recv() => {
                        tracing::info!("SIGTERM again: already draining");
                    }
                    _ = int.recv() => break,
                }
            }
        };
        tokio::pin!(second);
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "Not ready; serving on for the shutdown delay, then draining"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut second => {
                    tracing::warn!("Second stop signal: exiting now");
                    return false;
                }
            }
        }
        // Why: a second Ctrl-C was ignored until the grace ran out; an operator who presses
        // it means now.
        // Regression: tests (it) shutdown::a_second_stop_signal_exits_at_once
        tokio::select! {
            drained = self.shutdown() => drained,
            () = &mut second => {
                tracing::warn!("Second stop signal: exiting now, without waiting for the drain");
                false
            }
        }
    }
}

/// The handlers of SIGTERM, SIGINT and SIGHUP, installed before [`App::start`] reads the
/// config or binds anything.
///
/// Why: a signal's default action ends the process. Installed only once the gateway was
/// serving, a SIGHUP sent as soon as "Listening" was logged (a supervisor's reload, a deploy
/// script's) killed the gateway with its first connections unanswered (reset). Installed
/// first, it is queued until the gateway serves, then reloads.
/// Regression: tests (it) shutdown::a_sighup_as_the_gateway_starts_reloads_it
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the three handlers; `None` when the system refuses one. Must run inside the
    /// runtime.
    pub fn install() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Self {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Longest wait for the admin listeners' last requests once the doors have drained.
const ADMIN_DRAIN: Duration = Duration::from_secs(5);

/// What every admin listener's accept loop shares.
struct AdminLoop {
    current: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    /// Where the admin connections' own counts go: not the exported metrics.
    uncounted: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
}

/// Serves an admin listener on the connection loop every door uses, with its own limits of
/// connections and requests in flight.
fn admin_listener(
    admin_loop: &AdminLoop,
    name: &str,
    listener: TcpListener,
    state: &Arc<AdminState>,
    scope: admin::Scope,
) {
    tokio::spawn(
        AcceptLoop {
            handler: Arc::new(admin::AdminHandler {
                state: Arc::clone(state),
                scope,
            }),
            place: Place::Admin {
                max_life: admin::MAX_CONNECTION_LIFE,
            },
            name: name.into(),
            listener,
            // Its own limit of requests in flight, as of connections.
            shared: Arc::new(Shared {
                current: Arc::clone(&admin_loop.current),
                // Why: the connection metrics (open, parked, the limits that closed one) are
                // the doors'; a scraper's or a health checker's idle keep-alive connection is
                // no client's. The admin's connections count in a registry nobody exports.
                // Regression: tests (it) proxy::admin_connections_stay_out_of_the_doors_metrics
                metrics: Arc::clone(&admin_loop.uncounted),
                in_flight: Arc::new(Semaphore::new(admin::MAX_CONNECTIONS)),
                decisions_in_flight: Arc::new(Semaphore::new(0)),
                decision_listener: None,
                shutdown: admin_loop.shutdown.clone(),
                grace_over: Arc::default(),
                stopping: Arc::default(),
                uploads: Arc::default(),
            }),
            connections: Arc::new(Semaphore::new(admin::MAX_CONNECTIONS)),
            per_client: Some(crate::server::listener::PerClient::new(
                admin::MAX_CONNECTIONS_PER_CLIENT,
            )),
            strangers: None,
            shutdown: admin_loop.shutdown.clone(),
            drain: admin_loop.drain.clone(),
        }
        .run(),
    );
}

/// What an accept loop needs besides its door's handler.
struct Spawn {
    index: usize,
    name: Arc<str>,
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
}

impl Spawn {
    /// Serves the listener with `handler` until shutdown.
    fn run<H: Handler>(self, handler: H, door: Door) {
        tokio::spawn(
            AcceptLoop {
                handler: Arc::new(handler),
                place: Place::Door {
                    door,
                    index: self.index,
                },
                name: self.name,
                listener: self.listener,
                shared: self.shared,
                connections: self.connections,
                per_client: None,
                strangers: H::DECIDES_ONLY
                    .then(|| Arc::new(Semaphore::new(crate::server::listener::STRANGERS))),
                shutdown: self.shutdown,
                drain: self.drain,
            }
            .run(),
        );
    }
}

/// Binds a listener and reads back its address (the port, when it asked for port 0).
async fn bind(name: &str, address: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind {
        name: name.to_owned(),
        address,
        source,
    };
    let tcp = TcpListener::bind(address).await.map_err(error)?;
    let bound = tcp.local_addr().map_err(error)?;
    Ok((tcp, bound))
}
