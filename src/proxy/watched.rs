//! Continuous authorization of a long response (a server-sent event stream, a long download):
//! on a rule with `reauthorize_every`, the response body is cut when the credential expires,
//! or when a re-check of the request ([`super::tunnel::recheck`]) denies it. Cutting ends the
//! stream with an error ([`Cut`]): HTTP/2 resets it (`CANCEL`), HTTP/1.1 closes the
//! connection, and the client sees an incomplete response, never a complete one that was not
//! authorized to its end.
//!
//! The watch is a task of its own that ends with the body (its channel closes), so a
//! finished response costs nothing more; responses of rules without `reauthorize_every` are
//! not wrapped at all.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::tunnel::{Recheckable, credential_watch};
use crate::body::{BoxError, Cut, ResponseBody};
use crate::clock::Clock;
use crate::telemetry::metrics::Metrics;

/// A response body cut when its watch says so.
pub(super) struct Watched {
    inner: ResponseBody,
    cut: Option<oneshot::Receiver<&'static str>>,
}

/// Wraps `body` in a watch of its credential (`expires_at`) and of re-checks every `every`.
pub(super) fn watch(
    body: ResponseBody,
    expires_at: Option<u64>,
    every: Duration,
    recheck: Recheckable,
    clock: Clock,
    metrics: Arc<Metrics>,
) -> ResponseBody {
    if body.is_end_stream() {
        return body;
    }
    let (mut tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let watch = credential_watch(expires_at, Some((every, recheck)), clock);
        tokio::select! {
            reason = watch => {
                metrics.limit(reason);
                let _ = tx.send(reason);
            }
            () = tx.closed() => {}
        }
    });
    crate::body::boxed(Watched {
        inner: body,
        cut: Some(rx),
    })
}

/// A gRPC client's response (HTTP/2, `application/grpc`) that, cut for its credential,
/// ends with trailers saying why instead of a reset: `grpc-status` 16 (UNAUTHENTICATED) when
/// the credential expired, 7 (PERMISSION_DENIED) when a re-check denied it, and the reason as
/// `grpc-message`.
///
/// Why: reset with `CANCEL`, the cut reached a gRPC client as CANCELLED ("Received
/// RST_STREAM"), which no client takes for an expired token: it neither refreshed it nor
/// retried. Any other error (the upstream's, an idle cut) is still a reset.
/// Regression: tests (it) edge::a_grpc_stream_cut_by_its_credential_ends_with_its_status
pub(super) fn grpc_ending(body: ResponseBody) -> ResponseBody {
    crate::body::boxed(GrpcEnding {
        inner: body,
        ended: false,
    })
}

struct GrpcEnding {
    inner: ResponseBody,
    /// Its trailers were sent.
    ended: bool,
}

impl Body for GrpcEnding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                let reason = crate::body::cut_reason(&*e);
                let code = match reason {
                    Some("stream_credential_expired") => 16,
                    Some("stream_reauthorization_denied") => 7,
                    _ => return Poll::Ready(Some(Err(e))),
                };
                self.ended = true;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from(code));
                if let Some(r) = reason {
                    trailers.insert("grpc-message", http::HeaderValue::from_static(r));
                }
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(cut) = self.cut.as_mut()
            && let Poll::Ready(r) = Pin::new(cut).poll(cx)
        {
            self.cut = None;
            if let Ok(reason) = r {
                return Poll::Ready(Some(Err(Cut::boxed(reason))));
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
