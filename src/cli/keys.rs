//! `portcullis keys new`: a signing key pair for development, its public PEM and JWKS, and
//! the provider config that trusts it.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::authn::jwt::keys::{alg_name, parse_alg};
use crate::authn::jwt::mint::{SigningKey, jwks};

/// Writes `<kid>.key` (private, mode 0600), `<kid>.pem` and `<kid>.jwks.json` into `out`.
/// An existing file is never replaced unless `force`: overwriting a private key in use would
/// invalidate every token signed with it.
pub fn new(alg: &str, kid: &str, out: &Path, force: bool) -> ExitCode {
    let Some(alg) = parse_alg(alg) else {
        return fail(&format!(
            "unknown algorithm `{alg}` (RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
        ));
    };
    if alg_name(alg).starts_with("HS") {
        return fail(
            "HMAC keys are shared secrets: write 32+ random bytes to a file instead, e.g. `head -c 64 /dev/urandom > secret`",
        );
    }
    if kid.is_empty()
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return fail("the key id may hold letters, digits, `-`, `_` and `.`");
    }
    let key = match SigningKey::generate(alg, kid) {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    let private = out.join(format!("{kid}.key"));
    let public = out.join(format!("{kid}.pem"));
    let set = out.join(format!("{kid}.jwks.json"));
    // Why: `keys new` used to overwrite a private key silently.
    // Regression: tests (it) check::keys_new_refuses_to_overwrite_without_force
    if !force && let Some(existing) = [&private, &public, &set].into_iter().find(|p| p.exists()) {
        return fail(&format!(
            "{} exists; choose another --kid or --out, or pass --force to replace it",
            existing.display()
        ));
    }
    let written = std::fs::create_dir_all(out)
        .and_then(|()| write_private(&private, key.private_pem.expose().as_bytes()))
        .and_then(|()| std::fs::write(&public, &key.public_pem))
        .and_then(|()| {
            std::fs::write(
                &set,
                serde_json::to_string_pretty(&jwks([&key])).unwrap_or_default(),
            )
        });
    if let Err(e) = written {
        return fail(&format!("cannot write to {}: {e}", out.display()));
    }
    let text = format!(
        "Wrote {private} (private: keep it secret), {public} and {set}.\n\n\
Trust it in the gateway config:\n\
authenticators:\n  dev:\n    jwt:\n      providers:\n        - issuer: https://dev.example\n          audiences: [my-api]\n          keys:\n            - pem_file: {{path: {public_abs}, kid: {kid}, algorithms: [{alg}]}}\n\n\
Mint a token:\n  portcullis token mint --key {private} --alg {alg} --kid {kid} --iss https://dev.example --aud my-api --sub alice\n",
        private = private.display(),
        public = public.display(),
        // Why: a config resolves paths from its own directory, not from where `keys new`
        // ran: the relative path pasted into `config/portcullis.yaml` named
        // `config/./k9.pem`. Regression: tests (it) credentials::keys_new_snippet_path_is_absolute
        public_abs = std::fs::canonicalize(&public)
            .unwrap_or_else(|_| public.clone())
            .display(),
        set = set.display(),
        alg = alg_name(alg),
    );
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "portcullis keys: {msg}");
    ExitCode::from(2)
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
