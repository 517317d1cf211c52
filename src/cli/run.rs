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
    let runtime = match runtime(raw.server.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let signals = Signals::install();
        tracing::info!(config = %config.display(), "Starting");
        let options = Options {
            watch,
            ..Options::default()
        };
        match App::start(config, options).await {
            Ok(app) => {
                if app.run_until_signal(signals).await {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "portcullis: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

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
