//! Keep-alive connections to one upstream, without a global lock per request beyond one short
//! uncontended mutex, and without the generic client's per-request bookkeeping.
//!
//! HTTP/1: idle connections wait in a queue; a request takes a ready one or opens a new one,
//! and the connection goes back when the response body ends. HTTP/2 (by ALPN): one shared
//! connection, multiplexed, replaced when it closes.
//!
//! A client that gives up (an HTTP/2 stream reset, a closed connection) drops its request at
//! any point; that must not cost an upstream connection. A connect under way finishes in the
//! background and its connection joins the pool; an HTTP/1 exchange under way is finished in
//! the background, its response body read and discarded up to [`DRAIN_BYTES`] within
//! [`DRAIN_TIME`], and the connection goes back to the pool (closed only past those bounds).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::UpstreamBody;

mod upgrade;

/// Largest read buffer of an HTTP/1 upstream connection (hyper's default grows to 400 KiB);
/// also the largest response head an upstream may send.
const UPSTREAM_READ_BUF: usize = 32 * 1024;
/// Response body bytes read and discarded to keep the connection of an abandoned exchange.
const DRAIN_BYTES: usize = 64 * 1024;
/// Time an abandoned exchange gets (response head and drained body) to keep its connection.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect refused or failed.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// TCP (and TLS) connect did not finish in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// TLS handshake failed (untrusted certificate, wrong name, protocol).
    #[error("tls handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http exchange failed: {0}")]
    Http(#[source] hyper::Error),
}

/// How to reach the upstream.
pub(super) struct Target {
    /// `host:port` to connect to.
    pub(super) addr: String,
    /// TLS settings for https upstreams, with the name to verify.
    pub(super) tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Scheme and authority, for HTTP/2 requests' pseudo-headers.
    pub(super) scheme: http::uri::Scheme,
    pub(super) authority: http::uri::Authority,
    pub(super) connect_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_idle: usize,
    /// Bounds the background completion of an abandoned exchange (with [`DRAIN_TIME`]).
    pub(super) response_timeout: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// The pool of one upstream.
#[derive(Debug)]
pub(super) struct Pool {
    target: Target,
    idle: Mutex<VecDeque<(http1::SendRequest<UpstreamBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

type Connect = Pin<Box<dyn Future<Output = Result<Sender, SendError>> + Send>>;
type Exchange = Pin<Box<dyn Future<Output = hyper::Result<Response<Incoming>>> + Send>>;

/// A connect that, when its request is dropped first, completes in the background and leaves
/// its connection in the pool.
struct Connecting {
    fut: Option<Connect>,
    pool: Arc<Pool>,
}

/// An HTTP/1 exchange that, when its request is dropped first, is finished in the background
/// so its connection can go back to the pool.
struct InFlight {
    fut: Option<Exchange>,
    sender: Option<http1::SendRequest<UpstreamBody>>,
    pool: Arc<Pool>,
}

/// A response body that returns its HTTP/1 connection to the pool when it ends.
#[derive(Debug)]
pub struct PooledBody {
    /// Always `Some` until dropped (taken to drain it in the background).
    body: Option<Incoming>,
    back: Option<(Arc<Pool>, http1::SendRequest<UpstreamBody>)>,
}

// === impl Pool ===

impl Pool {
    pub(super) fn new(target: Target) -> Self {
        Self {
            target,
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
        }
    }

    /// Sends a request (origin-form URI) and returns the response head with its body.
    pub(super) async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let sender = match self.checkout() {
            Some(Sender::H1(mut s)) if !s.is_ready() => match s.ready().await {
                Ok(()) => Sender::H1(s),
                Err(_) => self.connect_or_finish().await?,
            },
            Some(s) => s,
            // Boxed: a new connection is rare, and its TLS and HTTP/2 handshake futures are
            // large; inline, every request's future would carry and move them.
            None => self.connect_or_finish().await?,
        };
        let mut req = req;
        match sender {
            Sender::H1(mut s) => {
                *req.version_mut() = http::Version::HTTP_11;
                // Why: dropping hyper's response future closes the connection; a client that
                // resets its streams would then cost one upstream connection each.
                // Regression: tests (it) abuse::paced_rapid_reset_reuses_upstream_connections
                let fut: Exchange = Box::pin(s.send_request(req));
                let (resp, s) = InFlight {
                    fut: Some(fut),
                    sender: Some(s),
                    pool: Arc::clone(self),
                }
                .await?;
                let pool = Arc::clone(self);
                Ok(resp.map(|body| PooledBody {
                    body: Some(body),
                    back: Some((pool, s)),
                }))
            }
            Sender::H2(mut s) => {
                *req.version_mut() = http::Version::HTTP_2;
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(self.target.scheme.clone());
                // `:authority` carries the Host chosen by the proxy (the upstream's, or the
                // client's with preserve_host), so the two never disagree.
                let authority = req
                    .headers_mut()
                    .remove(http::header::HOST)
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
                parts.authority = Some(authority.unwrap_or_else(|| self.target.authority.clone()));
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
                let resp = s.send_request(req).await.map_err(SendError::Http)?;
                Ok(resp.map(|body| PooledBody {
                    body: Some(body),
                    back: None,
                }))
            }
        }
    }

    /// Opens a new connection; when the request is dropped first, it still joins the pool.
    async fn connect_or_finish(self: &Arc<Self>) -> Result<Sender, SendError> {
        Connecting {
            fut: Some(Box::pin(Arc::clone(self).connect())),
            pool: Arc::clone(self),
        }
        .await
    }

    fn checkout(&self) -> Option<Sender> {
        if let Ok(h2) = self.h2.lock()
            && let Some(s) = h2.as_ref()
            && !s.is_closed()
        {
            return Some(Sender::H2(s.clone()));
        }
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        // Connections are pushed back as their responses end; one whose connection task has
        // not yet noticed is briefly not ready. Take a ready one if there is one, else the
        // first one still settling, whose readiness the caller awaits: opening a new
        // connection instead would grow the pool under concurrent bursts.
        let mut settling = None;
        for _ in 0..idle.len() {
            let (s, since) = idle.pop_front()?;
            if s.is_closed() || now.duration_since(since) > self.target.idle_timeout {
                continue;
            }
            if s.is_ready() {
                if let Some(other) = settling {
                    idle.push_front(other);
                }
                return Some(Sender::H1(s));
            }
            if settling.is_none() {
                settling = Some((s, since));
            } else {
                idle.push_back((s, since));
            }
        }
        settling.map(|(s, _)| Sender::H1(s))
    }

    fn checkin(&self, s: http1::SendRequest<UpstreamBody>) {
        if s.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.target.max_idle
        {
            idle.push_back((s, Instant::now()));
        }
    }

    async fn connect(self: Arc<Self>) -> Result<Sender, SendError> {
        let t = &self.target;
        let connect = async {
            let tcp = TcpStream::connect(&t.addr)
                .await
                .map_err(SendError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &t.tls {
                None => Ok((Io::Plain(tcp), false)),
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(SendError::Tls)?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((Io::Tls(Box::new(tls)), h2))
                }
            }
        };
        let (io, h2) = tokio::time::timeout(t.connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout)??;
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(SendError::Http)?;
            tokio::spawn(conn);
            if let Ok(mut slot) = self.h2.lock() {
                *slot = Some(sender.clone());
            }
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                // Why: hyper's read buffer grows to 400 KiB on a fast upstream, and every
                // body chunk handed on is a slice of it: a client that stops reading would
                // pin the whole buffer.
                // Regression: tests (it) memory::h1_slow_readers_hold_a_bounded_buffer_each
                .max_buf_size(UPSTREAM_READ_BUF)
                .handshake(TokioIo::new(io))
                .await
                .map_err(SendError::Http)?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
    }
}

/// Runs `fut` to its end on the runtime, if there still is one (not while it shuts down).
fn finish_in_background(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fut);
    }
}

/// Reads and discards what is left of an abandoned response, within [`DRAIN_BYTES`] and
/// `deadline`; the connection goes back to the pool only if the body ended.
async fn drain(pool: Arc<Pool>, mut body: Incoming, sender: http1::SendRequest<UpstreamBody>) {
    use http_body_util::BodyExt;
    let mut left = DRAIN_BYTES;
    while !body.is_end_stream() {
        match body.frame().await {
            Some(Ok(f)) => match f.data_ref() {
                Some(d) if d.len() > left => return,
                Some(d) => left -= d.len(),
                None => {}
            },
            Some(Err(_)) => return,
            None => break,
        }
    }
    pool.checkin(sender);
}

// === impl Connecting ===

impl Future for Connecting {
    type Output = Result<Sender, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(SendError::ConnectTimeout));
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            let pool = Arc::clone(&self.pool);
            finish_in_background(async move {
                // An HTTP/2 connection is already the pool's shared one.
                if let Ok(Sender::H1(s)) = fut.await {
                    pool.checkin(s);
                }
            });
        }
    }
}

// === impl InFlight ===

impl Future for InFlight {
    type Output = Result<(Response<Incoming>, http1::SendRequest<UpstreamBody>), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(SendError::ConnectTimeout));
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        let out = match (out, self.sender.take()) {
            (Ok(resp), Some(s)) => Ok((resp, s)),
            (Ok(_), None) => Err(SendError::ConnectTimeout),
            (Err(e), _) => Err(SendError::Http(e)),
        };
        Poll::Ready(out)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (Some(fut), Some(sender)) = (self.fut.take(), self.sender.take()) {
            let pool = Arc::clone(&self.pool);
            let deadline = pool.target.response_timeout.min(DRAIN_TIME);
            finish_in_background(async move {
                let _ = tokio::time::timeout(deadline, async move {
                    if let Ok(resp) = fut.await {
                        drain(pool, resp.into_body(), sender).await;
                    }
                })
                .await;
            });
        }
    }
}

// === impl PooledBody ===

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty (HEAD, 204, Content-Length: 0) still
        // leaves a reusable connection; a half-read one is drained in the background first.
        if let (Some((pool, sender)), Some(body)) = (self.back.take(), self.body.take()) {
            if body.is_end_stream() {
                pool.checkin(sender);
            } else {
                let deadline = pool.target.response_timeout.min(DRAIN_TIME);
                finish_in_background(async move {
                    let _ = tokio::time::timeout(deadline, drain(pool, body, sender)).await;
                });
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = polled
            && let Some((pool, sender)) = self.back.take()
        {
            pool.checkin(sender);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Plain or TLS stream to the upstream.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
