//! The `portcullis` binary: parse the command line, hand over to [`portcullis::cli`].

use std::process::ExitCode;

use clap::Parser as _;

/// jemalloc: the proxy allocates small, short-lived buffers per request from several threads
/// (glibc's allocator spent ~5% of the proxy's CPU in the load benchmark), and its background
/// thread (`background_threads`, on from the start) purges freed pages on a timer, so memory a
/// burst took goes back to the system while the gateway stays idle.
/// Why: mimalloc, used before, gave freed pages back only when the thread that owned them next
/// allocated: a gateway left idle after a burst kept its peak.
/// Regression: tests::it::memory::memory_returns_after_a_burst_while_idle
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    portcullis::cli::main(portcullis::cli::Cli::parse())
}
