//! An echo upstream for `portcullis demo` and the tests: answers every request with a JSON
//! description of what it received, and records each request so tests can assert exactly
//! what the gateway forwarded.
//!
//! A few paths shape the answer, for fault and streaming tests: `/__echo/delay/{ms}` waits
//! before answering, `/__echo/bytes/{n}` streams `n` bytes back. Request bodies are streamed
//! and counted, never buffered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One request as the echo server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path and query as received.
    pub target: String,
    /// HTTP version.
    pub version: Version,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body length.
    pub body_len: u64,
    /// The client's certificate (DER) when it presented one over TLS.
    pub client_certificate: Option<Bytes>,
}

/// A running echo server.
#[derive(Debug, Clone)]
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    records: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
}

type EchoBody = http_body_util::Either<http_body_util::Full<Bytes>, StreamBody<chunks::Chunks>>;

// === impl Echo ===

impl Echo {
    /// Starts an echo server on `addr` (port 0 for any).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(addr, None).await
    }

    /// Starts an echo server speaking HTTPS (HTTP/1.1 or, by ALPN, HTTP/2).
    pub async fn start_tls(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        Self::start_with(addr, Some(tls)).await
    }

    async fn start_with(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<Self> {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let echo = Self {
            addr,
            records: Arc::clone(&records),
            connections: Arc::clone(&connections),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                let records = Arc::clone(&records);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = |cert: Option<Bytes>| {
                        service_fn(move |req| {
                            let records = Arc::clone(&records);
                            let cert = cert.clone();
                            async move { Ok::<_, Infallible>(answer(req, &records, cert).await) }
                        })
                    };
                    let mut b = auto::Builder::new(TokioExecutor::new());
                    // Room for what a gateway or its peer adds to a client's 100 fields.
                    b.http1().timer(TokioTimer::new()).max_headers(200);
                    match acceptor {
                        None => {
                            let _ = b.serve_connection(TokioIo::new(stream), svc(None)).await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let cert = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| Bytes::copy_from_slice(c.as_ref()));
                                let _ = b.serve_connection(TokioIo::new(tls), svc(cert)).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(echo)
    }

    /// Every request received so far.
    pub fn records(&self) -> Vec<Recorded> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The most recent request.
    pub fn last(&self) -> Option<Recorded> {
        self.records.lock().ok().and_then(|r| r.last().cloned())
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.records.lock().map(|r| r.len()).unwrap_or(0)
    }
}

async fn answer(
    req: Request<Incoming>,
    records: &Mutex<Vec<Recorded>>,
    client_certificate: Option<Bytes>,
) -> Response<EchoBody> {
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if let Ok(mut r) = records.lock() {
        r.push(Recorded {
            method: parts.method.clone(),
            target: target.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body_len,
            client_certificate,
        });
    }
    let path = parts.uri.path();
    if let Some(ms) = path
        .strip_prefix("/__echo/delay/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    if let Some(n) = path
        .strip_prefix("/__echo/bytes/")
        .and_then(|s| s.parse::<u64>().ok())
    {
        let mut resp = Response::new(http_body_util::Either::Right(StreamBody::new(
            chunks::Chunks::new(n),
        )));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        return resp;
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "target": target,
        "headers": headers,
        "body_bytes": body_len,
    });
    let mut resp = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
        Bytes::from(format!("{json}\n")),
    )));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A minimal stream of fixed-size chunks, so large responses are generated as they are sent.
mod chunks {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;

    const CHUNK: usize = 64 * 1024;
    static ZEROS: [u8; CHUNK] = [b'x'; CHUNK];

    /// Yields `remaining` bytes in 64 KiB chunks.
    #[derive(Debug)]
    pub(super) struct Chunks {
        remaining: u64,
    }

    impl Chunks {
        pub(super) fn new(n: u64) -> Self {
            Self { remaining: n }
        }
    }

    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            let n = usize::try_from(self.remaining).unwrap_or(CHUNK).min(CHUNK);
            self.remaining -= n as u64;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
        }
    }
}
