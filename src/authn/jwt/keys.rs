//! Verification keys: parsed once at load (or fetch) into [`VerifyKey`]s, each with the
//! algorithms it may verify.
//!
//! Invariants: a key's algorithms always belong to its key type's family, so an RSA, EC or
//! Ed25519 public key can never be used as an HMAC secret (algorithm confusion); private keys
//! are refused as verification keys (PEM or JWK); RSA keys under 2048 bits are refused;
//! symmetric keys never come from a remote JWKS.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::raw::RawAlgorithm;
use crate::tls::x509::{self, Certificate, Spki};

/// A set of algorithms, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgSet(u16);

/// The key type a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// HMAC secret.
    Hmac,
    /// RSA public key (RS*, PS*).
    Rsa,
    /// P-256 public key.
    EcP256,
    /// P-384 public key.
    EcP384,
    /// Ed25519 public key.
    Ed25519,
}

/// One key that can verify signatures.
pub struct VerifyKey {
    /// `kid`, if it has one.
    pub kid: Option<Box<str>>,
    /// The key.
    pub key: DecodingKey,
    /// Its type.
    pub family: KeyFamily,
    /// What it may verify.
    pub algorithms: AlgSet,
    /// Set when a refresh dropped the key: cached verifications by it stop counting.
    revoked: AtomicBool,
    /// The [`LEAK_GENERATION`] it was last found not leaked at.
    leak_checked: AtomicU64,
    /// The issuer whose tokens it verifies (its leaks are that issuer's: [`remember_leaked`]).
    issuer: Option<Arc<str>>,
    /// Fingerprint of the key material, to keep the same `Arc` across refreshes.
    fingerprint: [u8; 32],
}

/// A provider's keys, indexed by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    by_kid: HashMap<Box<str>, usize>,
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not PEM, or a PEM of another kind.
    #[error("not a PEM public key or certificate")]
    NotPem,
    /// A private key where a public one belongs.
    #[error("a private key: configure the public key (or certificate) instead")]
    PrivateKey,
    /// Key type not supported.
    #[error("unsupported key type (RSA, EC P-256/P-384 and Ed25519 are)")]
    Unsupported,
    /// The key bytes do not parse.
    #[error("malformed key")]
    Malformed,
    /// An algorithm does not fit the key.
    #[error("algorithm {0} does not fit a {1} key")]
    AlgorithmMismatch(&'static str, &'static str),
    /// No algorithms listed.
    #[error("at least one algorithm is required")]
    NoAlgorithms,
    /// An HMAC secret that is really a public key: the classic algorithm-confusion setup.
    #[error(
        "this HMAC secret looks like a public key, certificate or JWK; HMAC secrets must be random bytes"
    )]
    SecretLooksLikePublicKey,
    /// HMAC secrets must be at least as long as the hash (RFC 7518 §3.2).
    #[error("HMAC secret too short: {0} bytes, at least {1} needed")]
    SecretTooShort(usize, usize),
    /// JWK JSON does not parse.
    #[error("invalid JWK: {0}")]
    Jwk(String),
    /// The JWK is for encryption.
    #[error("JWK `use` is not `sig`, or its `key_ops` do not include `verify`")]
    NotForSignatures,
    /// A symmetric key in a remote JWKS.
    #[error("symmetric (`oct`) keys are not accepted from a JWKS URL")]
    RemoteSymmetric,
    /// A JWK with private members.
    #[error(
        "a JWK holding a private key (`d`): only public keys verify, and a published private key lets anyone sign tokens"
    )]
    PrivateJwk,
    /// An RSA modulus under [`MIN_RSA_BITS`].
    #[error("RSA key of {0} bits: at least 2048 are required")]
    WeakRsa(usize),
}

/// The smallest RSA modulus accepted (NIST SP 800-131A). The verifier refuses smaller ones
/// anyway: such a key failed every token as a bad signature while its set read as usable.
pub const MIN_RSA_BITS: usize = 2048;

/// The bits of a big-endian unsigned integer (leading zero bytes ignored).
fn bit_length(n: &[u8]) -> usize {
    let n = &n[n.iter().position(|&b| b != 0).unwrap_or(n.len())..];
    n.first()
        .map_or(0, |&b| n.len() * 8 - b.leading_zeros() as usize)
}

/// Refuses an RSA modulus under [`MIN_RSA_BITS`].
fn check_rsa_modulus(n: &[u8]) -> Result<(), KeyError> {
    match bit_length(n) {
        bits if bits < MIN_RSA_BITS => Err(KeyError::WeakRsa(bits)),
        _ => Ok(()),
    }
}

/// The modulus of a PKCS#1 `RSAPublicKey` (`SEQUENCE { INTEGER n, INTEGER e }`, DER).
fn pkcs1_modulus(der: &[u8]) -> Option<&[u8]> {
    // One DER header: the tag, then the length (short or long form); the content after it.
    fn tlv(der: &[u8], tag: u8) -> Option<&[u8]> {
        let (&t, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        if t != tag {
            return None;
        }
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        rest.get(..len)
    }
    tlv(tlv(der, 0x30)?, 0x02)
}

/// The members only a private JWK has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// Refuses a JWK holding private key material (an `oct` key's `k` is its secret, and is
/// judged elsewhere).
///
/// Why: the parsed JWK drops these members, so a JWKS publishing the private half of its
/// keys (anyone reading it can then mint tokens) was trusted without a word, while a PEM
/// private key is refused. Regression: jwt::keys::tests::private_jwks_refused
fn refuse_private(v: &serde_json::Value) -> Result<(), KeyError> {
    let Some(o) = v.as_object() else {
        return Ok(());
    };
    if o.get("kty").and_then(serde_json::Value::as_str) == Some("oct") {
        return Ok(());
    }
    match PRIVATE_MEMBERS.iter().any(|m| o.contains_key(*m)) {
        true => Err(KeyError::PrivateJwk),
        false => Ok(()),
    }
}

// === impl AlgSet ===

impl AlgSet {
    const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    fn bit(alg: Algorithm) -> u16 {
        let i = Self::ALL.iter().position(|a| *a == alg).unwrap_or(15);
        1 << i
    }

    /// Every algorithm.
    pub fn all() -> Self {
        Self((1 << Self::ALL.len()) - 1)
    }

    /// The set of these algorithms.
    pub fn of(algs: impl IntoIterator<Item = Algorithm>) -> Self {
        Self(algs.into_iter().fold(0, |acc, a| acc | Self::bit(a)))
    }

    /// Whether `alg` is in the set.
    pub fn contains(self, alg: Algorithm) -> bool {
        self.0 & Self::bit(alg) != 0
    }

    /// The intersection.
    pub fn and(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Whether it holds nothing.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The algorithms, in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        Self::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// The compiled algorithm.
pub fn algorithm(raw: RawAlgorithm) -> Algorithm {
    match raw {
        RawAlgorithm::HS256 => Algorithm::HS256,
        RawAlgorithm::HS384 => Algorithm::HS384,
        RawAlgorithm::HS512 => Algorithm::HS512,
        RawAlgorithm::RS256 => Algorithm::RS256,
        RawAlgorithm::RS384 => Algorithm::RS384,
        RawAlgorithm::RS512 => Algorithm::RS512,
        RawAlgorithm::PS256 => Algorithm::PS256,
        RawAlgorithm::PS384 => Algorithm::PS384,
        RawAlgorithm::PS512 => Algorithm::PS512,
        RawAlgorithm::ES256 => Algorithm::ES256,
        RawAlgorithm::ES384 => Algorithm::ES384,
        RawAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// The JWS name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        // `Algorithm` is non-exhaustive; a future variant is nothing we verify.
        _ => "unsupported",
    }
}

/// The algorithm named exactly (case-sensitive) by a token header; `none` and every other
/// name are unknown.
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    AlgSet::ALL.into_iter().find(|a| alg_name(*a) == name)
}

// === impl KeyFamily ===

impl KeyFamily {
    /// The algorithms this key type can verify.
    pub fn algorithms(self) -> AlgSet {
        use Algorithm::*;
        match self {
            Self::Hmac => AlgSet::of([HS256, HS384, HS512]),
            Self::Rsa => AlgSet::of([RS256, RS384, RS512, PS256, PS384, PS512]),
            Self::EcP256 => AlgSet::of([ES256]),
            Self::EcP384 => AlgSet::of([ES384]),
            Self::Ed25519 => AlgSet::of([EdDSA]),
        }
    }

    /// For messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hmac => "HMAC",
            Self::Rsa => "RSA",
            Self::EcP256 => "EC P-256",
            Self::EcP384 => "EC P-384",
            Self::Ed25519 => "Ed25519",
        }
    }
}

// === impl VerifyKey ===

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    fn new(
        kid: Option<&str>,
        key: DecodingKey,
        family: KeyFamily,
        algorithms: AlgSet,
        material: &[u8],
    ) -> Self {
        let fp = crate::secret::sha256(material);
        Self {
            kid: kid.map(Into::into),
            key,
            family,
            algorithms,
            revoked: AtomicBool::new(false),
            leak_checked: AtomicU64::new(0),
            issuer: None,
            fingerprint: fp,
        }
    }

    /// This key, verifying `issuer`'s tokens.
    #[must_use]
    pub fn for_issuer(mut self, issuer: &Arc<str>) -> Self {
        self.issuer = Some(Arc::clone(issuer));
        self
    }

    /// Whether a key refresh dropped this key, or a key document of its issuer (read by any
    /// authenticator) published its private half: it verifies nothing, cached verifications
    /// included. The leak memory is read once per key after each leak found:
    /// no lock otherwise.
    pub fn is_revoked(&self) -> bool {
        if self.revoked.load(Ordering::Acquire) {
            return true;
        }
        let generation = LEAK_GENERATION.load(Ordering::Acquire);
        if generation != 0 && self.leak_checked.load(Ordering::Acquire) != generation {
            if is_leaked(self) {
                self.revoked.store(true, Ordering::Release);
                return true;
            }
            self.leak_checked.store(generation, Ordering::Release);
        }
        false
    }
}

/// A PEM public key or certificate with the algorithms it may verify.
pub fn from_pem(
    pem: &[u8],
    kid: Option<&str>,
    algorithms: &[RawAlgorithm],
) -> Result<VerifyKey, KeyError> {
    let pem = ::pem::parse(pem).map_err(|_| KeyError::NotPem)?;
    let (family, key, material) = match pem.tag() {
        "CERTIFICATE" => {
            let cert = Certificate::from_der(pem.contents()).ok_or(KeyError::Malformed)?;
            spki(&cert.public_key())?
        }
        "PUBLIC KEY" => spki(&Spki::from_der(pem.contents()).ok_or(KeyError::Malformed)?)?,
        "RSA PUBLIC KEY" => {
            check_rsa_modulus(pkcs1_modulus(pem.contents()).ok_or(KeyError::Malformed)?)?;
            (
                KeyFamily::Rsa,
                DecodingKey::from_rsa_der(pem.contents()),
                pem.contents().to_vec(),
            )
        }
        l if l.contains("PRIVATE") => return Err(KeyError::PrivateKey),
        _ => return Err(KeyError::NotPem),
    };
    let algs = checked_algorithms(family, algorithms)?;
    Ok(VerifyKey::new(kid, key, family, algs, &material))
}

fn spki(info: &Spki<'_>) -> Result<(KeyFamily, DecodingKey, Vec<u8>), KeyError> {
    let oid = info.algorithm;
    let bits = info.key;
    if oid == x509::OID_RSA_ENCRYPTION {
        check_rsa_modulus(pkcs1_modulus(bits).ok_or(KeyError::Malformed)?)?;
        Ok((
            KeyFamily::Rsa,
            DecodingKey::from_rsa_der(bits),
            bits.to_vec(),
        ))
    } else if oid == x509::OID_EC_PUBLIC_KEY {
        let curve = info.parameter_oid.ok_or(KeyError::Malformed)?;
        let family = if curve == x509::OID_P256 {
            KeyFamily::EcP256
        } else if curve == x509::OID_P384 {
            KeyFamily::EcP384
        } else {
            return Err(KeyError::Unsupported);
        };
        Ok((family, DecodingKey::from_ec_der(bits), bits.to_vec()))
    } else if oid == x509::OID_ED25519 {
        Ok((
            KeyFamily::Ed25519,
            DecodingKey::from_ed_der(bits),
            bits.to_vec(),
        ))
    } else {
        Err(KeyError::Unsupported)
    }
}

fn checked_algorithms(family: KeyFamily, algorithms: &[RawAlgorithm]) -> Result<AlgSet, KeyError> {
    if algorithms.is_empty() {
        return Err(KeyError::NoAlgorithms);
    }
    let fits = family.algorithms();
    for a in algorithms {
        let a = algorithm(*a);
        if !fits.contains(a) {
            return Err(KeyError::AlgorithmMismatch(alg_name(a), family.as_str()));
        }
    }
    Ok(AlgSet::of(algorithms.iter().map(|a| algorithm(*a))))
}

/// An HMAC secret, refused when it is short or when it is really a public key in some encoding
/// (PEM, certificate, DER, SSH, JWK): configs that hold such a "secret" are the setup of every
/// RS256→HS256 confusion attack.
pub fn from_hmac(
    secret: &[u8],
    kid: Option<&str>,
    algorithms: &[RawAlgorithm],
) -> Result<VerifyKey, KeyError> {
    if looks_like_public_key(secret) {
        return Err(KeyError::SecretLooksLikePublicKey);
    }
    let algs = checked_algorithms(KeyFamily::Hmac, algorithms)?;
    let needed = algs
        .iter()
        .map(|a| match a {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        })
        .max()
        .unwrap_or(32);
    if secret.len() < needed {
        return Err(KeyError::SecretTooShort(secret.len(), needed));
    }
    Ok(VerifyKey::new(
        kid,
        DecodingKey::from_secret(secret),
        KeyFamily::Hmac,
        algs,
        secret,
    ))
}

fn looks_like_public_key(secret: &[u8]) -> bool {
    let text = String::from_utf8_lossy(secret);
    let t = text.trim();
    t.contains("-----BEGIN")
        || ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
            .iter()
            .any(|p| t.starts_with(p))
        || (t.starts_with('{') && t.contains("\"kty\""))
        // A key or certificate with anything after it, too.
        || x509::first_element(secret)
            .is_some_and(|e| Spki::from_der(e).is_some() || Certificate::from_der(e).is_some())
        || is_der_sequence(secret)
}

/// A DER SEQUENCE spanning the whole input (PKCS#1 keys and every other ASN.1 structure).
fn is_der_sequence(b: &[u8]) -> bool {
    if b.len() < 2 || b[0] != 0x30 {
        return false;
    }
    let (len, header) = match b[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 if b.len() > 2 => (usize::from(b[2]), 3),
        0x82 if b.len() > 3 => (usize::from(b[2]) << 8 | usize::from(b[3]), 4),
        _ => return false,
    };
    header + len == b.len()
}

/// One JWK as JSON text (inline config or a JWKS file entry).
pub fn from_jwk_json(text: &str, remote: bool) -> Result<VerifyKey, KeyError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| KeyError::Jwk(e.to_string()))?;
    refuse_private(&v)?;
    let jwk: Jwk = serde_json::from_value(v).map_err(|e| KeyError::Jwk(e.to_string()))?;
    from_jwk(&jwk, remote)
}

/// A JWK's family and the public material its fingerprint is taken of, whatever its `use`,
/// `key_ops` or `alg` say: the bytes a PEM file's key holds (the PKCS#1 `RSAPublicKey` DER,
/// the uncompressed EC point, the raw Ed25519 key), so one key has one fingerprint in any
/// encoding.
///
/// Why: the fingerprint was the JWK's base64 text, a PEM key's its DER bits: a key published
/// with its private half in a JWKS, also configured as a `pem_file`, went on verifying under
/// the PEM copy (and any re-encoding of `n`, a leading zero, escaped the text compare).
/// Regression: jwt::keys::tests::a_key_has_one_fingerprint_in_pem_and_jwk
fn public_material(jwk: &Jwk, remote: bool) -> Result<(KeyFamily, Vec<u8>), KeyError> {
    use base64::Engine as _;
    let decode = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| KeyError::Malformed)
    };
    Ok(match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = decode(&p.n)?;
            check_rsa_modulus(&n)?;
            (KeyFamily::Rsa, rsa_public_key_der(&n, &decode(&p.e)?))
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (family, size) = match p.curve {
                EllipticCurve::P256 => (KeyFamily::EcP256, 32),
                EllipticCurve::P384 => (KeyFamily::EcP384, 48),
                _ => return Err(KeyError::Unsupported),
            };
            let mut point = vec![0x04];
            for c in [decode(&p.x)?, decode(&p.y)?] {
                let c = unsigned(&c);
                if c.len() > size {
                    return Err(KeyError::Malformed);
                }
                point.resize(point.len() + size - c.len(), 0);
                point.extend_from_slice(c);
            }
            (family, point)
        }
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (KeyFamily::Ed25519, decode(&p.x)?),
            _ => return Err(KeyError::Unsupported),
        },
        AlgorithmParameters::OctetKey(p) => {
            if remote {
                return Err(KeyError::RemoteSymmetric);
            }
            (KeyFamily::Hmac, p.value.clone().into_bytes())
        }
        _ => return Err(KeyError::Unsupported),
    })
}

/// A big-endian unsigned integer without its leading zeros.
fn unsigned(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The DER of PKCS#1's `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap_or(0));
        } else {
            let bytes = len.to_be_bytes();
            let bytes = unsigned(&bytes);
            out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0));
            out.extend_from_slice(bytes);
        }
    }
    fn integer(out: &mut Vec<u8>, value: &[u8]) {
        let value = unsigned(value);
        let pad = value.first().is_none_or(|&b| b & 0x80 != 0);
        out.push(0x02);
        length(out, value.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(value);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = vec![0x30];
    length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// One parsed JWK.
pub fn from_jwk(jwk: &Jwk, remote: bool) -> Result<VerifyKey, KeyError> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err(KeyError::NotForSignatures);
    }
    // RFC 7517 4.3: a key whose `key_ops` are given is for those operations only; one not
    // listing `verify` (an encryption key, a wrapping key) never verifies a signature.
    // Regression: jwt::keys::tests::key_ops_without_verify_refused
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| matches!(o, KeyOperations::Verify)))
    {
        return Err(KeyError::NotForSignatures);
    }
    let (family, material) = public_material(jwk, remote)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| KeyError::Malformed)?;
    let algorithms = match &jwk.common.key_algorithm {
        None => family.algorithms(),
        Some(alg) => {
            let alg = jwk_alg(alg).ok_or(KeyError::NotForSignatures)?;
            if !family.algorithms().contains(alg) {
                return Err(KeyError::AlgorithmMismatch(alg_name(alg), family.as_str()));
            }
            AlgSet::of([alg])
        }
    };
    let algorithms = if family == KeyFamily::Hmac {
        // RFC 7518 §3.2: the key is at least as long as the hash; a shorter key keeps only the
        // algorithms it is long enough for.
        let bytes = key.try_get_as_bytes().map_err(|_| KeyError::Malformed)?;
        // Why: the guard `hmac` secrets have was missing here, and a `jwks_file` holding a
        // public key's PEM as an `oct` key verified HS256 tokens anyone with that public key
        // could sign.
        // Regression: jwt::keys::tests::an_oct_jwk_holding_a_public_key_is_refused
        if looks_like_public_key(bytes) {
            return Err(KeyError::SecretLooksLikePublicKey);
        }
        let len = bytes.len();
        let long_enough = AlgSet::of(
            [
                (Algorithm::HS256, 32),
                (Algorithm::HS384, 48),
                (Algorithm::HS512, 64),
            ]
            .into_iter()
            .filter(|(_, n)| len >= *n)
            .map(|(a, _)| a),
        );
        let kept = algorithms.and(long_enough);
        if kept.is_empty() {
            return Err(KeyError::SecretTooShort(
                len,
                if len < 32 { 32 } else { 64 },
            ));
        }
        kept
    } else {
        algorithms
    };
    Ok(VerifyKey::new(
        jwk.common.key_id.as_deref(),
        key,
        family,
        algorithms,
        &material,
    ))
}

fn jwk_alg(alg: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A JWKS document: every usable key, and how many were skipped (unsupported, encryption
/// keys, weak RSA keys and the like are skipped, not fatal: IdPs publish them beside signing
/// keys). A document holding any private key is refused whole: whoever published it has
/// leaked it, and every key beside it is suspect.
pub fn parse_jwks(text: &[u8], remote: bool) -> Result<(Vec<VerifyKey>, usize), KeyError> {
    let members = jwks_members(text)?;
    for v in &members {
        refuse_private(v)?;
    }
    let mut keys = Vec::with_capacity(members.len());
    let mut skipped = 0;
    for v in members {
        match serde_json::from_value::<Jwk>(v)
            .map_err(|e| KeyError::Jwk(e.to_string()))
            .and_then(|jwk| from_jwk(&jwk, remote))
        {
            Ok(k) => keys.push(k),
            Err(_) => skipped += 1,
        }
    }
    Ok((keys, skipped))
}

/// The `keys` of a JWKS document, each as JSON.
fn jwks_members(text: &[u8]) -> Result<Vec<serde_json::Value>, KeyError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(text).map_err(|e| KeyError::Jwk(e.to_string()))?;
    Ok(doc.keys)
}

/// A leaked key: its `kid`, and its fingerprint when its public part parses.
pub type Leaked = (Option<Box<str>>, Option<[u8; 32]>);

/// The keys a JWKS document published the private half of, as public keys (`kid`, and the
/// fingerprint when the key parses): whoever read the document can sign with them.
pub fn leaked(text: &[u8]) -> Vec<Leaked> {
    jwks_members(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|v| refuse_private(v).is_err())
        .map(|v| {
            let kid = v
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map(Into::into);
            // Why its public part alone: a private JWK says `key_ops: ["sign"]` (what PyJWT
            // writes), which a verifying key refuses, and the leak was remembered by `kid`
            // only: the next clean document, or the key under another `kid`, trusted it again.
            // Regression: jwt::keys::tests::a_key_leaked_for_signing_is_remembered_by_its_fingerprint
            let fingerprint = serde_json::from_value::<Jwk>(v)
                .ok()
                .and_then(|jwk| public_material(&jwk, true).ok())
                .map(|(_, material)| crate::secret::sha256(&material));
            (kid, fingerprint)
        })
        .collect()
}

/// The keys whose private half an issuer's key document published, by issuer and
/// fingerprint, for the life of the process (at most [`MAX_LEAKED`]).
static LEAKED: std::sync::Mutex<std::collections::BTreeSet<(Arc<str>, [u8; 32])>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Bumped whenever [`LEAKED`] grows: a key checked at an older generation is checked again.
static LEAK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// How many leaked fingerprints are remembered.
const MAX_LEAKED: usize = 65_536;

/// Remembers the keys `leaked` names by fingerprint as leaked for `issuer`: none of its key
/// sets verifies with them again (another authenticator's, a statically configured copy in
/// the same encoding), and none of its key documents is trusted with them ([`is_leaked`],
/// [`VerifyKey::is_revoked`]).
///
/// Why: a leaked key left the set, but the next clean document (the IdP's likeliest fix:
/// remove `d`, keep the key) put it back, and anyone who had read the leaked document could
/// sign tokens again; another authenticator fetching the same document went on trusting it.
/// Why by issuer: a `d` is not checked against the key it sits beside, so any issuer's
/// document could name another issuer's public key "leaked" and switch it off.
/// Regression: jwt::keys::tests::a_leaked_key_is_never_trusted_again,
/// jwt::keys::tests::a_key_held_anywhere_stops_verifying_once_found_leaked
pub fn remember_leaked(issuer: &Arc<str>, leaked: &[Leaked]) {
    let mut set = LEAKED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = set.len();
    for fp in leaked.iter().filter_map(|(_, fp)| *fp) {
        let entry = (Arc::clone(issuer), fp);
        if set.len() < MAX_LEAKED {
            set.insert(entry);
        } else if !set.contains(&entry) {
            tracing::error!(
                "More than {MAX_LEAKED} leaked keys: this one is not remembered past its removal from the set that found it"
            );
        }
    }
    if set.len() > before {
        LEAK_GENERATION.fetch_add(1, Ordering::AcqRel);
    }
}

/// Whether a key document once published `key`'s private half.
pub fn is_leaked(key: &VerifyKey) -> bool {
    key.issuer.as_ref().is_some_and(|issuer| {
        LEAKED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&(Arc::clone(issuer), key.fingerprint))
    })
}

// === impl KeySet ===

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter()).finish()
    }
}

impl KeySet {
    /// Builds a set; a later key with the same `kid` as an earlier one is dropped.
    pub fn new(keys: Vec<VerifyKey>) -> Self {
        Self::from_arcs(keys.into_iter().map(Arc::new).collect())
    }

    fn from_arcs(keys: Vec<Arc<VerifyKey>>) -> Self {
        let mut out = Self::default();
        for k in keys {
            if let Some(kid) = &k.kid {
                if out.by_kid.contains_key(kid) {
                    continue;
                }
                out.by_kid.insert(kid.clone(), out.keys.len());
            }
            out.keys.push(k);
        }
        out
    }

    /// The next version of a fetched set: keys that did not change keep their `Arc` (so cached
    /// verifications stay valid), keys that disappeared are marked revoked.
    pub fn succeed(&self, fresh: Vec<VerifyKey>) -> Self {
        let mut kept = Vec::with_capacity(fresh.len());
        for k in fresh {
            let old = self.keys.iter().find(|o| {
                o.fingerprint == k.fingerprint && o.kid == k.kid && o.algorithms == k.algorithms
            });
            kept.push(old.map_or_else(|| Arc::new(k), Arc::clone));
        }
        let next = Self::from_arcs(kept);
        for old in &self.keys {
            if !next.keys.iter().any(|k| Arc::ptr_eq(k, old)) {
                old.revoked.store(true, Ordering::Release);
            }
        }
        next
    }

    /// This set without the keys `leaked` names (by `kid` or by fingerprint), which are
    /// marked revoked (cached verifications under them included); `None` if it holds none.
    pub fn without_leaked(&self, leaked: &[Leaked]) -> Option<Self> {
        let hit = |k: &VerifyKey| {
            leaked.iter().any(|(kid, fp)| {
                (kid.is_some() && *kid == k.kid) || fp.is_some_and(|f| f == k.fingerprint)
            })
        };
        if !self.keys.iter().any(|k| hit(k)) {
            return None;
        }
        let mut kept = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            if hit(k) {
                k.revoked.store(true, Ordering::Release);
            } else {
                kept.push(Arc::clone(k));
            }
        }
        Some(Self::from_arcs(kept))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key with this `kid` (never one a refresh has dropped).
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid
            .get(kid)
            .and_then(|&i| self.keys.get(i))
            .filter(|k| !k.is_revoked())
    }

    /// Keys that may verify `alg`.
    pub fn for_alg(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(alg) && !k.is_revoked())
    }

    /// A digest of every key (material, kid, algorithms): equal digests, equal sets.
    pub fn fingerprint(&self, digest: &mut aws_lc_rs::digest::Context) {
        for k in &self.keys {
            digest.update(&k.fingerprint);
            digest.update(k.kid.as_deref().unwrap_or("").as_bytes());
            digest.update(&k.algorithms.0.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
