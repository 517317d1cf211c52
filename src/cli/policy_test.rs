//! `portcullis test FILE…`: policy test files, for ops to run their policy changes in their own
//! CI. Each file names a gateway config, optional token specs (signed at run time with a
//! local key, so no token expires in a test file), and cases: a request and what is expected.
//! Every case runs through the same decision code as serving (`explain`'s); a mismatch prints
//! a readable diff and the exit status is 1.
//!
//! ```yaml
//! config: ../../../config/examples/seed.yaml   # relative to this file
//! tokens:
//!   alice: {key: ../../../config/examples/seed.secret, alg: HS256, kid: seed,
//!           claims: {iss: https://seed.example, aud: seed-api, sub: alice}}
//! cases:
//!   - name: alice reads her own rows
//!     request: {method: GET, url: "https://api.example/tables/orders?user_id=alice", token: alice}
//!     expect: {decision: allow, rule: rows-of-caller-by-query, headers: {x-user-id: alice}}
//!   - name: nginx hears the same          # as `explain --door` / `--listener`
//!     request: {url: "https://api.example/tables/orders?user_id=alice", token: alice,
//!               door: forward-auth}       # or `listener: nginx`, with its `status_map`
//!     expect: {decision: allow, status: 200, headers: {x-user-id: alice}}
//! ```
//!
//! Through a decision door, `status` and `headers` are the door's answer to its peer (a mapped
//! status; the identity headers the peer copies upstream), as `explain` shows it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;

use crate::authn::jwt::keys::parse_alg;
use crate::authn::jwt::mint::SigningKey;
use crate::request::facts::Door;

/// A policy test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// The gateway config, relative to the test file.
    config: PathBuf,
    /// Named tokens, signed when the tests run.
    #[serde(default)]
    tokens: BTreeMap<String, TokenSpec>,
    /// The cases.
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    /// Private key (PEM) or HMAC secret file, relative to the test file.
    key: PathBuf,
    alg: String,
    kid: String,
    /// Claims; `exp` defaults to an hour from now, `iat` to now.
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    request: CaseRequest,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A token from `tokens`, sent as `Authorization: Bearer`.
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    client_ip: Option<IpAddr>,
    /// The door whose code decides it (`proxy`, `envoy-grpc`, `envoy-http`, `forward-auth`),
    /// as `explain --door`: how that door reads the request and what it answers its peer.
    #[serde(default)]
    door: Option<DoorName>,
    /// The listener whose door (and settings: a `status_map`, description headers) decides
    /// it, as `explain --listener`.
    #[serde(default)]
    listener: Option<String>,
}

/// A door, as a case names it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DoorName {
    Proxy,
    EnvoyGrpc,
    EnvoyHttp,
    ForwardAuth,
}

impl From<DoorName> for Door {
    fn from(d: DoorName) -> Self {
        match d {
            DoorName::Proxy => Self::Proxy,
            DoorName::EnvoyGrpc => Self::EnvoyGrpc,
            DoorName::EnvoyHttp => Self::EnvoyHttp,
            DoorName::ForwardAuth => Self::ForwardAuth,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `allow` or `deny`.
    #[serde(default)]
    decision: Option<String>,
    /// The status the client gets (an allowed request: 200, as forwarded).
    #[serde(default)]
    status: Option<u16>,
    /// The deciding rule.
    #[serde(default)]
    rule: Option<String>,
    /// The reason code of a denial.
    #[serde(default)]
    reason: Option<String>,
    /// Headers the upstream receives (`null`: must not receive).
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    /// Where a denial redirects the browser (`Location`).
    #[serde(default)]
    location: Option<String>,
}

impl Expect {
    /// Whether it expects nothing at all.
    fn is_empty(&self) -> bool {
        let Self {
            decision,
            status,
            rule,
            reason,
            headers,
            location,
        } = self;
        decision.is_none()
            && status.is_none()
            && rule.is_none()
            && reason.is_none()
            && headers.is_empty()
            && location.is_none()
    }
}

fn get() -> String {
    "GET".to_owned()
}

/// Runs every case of every file; exit 0 when all pass, 1 otherwise, 2 on unusable files.
pub fn run(files: &[PathBuf]) -> ExitCode {
    let rt = match super::run::runtime(1) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let mut out = String::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in files {
        match rt.block_on(run_file(file, &mut out)) {
            Ok((p, f)) => {
                passed += p;
                failed += f;
            }
            Err(m) => {
                let _ = std::io::stdout().write_all(out.as_bytes());
                return fail(&m);
            }
        }
    }
    out.push_str(&format!("\n{passed} passed, {failed} failed\n"));
    let _ = std::io::stdout().write_all(out.as_bytes());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn run_file(file: &Path, out: &mut String) -> Result<(usize, usize), String> {
    let (src, parsed) =
        crate::config::load::read_yaml::<TestFile>(file, file.display().to_string())
            .map_err(|d| d.to_string())?;
    // Problems in the test file itself name its line and field.
    let at = |path: &str, m: String| {
        crate::config::Diagnostic::at(&src.display, &src.index, path, m).to_string()
    };
    // Why: a file of no cases, or a case that expects nothing, passed (exit 0) while testing
    // nothing, and a policy change its author meant it to guard went through CI unchecked.
    // Regression: tests (it) policy::a_test_file_that_tests_nothing_is_refused
    if parsed.cases.is_empty() {
        return Err(at(
            "cases",
            "no cases: a test file must test something".into(),
        ));
    }
    if let Some(i) = parsed.cases.iter().position(|c| c.expect.is_empty()) {
        return Err(at(
            &format!("cases[{i}].expect"),
            "expects nothing: give at least one of decision, status, rule, reason, headers, location".into(),
        ));
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let (snapshot, _) = crate::config::build(&base.join(&parsed.config), None).map_err(|ds| {
        let mut text = at("config", "the config does not load:".into());
        for d in ds {
            text.push_str(&format!("\n{d}"));
        }
        text
    })?;
    let mut tokens = BTreeMap::new();
    for (name, spec) in &parsed.tokens {
        tokens.insert(
            name.clone(),
            mint(spec, base).map_err(|m| at(&format!("tokens.{name}"), m))?,
        );
    }
    out.push_str(&format!("{}\n", file.display()));
    let (mut passed, mut failed) = (0, 0);
    for (i, case) in parsed.cases.iter().enumerate() {
        let mut headers: Vec<String> = case
            .request
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if let Some(t) = &case.request.token {
            let token = tokens.get(t).ok_or_else(|| {
                at(
                    &format!("cases[{i}].request.token"),
                    format!("unknown token `{t}`"),
                )
            })?;
            headers.push(format!("Authorization: Bearer {token}"));
        }
        let (report, _) = super::explain::evaluate(
            &snapshot,
            (
                &case.request.method,
                &case.request.url,
                &headers,
                case.request.client_ip,
            ),
            case.request.door.map(Door::from),
            case.request.listener.as_deref(),
        )
        .await
        .map_err(|m| at(&format!("cases[{i}].request"), m))?;
        let diffs = compare(&case.expect, &report);
        if diffs.is_empty() {
            passed += 1;
            out.push_str(&format!("  ok    {}\n", case.name));
        } else {
            failed += 1;
            // As `explain` shows it: no query credential, no user information.
            out.push_str(&format!(
                "  FAIL  {}  ({} {})\n",
                case.name,
                case.request.method,
                super::explain::redact_query(&case.request.url, &snapshot)
            ));
            for d in diffs {
                out.push_str(&format!("          {d}\n"));
            }
            if let Some(trace) = report["trace"].as_array() {
                for step in trace {
                    out.push_str(&format!(
                        "          trace: {}\n",
                        step.as_str().unwrap_or("")
                    ));
                }
            }
        }
    }
    Ok((passed, failed))
}

/// The differences between what was expected and what happened, one line each.
fn compare(expect: &Expect, report: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    let got_str = |k: &str| report[k].as_str().map(str::to_owned);
    let status = match &report["status"] {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) if s == "forwarded" => Some(200),
        _ => None,
    };
    let mut check = |what: &str, want: Option<String>, got: Option<String>| {
        if let Some(w) = want
            && Some(&w) != got.as_ref()
        {
            diffs.push(format!(
                "{what}: expected {w}, got {}",
                got.unwrap_or_else(|| "nothing".into())
            ));
        }
    };
    check("decision", expect.decision.clone(), got_str("decision"));
    check(
        "status",
        expect.status.map(|s| s.to_string()),
        status.map(|s| s.to_string()),
    );
    check(
        "rule",
        expect.rule.clone(),
        report["rule"]["name"].as_str().map(str::to_owned),
    );
    check("reason", expect.reason.clone(), got_str("reason"));
    // What the upstream gets through the proxy; through a decision door, its answer to the
    // peer (the identity headers the peer copies upstream, a refusal's `Location`). Never the
    // proxy's own answers (a preflight's): a case's `headers` are what reaches the upstream.
    let through_door = report["door"].as_str().is_some_and(|d| d != "proxy");
    let headers_of = |v: &Value| -> BTreeMap<String, String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| Some((h[0].as_str()?.to_owned(), h[1].as_str()?.to_owned())))
            .collect()
    };
    let sent = match through_door {
        true => headers_of(&report["answer"]["headers"]),
        false => headers_of(&report["upstream"]["headers"]),
    };
    let location = match through_door {
        true => sent.get("location").cloned(),
        false => got_str("location"),
    };
    check("location", expect.location.clone(), location);
    for (name, want) in &expect.headers {
        let got = sent.get(&name.to_ascii_lowercase());
        match (want, got) {
            (Some(w), Some(g)) if w == g => {}
            (None, None) => {}
            (Some(w), g) => diffs.push(format!(
                "header {name}: expected {w:?}, got {}",
                g.map_or_else(|| "none".to_owned(), |g| format!("{g:?}"))
            )),
            (None, Some(g)) => diffs.push(format!("header {name}: expected none, got {g:?}")),
        }
    }
    diffs
}

fn mint(spec: &TokenSpec, base: &Path) -> Result<String, String> {
    let alg = parse_alg(&spec.alg).ok_or_else(|| format!("unknown algorithm `{}`", spec.alg))?;
    let key_path = base.join(&spec.key);
    let bytes = crate::config::files::read(&key_path)
        .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
    let kid = spec.kid.as_str();
    let key = if spec.alg.starts_with("HS") {
        let secret = crate::secret::file_secret(bytes);
        SigningKey::hmac(&secret, alg, kid)
    } else {
        SigningKey::from_private_key(&bytes, alg, kid)
    }
    .map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = spec.claims.clone();
    claims.entry("iat").or_insert(Value::from(now));
    claims.entry("exp").or_insert(Value::from(now + 3600));
    key.sign(&Value::Object(claims)).map_err(|e| e.to_string())
}

fn fail(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "portcullis test: {msg}");
    ExitCode::from(2)
}
