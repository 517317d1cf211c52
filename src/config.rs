//! Config: files → raw serde types → compiled [`crate::snapshot::Snapshot`], and reloads.

pub mod compile;
pub mod diagnostic;
pub mod files;
pub mod load;
pub mod raw;
pub mod reload;

pub use diagnostic::{Diagnostic, FieldError, Severity};

use std::path::Path;

use crate::snapshot::Snapshot;

/// Whether the port an authority writes (`host:port`, `[v6]:port`), if any, is a number from
/// 0 to 65535.
///
/// Why: `http::Uri` parses `127.0.0.1:70000` and then has no port for it, and the connectors
/// fell back to 80 (443 over TLS): a delegate or upstream written with a mistyped port sent
/// its requests, credentials among them, to whatever listened on port 80.
/// Regression: config::tests::a_written_port_must_fit
pub fn port_fits(authority: &str) -> bool {
    let port = match authority.rfind(']') {
        Some(end) => authority[end + 1..].strip_prefix(':'),
        None => authority.rsplit_once(':').map(|(_, p)| p),
    };
    port.is_none_or(|p| p.parse::<u16>().is_ok() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Loads and compiles a config file and its policies: the snapshot and its warnings, or every
/// diagnostic. The snapshot keeps `previous`'s clock, or the system clock.
pub fn build(
    path: &Path,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
    let clock = previous.map_or_else(crate::clock::Clock::system, |p| p.clock.clone());
    build_with_clock(path, previous, clock)
}

/// [`build`], which on failure leaves in `referenced` the files the refused config reads, as
/// far as it was read.
pub fn build_watching(
    path: &Path,
    previous: Option<&Snapshot>,
    referenced: &mut Vec<std::path::PathBuf>,
) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
    let clock = previous.map_or_else(crate::clock::Clock::system, |p| p.clock.clone());
    // Why the files the running config reads too (key files, API key files, certificates):
    // a ConfigMap swapped while a reload read its policies, then its API key file, gave a
    // new key under the old rules (a key meant for one path allowed everywhere). The layout
    // of every file it reads is checked around the whole build, not only the load.
    // Regression: config::load::tests::a_referenced_file_swapped_during_a_build_is_read_again
    let also = previous.map(|p| p.watched.clone()).unwrap_or_default();
    load::read_whole(path, &also, |path| {
        referenced.clear();
        let loaded = load::load_once(path)?;
        compile::compile_watching(&loaded, previous, clock.clone(), referenced)
    })
}

/// [`build`] with a given clock (tests move a manual one).
pub fn build_with_clock(
    path: &Path,
    previous: Option<&Snapshot>,
    clock: crate::clock::Clock,
) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
    let loaded = load::load(path)?;
    compile::compile(&loaded, previous, clock)
}

/// A digest of a config section as written: compiled structures keep it, instead of the raw
/// serde types, to tell on reload whether their section changed (and so whether their state,
/// such as a cache or a limiter's counts, carries over).
///
/// Why: keeping the raw types in per-request structures tied the hot path's types to the
/// file format, and every field added to a section became a field of the compiled type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The digest of `parts`' `Debug` forms. The raw types hold no hash maps, so the form is
    /// deterministic; it is never logged (it may cover secrets' file paths, not their values).
    pub fn of(parts: &[&dyn std::fmt::Debug]) -> Self {
        let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for p in parts {
            d.update(format!("{p:?}").as_bytes());
            d.update(&[0]);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(d.finish().as_ref());
        Self(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_written_port_must_fit() {
        for (authority, fits) in [
            ("127.0.0.1:8080", true),
            ("127.0.0.1", true),
            ("[::1]:443", true),
            ("[::1]", true),
            ("host:65535", true),
            ("host:0", true),
            ("127.0.0.1:70000", false),
            ("host:65536", false),
            ("[::1]:99999", false),
            ("host:", false),
            ("host:+80", false),
            ("host:8a", false),
        ] {
            assert_eq!(super::port_fits(authority), fits, "{authority}");
        }
    }
}
