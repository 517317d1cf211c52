//! Named upstreams: where allowed requests go, over pooled keep-alive connections.
//!
//! Each upstream owns a hyper client (its connection pool). A reload that leaves an upstream's
//! settings unchanged keeps its client, so pooled connections survive reloads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::LimitedBody;
use crate::config::raw::RawUpstream;
use crate::tls;

/// Request body sent upstream: the client's body, streamed, with the size limit applied.
pub type UpstreamBody = LimitedBody<Incoming>;

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the config.
    pub name: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    /// Prepended to every forwarded path; empty or `/base` without trailing slash.
    base_path: Box<str>,
    /// `Host` sent when `preserve_host` is off.
    pub host_header: HeaderValue,
    /// Forward the client's `Host`.
    pub preserve_host: bool,
    /// Time from sending the request to the response head.
    pub response_timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    raw: RawUpstream,
}

/// Why an upstream's settings are invalid; `field` is the YAML field to point at.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UpstreamError {
    /// Field of the upstream entry.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

// === impl Upstream ===

impl Upstream {
    /// Compiles an upstream, reusing `previous`'s connection pool when nothing changed.
    pub fn build(
        name: &str,
        raw: &RawUpstream,
        base_dir: &Path,
        previous: Option<&Self>,
    ) -> Result<Self, UpstreamError> {
        let url_error = |message: &str| UpstreamError {
            field: "url",
            message: message.to_owned(),
        };
        let uri: Uri = raw.url.parse().map_err(|_| UpstreamError {
            field: "url",
            message: format!(
                "`{}` is not a valid URL: expected `http://host:port` or `https://host:port/base`",
                raw.url
            ),
        })?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| url_error("URL needs a scheme (http:// or https://)"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(url_error("scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| url_error("URL needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(url_error("credentials in the URL are not allowed"));
        }
        if uri.query().is_some() {
            return Err(url_error("URL must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/');
        if crate::request::path::canonicalize(if base_path.is_empty() { "/" } else { base_path })
            .map_err(|_| url_error("URL path must be canonical"))?
            != if base_path.is_empty() { "/" } else { base_path }
        {
            return Err(url_error("URL path must be canonical"));
        }
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| url_error("URL host is not a valid header value"))?;

        let client = match previous {
            Some(p) if p.raw == *raw => p.client.clone(),
            _ => build_client(raw, base_dir)?,
        };
        Ok(Self {
            name: name.into(),
            scheme,
            authority,
            base_path: base_path.into(),
            host_header,
            preserve_host: raw.preserve_host,
            response_timeout: raw.response_timeout,
            client,
            raw: raw.clone(),
        })
    }

    /// The upstream URI for a canonical path and raw query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::from_maybe_shared(pq).ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    /// Sends a request over the pool. No timeout here: the caller applies
    /// `response_timeout`.
    pub fn send(&self, req: Request<UpstreamBody>) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }

    /// Whether this upstream speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.raw.http2
    }
}

/// Response type of [`Upstream::send`].
pub type UpstreamResponse = Response<Incoming>;

fn build_client(
    raw: &RawUpstream,
    base_dir: &Path,
) -> Result<Client<HttpsConnector<HttpConnector>, UpstreamBody>, UpstreamError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(raw.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let ca = raw.ca_file.as_ref().map(|p| base_dir.join(p));
    let tls = tls::server::client_config(ca.as_deref(), raw.http2).map_err(|e| UpstreamError {
        field: "ca_file",
        message: e.to_string(),
    })?;
    // hyper-rustls sets ALPN itself from the enabled protocols (and insists on doing so).
    let mut tls = (*tls).clone();
    tls.alpn_protocols.clear();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if raw.http2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(raw.pool_idle_timeout)
        .pool_max_idle_per_host(raw.pool_max_idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector);
    Ok(client)
}
