//! `portcullis token mint`: signs a token with a local key, for development and tests.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::authn::jwt::keys::{alg_name, parse_alg};
use crate::authn::jwt::mint::SigningKey;

/// What to put in the token.
#[derive(Debug)]
pub struct MintArgs<'a> {
    /// PKCS#8 private key (PEM) or, for HS*, the secret file.
    pub key: &'a Path,
    /// Algorithm name.
    pub alg: &'a str,
    /// Key id.
    pub kid: &'a str,
    /// `iss`.
    pub iss: &'a str,
    /// `aud` (repeat for an array).
    pub aud: &'a [String],
    /// `sub`, if any.
    pub sub: Option<&'a str>,
    /// `scope`, if any.
    pub scope: Option<&'a str>,
    /// Lifetime (`exp - iat`); negative lifetimes are not possible, use `not_before` tricks in
    /// tests instead.
    pub ttl: Duration,
    /// `name=value` claims; the value is JSON when it parses as JSON, else a string.
    pub claims: &'a [String],
}

/// Prints the signed token.
pub fn mint(a: &MintArgs<'_>) -> ExitCode {
    let Some(alg) = parse_alg(a.alg) else {
        return fail(&format!("unknown algorithm `{}`", a.alg));
    };
    let bytes = match std::fs::read(a.key) {
        Ok(b) => b,
        Err(e) => return fail(&format!("cannot read {}: {e}", a.key.display())),
    };
    let key = if alg_name(alg).starts_with("HS") {
        let secret = crate::secret::file_secret(bytes);
        SigningKey::hmac(&secret, alg, a.kid)
    } else {
        SigningKey::from_private_key(&bytes, alg, a.kid)
    };
    let key = match key {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    let claims = match claims(a) {
        Ok(c) => c,
        Err(m) => return fail(&m),
    };
    match key.sign(&Value::Object(claims)) {
        Ok(t) => {
            let _ = writeln!(std::io::stdout(), "{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

/// The claims a mint produces.
pub fn claims(a: &MintArgs<'_>) -> Result<Map<String, Value>, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut c = Map::new();
    c.insert("iss".into(), a.iss.into());
    c.insert(
        "aud".into(),
        match a.aud {
            [one] => one.as_str().into(),
            many => many.iter().map(|s| Value::from(s.as_str())).collect(),
        },
    );
    if let Some(sub) = a.sub {
        c.insert("sub".into(), sub.into());
    }
    if let Some(scope) = a.scope {
        c.insert("scope".into(), scope.into());
    }
    c.insert("iat".into(), now.into());
    c.insert("exp".into(), (now + a.ttl.as_secs()).into());
    for kv in a.claims {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!("`{kv}`: claims are written name=value"));
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::from(v));
        c.insert(k.into(), v);
    }
    Ok(c)
}

fn fail(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "portcullis token: {msg}");
    ExitCode::from(2)
}
