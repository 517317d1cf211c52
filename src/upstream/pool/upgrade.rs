//! A connection of its own for an upgrade (a WebSocket): never taken from the pool nor
//! returned to it, HTTP/1.1 with hyper's upgrade support, so the upstream's `101` hands the
//! raw stream over. Kept apart from the pooled exchanges: a tunnel holds its connection for
//! as long as it lives.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::{Pool, PooledBody, Seek, SendError, Slot, UPSTREAM_READ_BUF, Waited};
use crate::upstream::UpstreamBody;

impl Pool {
    /// Sends an upgrade request on a new connection; the response's upgrade
    /// (`hyper::upgrade::on`) is the tunnel's upstream side.
    pub(in crate::upstream) async fn send_upgrade(
        &self,
        mut req: Request<UpstreamBody>,
        connect_timeout: std::time::Duration,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, Option<Slot>), SendError> {
        // An upgrade is HTTP/1.1's: an upstream that speaks HTTP/2 cannot take it (known
        // before waiting for a slot, when it is).
        let speaks_h2 = || SendError::UpgradeOverH2;
        if self.speaks_h2.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(speaks_h2());
        }
        // Why never up to the response deadline: a wait for a slot that reached it was a
        // timeout, counted against an endpoint that was only at its cap (as plain requests
        // were once: `slot_wait_until`).
        let until = super::slot_wait_until(connect_timeout, deadline);
        let slot = match self.slot(until, Seek::Own).await? {
            Waited::Slot(slot) => slot,
            // Never: a tunnel takes no pooled connection.
            Waited::Pooled(..) => return Err(SendError::Busy),
        };
        let (io, h2) = self.open(connect_timeout).await?;
        if h2 {
            return Err(speaks_h2());
        }
        let (mut sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUF)
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Http)?;
        // The connection's task ends at the `101`, handing the stream over: the slot then goes
        // with the tunnel (in `Counted`). A declined upgrade's answer streams its body on the
        // connection, whose task keeps the slot until it ends.
        // Why: the slot went with the answer's head, so declined upgrades with long bodies
        // opened connections past the cap. Regression: tests (it)
        // edge::a_declined_upgrade_keeps_its_connection_slot_while_its_body_streams
        let held = Arc::new(std::sync::Mutex::new(slot));
        let task_holds = Arc::clone(&held);
        tokio::spawn(async move {
            let _slot = task_holds;
            let _ = conn.with_upgrades().await;
        });
        *req.version_mut() = http::Version::HTTP_11;
        let mut resp = sender.send_request(req).await.map_err(SendError::Http)?;
        // Why: a declined upgrade (400, 426) is an ordinary answer, and was relayed unchecked:
        // a status past 599, or a body framed two ways, reached the client as the pooled
        // exchanges no longer let one. Checked as they are, so 502 `upstream_invalid_response`.
        // Regression: tests (it) upstreams::declined_upgrade_answers_are_checked_as_any_answer
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            super::check_status(resp.status()).map_err(|f| f.error)?;
            super::check_framing(resp.headers_mut()).map_err(|f| f.error)?;
        }
        let slot = match resp.status() {
            http::StatusCode::SWITCHING_PROTOCOLS => held.lock().ok().and_then(|mut s| s.take()),
            _ => None,
        };
        Ok((resp, slot))
    }
}

impl PooledBody {
    /// A body from a connection that is not the pool's (an upgrade the upstream declined).
    pub fn unpooled(body: Incoming) -> Self {
        Self {
            body: Some(body),
            back: None,
            stream: None,
            idle: None,
            expiry: None,
            in_flight: None,
            timer: None,
            // HTTP/1 (an HTTP/2 upgrade is an extended CONNECT, whose answer has no body).
            h2_length: false,
        }
    }
}
