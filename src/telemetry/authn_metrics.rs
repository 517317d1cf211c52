//! Authenticator and delegate metrics, read from the current snapshot at scrape time: key set
//! fetches and their age, introspection calls, verified-token cache sizes, API key counts,
//! delegate checks.
//!
//! Rendered by hand in the OpenMetrics text format because the authenticators (and so the
//! label sets) change with every reload; nothing here runs on the request path. Labels are the
//! configured authenticator names and issuers: bounded by the config, never by traffic.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::authn::{Authn, Kind};
use crate::authz::delegate::Delegate;

/// Appends the authenticator metric families to `out` (before its `# EOF`).
pub fn encode(out: &mut String, authn: &Authn, now: u64) {
    let mut fetches = String::new();
    let mut age = String::new();
    let mut keys = String::new();
    let mut introspection = String::new();
    let mut cache = String::new();
    let mut api_keys = String::new();
    for a in authn.iter() {
        let name = escape(&a.name);
        match &a.kind {
            Kind::Jwt(j) => {
                for p in j.providers() {
                    let Some(r) = &p.remote else { continue };
                    let labels =
                        format!("authenticator=\"{name}\",issuer=\"{}\"", escape(&p.issuer));
                    for (result, v) in [
                        ("ok", r.fetches_ok.load(Ordering::Relaxed)),
                        ("error", r.fetches_failed.load(Ordering::Relaxed)),
                    ] {
                        let _ = writeln!(
                            fetches,
                            "portcullis_key_fetches_total{{{labels},result=\"{result}\"}} {v}"
                        );
                    }
                    let last = r.last_success.load(Ordering::Relaxed);
                    if last > 0 {
                        let _ = writeln!(
                            age,
                            "portcullis_key_set_age_seconds{{{labels}}} {}",
                            now.saturating_sub(last)
                        );
                    }
                    let _ = writeln!(
                        keys,
                        "portcullis_key_set_keys{{{labels}}} {}",
                        r.keys().len()
                    );
                }
            }
            Kind::Introspection(x) => {
                for (result, v) in [
                    ("ok", x.calls_ok.load(Ordering::Relaxed)),
                    ("error", x.calls_failed.load(Ordering::Relaxed)),
                    ("shed", x.calls_shed.load(Ordering::Relaxed)),
                ] {
                    let _ = writeln!(
                        introspection,
                        "portcullis_introspection_requests_total{{authenticator=\"{name}\",result=\"{result}\"}} {v}"
                    );
                }
            }
            Kind::ApiKey(k) => {
                let _ = writeln!(
                    api_keys,
                    "portcullis_api_keys{{authenticator=\"{name}\"}} {}",
                    k.len()
                );
            }
            Kind::TrustedHeaders(_) | Kind::Mtls(_) => {}
        }
        if matches!(a.kind, Kind::Jwt(_) | Kind::Introspection(_)) {
            let _ = writeln!(
                cache,
                "portcullis_token_cache_entries{{authenticator=\"{name}\"}} {}",
                a.cached()
            );
        }
    }
    append(
        out,
        &[
            (
                "portcullis_key_fetches",
                "counter",
                "Remote key set (JWKS, OIDC discovery) fetches by result",
                &fetches,
            ),
            (
                "portcullis_key_set_age_seconds",
                "gauge",
                "Seconds since the key set was last fetched successfully",
                &age,
            ),
            (
                "portcullis_key_set_keys",
                "gauge",
                "Keys in the current remote key set",
                &keys,
            ),
            (
                "portcullis_introspection_requests",
                "counter",
                "Token introspection calls by result",
                &introspection,
            ),
            (
                "portcullis_token_cache_entries",
                "gauge",
                "Entries in the verified-token cache",
                &cache,
            ),
            (
                "portcullis_api_keys",
                "gauge",
                "API key entries loaded, disabled and expired ones included",
                &api_keys,
            ),
        ],
    );
}

/// Appends the delegates' family to `out` (before its `# EOF`): each delegate's checks by
/// result (`allow`, `deny`, `cached`, and the failures its `failure_mode` decides on:
/// `timeout`, `error`, `invalid`).
pub fn encode_delegates(
    out: &mut String,
    delegates: &std::collections::BTreeMap<String, std::sync::Arc<Delegate>>,
) {
    let mut checks = String::new();
    for (name, d) in delegates {
        let name = escape(name);
        let c = &d.counts;
        for (result, v) in [
            ("allow", &c.allowed),
            ("deny", &c.denied),
            ("cached", &c.cached),
            ("timeout", &c.timeouts),
            ("error", &c.errors),
            ("invalid", &c.invalid),
        ] {
            let _ = writeln!(
                checks,
                "portcullis_delegate_checks_total{{delegate=\"{name}\",result=\"{result}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
    append(
        out,
        &[(
            "portcullis_delegate_checks",
            "counter",
            "Delegate checks by result",
            &checks,
        )],
    );
}

/// Appends each non-empty family (name, type, help, samples) before `out`'s `# EOF`.
fn append(out: &mut String, families: &[(&str, &str, &str, &String)]) {
    let tail = out.rfind("# EOF").map(|i| out.split_off(i));
    for (name, kind, help, body) in families {
        if body.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# TYPE {name} {kind}\n# HELP {name} {help}.");
        out.push_str(body);
    }
    if let Some(tail) = tail {
        out.push_str(&tail);
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn inserted_before_eof() {
        let mut out = "# TYPE x counter\nx_total 1\n# EOF\n".to_owned();
        encode(&mut out, &Authn::default(), 0);
        assert!(out.ends_with("# EOF\n"));
    }
}
