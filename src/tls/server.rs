//! rustls configs: the listener's `ServerConfig` with SNI certificate selection, and the
//! `ClientConfig` for https upstreams.
//!
//! Invariants:
//! - Only TLS 1.3 and 1.2, with the aws-lc-rs provider passed explicitly (no process default).
//! - Every handshake gets a certificate: an unknown or absent SNI gets the first entry's
//!   certificate (the default), never an aborted handshake.
//! - Exact names beat wildcards; a wildcard covers exactly one label; on duplicate names the
//!   first entry wins.
//!
//! A config is immutable: a reload builds a new one and the listener reads the current one per
//! accept, so in-flight handshakes finish on the config they started with.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::DnsName;

use crate::tls::certs::{TlsError, TlsField, load_cert, normalize_dns_name, read_certs};

#[cfg(test)]
mod tests;

/// One certificate served by a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key for the leaf.
    pub key: PathBuf,
    /// Names (exact, `*.` wildcard or IP) this certificate is selected for; empty = the
    /// certificate's own subject alternative names.
    pub server_names: Vec<String>,
}

/// Selects a certificate by SNI; see the module invariants.
struct SniResolver {
    /// Served when the SNI is absent or matches nothing: the first entry.
    default: Arc<CertifiedKey>,
    /// Normalised exact names (and IP texts, which never arrive as SNI but are harmless).
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Wildcards keyed by their parent: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
}

const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Builds a server config: TLS 1.2 and 1.3 only, ALPN `["h2", "http/1.1"]` (or only
/// `http/1.1` when `http2` is false), certificates selected by SNI.
///
/// On failure returns the index of the offending entry (0 when `entries` is empty).
pub fn server_config(
    entries: &[CertEntry],
    http2: bool,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, (usize, TlsError)> {
    let resolver = SniResolver::from_entries(entries)?;
    // Session resumption: rustls defaults (in-memory session cache, TLS 1.3 stateful tickets).
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| (0, TlsError::Config(e)))?;
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn(http2);
    Ok(Arc::new(config))
}

/// Verifies client certificates against the CA certificates in `ca_file` (webpki: chain,
/// validity, `clientAuth` usage). Unless `required`, clients without a certificate are let in
/// and rules decide; a client that presents an invalid certificate is always refused.
pub fn client_verifier(
    ca_file: &Path,
    required: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file, TlsField::CaFile)? {
        roots.add(cert).map_err(|e| TlsError::InvalidCertificate {
            field: TlsField::CaFile,
            path: ca_file.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| TlsError::InvalidCertificate {
        field: TlsField::CaFile,
        path: ca_file.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Client config for https upstreams: webpki roots, or only the CA certificates in `ca_file`
/// when given; ALPN `http/1.1` (plus `h2` first when `http2`).
pub fn client_config(ca_file: Option<&Path>, http2: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca_file {
        None => webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, TlsField::CaFile)? {
                roots.add(cert).map_err(|e| TlsError::InvalidCertificate {
                    field: TlsField::CaFile,
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            roots
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn(http2);
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
    } else {
        vec![ALPN_HTTP11.to_vec()]
    }
}

/// A configured server name: `*.` wildcard, DNS name or IP address, normalised.
enum ServerNamePattern {
    Exact(String),
    /// The parent domain of a `*.` wildcard.
    Wildcard(String),
}

impl ServerNamePattern {
    /// Classifies a name taken from a certificate (already normalised; not validated, since a
    /// malformed SAN simply never matches).
    fn from_san(name: String) -> Self {
        match name.strip_prefix("*.") {
            Some(parent) => Self::Wildcard(parent.to_owned()),
            None => Self::Exact(name),
        }
    }

    /// Parses and normalises an explicitly configured name.
    fn parse(name: &str) -> Result<Self, TlsError> {
        let invalid = || TlsError::InvalidServerName {
            name: name.to_owned(),
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Self::Exact(ip.to_string()));
        }
        let normalized = normalize_dns_name(name);
        let (dns, wildcard) = match normalized.strip_prefix("*.") {
            Some(parent) => (parent, true),
            None => (normalized.as_str(), false),
        };
        // Why: DnsName rejects `*`, empty labels and other characters, so a wildcard is only
        // ever a whole leftmost label.
        let dns = DnsName::try_from(dns)
            .map_err(|_| invalid())?
            .as_ref()
            .to_owned();
        Ok(if wildcard {
            Self::Wildcard(dns)
        } else {
            Self::Exact(dns)
        })
    }
}

// === impl SniResolver ===

impl SniResolver {
    /// Loads every entry; the first is the default certificate.
    fn from_entries(entries: &[CertEntry]) -> Result<Self, (usize, TlsError)> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let loaded = load_cert(&entry.cert, &entry.key).map_err(|e| (index, e))?;
            let patterns = if entry.server_names.is_empty() {
                loaded
                    .names
                    .into_iter()
                    .map(ServerNamePattern::from_san)
                    .collect()
            } else {
                entry
                    .server_names
                    .iter()
                    .map(|name| ServerNamePattern::parse(name))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| (index, e))?
            };
            if patterns.is_empty() && index > 0 {
                let path = entry.cert.clone();
                return Err((index, TlsError::NoServerNames { path }));
            }
            for pattern in patterns {
                let (map, name) = match pattern {
                    ServerNamePattern::Exact(name) => (&mut exact, name),
                    ServerNamePattern::Wildcard(parent) => (&mut wildcard, parent),
                };
                // First entry wins on duplicates.
                if let Entry::Vacant(slot) = map.entry(name.into_boxed_str()) {
                    slot.insert(Arc::clone(&loaded.key));
                }
            }
            default.get_or_insert(loaded.key);
        }
        let default = default.ok_or((0, TlsError::NoCertificates))?;
        Ok(Self {
            default,
            exact,
            wildcard,
        })
    }

    /// The certificate for a client's SNI, or the default one.
    fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let found = server_name.and_then(|name| self.lookup(name));
        Arc::clone(found.unwrap_or(&self.default))
    }

    fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        // rustls already lowercases SNI, so this allocates only for direct callers.
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        if let Some(key) = self.exact.get(name.as_ref()) {
            return Some(key);
        }
        // Why: a wildcard replaces exactly one non-empty leftmost label (RFC 6125 §6.4.3), so
        // `*.example.com` matches neither `example.com` nor `a.b.example.com`.
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.select(client_hello.server_name()))
    }
}

impl fmt::Debug for SniResolver {
    // Why: list names only; the signing keys' Debug is not ours to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
