//! JWT header and claims parsing (`authn::jwt::verify::parse`, `check_claims`). The input is
//! either a compact token as text, or, when it holds NUL bytes, `header JSON \0 claims JSON \0
//! signature`, base64url-encoded here so that the fuzzer mutates the JSON itself.
//!
//! Contract: never panics; a parsed token is exactly `message.signature` with `message` the
//! first two parts, its `alg` is one we verify (never `none`), a `crit` header never parses;
//! an accepted `exp` is after now minus the leeway, `nbf` and `iat` not after now plus it,
//! and the audience is ours; the principal read from accepted claims has a non-empty id.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use portcullis::authn::jwt::verify::{ClaimRules, check_claims, parse};
use portcullis::authn::principal::Mapping;
use portcullis::config::raw::RawPrincipalMapping;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let token = match data.iter().filter(|&&b| b == 0).count() {
        0 => match std::str::from_utf8(data) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
        _ => {
            let mut parts = data.splitn(3, |&b| b == 0);
            let header = URL_SAFE_NO_PAD.encode(parts.next().unwrap_or_default());
            let claims = URL_SAFE_NO_PAD.encode(parts.next().unwrap_or_default());
            let signature = String::from_utf8_lossy(parts.next().unwrap_or_default());
            format!("{header}.{claims}.{signature}")
        }
    };
    let Ok(parsed) = parse(&token) else {
        return;
    };
    assert_eq!(
        format!("{}.{}", parsed.message, parsed.signature),
        token,
        "message and signature are the token"
    );
    assert_eq!(parsed.message.matches('.').count(), 1, "{token:?}");
    let header = parsed.message.split('.').next().unwrap_or_default();
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .expect("a parsed header is base64url JSON");
    assert!(header.get("crit").is_none(), "crit accepted: {header}");
    assert_eq!(
        header.get("alg").and_then(serde_json::Value::as_str),
        Some(format!("{:?}", parsed.alg).as_str()),
        "alg read as another algorithm"
    );

    let rules = ClaimRules {
        leeway: 30,
        require_exp: true,
        max_lifetime: Some(3600),
        audiences: Box::new(["api".into()]),
        required: Box::new([]),
    };
    let Ok(exp) = check_claims(&parsed.claims, &rules, NOW) else {
        return;
    };
    let exp = exp.expect("exp is required");
    assert!(
        exp.saturating_add(rules.leeway) > NOW,
        "expired token accepted: exp {exp}"
    );
    let number = |name: &str| parsed.claims.get(name).and_then(serde_json::Value::as_f64);
    for name in ["nbf", "iat"] {
        if let Some(t) = number(name) {
            assert!(
                t <= (NOW + rules.leeway) as f64 + 1.0,
                "{name} {t} in the future"
            );
        }
    }
    let aud = &parsed.claims["aud"];
    assert!(
        aud == "api" || aud.as_array().is_some_and(|a| a.iter().any(|v| v == "api")),
        "audience {aud} accepted"
    );
    let mapping = Mapping::compile(&RawPrincipalMapping::default());
    if let Ok(p) = mapping.principal(parsed.claims, &"users".into(), None, Some(exp)) {
        assert!(!p.id.is_empty());
        assert!(p.scopes.iter().all(|s| !s.is_empty()), "{:?}", p.scopes);
    }
});
