//! `portcullis policy list`: the rules in evaluation order, as a table.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{compile, load};

/// Prints every rule (name, file, hosts, paths, methods, authenticators, effect) in the order
/// they are evaluated; exit 1 (with the diagnostics) when the config does not load.
pub fn list(config: &Path) -> ExitCode {
    let loaded = match load::load(config) {
        Ok(l) => l,
        Err(diags) => return report(&diags),
    };
    if let Err(diags) = compile::compile(&loaded, None, crate::clock::Clock::system()) {
        return report(&diags);
    }
    let any = |v: &[String]| {
        if v.is_empty() {
            "*".to_owned()
        } else {
            v.join(",")
        }
    };
    let mut rows = vec![[
        "#".to_owned(),
        "NAME".to_owned(),
        "EFFECT".to_owned(),
        "METHODS".to_owned(),
        "HOSTS".to_owned(),
        "PATHS".to_owned(),
        "AUTHENTICATORS".to_owned(),
        "FILE".to_owned(),
    ]];
    let mut n = 0;
    for (file, policy) in &loaded.policies {
        for r in &policy.rules {
            n += 1;
            let mut authn = r.authenticators.join(",");
            if r.anonymous {
                if !authn.is_empty() {
                    authn.push(',');
                }
                authn.push_str("anonymous");
            }
            if authn.is_empty() {
                authn.push('-');
            }
            rows.push([
                n.to_string(),
                r.name.clone(),
                match r.effect {
                    crate::config::raw::Effect::Allow => "allow".into(),
                    crate::config::raw::Effect::Deny => "deny".into(),
                },
                any(&r.matches.methods),
                any(&r.matches.hosts),
                any(&r.matches.paths),
                authn,
                file.display.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "{n} rule(s); the first match decides; a request no rule matches is denied (403).\n"
    ));
    let _ = std::io::stdout().write_all(out.as_bytes());
    ExitCode::SUCCESS
}

fn report(diags: &[crate::config::Diagnostic]) -> ExitCode {
    let mut err = std::io::stderr().lock();
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
    ExitCode::from(1)
}
