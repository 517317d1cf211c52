//! Opaque tokens: OAuth 2.0 token introspection (RFC 7662).
//!
//! Invariants:
//! - The gateway authenticates to the endpoint (`client_secret_basic` or `client_secret_post`,
//!   RFC 6749 §2.3.1); the secret is read at load and never logged.
//! - Only `"active": true` (the JSON boolean) is active. An active answer whose `exp` passed, or
//!   whose `nbf` is ahead, is treated as inactive; `iss` and `aud` are checked when configured.
//! - A failed call (down, slow, non-2xx, oversized or not the documented JSON) is never
//!   cached and never treated as inactive: the request gets 503, the next one tries again.
//! - Results are cached (by the caller, keyed by the token's digest) for at most `cache_ttl`
//!   and never past `exp`; inactive answers for `inactive_ttl`. What is cached is the
//!   principal, never a decision: every route checks its own requirements on it.

use crate::config::FieldError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::Full;
use serde_json::{Map, Value};

use super::http_client::{FetchError, HttpClient};
use super::jwt::remote::RemoteSource;
use super::jwt::verify::{TokenError, check_audience};
use super::principal::{Mapping, Principal};
use crate::config::raw::{RawClientAuthMethod, RawIntrospection};
use crate::secret::Secret;

/// A compiled introspection authenticator.
pub struct Introspector {
    endpoint: Uri,
    client: HttpClient,
    /// `Authorization: Basic …` for `client_secret_basic`.
    basic: Option<Secret<HeaderValue>>,
    /// `client_id=…&client_secret=…&` for `client_secret_post`.
    post: Option<Secret<String>>,
    token_type_hint: Option<Box<str>>,
    issuer: Option<Arc<str>>,
    audiences: Box<[Box<str>]>,
    token_types: Box<[Box<str>]>,
    mapping: Mapping,
    /// Bounds the calls in flight; a request finding none free gets 503.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Unix second of the last failure logged (failures are logged at most once a second).
    last_warned: AtomicU64,
    timeout: Duration,
    max_bytes: usize,
    /// Longest token accepted.
    pub max_token_bytes: usize,
    /// Longest an active answer is reused.
    pub cache_ttl: Duration,
    /// How long an inactive answer is reused.
    pub inactive_ttl: Duration,
    /// Calls answered (active or not).
    pub calls_ok: AtomicU64,
    /// Calls that failed.
    pub calls_failed: AtomicU64,
    /// Calls refused because `max_in_flight` were already running.
    pub calls_shed: AtomicU64,
}

/// What the server said about a token.
#[derive(Debug)]
pub enum Answer {
    /// Active: the principal, and the Unix second from which it stops being valid (`exp`).
    Active(Arc<Principal>, Option<u64>),
    /// Not active, or active but unusable here (expired, wrong audience, no subject).
    Inactive(TokenError),
}

// === impl Introspector ===

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// Compiles the raw settings; errors are (field, message).
    pub fn compile(
        raw: &RawIntrospection,
        base_dir: &std::path::Path,
        watched: &mut Vec<std::path::PathBuf>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let endpoint = RemoteSource::parse_url(&raw.endpoint)
            .map_err(|m| errors.push(FieldError::new("endpoint", m)))
            .ok();
        if raw.max_in_flight == 0 {
            errors.push(FieldError::new("max_in_flight", "must be at least 1"));
        }
        if raw.token_types.iter().any(String::is_empty) {
            errors.push(FieldError::new(
                "token_types",
                "must not hold empty strings",
            ));
        }
        if raw.client_id.is_empty() || raw.client_id.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "client_id",
                "must be a non-empty visible string",
            ));
        }
        let secret = crate::secret::read(&raw.client_secret, base_dir, watched)
            .map_err(|m| errors.push(FieldError::new("client_secret", m)))
            .ok();
        let secret_text = secret
            .as_ref()
            .and_then(|s| std::str::from_utf8(s.expose()).ok().map(str::to_owned));
        if secret.is_some() && secret_text.is_none() {
            errors.push(FieldError::new("client_secret", "must be UTF-8 text"));
        }
        if raw.timeout < Duration::from_millis(50) {
            errors.push(FieldError::new("timeout", "must be at least 50ms"));
        }
        if raw.max_bytes < 1024 {
            errors.push(FieldError::new("max_bytes", "must be at least 1024"));
        }
        if raw.audiences.iter().any(String::is_empty) {
            errors.push(FieldError::new(
                "audiences",
                "audiences must not be empty strings",
            ));
        }
        let ca = raw.ca_file.as_ref().map(|c| base_dir.join(c));
        if let Some(ca) = &ca {
            watched.push(ca.clone());
        }
        let tls = crate::tls::server::client_config(ca.as_deref(), false)
            .map_err(|e| errors.push(FieldError::new("ca_file", e.to_string())))
            .ok();
        let (Some(endpoint), Some(secret), Some(tls), true) =
            (endpoint, secret_text, tls, errors.is_empty())
        else {
            return Err(errors);
        };
        let (basic, post) = match raw.client_auth {
            RawClientAuthMethod::ClientSecretBasic => {
                let pair = format!("{}:{}", form_encode(&raw.client_id), form_encode(&secret));
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                let mut value = HeaderValue::try_from(value)
                    .map_err(|_| vec![FieldError::new("client_secret", "unusable")])?;
                value.set_sensitive(true);
                (Some(Secret::new(value)), None)
            }
            RawClientAuthMethod::ClientSecretPost => (
                None,
                Some(Secret::new(format!(
                    "client_id={}&client_secret={}&",
                    form_encode(&raw.client_id),
                    form_encode(&secret)
                ))),
            ),
        };
        Ok(Self {
            endpoint,
            client: HttpClient::new(&tls),
            basic,
            post,
            token_type_hint: raw.token_type_hint.as_deref().map(Into::into),
            issuer: raw.issuer.as_deref().map(Into::into),
            audiences: raw.audiences.iter().map(|a| a.as_str().into()).collect(),
            token_types: raw.token_types.iter().map(|a| a.as_str().into()).collect(),
            mapping: Mapping::compile(&raw.principal),
            in_flight: Arc::new(tokio::sync::Semaphore::new(raw.max_in_flight)),
            last_warned: AtomicU64::new(0),
            timeout: raw.timeout,
            max_bytes: raw.max_bytes,
            max_token_bytes: raw.max_token_bytes,
            cache_ttl: raw.cache_ttl,
            inactive_ttl: raw.inactive_ttl,
            calls_ok: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            calls_shed: AtomicU64::new(0),
        })
    }

    /// Asks the server about `token` (no cache here). `now` is Unix seconds.
    pub async fn introspect(
        &self,
        token: &str,
        authenticator: &Arc<str>,
        now: u64,
    ) -> Result<Answer, FetchError> {
        let Ok(_permit) = self.in_flight.try_acquire() else {
            self.calls_shed.fetch_add(1, Ordering::Relaxed);
            return Err(FetchError::Transport(
                "too many introspection calls in flight".into(),
            ));
        };
        let result = self.call(token).await;
        match &result {
            Ok(_) => {
                self.calls_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.calls_failed.fetch_add(1, Ordering::Relaxed);
                // At most one line a second: an outage must not flood the logs.
                if self.last_warned.swap(now, Ordering::Relaxed) != now {
                    // Redacted: an endpoint may be keyed by its query (`?apikey=…`).
                    let endpoint = crate::secret::redacted_url(&self.endpoint.to_string());
                    tracing::warn!(endpoint, error = %e, "Token introspection failed");
                }
            }
        }
        Ok(self.judge(result?, authenticator, now))
    }

    async fn call(&self, token: &str) -> Result<Map<String, Value>, FetchError> {
        let mut body = self
            .post
            .as_ref()
            .map(|p| p.expose().clone())
            .unwrap_or_default();
        body.push_str("token=");
        body.push_str(&form_encode(token));
        if let Some(h) = &self.token_type_hint {
            body.push_str("&token_type_hint=");
            body.push_str(&form_encode(h));
        }
        let mut req = Request::post(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        if let Some(b) = &self.basic {
            req.headers_mut()
                .insert(header::AUTHORIZATION, b.expose().clone());
        }
        let fetched = self.client.send(req, self.timeout, self.max_bytes).await?;
        match serde_json::from_slice::<Value>(&fetched.body) {
            Ok(Value::Object(m)) => match m.get("active") {
                Some(Value::Bool(_)) => Ok(m),
                _ => Err(FetchError::Invalid("`active` is not a boolean".into())),
            },
            _ => Err(FetchError::Invalid("not a JSON object".into())),
        }
    }

    /// What an answer means for this gateway.
    fn judge(&self, claims: Map<String, Value>, authenticator: &Arc<str>, now: u64) -> Answer {
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Answer::Inactive(TokenError::Inactive);
        }
        // Why: some servers call a refresh token active; only access tokens may pass here.
        for field in ["token_type", "token_use"] {
            match claims.get(field) {
                None => {}
                Some(Value::String(t))
                    if self.token_types.iter().any(|w| w.eq_ignore_ascii_case(t)) => {}
                Some(_) => return Answer::Inactive(TokenError::WrongTokenType),
            }
        }
        let date = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(TokenError::ClaimType),
        };
        let (exp, nbf) = match (date("exp"), date("nbf")) {
            (Ok(e), Ok(n)) => (e, n),
            (Err(e), _) | (_, Err(e)) => return Answer::Inactive(e),
        };
        if exp.is_some_and(|e| now >= e) {
            return Answer::Inactive(TokenError::Expired);
        }
        if nbf.is_some_and(|n| n > now) {
            return Answer::Inactive(TokenError::NotYetValid);
        }
        if let Some(iss) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(&**iss)
        {
            return Answer::Inactive(TokenError::UnknownIssuer);
        }
        if !self.audiences.is_empty()
            && let Err(e) = check_audience(claims.get("aud"), &self.audiences)
        {
            return Answer::Inactive(e);
        }
        match self
            .mapping
            .principal(claims, authenticator, self.issuer.clone(), exp)
        {
            Ok(p) => Answer::Active(Arc::new(p), exp),
            Err(_) => Answer::Inactive(TokenError::NoPrincipal),
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/d=é"), "a+b%2Bc%2Fd%3D%C3%A9");
        assert_eq!(form_encode("AZaz09-._*"), "AZaz09-._*");
    }
}
