//! Delegation: a rule may ask an external authorization service the Envoy ext_authz gRPC way
//! (`envoy.service.auth.v3.Authorization/Check`) before it allows: OPA-Envoy, another
//! Portcullis, a home-grown policy service. A rule names one of the config's `delegates`
//! (`delegate: opa`); the step runs after the rule's requirements and `when`, before its rate
//! limit.
//!
//! Invariants:
//! - Every call is bounded by the delegate's `timeout`.
//! - An answer is cached, keyed by the rule, the method, the canonical path and the credential
//!   (a digest of the verified principal's identity, never the token), bounded in entries,
//!   never kept past the delegate's `cache_ttl` nor the credential's expiry. Anonymous
//!   requests are never cached (nothing ties two of them together).
//! - When the service fails, times out or answers nonsense, `failure_mode` decides: `deny`
//!   (the default: 503 `delegate_unavailable`) or `allow`, and the failure is counted.

use crate::config::FieldError;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http::{HeaderName, HeaderValue};

use crate::authn::principal::Principal;
use crate::config::raw::{RawDelegate, RawFailureMode};
use crate::request::RequestFacts;

/// A compiled delegate.
pub struct Delegate {
    /// Its name in the config.
    pub name: Arc<str>,
    endpoint: tonic::transport::Endpoint,
    /// Made on first use: a channel needs the runtime, and `check` has none.
    client: std::sync::OnceLock<AuthorizationClient<tonic::transport::Channel>>,
    timeout: Duration,
    cache_ttl: Duration,
    fail_open: bool,
    cache: moka::sync::Cache<[u8; 32], Verdict>,
    /// The headers its answers may set.
    headers: Arc<[HeaderName]>,
    /// The definition as written: a reload that leaves it alone keeps the cached verdicts.
    fingerprint: crate::config::Fingerprint,
}

/// What a delegate said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, with headers it asks to set upstream.
    Allow(Arc<[(HeaderName, HeaderValue)]>),
    /// Denied.
    Deny,
}

/// Why a delegate gave no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The call failed (unreachable, an error status).
    #[error("call failed")]
    Call,
    /// An answer that is neither OK nor a denial.
    #[error("unusable answer")]
    Garbage,
}

impl std::fmt::Debug for Delegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegate")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// === impl Delegate ===

impl Delegate {
    /// Compiles a delegate; `previous` lends its cache when the definition is unchanged.
    /// Errors are (field, message).
    pub fn compile(
        name: &str,
        raw: &RawDelegate,
        previous: Option<&Self>,
    ) -> Result<Self, FieldError> {
        let endpoint = tonic::transport::Endpoint::from_shared(raw.grpc.clone()).map_err(|_| {
            FieldError::new(
                "grpc",
                format!("`{}` is not an http:// or https:// URL", raw.grpc),
            )
        })?;
        if !(raw.grpc.starts_with("http://") || raw.grpc.starts_with("https://")) {
            return Err(FieldError::new("grpc", "an http:// or https:// URL"));
        }
        if raw.timeout.is_zero() {
            return Err(FieldError::new("timeout", "must be more than zero"));
        }
        let mut headers = Vec::with_capacity(raw.headers.len());
        for h in &raw.headers {
            headers.push(
                crate::authz::identity::check_name(h).map_err(|m| FieldError::new("headers", m))?,
            );
        }
        let endpoint = endpoint.connect_timeout(raw.timeout).timeout(raw.timeout);
        let fingerprint = crate::config::Fingerprint::of(&[raw]);
        let cache = match previous.filter(|p| p.fingerprint == fingerprint) {
            Some(p) => p.cache.clone(),
            None => moka::sync::Cache::builder()
                .max_capacity(raw.cache_max_entries)
                .time_to_live(raw.cache_ttl.max(Duration::from_millis(1)))
                .build(),
        };
        Ok(Self {
            name: name.into(),
            endpoint,
            client: std::sync::OnceLock::new(),
            timeout: raw.timeout,
            cache_ttl: raw.cache_ttl,
            fail_open: raw.failure_mode == RawFailureMode::Allow,
            cache,
            headers: headers.into(),
            fingerprint,
        })
    }

    /// The headers its answers may set (removed from client requests).
    pub fn header_names(&self) -> &[HeaderName] {
        &self.headers
    }

    /// Whether a failure lets the request through.
    pub fn fails_open(&self) -> bool {
        self.fail_open
    }

    /// Asks the delegate about a request the rule `rule` would allow, through the cache
    /// unless `fresh` (a live tunnel's re-check asks again, and caches the new answer).
    pub async fn check(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        rule: &str,
        now: u64,
        fresh: bool,
    ) -> Result<Verdict, DelegateError> {
        let key = principal
            .filter(|_| !self.cache_ttl.is_zero())
            .map(|p| cache_key(rule, facts, p));
        if let Some(k) = key.as_ref().filter(|_| !fresh)
            && let Some(v) = self.cache.get(k)
        {
            return Ok(v);
        }
        let request = check_request(facts, principal);
        // Lazy: the first call connects, so a delegate that is down does not fail a reload.
        let mut client = self
            .client
            .get_or_init(|| AuthorizationClient::new(self.endpoint.connect_lazy()))
            .clone();
        let answer = tokio::time::timeout(self.timeout, client.check(request))
            .await
            .map_err(|_| DelegateError::Timeout)?
            .map_err(|_| DelegateError::Call)?
            .into_inner();
        let verdict = verdict(&answer, &self.headers)?;
        // Never past the credential's expiry.
        let fresh = principal
            .and_then(|p| p.expires_at)
            .is_none_or(|exp| exp > now + self.cache_ttl.as_secs());
        if let Some(k) = key
            && fresh
        {
            self.cache.insert(k, verdict.clone());
        }
        Ok(verdict)
    }
}

/// The rule, method, path and who: what a cached answer is for.
fn cache_key(rule: &str, facts: &RequestFacts<'_>, p: &Principal) -> [u8; 32] {
    let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        rule,
        facts.method.as_str(),
        &facts.host,
        &facts.path,
        facts.query.unwrap_or(""),
        &p.authenticator,
        &p.id,
        p.issuer.as_deref().unwrap_or(""),
        p.api_key_id.as_deref().unwrap_or(""),
    ] {
        d.update(&(part.len() as u64).to_le_bytes());
        d.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

/// The `CheckRequest` for a request: what the gateway decided on, the principal in
/// `context_extensions` (`principal_id`, `principal_kind`, `authenticator`).
fn check_request(facts: &RequestFacts<'_>, principal: Option<&Principal>) -> CheckRequest {
    let headers = facts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let path = match facts.query {
        Some(q) => format!("{}?{q}", facts.path),
        None => facts.path.to_string(),
    };
    let mut context = std::collections::HashMap::new();
    if let Some(p) = principal {
        context.insert("principal_id".to_owned(), p.id.to_string());
        let kind = match p.kind {
            crate::authn::PrincipalKind::User => "user",
            crate::authn::PrincipalKind::Machine => "machine",
        };
        context.insert("principal_kind".to_owned(), kind.to_owned());
        context.insert("authenticator".to_owned(), p.authenticator.to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: facts.client_ip.to_string(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: facts.method.as_str().to_owned(),
                    host: facts.host.to_string(),
                    path,
                    scheme: match facts.scheme {
                        crate::request::facts::Scheme::Http => "http".to_owned(),
                        crate::request::facts::Scheme::Https => "https".to_owned(),
                    },
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            context_extensions: context,
            ..AttributeContext::default()
        }),
    }
}

/// OK allows (with the headers it asks to set); a denial denies; anything else is garbage.
fn verdict(
    r: &envoy_types::ext_authz::v3::pb::CheckResponse,
    allowed: &[HeaderName],
) -> Result<Verdict, DelegateError> {
    match (r.status.as_ref().map_or(0, |s| s.code), &r.http_response) {
        (0, Some(HttpResponse::DeniedResponse(_))) => Err(DelegateError::Garbage),
        (0, ok) => {
            let headers = match ok {
                Some(HttpResponse::OkResponse(ok)) => ok
                    .headers
                    .iter()
                    .filter_map(|o| o.header.as_ref())
                    .filter_map(|h| {
                        let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
                        // Only the configured names: the rest could be spoofed or reserved.
                        if !allowed.contains(&name) {
                            return None;
                        }
                        let value = HeaderValue::from_str(&h.value).ok()?;
                        // Only visible text reaches the upstream, as for identity headers.
                        h.value
                            .bytes()
                            .all(|b| b == b' ' || b.is_ascii_graphic())
                            .then_some((name, value))
                    })
                    .collect(),
                _ => Arc::default(),
            };
            Ok(Verdict::Allow(headers))
        }
        (_, _) => Ok(Verdict::Deny),
    }
}
