//! Config: files → raw serde types → compiled [`crate::snapshot::Snapshot`], and reloads.

pub mod compile;
pub mod diagnostic;
pub mod load;
pub mod raw;
pub mod reload;

pub use diagnostic::{Diagnostic, Severity};

use std::path::Path;

use crate::snapshot::Snapshot;

/// Loads and compiles a config file and its policies: the snapshot and its warnings, or every
/// diagnostic. The snapshot keeps `previous`'s clock, or the system clock.
pub fn build(
    path: &Path,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
    let clock = previous.map_or_else(crate::clock::Clock::system, |p| p.clock.clone());
    build_with_clock(path, previous, clock)
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
