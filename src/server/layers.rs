//! The layers every door's requests pass through, as tower layers around the door's
//! [`Handler`]: the stack is built once per connection and called once per request, the same
//! for the proxy, the Envoy doors and forward auth.
//!
//! - **In flight.** At most `server.max_in_flight` requests are being answered at once over
//!   the proxy's listeners, and as many decisions over the decision doors' (Envoy's, forward
//!   auth: [`Handler::DECIDES_ONLY`]): a [`GlobalConcurrencyLimitLayer`] on each pool's
//!   semaphore, so what the proxy holds never sheds a decision door's calls. A request
//!   holds its permit until its response head is ready (a proxied body then streams without
//!   one; its bounds are the connection's).
//! - **Load shedding.** One request more is not queued behind the others (the client has
//!   likely stopped waiting by the time a queue drains, and a queue holds memory): the
//!   [`LoadShedLayer`] refuses it at once, and [`Shed`] answers 503 `overloaded` with
//!   `Retry-After: 1` in the door's protocol (gRPC `UNAVAILABLE` to a gRPC client), counted in
//!   `portcullis_connection_limits_total{limit="max_in_flight"}`.
//!
//! Deadlines stay with each door (the proxy's `response_timeout`, a decision door's
//! `timeout`): they differ in what they bound, and each door answers its own way past them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tower::limit::{ConcurrencyLimit, GlobalConcurrencyLimitLayer};
use tower::load_shed::{LoadShed, LoadShedLayer};
use tower::{Layer, Service, ServiceBuilder};

use super::listener::Handler;
use super::{Conn, Shared};
use crate::body::ResponseBody;
use crate::decision::Refusal;
use crate::request::grpc::Grpc;

/// A request, and what a door answers.
type Request = hyper::Request<Incoming>;
type Response = hyper::Response<ResponseBody>;

/// The stack one connection's requests go through.
pub type Stack<H> = Shed<LoadShed<ConcurrencyLimit<HandlerService<H>>>>;

/// The stack for `conn`, answered by `handler`; `in_flight` is its pool's semaphore.
pub fn stack<H: Handler>(
    handler: Arc<H>,
    conn: Arc<Conn>,
    shared: &Arc<Shared>,
    in_flight: &Arc<Semaphore>,
) -> Stack<H> {
    ServiceBuilder::new()
        .layer(ShedLayer {
            shared: Arc::clone(shared),
        })
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::with_semaphore(Arc::clone(
            in_flight,
        )))
        .service(HandlerService { handler, conn })
}

/// A door's [`Handler`] as a tower service.
#[derive(Debug)]
pub struct HandlerService<H> {
    handler: Arc<H>,
    conn: Arc<Conn>,
}

impl<H> Clone for HandlerService<H> {
    fn clone(&self) -> Self {
        Self {
            handler: Arc::clone(&self.handler),
            conn: Arc::clone(&self.conn),
        }
    }
}

/// A door's boxed answer as a service's result, without a second box; a panic while it is
/// made gives the door's [`Handler::panicked`] answer instead.
pub struct Answer {
    answering: super::listener::Answering,
    /// The door's answer to a panic; taken once (a second panic: a bare 500).
    panicked: Option<fn() -> super::listener::Answering>,
}

impl Future for Answer {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            // Why: a panic in a request's handling (a bug, or a dependency's assertion on
            // what a peer answered, as the redis crate's on a script's hash) dropped the
            // connection: at the gRPC door every Check on it failed, which Envoy's
            // `failure_mode_allow` turns into allows. It is answered as a denial instead.
            // Regression: tests::a_panic_is_answered_as_a_denial
            let poll = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                this.answering.as_mut().poll(cx)
            }));
            match poll {
                Ok(p) => return p.map(Ok),
                Err(_) => {
                    tracing::error!(
                        "A request's handling panicked (a bug; please report it): answered as an internal error"
                    );
                    match this.panicked.take() {
                        Some(answer) => this.answering = answer(),
                        None => {
                            let mut resp = Response::new(crate::body::full(bytes::Bytes::new()));
                            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            return Poll::Ready(Ok(resp));
                        }
                    }
                }
            }
        }
    }
}

impl<H: Handler> Service<Request> for HandlerService<H> {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Answer {
        Answer {
            answering: self.handler.call(Arc::clone(&self.conn), req),
            panicked: Some(H::panicked),
        }
    }
}

/// Turns a shed request into its 503.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            shared: Arc::clone(&self.shared),
            id_header: self.shared.current.load().server.request_id_header.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The request-id header, as configured when the connection opened.
    id_header: http::HeaderName,
}

impl<S> Service<Request> for Shed<S>
where
    S: Service<Request, Response = Response, Error = tower::BoxError>,
    S::Future: Unpin + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // LoadShed is always ready: it records whether the limit was, and refuses in `call`.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let grpc = Grpc::of(req.headers());
        // Kept (a reference count) in case the request is shed; checked only then.
        let sent_id = req.headers().get(&self.id_header).cloned();
        ShedFuture {
            inner: self.inner.call(req),
            grpc,
            sent_id,
            shared: Arc::clone(&self.shared),
            id_header: self.id_header.clone(),
        }
    }
}

/// [`Shed`]'s answer: the inner service's, or its refusal as a 503. A plain future rather than
/// a boxed `async` block: no allocation and no copy of the inner future per request.
pub struct ShedFuture<F> {
    inner: F,
    /// What the 503 needs, should the request be shed.
    grpc: Option<Grpc>,
    sent_id: Option<HeaderValue>,
    shared: Arc<Shared>,
    id_header: http::HeaderName,
}

impl<F> Future for ShedFuture<F>
where
    F: Future<Output = Result<Response, tower::BoxError>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(resp)) => Poll::Ready(Ok(resp)),
            Poll::Ready(Err(_overloaded)) => {
                this.shared.metrics.limit("max_in_flight");
                let mut sent = http::HeaderMap::new();
                if let Some(id) = this.sent_id.take() {
                    sent.insert(this.id_header.clone(), id);
                }
                let request_id =
                    crate::server::request_id::take_or_generate(&sent, &this.id_header);
                let mut resp = overloaded(this.grpc, &this.id_header, request_id);
                if this.grpc.is_none() {
                    mapped_for_the_peer(&this.shared, &mut resp);
                }
                Poll::Ready(Ok(resp))
            }
        }
    }
}

/// A shed request's 503 at a forward-auth listener, as its peer passes it, as the door's own
/// refusals are ([`crate::door::as_the_peer_passes_it`], with the listener's `status_map`).
///
/// Why: the shed 503 escaped the map, and nginx turned it into a 500 without `Retry-After`.
/// Regression: tests (it) abuse::the_proxy_cannot_take_the_decision_doors_permits
fn mapped_for_the_peer(shared: &Shared, resp: &mut Response) {
    let Some(index) = shared.decision_listener else {
        return;
    };
    let snapshot = shared.current.load();
    let Some(crate::snapshot::DoorSettings::ForwardAuth { status_map, .. }) =
        snapshot.listeners.get(index).map(|l| &l.door)
    else {
        return;
    };
    crate::door::as_the_peer_passes_it(resp, "overloaded", status_map);
}

/// 503 `overloaded`, in the client's protocol.
fn overloaded(
    grpc: Option<Grpc>,
    id_header: &http::HeaderName,
    request_id: HeaderValue,
) -> Response {
    let mut resp = if let Some(grpc) = grpc {
        let mut resp = tonic::Status::unavailable("overloaded")
            .into_http()
            .map(crate::body::grpc);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(grpc.content_type()),
        );
        resp
    } else {
        Refusal::error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", &request_id)
            .into_response()
            .map(http_body_util::Either::Left)
    };
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(id_header.clone(), request_id);
    resp
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use prost::Message as _;

    use super::*;
    use crate::server::listener::{Answering, ProxyHandler};

    fn panicking() -> Answering {
        Box::pin(async { panic!("a bug") })
    }

    /// The body's bytes and its trailers.
    async fn read(resp: Response) -> (Vec<u8>, Option<http::HeaderMap>) {
        let mut body = resp.into_body();
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn a_panic_is_answered_as_a_denial() {
        // The default: 500 `internal_error` in the JSON every door's refusal has.
        let answer = Answer {
            answering: panicking(),
            panicked: Some(<ProxyHandler as Handler>::panicked),
        };
        let resp = answer.await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let (body, _) = read(resp).await;
        assert!(
            String::from_utf8_lossy(&body).contains("\"error\":\"internal_error\""),
            "{body:?}"
        );
        // The door's own answer panics too: a bare 500.
        let answer = Answer {
            answering: panicking(),
            panicked: Some(panicking),
        };
        assert_eq!(
            answer.await.unwrap().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        // The HTTP decision doors: 403, a denial at every peer (Envoy's HTTP mode takes a 5xx
        // for a failed call, which `failure_mode_allow` lets through).
        for panicked in [
            <crate::door::DoorHandler<crate::extauthz::http::EnvoyHttp> as Handler>::panicked,
            <crate::door::DoorHandler<crate::forward_auth::ForwardAuth> as Handler>::panicked,
        ] {
            let answer = Answer {
                answering: panicking(),
                panicked: Some(panicked),
            };
            let resp = answer.await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            let (body, _) = read(resp).await;
            assert!(
                String::from_utf8_lossy(&body).contains("internal_error"),
                "{body:?}"
            );
        }
        // The gRPC door: a call that succeeds (grpc-status 0) with a CheckResponse that
        // denies (its status not OK, the denied response 500), which Envoy applies whatever
        // its `failure_mode_allow`.
        let answer = Answer {
            answering: panicking(),
            panicked: Some(<crate::extauthz::grpc::GrpcHandler as Handler>::panicked),
        };
        let resp = answer.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let (body, trailers) = read(resp).await;
        let trailers = trailers.expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        let check =
            envoy_types::pb::envoy::service::auth::v3::CheckResponse::decode(&body[5..]).unwrap();
        assert_ne!(check.status.map(|s| s.code), Some(0));
        match check.http_response {
            Some(envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse::DeniedResponse(d)) => {
                assert_eq!(d.status.map(|s| s.code), Some(500));
            }
            other => panic!("not denied: {other:?}"),
        }
    }

    /// What a request's handling holds across an await is dropped while its panic unwinds,
    /// inside the catch: the proxy's `Ctx` and the doors' `Pending` then log it as answered
    /// (`door::tests::a_panic_is_still_counted_and_logged`), not as a closed connection.
    #[tokio::test]
    async fn a_panicking_answer_drops_its_state_while_unwinding() {
        struct Guard(Arc<std::sync::atomic::AtomicU8>);
        impl Drop for Guard {
            fn drop(&mut self) {
                let v = if std::thread::panicking() { 1 } else { 2 };
                self.0.store(v, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let seen = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let held = Arc::clone(&seen);
        let answer = Answer {
            answering: Box::pin(async move {
                let _guard = Guard(held);
                tokio::task::yield_now().await;
                panic!("a bug");
            }),
            panicked: Some(<ProxyHandler as Handler>::panicked),
        };
        let resp = answer.await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
