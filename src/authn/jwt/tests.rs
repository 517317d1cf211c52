//! Provider-level tests: key choice, remote key sets never fetched, readiness.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use super::mint::SigningKey;
use super::*;

const ISS: &str = "https://issuer.test";
const NOW: u64 = 1_800_000_000;

fn claims() -> Value {
    json!({"iss": ISS, "aud": "api", "sub": "u1", "exp": NOW + 300, "iat": NOW})
}

/// A JWT authenticator with one provider: `keys` (JSON key sources) and `extra` members.
fn authenticator(keys: &Value, extra: &Value) -> JwtAuthenticator {
    let mut provider = json!({"issuer": ISS, "audiences": ["api"], "keys": keys});
    for (k, v) in extra.as_object().unwrap() {
        provider[k] = v.clone();
    }
    let raw: RawJwt = serde_json::from_value(json!({"providers": [provider]})).unwrap();
    JwtAuthenticator::compile(&raw, Path::new("."), None, &mut Vec::new()).unwrap()
}

fn pem_key(k: &SigningKey, kid: Option<&str>) -> Value {
    let alg = keys::alg_name(k.alg);
    match kid {
        Some(kid) => json!({"pem": {"text": k.public_pem, "kid": kid, "algorithms": [alg]}}),
        None => json!({"pem": {"text": k.public_pem, "algorithms": [alg]}}),
    }
}

/// Signs the default claims with `key`, the header naming `kid` (or none).
fn token(key: &SigningKey, kid: Option<&str>) -> String {
    let mut header = json!({"alg": keys::alg_name(key.alg), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    key.sign_raw(&header, &claims()).unwrap()
}

async fn verify(a: &JwtAuthenticator, token: &str) -> Result<(), VerifyError> {
    a.verify(token, &Arc::from("users"), NOW, None)
        .await
        .map(|_| ())
}

/// A remote key source nobody answers: connection refused at once.
fn unreachable(optional: bool) -> Value {
    json!({"jwks_url": {"url": "http://127.0.0.1:1/jwks.json", "optional": optional}})
}

#[tokio::test]
async fn unfetched_remote_keys_are_not_masked_by_static_keys() {
    let es = SigningKey::generate(Algorithm::ES256, "es").unwrap();
    let untagged = SigningKey::generate(Algorithm::ES256, "plain").unwrap();
    let other_es = SigningKey::generate(Algorithm::ES256, "x").unwrap();
    let rs = SigningKey::generate(Algorithm::RS256, "rs").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, [7; 32]).unwrap();
    let a = authenticator(
        &json!([
            pem_key(&es, Some("es")),
            pem_key(&untagged, None),
            {"hmac": {"secret": {"file": secret}, "kid": "hs", "algorithms": ["HS256"]}},
            unreachable(false),
        ]),
        &json!({"fetch": {"startup_timeout": "0s"}}),
    );
    let unavailable = Err(VerifyError::KeysUnavailable);
    let refused = |e| Err(VerifyError::Token(e));
    for (what, t, want) in [
        ("static key by kid", token(&es, Some("es")), Ok(())),
        ("static key without kid", token(&untagged, None), Ok(())),
        (
            "kid of a static key, another signer: final",
            token(&other_es, Some("es")),
            refused(TokenError::BadSignature),
        ),
        (
            "kid only the remote set could hold",
            token(&rs, Some("rs")),
            unavailable,
        ),
        (
            "no kid, static keys fail: an unseen remote key might verify",
            token(&other_es, None),
            unavailable,
        ),
        (
            "HMAC: never from a remote set",
            SigningKey::hmac(&[8; 32], Algorithm::HS256, "hs2")
                .unwrap()
                .sign(&claims())
                .unwrap(),
            refused(TokenError::UnknownKey),
        ),
    ] {
        assert_eq!(verify(&a, &t).await, want, "{what}");
    }
    let p = &a.providers()[0];
    assert!(!p.is_ready(), "never fetched: not ready, timeout or not");
    assert!(p.keys_settled(), "explain stops waiting after the timeout");
}

#[tokio::test]
async fn optional_remote_source_readiness() {
    let es = SigningKey::generate(Algorithm::ES256, "es").unwrap();
    for (optional, timeout, ready) in [
        (false, "0s", false),
        (false, "1h", false),
        (true, "0s", true),
        (true, "1h", false),
    ] {
        let a = authenticator(
            &json!([pem_key(&es, Some("es")), unreachable(optional)]),
            &json!({"fetch": {"startup_timeout": timeout}}),
        );
        assert_eq!(
            a.providers()[0].is_ready(),
            ready,
            "optional {optional}, timeout {timeout}"
        );
    }
    // Optional or not, a token only the remote set could verify waits for it.
    let rs = SigningKey::generate(Algorithm::RS256, "rs").unwrap();
    let a = authenticator(
        &json!([pem_key(&es, Some("es")), unreachable(true)]),
        &json!({"fetch": {"startup_timeout": "0s"}}),
    );
    assert_eq!(
        verify(&a, &token(&rs, Some("rs"))).await,
        Err(VerifyError::KeysUnavailable)
    );
}

#[tokio::test]
async fn token_without_kid_tries_only_keys_without_kid() {
    let tagged = SigningKey::generate(Algorithm::ES256, "tagged").unwrap();
    let plain = SigningKey::generate(Algorithm::ES256, "plain").unwrap();
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger").unwrap();
    let only_tagged = authenticator(&json!([pem_key(&tagged, Some("tagged"))]), &json!({}));
    let both = authenticator(
        &json!([pem_key(&tagged, Some("tagged")), pem_key(&plain, None)]),
        &json!({}),
    );
    let refused = |e| Err(VerifyError::Token(e));
    for (what, a, t, want) in [
        (
            "kid names the key",
            &only_tagged,
            token(&tagged, Some("tagged")),
            Ok(()),
        ),
        (
            "no kid: a key with a kid is not tried",
            &only_tagged,
            token(&tagged, None),
            refused(TokenError::UnknownKey),
        ),
        (
            "no kid: only the key without kid",
            &both,
            token(&tagged, None),
            refused(TokenError::BadSignature),
        ),
        (
            "no kid, key without kid",
            &both,
            token(&plain, None),
            Ok(()),
        ),
        (
            "unknown kid falls back to keys without kid",
            &both,
            token(&plain, Some("rotated")),
            Ok(()),
        ),
        (
            "kid of another key",
            &both,
            token(&plain, Some("tagged")),
            refused(TokenError::BadSignature),
        ),
        (
            "unknown kid, no key without kid verifies",
            &both,
            token(&stranger, Some("rotated")),
            refused(TokenError::BadSignature),
        ),
    ] {
        assert_eq!(verify(a, &t).await, want, "{what}");
    }
}

#[tokio::test]
async fn token_type_is_checked_where_required() {
    let es = SigningKey::generate(Algorithm::ES256, "es").unwrap();
    let keys = json!([pem_key(&es, Some("es"))]);
    let access = authenticator(&keys, &json!({"token_types": ["at+jwt"]}));
    let any = authenticator(&keys, &json!({}));
    let typed = |typ: Option<&str>| {
        let mut header = json!({"alg": "ES256", "kid": "es"});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        es.sign_raw(&header, &claims()).unwrap()
    };
    let refused = Err(VerifyError::Token(TokenError::TypeNotAccepted));
    for (typ, want_access) in [
        (Some("at+jwt"), Ok(())),
        (Some("AT+JWT"), Ok(())),
        (Some("application/at+jwt"), Ok(())),
        (Some("JWT"), refused),
        (Some("id_token+jwt"), refused),
        (None, refused),
    ] {
        assert_eq!(verify(&access, &typed(typ)).await, want_access, "{typ:?}");
        assert_eq!(verify(&any, &typed(typ)).await, Ok(()), "{typ:?}, any type");
    }
    // The config names media types, with or without `application/`.
    let raw: RawJwt = serde_json::from_value(json!({"providers": [{
        "issuer": ISS, "audiences": ["api"], "keys": keys,
        "token_types": ["Application/AT+JWT", "", "text/jwt", "a b"],
    }]}))
    .unwrap();
    let errors = JwtAuthenticator::compile(&raw, Path::new("."), None, &mut Vec::new())
        .unwrap_err()
        .into_iter()
        .map(|e| e.field)
        .collect::<Vec<_>>();
    assert_eq!(
        errors,
        [
            "providers[0].token_types[1]",
            "providers[0].token_types[2]",
            "providers[0].token_types[3]"
        ]
    );
}

#[test]
fn inline_hmac_jwk_refused() {
    let oct =
        r#"{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0x","alg":"HS256"}"#;
    let raw: RawJwt = serde_json::from_value(json!({"providers": [{
        "issuer": ISS, "audiences": ["api"], "keys": [{"jwk": {"text": oct}}],
    }]}))
    .unwrap();
    let errors =
        JwtAuthenticator::compile(&raw, Path::new("."), None, &mut Vec::new()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "providers[0].keys[0].jwk.text");
    assert!(errors[0].message.contains("is a secret"), "{errors:?}");
    assert!(!errors[0].message.contains("c2VjcmV0"), "{errors:?}");
}

#[test]
fn key_urls_with_credentials_are_refused_unshown() {
    for (source, url) in [
        ("jwks_url", "https://jwksuser:JwksPassGHI@idp.example/jwks"),
        ("oidc_discovery", "https://u:JwksPassGHI@idp.example"),
        ("jwks_url", "http://u:JwksPassGHI@idp.example/jwks"),
        ("jwks_url", "ftp://u:JwksPassGHI@idp.example/jwks"),
    ] {
        let raw: RawJwt = serde_json::from_value(json!({"providers": [{
            "issuer": ISS, "audiences": ["api"], "keys": [{source: {"url": url}}],
        }]}))
        .unwrap();
        let errors =
            JwtAuthenticator::compile(&raw, Path::new("."), None, &mut Vec::new()).unwrap_err();
        assert_eq!(errors.len(), 1, "{url}: {errors:?}");
        assert!(!errors[0].message.contains("JwksPass"), "{errors:?}");
        assert!(errors[0].message.contains("***@idp.example"), "{errors:?}");
    }
    // A password holding `#`, `?` or `/`, wherever a parser ends the authority.
    for url in [
        "https://u:Jwks#PassGHI@idp.example/jwks",
        "https://u:Jwks?PassGHI@idp.example/jwks",
        "https://u:Jwks/PassGHI@idp.example/jwks",
        "https://ops:8443/PassGHI@idp.example/jwks",
        "https://ops:8443?PassGHI@idp.example/jwks",
        "https://dGVzd/PassGHI=@idp.example/jwks",
        "https://ghp_tok?PassGHI@idp.example/jwks",
    ] {
        let e = RemoteSource::parse_url(url).unwrap_err();
        assert!(!e.contains("PassGHI"), "{url}: {e}");
    }
    // An `@` in a path is no credential: Google's service-account key URLs have one.
    let google =
        "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com";
    assert!(RemoteSource::parse_url(google).is_ok());
}
