//! `portcullis run`: serve until SIGTERM/SIGINT.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::app::{App, Options, Signals};
use crate::config::load;
use crate::telemetry::logging;

/// Loads the config, sets up logging and the runtime, serves.
pub fn run(config: &Path, watch: bool) -> ExitCode {
    // Logging and thread count are read before the runtime exists.
    let raw = match load::read_config(config) {
        Ok(raw) => raw,
        Err(d) => {
            let _ = writeln!(std::io::stderr(), "{d}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(raw.logging.format, &raw.logging.level);
    let json = raw.logging.format == crate::config::raw::LogFormat::Json;
    let runtime = match runtime(raw.server.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let Some(mut signals) = Signals::install() else {
            tracing::error!("Cannot install the signal handlers");
            return ExitCode::FAILURE;
        };
        tracing::info!(config = %config.display(), "Starting");
        let options = Options {
            watch,
            ..Options::default()
        };
        // Why: a start stuck reading a file (a hung mount, a named pipe nobody writes) left
        // SIGTERM and SIGINT unread, and only SIGKILL ended the process.
        // Regression: tests (it) shutdown::a_stop_signal_ends_a_stuck_start
        let started = tokio::select! {
            started = App::start(config, options) => started,
            () = signals.stop() => {
                tracing::error!("Stop signal while starting: the gateway did not start");
                return ExitCode::FAILURE;
            }
        };
        match started {
            Ok(app) => {
                if app.run_until_signal(signals).await {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            // Why JSON too: with `logging.format: json` every line but this one was JSON, and
            // a log shipper parsing them lost the one that said why the gateway did not start.
            // Regression: tests (it) check::a_start_error_is_logged_as_json
            Err(e) if json => {
                if let crate::app::StartError::Config(diagnostics) = &e {
                    for d in diagnostics {
                        tracing::error!(
                            file = %d.file,
                            line = d.line,
                            column = d.column,
                            field = %d.path,
                            problem = %d.message,
                            "Config error"
                        );
                    }
                    tracing::error!(
                        errors = diagnostics.len(),
                        "Invalid config: the gateway did not start"
                    );
                } else {
                    tracing::error!(error = %e, "The gateway did not start");
                }
                ExitCode::FAILURE
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "portcullis: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // Why not a plain drop: it waits for every blocking thread, and one still reading a file
    // for an abandoned start or reload would hold the process forever.
    runtime.shutdown_timeout(LEFT_BEHIND);
    code
}

/// How long the runtime's end waits for blocking work left behind (a file read that never
/// returns) before the process exits anyway.
const LEFT_BEHIND: std::time::Duration = std::time::Duration::from_secs(1);

/// The runtime: `threads` workers (0: one per core). One worker runs on the current-thread
/// scheduler, which has no work-stealing machinery to pay for.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all().thread_name("portcullis");
    if threads > 1 {
        b.worker_threads(threads);
    }
    b.build()
}
