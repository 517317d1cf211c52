//! A connection of its own for an upgrade (a WebSocket): never taken from the pool nor
//! returned to it, HTTP/1.1 with hyper's upgrade support, so the upstream's `101` hands the
//! raw stream over. Kept apart from the pooled exchanges: a tunnel holds its connection for
//! as long as it lives.

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::{Pool, PooledBody, SendError, Slot, UPSTREAM_READ_BUF};
use crate::upstream::UpstreamBody;

impl Pool {
    /// Sends an upgrade request on a new connection; the response's upgrade
    /// (`hyper::upgrade::on`) is the tunnel's upstream side.
    pub(in crate::upstream) async fn send_upgrade(
        &self,
        mut req: Request<UpstreamBody>,
        connect_timeout: std::time::Duration,
    ) -> Result<(Response<Incoming>, Option<Slot>), SendError> {
        let slot = match self.slot(connect_timeout, false).await? {
            super::Waited::Slot(slot) => slot,
            // Never: a tunnel takes no pooled connection.
            super::Waited::Pooled(_) => return Err(SendError::Busy),
        };
        let (io, h2) = self.open(connect_timeout).await?;
        // An upgrade is HTTP/1.1's: an upstream that speaks HTTP/2 cannot take it.
        if h2 {
            return Err(SendError::Connect(std::io::Error::other(
                "the upstream speaks HTTP/2; an upgrade needs HTTP/1.1",
            )));
        }
        let (mut sender, conn) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUF)
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Http)?;
        // The connection's task ends at the `101`, handing the stream to the tunnel: the slot
        // goes with the tunnel (in `Counted`), not with the task.
        tokio::spawn(conn.with_upgrades());
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
        Ok((resp, slot))
    }
}

impl PooledBody {
    /// A body from a connection that is not the pool's (an upgrade the upstream declined).
    pub fn unpooled(body: Incoming) -> Self {
        Self {
            body: Some(body),
            back: None,
            idle: None,
            expiry: None,
            in_flight: None,
        }
    }
}
