//! Process-wide tracing subscriber: human or JSON lines on stderr.

use tracing_subscriber::EnvFilter;

use crate::config::raw::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`. Installing twice
/// (tests, `demo` after `run`) keeps the first.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(with_quiet_peers(level)))
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

/// `level` with the HTTP/2 library's own lines at `error` only, unless it names `h2` itself.
///
/// Why: h2 logs at `warn` what a client does wrong (a PING ack it never asked for, say),
/// one line per frame: a flood of 17-byte frames wrote 101 MiB of log in 5 s. What a client
/// does wrong is the gateway's to count and log (`portcullis_connection_limits_total`).
/// Regression: tests::the_http2_librarys_warnings_are_off_unless_asked_for
fn with_quiet_peers(level: &str) -> String {
    if level.split(',').any(|d| d.trim().starts_with("h2")) {
        level.to_owned()
    } else {
        format!("{level},h2=error")
    }
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

    #[test]
    fn the_http2_librarys_warnings_are_off_unless_asked_for() {
        assert_eq!(super::with_quiet_peers("info"), "info,h2=error");
        assert_eq!(
            super::with_quiet_peers("warn,portcullis=debug"),
            "warn,portcullis=debug,h2=error"
        );
        assert_eq!(super::with_quiet_peers("info,h2=debug"), "info,h2=debug");
        for level in ["info", "debug", "warn,portcullis=debug"] {
            let f = tracing_subscriber::EnvFilter::try_new(super::with_quiet_peers(level));
            assert!(f.is_ok(), "{level}");
        }
    }
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
