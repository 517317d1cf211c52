//! The `portcullis` binary: parse the command line, hand over to [`portcullis::cli`].

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc: the proxy allocates small, short-lived buffers per request from several threads;
/// glibc's allocator spent ~5% of the proxy's CPU in the load benchmark.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    portcullis::cli::main(portcullis::cli::Cli::parse())
}
