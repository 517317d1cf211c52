//! `portcullis check`: every diagnostic, `file:line:column: severity: path: message`; exit 1 on
//! any error, and with `--strict` on any warning.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::config;

/// Validates the config and its policies; `strict`: a warning fails too.
///
/// Why `--strict`: a deny rule an earlier `allow /**` shadows is only a warning (the config
/// still loads, and a reload applies it), so a CI gate on `check` let a deny rule that does
/// nothing go live. Regression: tests (it) policy::check_strict_fails_on_a_warning
pub fn check(path: &Path, strict: bool) -> ExitCode {
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
            if strict && !warnings.is_empty() {
                let _ = writeln!(
                    out,
                    "{} warning(s) with --strict: config rejected",
                    warnings.len()
                );
                return ExitCode::FAILURE;
            }
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
