//! How a delegate is reached: TCP, then TLS for an `https://` delegate (rustls, the roots of
//! [`crate::tls::server::client_config`]: webpki's, or only the delegate's `ca_file`; ALPN
//! `h2`), its certificate checked against the URL's host.
//!
//! Why our own connector: tonic's channel is built without its TLS features, and with its
//! own connector it sent an `https://` delegate's checks, bearer tokens included, in
//! cleartext, and believed a plaintext server behind an `https://` URL.
//! Regression: tests (it) delegate::https_delegate_is_reached_over_tls_only

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection to a delegate, plain or TLS.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Connects to the delegate a URI names.
#[derive(Clone)]
pub(super) struct Connector {
    /// For `https://`: the client config and the name its certificate must show, made at
    /// config load (`None`: cleartext HTTP/2).
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Connector {
    /// A connector for a delegate: TLS with `tls` when given.
    pub(super) fn new(tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>) -> Self {
        Self { tls }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Stream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no host"))?;
            // `[::1]` in a URI, `::1` to connect to.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri
                .port_u16()
                .unwrap_or(if tls.is_some() { 443 } else { 80 });
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let Some((config, name)) = tls else {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Stream>));
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            // gRPC is HTTP/2 only: a server that did not pick `h2` would be spoken to in a
            // protocol it did not agree to.
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the delegate did not negotiate h2",
                ));
            }
            Ok(TokioIo::new(Box::new(stream) as Box<dyn Stream>))
        })
    }
}
