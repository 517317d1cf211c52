//! The floor of Portcullis' HTTP stack, for the load benchmark (`bench/run.sh`, scenario
//! `hyper-bare`): hyper's HTTP/1 server and client on one current-thread tokio runtime, as
//! Portcullis runs with `worker_threads: 1`, forwarding every request unchanged to one upstream
//! over pooled keep-alive connections; no policy, no header rewriting, no metrics, no logs.
//! What it spends per request is what any proxy built on this stack pays before doing
//! anything, so `portcullis / hyper-bare` is the cost of the gateway's own work.
//!
//! ```text
//! cargo run --release --example bare-proxy -- 127.0.0.1:8081 127.0.0.1:8080
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Idle = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        return Err("usage: bare-proxy LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let upstream: Arc<str> = upstream.into();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            let idle: Idle = Arc::default();
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let (idle, upstream) = (Arc::clone(&idle), Arc::clone(&upstream));
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        forward(Arc::clone(&idle), Arc::clone(&upstream), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}

/// Sends the request on an idle connection, or a new one, and streams the response back.
async fn forward(
    idle: Idle,
    upstream: Arc<str>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<PooledBody>, Box<dyn std::error::Error + Send + Sync>> {
    let ready = {
        let mut idle = idle.lock().map_err(|_| "pool poisoned")?;
        std::iter::from_fn(|| idle.pop()).find(|s| !s.is_closed() && s.is_ready())
    };
    let mut sender = match ready {
        Some(s) => s,
        None => {
            let tcp = TcpStream::connect(&*upstream).await?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|body| PooledBody {
        body,
        back: Some((idle, sender)),
    }))
}

/// A response body that puts its connection back in the pool when it ends.
struct PooledBody {
    body: Incoming,
    back: Option<(Idle, SendRequest<Incoming>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((idle, sender)) = self.back.take()
            && let Ok(mut idle) = idle.lock()
        {
            idle.push(sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release();
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
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
