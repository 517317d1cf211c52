//! Opaque tokens: OAuth 2.0 token introspection (RFC 7662).
//!
//! Invariants:
//! - The gateway authenticates to the endpoint (`client_secret_basic` or `client_secret_post`,
//!   RFC 6749 §2.3.1); the secret is read at load and never logged.
//! - Only `"active": true` (the JSON boolean) is active. An active answer whose `exp` passed, or
//!   whose `nbf` is ahead by more than `leeway`, is treated as inactive; `iss` and `aud` are
//!   checked when configured.
//! - A failed call (down, slow, non-2xx, oversized or not the documented JSON) is never
//!   cached and never treated as inactive: the request gets 503, the next one tries again.
//! - Results are cached (by the caller, keyed by the token's digest) for at most `cache_ttl`
//!   and never past `exp`; inactive answers for `inactive_ttl`. What is cached is the
//!   principal, never a decision: every route checks its own requirements on it.

use crate::config::FieldError;
use std::collections::HashMap;
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
    /// Clock skew tolerated for `nbf`, in seconds.
    leeway: u64,
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
    /// The calls under way, by the token's SHA-256: a request for a token already being asked
    /// about waits for that answer ([`Self::introspect_once`]).
    pending: Pending,
    /// Re-checks under way, by token (never shared with requests' calls).
    pending_rechecks: Pending,
    /// The re-checks' own slots, as many as `max_in_flight`.
    rechecks: tokio::sync::Semaphore,
    /// Calls in flight per client address (IPv6 by /64), at most `max_per_client` each.
    per_client: std::sync::Mutex<HashMap<u128, usize>>,
    max_per_client: usize,
}

/// One call's answer as every request waiting on it gets it; `Err`: the call failed (logged
/// once by the caller that made it).
pub type Shared = Result<Answer, Unavailable>;

/// An introspection call with no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// It failed (timed out, refused, an unreadable answer): the gateway could not decide.
    Failed,
    /// It was not made: the client's share of the calls, or every slot, was taken. A load
    /// the gateway sheds, which is a refusal it made, not a failure.
    Shed,
}

/// A caller over its client's share of the calls: refused, its call not made.
#[derive(Debug, Clone, Copy)]
struct Shed;

/// What the server said about a token.
#[derive(Debug, Clone)]
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
        // A semaphore of more permits than tokio allows panics: bounded as `server`'s are.
        if raw.leeway > crate::authn::jwt::MAX_LEEWAY {
            errors.push(FieldError::new(
                "leeway",
                crate::authn::jwt::LEEWAY_TOO_LONG,
            ));
        }
        if !(1..=1_000_000).contains(&raw.max_in_flight) {
            errors.push(FieldError::new("max_in_flight", "from 1 to 1000000"));
        }
        if !(1..=1_000_000).contains(&raw.max_in_flight_per_client) {
            errors.push(FieldError::new(
                "max_in_flight_per_client",
                "from 1 to 1000000",
            ));
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
            leeway: raw.leeway.as_secs(),
            max_bytes: raw.max_bytes,
            max_token_bytes: raw.max_token_bytes,
            cache_ttl: raw.cache_ttl,
            inactive_ttl: raw.inactive_ttl,
            calls_ok: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            calls_shed: AtomicU64::new(0),
            pending: std::sync::Mutex::default(),
            pending_rechecks: std::sync::Mutex::default(),
            rechecks: tokio::sync::Semaphore::new(raw.max_in_flight),
            per_client: std::sync::Mutex::default(),
            max_per_client: raw.max_in_flight_per_client,
        })
    }

    /// [`Self::introspect`], once for all the requests asking about one token at the same
    /// time: the first makes the call, the others wait for its answer.
    ///
    /// Why: 60 requests at once with one uncached token made 60 calls, each holding one of
    /// the `max_in_flight` slots: a page loading its assets with a fresh token could shed
    /// its own requests (503). Regression: tests (it)
    /// credentials::concurrent_requests_with_one_token_make_one_call
    ///
    /// The call counts against `client`'s share of the slots (`max_in_flight_per_client`);
    /// requests waiting on another's call take none.
    pub async fn introspect_once(
        &self,
        token: &str,
        authenticator: &Arc<str>,
        now: u64,
        client: std::net::IpAddr,
        fresh: bool,
    ) -> Shared {
        // Why: every made-up token is a call; 110 of them at once from one client filled
        // the 64 slots, and a valid token arriving meanwhile got 503.
        // Regression: tests (it) credentials::one_client_cannot_fill_the_introspection_slots
        let call = || async {
            let Some(_share) = ClientShare::take(self, client) else {
                self.calls_shed.fetch_add(1, Ordering::Relaxed);
                return Err(Shed);
            };
            Ok(self.introspect(token, authenticator, now, Slot::Try).await)
        };
        // By SHA-256, never a short hash: a collision would hand one token's principal to
        // another.
        let key = crate::secret::sha256(token.as_bytes());
        // A re-check (`fresh`) looks for a revocation: it joins no request's call (which may
        // have begun long before), only another re-check of the same token under way (begun
        // at most `timeout` before it).
        //
        // Why re-checks have slots of their own, and wait for one: shed, a re-check kept the
        // tunnel ("could not decide"), so a client whose token was revoked kept its tunnel
        // open by sending made-up tokens from its own address, filling its share (23 s past
        // revocation under a tester's flood). Regression: tests (it)
        // edge::a_client_cannot_shed_its_own_recheck
        //
        // Why they share one call per token: in the requests' slots, and ahead of them, a
        // client with a thousand streams re-checked every second would have shed everyone
        // else's calls. Regression: tests (it) edge::rechecks_of_one_token_share_a_call
        let answer = if fresh {
            let call = || async {
                // A re-check that found no slot in time could not decide (the stream keeps
                // its last answer), as one whose call failed.
                Ok(self
                    .introspect(token, authenticator, now, Slot::Recheck)
                    .await
                    .map_err(|_| Unavailable::Failed))
            };
            once(&self.pending_rechecks, key, call).await
        } else {
            once(&self.pending, key, call).await
        };
        // A caller over its share is refused alone: `Shed` leaves the cell empty, and the
        // next waiter makes the call with its own share.
        let Ok(answer) = answer else {
            return Err(Unavailable::Shed);
        };
        // Judged at the first caller's clock: a later waiter's own may be past `exp`.
        match answer {
            Ok(Answer::Active(_, Some(exp))) if exp <= now => {
                Ok(Answer::Inactive(TokenError::Expired))
            }
            other => other,
        }
    }

    /// Asks the server about `token` (no cache here), in one of the `max_in_flight` slots
    /// (`slot` says whether to wait for one). `now` is Unix seconds.
    pub async fn introspect(
        &self,
        token: &str,
        authenticator: &Arc<str>,
        now: u64,
        slot: Slot,
    ) -> Result<Answer, Unavailable> {
        let permit = match slot {
            Slot::Try => self.in_flight.try_acquire().ok(),
            Slot::Recheck => tokio::time::timeout(self.timeout, self.rechecks.acquire())
                .await
                .ok()
                .and_then(Result::ok),
        };
        let Some(_permit) = permit else {
            self.calls_shed.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable::Shed);
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
        Ok(self.judge(result.map_err(|_| Unavailable::Failed)?, authenticator, now))
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
        read_answer(&fetched.body)
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
        // Why the leeway: the server said active by its own clock; a server's clock a few
        // seconds ahead of the gateway's had its fresh tokens refused (and the refusal cached
        // for `inactive_ttl`), where the same skew passes a JWT. (`exp` stays exact: a token
        // is refused a little early at worst.) Regression: tests (it)
        // credentials::introspection_inactive_and_unusable_answers_are_refused
        if nbf.is_some_and(|n| n > now.saturating_add(self.leeway)) {
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

/// Whether a call waits for one of the `max_in_flight` slots or is shed when none is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A request's call: shed (503) when the `max_in_flight` slots are full.
    Try,
    /// A re-check of an open stream: in the re-checks' own `max_in_flight` slots, waiting
    /// for one up to the call's timeout.
    Recheck,
}

/// One of a client's calls in flight, given back when dropped.
struct ClientShare<'a> {
    introspector: &'a Introspector,
    client: u128,
}

impl<'a> ClientShare<'a> {
    /// A share for `client`, unless it has `max_per_client` calls in flight already.
    fn take(introspector: &'a Introspector, client: std::net::IpAddr) -> Option<Self> {
        // IPv6 by /64, as rate limits count: a site holds more addresses than anyone could
        // track.
        let client = crate::request::facts::client_site(client);
        let mut counts = introspector.per_client.lock().ok()?;
        let n = counts.entry(client).or_insert(0);
        if *n >= introspector.max_per_client {
            return None;
        }
        *n += 1;
        Some(Self {
            introspector,
            client,
        })
    }
}

impl Drop for ClientShare<'_> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.introspector.per_client.lock()
            && let Some(n) = counts.get_mut(&self.client)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// Calls under way, by token digest: who asks meanwhile waits for the same answer.
type Pending = std::sync::Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<Shared>>>>;

/// `call`'s answer, made once for all who ask about the token `key` in `pending` meanwhile.
async fn once<F, Fut>(pending: &Pending, key: [u8; 32], call: F) -> Result<Shared, Shed>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Shared, Shed>>,
{
    let mut leave = Leave {
        pending,
        key,
        cell: match pending.lock() {
            Ok(mut pending) => Some(Arc::clone(pending.entry(key).or_default())),
            // A poisoned map (a panic while it was held): no sharing.
            Err(_) => None,
        },
    };
    let cell = leave
        .cell
        .get_or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()));
    cell.get_or_try_init(call).await.cloned()
}

/// Takes a call off the pending map once it is answered, or once its last waiter is gone
/// (every one of them cancelled: the next request makes the call again).
///
/// Every reference to a pending cell is taken from the map and given back under its lock
/// (here), so the count read under the lock is exact: the map's and this one's are the last
/// two when no one else waits. Regression: tests::a_pending_call_leaves_no_entry
struct Leave<'a> {
    pending: &'a Pending,
    key: [u8; 32],
    cell: Option<Arc<tokio::sync::OnceCell<Shared>>>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let done = cell.initialized() || Arc::strong_count(&cell) <= 2;
        if done
            && pending
                .get(&self.key)
                .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            pending.remove(&self.key);
        }
        // Given back while the lock is held.
        drop(cell);
    }
}

/// An introspection answer: a JSON object with a boolean `active`, no member name repeated
/// at any depth (else a failure: 503, never cached).
///
/// Why strict: serde_json keeps the last of two equal names, other parsers the first;
/// `{"active":false,"active":true}` was taken as active, `"sub":"admin","sub":"u1"` as `u1`.
/// Tokens are held to this (`verify::b64_json`); an answer deciding as much is too.
/// Regression: tests::answers_repeating_a_member_are_refused
fn read_answer(body: &[u8]) -> Result<Map<String, Value>, FetchError> {
    match serde_json::from_slice::<super::jwt::verify::Strict>(body) {
        Ok(super::jwt::verify::Strict(Value::Object(m))) => match m.get("active") {
            Some(Value::Bool(_)) => Ok(m),
            _ => Err(FetchError::Invalid("`active` is not a boolean".into())),
        },
        // The visitor accepts every JSON value: a data error is the repeated name.
        Err(e) if e.is_data() => Err(FetchError::Invalid("a member name repeated".into())),
        _ => Err(FetchError::Invalid("not a JSON object".into())),
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

    /// Two waiters cancelled together leave no entry behind, nor does an answered call.
    #[test]
    fn a_pending_call_leaves_no_entry() {
        let pending = std::sync::Mutex::new(HashMap::new());
        let key = [7u8; 32];
        let join = || Leave {
            pending: &pending,
            key,
            cell: Some(Arc::clone(pending.lock().unwrap().entry(key).or_default())),
        };
        let (first, second) = (join(), join());
        drop(first);
        assert_eq!(pending.lock().unwrap().len(), 1, "the second still waits");
        drop(second);
        assert!(
            pending.lock().unwrap().is_empty(),
            "the last waiter took it off"
        );

        let answered = join();
        let waiting = join();
        assert!(
            answered
                .cell
                .as_ref()
                .unwrap()
                .set(Err(Unavailable::Failed))
                .is_ok()
        );
        drop(answered);
        assert!(pending.lock().unwrap().is_empty(), "answered: off at once");
        drop(waiting);
        assert!(pending.lock().unwrap().is_empty());
    }

    #[test]
    fn answers_repeating_a_member_are_refused() {
        let ok = read_answer(br#"{"active":true,"sub":"u1","ext":{"a":1}}"#).unwrap();
        assert_eq!(ok["sub"], "u1");
        for body in [
            &br#"{"active":false,"active":true,"sub":"u1"}"#[..],
            br#"{"active":true,"sub":"admin","sub":"u1"}"#,
            br#"{"active":true,"sub":"u1","ext":{"role":"a","role":"b"}}"#,
        ] {
            let e = read_answer(body).unwrap_err();
            assert!(e.to_string().contains("repeated"), "{e}");
        }
        for body in [&b"[]"[..], b"{\"active\":\"true\"}", b"{}", b"not json"] {
            assert!(read_answer(body).is_err());
        }
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/d=é"), "a+b%2Bc%2Fd%3D%C3%A9");
        assert_eq!(form_encode("AZaz09-._*"), "AZaz09-._*");
    }
}
