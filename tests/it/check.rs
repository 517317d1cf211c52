//! Golden tests for `portcullis check`: each `tests/fixtures/invalid/NAME/` holds a broken
//! `portcullis.yaml` (and its `policies/`) and `expected.txt`, the exact stdout of
//! `portcullis check -c tests/fixtures/invalid/NAME/portcullis.yaml` run from the crate root.
//! Paths in diagnostics are printed as given, so the goldens are stable.
//!
//! To add a case, create the directory, run the command above from the crate root, read the
//! output (right file, line:column at the offending field, field path, a readable message, no
//! secrets) and save it as `expected.txt`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const INVALID: &str = "tests/fixtures/invalid";

/// Fewer cases than this means fixtures went missing, not that everything passed.
const MIN_INVALID_CASES: usize = 12;

/// Runs the real binary from the crate root, so relative paths match the goldens.
fn portcullis(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .output()
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Case directories under `tests/fixtures/invalid`, by name.
fn invalid_cases() -> std::io::Result<Vec<PathBuf>> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(root().join(INVALID))? {
        let path = entry?.path();
        if path.is_dir() {
            cases.push(path);
        }
    }
    cases.sort();
    Ok(cases)
}

/// A line diff (longest common subsequence): ` ` both, `-` expected only, `+` actual only.
fn diff(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    // lcs[i][j]: length of the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    if expected.ends_with('\n') != actual.ends_with('\n') {
        out.push_str("(the two differ in the final newline)\n");
    }
    out
}

/// Checks one case; the description of what is wrong, if anything.
fn check_case(case: &Path) -> Option<String> {
    let name = case.file_name()?.to_string_lossy().into_owned();
    let config = format!("{INVALID}/{name}/portcullis.yaml");
    let expected_path = case.join("expected.txt");
    let expected = match std::fs::read_to_string(&expected_path) {
        Ok(text) => text,
        Err(e) => return Some(format!("cannot read {}: {e}", expected_path.display())),
    };
    let out = match portcullis(&["check", "-c", &config]) {
        Ok(out) => out,
        Err(e) => return Some(format!("=== {name}: cannot run portcullis: {e}\n")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut problems = String::new();
    if out.status.code() != Some(1) {
        let _ = writeln!(problems, "exit status {} (expected 1)", out.status);
    }
    if stdout != expected {
        let _ = write!(
            problems,
            "stdout differs from expected.txt (- expected, + actual):\n{}",
            diff(&expected, &stdout)
        );
    }
    if problems.is_empty() {
        return None;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        let _ = write!(problems, "stderr:\n{stderr}");
    }
    Some(format!(
        "=== {name}: portcullis check -c {config}\n{problems}"
    ))
}

#[test]
fn invalid_configs_print_expected_diagnostics() {
    let cases = invalid_cases().unwrap();
    assert!(
        cases.len() >= MIN_INVALID_CASES,
        "only {} cases under {INVALID}, expected at least {MIN_INVALID_CASES}",
        cases.len()
    );
    // Every case runs before failing, so one run shows every regression.
    let failures: Vec<String> = cases.iter().filter_map(|c| check_case(c)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_configs_are_accepted() {
    for config in [
        "tests/fixtures/config/portcullis.yaml",
        "config/portcullis.yaml",
    ] {
        let out = portcullis(&["check", "-c", config]).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "check {config}: exit status {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // Warnings (the shipped dev key) come first; the verdict is the last line.
        assert!(
            stdout
                .lines()
                .last()
                .unwrap_or("")
                .starts_with("ok: version "),
            "check {config}: stdout does not end with `ok: version`:\n{stdout}"
        );
        assert!(!stdout.contains(": error:"), "{stdout}");
    }
}

#[test]
fn schemas_are_printed() {
    for (args, field) in [
        (&["schema"][..], "\"listeners\""),
        (&["schema", "policy"][..], "\"rules\""),
    ] {
        let out = portcullis(args).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: exit status {}", out.status);
        assert!(
            stdout.trim_start().starts_with('{') && stdout.trim_end().ends_with('}'),
            "{args:?}: not a JSON object:\n{stdout}"
        );
        assert!(stdout.contains(field), "{args:?}: no {field} in:\n{stdout}");
    }
}

/// The shipped config checks, and warns that its `dev` authenticator trusts the published
/// development key; the README's tour token (minted with that key) is allowed by `explain`.
/// The example config's HMAC secret is published with Portcullis: `check` says so, as for the
/// development key pair.
#[test]
fn published_example_secret_warns() {
    let out = portcullis(&["check", "-c", "config/examples/seed.yaml"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(".hmac.secret: this is the example secret published with Portcullis"),
        "{text}"
    );
    assert!(
        !text.contains(include_str!("../../config/examples/seed.secret").trim()),
        "the secret itself is never printed"
    );
    // The development key pair as a JWKS file, too.
    let cfg = crate::support::ConfigDir::new(
        "authenticators:\n  users:\n    jwt:\n      providers:\n        - issuer: https://dev.example\n          audiences: [my-api]\n          keys: [{jwks_file: {path: dev.jwks.json}}]\n",
    );
    cfg.write("dev.jwks.json", include_str!("../../config/dev/dev-1.jwks.json"))
        .write(
            "policies/p.yaml",
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, authenticators: [users], upstream: echo}\n",
        );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: authenticators.users.jwt.providers[0].keys[0]: this is the development key published"),
        "{text}"
    );
}

#[test]
fn shipped_config_checks_and_warns_about_the_development_key() {
    let out = portcullis(&["check", "-c", "config/portcullis.yaml"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: authenticators.dev.jwt.providers[0].keys[0]: this is the development key published with Portcullis"),
        "{text}"
    );
    let mint = portcullis(&[
        "token",
        "mint",
        "--key",
        "config/dev/dev-1.key",
        "--alg",
        "ES256",
        "--kid",
        "dev-1",
        "--iss",
        "https://dev.example",
        "--aud",
        "my-api",
        "--sub",
        "alice",
        "--scope",
        "orders:read",
    ])
    .unwrap();
    assert!(
        mint.status.success(),
        "{}",
        String::from_utf8_lossy(&mint.stderr)
    );
    let token = String::from_utf8(mint.stdout).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let explained = portcullis(&[
        "explain",
        "-c",
        "config/portcullis.yaml",
        "--url",
        "https://api.example.com/v2/orders/7",
        "-H",
        &auth,
    ])
    .unwrap();
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(explained.status.success(), "{text}");
    assert!(text.contains("decision  allow"), "{text}");
    assert!(text.contains("principal alice"), "{text}");
}

/// Two listeners on one address (or one port, one of them the wildcard), the admin ones
/// included, are refused by `check`: `run` could not bind them.
#[test]
fn listeners_on_one_address_are_refused() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.add_listeners(
        "{name: a, address: \"127.0.0.1:18090\"}, {name: b, address: \"0.0.0.0:18090\"}, {name: c, address: \"127.0.0.1:18091\"}",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("listeners[2].address: `0.0.0.0:18090` is bound by listeners[1].address too"),
        "{text}"
    );
    assert!(!text.contains("18091"), "{text}");
}

/// Settings that open the gateway wider than an operator may mean pass with a warning: a
/// trusted proxy network holding every address, an admin listener off loopback. A policy
/// file whose extension is in capitals is read.
#[test]
fn trusting_every_address_and_an_exposed_admin_warn() {
    let cfg = crate::support::ConfigDir::new(
        "server: {trusted_proxies: [10.0.0.0/8, 0.0.0.0/0]}\nadmin: {address: \"0.0.0.0:19999\"}\n",
    );
    cfg.write(
        "policies/30-UPPER.YAML",
        "rules:\n  - {name: upper, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: server.trusted_proxies[1]: `0.0.0.0/0` trusts every address"),
        "{text}"
    );
    assert!(!text.contains("trusted_proxies[0]"), "{text}");
    assert!(
        text.contains("warning: admin.address: `0.0.0.0:19999` is not a loopback address"),
        "{text}"
    );
    assert!(text.contains("1 rule(s)"), "{text}");
}

/// A health check's timeout past its interval is told: a round waits for its slowest check.
#[test]
fn a_health_check_timeout_past_its_interval_warns() {
    let cfg = crate::support::ConfigDir::new("");
    let config = |timeout: &str| {
        format!(
            "listeners: [{{name: http, address: \"127.0.0.1:0\"}}]\nupstreams:\n  pool:\n    url: http://app.test\n    endpoints: [\"127.0.0.1:9\"]\n    health_check: {{path: /health, interval: 2s, timeout: {timeout}}}\npolicies: {{dir: policies}}\n"
        )
    };
    cfg.write(
        "policies/10-all.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: pool}\n",
    );
    cfg.write("portcullis.yaml", config("5s"));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: upstreams.pool.health_check.timeout: longer than `interval` (2s)"),
        "{text}"
    );
    cfg.write("portcullis.yaml", config("2s"));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("health_check"), "{text}");
}

/// An endpoint listed twice (in any spelling of its address) is one endpoint, and `check` says
/// to list it once.
#[test]
fn an_endpoint_listed_twice_warns() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/10-all.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: pool}\n",
    );
    cfg.write(
        "portcullis.yaml",
        "listeners: [{name: http, address: \"127.0.0.1:0\"}]\nupstreams:\n  pool:\n    url: http://app.test\n    endpoints: [\"127.0.0.1:9\", \"127.0.0.2:9\", \"[::ffff:127.0.0.1]:9\"]\npolicies: {dir: policies}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: upstreams.pool.endpoints[2]: the same endpoint as `endpoints[0]`"),
        "{text}"
    );
}

/// A delegate whose `timeout` a decision door's deadline cuts warns: the same request would
/// be decided by the delegate at the proxy and by its failure mode at that door.
#[test]
fn a_delegate_slower_than_a_doors_timeout_warns() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/10-all.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, delegate: opa, upstream: app}\n",
    );
    let config = |delegate: &str| {
        format!(
            "listeners:\n  - {{name: http, address: \"127.0.0.1:0\"}}\n  - {{name: nginx, address: \"127.0.0.1:0\", door: {{forward_auth: {{timeout: 2s}}}}}}\nupstreams: {{app: {{url: \"http://127.0.0.1:9\"}}}}\ndelegates:\n  opa: {{grpc: \"http://127.0.0.1:9\", timeout: {delegate}}}\npolicies: {{dir: policies}}\n"
        )
    };
    cfg.write("portcullis.yaml", config("5s"));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "warning: delegates.opa.timeout: longer than the `nginx` listener's door allows"
        ),
        "{text}"
    );
    cfg.write("portcullis.yaml", config("1s"));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("delegates.opa.timeout"), "{text}");
}

/// An ejection whose first time is past its longest warns, at the field written.
#[test]
fn ejection_times_the_wrong_way_round_warn() {
    let cfg = crate::support::ConfigDir::new("");
    let config = |ejection: &str| {
        format!(
            "listeners: [{{name: http, address: \"127.0.0.1:0\"}}]\nupstreams:\n  pool:\n    url: http://app.test\n    endpoints: [\"127.0.0.1:9\"]\n    ejection: {ejection}\npolicies: {{dir: policies}}\n"
        )
    };
    cfg.write(
        "policies/10-all.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: pool}\n",
    );
    for (ejection, warned) in [
        (
            "{base_time: 10s, max_time: 1s}",
            Some("warning: upstreams.pool.ejection.base_time: longer than `max_time` (1s)"),
        ),
        (
            "{max_time: 5s}",
            Some(
                "warning: upstreams.pool.ejection.max_time: shorter than `base_time` (10s, its default)",
            ),
        ),
        ("{base_time: 1s, max_time: 5s}", None),
        ("{max_time: 10s}", None),
    ] {
        cfg.write("portcullis.yaml", config(ejection));
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{text}");
        match warned {
            Some(w) => assert!(text.contains(w), "{ejection}: {text}"),
            None => assert!(!text.contains("ejection"), "{ejection}: {text}"),
        }
    }
}

/// A secret or key pasted where its file's name belongs is not printed in "cannot read".
#[test]
fn a_secret_pasted_as_a_file_name_is_not_shown() {
    let cfg = crate::support::ConfigDir::new(
        "authenticators:\n  cron:\n    api_key:\n      keys:\n        - {id: c, secret: {file: S3cretPastedValue}, owner: o}\n",
    );
    cfg.add_listeners(
        "{name: tls, address: \"127.0.0.1:0\", tls: {certificates: [{cert: c.pem, key: \"-----BEGIN PRIVATE KEY-----\\nMIGHPastedKeyBody\\n-----END PRIVATE KEY-----\"}]}}",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot read the file named there"), "{text}");
    assert!(!text.contains("S3cretPasted"), "{text}");
    assert!(!text.contains("MIGHPasted"), "{text}");
}

/// A byte-order mark (Windows editors write one) at the start of the config or a policy file
/// is read as nothing; a mistake after it is still placed at its line.
#[test]
fn a_byte_order_mark_is_read_as_nothing() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "\u{feff}rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let path = cfg.dir.path().join("portcullis.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("\u{feff}{text}")).unwrap();
    let (code, out) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{out}");
    std::fs::write(&path, format!("\u{feff}{text}loging: {{}}\n")).unwrap();
    let (code, out) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{out}");
    let line = text.lines().count() + 1;
    assert!(
        out.contains(&format!(
            "portcullis.yaml:{line}:1: error: unknown field `loging`"
        )),
        "{out}"
    );
}

/// A syntax error after a repeated key is reported where the syntax breaks, not as the
/// repeated key at 1:1 (the YAML parser meets the key first).
#[test]
fn a_syntax_error_is_placed_even_after_a_repeated_key() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
    );
    let path = cfg.dir.path().join("portcullis.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}server: {{}}\nserver: [\n")).unwrap();
    let (code, out) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(!out.contains(":1:1:"), "{out}");
    assert!(!out.contains("duplicate"), "{out}");
    let broken = text.lines().count() + 3;
    assert!(
        out.contains(&format!("portcullis.yaml:{broken}:")),
        "the broken line ({broken}) is named: {out}"
    );
}

/// A file the config names that cannot be read is reported at the config's field naming it,
/// never at a line of the missing file (`nope.yaml:0:0`).
#[test]
fn unreadable_files_name_the_field_that_names_them() {
    let cfg = crate::support::ConfigDir::new(
        "authenticators:\n  keys:\n    api_key:\n      from: [bearer]\n      keys_file: nope.yaml\n",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, authenticators: [keys], upstream: echo}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("portcullis.yaml:8:7: error: authenticators.keys.api_key.keys_file: `")
            && text.contains("nope.yaml`: cannot read file"),
        "{text}"
    );
    assert!(!text.contains(":0:0"), "{text}");
}

/// An `admin.allowed_hosts` entry the listener could never match is refused, naming it.
#[test]
fn admin_allowed_hosts_are_bare_names() {
    let cfg = crate::support::ConfigDir::new(
        "admin:\n  allowed_hosts: [portcullis-admin.svc, \"portcullis-admin.svc:9901\", \"*.svc\", \"http://x\"]\n",
    );
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: deny}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    for i in 1..=3 {
        assert!(
            text.contains(&format!("error: admin.allowed_hosts[{i}]: `")),
            "{i}: {text}"
        );
    }
    assert!(!text.contains("allowed_hosts[0]"), "{text}");
    assert!(text.contains("3 error(s)"), "{text}");
}

/// Sizes `run` cannot honour are refused by `check`, naming the field: more permits than a
/// semaphore holds panicked at start, 100,000 worker threads aborted.
#[test]
fn server_sizes_are_bounded() {
    for (line, field) in [
        (
            "  max_in_flight: 18446744073709551615\n",
            "server.max_in_flight: from 1 to 1000000",
        ),
        (
            "  max_connections: 18446744073709551615\n",
            "server.max_connections: from 1 to 1000000",
        ),
        (
            "  worker_threads: 100000\n",
            "server.worker_threads: at most 1024",
        ),
    ] {
        let cfg = crate::support::ConfigDir::new(&format!("server:\n{line}"));
        cfg.write(
            "policies/p.yaml",
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: echo}\n",
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(1), "{line}: {text}");
        assert!(text.contains(field), "{field} in {text}");
    }
}

/// An empty policy directory is warned about whatever other warnings there are (it was
/// dropped as soon as any other diagnostic existed, the development key's say).
#[test]
fn no_rules_is_warned_beside_other_warnings() {
    let cfg = crate::support::ConfigDir::new("");
    cfg.write(
        "portcullis.yaml",
        "listeners: [{name: http, address: \"127.0.0.1:0\"}]\nupstreams: {echo: {url: \"http://127.0.0.1:9\", dns_refresh: 30s}}\npolicies: {dir: policies}\n",
    );
    let (code, text) = cfg.run("check", &[]);
    assert!(text.contains("warning"), "another warning: {text}");
    assert!(
        text.contains("every request will be denied"),
        "{code:?}: {text}"
    );
}

/// A rule relaying WebSockets on a cookie credential without `cors` is warned about (any
/// site's page could open them in the user's name); with `cors`, or a bearer token, not.
#[test]
fn cors_that_refuses_the_rules_credential_header_warns() {
    let auth = "authenticators:\n  web:\n    jwt:\n      from: [{cookie: session}]\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]\n  api:\n    jwt:\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]\n  keyed:\n    api_key:\n      from: [{header: x-api-key}]\n      keys: []\n";
    let origins = "allowed_origins: [\"https://app.test\"]";
    for (rule, warned) in [
        (
            format!("authenticators: [api], cors: {{{origins}}}"),
            Some("`authorization`"),
        ),
        (
            format!(
                "authenticators: [api, keyed], cors: {{{origins}, allowed_headers: [content-type]}}"
            ),
            Some("`authorization`, `x-api-key`"),
        ),
        (
            format!("authenticators: [api], cors: {{{origins}, allowed_headers: [Authorization]}}"),
            None,
        ),
        // Servers may send the API key; a page sends the token it may send.
        (
            format!(
                "authenticators: [api, keyed], cors: {{{origins}, allowed_headers: [Authorization]}}"
            ),
            None,
        ),
        (
            format!("authenticators: [web, api], cors: {{{origins}}}"),
            None,
        ),
        ("authenticators: [api]".to_owned(), None),
    ] {
        let cfg = crate::support::ConfigDir::new(auth);
        cfg.write("hs.secret", "a-secret-of-at-least-32-bytes-long!!");
        cfg.write(
            "policies/p.yaml",
            format!(
                "rules:\n  - {{name: api, match: {{paths: [\"/api/**\"]}}, effect: allow, upstream: echo, {rule}}}\n"
            ),
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{rule}: {text}");
        match warned {
            Some(names) => assert!(
                text.contains(&format!(
                    "rules[0].cors.allowed_headers: leaves out {names}, which the rule's authenticators read"
                )),
                "{rule}: {text}"
            ),
            None => assert!(!text.contains("allowed_headers"), "{rule}: {text}"),
        }
    }
}

#[test]
fn hashing_on_a_stripped_credential_warns() {
    let cfg = crate::support::ConfigDir::new("");
    let config = |strip: bool| {
        format!(
            "listeners: [{{name: http, address: \"127.0.0.1:0\"}}]\nupstreams:\n  pool:\n    url: http://app.test\n    endpoints: [\"127.0.0.1:9\", \"127.0.0.1:10\"]\n    hash: {{header: authorization}}\npolicies: {{dir: policies}}\nauthenticators:\n  api:\n    jwt:\n      strip: {strip}\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{{hmac: {{secret: {{file: hs.secret}}, kid: k, algorithms: [HS256]}}}}]\n"
        )
    };
    cfg.write("hs.secret", "a-secret-of-at-least-32-bytes-long!!");
    cfg.write(
        "policies/10-all.yaml",
        "rules:\n  - {name: api, match: {paths: [\"/**\"]}, effect: allow, authenticators: [api], upstream: pool}\n",
    );
    cfg.write("portcullis.yaml", config(true));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("rules[0].upstream: upstream `pool` hashes on `authorization`, which authenticator `api` strips before forwarding"),
        "{text}"
    );
    cfg.write("portcullis.yaml", config(false));
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("hashes on"), "{text}");
}

#[test]
fn cookie_websockets_without_cors_warn() {
    let auth = "authenticators:\n  web:\n    jwt:\n      from: [{cookie: session}]\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]\n  api:\n    jwt:\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys: [{hmac: {secret: {file: hs.secret}, kid: k, algorithms: [HS256]}}]\n";
    for (rule, warned) in [
        (
            "authenticators: [web], upgrade: {protocols: [websocket]}",
            true,
        ),
        (
            "authenticators: [api, web], upgrade: {protocols: [WebSocket]}",
            true,
        ),
        (
            "authenticators: [web], upgrade: {protocols: [websocket]}, cors: {allowed_origins: [\"https://app.test\"]}",
            false,
        ),
        (
            "authenticators: [api], upgrade: {protocols: [websocket]}",
            false,
        ),
        ("authenticators: [web]", false),
    ] {
        let cfg = crate::support::ConfigDir::new(auth);
        cfg.write("hs.secret", "a-secret-of-at-least-32-bytes-long!!");
        cfg.write(
            "policies/p.yaml",
            format!(
                "rules:\n  - {{name: chat, match: {{paths: [\"/ws/**\"]}}, effect: allow, upstream: echo, {rule}}}\n"
            ),
        );
        let (code, text) = cfg.run("check", &[]);
        assert_eq!(code, Some(0), "{rule}: {text}");
        assert_eq!(
            text.contains(
                "rules[0].upgrade: WebSockets authenticated by cookie `session` from any origin"
            ),
            warned,
            "{rule}: {text}"
        );
    }
}

/// `reauthorize_every` with decision doors only is warned about: the peer relays the stream
/// and the door decides once. With a proxy listener, no such warning.
#[test]
fn stream_bounds_are_the_proxy_doors() {
    let policy = "rules:\n  - {name: chat, match: {paths: [\"/ws/**\"]}, effect: allow, anonymous: true, upstream: echo, reauthorize_every: 30s, upgrade: {protocols: [websocket]}}\n";
    let doors_only = crate::support::ConfigDir::new("");
    doors_only.write(
        "portcullis.yaml",
        "listeners: [{name: fa, address: \"127.0.0.1:0\", door: {forward_auth: {}}}]\nupstreams: {echo: {url: \"http://127.0.0.1:9\"}}\npolicies: {dir: policies}\n",
    );
    doors_only.write("policies/p.yaml", policy);
    let (code, text) = doors_only.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("rules[0].reauthorize_every: re-checks streams the proxy door relays"),
        "{text}"
    );
    let proxy = crate::support::ConfigDir::new("");
    proxy.write("policies/p.yaml", policy);
    let (code, text) = proxy.run("check", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("reauthorize_every"), "{text}");
}

/// With `logging.format: json`, `run` on a config with errors says so in JSON lines, each
/// problem with its file, line and field, as every other line of its log is.
#[test]
fn a_start_error_is_logged_as_json() {
    let cfg = crate::support::ConfigDir::new("logging: {format: json}\n");
    cfg.write(
        "policies/p.yaml",
        "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: nowhere}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--no-watch", "-c"])
        .arg(cfg.dir.path().join("portcullis.yaml"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let problem = lines
        .iter()
        .find(|l| l["message"] == "Config error")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        problem["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("p.yaml")),
        "{problem}"
    );
    assert_eq!(problem["line"], 2, "{problem}");
    assert!(
        problem["problem"]
            .as_str()
            .is_some_and(|m| m.contains("nowhere")),
        "{problem}"
    );
}

/// A Redis TLS file that is a pipe is refused at its field; it never waits for a writer.
#[test]
fn a_redis_ca_file_that_is_a_pipe_is_refused() {
    let cfg = crate::support::ConfigDir::new(
        "redis:\n  url: rediss://127.0.0.1:6380\n  ca_file: ca.pipe\n",
    );
    let made = std::process::Command::new("mkfifo")
        .arg(cfg.dir.path().join("ca.pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let (code, text) = cfg.run("check", &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("redis.ca_file") && text.contains("not a regular file"),
        "{text}"
    );
}

/// `portcullis check` run from the crate root on `config`: the version it prints.
fn version_of(config: &Path) -> String {
    let out = portcullis(&["check", "-c", config.to_str().unwrap()]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text.split("version ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no version in {text}"))
        .to_owned()
}

/// Without secret files, every process gives the same version for the same files: the config
/// file and the policy files, linked as a Kubernetes ConfigMap links them, are counted as they
/// are; an HMAC secret file makes the version the process's own, as the README says.
#[test]
fn the_version_is_the_same_in_every_process_without_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..data");
    std::fs::create_dir_all(data.join("policies")).unwrap();
    std::fs::write(
        data.join("c.yaml"),
        "\u{feff}listeners: [{name: http, address: \"127.0.0.1:0\"}]\nupstreams: {app: {url: \"http://127.0.0.1:9\"}}\npolicies: {dir: policies}\n",
    )
    .unwrap();
    std::fs::write(
        data.join("policies/10.yaml"),
        "rules:\n  - name: a\n    match: {paths: [\"/**\"]}\n    effect: allow\n    anonymous: true\n    upstream: app\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::os::unix::fs::symlink(data.join("c.yaml"), dir.path().join("c.yaml")).unwrap();
    std::os::unix::fs::symlink(
        data.join("policies/10.yaml"),
        dir.path().join("policies/10.yaml"),
    )
    .unwrap();
    let config = dir.path().join("c.yaml");
    // A file changed within a second of a compile (its timestamps say so) may have been read
    // half-written: that version is made unique, so that the reload its write triggers
    // applies (`config::compile::version`). Past that second, files are what they are.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let first = version_of(&config);
    assert_eq!(version_of(&config), first);
    // A secret file: each process's own version (never a digest of the secret alone).
    std::fs::write(
        dir.path().join("hmac.key"),
        "a-secret-of-thirty-two-bytes-or-more",
    )
    .unwrap();
    let text = std::fs::read_to_string(data.join("c.yaml")).unwrap();
    std::fs::write(
        data.join("c.yaml"),
        format!("{text}authenticators:\n  h:\n    jwt:\n      providers:\n        - issuer: https://iss.test\n          audiences: [api]\n          keys:\n            - hmac: {{secret: {{file: hmac.key}}, algorithms: [HS256]}}\n"),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_ne!(version_of(&config), version_of(&config));
}
