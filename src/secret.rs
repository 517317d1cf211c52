//! [`Secret`]: a value that must never reach a log, a `Debug` print or a timing side channel.
//!
//! `Debug` prints `Secret(…)`; equality is constant-time ([`subtle`]); the only way to the bytes
//! is [`Secret::expose`], which makes every use greppable.

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

/// A URL as it may be shown (an error, a log line): its user information (`user:pass@`),
/// with or without a scheme, and its query (`?apikey=…`) replaced by `***`.
///
/// Why: a URL written with credentials in it (refused, but named in the refusal), or an
/// endpoint keyed by its query, reached `check`, `POST /reload` answers, `GET /config` and
/// the log as written. Regression: tests::urls_are_redacted
pub fn redacted_url(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let q = rest.find(['?', '#']);
    // An `@` after a `?` or `#` is a password holding one, or an address in the query: what
    // is where cannot be told, so nothing after the scheme is shown.
    if let Some(q) = q
        && rest[q..].contains('@')
    {
        return format!("{head}***");
    }
    let before = &rest[..q.unwrap_or(rest.len())];
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    // Up to the last `@` before the query: a password may hold `/`, so where the authority
    // ends is not known (an `@` in a path is masked with it, harmlessly).
    match before.rfind('@') {
        Some(at) => {
            out.push_str("***@");
            out.push_str(&before[at + 1..]);
        }
        None => out.push_str(before),
    }
    if let Some(q) = q {
        out.push_str(&rest[q..=q]);
        out.push_str("***");
    }
    out
}

/// A file's path as an error may show it: as written, unless its name does not look like a
/// file's (a newline or other control character, a space, no `.` in it, over 128 bytes),
/// which is likely a secret or a key pasted where its file's name belongs.
///
/// Why: `key: "-----BEGIN PRIVATE KEY-----…"`, `secret: {file: S3cret}` and
/// `keys_file: pck_…` printed the key or secret in "cannot read …" (log, `check`,
/// `POST /reload`, `GET /config`). Regression: tests::pasted_secrets_are_no_file_names
pub fn shown_path(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy());
    let looks_like_a_file = name.is_some_and(|n| {
        n.len() <= 128 && n.contains('.') && !n.chars().any(|c| c.is_control() || c.is_whitespace())
    });
    if looks_like_a_file && !path.to_string_lossy().contains(['\n', '\r']) {
        path.display().to_string()
    } else {
        "the file named there (its name is not shown: it does not look like a file's, and may be a pasted secret)".to_owned()
    }
}

/// A URL's authority as a parser reads it (up to the first `/`, `?` or `#` after the
/// scheme), and what follows it.
pub fn split_authority(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()))
}

/// Whether `url` may carry credentials: an `@` in its authority; a `#` anywhere; or an `@`
/// after an authority with a port or a one-label host. A password may hold `#`, `/` or `?`,
/// where a parser ends the authority: `http://u:p#w@host`; `https://ops:8443/S3cret@idp`
/// (a password starting with digits reads as a port); `https://dGVzd/Bhc3M=@idp` (a token
/// with no password reads as a one-label host). None of these URLs has a use for a fragment,
/// and an `@` a path or query needs is written `%40` then. Real key URLs with an `@` in the
/// path (Google's service-account keys) name a dotted host and no port, and pass.
///
/// Why: URLs were checked for credentials in their parsed authority, and one whose password
/// held `#` passed, then was shown whole; one whose password held `/` was fetched from the
/// wrong host with the password's end in its path. Regression: tests::urls_are_redacted,
/// tests::credentials_are_told_from_an_at_in_a_path,
/// authn::jwt::tests::key_urls_with_credentials_are_refused_unshown
pub fn may_hold_credentials(url: &str) -> bool {
    let (authority, after) = split_authority(url);
    let (host, port) = match authority.rfind(']') {
        Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
        None => authority
            .rsplit_once(':')
            .map_or((authority, None), |(h, p)| (h, Some(p))),
    };
    let one_label = !host.contains('.') && !host.starts_with('[');
    url.contains('#')
        || authority.contains('@')
        || (after.contains('@') && (port.is_some() || one_label))
}

/// [`may_hold_credentials`] for URLs with no use for an `@` anywhere (an upstream, a
/// delegate, an OTLP collector): any `@` or `#` refuses, wherever a password holding `/`
/// would have put it.
pub fn may_hold_credentials_anywhere(url: &str) -> bool {
    url.contains(['@', '#'])
}

/// A parser's message about a file that holds secrets, without the values it quotes: a
/// string (`invalid type: string "…"`) and the name of an unknown field or variant.
///
/// Why: an API key pasted into the key file as a bare string was echoed by the parser's
/// message at `error` in the log, in `check`, `POST /reload` and `GET /config`.
/// Regression: tests::quoted_values_are_cut_from_messages
pub fn without_values(message: &str) -> String {
    // Where serde quotes a value: a string in `"…"` (its own `"` escaped), the rest in
    // backticks, closed by a backtick that ends the message or comes before `,` or ` as`.
    const NAMED: [&str; 5] = [
        "unknown field `",
        "unknown variant `",
        "duplicate key `",
        "integer `",
        "floating point `",
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let quote = rest.find('"');
        let named = NAMED
            .iter()
            .filter_map(|p| rest.find(p).map(|i| i + p.len() - 1))
            .min();
        let (open, end) = match (quote, named) {
            (Some(q), Some(n)) if n < q => (n, backtick_end(&rest[n + 1..])),
            (None, Some(n)) => (n, backtick_end(&rest[n + 1..])),
            (Some(q), _) => (q, quote_end(&rest[q + 1..])),
            (None, None) => break,
        };
        let Some(len) = end else {
            // Unclosed: nothing after the opening is shown.
            out.push_str(&rest[..open]);
            out.push_str("(a value, not shown)");
            return out;
        };
        out.push_str(&rest[..open]);
        out.push_str("(a value, not shown)");
        rest = &rest[open + 1 + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether a value written where a name belongs reads like one, and may be quoted back in a
/// message: at most 40 bytes of lowercase letters, digits, `-`, `_` and `.`, with no run of
/// 16 or more letters and digits between separators (a hex or base64 secret), and starting
/// with a letter.
pub fn reads_like_a_name(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    value.len() <= 40
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
        && value.split(['-', '_', '.']).all(|run| run.len() < 16)
}

/// A parser's message with the string it was given cut (`invalid type: string "…"`), the
/// rest kept (`unknown field `x``, a unit it names).
///
/// Why: a secret pasted where a boolean or a number belongs (`access_log: <secret>`) was
/// quoted by the parser's message in `check`, the reload log and `GET /config`.
/// Regression: tests::quoted_strings_are_cut_from_any_message
pub fn without_quoted_strings(message: &str) -> String {
    const GIVEN: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(q) = rest.find(GIVEN).map(|i| i + GIVEN.len() - 1) {
        let end = quote_end(&rest[q + 1..]);
        // A word that reads like a name (`"lots"`) is kept: it says what was wrong.
        if let Some(len) = end
            && reads_like_a_name(&rest[q + 1..q + 1 + len])
        {
            out.push_str(&rest[..q + 1 + len + 1]);
            rest = &rest[q + 1 + len + 1..];
            continue;
        }
        out.push_str(&rest[..q]);
        out.push_str("(a value, not shown)");
        match end {
            Some(len) => rest = &rest[q + 1 + len + 1..],
            None => return out,
        }
    }
    out.push_str(rest);
    // An unknown variant (`format: <secret>`) likewise, its text in backticks.
    const VARIANT: &str = "unknown variant `";
    if let Some(i) = out.find(VARIANT).map(|i| i + VARIANT.len())
        && let Some(len) = backtick_end(&out[i..])
        && !reads_like_a_name(&out[i..i + len])
    {
        out.replace_range(i - 1..i + len + 1, "(a value, not shown)");
    }
    out
}

/// Where a `"`-quoted value (after its opening quote) ends: its first unescaped `"`.
fn quote_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Where a backtick-quoted value (after its opening backtick) ends: the last backtick that
/// ends the message or is followed by `,` or ` as` (serde's wording), before a newline.
fn backtick_end(s: &str) -> Option<usize> {
    let line = &s[..s.find('\n').unwrap_or(s.len())];
    line.match_indices('`')
        .map(|(i, _)| i)
        .filter(|&i| {
            let after = &line[i + 1..];
            after.is_empty() || after.starts_with(',') || after.starts_with(" as")
        })
        .min()
}

/// A secret value: redacted `Debug`, constant-time `==`.
#[derive(Clone, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself; every caller is a place a secret is used.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl<T: AsRef<[u8]>> PartialEq for Secret<T> {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(self.0.as_ref(), other.0.as_ref())
    }
}

impl<T: AsRef<[u8]>> Eq for Secret<T> {}

/// SHA-256 of `bytes`: token cache keys, key fingerprints, file identities.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}

/// Lowercase hex of `bytes` (digests, fingerprints, config versions).
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Constant-time comparison of two byte strings (the length is not hidden).
///
/// Eight bytes at a time, differences OR-ed together without early exit, and the final test
/// through `subtle`: as constant-time as `subtle`'s byte loop, and fast enough for kilobyte
/// tokens on every cached request.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    let mut diff = 0u64;
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        diff |= word(x) ^ word(y);
    }
    diff |= word(ra) ^ word(rb);
    diff.ct_eq(&0).into()
}

/// Whether `name` is written as environment variables' names are by convention: capitals,
/// digits and `_`, not starting with a digit, at most 64 bytes. (Letters, digits and `_`
/// alone would pass many generated secrets: `ghp_…`, half of `pck_…` keys.)
fn is_variable_name(name: &str) -> bool {
    name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
}

/// Reads a secret from the environment or a file (one trailing newline dropped). A file is
/// added to `watched`, so the config version hashes its content and a rotation reloads.
pub fn read(
    raw: &crate::config::raw::RawSecret,
    base_dir: &Path,
    watched: &mut Vec<std::path::PathBuf>,
) -> Result<Secret<Vec<u8>>, String> {
    match raw {
        crate::config::raw::RawSecret::Env(name) => match std::env::var_os(name) {
            Some(v) if !v.is_empty() => Ok(Secret::new(v.into_encoded_bytes())),
            // Why: a secret pasted where the variable's name belongs was echoed in the
            // refusal (log, `check`, `GET /config`). Only a name that looks like one is shown.
            // Regression: tests::a_pasted_secret_is_not_named_as_a_variable
            _ if is_variable_name(name) => {
                Err(format!("environment variable `{name}` is not set"))
            }
            _ => Err("`env` names no environment variable that is set (the name is not shown: written other than in capitals, digits and `_`, it may be a secret pasted where the variable's name belongs)".to_owned()),
        },
        crate::config::raw::RawSecret::File(p) => {
            let path = base_dir.join(p);
            // Why: a secret file that is not watched and hashed into the version is never
            // re-read: after a rotation the old secret would keep working.
            // Regression: tests (it) reload::rotated_*_secret_file_*
            watched.push(path.clone());
            match crate::config::files::read(&path) {
                Ok(b) => Ok(Secret::new(file_secret(b))),
                Err(e) => Err(format!("cannot read {}: {e}", shown_path(&path))),
            }
        }
    }
}

/// A secret file's bytes as the secret: one line ending (`\n` or `\r\n`) dropped, as an
/// editor or `echo` leaves it. Every reader of an HMAC secret file (the gateway, `token
/// mint`, `portcullis test`) takes it so: a token the tools sign, the gateway verifies.
///
/// Why: the tools dropped `\n` only, so a secret written with `\r\n` signed tokens the
/// gateway refused. Regression: tests::a_secret_file_loses_one_line_ending
pub fn file_secret(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_strings_are_cut_from_any_message() {
        for (message, shown) in [
            (
                "invalid type: string \"s3cr\\\"et\", expected a boolean",
                "invalid type: string (a value, not shown), expected a boolean",
            ),
            (
                "invalid value: string \"secret",
                "invalid value: string (a value, not shown)",
            ),
            // A word that reads like a name says what was wrong.
            (
                "invalid type: string \"lots\", expected a number",
                "invalid type: string \"lots\", expected a number",
            ),
            // Names, and what the parser says of its own, are kept.
            (
                "unknown field `acess_log`, expected one of `a`",
                "unknown field `acess_log`, expected one of `a`",
            ),
            (
                "unknown time unit \"parsecs\"",
                "unknown time unit \"parsecs\"",
            ),
            (
                "unknown variant `jsn`, expected `json` or `text`",
                "unknown variant `jsn`, expected `json` or `text`",
            ),
            (
                "unknown variant `Xk9pQ2vR7sT4uW8yZ1aB3cD5eF6gH0j`, expected `json` or `text`",
                "unknown variant (a value, not shown), expected `json` or `text`",
            ),
        ] {
            assert_eq!(super::without_quoted_strings(message), shown, "{message}");
        }
    }

    #[test]
    fn a_secret_file_loses_one_line_ending() {
        for (file, secret) in [
            (&b"s3cret\n"[..], &b"s3cret"[..]),
            (b"s3cret\r\n", b"s3cret"),
            (b"s3cret", b"s3cret"),
            (b"s3cret\n\n", b"s3cret\n"),
            (b"s3cret\r", b"s3cret\r"),
        ] {
            assert_eq!(super::file_secret(file.to_vec()), secret, "{file:?}");
        }
    }

    use super::*;

    #[test]
    fn credentials_are_told_from_an_at_in_a_path() {
        for (url, refused) in [
            ("https://u:p@idp.test/jwks", true),
            ("http://u:p#w@127.0.0.1:2/jwks", true),
            ("https://ops:8443/S3cret@idp.example/jwks", true),
            ("https://ops:8443?S3cret@idp.example/jwks", true),
            ("https://dGVzd/Bhc3M=@idp.example/jwks", true),
            ("https://[::1]:8443/jwks", false),
            ("https://idp.test/jwks#x", true),
            (
                "https://www.googleapis.com/v1/jwk/securetoken@system.gserviceaccount.com",
                false,
            ),
            // A port, then an `@`: written `%40` (a password could read so).
            ("http://127.0.0.1:8080/@scope/pkg", true),
            ("http://127.0.0.1:8080/%40scope/pkg", false),
            ("https://idp.test/jwks?login=a@b", false),
            ("u:p@redis.internal:6379", true),
        ] {
            assert_eq!(may_hold_credentials(url), refused, "{url}");
        }
    }

    #[test]
    fn pasted_secrets_are_no_file_names() {
        for (path, shown) in [
            ("config/hmac.secret", true),
            ("/etc/portcullis/tls/key.pem", true),
            (
                "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----",
                false,
            ),
            ("config/S3cretValue", false),
            ("pck_live_abcdefghijklmnopqrstuvwxyz", false),
            ("config/a b.pem", false),
        ] {
            let out = shown_path(Path::new(path));
            assert_eq!(out == path, shown, "{path}: {out}");
            if !shown {
                assert!(!out.contains("S3cret") && !out.contains("pck_") && !out.contains("MIG"));
            }
        }
    }

    #[test]
    fn quoted_values_are_cut_from_messages() {
        for (message, shown) in [
            (
                r#"keys[0]: invalid type: string "pck_SECRET", expected a mapping"#,
                "keys[0]: invalid type: string (a value, not shown), expected a mapping",
            ),
            (
                "keys[0]: unknown field `pck_SECRET`, expected one of `id`, `hash`",
                "keys[0]: unknown field (a value, not shown), expected one of `id`, `hash`",
            ),
            (
                r#"unknown variant `x"y`, expected `user`"#,
                "unknown variant (a value, not shown), expected `user`",
            ),
            ("did not find expected key", "did not find expected key"),
            (
                r#"enabled: invalid type: string "a\"SECRET", expected a boolean"#,
                "enabled: invalid type: string (a value, not shown), expected a boolean",
            ),
            (
                "unknown field `a`SECRET`, expected one of `id`",
                "unknown field (a value, not shown), expected one of `id`",
            ),
            (
                "invalid type: integer `123456789`, expected a string",
                "invalid type: integer (a value, not shown), expected a string",
            ),
            (
                "duplicate key `keys[0].pck_SECRET`",
                "duplicate key (a value, not shown)",
            ),
            (r#"a "dangling"#, "a (a value, not shown)"),
        ] {
            assert_eq!(without_values(message), shown, "{message}");
        }
    }

    #[test]
    fn a_pasted_secret_is_not_named_as_a_variable() {
        let read = |name: &str| {
            super::read(
                &crate::config::raw::RawSecret::Env(name.into()),
                Path::new("."),
                &mut Vec::new(),
            )
            .map(|_| ())
            .unwrap_err()
        };
        assert!(
            read("PORTCULLIS_TEST_UNSET_VAR").contains("`PORTCULLIS_TEST_UNSET_VAR` is not set")
        );
        for pasted in [
            "hunter2-LEAKME",
            "s3cr3t/+=",
            "9abc",
            "pck_weMfAT1fF3iE3kutpAa90zzvNl_74e91xK8jvl80mSg",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        ] {
            let e = read(pasted);
            assert!(!e.contains(pasted), "{e}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            ("redis://u:secret@h:1/0", "redis://***@h:1/0"),
            ("http://u:pa/ss@h:1:99", "http://***@h:1:99"),
            ("http://u:pa?ss@h", "http://***"),
            ("http://u:JW#KS@127.0.0.1:2/jwks", "http://***"),
            (
                "https://idp.example/jwks?login=ops@corp.example&apikey=K",
                "https://***",
            ),
            (
                "https://www.googleapis.com/v1/jwk/securetoken@system.gserviceaccount.com",
                "https://***@system.gserviceaccount.com",
            ),
            ("https://idp.test/a#frag", "https://idp.test/a#***"),
            ("rediss://h:1", "rediss://h:1"),
            (
                "default:RedisPass@redis.internal:6379",
                "***@redis.internal:6379",
            ),
            (
                "https://u:p@idp.test/jwks?x=1#f",
                "https://***@idp.test/jwks?***",
            ),
            (
                "http://127.0.0.1:1/introspect?apikey=K",
                "http://127.0.0.1:1/introspect?***",
            ),
            // An `@` in the path hides what comes before it too: a password may hold `/`.
            ("https://idp.test/a@b", "https://***@b"),
            ("https://idp.test?k=v", "https://idp.test?***"),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "Secret(…)");
    }

    #[test]
    fn equality_compares_contents() {
        assert_eq!(Secret::new(b"abc".to_vec()), Secret::new(b"abc".to_vec()));
        assert_ne!(Secret::new(b"abc".to_vec()), Secret::new(b"abd".to_vec()));
        assert_ne!(Secret::new(b"abc".to_vec()), Secret::new(b"ab".to_vec()));
    }

    #[test]
    fn ct_eq_compares_every_byte() {
        let a: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        assert!(ct_eq(&a, &a.clone()));
        for i in [0, 7, 8, 500, 999, 1000] {
            let mut b = a.clone();
            b[i] ^= 1;
            assert!(!ct_eq(&a, &b), "byte {i}");
        }
        assert!(!ct_eq(&a, &a[..1000]));
        assert!(ct_eq(b"", b""));
    }
}
