//! `portcullis echo`: the echo upstream on its own, for trying `portcullis run` with the
//! shipped config (its `app` upstream is `http://127.0.0.1:3000`). Every request is answered
//! with a JSON description of what arrived: method, target, headers (the identity headers the
//! gateway added among them) and body size.

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::echo::Echo;
use crate::telemetry::logging;

/// Serves the echo upstream on `listen` until Ctrl-C or SIGTERM.
pub fn echo(listen: SocketAddr) -> ExitCode {
    logging::init(crate::config::raw::LogFormat::Human, "info");
    let rt = match super::run::runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let echo = match Echo::start(listen).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(%listen, error = %e, "Cannot start the echo upstream");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %echo.addr, "Echo upstream listening");
        wait_for_stop().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
