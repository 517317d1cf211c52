//! Raw config → [`Snapshot`]. Collects every problem before giving up, so one `check` run
//! shows them all; a config with any error never becomes a snapshot.
//!
//! One function per section, in the order the snapshot needs them: [`listeners`],
//! [`server`], [`upstreams`], [`authn`] (authenticators, the identity assertion, challenges,
//! identity headers), [`limits`] (rate limits, delegates), [`rules`] (with their [`lints`]);
//! [`restart`] says which settings only a restart changes. Each section reports through
//! [`Cx`], which places a field's diagnostic at its file, line and column.

mod authn;
mod limits;
mod lints;
mod listeners;
mod restart;
mod rules;
mod server;
mod upstreams;

use std::path::PathBuf;
use std::time::SystemTime;

use super::diagnostic::Diagnostic;
use super::load::Loaded;
use crate::authz::route::RouteTable;
use crate::authz::spoofable::Spoofable;
use crate::snapshot::Snapshot;

pub use restart::{RestartOnly, refuses_the_reload, restart_only_changes};

/// What every section compiles against and reports into.
pub(super) struct Cx<'a> {
    /// What was read.
    pub loaded: &'a Loaded,
    /// The running snapshot, whose state an unchanged definition keeps.
    pub previous: Option<&'a Snapshot>,
    /// Every problem found so far.
    pub diags: Vec<Diagnostic>,
    /// Files and directories whose change reloads (their contents are in the version).
    pub watched: Vec<PathBuf>,
    /// What the files could hold before this compile read them.
    pub before: Before,
}

impl Cx<'_> {
    /// The raw config.
    pub(super) fn cfg(&self) -> &crate::config::raw::RawConfig {
        &self.loaded.raw
    }

    /// A diagnostic at a field of the config file.
    pub(super) fn at(&self, path: &str, message: String) -> Diagnostic {
        let src = &self.loaded.config;
        Diagnostic::at(&src.display, &src.index, path, message)
    }

    /// An error at a field of the config file.
    pub(super) fn error(&mut self, path: &str, message: String) {
        let d = self.at(path, message);
        self.diags.push(d);
    }

    /// A warning at a field of the config file.
    pub(super) fn warn(&mut self, path: &str, message: String) {
        let d = self.at(path, message).warning();
        self.diags.push(d);
    }

    /// Errors a section's compile function found, under `prefix` in the config file.
    pub(super) fn field_errors(
        &mut self,
        prefix: &str,
        errors: impl IntoIterator<Item = crate::config::FieldError>,
    ) {
        for e in errors {
            let e = e.under(prefix);
            self.error(&e.field, e.message);
        }
    }

    /// How many errors so far.
    pub(super) fn errors(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    /// A path relative to the config file.
    pub(super) fn path(&self, p: &std::path::Path) -> PathBuf {
        self.loaded.base_dir.join(p)
    }
}

/// Compiles what was loaded; `previous` lends state worth keeping (upstream pools, caches,
/// limiter state, fetched keys). Returns the snapshot and its warnings, or every error (and
/// warning) found.
pub fn compile(
    loaded: &Loaded,
    previous: Option<&Snapshot>,
    clock: crate::clock::Clock,
) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
    compile_watching(loaded, previous, clock, &mut Vec::new())
}

/// [`compile`], which on failure leaves in `referenced` every file the refused config reads
/// (the watcher waits on them: a file it names may not exist yet).
pub fn compile_watching(
    loaded: &Loaded,
    previous: Option<&Snapshot>,
    clock: crate::clock::Clock,
    referenced: &mut Vec<std::path::PathBuf>,
) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut cx = Cx {
        loaded,
        previous,
        diags: loaded.errors.clone(),
        watched: vec![loaded.config.path.clone(), loaded.policy_dir.clone()],
        before: Before::read(previous.map_or(&[][..], |p| &p.watched[..])),
    };
    let listeners = listeners::compile(&mut cx);
    let (server, from_trusted) = server::compile(&mut cx);
    // What any request loses whoever its rules are (the families and what trusted proxies
    // may pass), for the warnings about reading or keeping such a header.
    let families = Spoofable::new(
        std::iter::empty::<&http::HeaderName>(),
        from_trusted.clone(),
    );
    let upstreams = upstreams::compile(&mut cx);
    let authn = authn::authenticators(&mut cx);
    authn::credentials_the_gateway_strips(&mut cx, &families);
    let assertion = authn::assertion(&mut cx);
    let challenges = authn::challenges(&mut cx);
    authn::identity_headers(&mut cx);
    let mut spoofable_names: Vec<http::HeaderName> = authn.spoofable_names().to_vec();
    spoofable_names.extend(assertion.iter().map(|a| a.header.clone()));
    let redis = limits::redis(&mut cx);
    let rate_limits = limits::rate_limits(&mut cx, redis.as_ref(), &clock);
    let delegates = limits::delegates(&mut cx, &mut spoofable_names);
    let env = rules::Env {
        upstreams: &upstreams,
        authn: &authn,
        challenges: &challenges,
        rate_limits: &rate_limits,
        delegates: &delegates,
        families: &families,
    };
    let rules = rules::compile(&mut cx, &env, &mut spoofable_names);
    // Said whatever other warnings there are (the development key's, say): it was dropped
    // then. Not with errors: a broken file's rules are not counted.
    if rules.is_empty() && !cx.diags.iter().any(Diagnostic::is_error) {
        let dir = loaded.policy_dir.display().to_string();
        cx.warn(
            "policies.dir",
            format!("no rules found in {dir}: every request will be denied"),
        );
    }
    // A name the admin listener could never match (a port, a wildcard, a URL) would only give
    // an unexplained 403. Regression: tests (it) check::admin_allowed_hosts_are_bare_names
    // Regression: tests (it) check::trusting_every_address_and_an_exposed_admin_warn
    // (`admin.public_address` serves only health and the assertion keys, for the network.)
    let admin = cx.cfg().admin.address;
    if !admin.ip().is_loopback() {
        cx.warn(
            "admin.address",
            format!("`{admin}` is not a loopback address: the admin listener (`POST /reload`, `/config`, `/metrics`) has no authentication of its own; keep it on loopback or a private network, and serve health to the network with `admin.public_address`"),
        );
    }
    let mut admin_hosts: Vec<Box<str>> = Vec::new();
    for (i, raw) in cx.cfg().admin.allowed_hosts.clone().iter().enumerate() {
        let h = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        if crate::authz::route::is_host_name(&h) {
            admin_hosts.push(h.into());
        } else {
            cx.error(
                &format!("admin.allowed_hosts[{i}]"),
                format!("`{raw}` is not a host name: write the bare name, without port, scheme or wildcard (IP addresses and localhost are always allowed)"),
            );
        }
    }
    if let Err(e) = crate::telemetry::logging::check_level(&cx.cfg().logging.level) {
        cx.error("logging.level", e);
    }
    if let Some(otlp) = &cx.cfg().tracing.otlp
        && let Err(e) = crate::telemetry::otlp::Otlp::check(otlp)
    {
        cx.error("tracing.otlp.endpoint", e.to_string());
    }
    follow_links(&mut cx.watched, loaded);
    if cx.diags.iter().any(Diagnostic::is_error) {
        *referenced = cx.watched;
        return Err(cx.diags);
    }
    let version = version(&cx);
    let spoofable =
        Spoofable::new(&spoofable_names, from_trusted).rewriting(&server.request_id_header);
    let snapshot = Snapshot {
        version: version.into(),
        loaded_at: SystemTime::now(),
        listeners,
        admin_address: cx.cfg().admin.address,
        admin_hosts: admin_hosts.into(),
        server,
        upstreams: upstreams.list,
        routes: RouteTable::new(rules),
        authn,
        rate_limits: crate::ratelimit::RateLimits::new(rate_limits.into_values().collect()),
        redis,
        delegates,
        clock,
        assertion,
        challenges,
        spoofable,
        access_log: cx.cfg().logging.access_log,
        trace_propagate: cx.cfg().tracing.propagate,
        // Started only once the config compiled in full: a refused reload starts no exporter.
        otlp: cx
            .cfg()
            .tracing
            .otlp
            .as_ref()
            .and_then(crate::telemetry::otlp::Otlp::start),
        allow_empty: cx.cfg().policies.allow_empty,
        restart: RestartOnly::of(cx.cfg()),
        watched: cx.watched,
    };
    Ok((snapshot, cx.diags))
}

/// Adds to `watched` where its symlinks lead, and where the policy files that are symlinks
/// lead: an edit made there changes what a reload reads.
///
/// Why: the watcher watches directories, those of the paths it was given: a policy file or
/// config file linked from elsewhere (`policies/05-ext.yaml -> ../../ext/05.yaml`) was
/// edited at its target unseen, and only SIGHUP applied it.
/// Regression: tests (it) reload::an_edit_at_a_linked_files_target_is_seen
fn follow_links(watched: &mut Vec<PathBuf>, loaded: &Loaded) {
    let is_link = |p: &std::path::Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
    };
    let links: Vec<PathBuf> = watched
        .iter()
        .map(PathBuf::as_path)
        .chain(loaded.policies.iter().map(|(file, _)| file.path.as_path()))
        .filter(|p| is_link(p))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    for target in links {
        if !watched.contains(&target) {
            watched.push(target);
        }
    }
}

/// A short digest of every input: the config file, every watched file's contents (keys,
/// certificates, secrets, key files) and every policy file with its name. Any change to any of
/// them is a new version.
///
/// The watched files are read here again, after the sections read them: a file rewritten in
/// between would give the version of what the snapshot does not hold. Such a version is made
/// unique, so that the reload its write triggers applies it.
///
/// Why: a key file rotated while a reload compiled gave a snapshot with the old key under the
/// new key's version; the reload the rotation triggered found the version unchanged, and the
/// old key stayed until the next edit. Regression:
/// tests::a_file_rewritten_while_compiling_is_seen_as_changed
///
/// A watched file that is not PEM (an HMAC secret, a password, an API-key file) counts through
/// a keyed digest, its key random per process ([`unguessable`]). PEM files (certificates, CA
/// bundles, private keys: nothing to guess) count as they are, and so do the config file and
/// the policy files (their text is counted as it is anyway), so gateways with the same files,
/// but such secrets, report the same version.
///
/// Why the config and policy files: the config file is watched, and so are the targets of
/// linked ones (a ConfigMap's), and they went through the random key as secrets do: every
/// process gave its own version for the same files, and replicas could not be compared by
/// `portcullis_config_info` as documented. Regression: tests (it)
/// check::the_version_is_the_same_in_every_process_without_secret_files
fn version(cx: &Cx<'_>) -> String {
    let counted_as_text = |bytes: &[u8]| {
        // (As loaded: without a byte-order mark.)
        let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        bytes == cx.loaded.config.text.as_bytes()
            || cx
                .loaded
                .policies
                .iter()
                .any(|(file, _)| file.text.as_bytes() == bytes)
    };
    let watched: Vec<Vec<u8>> = cx
        .watched
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| super::files::read(p).ok().map(|bytes| (p, bytes)))
        .map(|(p, bytes)| {
            // (Compared as read: the running snapshot holds the bytes, not their digest.)
            let changing = cx.before.may_have_changed(p, &bytes);
            let mut part = if is_pem(&bytes) || counted_as_text(&bytes) {
                bytes
            } else {
                unguessable(&bytes)
            };
            if changing {
                part.extend_from_slice(&crate::server::request_id::random_u64().to_le_bytes());
                part.extend_from_slice(b"rewritten while compiling");
            }
            part
        })
        .collect();
    let policies = cx
        .loaded
        .policies
        .iter()
        .flat_map(|(file, _)| [file.display.as_bytes(), file.text.as_bytes()]);
    version_of(
        std::iter::once(cx.loaded.config.text.as_bytes())
            .chain(watched.iter().map(Vec::as_slice))
            .chain(policies),
    )
}

/// Whether a file's text is PEM (`-----BEGIN …`, after blank space).
fn is_pem(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN "))
}

/// `bytes` through HMAC-SHA256 under a key random per process.
///
/// Why: the version is public (`/metrics`, `/config`, logs, `check`), and a secret file's bytes
/// went into it plainly: whoever knew the rest of the config (GitOps) tested guesses of a weak
/// HMAC secret or password offline against it, and found one in 1,415 tries.
/// Regression: tests::a_secret_file_cannot_be_guessed_from_the_version
fn unguessable(bytes: &[u8]) -> Vec<u8> {
    static KEY: std::sync::OnceLock<aws_lc_rs::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        // Without randomness, the request-id generator's bits (seeded from the clock and the
        // process) still make the key this process's own.
        if aws_lc_rs::rand::fill(&mut k).is_err() {
            for chunk in k.chunks_mut(8) {
                chunk.copy_from_slice(&crate::server::request_id::random_u64().to_le_bytes());
            }
        }
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k)
    });
    aws_lc_rs::hmac::sign(key, bytes).as_ref().to_vec()
}

/// The watched files of the running snapshot as they were when a compile began, to tell
/// whether one changed while the compile read it.
pub(super) struct Before {
    /// When the compile began.
    started: SystemTime,
    /// Each file and what it held (`None`: unreadable).
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
}

/// How far a file's timestamp may lag the write that set it (filesystems stamp with a coarse
/// clock, a jiffy or more).
const STAMP_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

impl Before {
    /// Reads `watched` (directories are skipped: their entries are compiled from what was
    /// loaded, not read again).
    fn read(watched: &[PathBuf]) -> Self {
        let started = SystemTime::now();
        let files = watched
            .iter()
            .filter(|p| p.is_file())
            .map(|p| (p.clone(), super::files::read(p).ok()))
            .collect();
        Self { started, files }
    }

    /// Whether `path`, which holds `now`, may have held something else when a section read
    /// it. A file read before the compile began is compared by content; one the running
    /// snapshot did not read (newly named, or the first compile) by its timestamps, since the
    /// compile began.
    fn may_have_changed(&self, path: &std::path::Path, now: &[u8]) -> bool {
        if let Some((_, held)) = self.files.iter().find(|(p, _)| p == path) {
            return held.as_deref() != Some(now);
        }
        let since = self
            .started
            .checked_sub(STAMP_SLACK)
            .unwrap_or(self.started);
        stamped_since(path, since)
    }
}

/// Whether `path`'s content, inode or name (any link on the way) changed at or after `since`.
fn stamped_since(path: &std::path::Path, since: SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    let changed = |m: std::fs::Metadata| {
        let ctime = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(m.ctime()).unwrap_or(0),
                u32::try_from(m.ctime_nsec()).unwrap_or(0),
            );
        m.modified().is_ok_and(|t| t >= since) || ctime >= since
    };
    // Unreadable stamps: assume the worst (the cost is one more reload that applies).
    std::fs::metadata(path).map_or(true, changed)
        || std::fs::symlink_metadata(path).map_or(true, changed)
}

/// The version of a config made of `parts`, each length-prefixed.
///
/// Why: a policy file's name and text ran together, so text moved from the end of one file
/// to the start of the next (a different policy) gave the same version, and the reload was
/// dropped as "nothing changed". Regression: tests::versions_tell_apart_text_moved_between_parts
fn version_of<'a>(parts: impl Iterator<Item = &'a [u8]>) -> String {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        digest.update(&(part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    crate::secret::hex(digest.finish().as_ref().get(..6).unwrap_or_default())
}

/// `unknown KIND `name``, and the names that exist (or that none does).
fn unknown_name<'a>(kind: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&String> = known.collect();
    let near = known.iter().any(|k| {
        crate::authz::route::edit_distance(
            k.to_lowercase().as_bytes(),
            name.to_lowercase().as_bytes(),
        ) <= 2
    });
    // Why: a secret pasted where a name belongs (`rate_limit: HmacSecret…`, an API key in
    // `authenticators`, a password as `upstream`) was quoted back by `check`, the reload
    // log and `GET /config`. A value is shown when it reads like a name, or lies near a
    // configured one (a typo). Regression: tests::a_value_that_reads_like_no_name_is_not_shown
    let named = if near || crate::secret::reads_like_a_name(name) {
        format!("unknown {kind} `{name}`")
    } else {
        format!(
            "unknown {kind} (the value is not shown: it reads like no name, and may be a secret pasted here)"
        )
    };
    if known.is_empty() {
        format!("{named}: none is configured")
    } else {
        let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        format!("{named} (configured: {})", known.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::Before;

    #[test]
    fn a_value_that_reads_like_no_name_is_not_shown() {
        let known = ["per-user".to_owned(), "global".to_owned()];
        let message = |name| super::unknown_name("rate limit", name, known.iter());
        // Names, and typos of configured ones, are shown.
        assert_eq!(
            message("per-usr"),
            "unknown rate limit `per-usr` (configured: `per-user`, `global`)"
        );
        assert!(message("Global").contains("`Global`"));
        assert!(message("orders_v2").contains("`orders_v2`"));
        // What reads like a secret is not.
        for secret in [
            "HmacSecretValue-9f8e7d6c5b4a",
            "pck_Folwz0aQ3mR8sT2uV6wX",
            "RedisPassw0rd-2026",
            "a3f9c2d1e4b5a6f7c8d9e0f1a2b3c4d5",
        ] {
            let m = message(secret);
            assert!(!m.contains(secret), "{m}");
            assert!(m.contains("not shown"), "{m}");
        }
    }

    /// The version an outsider computes from the config, the policies and a guess of a secret
    /// file (as a script did, 1,415 guesses to a weak HMAC secret) is not the gateway's; it is
    /// still the same for the same files in one process, so an unchanged reload is seen as one.
    #[test]
    fn a_secret_file_cannot_be_guessed_from_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("policies")).unwrap();
        let policy = "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users]}\n";
        std::fs::write(d.join("policies/10.yaml"), policy).unwrap();
        std::fs::write(d.join("hs.secret"), "Summer2026!Summer2026!Summer2026!").unwrap();
        let config = "listeners:\n  - {name: fa, address: \"127.0.0.1:0\", door: {forward_auth: {}}}\npolicies: {dir: policies}\nauthenticators:\n  users:\n    jwt:\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]\n";
        let path = d.join("portcullis.yaml");
        std::fs::write(&path, config).unwrap();
        // Written a while ago: a file changed just before a compile (its change time, which
        // cannot be set back) counts as changing while compiled.
        std::thread::sleep(super::STAMP_SLACK + std::time::Duration::from_millis(100));
        let build = || {
            crate::config::build_with_clock(&path, None, crate::clock::Clock::system())
                .unwrap()
                .0
                .version
        };
        let version = build();
        assert_eq!(build(), version, "the same files, the same version");
        let display = d.join("policies/10.yaml").display().to_string();
        let guess = |secret: &str| {
            super::version_of(
                [
                    config.as_bytes(),
                    config.as_bytes(),
                    secret.as_bytes(),
                    "10.yaml".as_bytes(),
                    policy.as_bytes(),
                ]
                .into_iter(),
            )
        };
        let guess_shown = |secret: &str| {
            super::version_of(
                [
                    config.as_bytes(),
                    config.as_bytes(),
                    secret.as_bytes(),
                    display.as_bytes(),
                    policy.as_bytes(),
                ]
                .into_iter(),
            )
        };
        assert_ne!(guess("Summer2026!Summer2026!Summer2026!"), *version);
        assert_ne!(guess_shown("Summer2026!Summer2026!Summer2026!"), *version);
        assert!(super::is_pem(b"\n-----BEGIN CERTIFICATE-----\n"));
        assert!(!super::is_pem(b"Summer2026!Summer2026!Summer2026!"));
    }

    #[test]
    fn a_file_rewritten_while_compiling_is_seen_as_changed() {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-before-{}-{}",
            std::process::id(),
            crate::server::request_id::random_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        let fresh = dir.join("fresh.pem");
        std::fs::write(&key, b"old").unwrap();
        let before = Before::read(std::slice::from_ref(&key));
        // Read by the running snapshot: compared by content.
        assert!(!before.may_have_changed(&key, b"old"));
        assert!(before.may_have_changed(&key, b"new"));
        // Named for the first time and written as the compile ran: by its stamps.
        std::fs::write(&fresh, b"x").unwrap();
        assert!(before.may_have_changed(&fresh, b"x"));
        let settled = Before {
            started: std::time::SystemTime::now() + std::time::Duration::from_secs(5),
            files: Vec::new(),
        };
        assert!(!settled.may_have_changed(&fresh, b"x"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_tell_apart_text_moved_between_parts() {
        let v = |parts: &[&str]| super::version_of(parts.iter().map(|p| p.as_bytes()));
        assert_ne!(
            v(&["p/a.yaml", "rules: []\n# p/b.yaml", "rules: [x]"]),
            v(&["p/a.yaml", "rules: []\n# ", "p/b.yaml", "rules: [x]"])
        );
        assert_ne!(v(&["ab", "c"]), v(&["a", "bc"]));
        assert_eq!(v(&["a", "bc"]), v(&["a", "bc"]));
    }
}
