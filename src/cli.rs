//! The `portcullis` command line.

pub mod apikey;
pub mod check;
pub mod demo;
pub mod echo;
pub mod explain;
pub mod keys;
pub mod policy;
pub mod policy_test;
pub mod run;
pub mod token;

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
        /// Exit 1 on any warning too (a rule that can never match, a deny rule an earlier
        /// allow rule decides): for CI, where a warning should stop a deploy.
        #[arg(long)]
        strict: bool,
    },
    /// Print the JSON Schema of the config or policy files, for editor completion.
    Schema {
        /// Which file kind.
        #[arg(value_enum, default_value = "config")]
        kind: SchemaKind,
    },
    /// Explain the decision for one request: the rule, each check, the status and the
    /// headers the upstream would receive (credentials redacted). Exit 0 allowed, 1 denied.
    Explain {
        /// The gateway config file.
        #[arg(short, long, default_value = "config/portcullis.yaml")]
        config: PathBuf,
        /// Request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// `https://host[:port]/path?query`.
        #[arg(long)]
        url: String,
        /// A request header `Name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The client address (default 127.0.0.1).
        #[arg(long)]
        client_ip: Option<std::net::IpAddr>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Run the code of this door: how it reads the request and hands back the answer
        /// (default: the proxy, or the door of `--listener`).
        #[arg(long, value_enum)]
        door: Option<DoorArg>,
        /// Run as this listener: its door with its own settings (a forward-auth listener's
        /// `status_map` and description headers); default: the first listener of the door.
        #[arg(long)]
        listener: Option<String>,
        /// An Envoy `context_extensions` entry `name=value` of the Check (`--door
        /// envoy-grpc` only); repeatable.
        #[arg(long = "context", value_name = "NAME=VALUE")]
        context: Vec<String>,
    },
    /// Run policy test files: requests and their expected decisions, statuses and headers.
    /// Exit 1 with a diff when one differs.
    Test {
        /// Test files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Policy tools.
    Policy {
        /// What to do with the policies.
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Signing keys for development.
    Keys {
        /// What to do with keys.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// API keys: generate one for the key file, or hash an existing one.
    Apikey {
        /// What to do with API keys.
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Tokens for development.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run the echo upstream alone (what `config/portcullis.yaml`'s `app` upstream expects on
    /// 127.0.0.1:3000): it answers every request with a JSON description of what arrived.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
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

/// `portcullis keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a key pair: private PEM, public PEM and JWKS, plus a config snippet.
    New {
        /// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// Key id (`kid`).
        #[arg(long, default_value = "dev-1")]
        kid: String,
        /// Directory to write the files into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace existing files of the same key id.
        #[arg(long)]
        force: bool,
    },
}

/// `portcullis policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The rules in evaluation order: name, effect, methods, hosts, paths, authenticators,
    /// file.
    List {
        /// The gateway config file.
        #[arg(short, long, default_value = "config/portcullis.yaml")]
        config: PathBuf,
    },
}

/// `portcullis apikey …`.
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Generate a key: the key once on stderr, its hashed entry for the key file on stdout.
    New {
        /// The key's id (shown in logs and identity headers).
        #[arg(long)]
        id: String,
        /// The principal id the key speaks for.
        #[arg(long)]
        owner: String,
        /// `user` or `machine`.
        #[arg(long, default_value = "user")]
        kind: String,
        /// A scope granted; repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A role granted; repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Plan or tier.
        #[arg(long)]
        plan: Option<String>,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// RFC 3339 expiry, e.g. 2027-06-30T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Read a key on stdin and print its `sha256:` hash for the key file.
    Hash,
}

/// `portcullis token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Sign a token with a local private key (or HMAC secret file) and print it.
    Mint {
        /// PKCS#8 private key PEM (from `keys new`), or the secret file for HS256/384/512.
        #[arg(long)]
        key: PathBuf,
        /// Algorithm.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// Key id (`kid`).
        #[arg(long, default_value = "dev-1")]
        kid: String,
        /// Issuer (`iss`).
        #[arg(long)]
        iss: String,
        /// Audience (`aud`); repeat for several.
        #[arg(long, required = true)]
        aud: Vec<String>,
        /// Subject (`sub`).
        #[arg(long)]
        sub: Option<String>,
        /// Space-separated scopes (`scope`).
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime, e.g. `15m`, `1h`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Extra claim `name=value` (JSON values allowed); repeatable.
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
}

/// The doors `explain --door` can run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DoorArg {
    /// The reverse proxy.
    Proxy,
    /// Envoy's gRPC `Check`.
    EnvoyGrpc,
    /// Envoy's HTTP mode.
    EnvoyHttp,
    /// nginx, Traefik, Caddy, APISIX, Kong.
    ForwardAuth,
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
        Command::Check { config, strict } => check::check(&config, strict),
        Command::Echo { listen } => echo::echo(listen),
        Command::Schema { kind } => schema(kind),
        Command::Test { files } => policy_test::run(&files),
        Command::Policy {
            command: PolicyCommand::List { config },
        } => policy::list(&config),
        Command::Explain {
            config,
            method,
            url,
            headers,
            client_ip,
            json,
            door,
            listener,
            context,
        } => explain::explain(&explain::ExplainArgs {
            config: &config,
            method: &method,
            url: &url,
            headers: &headers,
            client_ip,
            json,
            door: door.map(|d| match d {
                DoorArg::Proxy => crate::request::facts::Door::Proxy,
                DoorArg::EnvoyGrpc => crate::request::facts::Door::EnvoyGrpc,
                DoorArg::EnvoyHttp => crate::request::facts::Door::EnvoyHttp,
                DoorArg::ForwardAuth => crate::request::facts::Door::ForwardAuth,
            }),
            listener: listener.as_deref(),
            context: &context,
        }),
        Command::Demo { port, admin_port } => demo::demo(port, admin_port),
        Command::Keys {
            command:
                KeysCommand::New {
                    alg,
                    kid,
                    out,
                    force,
                },
        } => keys::new(&alg, &kid, &out, force),
        Command::Apikey {
            command:
                ApikeyCommand::New {
                    id,
                    owner,
                    kind,
                    scopes,
                    roles,
                    plan,
                    tenant,
                    expires,
                },
        } => apikey::new(&apikey::NewArgs {
            id: &id,
            owner: &owner,
            kind: &kind,
            scopes: &scopes,
            roles: &roles,
            plan: plan.as_deref(),
            tenant: tenant.as_deref(),
            expires: expires.as_deref(),
        }),
        Command::Apikey {
            command: ApikeyCommand::Hash,
        } => apikey::hash(),
        Command::Token {
            command:
                TokenCommand::Mint {
                    key,
                    alg,
                    kid,
                    iss,
                    aud,
                    sub,
                    scope,
                    ttl,
                    claims,
                },
        } => token::mint(&token::MintArgs {
            key: &key,
            alg: &alg,
            kid: &kid,
            iss: &iss,
            aud: &aud,
            sub: sub.as_deref(),
            scope: scope.as_deref(),
            ttl,
            claims: &claims,
        }),
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
