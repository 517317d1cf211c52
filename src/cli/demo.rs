//! `portcullis demo`: the newcomer's first run. Needs no file: it writes a config, a demo
//! policy and a self-signed certificate to a fresh temporary directory, starts an echo upstream
//! and the gateway, and prints curl lines to paste.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::app::{App, Options};
use crate::echo::Echo;
use crate::telemetry::logging;
use crate::tls::certs;

/// The demo policy: `/public/**` readable by anyone, `/admin/**` explicitly denied, anything
/// else denied by default.
pub const DEMO_POLICY: &str = "\
# Demo policy. Edit me while the demo runs: the gateway reloads within a second.
rules:
  - name: admin-denied
    match:
      paths: [\"/admin/**\"]
    effect: deny
  - name: public-read
    match:
      paths: [\"/public/**\"]
      methods: [GET, HEAD]
    effect: allow
    anonymous: true
    upstream: echo
";

/// Runs the demo until Ctrl-C.
pub fn demo(port: u16, admin_port: u16) -> ExitCode {
    logging::init(crate::config::raw::LogFormat::Human, "info");
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    let code = match super::run::runtime(0) {
        Ok(rt) => rt.block_on(serve(&dir, port, admin_port)),
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the runtime");
            ExitCode::FAILURE
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

async fn serve(dir: &Path, port: u16, admin_port: u16) -> ExitCode {
    let echo = match Echo::start(SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the echo upstream");
            return ExitCode::FAILURE;
        }
    };
    let config = match write_files(dir, port, admin_port, echo.addr) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "Cannot write the demo files");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::start(&config, Options::default()).await {
        Ok(app) => app,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "portcullis demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(addr) = app.listener_addr("https") else {
        return ExitCode::FAILURE;
    };
    let base = format!("https://localhost:{}", addr.port());
    let ca = dir.join("demo.crt");
    let ca = ca.display();
    let admin = app.admin_addr();
    let text = format!(
        "\n\
Portcullis demo is running. Ctrl-C stops it.
  gateway  {base}  (self-signed certificate {ca})
  admin    http://{admin}  (/healthz /readyz /metrics /config, POST /reload)
  config   {config}  (edit it or {dir}/policies/demo.yaml: changes apply live)

Allowed by rule public-read, answered by the echo upstream:
  curl --cacert {ca} {base}/public/hello
Denied by rule admin-denied (403):
  curl --cacert {ca} -i {base}/admin/users
Denied by default, no rule matches (403):
  curl --cacert {ca} -i -X POST {base}/public/hello
Rejected as an ambiguous path (400):
  curl --cacert {ca} -i --path-as-is '{base}/public/..%2Fadmin'
",
        config = config.display(),
        dir = dir.display(),
    );
    {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    if app.run_until_signal().await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn write_files(
    dir: &Path,
    port: u16,
    admin_port: u16,
    echo: SocketAddr,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("policies"))?;
    let (cert, key) = certs::self_signed(&["localhost", "127.0.0.1"])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::write(dir.join("demo.crt"), cert)?;
    write_private(&dir.join("demo.key"), key.as_bytes())?;
    std::fs::write(dir.join("policies/demo.yaml"), DEMO_POLICY)?;
    let config = format!(
        "\
# Written by `portcullis demo`.
listeners:
  - name: https
    address: 127.0.0.1:{port}
    tls:
      certificates:
        - cert: demo.crt
          key: demo.key
admin:
  address: 127.0.0.1:{admin_port}
upstreams:
  echo:
    url: http://{echo}
policies:
  dir: policies
"
    );
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Writes a key file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
