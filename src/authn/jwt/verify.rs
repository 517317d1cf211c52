//! Parsing a compact JWS and checking its claims. The signature check itself is
//! jsonwebtoken's (aws-lc-rs); everything around it is here, so every rule is explicit:
//!
//! - header and claims are JSON objects in which no member name repeats, at any depth: a
//!   parser that keeps the first of two `sub`s (an upstream reading the token) must never see
//!   another token than the one we checked, which kept the last;
//! - the header's `alg` must name one of our algorithms exactly (`none`, `None`, `HS256 ` … are
//!   unknown); `jku`, `x5u`, `jwk` and `x5c` are never read; any `crit` is refused (we
//!   understand no extension), and so is `enc` (a JWE header: we verify signatures only);
//!   `kid` and `typ`, when present, are strings;
//! - `exp`, `nbf`, `iat` must be JSON numbers no later than 9999-12-31T23:59:59Z (a date
//!   beyond is an attempt at "never expires", not a date); `exp` is required unless configured
//!   otherwise and, with `max_lifetime`, at most that far from `iat` and from now; `iss` must
//!   be a string equal to the provider's; `aud` (string or non-empty array of strings) must
//!   name one of the provider's audiences;
//! - a provider's `token_types` (say `at+jwt`, RFC 9068) must include the header's `typ`,
//!   compared case-insensitively, `application/` prefix or not (RFC 7515 §4.1.9).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

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
    /// An `enc` header: a JWE header on a JWS.
    #[error("encryption header on a signed token")]
    EncryptionHeader,
    /// A member name repeated in the header or the claims.
    #[error("duplicate member name")]
    DuplicateMember,
    /// `typ` absent or not one the provider accepts.
    #[error("token type not accepted")]
    TypeNotAccepted,
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
    /// `exp - iat`, or `exp - now`, beyond the configured maximum.
    #[error("token lifetime too long")]
    LifetimeTooLong,
    /// `exp`, `nbf` or `iat` after the year 9999.
    #[error("date out of range")]
    DateOutOfRange,
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
    /// `typ`.
    pub typ: Option<String>,
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
            Self::EncryptionHeader => "token_enc_header",
            Self::DuplicateMember => "token_duplicate_member",
            Self::TypeNotAccepted => "token_type_not_accepted",
            Self::UnknownIssuer => "token_unknown_issuer",
            Self::UnknownKey => "token_unknown_key",
            Self::BadSignature => "token_bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "token_issued_in_future",
            Self::LifetimeTooLong => "token_lifetime_too_long",
            Self::DateOutOfRange => "token_date_out_of_range",
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
    // Why: `enc` makes a JOSE header a JWE one (RFC 7516 §4.1.2); a library that decides
    // JWS or JWE by it would read this token otherwise than we do.
    // Regression: tests::header_rules
    if header.contains_key("enc") {
        return Err(TokenError::EncryptionHeader);
    }
    let string = |name: &str| match header.get(name) {
        None => Ok(None),
        Some(Value::String(k)) => Ok(Some(k.clone())),
        Some(_) => Err(TokenError::Malformed),
    };
    let kid = string("kid")?;
    let typ = string("typ")?;
    // `jku`, `x5u`, `jwk`, `x5c`: deliberately never read. Keys come from configuration only.
    let claims = b64_json(payload)?;
    Ok(Parsed {
        alg,
        kid,
        typ,
        claims,
        message,
        signature,
    })
}

/// A base64url JSON object, parsed once, refusing a member name repeated at any depth.
fn b64_json(part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    // Why: serde_json keeps the last of two equal names, other parsers the first; RFC 7519 §4
    // lets a recipient refuse such a token, and refusing is the only way every reader of the
    // token agrees with the claims we checked. One pass builds the value and checks.
    // Regression: tests::duplicate_members_refused_at_any_depth
    match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(Value::Object(m))) => Ok(m),
        // The visitor accepts every JSON value: a data error is the repeated name.
        Err(e) if e.is_data() => Err(TokenError::DuplicateMember),
        _ => Err(TokenError::Malformed),
    }
}

/// A JSON value in which no object repeats a member name.
pub(crate) struct Strict(pub(crate) Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(name, v).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(out))
    }
}

/// Whether a token's `typ` is one of `accepted` (lowercase, without `application/`): compared
/// case-insensitively, and `application/at+jwt` is `at+jwt` (RFC 7515 §4.1.9). Nothing to
/// accept: any `typ`, or none.
pub fn type_accepted(typ: Option<&str>, accepted: &[Box<str>]) -> bool {
    if accepted.is_empty() {
        return true;
    }
    let Some(typ) = typ else { return false };
    const PREFIX: &str = "application/";
    let bare = match typ.get(..PREFIX.len()) {
        Some(p) if p.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
        _ => typ,
    };
    accepted.iter().any(|a| a.eq_ignore_ascii_case(bare))
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z.
pub const MAX_DATE: u64 = 253_402_300_799;

/// A NumericDate claim: absent, or a JSON number (fractions allowed, RFC 7519 §2) up to
/// [`MAX_DATE`]; anything else, `"exp": "9999999999"` included, is refused.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    let date = match claims.get(name) {
        None => return Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                u
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && *f >= 0.0) {
                // Why: a date past year 9999 (1e300, say) would otherwise saturate into
                // "valid for ever"; it is refused, never read as a date.
                // Regression: tests::time_claims
                if f > MAX_DATE as f64 {
                    return Err(TokenError::DateOutOfRange);
                }
                whole_seconds(f)
            } else {
                return Err(TokenError::ClaimType);
            }
        }
        Some(_) => return Err(TokenError::ClaimType),
    };
    if date > MAX_DATE {
        return Err(TokenError::DateOutOfRange);
    }
    Ok(Some(date))
}

#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "callers pass a finite, non-negative f64 of at most MAX_DATE"
)]
fn whole_seconds(f: f64) -> u64 {
    f.floor() as u64
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
        // Measured from `iat` and from now: an `iat` a little ahead (within the leeway) does
        // not buy a longer life.
        let start = iat.map_or(now, |iat| iat.min(now));
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
        // Beyond year 9999: refused, never read as "never expires".
        for (c, what) in [
            (json!({"aud": "api", "exp": MAX_DATE}), "the last second"),
            (json!({"aud": "api", "exp": MAX_DATE + 1}), "exp"),
            (json!({"aud": "api", "exp": 1e300}), "exp as a huge float"),
            (json!({"aud": "api", "exp": 2.6e11}), "exp as a float"),
            (json!({"aud": "api", "exp": u64::MAX}), "exp as u64::MAX"),
            (json!({"aud": "api", "exp": NOW + 60, "nbf": 1e19}), "nbf"),
            (json!({"aud": "api", "exp": NOW + 60, "iat": 9e15}), "iat"),
        ] {
            let want = if what == "the last second" {
                Ok(Some(MAX_DATE))
            } else {
                Err(TokenError::DateOutOfRange)
            };
            assert_eq!(ok(c), want, "{what}");
        }
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
        // `iat` ahead (within the leeway) does not stretch the lifetime from now.
        assert_eq!(
            check(
                json!({"aud": "api", "iat": NOW + 30, "exp": NOW + 3660}),
                &r
            ),
            Err(TokenError::LifetimeTooLong)
        );
        assert_eq!(
            check(json!({"aud": "api", "exp": MAX_DATE}), &r),
            Err(TokenError::LifetimeTooLong)
        );
    }

    #[test]
    fn token_types() {
        let at: Box<[Box<str>]> = Box::new(["at+jwt".into()]);
        let either: Box<[Box<str>]> = Box::new(["at+jwt".into(), "jwt".into()]);
        for (typ, accepted, want) in [
            (Some("at+jwt"), &at, true),
            (Some("AT+JWT"), &at, true),
            (Some("application/at+jwt"), &at, true),
            (Some("Application/At+JWT"), &at, true),
            (Some("JWT"), &at, false),
            (None, &at, false),
            (Some(""), &at, false),
            (Some("at+jwt "), &at, false),
            (Some("text/at+jwt"), &at, false),
            (Some("application/"), &at, false),
            (Some("JWT"), &either, true),
            (Some("application/jwt"), &either, true),
            (Some("id+jwt"), &either, false),
        ] {
            assert_eq!(
                type_accepted(typ, accepted),
                want,
                "{typ:?} in {accepted:?}"
            );
        }
        assert!(type_accepted(None, &[]), "nothing required");
        assert!(type_accepted(Some("anything"), &[]));
    }

    /// A token from raw JSON texts (members may repeat).
    fn raw_token(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn duplicate_members_refused_at_any_depth() {
        let header = r#"{"alg":"ES256","kid":"k"}"#;
        let claims = r#"{"sub":"u1","aud":"api"}"#;
        assert!(parse(&raw_token(header, claims)).is_ok());
        for (h, c, what) in [
            (r#"{"alg":"ES256","alg":"HS256"}"#, claims, "alg twice"),
            (
                r#"{"alg":"ES256","kid":"a","kid":"b"}"#,
                claims,
                "kid twice",
            ),
            (header, r#"{"sub":"user","sub":"admin"}"#, "sub twice"),
            (
                header,
                r#"{"sub":"u","aud":"api","aud":"other"}"#,
                "aud twice",
            ),
            (
                header,
                r#"{"sub":"u","realm":{"roles":["user"],"roles":["admin"]}}"#,
                "nested object",
            ),
            (
                header,
                r#"{"sub":"u","l":[{"a":1,"a":2}]}"#,
                "object in an array",
            ),
            (header, r#"{"sub":"u","sub":"x"}"#, "the same name, escaped"),
        ] {
            assert_eq!(
                parse(&raw_token(h, c)).err(),
                Some(TokenError::DuplicateMember),
                "{what}"
            );
        }
        // Equal values under different names, and equal names in sibling objects, are fine.
        let t = raw_token(
            header,
            r#"{"a":{"x":1},"b":{"x":1},"c":[1,1],"d":1.5,"e":null,"f":true}"#,
        );
        let p = parse(&t).unwrap();
        assert_eq!(
            Value::Object(p.claims),
            json!({"a": {"x": 1}, "b": {"x": 1}, "c": [1, 1], "d": 1.5, "e": null, "f": true})
        );
        for (h, c) in [
            (header, r#"{"a":1"#),
            (header, "[]"),
            (header, r#""s""#),
            (r#"{"alg":"ES256"}}"#, claims),
        ] {
            assert_eq!(
                parse(&raw_token(h, c)).err(),
                Some(TokenError::Malformed),
                "{h} {c}"
            );
        }
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
        assert_eq!(
            parse(&token(&json!({"alg": "RS256", "typ": ["JWT"]}), &c)).err(),
            Some(TokenError::Malformed)
        );
        for enc in [json!("A256GCM"), json!(""), json!(null)] {
            assert_eq!(
                parse(&token(&json!({"alg": "ES256", "enc": enc}), &c)).err(),
                Some(TokenError::EncryptionHeader),
                "{enc}"
            );
        }
        let t = token(
            &json!({"alg": "ES256", "kid": "k", "jku": "http://evil/jwks"}),
            &json!({"a": 1}),
        );
        let p = parse(&t).unwrap();
        assert_eq!((p.alg, p.kid.as_deref()), (Algorithm::ES256, Some("k")));
        let t = token(&json!({"alg": "ES256", "typ": "at+jwt"}), &c);
        let p = parse(&t).unwrap();
        assert_eq!(p.typ.as_deref(), Some("at+jwt"));
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
