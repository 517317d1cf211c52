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
