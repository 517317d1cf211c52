//! One `reload()` for every trigger: file watch, SIGHUP and `POST /reload`.
//!
//! A reload loads and compiles in full on a blocking thread; only a snapshot that compiled
//! without error and changes no restart-only setting is swapped in. Otherwise the running
//! snapshot stays, the error is logged, counted and kept for the admin listener.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Diagnostic;
use super::compile::{refuses_the_reload, restart_only_changes};
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// `POST /reload` on the admin listener.
    Admin,
}

/// A reload that changed nothing or swapped in a new snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot is active.
    Applied {
        /// Its version.
        version: Arc<str>,
    },
    /// The files compiled to the active version.
    Unchanged {
        /// The active version.
        version: Arc<str>,
    },
}

/// A reload that failed; the running snapshot stays. It keeps every error diagnostic, located
/// (file, line, column, field), for the log, `POST /reload` and `/config`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ReloadError(pub Vec<Diagnostic>);

/// What the admin listener shows about reloads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Last reload attempt.
    pub last_attempt: Option<SystemTime>,
    /// The last failed reload's diagnostics, one per line, cleared by a successful one.
    pub last_error: Option<String>,
    /// The same diagnostics, structured; after an applied reload, its warnings.
    pub last_diagnostics: Vec<Diagnostic>,
}

/// Owns the active snapshot and reloads it.
#[derive(Debug)]
pub struct Reloader {
    config_path: PathBuf,
    current: Arc<ArcSwap<Snapshot>>,
    status: Mutex<ReloadStatus>,
    serial: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// The files the last reload's config reads, when it was refused: watched too, until a
    /// reload succeeds.
    refused_reads: Mutex<Vec<PathBuf>>,
    /// Set once the gateway's key sources were all fetched: `/readyz` stays ready from then
    /// ([`crate::admin::AdminState::was_ready`]).
    ready_latch: Arc<std::sync::atomic::AtomicBool>,
}

// === impl Reloader ===

impl Reloader {
    /// Wraps the initial snapshot.
    pub fn new(config_path: PathBuf, initial: Snapshot, metrics: Arc<Metrics>) -> Self {
        metrics.set_config_version(&initial.version);
        let current = Arc::new(ArcSwap::from_pointee(initial));
        metrics.watch(&current);
        Self {
            config_path,
            current,
            status: Mutex::new(ReloadStatus::default()),
            serial: tokio::sync::Mutex::new(()),
            metrics,
            refused_reads: Mutex::new(Vec::new()),
            ready_latch: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    /// The latch `/readyz` keeps once every key source was fetched.
    pub fn ready_latch(&self) -> &Arc<std::sync::atomic::AtomicBool> {
        &self.ready_latch
    }

    /// What the watcher watches: what the running config reads and, after a refused reload,
    /// what the refused config reads.
    ///
    /// Why: a config naming a file not there yet (a new certificate, a secret) is refused;
    /// the file, made next, was no file of the running config, and its arrival woke nothing:
    /// the fix applied only on SIGHUP or `POST /reload`.
    /// Regression: tests (it) reload::a_file_a_refused_config_names_is_watched
    fn watched(&self) -> Vec<PathBuf> {
        let mut all = self.current.load().watched.clone();
        if let Ok(refused) = self.refused_reads.lock() {
            all.extend(refused.iter().cloned());
        }
        all
    }

    /// The shared handle requests load the snapshot from.
    pub fn current(&self) -> &Arc<ArcSwap<Snapshot>> {
        &self.current
    }

    /// The reload status for the admin listener.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Loads, compiles and, when everything is valid, swaps in the new snapshot.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        let previous = self.current.load_full();
        let path = self.config_path.clone();
        let prev = Arc::clone(&previous);
        let built = tokio::task::spawn_blocking(move || {
            let mut referenced = Vec::new();
            let built = super::build_watching(&path, Some(&prev), &mut referenced);
            (built, referenced)
        })
        .await
        .map_err(|e| {
            let display = self.config_path.display().to_string();
            ReloadError(vec![Diagnostic::file_error(
                &display,
                format!("reload task failed: {e}"),
            )])
        })?;
        let (built, referenced) = built;
        let mut kept_warnings = Vec::new();
        // Restart-only settings changed in the file, which keep their running value.
        let mut waiting: Vec<Diagnostic> = Vec::new();
        if let Ok(mut refused) = self.refused_reads.lock() {
            *refused = referenced;
        }
        let result = match built {
            Err(diags) => Err(ReloadError(
                diags.into_iter().filter(Diagnostic::is_error).collect(),
            )),
            Ok((mut next, warnings)) => {
                // Said once the reload is known to stand (logged below): a refused one's
                // warnings described a config that never ran ("every request will be denied"
                // before the refusal of an emptied policy set kept the old rules).
                kept_warnings = warnings;
                let (restart, changed): (Vec<_>, Vec<_>) = restart_only_changes(&previous, &next)
                    .into_iter()
                    .partition(|(field, _)| refuses_the_reload(field));
                if !changed.is_empty() {
                    // The running values stay what later reloads compare with: the warning
                    // holds until a restart or the field is set back.
                    next.restart = previous.restart.clone();
                    waiting = self
                        .at_fields(
                            changed,
                            "the running value stays until then, the rest of this reload is applied",
                        )
                        .into_iter()
                        .map(Diagnostic::warning)
                        .collect();
                    kept_warnings.extend(waiting.iter().cloned());
                }
                let emptied = next.routes.rules().is_empty()
                    && !previous.routes.rules().is_empty()
                    && !next.allow_empty;
                if emptied {
                    // Why: a policy file truncated by an editor, or a ConfigMap caught
                    // mid-update, must not turn every route into a denial (or, worse, leave a
                    // half-written file's rules). Regression: tests (it)
                    // reload::reload_to_zero_rules_is_refused_unless_allowed
                    let (display, index) = self.config_index();
                    Err(ReloadError(vec![Diagnostic::at(
                        &display,
                        &index,
                        "policies",
                        format!(
                            "the new policy files hold no rule; the running {} rules stay (an empty or truncated file? set `policies.allow_empty: true` if this is intended)",
                            previous.routes.rules().len()
                        ),
                    )]))
                } else if !restart.is_empty() {
                    // Why: an operator who changed a listener "for the next restart" saw
                    // policy edits silently not applied: every later reload is refused while
                    // the change stays. Each error says so.
                    Err(ReloadError(self.at_fields(
                        restart,
                        "nothing of this reload is applied (policies and other edits included) until the gateway restarts or this field is set back",
                    )))
                } else if next.version == previous.version {
                    Ok(ReloadOutcome::Unchanged {
                        version: previous.version.clone(),
                    })
                } else {
                    let version = next.version.clone();
                    // Why: the latch was set only when `/readyz` was asked while every key
                    // source was fetched; a reload adding an unreachable source before the
                    // next probe took the replica out of rotation, against the README.
                    // Regression: tests (it) jwt::readyz_waits_for_every_remote_key_source_unless_optional
                    if previous.authn.is_ready() {
                        self.ready_latch
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    next.authn.start();
                    next.rate_limits.start();
                    self.current.store(Arc::new(next));
                    self.metrics.set_config_version(&version);
                    Ok(ReloadOutcome::Applied { version })
                }
            }
        };
        if let Ok(mut status) = self.status.lock() {
            status.last_attempt = Some(SystemTime::now());
            match &result {
                Ok(outcome) => {
                    status.last_error = None;
                    status.last_diagnostics.clear();
                    // An applied reload's warnings are shown until the next reload; a setting
                    // still waiting for a restart, after any that stands.
                    match outcome {
                        ReloadOutcome::Applied { .. } => {
                            status.last_diagnostics.clone_from(&kept_warnings);
                        }
                        ReloadOutcome::Unchanged { .. } => {
                            status.last_diagnostics.clone_from(&waiting);
                        }
                    }
                }
                Err(e) => {
                    status.last_error = Some(e.to_string());
                    status.last_diagnostics.clone_from(&e.0);
                }
            }
        }
        if matches!(result, Ok(ReloadOutcome::Applied { .. })) {
            for w in &kept_warnings {
                tracing::warn!(diagnostic = %w, "Config warning");
            }
        }
        match &result {
            Ok(ReloadOutcome::Applied { version }) => {
                self.metrics.reload("applied");
                tracing::info!(?trigger, version = &**version, "Config reloaded");
            }
            Ok(ReloadOutcome::Unchanged { version }) => {
                self.metrics.reload("unchanged");
                tracing::info!(
                    ?trigger,
                    version = &**version,
                    "Config reload found nothing changed"
                );
            }
            Err(e) => {
                self.metrics.reload("failed");
                tracing::error!(
                    ?trigger,
                    errors = e.0.len(),
                    "Config reload failed; keeping the running config"
                );
                for d in &e.0 {
                    tracing::error!(
                        file = %d.file,
                        line = d.line,
                        column = d.column,
                        field = %d.path,
                        "{}",
                        d.message
                    );
                }
            }
        }
        result
    }

    /// A diagnostic per changed restart-only field, `(field, message)`, at the field in the
    /// config file as it is now, its message followed by `consequence`.
    fn at_fields(
        &self,
        changed: Vec<(String, &'static str)>,
        consequence: &str,
    ) -> Vec<Diagnostic> {
        let (display, index) = self.config_index();
        changed
            .into_iter()
            .map(|(field, m)| {
                Diagnostic::at(&display, &index, &field, format!("{m}; {consequence}"))
            })
            .collect()
    }

    /// The config file's display name and location index, as it is now on disk.
    fn config_index(&self) -> (String, super::diagnostic::LocationIndex) {
        let display = self.config_path.display().to_string();
        let text = super::files::read_to_string(&self.config_path).unwrap_or_default();
        (
            display,
            super::diagnostic::LocationIndex::build(&text).unwrap_or_default(),
        )
    }
}

/// Watches the config file, the policy directory and every referenced file, and reloads after
/// changes settle. Directories are watched rather than files, so editors that replace a file
/// (write to a temporary, rename over) and Kubernetes' symlink swaps are seen; the set is
/// recomputed after every reload, as a reload may reference new files.
///
/// `loaded`: how the running config's files were when it was read; a file changed since,
/// before the watches were set, is reloaded at once.
pub fn spawn_watcher(
    reloader: Arc<Reloader>,
    debounce: Duration,
    loaded: &Loaded,
) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(16);
    let again = tx.clone();
    let tx_again = tx.clone();
    let current = Arc::clone(&reloader);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, EventKind::Access(_))
            && concerns(&ev.paths, &current.watched())
        {
            // A full channel already holds a pending wake-up.
            let _ = tx.try_send(());
        }
    })?;
    let mut dirs = watch_dirs(&reloader.watched());
    for d in &dirs {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "Cannot watch directory");
        }
    }
    // Why: the running config was read before the watches were set, and a file written in
    // between (a ConfigMap or git-sync update landing as the gateway starts) woke nothing:
    // the old policy ran until some later edit. Regression: tests (it)
    // reload::a_file_written_while_the_gateway_starts_is_applied
    let (before, started) = (loaded.before.clone(), loaded.started);
    let startup = Arc::clone(&reloader);
    let check_start = tokio::task::spawn_blocking(move || {
        let watched = startup.watched();
        disk_state(&before.0) != before.1 || changed_since(&watched, &before.1, started)
    });
    tokio::spawn(async move {
        if check_start.await.unwrap_or(true) {
            let _ = again.try_send(());
        }
    });
    let again = tx_again;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            if !settle(&mut rx, debounce).await {
                return;
            }
            let set = reloader.watched();
            let started = SystemTime::now();
            let (set, read) = blocking_state(set).await;
            let _ = reloader.reload(Trigger::Watch).await;
            let now = watch_dirs(&reloader.watched());
            for d in dirs.difference(&now) {
                let _ = watcher.unwatch(d);
            }
            // Why: a watch follows the directory it was set on, not its path. A policies
            // directory replaced whole (a symlink swapped to a new release, or removed and
            // made again) left the watch on the old one, and no later edit was seen. Every
            // directory is watched again after each reload, at its path as it is now (a few
            // directories, once per settled change).
            // Regression: tests (it) reload::a_replaced_policies_directory_is_still_watched
            for d in &now {
                let _ = watcher.unwatch(d);
                if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "Cannot watch directory");
                }
            }
            dirs = now;
            // Why: a directory replaced whole is unwatched from its replacement until the
            // watch above; a file added to it meanwhile (while a large policy set compiled)
            // woke nothing and was never applied, with nothing reported. What a reload reads
            // is compared as it was before this one and as it is now that every watch is set:
            // any difference is reloaded. Regression: tests (it)
            // reload::a_file_added_while_a_replaced_directory_reloads_is_applied
            // Compared over the same paths (a reload may watch others: a Kubernetes volume's
            // links resolve to a new `..2026_…` directory at each update, which must not cost
            // a second reload), and what the reload newly watches, by change time.
            let now_watched = reloader.watched();
            let changed = tokio::task::spawn_blocking(move || {
                disk_state(&set) != read || changed_since(&now_watched, &read, started)
            })
            .await
            .unwrap_or(false);
            if changed {
                let _ = again.try_send(());
            }
        }
    });
    Ok(())
}

/// [`disk_state`] of `set` off the runtime's threads (a stat per file, a network round trip
/// each on NFS), with `set` back.
async fn blocking_state(set: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<EntryState>) {
    tokio::task::spawn_blocking(move || {
        let state = disk_state(&set);
        (set, state)
    })
    .await
    .unwrap_or_default()
}

/// How the files the config at start reads were before it was read: the config file and its
/// policies directory ([`disk_state`]), and when the reading began (for the files the config
/// names, unknown until it is read).
#[derive(Debug, Clone)]
pub struct Loaded {
    started: SystemTime,
    before: (Vec<PathBuf>, Vec<EntryState>),
}

impl Loaded {
    /// Taken before the config at `config_path` is read (blocking: a few `stat` calls).
    pub fn before(config_path: &std::path::Path) -> Self {
        let started = SystemTime::now();
        let mut set = vec![config_path.to_path_buf()];
        if let Some(dir) = super::load::policy_dir_hint(config_path) {
            let base = config_path.parent().unwrap_or(std::path::Path::new("."));
            set.push(base.join(dir));
        }
        let state = disk_state(&set);
        Self {
            started,
            before: (set, state),
        }
    }
}

/// One entry of [`disk_state`]: a path, and what `stat` and `lstat` say of it (inode, size,
/// modification and change times), or nothing for a path not there.
type EntryState = (PathBuf, Option<[i64; 6]>, Option<[i64; 6]>);

/// What a reload of `watched` would read, as the file system has it now: each watched path,
/// and in a watched directory, or beside a watched file, each entry [`concerns`] would be woken
/// by (a policy file, a `..` swap entry). Two states differ when something a reload reads was
/// made, removed, replaced or written between them.
fn disk_state(watched: &[PathBuf]) -> Vec<EntryState> {
    use std::os::unix::fs::MetadataExt as _;
    // Why a directory is its inode alone: its size and times change with every entry made,
    // renamed or removed, hidden ones and other files included (a sync tool's state file
    // rewritten every 150 ms): each reload then saw a change, and reloaded again, for as
    // long as the tool ran. The entries a reload reads are listed on their own.
    // Regression: tests::a_directorys_other_entries_change_no_state
    let stamp = |m: std::fs::Metadata| {
        if m.is_dir() {
            return [i64::try_from(m.ino()).unwrap_or(i64::MAX), 0, 0, 0, 0, 0];
        }
        [
            i64::try_from(m.ino()).unwrap_or(i64::MAX),
            i64::try_from(m.size()).unwrap_or(i64::MAX),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ]
    };
    let entry = |p: PathBuf| {
        let followed = std::fs::metadata(&p).ok().map(stamp);
        let own = std::fs::symlink_metadata(&p).ok().map(stamp);
        (p, followed, own)
    };
    let mut out = Vec::new();
    let mut dirs = BTreeSet::new();
    for w in watched {
        out.push(entry(w.clone()));
        if w.is_dir() {
            dirs.insert((w.clone(), true));
        }
        if let Some(parent) = w.parent() {
            dirs.insert((parent.to_path_buf(), false));
        }
    }
    for (dir, policies) in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let n = name.as_encoded_bytes();
            let swap = n.starts_with(b"..");
            let policy = super::load::is_policy_name(n);
            if swap || (policies && policy) {
                out.push(entry(e.path()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether a file of `watched` that `known` does not list (one a reload newly reads: a key
/// file a config names) changed at `since` or later, by its change time (`cp -p` and `tar`
/// set modification times, even ahead; directories are left out, as in [`disk_state`]).
/// No slack: a file written before, as every deployment's are, must not cost a reload; a
/// file system's coarse clock may stamp a change a few milliseconds after `since` before it,
/// which the files `known` lists, compared whole, do not depend on.
fn changed_since(watched: &[PathBuf], known: &[EntryState], since: SystemTime) -> bool {
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    let at = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    disk_state(watched)
        .iter()
        .filter(|(p, _, _)| !known.iter().any(|(k, _, _)| k == p))
        .any(|(_, followed, own)| {
            // (A directory's stamp has no times: it never counts here.)
            [followed, own]
                .into_iter()
                .flatten()
                .any(|m| at(m[4], m[5]) >= since)
        })
}

/// After a first change: waits until no other arrived for `debounce` (a file written in
/// several steps, a set of files deployed one by one). `false`: the watcher is gone.
///
/// Unbounded on purpose: a wait cut short (at 700 ms, for a while) applied a policy file
/// caught half written that parsed, a rule without its trailing `require:` (fail open for
/// 230 ms), and would apply half of a deployed set. What kept a reload waiting then (other
/// files churning in the policies directory) no longer wakes the watcher ([`concerns`]).
/// Regression: tests::a_change_settles_once_quiet
async fn settle(rx: &mut mpsc::Receiver<()>, debounce: Duration) -> bool {
    let started = tokio::time::Instant::now();
    let mut warned = false;
    loop {
        match tokio::time::timeout(debounce, rx.recv()).await {
            Ok(Some(())) => {
                // Said once, so that a tool rewriting a policy file forever is not silent.
                if !warned && started.elapsed() >= CHURN_WARNING {
                    warned = true;
                    tracing::warn!(
                        waited_secs = started.elapsed().as_secs(),
                        "Watched files keep changing; the reload waits until they are quiet"
                    );
                }
            }
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

/// How long a change may wait for quiet before the wait is logged.
const CHURN_WARNING: Duration = Duration::from_secs(5);

/// Whether an event on `paths` may change what a reload reads (`watched`): a watched file or
/// directory itself, an entry of a watched directory that the loader reads (a `*.yaml` or
/// `*.yml` policy file, not hidden), or an entry whose name starts with `..` beside a watched
/// file or in a watched directory (Kubernetes swaps a mounted ConfigMap by renaming
/// `..data`). An event without paths (the watcher lost track) counts.
///
/// Why only policy files in the policies directory: any file there changing more often than
/// the debounce (a sync tool's state file, a note appended to every 150 ms) held every reload
/// back for as long as it went on; a deny written meanwhile waited 10 s, and 960 requests it
/// refuses were allowed. Regression: tests::only_what_a_reload_reads_wakes_it, tests (it)
/// reload::a_deny_applies_while_the_directory_keeps_changing
///
/// Why: every other file in those directories woke the watcher too. A log file written beside
/// the config made a loop: each reload logged a line, whose write woke the next reload, five
/// times a second for as long as the gateway ran; with an access log there, every request
/// re-read and recompiled the policies. Regression: tests::only_what_a_reload_reads_wakes_it
fn concerns(paths: &[PathBuf], watched: &[PathBuf]) -> bool {
    if paths.is_empty() {
        return true;
    }
    let watched: Vec<PathBuf> = watched
        .iter()
        .filter_map(|p| std::path::absolute(p).ok())
        .collect();
    paths.iter().any(|p| {
        let Ok(p) = std::path::absolute(p) else {
            return true;
        };
        let parent = p.parent();
        let name = p.file_name().map(std::ffi::OsStr::as_encoded_bytes);
        let swap = name.is_some_and(|n| n.starts_with(b".."));
        // As `load::policy_files` reads a directory.
        let policy = name.is_some_and(super::load::is_policy_name);
        watched.iter().any(|w| {
            // `w` itself, or a directory on its way made or replaced (`keys/` of a
            // `keys/new.secret` not there yet).
            w.starts_with(&p)
                || ((policy || swap) && parent == Some(w.as_path()))
                || (swap && parent.is_some() && w.parent() == parent)
        }) || (
            // A link swapped on the way to a watched path: looked up only for an event on a
            // link (one `lstat`), so that a log file written beside the config costs nothing.
            p.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
                && watched.iter().any(|w| links_on_the_way(w).contains(&p))
        )
    })
}

/// Every link met on the way to `path` (its ancestors', and `path`'s own), following each
/// link's target in turn (a link into a directory reached through another link: `etc/pc ->
/// ../opt/app/current/config`, `opt/app/current -> releases/r1`); at most 16.
///
/// Why the targets: a link swapped inside another link's target was missed, as its directory
/// was on no path as written. Regression: tests (it)
/// reload::a_release_link_swapped_above_the_policies_is_applied
fn links_on_the_way(path: &std::path::Path) -> Vec<PathBuf> {
    const MAX: usize = 16;
    let mut out: Vec<PathBuf> = Vec::new();
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        for link in p.ancestors() {
            if out.len() >= MAX {
                return out;
            }
            if !link
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
                || out.iter().any(|o| o == link)
            {
                continue;
            }
            out.push(link.to_path_buf());
            if let (Ok(target), Some(parent)) = (std::fs::read_link(link), link.parent()) {
                let rest = p.strip_prefix(link).unwrap_or(std::path::Path::new(""));
                todo.push(parent.join(target).join(rest));
            }
        }
    }
    out
}

/// Directories to watch: each watched file's parent, and each watched directory with its
/// parent (where the directory itself is renamed, replaced or swapped).
fn watch_dirs(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for p in paths {
        let Ok(p) = std::path::absolute(p) else {
            continue;
        };
        // The parent, or the nearest directory on the way that exists (a file a refused
        // config names may be in a directory not made yet).
        if let Some(dir) = p.ancestors().skip(1).find(|d| d.is_dir()) {
            dirs.insert(dir.to_path_buf());
        }
        // Why: a link on the way (Capistrano's `current -> releases/N`, git-sync's link)
        // swapped to a new target changes every file under it, but in a directory nobody
        // watched: the new release's deny was never applied while the old one stayed on
        // disk. The directory holding each such link is watched too.
        // Regression: tests (it) reload::a_release_link_swapped_above_the_policies_is_applied
        for link in links_on_the_way(&p) {
            if let Some(parent) = link.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        if p.is_dir() {
            dirs.insert(p);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directorys_other_entries_change_no_state() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("policies");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("10.yaml"), "rules: []\n").unwrap();
        let set = vec![root.path().join("portcullis.yaml"), dir.clone()];
        std::fs::write(&set[0], "x: 1\n").unwrap();
        let first = disk_state(&set);
        // What a reload does not read: hidden files, other names, renames among them.
        std::fs::write(dir.join(".sync-state"), "1").unwrap();
        std::fs::write(dir.join(".sync-state.tmp"), "2").unwrap();
        std::fs::rename(dir.join(".sync-state.tmp"), dir.join(".sync-state")).unwrap();
        std::fs::write(dir.join("notes.txt"), "n").unwrap();
        std::fs::write(root.path().join("gateway.log"), "line\n").unwrap();
        assert_eq!(disk_state(&set), first);
        // What it reads: a policy file added, one rewritten, a swap entry, the config.
        std::fs::write(dir.join("20.yaml"), "rules: []\n").unwrap();
        let added = disk_state(&set);
        assert_ne!(added, first);
        std::fs::write(dir.join("20.yaml"), "rules: [ ]\n").unwrap();
        assert_ne!(disk_state(&set), added);
        let again = disk_state(&set);
        std::fs::create_dir(root.path().join("..data")).unwrap();
        assert_ne!(disk_state(&set), again);
        let again = disk_state(&set);
        std::fs::write(&set[0], "x: 2\n").unwrap();
        assert_ne!(disk_state(&set), again);
        // A file the config newly names, written since: by its change time.
        let since = SystemTime::now();
        let key = root.path().join("k.pem");
        assert!(!changed_since(std::slice::from_ref(&key), &[], since));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&key, "k").unwrap();
        assert!(changed_since(std::slice::from_ref(&key), &[], since));
        // Unless it is among the known ones (compared whole instead).
        let known = disk_state(std::slice::from_ref(&key));
        assert!(!changed_since(&[key], &known, since));
    }

    /// Changes every 20 ms for 1 s (a file streamed in pieces, a set deployed file by file)
    /// are waited out: the reload reads what they left, never a part of it; a lone change
    /// settles after `debounce`.
    ///
    /// Why on tokio's paused clock: on the wall clock a loaded machine (the whole suite on two
    /// cores) stretched a 20 ms sleep of the churn past the 100 ms debounce, and the test saw
    /// the wait settle while the changes went on. Paused, each sleep and timeout takes exactly
    /// its time.
    #[tokio::test(start_paused = true)]
    async fn a_change_settles_once_quiet() {
        let (tx, mut rx) = mpsc::channel::<()>(16);
        let _watching = tx.clone();
        let churn = tokio::spawn(async move {
            for _ in 0..50 {
                let _ = tx.try_send(());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert!(settle(&mut rx, Duration::from_millis(100)).await);
        assert!(churn.is_finished(), "settled while the changes went on");

        let (tx, mut rx) = mpsc::channel::<()>(16);
        tx.try_send(()).unwrap();
        let started = tokio::time::Instant::now();
        assert!(settle(&mut rx, Duration::from_millis(100)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        drop(tx);
        assert!(
            !settle(&mut rx, Duration::from_millis(100)).await,
            "watcher gone"
        );
    }

    #[test]
    fn only_what_a_reload_reads_wakes_it() {
        let watched = [
            PathBuf::from("/srv/pc/portcullis.yaml"),
            PathBuf::from("/srv/pc/policies"),
            PathBuf::from("/srv/keys/hs.secret"),
        ];
        for (path, wakes) in [
            ("/srv/pc/portcullis.yaml", true),
            ("/srv/pc/policies/20-new.yaml", true),
            ("/srv/pc/policies", true),
            ("/srv/keys/hs.secret", true),
            // A directory on the way to a watched file, made or replaced.
            ("/srv/keys", true),
            // Kubernetes' ConfigMap swap beside a watched file.
            ("/srv/pc/..data", true),
            ("/srv/pc/..data_tmp", true),
            ("/srv/pc/..2026_12_02_10_00_00.123", true),
            ("/srv/pc/policies/..data", true),
            ("/srv/pc/policies/30-more.yml", true),
            ("/srv/pc/policies/40-upper.YAML", true),
            ("/srv/pc/policies/41-upper.Yml", true),
            // Everything else in the watched directories: what the loader does not read
            // (hidden files, other names) never wakes a reload, nor holds one back.
            ("/srv/pc/policies/notes.txt", false),
            ("/srv/pc/policies/.sync-state", false),
            ("/srv/pc/policies/.10-routes.yaml.swp", false),
            ("/srv/pc/policies/.#10-routes.yaml", false),
            ("/srv/pc/policies/10-routes.yaml~", false),
            ("/srv/pc/gateway.log", false),
            ("/srv/pc/portcullis.yaml.swp", false),
            ("/srv/keys/other.pem", false),
            ("/srv/pc/policies/sub/x.yaml", false),
            ("/elsewhere/..data", false),
        ] {
            assert_eq!(concerns(&[PathBuf::from(path)], &watched), wakes, "{path}");
        }
        assert!(concerns(&[], &watched), "an event without paths");
        let both = [
            PathBuf::from("/srv/pc/.portcullis.yaml.tmp"),
            PathBuf::from("/srv/pc/portcullis.yaml"),
        ];
        assert!(concerns(&both, &watched), "a rename over a watched file");
        let into_place = [
            PathBuf::from("/srv/pc/policies/10-routes.yaml.tmp"),
            PathBuf::from("/srv/pc/policies/10-routes.yaml"),
        ];
        assert!(
            concerns(&into_place, &watched),
            "a policy renamed into place"
        );
    }
}
