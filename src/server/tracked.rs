//! The client connection's I/O as hyper sees it: records when bytes move (idle and stall
//! deadlines) and meters HTTP/2 frames ([`FrameMeter`]); past a limit it writes GOAWAY
//! `ENHANCE_YOUR_CALM` at the next frame boundary, discards h2's further writes and the
//! client's further bytes, and closes. An HTTP/2 connection's writes are gathered until h2
//! flushes ([`Tracked::gather_writes`]).

use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::connection::{Activity, ReadReady};
use super::frames::FrameMeter;

/// The client stream, tracked and metered.
pub(super) struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    meter: FrameMeter,
    /// The write side is shut down after the GOAWAY.
    shut: bool,
    /// Bytes already read that hyper reads (again) first: the ones that told HTTP/2 from
    /// HTTP/1, or the next request's that a parked hyper connection had read.
    replay: Bytes,
    /// Gathered writes ([`Self::gather_writes`]): what h2 handed over and the socket has not
    /// taken yet, from `sent` on. `None`: writes go straight through.
    gathered: Option<Vec<u8>>,
    /// How much of `gathered` the socket took.
    sent: usize,
}

/// How many bytes [`Tracked::gather_writes`] holds before writing: two of h2's largest
/// frames (16 KiB of data each) and their headers; larger writes go straight through.
const GATHER_BYTES: usize = 32 * 1024 + 64;

/// The most of its gathering buffer a connection keeps once it is written out: a batch of
/// small answers' worth; a larger buffer is let go.
const GATHER_KEEP: usize = 4 * 1024;

impl<I> Tracked<I> {
    pub(super) fn new(inner: I, activity: Arc<Activity>, meter: FrameMeter) -> Self {
        Self {
            inner,
            activity,
            meter,
            shut: false,
            replay: Bytes::new(),
            gathered: None,
            sent: 0,
        }
    }

    /// Gathers the writes into one buffer that goes to the socket when the writer flushes
    /// (or the buffer is full), and tells writers the stream takes no vectored writes.
    ///
    /// Why: h2 copies a DATA frame into its write buffer only below a threshold (256 bytes
    /// when the stream takes vectored writes, 1 KiB when it does not) and chains a larger one,
    /// after which it must write before it can buffer the next frame. An allowed Check's
    /// answer (the door's `headers_to_remove` list) grew past 1 KiB, and each answer cost two
    /// writes to the socket (its first KiB, then the rest with the trailers): 2.03 `sendto`
    /// per Check where the trivial tonic server makes 0.69 `writev`. Gathered here, the frames
    /// h2 writes between two flushes go out in one write, whatever their sizes.
    /// Regression: tests::gathered_writes_go_out_on_flush; the writes per Check, with
    /// `strace -c` during bench/doors.sh
    pub(super) fn gather_writes(&mut self) {
        self.gathered = Some(Vec::new());
    }

    /// Hands `bytes` to the next reader before anything from the socket.
    pub(super) fn replay(&mut self, bytes: Bytes) {
        self.replay = bytes;
    }
}

impl<I: ReadReady> Tracked<I> {
    /// Ready when the client has sent something, without reading it.
    pub(super) fn poll_inner_read_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.replay.is_empty() {
            return std::task::Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }

    /// Reads until the bytes tell HTTP/2's preface from anything else (`None`: the client
    /// closed first). They are read again by hyper.
    pub(super) async fn sniff_h2(&mut self) -> std::io::Result<Option<bool>> {
        use tokio::io::AsyncReadExt;
        let mut seen = [0u8; 24];
        let mut n = 0;
        let h2 = loop {
            let got = self.inner.read(&mut seen[n..]).await?;
            if got == 0 {
                return Ok(None);
            }
            self.activity.touch();
            self.meter.on_read(&seen[n..n + got]);
            n += got;
            if self.meter.is_http1() {
                self.activity.h1_read();
                break false;
            }
            if n == seen.len() {
                break true;
            }
        };
        self.replay = Bytes::copy_from_slice(&seen[..n]);
        Ok(Some(h2))
    }
}

impl<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Tracked<I> {
    /// Writes what was gathered ([`Self::gather_writes`]) to the socket.
    fn poll_drain(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{Poll, ready};
        let Some(gathered) = &mut self.gathered else {
            return Poll::Ready(Ok(()));
        };
        while let Some(rest) = gathered.get(self.sent..).filter(|r| !r.is_empty()) {
            let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, rest);
            self.activity.write_blocked(polled.is_pending());
            let n = ready!(polled)?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Why: kept whole, a connection that once gathered 32 KiB held that much for as long as
        // it stayed open (every HTTP/2 connection of every listener, idle ones included).
        if gathered.capacity() > GATHER_KEEP {
            *gathered = Vec::new();
        } else {
            gathered.clear();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` into the gathered bytes, writing those out first when it would not fit;
    /// `None` when it is too large to gather (written straight through, after them).
    fn poll_gather(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Option<std::task::Poll<std::io::Result<usize>>> {
        use std::task::Poll;
        let held = self.gathered.as_ref()?.len();
        if held + buf.len() > GATHER_BYTES {
            match self.poll_drain(cx) {
                Poll::Pending => return Some(Poll::Pending),
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Ready(Ok(())) => {}
            }
            if buf.len() > GATHER_BYTES {
                return None;
            }
        }
        let gathered = self.gathered.as_mut()?;
        if gathered.capacity() == 0 {
            gathered.reserve(GATHER_KEEP.max(buf.len()));
        }
        gathered.extend_from_slice(buf);
        self.activity.touch();
        self.meter.on_write(buf);
        self.after_write(cx);
        Some(Poll::Ready(Ok(buf.len())))
    }

    /// Writes the rest of the GOAWAY (after anything gathered before it), flushes and shuts
    /// the write side down.
    fn poll_goaway(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{Poll, ready};
        ready!(self.poll_drain(cx))?;
        while self.meter.goaway_pending() {
            let n = ready!(
                std::pin::Pin::new(&mut self.inner).poll_write(cx, self.meter.goaway_rest())
            )?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.meter.goaway_wrote(n);
        }
        if !self.shut {
            ready!(std::pin::Pin::new(&mut self.inner).poll_flush(cx))?;
            // The FIN follows the GOAWAY: the client reads it before the end of the stream.
            ready!(std::pin::Pin::new(&mut self.inner).poll_shutdown(cx))?;
            self.shut = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Reading once a limit is passed: the GOAWAY first (at a frame boundary), then the
    /// client's bytes are read and dropped until it closes (the connection's loop ends it
    /// after a second otherwise).
    fn poll_read_abused(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::{Poll, ready};
        if !self.shut {
            if !self.meter.at_write_boundary() {
                // h2 is in the middle of a frame; its next write ends it and sends the GOAWAY.
                return Poll::Pending;
            }
            ready!(self.poll_goaway(cx))?;
        }
        let before = buf.filled().len();
        for _ in 0..16 {
            ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            buf.set_filled(before);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// After h2 wrote: once a limit is passed and h2's frame is whole, the GOAWAY goes out.
    fn after_write(&mut self, cx: &mut std::task::Context<'_>) {
        if self.meter.take_library_calm() {
            self.activity.library_goaway();
        }
        if self.meter.abuse().is_some() && !self.shut && self.meter.at_write_boundary() {
            // Pending: the socket is full; the next read or write goes on with it.
            let _ = self.poll_goaway(cx);
        }
    }
}

impl<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for Tracked<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.meter.abuse().is_some() {
            return this.poll_read_abused(cx, buf);
        }
        if !this.replay.is_empty() {
            // Already metered and counted when first read.
            let n = this.replay.len().min(buf.remaining());
            let replayed = this.replay.get(..n).unwrap_or_default();
            buf.put_slice(replayed);
            // Empty lines before a request are ignored (RFC 9112 §2.2): a client's stray CRLF
            // after a body starts no head.
            let starts_a_head = replayed.iter().any(|b| !matches!(b, b'\r' | b'\n'));
            this.replay.advance(n);
            // Why: the start of a next request, read while the one before was in flight,
            // started no header clock; replayed after a park it still started none, so the
            // connection was parked and replayed every 100 ms, spinning for the whole idle
            // timeout (2,000 such connections: 2.35 s of CPU every 10 s, none parked).
            // Its head now runs from the replay.
            // Regression: tests (it) abuse::a_pipelined_unfinished_head_gets_the_header_timeout
            if starts_a_head && this.meter.is_http1() {
                this.activity.h1_read();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
            // Why: h2 bounds resets only before hyper accepts a stream; a paced rapid reset
            // gets past that and each reset stream may have cost a decision and an upstream
            // exchange; h2 answers every PING and SETTINGS without a bound.
            // Regression: tests (it) abuse::paced_rapid_reset_gets_goaway,
            // abuse::ping_and_settings_floods_get_goaway
            if let Some(abuse) = this.meter.on_read(&buf.filled()[before..]) {
                this.activity.abused(abuse);
                // The connection's loop sees the flag when its task next runs: hyper reads in
                // that task, so this is its waker.
                cx.waker().wake_by_ref();
                // The client's bytes are never handed to h2 again.
                buf.set_filled(before);
                return this.poll_read_abused(cx, buf);
            }
            if this.meter.is_http1() {
                this.activity.h1_read();
            }
        }
        polled
    }
}

impl<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::{Poll, ready};
        let this = self.get_mut();
        if this.meter.abuse().is_some() && this.meter.at_write_boundary() {
            // From the GOAWAY on, h2's frames go nowhere.
            ready!(this.poll_goaway(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        if let Some(gathered) = this.poll_gather(cx, buf) {
            return gathered;
        }
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.activity.write_blocked(polled.is_pending());
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.activity.touch();
            this.meter.on_write(buf.get(..n).unwrap_or(buf));
            this.after_write(cx);
        }
        polled
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::{Poll, ready};
        let this = self.get_mut();
        if this.meter.abuse().is_some() && this.meter.at_write_boundary() {
            ready!(this.poll_goaway(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        if this.gathered.is_some() {
            // As a stream without vectored writes takes them: the first slice with bytes.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return std::pin::Pin::new(this).poll_write(cx, first);
        }
        let polled = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.activity.write_blocked(polled.is_pending());
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.activity.touch();
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len());
                this.meter.on_write(b.get(..take).unwrap_or(b));
                left -= take;
            }
            this.after_write(cx);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.gathered.is_none() && self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.meter.abuse().is_some() && this.meter.at_write_boundary() {
            return this.poll_goaway(cx);
        }
        std::task::ready!(this.poll_drain(cx))?;
        let polled = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.activity.write_blocked(polled.is_pending());
        polled
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.shut {
            return std::task::Poll::Ready(Ok(()));
        }
        std::task::ready!(this.poll_drain(cx))?;
        std::pin::Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWrite as _;

    use super::*;
    use crate::snapshot::Http2Limits;

    /// Records each write it is handed, as one socket `write` each.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl tokio::io::AsyncRead for Recorder {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    impl tokio::io::AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.get_mut().writes.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.get_mut().flushes += 1;
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }
    }

    fn tracked(inner: Recorder) -> Tracked<Recorder> {
        let limits = Http2Limits {
            max_resets: 10,
            max_peer_resets: 10,
            max_pending_resets: 64,
            max_control_frames: 10,
            window: Duration::from_secs(1),
        };
        Tracked::new(
            inner,
            Arc::new(Activity::new(crate::server::BodiesOpen::default())),
            FrameMeter::new(limits),
        )
    }

    /// An HTTP/2 connection's writes between two flushes reach the socket as one write (an
    /// allowed Check's answer is over 1 KiB, which h2 hands over in two writes); a write too
    /// large to gather goes straight through, after what was gathered; the order of the
    /// bytes is kept. Without gathering, each write reaches the socket as it comes.
    #[tokio::test]
    async fn gathered_writes_go_out_on_flush() {
        use tokio::io::AsyncWriteExt as _;
        // h2's frames: a HEADERS frame, then a DATA frame of 1,100 bytes in two writes.
        let frames: [Vec<u8>; 3] = [vec![1; 30], vec![2; 1024], vec![3; 100]];
        let all: Vec<u8> = frames.concat();

        let mut io = tracked(Recorder::default());
        assert!(io.is_write_vectored(), "what the socket says, by default");
        io.gather_writes();
        assert!(!io.is_write_vectored());
        for f in &frames {
            io.write_all(f).await.unwrap();
        }
        assert!(io.inner.writes.is_empty(), "nothing before the flush");
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, [all], "one write");
        assert_eq!(io.inner.flushes, 1);
        let kept = io.gathered.as_ref().map_or(0, Vec::capacity);
        assert!(
            kept > 0 && kept <= GATHER_KEEP,
            "a small buffer is kept: {kept}"
        );

        // A write larger than the buffer: what was gathered first, then it, unbuffered.
        let large = vec![4; GATHER_BYTES + 1];
        io.write_all(&frames[0]).await.unwrap();
        io.write_all(&large).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes[1..], [frames[0].clone(), large]);
        // And what would overflow the buffer sends the gathered bytes first.
        let half = vec![5; GATHER_BYTES / 2 + 1];
        io.write_all(&half).await.unwrap();
        io.write_all(&half).await.unwrap();
        assert_eq!(
            io.inner.writes.len(),
            4,
            "the first half went when the second came"
        );
        io.shutdown().await.unwrap();
        assert_eq!(
            io.inner.writes[3..],
            [half.clone(), half],
            "shut down after the rest"
        );
        assert_eq!(
            io.gathered.as_ref().map(Vec::capacity),
            Some(0),
            "a large buffer is let go once written"
        );

        let mut plain = tracked(Recorder::default());
        for f in &frames {
            plain.write_all(f).await.unwrap();
        }
        assert_eq!(plain.inner.writes, frames, "a write each, as they came");
    }
}
