//! Certificates and keys: loading PEM files into rustls types, and generating test certificates.
//!
//! Invariants:
//! - A [`LoadedCert`] always has a non-empty chain whose leaf matches its private key.
//! - No error message ever contains key material: PEM parser details (which may quote input
//!   lines) are replaced by fixed descriptions, and only paths are named.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::x509::{Certificate, GeneralName};

/// A certificate chain and key loaded from PEM files.
pub struct LoadedCert {
    /// The chain (leaf first) and its signing key, ready for a rustls resolver.
    pub key: Arc<CertifiedKey>,
    /// The leaf's subject alternative names: DNS names (lowercased, without a trailing dot) and
    /// IP addresses as text, in certificate order.
    pub names: Vec<String>,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Why clients would refuse the leaf now (outside its validity, or its extended key usage
    /// leaves out the purpose), if they would: the caller decides whether that refuses the
    /// config ([`crate::config`]: a reload replacing a certificate served now) or warns.
    pub unusable: Option<String>,
}

/// The configuration field a [`TlsError`] is about, so diagnostics can point at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsField {
    /// The certificate chain file.
    Cert,
    /// The private key file.
    Key,
    /// The names a certificate is served for.
    ServerNames,
    /// The CA bundle trusted for upstreams.
    CaFile,
    /// The TLS configuration as a whole (not tied to one field).
    Tls,
}

/// Why a certificate, key or TLS configuration could not be loaded or built.
///
/// Display is lowercase, names the file, and never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", crate::secret::shown_path(path))]
    Read {
        /// Which field named the file.
        field: TlsField,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{}: malformed PEM: {reason}", path.display())]
    InvalidPem {
        /// Which field named the file.
        field: TlsField,
        /// The file.
        path: PathBuf,
        /// A fixed description (never the offending input, which could be a key).
        reason: &'static str,
    },
    /// The file holds no `CERTIFICATE` section.
    #[error("{}: no certificate found in PEM file", path.display())]
    NoCertificate {
        /// Which field named the file.
        field: TlsField,
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the file could not be parsed or used.
    #[error("{}: invalid certificate: {reason}", path.display())]
    InvalidCertificate {
        /// Which field named the file.
        field: TlsField,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no private key section.
    #[error(
        "{}: no private key found in PEM file (expected PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key file holds an encrypted private key only.
    #[error(
        "{}: the private key is encrypted; give it unencrypted (`openssl pkey -in KEY -out NEW`) and keep the file readable by the gateway only",
        path.display()
    )]
    EncryptedKey {
        /// The key file.
        path: PathBuf,
    },
    /// The private key is of a type or curve the crypto provider does not support.
    #[error("{}: unsupported private key: {reason}", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// The provider's description (it does not quote the key).
        reason: String,
    },
    /// The private key is not the one the leaf certificate was issued for.
    #[error(
        "{}: private key does not match certificate {}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// A configured server name is neither a DNS name, a `*.` wildcard, nor an IP address.
    #[error(
        "invalid server name {name:?}: expected a DNS name, a wildcard such as *.example.com, or an IP address"
    )]
    InvalidServerName {
        /// The name as configured.
        name: String,
    },
    /// An IP address in the `server_names` of an entry that is not the default: clients send
    /// no SNI for an address, so the entry is never chosen for a connection to it, and every
    /// request for the address would be refused as misdirected.
    #[error(
        "server name {name}: an IP address is never sent as SNI, so only the first (default) entry serves it; move it there"
    )]
    AddressNotDefault {
        /// The address as configured.
        name: String,
    },
    /// A certificate that is not the default has no names, so it could never be selected.
    #[error(
        "{}: certificate has no DNS or IP subject alternative names and is not the first (default) entry; set server_names",
        path.display()
    )]
    NoServerNames {
        /// The certificate file.
        path: PathBuf,
    },
    /// No certificate entries were configured.
    #[error("no certificates configured")]
    NoCertificates,
    /// Generating a test certificate failed (usually an invalid name).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("TLS configuration rejected: {0}")]
    Config(#[source] rustls::Error),
}

// === impl LoadedCert ===

impl fmt::Debug for LoadedCert {
    // Why: the signing key's own Debug is the provider's business; print only public facts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("names", &self.names)
            .field("chain_len", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

// === impl TlsField ===

impl TlsField {
    /// The YAML field name: `cert`, `key`, `server_names`, `ca_file` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cert => "cert",
            Self::Key => "key",
            Self::ServerNames => "server_names",
            Self::CaFile => "ca_file",
            Self::Tls => "tls",
        }
    }
}

// === impl TlsError ===

impl TlsError {
    /// The configuration field this error is about.
    pub fn tls_field(&self) -> TlsField {
        match self {
            Self::Read { field, .. }
            | Self::InvalidPem { field, .. }
            | Self::NoCertificate { field, .. }
            | Self::InvalidCertificate { field, .. } => *field,
            Self::NoPrivateKey { .. }
            | Self::EncryptedKey { .. }
            | Self::UnsupportedKey { .. }
            | Self::KeyMismatch { .. } => TlsField::Key,
            Self::InvalidServerName { .. }
            | Self::AddressNotDefault { .. }
            | Self::NoServerNames { .. }
            | Self::Generate(_) => TlsField::ServerNames,
            Self::NoCertificates => TlsField::Cert,
            Self::Config(_) => TlsField::Tls,
        }
    }

    /// The YAML field this error is about: `cert`, `key`, `server_names`, `ca_file` or `tls`.
    pub fn field(&self) -> &'static str {
        self.tls_field().as_str()
    }

    /// Maps a PEM error without quoting the input (a malformed line could be key material).
    fn pem(field: TlsField, path: &Path, error: pem::Error) -> Self {
        let path = path.to_path_buf();
        let reason = match error {
            pem::Error::Io(source) => {
                return Self::Read {
                    field,
                    path,
                    source,
                };
            }
            pem::Error::NoItemsFound => {
                return match field {
                    TlsField::Key => Self::NoPrivateKey { path },
                    _ => Self::NoCertificate { field, path },
                };
            }
            pem::Error::MissingSectionEnd { .. } => "a section is missing its END line",
            pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
            pem::Error::Base64Decode(_) => "a section is not valid base64",
            pem::Error::SectionTooLarge => "a section is too large",
            _ => "unrecognised PEM error",
        };
        Self::InvalidPem {
            field,
            path,
            reason,
        }
    }
}

// === functions ===

/// What a loaded certificate is presented as: a listener's, to clients, or a client's, to an
/// upstream that asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A listener's certificate (`serverAuth`).
    Server,
    /// A client certificate for an upstream (`clientAuth`).
    Client,
}

/// How far a certificate's `notBefore` may be ahead of this machine's clock: a certificate
/// issued a moment ago by a CA whose clock runs ahead still loads.
const NOT_BEFORE_GRACE_SECS: i64 = 300;

/// Loads a listener's certificate chain (leaf first) and its private key from PEM files.
///
/// Fails when either file is unreadable or malformed, the chain is empty, the key type is
/// unsupported, or the key does not match the leaf. A leaf clients would refuse now (outside
/// its validity, or its extended key usage leaving out `serverAuth`) loads, with
/// [`LoadedCert::unusable`] saying why.
pub fn load_cert(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, TlsError> {
    load_cert_for(cert_path, key_path, Purpose::Server)
}

/// [`load_cert`] for a certificate presented as `purpose`.
pub fn load_cert_for(
    cert_path: &Path,
    key_path: &Path,
    purpose: Purpose,
) -> Result<LoadedCert, TlsError> {
    let chain = read_certs(cert_path, TlsField::Cert)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        field: TlsField::Cert,
        path: cert_path.to_path_buf(),
    })?;
    let invalid = |reason| TlsError::InvalidCertificate {
        field: TlsField::Cert,
        path: cert_path.to_path_buf(),
        reason,
    };
    let names = leaf_names(leaf).map_err(invalid)?;
    let not_after = Certificate::from_der(leaf).map_or(0, |c| c.not_after());
    let unusable = Certificate::from_der(leaf).and_then(|cert| {
        unusable(
            &cert,
            purpose,
            i64::try_from(crate::clock::Clock::system().unix_secs()).unwrap_or(i64::MAX),
        )
    });

    let key_pem = crate::config::files::read(key_path)
        .map_err(|e| TlsError::pem(TlsField::Key, key_path, pem::Error::Io(e)))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound if holds_encrypted_key(key_path) => TlsError::EncryptedKey {
            path: key_path.to_path_buf(),
        },
        e => TlsError::pem(TlsField::Key, key_path, e),
    })?;
    let signing_key = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::UnsupportedKey {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;

    let key = CertifiedKey::new(chain, signing_key);
    match key.keys_match() {
        // Unknown: the provider cannot export the public key; rustls treats that as acceptable
        // too (`CertifiedKey::from_der`), and aws-lc-rs keys always can.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            // The key may belong to a certificate further down the file: a chain written
            // intermediate first.
            let place = key.cert.iter().skip(1).position(|c| {
                CertifiedKey::new(vec![c.clone()], Arc::clone(&key.key))
                    .keys_match()
                    .is_ok()
            });
            if let Some(place) = place {
                return Err(invalid(format!(
                    "the key matches certificate {} of the file, not the first: put the leaf (the server's own certificate) first, then its issuers",
                    place + 2
                )));
            }
            return Err(TlsError::KeyMismatch {
                cert_path: cert_path.to_path_buf(),
                key_path: key_path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(TlsError::InvalidCertificate {
                field: TlsField::Cert,
                path: cert_path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    }
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
        not_after,
        unusable,
    })
}

/// Why peers would refuse the leaf of the chain in `path` as `purpose` now, if they would;
/// `None` too when the file does not read (loading it says why).
pub fn unusable_leaf(path: &Path, purpose: Purpose) -> Option<String> {
    let chain = read_certs(path, TlsField::Cert).ok()?;
    let cert = Certificate::from_der(chain.first()?)?;
    unusable(
        &cert,
        purpose,
        i64::try_from(crate::clock::Clock::system().unix_secs()).unwrap_or(i64::MAX),
    )
}

/// Why a leaf cannot serve as `purpose` at `now` (Unix seconds), if it cannot.
fn unusable(cert: &Certificate<'_>, purpose: Purpose, now: i64) -> Option<String> {
    let date = |t: i64| match u64::try_from(t) {
        Ok(secs) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string(),
        Err(_) => "before 1970".into(),
    };
    if cert.not_after() < now {
        return Some(format!(
            "expired at {}: peers refuse it; renew it",
            date(cert.not_after())
        ));
    }
    if cert.not_before() > now.saturating_add(NOT_BEFORE_GRACE_SECS) {
        return Some(format!(
            "not valid before {}: peers refuse it until then (or this machine's clock is behind)",
            date(cert.not_before())
        ));
    }
    let (oid, usage, role) = match purpose {
        Purpose::Server => (super::x509::OID_KP_SERVER_AUTH, "serverAuth", "a server's"),
        Purpose::Client => (super::x509::OID_KP_CLIENT_AUTH, "clientAuth", "a client's"),
    };
    (!cert.allows_purpose(oid)).then(|| {
        format!("its extended key usage leaves out {usage}: peers refuse it as {role} certificate")
    })
}

/// Whether a key file holds only an encrypted private key (`ENCRYPTED PRIVATE KEY`, or a
/// legacy PEM with `Proc-Type: 4,ENCRYPTED`), which rustls cannot read.
fn holds_encrypted_key(path: &Path) -> bool {
    crate::config::files::read(path).is_ok_and(|bytes| {
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
    })
}

/// Reads every `CERTIFICATE` section of a PEM file; fails when there is none.
pub(crate) fn read_certs(
    path: &Path,
    field: TlsField,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = crate::config::files::read(path)
        .map_err(|e| TlsError::pem(field, path, pem::Error::Io(e)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::pem(field, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Normalises a DNS name for lookup: ASCII lowercase, one trailing dot removed.
pub(crate) fn normalize_dns_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The DNS and IP subject alternative names of a DER certificate.
fn leaf_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let cert = Certificate::from_der(leaf).ok_or_else(|| {
        "not a well-formed X.509 certificate (or its subject alternative names are not)".to_owned()
    })?;
    let mut names = Vec::new();
    for general_name in cert.subject_alt_names() {
        let name = match general_name {
            GeneralName::Dns(dns) => normalize_dns_name(dns),
            GeneralName::Ip(bytes) => match ip_from_bytes(bytes) {
                Some(ip) => ip.to_string(),
                None => continue,
            },
            GeneralName::Uri(_) | GeneralName::Email(_) | GeneralName::Other => continue,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(Ipv4Addr::from(v4).into());
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| Ipv6Addr::from(v6).into())
}

/// Self-signed certificate for the demo and tests: returns `(cert_pem, key_pem)`.
///
/// `names` are DNS names or IP literals (IP literals become IP SANs); the first is also the CN.
pub fn self_signed(names: &[&str]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let cert = leaf_params(names)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A CA plus a leaf signed by it, for tests of https upstreams and chains: returns
/// `(ca_cert_pem, leaf_cert_pem, leaf_key_pem)`.
pub fn ca_and_leaf(names: &[&str]) -> Result<(String, String, String), TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let leaf_key = KeyPair::generate()?;
    let mut params = leaf_params(names)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let leaf = params.signed_by(&leaf_key, &ca)?;
    Ok((ca.pem(), leaf.pem(), leaf_key.serialize_pem()))
}

fn leaf_params(names: &[&str]) -> Result<CertificateParams, TlsError> {
    let mut params =
        CertificateParams::new(names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>())?;
    // Why: a distinct subject per certificate, so several self-signed certificates trusted
    // together never share an issuer name.
    if let Some(first) = names.first() {
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn load_ok_with_names() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["A.Test", "127.0.0.1", "::1"]).unwrap();
        let loaded = load_cert(
            &write(dir.path(), "c.pem", &cert),
            &write(dir.path(), "k.pem", &key),
        )
        .unwrap();
        assert_eq!(loaded.names, ["a.test", "127.0.0.1", "::1"]);
        assert_eq!(loaded.key.cert.len(), 1);
        assert!(!format!("{loaded:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_certificate_clients_refuse_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let load = |params: CertificateParams, purpose: Purpose| {
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let c = write(d, "c.pem", &cert.pem());
            let k = write(d, "k.pem", &key.serialize_pem());
            let loaded = load_cert_for(&c, &k, purpose).unwrap();
            assert_eq!(loaded.unusable, unusable_leaf(&c, purpose));
            loaded.unusable.unwrap_or_default()
        };
        let params = || leaf_params(&["a.test"]).unwrap();
        assert_eq!(load(params(), Purpose::Server), "");
        assert_eq!(load(params(), Purpose::Client), "");
        // Expired, and not yet valid (past the grace for clocks apart).
        let mut expired = params();
        expired.not_after = rcgen::date_time_ymd(2021, 3, 4);
        let why = load(expired, Purpose::Server);
        assert!(why.contains("expired at 2021-03-04"), "{why}");
        let mut early = params();
        early.not_before = rcgen::date_time_ymd(2999, 1, 1);
        let why = load(early, Purpose::Server);
        assert!(why.contains("not valid before 2999-01-01"), "{why}");
        // Issued for one purpose only.
        let mut clients_only = params();
        clients_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let why = load(clients_only.clone(), Purpose::Server);
        assert!(why.contains("leaves out serverAuth"), "{why}");
        assert_eq!(load(clients_only, Purpose::Client), "");
        let mut servers_only = params();
        servers_only.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let why = load(servers_only.clone(), Purpose::Client);
        assert!(why.contains("leaves out clientAuth"), "{why}");
        assert_eq!(load(servers_only, Purpose::Server), "");
        let mut any = params();
        any.extended_key_usages = vec![ExtendedKeyUsagePurpose::Any];
        assert_eq!(load(any, Purpose::Server), "");
    }

    #[test]
    fn key_errors_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A chain written issuer first: the key matches the second certificate.
        let (ca, leaf, key) = ca_and_leaf(&["up.test"]).unwrap();
        let err = load_cert(
            &write(d, "c.pem", &format!("{ca}{leaf}")),
            &write(d, "k.pem", &key),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("matches certificate 2 of the file"),
            "{err}"
        );
        // An encrypted key is named as such, and none of it is printed.
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = load_cert(&write(d, "c.pem", &leaf), &write(d, "k.pem", encrypted)).unwrap_err();
        assert_eq!(err.field(), "key");
        assert!(
            err.to_string().contains("the private key is encrypted"),
            "{err}"
        );
        assert!(!err.to_string().contains("MIIB"), "{err}");
    }

    #[test]
    fn chain_and_ca_load() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf, key) = ca_and_leaf(&["up.test"]).unwrap();
        let chain = format!("{leaf}{ca}");
        let loaded = load_cert(
            &write(dir.path(), "c.pem", &chain),
            &write(dir.path(), "k.pem", &key),
        )
        .unwrap();
        assert_eq!(loaded.key.cert.len(), 2);
        assert_eq!(loaded.names, ["up.test"]);
    }

    #[test]
    fn mismatched_key_is_a_key_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed(&["a.test"]).unwrap();
        let (_, other_key) = self_signed(&["b.test"]).unwrap();
        let key_path = write(dir.path(), "k.pem", &other_key);
        let err = load_cert(&write(dir.path(), "c.pem", &cert), &key_path).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert_eq!(err.field(), "key");
        let msg = err.to_string();
        assert!(
            msg.contains("private key does not match certificate"),
            "{msg}"
        );
        assert!(msg.contains(&key_path.display().to_string()), "{msg}");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(&["a.test"]).unwrap();
        let cert_path = write(dir.path(), "good-cert.pem", &cert);
        let key_path = write(dir.path(), "good-key.pem", &key);
        let secret = "-----BEGIN PRIVATE KEY-----\nSECRET*SECRET\n-----END PRIVATE KEY-----\n";
        let cases: [(&str, &str, bool, &str, &str); 6] = [
            (
                "empty.pem",
                "",
                true,
                "cert",
                "no certificate found in PEM file",
            ),
            (
                "garbage.pem",
                "hello",
                true,
                "cert",
                "no certificate found in PEM file",
            ),
            (
                "swapped.pem",
                &key,
                true,
                "cert",
                "no certificate found in PEM file",
            ),
            ("nokey.pem", &cert, false, "key", "no private key found"),
            ("emptykey.pem", "", false, "key", "no private key found"),
            ("secret.pem", secret, false, "key", "malformed PEM"),
        ];
        for (name, contents, is_cert, field, needle) in cases {
            let bad = write(dir.path(), name, contents);
            let err = if is_cert {
                load_cert(&bad, &key_path)
            } else {
                load_cert(&cert_path, &bad)
            }
            .unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.field(), field, "{name}: {msg}");
            assert!(msg.contains(needle), "{name}: {msg}");
            assert!(msg.contains(name), "{name}: {msg}");
            assert!(!msg.contains("SECRET"), "{name}: {msg}");
        }
        let missing = dir.path().join("missing.pem");
        let err = load_cert(&cert_path, &missing).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert_eq!(err.field(), "key");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }

    #[test]
    fn invalid_generated_name_is_rejected() {
        let err = self_signed(&["bäd.test"]).unwrap_err();
        assert_eq!(err.field(), "server_names");
    }
}
