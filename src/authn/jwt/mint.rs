//! Signing keys and tokens: generate a key pair, publish it as a JWKS, sign tokens. Used by
//! the key and token tools, the demo and tests, and by the signed identity assertion
//! ([`crate::authz::assertion`]), the one thing the gateway signs on the request path.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair as _, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::keys::{KeyFamily, alg_name};
use crate::secret::Secret;

/// A private key able to sign tokens, with its public forms.
pub struct SigningKey {
    /// The algorithm it signs with.
    pub alg: Algorithm,
    /// Its key id.
    pub kid: String,
    /// PKCS#8 PEM of the private key (empty for HMAC).
    pub private_pem: Secret<String>,
    /// SPKI PEM of the public key (empty for HMAC).
    pub public_pem: String,
    /// The public JWK (for HMAC: the `oct` JWK, which is secret).
    pub jwk: Value,
    encoding: EncodingKey,
}

/// Why a key could not be made or used. The texts are static, or name only the algorithm or
/// the PEM label: by construction never key material, so they may be logged.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Key generation or parsing failed.
    #[error("key: {0}")]
    Key(&'static str),
    /// A PEM block that is not a PKCS#8 private key.
    #[error("key: expected a PKCS#8 `PRIVATE KEY`, found `{0}`")]
    PemLabel(Box<str>),
    /// A secret given for an algorithm that is not HMAC.
    #[error("key: {0} is not an HMAC algorithm")]
    NotHmac(&'static str),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(&'static str),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A fixed description: the underlying error (a PEM or base64 decoder's) may quote bytes of
/// the private key, so it is dropped rather than carried into a log line.
fn key_err<E>(_e: E) -> MintError {
    MintError::Key("not a usable private key for this algorithm (PKCS#8 PEM or DER expected)")
}

fn sign_err<E>(_e: E) -> MintError {
    MintError::Sign("the key cannot sign with this algorithm")
}

/// PEM armour.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn family_of(alg: Algorithm) -> KeyFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => KeyFamily::Hmac,
        Algorithm::ES256 => KeyFamily::EcP256,
        Algorithm::ES384 => KeyFamily::EcP384,
        Algorithm::EdDSA => KeyFamily::Ed25519,
        _ => KeyFamily::Rsa,
    }
}

impl SigningKey {
    /// A fresh key pair for `alg` (RSA keys are 2048 bits). HMAC algorithms get 64 random bytes.
    pub fn generate(alg: Algorithm, kid: &str) -> Result<Self, MintError> {
        let pkcs8: Vec<u8> = match family_of(alg) {
            KeyFamily::Hmac => {
                let mut secret = vec![0u8; 64];
                aws_lc_rs::rand::fill(&mut secret).map_err(key_err)?;
                return Self::hmac(&secret, alg, kid);
            }
            KeyFamily::Rsa => RsaKeyPair::generate(KeySize::Rsa2048)
                .map_err(key_err)?
                .as_der()
                .map_err(key_err)?
                .as_ref()
                .to_vec(),
            KeyFamily::EcP256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(key_err)?
                .to_pkcs8v1()
                .map_err(key_err)?
                .as_ref()
                .to_vec(),
            KeyFamily::EcP384 => EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
                .map_err(key_err)?
                .to_pkcs8v1()
                .map_err(key_err)?
                .as_ref()
                .to_vec(),
            KeyFamily::Ed25519 => Ed25519KeyPair::generate()
                .map_err(key_err)?
                .to_pkcs8v1()
                .map_err(key_err)?
                .as_ref()
                .to_vec(),
        };
        Self::from_pkcs8(&pkcs8, alg, kid)
    }

    /// A key from a PKCS#8 private key (PEM or DER).
    pub fn from_private_key(bytes: &[u8], alg: Algorithm, kid: &str) -> Result<Self, MintError> {
        if bytes.starts_with(b"-----BEGIN") {
            let p = ::pem::parse(bytes).map_err(key_err)?;
            if p.tag() != "PRIVATE KEY" {
                return Err(MintError::PemLabel(p.tag().into()));
            }
            Self::from_pkcs8(p.contents(), alg, kid)
        } else {
            Self::from_pkcs8(bytes, alg, kid)
        }
    }

    fn from_pkcs8(pkcs8: &[u8], alg: Algorithm, kid: &str) -> Result<Self, MintError> {
        let private_pem = pem("PRIVATE KEY", pkcs8);
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let name = alg_name(alg);
        let (spki, jwk, encoding) = match family_of(alg) {
            KeyFamily::Hmac => return Err(MintError::Key("HMAC keys have no PKCS#8 form")),
            KeyFamily::Rsa => {
                let kp = RsaKeyPair::from_pkcs8(pkcs8).map_err(key_err)?;
                let public = kp.public_key();
                let c = PublicKeyComponents::<Vec<u8>>::from(public);
                let spki = public.as_der().map_err(key_err)?.as_ref().to_vec();
                let jwk = json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e), "kid": kid, "alg": name, "use": "sig"});
                (
                    spki,
                    jwk,
                    EncodingKey::from_rsa_pem(private_pem.as_bytes()).map_err(key_err)?,
                )
            }
            fam @ (KeyFamily::EcP256 | KeyFamily::EcP384) => {
                let (signing, crv, n) = if fam == KeyFamily::EcP256 {
                    (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
                } else {
                    (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
                };
                let kp = EcdsaKeyPair::from_pkcs8(signing, pkcs8).map_err(key_err)?;
                let point = kp.public_key().as_ref().to_vec();
                let spki = kp.public_key().as_der().map_err(key_err)?.as_ref().to_vec();
                let (x, y) = point
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(n.min(point.len().saturating_sub(1)));
                let jwk = json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y), "kid": kid, "alg": name, "use": "sig"});
                (
                    spki,
                    jwk,
                    EncodingKey::from_ec_pem(private_pem.as_bytes()).map_err(key_err)?,
                )
            }
            KeyFamily::Ed25519 => {
                let kp = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(key_err)?;
                let spki = kp.public_key().as_der().map_err(key_err)?.as_ref().to_vec();
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(kp.public_key().as_ref()), "kid": kid, "alg": name, "use": "sig"});
                (
                    spki,
                    jwk,
                    EncodingKey::from_ed_pem(private_pem.as_bytes()).map_err(key_err)?,
                )
            }
        };
        Ok(Self {
            alg,
            kid: kid.to_owned(),
            private_pem: Secret::new(private_pem),
            public_pem: pem("PUBLIC KEY", &spki),
            jwk,
            encoding,
        })
    }

    /// An HMAC key.
    pub fn hmac(secret: &[u8], alg: Algorithm, kid: &str) -> Result<Self, MintError> {
        if family_of(alg) != KeyFamily::Hmac {
            return Err(MintError::NotHmac(alg_name(alg)));
        }
        Ok(Self {
            alg,
            kid: kid.to_owned(),
            private_pem: Secret::new(String::new()),
            public_pem: String::new(),
            jwk: json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret), "kid": kid, "alg": alg_name(alg)}),
            encoding: EncodingKey::from_secret(secret),
        })
    }

    /// Signs `claims` with a header naming this key's `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, MintError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(sign_err)
    }

    /// Signs an arbitrary header and claims (tests build hostile headers with this).
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> Result<String, MintError> {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg)
            .map_err(sign_err)?;
        Ok(format!("{message}.{sig}"))
    }
}

/// A JWKS document of the keys' public JWKs.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({"keys": keys.into_iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}
