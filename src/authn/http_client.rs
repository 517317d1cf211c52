//! The HTTP client the authenticators use to reach key servers and introspection endpoints:
//! rustls only, a deadline over the whole exchange, and a cap on the response size so a
//! hostile or broken server can neither hang nor flood the gateway.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client for small JSON documents.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Why a fetch failed. Display names the kind, never a response body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// Connection, TLS or protocol failure.
    #[error("request failed: {0}")]
    Transport(String),
    /// A non-2xx status.
    #[error("status {0}")]
    Status(StatusCode),
    /// More than the configured maximum.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// Not the expected document.
    #[error("invalid document: {0}")]
    Invalid(String),
}

/// A response read in full.
#[derive(Debug)]
pub struct Fetched {
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

// === impl FetchError ===

impl FetchError {
    /// Low-cardinality label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Transport(_) => "transport",
            Self::Status(_) => "status",
            Self::TooLarge(_) => "too_large",
            Self::Invalid(_) => "invalid",
        }
    }
}

// === impl HttpClient ===

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client trusting `tls` (public roots or a configured CA).
    pub fn new(tls: &rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let mut tls = tls.clone();
        // hyper-rustls sets ALPN itself (HTTP/1.1 only here).
        tls.alpn_protocols.clear();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Self { client }
    }

    /// Sends `req` and reads the response, all within `timeout` and `max_bytes`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Fetched, FetchError> {
        tokio::time::timeout(timeout, self.exchange(req, max_bytes))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    /// GET `uri`.
    pub async fn get(
        &self,
        uri: &Uri,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Fetched, FetchError> {
        let req = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::default())
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        self.send(req, timeout, max_bytes).await
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        max_bytes: usize,
    ) -> Result<Fetched, FetchError> {
        let resp: Response<hyper::body::Incoming> = self
            .client
            .request(req)
            .await
            .map_err(|e| FetchError::Transport(crate::errors::text(&e)))?;
        let (parts, mut body) = resp.into_parts();
        if !parts.status.is_success() {
            return Err(FetchError::Status(parts.status));
        }
        if parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > max_bytes)
        {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Transport(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max_bytes {
                    return Err(FetchError::TooLarge(max_bytes));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Fetched {
            headers: parts.headers,
            body: buf.freeze(),
        })
    }
}

/// `max-age` from `Cache-Control`, if any (`no-store`/`no-cache` count as 0).
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut out = None;
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
                return Some(Duration::ZERO);
            }
            if let Some((k, n)) = d.split_once('=')
                && k.trim().eq_ignore_ascii_case("max-age")
                && let Ok(n) = n.trim().trim_matches('"').parse::<u64>()
            {
                out = Some(Duration::from_secs(n));
            }
        }
    }
    out
}

/// Whether an `http://` URL is allowed: only to loopback, where nothing can be intercepted.
pub fn is_loopback(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn cache_control() {
        let mut h = HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            "cache-control",
            HeaderValue::from_static("public, max-age=3600"),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(3600)));
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        assert_eq!(max_age(&h), Some(Duration::ZERO));
    }

    #[test]
    fn loopback_only_for_http() {
        for (u, ok) in [
            ("http://127.0.0.1:8/x", true),
            ("http://localhost/x", true),
            ("http://[::1]:9/x", true),
            ("http://10.0.0.1/x", false),
            ("http://idp.example.com/x", false),
        ] {
            assert_eq!(is_loopback(&u.parse().unwrap()), ok, "{u}");
        }
    }
}
