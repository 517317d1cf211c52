//! Process-wide tracing subscriber: human or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

use crate::config::raw::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`. Installing twice
/// (tests, `demo` after `run`) keeps the first.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a file or a log collector gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `logging.level` filter: valid `RUST_LOG` syntax, and every directive without `=`
/// a level name.
///
/// Why: a bare word is read as a target name, so a typo (`inf0`) enabled only that target and
/// turned every log line off, the access log and errors included, and `check` said ok.
/// Regression: logging::tests::a_level_typo_is_refused
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level).map_err(|e| format!("not a valid filter: {e}"))?;
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, lvl) = directive.split_once('=').unwrap_or(("", directive));
        if !target.is_empty() && lvl.is_empty() {
            continue;
        }
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(lvl.trim())) {
            return Err(format!(
                "`{lvl}` is not a level: write one of trace, debug, info, warn, error, off, or \
                 `target=level` (e.g. `info,portcullis=debug`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_typo_is_refused() {
        for good in [
            "info",
            "WARN",
            "info,portcullis=debug",
            "portcullis=trace",
            "access=off",
        ] {
            assert_eq!(check_level(good), Ok(()), "{good}");
        }
        for bad in [
            "inf0",
            "bogus",
            "info,portcullis=loud",
            "portcullis=debug,verbose",
        ] {
            assert!(check_level(bad).is_err(), "{bad}");
        }
    }
}
