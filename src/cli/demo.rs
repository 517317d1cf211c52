//! `portcullis demo`: the newcomer's first run. Needs no file: it writes a config, a demo
//! policy and a self-signed certificate to a fresh temporary directory, starts an echo upstream
//! and the gateway, and prints curl lines to paste.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use jsonwebtoken::Algorithm;
use serde_json::json;

use crate::app::{App, Options};
use crate::authn::jwt::mint::SigningKey;
use crate::echo::Echo;
use crate::telemetry::logging;
use crate::tls::certs;

/// The demo policy: `/public/**` readable by anyone, `/api/**` for holders of a demo token,
/// `/reports/**` for holders of the demo API key,
/// `/admin/**` explicitly denied, anything else denied by default.
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
  - name: api
    match:
      paths: [\"/api/**\"]
    effect: allow
    authenticators: [demo]
    upstream: echo
  - name: reports
    match:
      paths: [\"/reports/**\"]
    effect: allow
    authenticators: [partners]
    upstream: echo
";

/// Issuer and audience of the demo tokens.
const DEMO_ISSUER: &str = "https://demo.portcullis.local";
const DEMO_AUDIENCE: &str = "demo-api";
const DEMO_KID: &str = "demo-1";

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
    // Before anything is bound: a signal's default action would end the demo.
    let Some(signals) = crate::app::Signals::install() else {
        tracing::error!("Cannot install the signal handlers");
        return ExitCode::FAILURE;
    };
    let echo = match Echo::start(SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the echo upstream");
            return ExitCode::FAILURE;
        }
    };
    let key = match SigningKey::generate(Algorithm::ES256, DEMO_KID) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "Cannot make the demo signing key");
            return ExitCode::FAILURE;
        }
    };
    let tokens = match demo_tokens(&key) {
        Ok(t) => t,
        Err(e) => {
            // MintError carries static texts, an algorithm or a PEM label: never key bytes.
            tracing::error!(error = %e, "Cannot sign the demo tokens");
            return ExitCode::FAILURE;
        }
    };
    let api_key = match crate::authn::apikey::generate() {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "Cannot make the demo API key");
            return ExitCode::FAILURE;
        }
    };
    let config = match write_files(dir, port, admin_port, echo.addr, &key, &api_key) {
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
    let DemoTokens {
        valid,
        expired,
        wrong_audience,
    } = tokens;
    let key_file = dir.join("demo-signing.key");
    let text = format!(
        "\n\
Portcullis demo is running. Ctrl-C stops it.
  gateway  {base}  (self-signed certificate {ca})
  admin    http://{admin}  (/healthz /readyz /metrics /config, POST /reload)
  config   {config}  (edit it or {dir}/policies/demo.yaml: changes apply live)

Allowed (200) by rule public-read, answered by the echo upstream:
  curl --cacert {ca} {base}/public/hello
Allowed (200) by rule api, with a demo token for alice (ES256, valid 1 h):
  curl --cacert {ca} -H 'Authorization: Bearer {valid}' {base}/api/orders
Denied by rule admin-denied (403):
  curl --cacert {ca} -i {base}/admin/users
Denied (401) by rule api: no token, so a Bearer challenge:
  curl --cacert {ca} -i {base}/api/orders
Denied (401) by rule api: an expired token:
  curl --cacert {ca} -i -H 'Authorization: Bearer {expired}' {base}/api/orders
Denied (401) by rule api: a token for another audience:
  curl --cacert {ca} -i -H 'Authorization: Bearer {wrong_audience}' {base}/api/orders
Allowed (200) by rule reports, with the demo API key (its hash is in {dir}/apikeys.yaml):
  curl --cacert {ca} -H 'x-api-key: {api_key}' {base}/reports/daily
Denied (401) by rule reports: a key that is not in the file:
  curl --cacert {ca} -i -H 'x-api-key: pck_not-a-real-key' {base}/reports/daily
Denied (403) by default, no rule matches:
  curl --cacert {ca} -i -X POST {base}/public/hello
Rejected (400) as an ambiguous path:
  curl --cacert {ca} -i --path-as-is '{base}/public/..%2Fadmin'

Mint more tokens with the demo key:
  portcullis token mint --key {key} --alg ES256 --kid {DEMO_KID} --iss {DEMO_ISSUER} --aud {DEMO_AUDIENCE} --sub bob
",
        config = config.display(),
        dir = dir.display(),
        key = key_file.display(),
    );
    {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    if app.run_until_signal(signals).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Tokens for the printed curl lines.
struct DemoTokens {
    valid: String,
    expired: String,
    wrong_audience: String,
}

fn demo_tokens(key: &SigningKey) -> Result<DemoTokens, crate::authn::jwt::mint::MintError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = |aud: &str, iat: u64, exp: u64| json!({"iss": DEMO_ISSUER, "aud": aud, "sub": "alice", "scope": "orders:read", "iat": iat, "exp": exp});
    Ok(DemoTokens {
        valid: key.sign(&claims(DEMO_AUDIENCE, now, now + 3600))?,
        expired: key.sign(&claims(DEMO_AUDIENCE, now - 7200, now - 3600))?,
        wrong_audience: key.sign(&claims("another-api", now, now + 3600))?,
    })
}

fn write_files(
    dir: &Path,
    port: u16,
    admin_port: u16,
    echo: SocketAddr,
    signing: &SigningKey,
    api_key: &str,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("policies"))?;
    let (cert, key) = certs::self_signed(&["localhost", "127.0.0.1"])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    std::fs::write(dir.join("demo.crt"), cert)?;
    super::keys::write_private(&dir.join("demo.key"), key.as_bytes())?;
    std::fs::write(dir.join("policies/demo.yaml"), DEMO_POLICY)?;
    super::keys::write_private(
        &dir.join("demo-signing.key"),
        signing.private_pem.expose().as_bytes(),
    )?;
    std::fs::write(dir.join("demo-signing.pem"), &signing.public_pem)?;
    std::fs::write(
        dir.join("apikeys.yaml"),
        format!(
            "# Hashed API keys; add more with `portcullis apikey new --id ID --owner OWNER >> apikeys.yaml`.\nkeys:\n  - id: demo-reports\n    hash: {}\n    owner: svc-reports\n    kind: machine\n    scopes: [reports:read]\n    plan: demo\n",
            crate::authn::apikey::hash_of(api_key)
        ),
    )?;
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
authenticators:
  demo:
    jwt:
      providers:
        - issuer: {DEMO_ISSUER}
          audiences: [{DEMO_AUDIENCE}]
          keys:
            - pem_file: {{path: demo-signing.pem, kid: {DEMO_KID}, algorithms: [ES256]}}
  partners:
    api_key:
      keys_file: apikeys.yaml
"
    );
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, config)?;
    Ok(path)
}
