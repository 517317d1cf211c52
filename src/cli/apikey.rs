//! `portcullis apikey new` and `portcullis apikey hash`: API keys for the hashed key file.
//!
//! The key is printed once, on stderr; stdout carries only the entry for the key file (the
//! hash, never the key), indented to be appended under its `keys:` list, or to start a new
//! file (a key file may be the list alone):
//! `portcullis apikey new --id reports --owner svc-reports >> config/apikeys.yaml`.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use crate::authn::apikey::{generate, hash_of};

/// What `apikey new` grants.
#[derive(Debug)]
pub struct NewArgs<'a> {
    /// Key id.
    pub id: &'a str,
    /// Owner principal id.
    pub owner: &'a str,
    /// `user` or `machine`.
    pub kind: &'a str,
    /// Scopes.
    pub scopes: &'a [String],
    /// Roles.
    pub roles: &'a [String],
    /// Plan.
    pub plan: Option<&'a str>,
    /// Tenant.
    pub tenant: Option<&'a str>,
    /// RFC 3339 expiry.
    pub expires: Option<&'a str>,
}

/// Generates a key, prints it once (stderr) and its key-file entry (stdout).
pub fn new(args: &NewArgs<'_>) -> ExitCode {
    let visible = |s: &str| !s.trim().is_empty() && !s.chars().any(char::is_control);
    if !visible(args.id) || !visible(args.owner) {
        return fail("--id and --owner must be non-empty visible text");
    }
    if !matches!(args.kind, "user" | "machine") {
        return fail("--kind is `user` or `machine`");
    }
    if let Some(t) = args.expires
        && humantime::parse_rfc3339_weak(t).is_err()
    {
        return fail("--expires must be an RFC 3339 time such as 2027-06-30T00:00:00Z");
    }
    let key = match generate() {
        Ok(k) => k,
        Err(e) => return fail(&e),
    };
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let list = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|s| q(s)).collect();
        format!("[{}]", items.join(", "))
    };
    let mut entry = format!(
        "  - id: {}\n    hash: {}\n    owner: {}\n    kind: {}\n",
        q(args.id),
        q(&hash_of(&key)),
        q(args.owner),
        args.kind
    );
    if !args.scopes.is_empty() {
        entry.push_str(&format!("    scopes: {}\n", list(args.scopes)));
    }
    if !args.roles.is_empty() {
        entry.push_str(&format!("    roles: {}\n", list(args.roles)));
    }
    for (name, v) in [
        ("plan", args.plan),
        ("tenant", args.tenant),
        ("expires", args.expires),
    ] {
        if let Some(v) = v {
            entry.push_str(&format!("    {name}: {}\n", q(v)));
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "API key for `{}` (shown only now; the file keeps its hash):\n{key}",
        args.id
    );
    let _ = std::io::stdout().write_all(entry.as_bytes());
    ExitCode::SUCCESS
}

/// Reads a key on stdin and prints its `sha256:` hash.
pub fn hash() -> ExitCode {
    let mut key = String::new();
    if std::io::stdin().read_to_string(&mut key).is_err() {
        return fail("cannot read the key from stdin");
    }
    let key = key.strip_suffix('\n').unwrap_or(&key);
    let key = key.strip_suffix('\r').unwrap_or(key);
    if key.is_empty() {
        return fail("no key on stdin");
    }
    let _ = writeln!(std::io::stdout(), "{}", hash_of(key));
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "portcullis apikey: {msg}");
    ExitCode::from(2)
}
