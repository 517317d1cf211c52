//! The `portcullis` binary: parse the command line, hand over to [`portcullis::cli`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    portcullis::cli::main(portcullis::cli::Cli::parse())
}
