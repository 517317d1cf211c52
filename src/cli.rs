//! The `portcullis` command line.

pub mod check;
pub mod demo;
pub mod run;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Edge authentication and authorization gateway.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve with a config file.
    Run {
        /// The gateway config file.
        #[arg(short, long, default_value = "config/portcullis.yaml")]
        config: PathBuf,
        /// Do not watch files for changes (SIGHUP and POST /reload still reload).
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a config and its policies; print every problem with file, line and field.
    Check {
        /// The gateway config file.
        #[arg(short, long, default_value = "config/portcullis.yaml")]
        config: PathBuf,
    },
    /// Print the JSON Schema of the config or policy files, for editor completion.
    Schema {
        /// Which file kind.
        #[arg(value_enum, default_value = "config")]
        kind: SchemaKind,
    },
    /// Run on built-in defaults: self-signed certificate, echo upstream, demo policies.
    Demo {
        /// HTTPS port of the demo gateway (0 for any free port).
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Admin port (0 for any free port).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
}

/// File kinds with a schema.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaKind {
    /// `config/portcullis.yaml`.
    Config,
    /// Files under `policies/`.
    Policy,
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config, no_watch } => run::run(&config, !no_watch),
        Command::Check { config } => check::check(&config),
        Command::Schema { kind } => schema(kind),
        Command::Demo { port, admin_port } => demo::demo(port, admin_port),
    }
}

fn schema(kind: SchemaKind) -> ExitCode {
    let schema = match kind {
        SchemaKind::Config => schemars::schema_for!(crate::config::raw::RawConfig),
        SchemaKind::Policy => schemars::schema_for!(crate::config::raw::RawPolicyFile),
    };
    let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{text}");
    ExitCode::SUCCESS
}
