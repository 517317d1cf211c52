//! The floor of an HTTP decision door on Portcullis' stack, for the door benchmarks
//! (`bench/doors.sh` scenario `nginx-hyper`, `bench/door_instructions.sh`): hyper's HTTP/1
//! server on one current-thread tokio runtime, as Portcullis runs with `worker_threads: 1`,
//! answering every request `200` with an empty body and `cache-control: no-store`, as the
//! forward-auth door answers an allow; no facts, no decision, no identity headers, no metrics,
//! no logs. What it spends per request is what any authorizer built on this stack pays before
//! deciding anything, so `door / bare-answer` is the cost of the door's own work, and
//! `bare-answer` against nginx's `return 204` is the stack's.
//!
//! ```text
//! cargo run --release --example bare-answer -- 127.0.0.1:8082
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(listen) = std::env::args().nth(1) else {
        return Err("usage: bare-answer LISTEN_ADDR".into());
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        resp.headers_mut().insert(
                            hyper::header::CACHE_CONTROL,
                            hyper::header::HeaderValue::from_static("no-store"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
