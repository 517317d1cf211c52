//! `portcullis check`: every diagnostic, `file:line:column: severity: path: message`; exit 1 on
//! any error.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::config;

/// Validates the config and its policies.
pub fn check(path: &Path) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match config::build(path, None) {
        Ok((snapshot, warnings)) => {
            for w in &warnings {
                let _ = writeln!(out, "{w}");
            }
            let files = snapshot
                .routes
                .rules()
                .iter()
                .map(|r| &*r.file)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let _ = writeln!(
                out,
                "ok: version {}: {} listener(s), {} upstream(s), {} authenticator(s), {} rule(s) in {} policy file(s), {} warning(s)",
                snapshot.version,
                snapshot.listeners.len(),
                snapshot.upstreams.len(),
                snapshot.authn.iter().count(),
                snapshot.routes.rules().len(),
                files,
                warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                let _ = writeln!(out, "{d}");
            }
            let errors = diags.iter().filter(|d| d.is_error()).count();
            let _ = writeln!(out, "{errors} error(s): config rejected");
            ExitCode::FAILURE
        }
    }
}
