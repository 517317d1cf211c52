use rcgen::{CertificateParams, KeyPair, PublicKeyData as _};

use super::*;
use crate::authn::jwt::mint::pem;
use crate::config::raw::RawAlgorithm as A;

/// What, the PEM text, the configured algorithms, the key type or the error.
type Case = (
    &'static str,
    String,
    &'static [RawAlgorithm],
    Result<KeyFamily, KeyError>,
);

fn spki_der(algorithm: &[u8], parameter_oid: Option<&[u8]>, key: &[u8]) -> Vec<u8> {
    let tlv = |tag: u8, v: &[u8]| [&[tag, v.len() as u8][..], v].concat();
    let mut id = tlv(0x06, algorithm);
    if let Some(p) = parameter_oid {
        id.extend(tlv(0x06, p));
    }
    let bits = [&[0][..], key].concat();
    tlv(0x30, &[tlv(0x30, &id), tlv(0x03, &bits)].concat())
}

#[test]
fn from_pem_labels_and_key_types() {
    use super::KeyError as E;
    use super::KeyFamily as F;
    let ec = KeyPair::generate().unwrap();
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = |k: &KeyPair| {
        let p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.self_signed(k).unwrap()
    };
    let ec_cert = cert(&ec);
    let point = ec.public_key_raw();
    let cases: Vec<Case> = vec![
        ("P-256", ec.public_key_pem(), &[A::ES256], Ok(F::EcP256)),
        ("P-384", p384.public_key_pem(), &[A::ES384], Ok(F::EcP384)),
        ("Ed25519", ed.public_key_pem(), &[A::EdDSA], Ok(F::Ed25519)),
        (
            "RSA",
            rsa.public_key_pem(),
            &[A::RS256, A::PS256],
            Ok(F::Rsa),
        ),
        (
            "P-256 certificate",
            ec_cert.pem(),
            &[A::ES256],
            Ok(F::EcP256),
        ),
        ("RSA certificate", cert(&rsa).pem(), &[A::RS512], Ok(F::Rsa)),
        (
            "PKCS#1",
            pem("RSA PUBLIC KEY", rsa.public_key_raw()),
            &[A::RS256],
            Ok(F::Rsa),
        ),
        (
            "text before",
            format!("issued by ops\n{}", ec.public_key_pem()),
            &[A::ES256],
            Ok(F::EcP256),
        ),
        (
            "PKCS#8",
            ec.serialize_pem(),
            &[A::ES256],
            Err(E::PrivateKey),
        ),
        (
            "SEC1",
            pem("EC PRIVATE KEY", b"x"),
            &[A::ES256],
            Err(E::PrivateKey),
        ),
        (
            "encrypted",
            pem("ENCRYPTED PRIVATE KEY", b"x"),
            &[A::ES256],
            Err(E::PrivateKey),
        ),
        (
            "CSR",
            pem("CERTIFICATE REQUEST", b"x"),
            &[A::ES256],
            Err(E::NotPem),
        ),
        ("not PEM", "ES256".into(), &[A::ES256], Err(E::NotPem)),
        (
            "certificate and a byte",
            pem("CERTIFICATE", &[ec_cert.der(), &[0][..]].concat()),
            &[A::ES256],
            Err(E::Malformed),
        ),
        (
            "garbage certificate",
            pem("CERTIFICATE", b"\x30\x00"),
            &[A::ES256],
            Err(E::Malformed),
        ),
        (
            "garbage key",
            pem("PUBLIC KEY", b"\x30\x00"),
            &[A::ES256],
            Err(E::Malformed),
        ),
        (
            "EC without a curve",
            pem(
                "PUBLIC KEY",
                &spki_der(x509::OID_EC_PUBLIC_KEY, None, point),
            ),
            &[A::ES256],
            Err(E::Malformed),
        ),
        (
            "secp256k1",
            pem(
                "PUBLIC KEY",
                &spki_der(
                    x509::OID_EC_PUBLIC_KEY,
                    Some(&[0x2b, 0x81, 0x04, 0x00, 0x0a]),
                    point,
                ),
            ),
            &[A::ES256],
            Err(E::Unsupported),
        ),
        (
            "unknown algorithm",
            pem("PUBLIC KEY", &spki_der(&[0x2a, 0x03], None, point)),
            &[A::ES256],
            Err(E::Unsupported),
        ),
        (
            "wrong algorithm",
            ec.public_key_pem(),
            &[A::RS256],
            Err(E::AlgorithmMismatch("RS256", "EC P-256")),
        ),
    ];
    for (what, text, algs, want) in cases {
        let got = from_pem(text.as_bytes(), None, algs).map(|k| k.family);
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn public_keys_in_der_are_not_hmac_secrets() {
    let ec = KeyPair::generate().unwrap();
    let spki = ec.subject_public_key_info();
    let cert = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&ec)
        .unwrap()
        .der()
        .to_vec();
    for (what, secret) in [
        ("key", spki.clone()),
        (
            "key and more",
            [spki.as_slice(), b"0123456789abcdef"].concat(),
        ),
        ("certificate", cert.clone()),
        ("certificate and more", [cert.as_slice(), &[0; 8]].concat()),
    ] {
        assert!(looks_like_public_key(&secret), "{what}");
    }
    assert!(!looks_like_public_key(&[0x42; 64]));
    assert!(!looks_like_public_key(
        b"\x30\x05 0123456789abcdef0123456789"
    ));
}

/// Regression: `key_ops` was ignored, so a key published for `encrypt` or `wrapKey` only
/// verified signatures.
#[test]
fn key_ops_without_verify_refused() {
    // RFC 8037's Ed25519 example key.
    let jwk = |extra: &str| {
        format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"{extra}}}"#
        )
    };
    assert!(from_jwk_json(&jwk(""), true).is_ok());
    assert!(from_jwk_json(&jwk(r#","key_ops":["verify"]"#), true).is_ok());
    assert!(from_jwk_json(&jwk(r#","key_ops":["sign","verify"]"#), true).is_ok());
    for ops in [r#"["encrypt"]"#, r#"["wrapKey","unwrapKey"]"#, "[]"] {
        assert!(
            matches!(
                from_jwk_json(&jwk(&format!(r#","key_ops":{ops}"#)), true),
                Err(KeyError::NotForSignatures)
            ),
            "{ops}"
        );
    }
}

/// Regression: a JWK's private members were dropped by the parser, so a JWKS publishing the
/// private half of its keys was trusted without a word (PEM private keys were refused).
#[test]
fn private_jwks_refused() {
    // RFC 8037's Ed25519 example key, public and private.
    let public =
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    let private = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}"#;
    assert!(from_jwk_json(public, true).is_ok());
    for remote in [true, false] {
        assert_eq!(
            from_jwk_json(private, remote).err(),
            Some(KeyError::PrivateJwk),
            "remote {remote}"
        );
        let doc = format!(r#"{{"keys":[{public},{private}]}}"#);
        assert_eq!(
            parse_jwks(doc.as_bytes(), remote).err(),
            Some(KeyError::PrivateJwk),
            "a document with one private key is refused whole"
        );
    }
    // RSA's and EC's private members too, whatever else the key says.
    for member in ["p", "q", "dp", "dq", "qi", "oth"] {
        let rsa = format!(r#"{{"kty":"RSA","n":"AQAB","e":"AQAB","{member}":"AQAB"}}"#);
        assert_eq!(
            from_jwk_json(&rsa, false).err(),
            Some(KeyError::PrivateJwk),
            "{member}"
        );
    }
    // An `oct` key's `k` is its secret: judged as an HMAC key, not as a leaked private key.
    let oct = r#"{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}"#;
    assert_ne!(from_jwk_json(oct, false).err(), Some(KeyError::PrivateJwk));
}

/// Regression: a 1024-bit RSA key was kept as usable, and every token it signed failed as a
/// bad signature (the verifier refuses it) while the set read as ready.
#[test]
fn weak_rsa_keys_refused() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let modulus = |bits: usize| {
        let mut n = vec![0xd5u8; bits / 8];
        n[0] = 0xc1;
        n
    };
    let jwk = |bits: usize| {
        format!(
            r#"{{"kty":"RSA","n":"{}","e":"AQAB"}}"#,
            b64(&modulus(bits))
        )
    };
    assert_eq!(
        from_jwk_json(&jwk(1024), true).err(),
        Some(KeyError::WeakRsa(1024))
    );
    assert_eq!(
        from_jwk_json(&jwk(2040), true).err(),
        Some(KeyError::WeakRsa(2040))
    );
    assert!(from_jwk_json(&jwk(2048), true).is_ok());
    assert!(from_jwk_json(&jwk(4096), true).is_ok());
    // In a JWKS the weak key is skipped, as other unusable keys are.
    let doc = format!(r#"{{"keys":[{},{}]}}"#, jwk(1024), jwk(2048));
    let (keys, skipped) = parse_jwks(doc.as_bytes(), true).unwrap();
    assert_eq!((keys.len(), skipped), (1, 1));
    // PEM: PKCS#1 and SPKI (rsaEncryption).
    use crate::tls::x509::tests::tlv;
    let pkcs1 = |bits: usize| {
        let n = [&[0u8][..], &modulus(bits)].concat();
        tlv(0x30, &[tlv(0x02, &n), tlv(0x02, &[1, 0, 1])].concat())
    };
    assert_eq!(
        from_pem(
            pem("RSA PUBLIC KEY", &pkcs1(1024)).as_bytes(),
            None,
            &[A::RS256]
        )
        .err(),
        Some(KeyError::WeakRsa(1024))
    );
    assert!(
        from_pem(
            pem("RSA PUBLIC KEY", &pkcs1(2048)).as_bytes(),
            None,
            &[A::RS256]
        )
        .is_ok()
    );
    let rsa_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let spki_long = |key: &[u8]| {
        // `spki_der` writes short-form lengths only; a 1024-bit key needs the long form.
        let id = tlv(0x30, &[tlv(0x06, &rsa_oid), vec![0x05, 0x00]].concat());
        let bits = tlv(0x03, &[&[0][..], key].concat());
        tlv(0x30, &[id, bits].concat())
    };
    assert_eq!(
        from_pem(
            pem("PUBLIC KEY", &spki_long(&pkcs1(1024))).as_bytes(),
            None,
            &[A::RS256]
        )
        .err(),
        Some(KeyError::WeakRsa(1024))
    );
}

/// Regression: a refused document (it published a private key) left the set as it was, and
/// the leaked key went on verifying tokens anyone could now sign.
#[test]
fn a_leaked_key_is_never_trusted_again() {
    let issuer: Arc<str> = Arc::from("https://never-again.example");
    let ec = KeyPair::generate().unwrap();
    let key = || {
        from_pem(ec.public_key_pem().as_bytes(), Some("k9"), &[A::ES256])
            .unwrap()
            .for_issuer(&issuer)
    };
    let other = KeyPair::generate().unwrap();
    assert!(!is_leaked(&key()));
    remember_leaked(&issuer, &[(Some("k9".into()), Some(key().fingerprint))]);
    assert!(is_leaked(&key()), "under any kid, from any later document");
    let other = from_pem(other.public_key_pem().as_bytes(), Some("k9"), &[A::ES256])
        .unwrap()
        .for_issuer(&issuer);
    assert!(!is_leaked(&other), "another key under the same kid is not");
    assert!(!other.is_revoked());
}

#[test]
fn a_key_held_anywhere_stops_verifying_once_found_leaked() {
    // Two sets holding the same key, as two authenticators fetching one JWKS do, and a
    // pinned copy: a leak one of them finds revokes it in all, for its issuer only.
    let issuer: Arc<str> = Arc::from("https://held-anywhere.example");
    let elsewhere: Arc<str> = Arc::from("https://another-issuer.example");
    let ec = KeyPair::generate().unwrap();
    let key = |iss: &Arc<str>| {
        from_pem(ec.public_key_pem().as_bytes(), Some("k7"), &[A::ES256])
            .unwrap()
            .for_issuer(iss)
    };
    let (one, two, pinned, theirs) = (
        KeySet::new(vec![key(&issuer)]),
        KeySet::new(vec![key(&issuer)]),
        Arc::new(key(&issuer)),
        KeySet::new(vec![key(&elsewhere)]),
    );
    assert!(one.by_kid("k7").is_some() && !pinned.is_revoked());
    remember_leaked(&issuer, &[(None, Some(key(&issuer).fingerprint))]);
    assert!(one.by_kid("k7").is_none());
    assert!(two.by_kid("k7").is_none());
    assert!(pinned.is_revoked());
    // Another issuer's document cannot switch off a key it does not own by naming it.
    assert!(theirs.by_kid("k7").is_some());
}

#[test]
fn a_leaked_key_stops_verifying() {
    // RFC 8037's Ed25519 key (public, then with `d`), and a second, kid-less, P-256 key.
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let public = format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"{x}"}}"#);
    let ec = KeyPair::generate().unwrap();
    let other = from_pem(ec.public_key_pem().as_bytes(), Some("k2"), &[A::ES256]).unwrap();
    let held = KeySet::new(vec![from_jwk_json(&public, true).unwrap(), other]);
    let k1 = Arc::clone(held.by_kid("k1").unwrap());
    // Published again with its private half, under another kid: found by its fingerprint.
    let doc = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"renamed","x":"{x}","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}}]}}"#
    );
    let leaked = leaked(doc.as_bytes());
    assert_eq!(leaked.len(), 1);
    let next = held.without_leaked(&leaked).expect("a held key leaked");
    assert!(k1.is_revoked(), "cached verifications under it end too");
    assert!(next.by_kid("k1").is_none());
    assert!(next.by_kid("k2").is_some(), "the others stay");
    // A document leaking a key the set does not hold changes nothing.
    assert!(next.without_leaked(&leaked).is_none());
}

/// A private JWK says what it is for: `key_ops: ["sign"]` (PyJWT writes it so), which a
/// verifying key refuses. Its leak is remembered by the public part all the same, so a clean
/// document, or the key under another `kid`, is never trusted with it again.
#[test]
fn a_key_leaked_for_signing_is_remembered_by_its_fingerprint() {
    let issuer: Arc<str> = Arc::from("https://leaked-for-signing.example");
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let public = format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"{x}"}}"#);
    let key = || from_jwk_json(&public, true).unwrap().for_issuer(&issuer);
    let doc = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k1-signing","use":"sig","key_ops":["sign"],"alg":"EdDSA","x":"{x}","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}}]}}"#
    );
    let leaked = leaked(doc.as_bytes());
    assert_eq!(leaked.len(), 1);
    assert_eq!(
        leaked[0].1,
        Some(key().fingerprint),
        "found by its public part"
    );
    let held = KeySet::new(vec![key()]);
    assert!(held.without_leaked(&leaked).is_some(), "a held key leaked");
    assert!(!is_leaked(&key()));
    remember_leaked(&issuer, &leaked);
    assert!(
        is_leaked(&key()),
        "under its own kid, from the next clean document"
    );
}

/// An `oct` JWK (a `jwks_file`'s) whose secret is a public key's PEM is refused as an `hmac`
/// secret is: tokens HMAC'd with the public key would verify.
#[test]
fn an_oct_jwk_holding_a_public_key_is_refused() {
    use base64::Engine as _;
    let ec = KeyPair::generate().unwrap();
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ec.public_key_pem());
    let jwk = format!(r#"{{"kty":"oct","kid":"sym","k":"{k}"}}"#);
    assert!(matches!(
        from_jwk_json(&jwk, false),
        Err(KeyError::SecretLooksLikePublicKey)
    ));
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let jwk = format!(r#"{{"kty":"oct","kid":"sym","k":"{random}"}}"#);
    assert!(
        from_jwk_json(&jwk, false).is_ok(),
        "a random secret is kept"
    );
}

/// One key has one fingerprint, from a PEM file or a JWK, whatever the JWK's spelling of its
/// numbers (a leading zero in `n`): a leak found in a JWKS revokes the PEM copy too.
#[test]
fn a_key_has_one_fingerprint_in_pem_and_jwk() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    // EC P-256: the raw key is the uncompressed point.
    let ec = KeyPair::generate().unwrap();
    let point = ec.public_key_raw();
    let jwk = format!(
        r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
        b64(&point[1..33]),
        b64(&point[33..65])
    );
    let pem = from_pem(ec.public_key_pem().as_bytes(), None, &[A::ES256]).unwrap();
    assert_eq!(
        pem.fingerprint,
        from_jwk_json(&jwk, true).unwrap().fingerprint
    );
    // RSA: n and e read from the PKCS#1 DER, then written as a JWK (and with a leading zero).
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let der = rsa.public_key_raw();
    let integers = {
        // SEQUENCE { INTEGER n, INTEGER e }, long-form lengths.
        let read_len = |d: &[u8], at: &mut usize| -> usize {
            let first = d[*at];
            *at += 1;
            if first < 0x80 {
                return usize::from(first);
            }
            let n = usize::from(first & 0x7f);
            let len = d[*at..*at + n]
                .iter()
                .fold(0, |a, &b| (a << 8) | usize::from(b));
            *at += n;
            len
        };
        let mut at = 1;
        read_len(der, &mut at);
        let mut out = Vec::new();
        for _ in 0..2 {
            assert_eq!(der[at], 0x02);
            at += 1;
            let len = read_len(der, &mut at);
            out.push(der[at..at + len].to_vec());
            at += len;
        }
        out
    };
    let n = integers[0].strip_prefix(&[0u8][..]).unwrap_or(&integers[0]);
    let pem = from_pem(rsa.public_key_pem().as_bytes(), None, &[A::RS256]).unwrap();
    for n in [n.to_vec(), [&[0u8][..], n].concat()] {
        let jwk = format!(
            r#"{{"kty":"RSA","n":"{}","e":"{}"}}"#,
            b64(&n),
            b64(&integers[1])
        );
        assert_eq!(
            pem.fingerprint,
            from_jwk_json(&jwk, true).unwrap().fingerprint,
            "n of {} bytes",
            n.len()
        );
    }
}
