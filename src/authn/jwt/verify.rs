//! Parsing a compact JWS and checking its claims. The signature check itself is
//! jsonwebtoken's (aws-lc-rs); everything around it is here, so every rule is explicit:
//!
//! - the header's `alg` must name one of our algorithms exactly (`none`, `None`, `HS256 ` … are
//!   unknown); `jku`, `x5u`, `jwk` and `x5c` are never read; any `crit` is refused (we
//!   understand no extension);
//! - `exp`, `nbf`, `iat` must be JSON numbers; `exp` is required unless configured otherwise;
//!   `iss` must be a string equal to the provider's; `aud` (string or non-empty array of
//!   strings) must name one of the provider's audiences.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::keys;
use crate::config::raw::ClaimType;

/// Why a token is refused. Low-cardinality codes for logs and metrics; the client only ever
/// sees `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than the configured maximum.
    #[error("token too large")]
    TooLarge,
    /// Not three base64url parts of JSON objects.
    #[error("malformed token")]
    Malformed,
    /// `alg` missing, `none`, or not one we verify.
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// The issuer does not allow this algorithm.
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// A `crit` header.
    #[error("unsupported critical header")]
    CriticalHeader,
    /// `iss` is not a configured provider.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// No key with that `kid` (or none fits the algorithm).
    #[error("unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` passed.
    #[error("token expired")]
    Expired,
    /// `nbf` in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `exp - iat` beyond the configured maximum.
    #[error("token lifetime too long")]
    LifetimeTooLong,
    /// `aud` missing or names none of ours.
    #[error("wrong audience")]
    BadAudience,
    /// A required claim is missing (including `exp`).
    #[error("missing claim")]
    MissingClaim,
    /// A claim has the wrong JSON type (`exp` as a string, `iss` as an array…).
    #[error("claim of the wrong type")]
    ClaimType,
    /// No principal id.
    #[error("no principal id")]
    NoPrincipal,
    /// No API key has this hash.
    #[error("unknown api key")]
    UnknownApiKey,
    /// The credential (API key) is disabled.
    #[error("credential disabled")]
    Disabled,
    /// Introspection says the token is not active.
    #[error("token not active")]
    Inactive,
    /// Introspection describes another kind of token (a refresh token).
    #[error("not an access token")]
    WrongTokenType,
    /// Trusted identity headers with a value that is not visible text, or repeated.
    #[error("malformed identity header")]
    BadIdentityHeader,
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'t> {
    /// `alg`.
    pub alg: Algorithm,
    /// `kid`.
    pub kid: Option<String>,
    /// The claims object.
    pub claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    pub message: &'t str,
    /// The signature, base64url.
    pub signature: &'t str,
}

/// Claim checks of one provider.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    /// Skew tolerated, seconds.
    pub leeway: u64,
    /// `exp` required.
    pub require_exp: bool,
    /// Longest `exp - iat`, seconds.
    pub max_lifetime: Option<u64>,
    /// Accepted audiences.
    pub audiences: Box<[Box<str>]>,
    /// Required claims and types.
    pub required: Box<[(Box<str>, ClaimType)]>,
}

// === impl TokenError ===

impl TokenError {
    /// Reason code for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "token_too_large",
            Self::Malformed => "token_malformed",
            Self::UnsupportedAlgorithm => "token_unsupported_alg",
            Self::AlgorithmNotAllowed => "token_alg_not_allowed",
            Self::CriticalHeader => "token_crit_header",
            Self::UnknownIssuer => "token_unknown_issuer",
            Self::UnknownKey => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "token_issued_in_future",
            Self::LifetimeTooLong => "token_lifetime_too_long",
            Self::BadAudience => "token_bad_audience",
            Self::MissingClaim => "token_missing_claim",
            Self::ClaimType => "token_claim_type",
            Self::NoPrincipal => "token_no_principal",
            Self::UnknownApiKey => "apikey_unknown",
            Self::Disabled => "credential_disabled",
            Self::Inactive => "token_inactive",
            Self::WrongTokenType => "token_wrong_type",
            Self::BadIdentityHeader => "identity_header_malformed",
        }
    }
}

/// Splits and decodes a compact JWS. Nothing here trusts the content yet.
pub fn parse(token: &str) -> Result<Parsed<'_>, TokenError> {
    let (message, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = message.split_once('.').ok_or(TokenError::Malformed)?;
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header = b64_json(header)?;
    match header.get("alg") {
        Some(Value::String(_)) => {}
        _ => return Err(TokenError::UnsupportedAlgorithm),
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(keys::parse_alg)
        .ok_or(TokenError::UnsupportedAlgorithm)?;
    // Why: RFC 7515 §4.1.11: a recipient that does not understand a listed extension must
    // refuse the token; we understand none.
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    // `jku`, `x5u`, `jwk`, `x5c`: deliberately never read. Keys come from configuration only.
    let claims = b64_json(payload)?;
    Ok(Parsed {
        alg,
        kid,
        claims,
        message,
        signature,
    })
}

fn b64_json(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(TokenError::Malformed),
    }
}

/// A NumericDate claim: absent, or a JSON number (fractions allowed, RFC 7519 §2); anything
/// else, `"exp": "9999999999"` included, is refused.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                // Saturating: a date beyond u64 seconds is "never" and caught by max_lifetime.
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "finite, non-negative, saturating cast"
                )]
                Ok(Some(f.floor() as u64))
            } else {
                Err(TokenError::ClaimType)
            }
        }
        Some(_) => Err(TokenError::ClaimType),
    }
}

/// Checks the time, issuer-independent and audience claims. Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: u64,
) -> Result<Option<u64>, TokenError> {
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    match exp {
        // RFC 7519 §4.1.4: the current time must be before `exp`.
        Some(exp) if now >= exp.saturating_add(rules.leeway) => return Err(TokenError::Expired),
        None if rules.require_exp => return Err(TokenError::MissingClaim),
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(rules.leeway)) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(rules.leeway)) {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(max) = rules.max_lifetime {
        let start = iat.unwrap_or(now);
        match exp {
            Some(exp) if exp.saturating_sub(start) > max.saturating_add(rules.leeway) => {
                return Err(TokenError::LifetimeTooLong);
            }
            None => return Err(TokenError::MissingClaim),
            _ => {}
        }
    }
    check_audience(claims.get("aud"), &rules.audiences)?;
    for (name, ty) in &rules.required {
        let v = claims.get(&**name).ok_or(TokenError::MissingClaim)?;
        if !type_fits(v, *ty) {
            return Err(TokenError::ClaimType);
        }
    }
    Ok(exp)
}

pub(crate) fn check_audience(aud: Option<&Value>, ours: &[Box<str>]) -> Result<(), TokenError> {
    let ok = |a: &str| !a.is_empty() && ours.iter().any(|o| **o == *a);
    match aud {
        Some(Value::String(a)) if ok(a) => Ok(()),
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut any = false;
            for a in list {
                match a {
                    Value::String(a) => any |= ok(a),
                    _ => return Err(TokenError::BadAudience),
                }
            }
            if any {
                Ok(())
            } else {
                Err(TokenError::BadAudience)
            }
        }
        _ => Err(TokenError::BadAudience),
    }
}

fn type_fits(v: &Value, ty: ClaimType) -> bool {
    match ty {
        ClaimType::Any => true,
        ClaimType::String => v.is_string(),
        ClaimType::Number => v.is_number(),
        ClaimType::Boolean => v.is_boolean(),
        ClaimType::Array => v.is_array(),
        ClaimType::Object => v.is_object(),
        ClaimType::StringOrArray => {
            v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            leeway: 30,
            require_exp: true,
            max_lifetime: None,
            audiences: Box::new(["api".into()]),
            required: Box::new([]),
        }
    }

    #[expect(clippy::needless_pass_by_value, reason = "tests pass json! literals")]
    fn check(c: Value, r: &ClaimRules) -> Result<Option<u64>, TokenError> {
        check_claims(c.as_object().unwrap(), r, NOW)
    }

    fn token(header: &Value, claims: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{h}.{c}.c2ln")
    }

    #[test]
    fn time_claims() {
        let r = rules();
        let ok = |c: Value| check(c, &r);
        assert_eq!(
            ok(json!({"aud": "api", "exp": NOW + 60})),
            Ok(Some(NOW + 60))
        );
        assert_eq!(
            ok(json!({"aud": "api", "exp": NOW - 29})),
            Ok(Some(NOW - 29)),
            "within leeway"
        );
        assert_eq!(
            ok(json!({"aud": "api", "exp": NOW - 30})),
            Err(TokenError::Expired)
        );
        assert_eq!(ok(json!({"aud": "api"})), Err(TokenError::MissingClaim));
        assert_eq!(
            ok(json!({"aud": "api", "exp": "9999999999"})),
            Err(TokenError::ClaimType)
        );
        assert_eq!(
            ok(json!({"aud": "api", "exp": NOW + 60, "nbf": "0"})),
            Err(TokenError::ClaimType)
        );
        assert_eq!(
            ok(json!({"aud": "api", "exp": NOW + 60, "nbf": NOW + 31})),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            ok(json!({"aud": "api", "exp": NOW + 60, "iat": NOW + 31})),
            Err(TokenError::IssuedInFuture)
        );
        assert_eq!(
            ok(json!({"aud": "api", "exp": -1})),
            Err(TokenError::ClaimType)
        );
        assert_eq!(
            ok(json!({"aud": "api", "exp": 1.8e9 + 60.5})),
            Ok(Some(NOW + 60))
        );
    }

    #[test]
    fn lifetime_bound() {
        let r = ClaimRules {
            max_lifetime: Some(3600),
            ..rules()
        };
        assert!(check(json!({"aud": "api", "iat": NOW, "exp": NOW + 3600}), &r).is_ok());
        assert_eq!(
            check(json!({"aud": "api", "iat": NOW, "exp": NOW + 7200}), &r),
            Err(TokenError::LifetimeTooLong)
        );
        assert_eq!(
            check(json!({"aud": "api", "exp": NOW + 7200}), &r),
            Err(TokenError::LifetimeTooLong)
        );
    }

    #[test]
    fn audience_forms() {
        let r = rules();
        let aud = |a: Value| check(json!({"aud": a, "exp": NOW + 60}), &r);
        assert!(aud(json!("api")).is_ok());
        assert!(aud(json!(["other", "api"])).is_ok());
        for bad in [
            json!("other"),
            json!(""),
            json!([]),
            json!([""]),
            json!(["api", 1]),
            json!(null),
            json!({"api": 1}),
        ] {
            assert_eq!(aud(bad.clone()), Err(TokenError::BadAudience), "{bad}");
        }
        assert_eq!(
            check(json!({"exp": NOW + 60}), &r),
            Err(TokenError::BadAudience)
        );
    }

    #[test]
    fn required_claim_types() {
        let r = ClaimRules {
            required: Box::new([
                ("tenant".into(), ClaimType::String),
                ("roles".into(), ClaimType::StringOrArray),
            ]),
            ..rules()
        };
        assert!(
            check(
                json!({"aud": "api", "exp": NOW + 1, "tenant": "t", "roles": ["a"]}),
                &r
            )
            .is_ok()
        );
        assert_eq!(
            check(json!({"aud": "api", "exp": NOW + 1, "tenant": "t"}), &r),
            Err(TokenError::MissingClaim)
        );
        assert_eq!(
            check(
                json!({"aud": "api", "exp": NOW + 1, "tenant": 1, "roles": "a"}),
                &r
            ),
            Err(TokenError::ClaimType)
        );
        assert_eq!(
            check(
                json!({"aud": "api", "exp": NOW + 1, "tenant": "t", "roles": [1]}),
                &r
            ),
            Err(TokenError::ClaimType)
        );
    }

    #[test]
    fn header_rules() {
        let c = json!({});
        for alg in ["none", "None", "NONE", "nOnE", "hs256", "RS256 ", "", "HS1"] {
            assert_eq!(
                parse(&token(&json!({"alg": alg}), &c)).err(),
                Some(TokenError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
        assert_eq!(
            parse(&token(&json!({"typ": "JWT"}), &c)).err(),
            Some(TokenError::UnsupportedAlgorithm)
        );
        assert_eq!(
            parse(&token(&json!({"alg": ["RS256"]}), &c)).err(),
            Some(TokenError::UnsupportedAlgorithm)
        );
        assert_eq!(
            parse(&token(
                &json!({"alg": "RS256", "crit": ["exp"], "exp": 1}),
                &c
            ))
            .err(),
            Some(TokenError::CriticalHeader)
        );
        assert_eq!(
            parse(&token(&json!({"alg": "RS256", "kid": 5}), &c)).err(),
            Some(TokenError::Malformed)
        );
        let t = token(
            &json!({"alg": "ES256", "kid": "k", "jku": "http://evil/jwks"}),
            &json!({"a": 1}),
        );
        let p = parse(&t).unwrap();
        assert_eq!((p.alg, p.kid.as_deref()), (Algorithm::ES256, Some("k")));
    }

    #[test]
    fn malformed_shapes() {
        for t in [
            "",
            "a",
            "a.b",
            "a.b.",
            ".b.c",
            "a..c",
            "e30.e30.e30.e30",
            "W10.e30.c2ln",
            "e30.W10.c2ln",
            "e30.e30!.c2ln",
        ] {
            assert!(parse(t).is_err(), "{t}");
        }
    }
}
