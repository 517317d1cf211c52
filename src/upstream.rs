//! Named upstreams: where allowed requests go, over pooled keep-alive connections.
//!
//! Each upstream owns a hyper client (its connection pool). A reload that leaves an upstream's
//! settings unchanged keeps its client, so pooled connections survive reloads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use rustls_pki_types::ServerName;

use crate::config::raw::RawUpstream;
use crate::tls;

mod pool;

pub use pool::{PooledBody, SendError};

/// Request body sent upstream: the client's body, streamed, with the size limit applied.
pub type UpstreamBody = crate::body::RequestBody;

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the config.
    pub name: Arc<str>,
    /// Prepended to every forwarded path; empty or `/base` without trailing slash.
    base_path: Box<str>,
    /// `Host` sent when `preserve_host` is off.
    pub host_header: HeaderValue,
    /// Forward the client's `Host`.
    pub preserve_host: bool,
    /// Time from sending the request to the response head.
    pub response_timeout: Duration,
    pool: Arc<pool::Pool>,
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
        // The base path is prepended to canonical paths, so it must be canonical itself.
        let path = uri.path();
        if crate::request::path::canonicalize(path).ok().as_deref() != Some(path) {
            return Err(url_error(
                "URL path must be canonical (no `//`, `.`, `..`, `;` or needless escapes)",
            ));
        }
        let base_path = path.trim_end_matches('/');
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| url_error("URL host is not a valid header value"))?;

        let pool = match previous {
            Some(p) if p.raw == *raw => Arc::clone(&p.pool),
            _ => Arc::new(build_pool(raw, base_dir, &scheme, &authority)?),
        };
        Ok(Self {
            name: name.into(),
            base_path: base_path.into(),
            host_header,
            preserve_host: raw.preserve_host,
            response_timeout: raw.response_timeout,
            pool,
            raw: raw.clone(),
        })
    }

    /// Whether [`Upstream::uri`] is the path and query unchanged (no base path to prepend).
    pub fn uri_is_path_and_query(&self) -> bool {
        self.base_path.is_empty()
    }

    /// The upstream request target (origin-form) for a canonical path and raw query.
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
        Some(Uri::from(pq))
    }

    /// Sends an upgrade request (a WebSocket handshake) on a connection of its own, which
    /// the upstream's `101` turns into the tunnel's upstream side. No timeout here: the
    /// caller applies `response_timeout`.
    pub async fn send_upgrade(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<hyper::body::Incoming>, SendError> {
        self.pool.send_upgrade(req).await
    }

    /// Sends a request over the pool. No timeout here: the caller applies
    /// `response_timeout`.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        self.pool.send(req).await
    }
}

fn build_pool(
    raw: &RawUpstream,
    base_dir: &Path,
    scheme: &Scheme,
    authority: &Authority,
) -> Result<pool::Pool, UpstreamError> {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let host = authority.host();
    let addr = format!("{}:{}", host, authority.port_u16().unwrap_or(default_port));
    let tls = if *scheme == Scheme::HTTPS {
        let ca = raw.ca_file.as_ref().map(|p| base_dir.join(p));
        let config =
            tls::server::client_config(ca.as_deref(), raw.http2).map_err(|e| UpstreamError {
                field: "ca_file",
                message: e.to_string(),
            })?;
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(name.to_owned()).map_err(|_| UpstreamError {
            field: "url",
            message: format!("`{host}` is not a valid TLS server name"),
        })?;
        Some((tokio_rustls::TlsConnector::from(config), name))
    } else {
        None
    };
    Ok(pool::Pool::new(pool::Target {
        addr,
        tls,
        scheme: scheme.clone(),
        authority: authority.clone(),
        connect_timeout: raw.connect_timeout,
        idle_timeout: raw.pool_idle_timeout,
        max_idle: raw.pool_max_idle,
        response_timeout: raw.response_timeout,
    }))
}
