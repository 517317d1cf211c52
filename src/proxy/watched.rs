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
    cut_by(body, rx)
}

/// Starts the watch of an exchange whose request body still streams: its credential
/// (`expires_at`) and, when the rule asks, re-checks. One watch for both bodies, so that a
/// re-check is made once: the first receiver ends the request body
/// ([`crate::body::RequestBody::cut_by`]), the second the response's ([`cut_by`]). It ends
/// when both are dropped.
///
/// Why: only the response was watched, from its head on: an upload (a chunked POST, a
/// client-streaming gRPC call) went on reaching the upstream long after its token expired
/// or a re-check found it revoked.
/// Regression: tests (it) edge::an_upload_ends_with_its_credential
pub(super) fn exchange(
    expires_at: Option<u64>,
    rechecks: Option<(Duration, Recheckable)>,
    clock: Clock,
    metrics: Arc<Metrics>,
) -> (
    oneshot::Receiver<&'static str>,
    oneshot::Receiver<&'static str>,
) {
    let (mut request, request_rx) = oneshot::channel();
    let (mut response, response_rx) = oneshot::channel();
    tokio::spawn(async move {
        let watch = credential_watch(expires_at, rechecks, clock);
        tokio::select! {
            reason = watch => {
                metrics.limit(reason);
                let _ = request.send(reason);
                let _ = response.send(reason);
            }
            () = async { tokio::join!(request.closed(), response.closed()); } => {}
        }
    });
    (request_rx, response_rx)
}

/// `body`, cut when `cut` says why.
pub(super) fn cut_by(body: ResponseBody, cut: oneshot::Receiver<&'static str>) -> ResponseBody {
    crate::body::boxed(Watched {
        inner: body,
        cut: Some(cut),
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
///
/// Only between two messages: the client would read a message cut short and then the status
/// as a broken stream (grpc-go reports INTERNAL, "unexpected EOF"), so a cut that lands inside
/// one (an upstream's message spanning several DATA frames) is still a reset.
pub(super) fn grpc_ending(body: ResponseBody) -> ResponseBody {
    crate::body::boxed(GrpcEnding {
        inner: body,
        ended: false,
        framing: Framing::default(),
    })
}

struct GrpcEnding {
    inner: ResponseBody,
    /// Its trailers were sent.
    ended: bool,
    framing: Framing,
}

/// Where a gRPC body stands in its length-prefixed messages (a flag byte, a 4-byte
/// big-endian length, the payload).
#[derive(Debug, Default)]
struct Framing {
    /// Prefix bytes read of the next message (0 to 4; at 5 its payload begins).
    prefix: [u8; 5],
    seen: usize,
    /// Payload bytes of the current message still to come.
    left: u64,
}

impl Framing {
    fn pass(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = usize::try_from(self.left).map_or(data.len(), |l| l.min(data.len()));
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.prefix[self.seen] = data[0];
            self.seen += 1;
            data = &data[1..];
            if self.seen == 5 {
                let [_, a, b, c, d] = self.prefix;
                self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.seen = 0;
            }
        }
    }

    /// No message begun and unfinished.
    fn between(&self) -> bool {
        self.seen == 0 && self.left == 0
    }
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
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.framing.pass(d);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                let code = match crate::body::cut_reason(&*e) {
                    _ if !self.framing.between() => None,
                    Some(r @ "stream_credential_expired") => Some((16, r)),
                    Some(r @ "stream_reauthorization_denied") => Some((7, r)),
                    _ => None,
                };
                let Some((code, reason)) = code else {
                    return Poll::Ready(Some(Err(e)));
                };
                self.ended = true;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from(code));
                trailers.insert("grpc-message", http::HeaderValue::from_static(reason));
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

#[cfg(test)]
mod tests {
    use super::Framing;

    /// Message boundaries found whatever the DATA frames' split: an empty message, a prefix
    /// cut in two, a payload over several frames, two messages in one frame.
    #[test]
    fn grpc_framing_knows_where_messages_end() {
        let msg = |payload: &[u8]| {
            let mut m = vec![0];
            m.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
            m.extend_from_slice(payload);
            m
        };
        let two = [msg(b"hello"), msg(b"")].concat();
        for (frames, between) in [
            (vec![msg(b"hello")], true),
            (vec![msg(b"")], true),
            (vec![two.clone()], true),
            (vec![two[..3].to_vec()], false),
            (vec![two[..3].to_vec(), two[3..].to_vec()], true),
            (vec![two[..7].to_vec()], false),
            (vec![two[..7].to_vec(), two[7..10].to_vec()], true),
            (vec![two[..11].to_vec()], false),
            (
                vec![[msg(&[7; 70_000]), msg(b"x")].concat()[..70_004].to_vec()],
                false,
            ),
            (Vec::new(), true),
        ] {
            let mut f = Framing::default();
            for d in &frames {
                f.pass(d);
            }
            assert_eq!(f.between(), between, "{frames:?}");
        }
    }
}
