//! rustls configs: the listener's `ServerConfig` with SNI certificate selection, and the
//! `ClientConfig` for https upstreams.
//!
//! Invariants:
//! - Only TLS 1.3 and 1.2, with the aws-lc-rs provider passed explicitly (no process default).
//! - Every handshake gets a certificate: an unknown or absent SNI gets the first entry's
//!   certificate (the default), never an aborted handshake.
//! - Exact names beat wildcards; a wildcard covers exactly one label; a name an entry lists in
//!   `server_names` beats the same name taken from another entry's certificate; otherwise, on
//!   duplicate names the first entry wins.
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

/// Selects a certificate entry by SNI; see the module invariants.
struct SniResolver {
    /// Each entry's certificate, in config order; the first is served when the SNI is absent
    /// or matches nothing.
    keys: Box<[Arc<CertifiedKey>]>,
    /// Normalised exact names (and IP texts, which never arrive as SNI but are harmless).
    exact: HashMap<Box<str>, usize>,
    /// Wildcards keyed by their parent: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<Box<str>, usize>,
    /// Configured `server_names` the entry's certificate does not cover (entry, name, the
    /// certificate's names): clients that verify it refuse connections for them.
    uncovered: Vec<(usize, String, String)>,
    /// Each entry's certificate's `notAfter` (Unix seconds), in entry order.
    not_after: Box<[i64]>,
    /// Entries whose certificate clients would refuse now, and why.
    unusable: Vec<(usize, String)>,
    /// Which entries name their hosts with `server_names` (entry order); the others are
    /// selected by their certificate's own names.
    explicit: Box<[bool]>,
}

/// A listener's TLS: one rustls config for every certificate, or, when certificate entries
/// verify client certificates against their own CAs, one config per entry chosen from the
/// ClientHello's SNI. Then each connection is bound to its entry: a request whose host
/// selects another entry is misdirected ([`HostBinding`]), so a certificate from CA-A never
/// reaches the hosts that require CA-B, whatever `Host` says.
pub struct ListenerTls {
    /// `[shared]`, or one per entry.
    configs: Box<[Arc<ServerConfig>]>,
    names: Arc<SniResolver>,
    /// A digest of what verifies client certificates (every CA file's bytes, whether one is
    /// required), when something does: what a connection's certificate was verified by.
    client_auth: Option<[u8; 32]>,
    /// What verifies each entry's client certificates (entry order), to judge again a
    /// connection's certificate verified under another config ([`Self::still_trusts`]).
    verifiers: Box<[Option<Arc<dyn ClientCertVerifier>>]>,
    /// Which entries require a client certificate (entry order; empty: none does).
    required: Box<[bool]>,
    /// A digest of what verifies each entry's client certificates (its CA file's bytes,
    /// whether one is required), entry order; `None` where nothing does ([`Self::moved_names`]).
    entry_auth: Box<[Option<[u8; 32]>]>,
}

/// The certificate chain a client presented at the handshake, kept to be verified again
/// when a reload changes the client CAs ([`ListenerTls::still_trusts`]).
pub struct PresentedChain {
    certs: Box<[rustls_pki_types::CertificateDer<'static>]>,
    /// The last verification under a later config: that config's digest and its verdict.
    verdict: std::sync::Mutex<Option<([u8; 32], bool)>>,
}

impl PresentedChain {
    /// The chain as the handshake got it, leaf first.
    pub fn new(certs: &[rustls_pki_types::CertificateDer<'_>]) -> Self {
        Self {
            certs: certs.iter().map(|c| c.clone().into_owned()).collect(),
            verdict: std::sync::Mutex::new(None),
        }
    }
}

impl fmt::Debug for PresentedChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedChain")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

/// The certificate entry a connection's SNI selected, on a listener whose entries have their
/// own client CAs.
#[derive(Clone)]
pub struct HostBinding {
    names: Arc<SniResolver>,
    entry: usize,
}

const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Builds a listener's TLS: `client_auth[i]` verifies the client certificates of entry `i`
/// (its own CAs, or the listener's). When every entry has the same verifier (or none), one
/// config serves them all; otherwise each entry gets its own.
///
/// On failure returns the index of the offending entry (0 when `entries` is empty).
pub fn listener_tls(
    entries: &[CertEntry],
    http2: bool,
    client_auth: &[Option<Arc<dyn ClientCertVerifier>>],
) -> Result<ListenerTls, (usize, TlsError)> {
    let names = Arc::new(SniResolver::from_entries(entries)?);
    let shared = client_auth.windows(2).all(|w| match (&w[0], &w[1]) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    });
    let configs: Box<[Arc<ServerConfig>]> = if shared {
        let verifier = client_auth.first().cloned().flatten();
        let resolver: Arc<dyn ResolvesServerCert> = Arc::clone(&names) as _;
        Box::new([build(resolver, http2, verifier).map_err(|e| (0, e))?])
    } else {
        let mut configs = Vec::with_capacity(names.keys.len());
        for (i, key) in names.keys.iter().enumerate() {
            let verifier = client_auth.get(i).cloned().flatten();
            let resolver: Arc<dyn ResolvesServerCert> = Arc::new(Fixed(Arc::clone(key)));
            configs.push(build(resolver, http2, verifier).map_err(|e| (i, e))?);
        }
        configs.into()
    };
    Ok(ListenerTls {
        configs,
        names,
        client_auth: None,
        verifiers: client_auth.into(),
        required: Box::new([]),
        entry_auth: Box::new([]),
    })
}

fn build(
    resolver: Arc<dyn ResolvesServerCert>,
    http2: bool,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    // Session resumption: rustls defaults (in-memory session cache, TLS 1.3 stateful tickets).
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?;
    let builder = match client_auth {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn(http2);
    Ok(Arc::new(config))
}

/// Always the same certificate: the entry an SNI selected before its config was chosen.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

// === impl ListenerTls ===

impl ListenerTls {
    /// Completes the handshake on `io`, with the config of the entry the SNI selects when
    /// entries have their own client CAs. The binding is `Some` in that case.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<IO>, Option<HostBinding>)>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        if let [shared] = &*self.configs {
            let stream = tokio_rustls::TlsAcceptor::from(Arc::clone(shared))
                .accept(io)
                .await?;
            return Ok((stream, None));
        }
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let entry = self.names.select(start.client_hello().server_name());
        let config = self
            .configs
            .get(entry)
            .ok_or_else(|| std::io::Error::other("no config for the selected certificate"))?;
        let stream = start.into_stream(Arc::clone(config)).await?;
        let binding = HostBinding {
            names: Arc::clone(&self.names),
            entry,
        };
        Ok((stream, Some(binding)))
    }

    /// The same, with `digest` naming what verifies its client certificates
    /// ([`Self::client_auth`]).
    pub fn with_client_auth(mut self, digest: Option<[u8; 32]>) -> Self {
        self.client_auth = digest;
        self
    }

    /// The same, with `digests[i]` naming what verifies entry `i`'s client certificates.
    pub fn with_entry_auth(mut self, digests: Vec<Option<[u8; 32]>>) -> Self {
        self.entry_auth = digests.into();
        self
    }

    /// What verifies entry `i`'s client certificates, as a digest.
    fn entry_auth(&self, i: usize) -> Option<&[u8; 32]> {
        self.entry_auth.get(i)?.as_ref()
    }

    /// The names `previous` took from a certificate's own names that this config serves with
    /// another entry, one verifying client certificates otherwise (another CA, or required where it was
    /// not), though no `server_names` moved them: `(name, previous entry, entry now)`.
    ///
    /// Why: a renewed certificate that no longer named `b.example` (or an earlier entry's that
    /// now did) moved the host to another entry on a plain reload, and with it to that entry's
    /// client CA: a certificate from CA-A reached the rule of a host that required CA-B, and a
    /// client with none completed the handshake. The reload refuses that, as it refuses a
    /// certificate clients would refuse; naming the host in `server_names` moves it on purpose.
    /// Regression: tests::a_renewed_certificate_moving_a_host_to_another_client_ca_is_reported
    pub fn moved_names(&self, previous: &Self) -> Vec<(String, usize, usize)> {
        let prev = &previous.names;
        // Every name either config serves: a host the new one names (an earlier entry's
        // renewed certificate adding `x.b.example`) may come from under the old one's
        // wildcard.
        let mut names: Vec<(&str, bool)> = [prev, &*self.names]
            .into_iter()
            .flat_map(|r| {
                r.exact
                    .keys()
                    .map(|n| (&**n, false))
                    .chain(r.wildcard.keys().map(|p| (&**p, true)))
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        // The entry a resolver serves a name (or wildcard) with, whether the resolver names
        // it (else the default entry serves it), and whether that entry lists it.
        let select = |r: &SniResolver, name: &str, is_wildcard: bool| {
            let found = if is_wildcard {
                r.wildcard.get(name).copied()
            } else {
                r.lookup(name).copied()
            };
            (
                found.unwrap_or(0),
                found.is_some(),
                found.is_some_and(|e| r.explicit.get(e) == Some(&true)),
            )
        };
        let mut out: Vec<(String, usize, usize)> = names
            .into_iter()
            .filter_map(|(name, is_wildcard)| {
                let (was, named, _) = select(prev, name, is_wildcard);
                let (now, _, listed) = select(&self.names, name, is_wildcard);
                // A name the old config did not name is new (a host added to a certificate);
                // one the new entry lists is moved on purpose. One the old entry listed moves
                // too: a host under a listed wildcard taken by a certificate's exact name.
                // (A CA file changed in place is not a move: `still_trusts` judges it.)
                let moved = named
                    && now != was
                    && !listed
                    && previous.entry_auth(was) != self.entry_auth(now);
                let shown = if is_wildcard {
                    format!("*.{name}")
                } else {
                    name.to_owned()
                };
                moved.then_some((shown, was, now))
            })
            .collect();
        out.sort();
        out
    }

    /// The same, with `required[i]` saying whether entry `i` requires a client certificate.
    pub fn with_required(mut self, required: Vec<bool>) -> Self {
        self.required = if required.contains(&true) {
            required.into()
        } else {
            Box::new([])
        };
        self
    }

    /// Whether this config admits a request for `host` on a connection whose TLS session,
    /// made under an earlier config, is `tls`: its client certificate is still trusted for
    /// that host ([`Self::still_trusts`]), or, without one, the host requires none.
    pub fn still_admits(&self, tls: &crate::request::facts::TlsInfo, host: &str) -> bool {
        if tls.client_cert.is_none() {
            return !self.requires_client_cert(host);
        }
        match tls.client_chain.as_deref() {
            Some(chain) => {
                self.still_trusts(tls.sni.as_deref(), host, chain, tls.client_auth.as_ref())
            }
            None => {
                self.client_auth.is_some() && self.client_auth.as_ref() == tls.client_auth.as_ref()
            }
        }
    }

    /// Whether a request for `host` needs a client certificate: the entry it selects requires
    /// one. A connection made without one (before a reload that requires it) may not carry it.
    fn requires_client_cert(&self, host: &str) -> bool {
        !self.required.is_empty()
            && self
                .required
                .get(self.names.select_host(host))
                .copied()
                .unwrap_or(false)
    }

    /// What verifies its client certificates, as a digest: a connection whose certificate
    /// was verified under another one must not go on authenticating with it.
    pub fn client_auth(&self) -> Option<&[u8; 32]> {
        self.client_auth.as_ref()
    }

    /// Whether a request for `host` on a connection whose client certificate was verified at
    /// its handshake by `verified_by` ([`Self::client_auth`] of the config then) is trusted
    /// by this config too: the same client CAs and host mapping, or this config's verifier
    /// for the entry `sni` selects accepts `chain` now and `host` selects that same entry. A
    /// verdict under a later config is kept with the chain: each connection pays one
    /// verification per change, not one per request.
    pub fn still_trusts(
        &self,
        sni: Option<&str>,
        host: &str,
        chain: &PresentedChain,
        verified_by: Option<&[u8; 32]>,
    ) -> bool {
        let Some(digest) = self.client_auth else {
            return false;
        };
        if verified_by == Some(&digest) {
            return true;
        }
        let mut verdict = chain
            .verdict
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Why: the connection's host binding is the old config's: a request for a host the
        // new config gives another entry's client CA (or gives its own CA where the old one
        // shared one) passed on a connection opened before the reload.
        // Regression: tests (it) credentials::a_reload_that_splits_client_cas_binds_old_connections
        let bound =
            self.configs.len() == 1 || self.names.select_host(host) == self.names.select(sni);
        if let Some((seen, ok)) = *verdict
            && seen == digest
        {
            return ok && bound;
        }
        // Why: any change of a listener's client CAs (a CA added for a rollover, another
        // host's bundle edited, the same file reordered) ended every open mTLS connection
        // with 421, still-trusted clients included. Only a certificate the new CAs refuse
        // ends its connection's authentication.
        // Regression: tests (it) credentials::a_client_ca_change_ends_old_connections_authentication
        let ok = match (
            self.verifiers
                .get(self.names.select(sni))
                .cloned()
                .flatten(),
            chain.certs.split_first(),
        ) {
            (Some(v), Some((leaf, intermediates))) => v
                .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
                .is_ok(),
            _ => false,
        };
        *verdict = Some((digest, ok));
        ok && bound
    }

    /// The entries whose certificate clients would refuse now (expired, not valid yet, not
    /// for servers), and why.
    pub fn unusable_certificates(&self) -> &[(usize, String)] {
        &self.names.unusable
    }

    /// The leaf certificate entry `entry` serves.
    pub fn leaf(&self, entry: usize) -> Option<&[u8]> {
        self.names.keys.get(entry)?.cert.first().map(AsRef::as_ref)
    }

    /// When each certificate entry's certificate expires (`notAfter`, Unix seconds), in
    /// entry order: the `portcullis_tls_certificate_expiry_timestamp_seconds` gauge.
    pub fn expiries(&self) -> &[i64] {
        &self.names.not_after
    }

    /// Each `server_names` entry its certificate does not cover: `(entry, name, the
    /// certificate's names)`, for `check` and the reload to warn about.
    pub fn uncovered_names(&self) -> &[(usize, String, String)] {
        &self.names.uncovered
    }

    /// The shared config (tests, and listeners whose entries share their client CAs).
    pub fn shared_config(&self) -> Option<&Arc<ServerConfig>> {
        match &*self.configs {
            [shared] => Some(shared),
            _ => None,
        }
    }
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("configs", &self.configs.len())
            .field("names", &self.names)
            .finish()
    }
}

// === impl HostBinding ===

impl HostBinding {
    /// Whether a request for `host` (lowercase, without port) belongs on this connection: it
    /// selects the same certificate entry as the connection's SNI did.
    pub fn allows(&self, host: &str) -> bool {
        // Why: hosts keep an IPv6 literal's brackets; names are stored without them, so
        // `[::1]` fell to the default entry (and its client CA) while `127.0.0.1` did not.
        // Regression: tests::ipv6_hosts_bind_like_ipv4
        self.names.select_host(host) == self.entry
    }
}

impl fmt::Debug for HostBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBinding")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

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
    build(Arc::new(resolver), http2, client_auth).map_err(|e| (0, e))
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

/// A certificate in a `ca_file` that is not a CA certificate (basicConstraints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonCaAnchor {
    /// Its place in the file, from 1.
    pub place: usize,
    /// Its subject.
    pub subject: String,
    /// Whether it names itself as its issuer (a self-signed leaf, pinned).
    pub self_issued: bool,
}

/// The certificates in `ca_file` that are not CA certificates: for `check` to warn about;
/// empty when the file does not read (loading it says why).
pub fn non_ca_anchors(ca_file: &Path) -> Vec<NonCaAnchor> {
    let Ok(certs) = read_certs(ca_file, TlsField::CaFile) else {
        return Vec::new();
    };
    certs
        .iter()
        .enumerate()
        .filter_map(|(i, der)| {
            let cert = crate::tls::x509::Certificate::from_der(der)?;
            (!cert.is_ca()).then(|| NonCaAnchor {
                place: i + 1,
                subject: cert.subject().to_string(),
                self_issued: cert.is_self_issued(),
            })
        })
        .collect()
}

/// Client config for https upstreams: webpki roots, or only the CA certificates in `ca_file`
/// when given; ALPN `http/1.1` (plus `h2` first when `http2`).
pub fn client_config(ca_file: Option<&Path>, http2: bool) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_cert(ca_file, http2, None)
}

/// [`client_config`], presenting `client_cert` to a server that asks for one (mTLS to an
/// upstream).
pub fn client_config_with_cert(
    ca_file: Option<&Path>,
    http2: bool,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<Arc<ClientConfig>, TlsError> {
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
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(key) => config.with_client_cert_resolver(Arc::new(ClientCert(key))),
        None => config.with_no_client_auth(),
    };
    config.alpn_protocols = alpn(http2);
    Ok(Arc::new(config))
}

/// Always presents the one configured client certificate.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
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

/// Whether a certificate whose subject alternative names are `sans` ([`crate::tls::certs::LoadedCert::names`])
/// is valid for `name` as written in `server_names`: the same address, the same DNS name, or
/// a wildcard SAN one label above it (a wildcard name needs the same wildcard SAN).
fn san_covers(sans: &[String], name: &str) -> bool {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return sans.iter().any(|s| s.parse::<IpAddr>().ok() == Some(ip));
    }
    let name = normalize_dns_name(name);
    sans.iter().any(|san| {
        *san == name
            || (!name.starts_with("*.")
                && san.strip_prefix("*.").is_some_and(|parent| {
                    name.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
                }))
    })
}

// === impl SniResolver ===

impl SniResolver {
    /// Loads every entry; the first is the default certificate.
    fn from_entries(entries: &[CertEntry]) -> Result<Self, (usize, TlsError)> {
        let mut keys = Vec::with_capacity(entries.len());
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut uncovered = Vec::new();
        let mut unusable = Vec::new();
        let mut not_after = Vec::with_capacity(entries.len());
        let explicit = entries.iter().map(|e| !e.server_names.is_empty()).collect();
        let mut by_entry = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let loaded = load_cert(&entry.cert, &entry.key).map_err(|e| (index, e))?;
            not_after.push(loaded.not_after);
            if let Some(reason) = loaded.unusable {
                unusable.push((index, reason));
            }
            for name in &entry.server_names {
                if !san_covers(&loaded.names, name) {
                    uncovered.push((index, name.clone(), loaded.names.join(", ")));
                }
            }
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
                    .map(|name| match ServerNamePattern::parse(name) {
                        Ok(_) if index > 0 && name.parse::<IpAddr>().is_ok() => {
                            Err(TlsError::AddressNotDefault { name: name.clone() })
                        }
                        other => other,
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| (index, e))?
            };
            if patterns.is_empty() && index > 0 {
                let path = entry.cert.clone();
                return Err((index, TlsError::NoServerNames { path }));
            }
            by_entry.push((index, !entry.server_names.is_empty(), patterns));
            keys.push(loaded.key);
        }
        // Why listed names first: the first entry won whatever its names' source, so an
        // earlier entry's renewed certificate that now also named `b.example` took the host
        // from the entry listing it in `server_names`, and with it that entry's client CA:
        // a client with no certificate reached a host that required one.
        // Regression: tests::listed_names_beat_names_from_a_certificate
        by_entry.sort_by_key(|(index, listed, _)| (!*listed, *index));
        for (index, _, patterns) in by_entry {
            for pattern in patterns {
                let (map, name) = match pattern {
                    ServerNamePattern::Exact(name) => (&mut exact, name),
                    ServerNamePattern::Wildcard(parent) => (&mut wildcard, parent),
                };
                // First entry wins on duplicates (listed names first).
                if let Entry::Vacant(slot) = map.entry(name.into_boxed_str()) {
                    slot.insert(index);
                }
            }
        }
        if keys.is_empty() {
            return Err((0, TlsError::NoCertificates));
        }
        Ok(Self {
            keys: keys.into(),
            exact,
            wildcard,
            uncovered,
            not_after: not_after.into(),
            unusable,
            explicit,
        })
    }

    /// The entry for a request's host (lowercase, without port; an IPv6 literal may keep its
    /// brackets), or the default one (0).
    fn select_host(&self, host: &str) -> usize {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        self.select(Some(host))
    }

    /// The entry for a client's SNI (or a request's host), or the default one (0).
    fn select(&self, server_name: Option<&str>) -> usize {
        server_name
            .and_then(|name| self.lookup(name))
            .copied()
            .unwrap_or(0)
    }

    /// The certificate of the entry for a client's SNI.
    fn select_key(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.keys.get(self.select(server_name)).cloned()
    }

    fn lookup(&self, name: &str) -> Option<&usize> {
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
        self.select_key(client_hello.server_name())
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
