//! HTTP/2 frame accounting on a client connection's bytes, below hyper: counts what h2 does
//! not bound (client stream resets after hyper accepted the stream, PING and SETTINGS floods,
//! each of which h2 answers; PRIORITY, WINDOW_UPDATE, empty DATA and unknown frames, which
//! cost work and move nothing) and, past a limit, ends the connection with GOAWAY
//! `ENHANCE_YOUR_CALM`, as the fixes for CVE-2023-44487 and CVE-2019-9511…9518 do.
//!
//! The frames that move nothing are bounded as Envoy bounds them (its defaults): PRIORITY
//! frames to `100 × (1 + streams the client opened)`, WINDOW_UPDATE frames to
//! `5 + 2 × (streams + 10 × DATA frames the gateway wrote)`, at most one DATA frame in a row
//! with no payload and no END_STREAM, and frames of unknown types with PING and SETTINGS
//! (`max_control_frames` per window).
//!
//! Invariants:
//! - Only frame headers are read: a read costs one step per frame, whatever the payload size,
//!   and nothing is allocated. A connection that does not open with the HTTP/2 preface (an
//!   HTTP/1 connection) is recognised on its first bytes and never looked at again.
//! - The GOAWAY is written only at a frame boundary of what h2 has written, so it never lands
//!   inside one of h2's frames; from then on h2's writes are discarded and the client's bytes
//!   are never handed to h2 again.

use std::time::Instant;

use crate::snapshot::Http2Limits;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
/// The last frame type RFC 9113 defines (CONTINUATION); higher ones are extensions, which a
/// server that knows none of them ignores.
const LAST_KNOWN: u8 = 0x9;
/// Envoy's `max_inbound_priority_frames_per_stream`.
const PRIORITY_PER_STREAM: u64 = 100;
/// Envoy's `max_inbound_window_update_frames_per_data_frame_sent`.
const WINDOW_UPDATES_PER_DATA: u64 = 10;
/// Envoy's `max_consecutive_inbound_frames_with_empty_payload`.
const EMPTY_IN_A_ROW: u32 = 1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Which limit a client went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Abuse {
    /// Too many stream resets (rapid reset).
    Resets,
    /// Too many PING or SETTINGS frames (each one makes h2 write an acknowledgement), or of
    /// the frames that move nothing (PRIORITY, WINDOW_UPDATE, empty DATA, unknown types).
    ControlFrames,
}

/// Where a parser is in a byte stream of frames.
#[derive(Debug, Clone, Copy)]
enum Parse {
    /// Matching the client preface; `n` bytes matched so far.
    Preface(u8),
    /// Reading a frame header; `n` of its 9 bytes are in `head`.
    Header { head: [u8; 9], n: u8 },
    /// Skipping a payload.
    Payload(u32),
    /// Not HTTP/2: nothing more to look at.
    Off,
}

/// One connection's accounting. Owned by the connection's I/O wrapper; no atomics needed.
#[derive(Debug)]
pub(super) struct FrameMeter {
    limits: Http2Limits,
    read: Parse,
    write: Parse,
    window_start: Option<Instant>,
    resets: u32,
    control: u32,
    /// Acknowledgements the client owes: PING and SETTINGS frames h2 wrote, not yet acked.
    acks_owed: u32,
    /// Highest client stream id seen in a HEADERS frame: the GOAWAY's last stream id.
    last_stream: u32,
    /// Streams the client opened (HEADERS on a new stream id).
    streams: u32,
    /// DATA frames h2 wrote.
    data_written: u32,
    /// PRIORITY frames the client sent.
    priority: u32,
    /// WINDOW_UPDATE frames the client sent.
    window_updates: u32,
    /// DATA frames in a row with no payload and no END_STREAM.
    empty_in_a_row: u32,
    /// Set once a limit is passed; the GOAWAY is then due.
    abuse: Option<Abuse>,
    /// h2 wrote a GOAWAY `ENHANCE_YOUR_CALM` of its own, not yet reported.
    library_calm: bool,
    /// The start of a GOAWAY h2 is writing, when its header came before the rest of its
    /// first 8 bytes: how many, and they.
    goaway_start: Option<(usize, [u8; 8])>,
    /// The GOAWAY frame and how much of it is written.
    goaway: [u8; 17],
    goaway_sent: u8,
}

/// What a frame header says, as far as the meter cares.
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

// === impl FrameMeter ===

impl FrameMeter {
    /// A meter for a new connection, which may turn out to be HTTP/1 (then it stays off).
    pub(super) fn new(limits: Http2Limits) -> Self {
        Self {
            limits,
            read: Parse::Preface(0),
            write: Parse::Header { head: [0; 9], n: 0 },
            window_start: None,
            resets: 0,
            control: 0,
            acks_owed: 0,
            last_stream: 0,
            streams: 0,
            data_written: 0,
            priority: 0,
            window_updates: 0,
            empty_in_a_row: 0,
            library_calm: false,
            goaway_start: None,
            abuse: None,
            goaway: [0; 17],
            goaway_sent: 0,
        }
    }

    /// Which limit was passed, if one was.
    pub(super) fn abuse(&self) -> Option<Abuse> {
        self.abuse
    }

    /// Whether the connection turned out to be HTTP/1 (its first bytes were no preface).
    pub(super) fn is_http1(&self) -> bool {
        matches!(self.read, Parse::Off)
    }

    /// Accounts for bytes the client sent. Returns the limit passed, the first time one is.
    pub(super) fn on_read(&mut self, mut bytes: &[u8]) -> Option<Abuse> {
        while !bytes.is_empty() && self.abuse.is_none() {
            match &mut self.read {
                Parse::Off => return None,
                Parse::Preface(n) => {
                    let at = usize::from(*n);
                    let want = &PREFACE[at..];
                    let take = want.len().min(bytes.len());
                    if bytes[..take] != want[..take] {
                        self.read = Parse::Off;
                        return None;
                    }
                    bytes = &bytes[take..];
                    self.read = if at + take == PREFACE.len() {
                        Parse::Header { head: [0; 9], n: 0 }
                    } else {
                        Parse::Preface(u8::try_from(at + take).unwrap_or(0))
                    };
                }
                _ => {
                    let (rest, head) = step(&mut self.read, bytes);
                    bytes = rest;
                    if let Some(h) = head {
                        self.count(&h);
                    }
                }
            }
        }
        self.abuse
    }

    /// Accounts for bytes h2 wrote (and that reached the socket).
    pub(super) fn on_write(&mut self, mut bytes: &[u8]) {
        // Before the preface is read this may still be h2 (which writes SETTINGS first); an
        // HTTP/1 server never writes before a request.
        if matches!(self.read, Parse::Off) {
            return;
        }
        // The rest of a GOAWAY's first 8 bytes, which this write continues.
        if let Some((n, mut start)) = self.goaway_start.take() {
            let take = (8 - n).min(bytes.len());
            start[n..n + take].copy_from_slice(&bytes[..take]);
            self.goaway_seen(n + take, start);
        }
        while !bytes.is_empty() {
            let (rest, head) = step(&mut self.write, bytes);
            bytes = rest;
            match head {
                Some(h) if matches!(h.kind, SETTINGS | PING) && h.flags & ACK == 0 => {
                    self.acks_owed = self.acks_owed.saturating_add(1);
                }
                Some(h) if h.kind == DATA => {
                    self.data_written = self.data_written.saturating_add(1)
                }
                // Why: h2's own bounds end a connection with this GOAWAY, and no metric said
                // so. Its error code is the payload's bytes 4..8, maybe in a later write.
                // Regression: tests (it) abuse::h2s_own_goaway_is_counted
                Some(h) if h.kind == GOAWAY => {
                    let mut start = [0u8; 8];
                    let n = rest.len().min(8);
                    start[..n].copy_from_slice(&rest[..n]);
                    self.goaway_seen(n, start);
                }
                _ => {}
            }
        }
    }

    /// The first `n` of a GOAWAY's first 8 bytes (last stream id, error code) are `start`.
    fn goaway_seen(&mut self, n: usize, start: [u8; 8]) {
        if n < 8 {
            self.goaway_start = Some((n, start));
        } else if start[4..8] == ENHANCE_YOUR_CALM.to_be_bytes() {
            self.library_calm = true;
        }
    }

    /// Whether h2 wrote a GOAWAY `ENHANCE_YOUR_CALM` of its own since the last call.
    pub(super) fn take_library_calm(&mut self) -> bool {
        std::mem::take(&mut self.library_calm)
    }

    /// Whether what h2 wrote so far ends with a whole frame.
    pub(super) fn at_write_boundary(&self) -> bool {
        matches!(self.write, Parse::Header { n: 0, .. })
    }

    /// Whether the GOAWAY is due and not yet fully written.
    pub(super) fn goaway_pending(&self) -> bool {
        self.abuse.is_some() && usize::from(self.goaway_sent) < self.goaway.len()
    }

    /// The rest of the GOAWAY frame to write.
    pub(super) fn goaway_rest(&self) -> &[u8] {
        &self.goaway[usize::from(self.goaway_sent)..]
    }

    /// Records that `n` more bytes of the GOAWAY were written.
    pub(super) fn goaway_wrote(&mut self, n: usize) {
        let total = usize::from(self.goaway_sent) + n;
        self.goaway_sent = u8::try_from(total.min(self.goaway.len())).unwrap_or(u8::MAX);
    }

    fn count(&mut self, h: &Head) {
        // Why: a DATA frame with nothing in it still costs h2 a frame's work, and a flood of
        // them (CVE-2019-9518) moves nothing. Regression: tests::frames_that_move_nothing_are_bounded
        if h.kind == DATA && h.len == 0 && h.flags & END_STREAM == 0 {
            self.empty_in_a_row = self.empty_in_a_row.saturating_add(1);
            if self.empty_in_a_row > EMPTY_IN_A_ROW {
                self.trip(Abuse::ControlFrames);
            }
            return;
        }
        if h.len > 0 || h.flags & END_STREAM != 0 {
            self.empty_in_a_row = 0;
        }
        match h.kind {
            HEADERS => {
                if h.stream > self.last_stream {
                    self.streams = self.streams.saturating_add(1);
                }
                self.last_stream = self.last_stream.max(h.stream);
            }
            // Why: h2 reads and ignores each one, so a flood of them (CVE-2019-9513, 9511)
            // was CPU spent for nothing, with no bound but the connection's pace.
            // Regression: tests::frames_that_move_nothing_are_bounded
            PRIORITY => {
                self.priority = self.priority.saturating_add(1);
                // `1 +`: a browser sends its priority tree before any request (Firefox: six
                // PRIORITY frames on idle streams); a bound of 5 then refused it the
                // connection before its first request.
                // Regression: tests::frames_that_move_nothing_are_bounded
                if u64::from(self.priority) > (1 + u64::from(self.streams)) * PRIORITY_PER_STREAM {
                    self.trip(Abuse::ControlFrames);
                }
            }
            WINDOW_UPDATE => {
                self.window_updates = self.window_updates.saturating_add(1);
                let allowed = 5 + 2
                    * (u64::from(self.streams)
                        + WINDOW_UPDATES_PER_DATA * u64::from(self.data_written));
                if u64::from(self.window_updates) > allowed {
                    self.trip(Abuse::ControlFrames);
                }
            }
            kind if kind > LAST_KNOWN => {
                self.roll_window();
                self.control = self.control.saturating_add(1);
                if self.control > self.limits.max_control_frames {
                    self.trip(Abuse::ControlFrames);
                }
            }
            RST_STREAM => {
                self.roll_window();
                self.resets = self.resets.saturating_add(1);
                if self.resets > self.limits.max_resets {
                    self.trip(Abuse::Resets);
                }
            }
            // Acknowledgements answer the gateway's own frames, as many as it wrote.
            // Why the others count: h2 logs each PING ack it never asked for at `warn`, and a
            // flood of them wrote 101 MiB of log in 5 s with no GOAWAY.
            // Regression: tests::unsolicited_acks_count
            SETTINGS | PING if h.flags & ACK != 0 && self.acks_owed > 0 => {
                self.acks_owed -= 1;
            }
            SETTINGS | PING => {
                self.roll_window();
                self.control = self.control.saturating_add(1);
                if self.control > self.limits.max_control_frames {
                    self.trip(Abuse::ControlFrames);
                }
            }
            _ => {}
        }
    }

    /// Starts a new window when the current one is over. Read the clock only for the frames
    /// that are counted, which ordinary traffic rarely sends.
    fn roll_window(&mut self) {
        let now = Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < self.limits.window => {}
            _ => {
                self.window_start = Some(now);
                self.resets = 0;
                self.control = 0;
            }
        }
    }

    fn trip(&mut self, abuse: Abuse) {
        self.abuse = Some(abuse);
        // GOAWAY: length 8, type 7, no flags, stream 0; last stream id, error code.
        let mut f = [0u8; 17];
        f[2] = 8;
        f[3] = GOAWAY;
        f[9..13].copy_from_slice(&(self.last_stream & 0x7fff_ffff).to_be_bytes());
        f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        self.goaway = f;
        self.goaway_sent = 0;
    }
}

/// Advances a frame parser over `bytes`: returns the bytes left and, when a frame header was
/// completed, what it says.
fn step<'a>(state: &mut Parse, bytes: &'a [u8]) -> (&'a [u8], Option<Head>) {
    match state {
        Parse::Payload(left) => {
            let take = bytes
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            // `take` <= `left`, which is a u32.
            *left -= u32::try_from(take).unwrap_or(*left);
            if *left == 0 {
                *state = Parse::Header { head: [0; 9], n: 0 };
            }
            (&bytes[take..], None)
        }
        Parse::Header { head, n } => {
            let at = usize::from(*n);
            let take = (9 - at).min(bytes.len());
            head[at..at + take].copy_from_slice(&bytes[..take]);
            let rest = &bytes[take..];
            if at + take < 9 {
                *n = u8::try_from(at + take).unwrap_or(0);
                return (rest, None);
            }
            let h = Head {
                len: u32::from_be_bytes([0, head[0], head[1], head[2]]),
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            };
            *state = if h.len == 0 {
                Parse::Header { head: [0; 9], n: 0 }
            } else {
                Parse::Payload(h.len)
            };
            (rest, Some(h))
        }
        Parse::Preface(_) | Parse::Off => (&[], None),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn limits(max_resets: u32) -> Http2Limits {
        Http2Limits {
            max_resets,
            max_peer_resets: max_resets,
            max_pending_resets: 64,
            max_control_frames: 3,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn http1_is_never_counted() {
        let mut m = FrameMeter::new(limits(0));
        assert_eq!(m.on_read(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(m.on_read(&frame(RST_STREAM, 0, 1, &[0; 4])), None);
        assert!(matches!(m.read, Parse::Off));
    }

    #[test]
    fn resets_past_the_limit_trip_even_split_across_reads() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        bytes.extend(frame(HEADERS, 0x5, 7, &[0x82; 3]));
        bytes.extend(frame(0x0, 0, 7, &[0; 100]));
        for _ in 0..3 {
            bytes.extend(frame(RST_STREAM, 0, 7, &[0, 0, 0, 8]));
        }
        let mut m = FrameMeter::new(limits(2));
        let mut tripped = None;
        for b in bytes.chunks(5) {
            if let Some(a) = m.on_read(b) {
                tripped = Some(a);
            }
        }
        assert_eq!(tripped, Some(Abuse::Resets));
        assert!(m.goaway_pending());
        let g = m.goaway_rest();
        assert_eq!(&g[..9], &[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(&g[9..13], &7u32.to_be_bytes(), "last stream id");
        assert_eq!(&g[13..], &ENHANCE_YOUR_CALM.to_be_bytes());
    }

    #[test]
    fn unsolicited_acks_count() {
        let mut m = FrameMeter::new(limits(10));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        assert_eq!(m.on_read(&bytes), None);
        // The gateway's own SETTINGS and one PING: their acks are free.
        m.on_write(&frame(SETTINGS, 0, 0, &[]));
        m.on_write(&frame(PING, 0, 0, &[0; 8]));
        let mut acks = frame(SETTINGS, ACK, 0, &[]);
        acks.extend(frame(PING, ACK, 0, &[0; 8]));
        assert_eq!(m.on_read(&acks), None);
        // Acks of nothing count as the frames they pretend to answer (with the client's
        // SETTINGS, three are within the limit).
        let mut flood = Vec::new();
        for _ in 0..2 {
            flood.extend(frame(PING, ACK, 0, &[0; 8]));
        }
        assert_eq!(m.on_read(&flood), None, "three within the limit");
        assert_eq!(
            m.on_read(&frame(PING, ACK, 0, &[0; 8])),
            Some(Abuse::ControlFrames)
        );
    }

    #[test]
    fn pings_and_settings_count_but_not_their_acks() {
        let mut m = FrameMeter::new(limits(10));
        for _ in 0..20 {
            m.on_write(&frame(PING, 0, 0, &[0; 8]));
        }
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        for _ in 0..10 {
            bytes.extend(frame(SETTINGS, ACK, 0, &[]));
            bytes.extend(frame(PING, ACK, 0, &[0; 8]));
        }
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        assert_eq!(
            m.on_read(&bytes),
            None,
            "three control frames are within the limit"
        );
        assert_eq!(
            m.on_read(&frame(PING, 0, 0, &[0; 8])),
            Some(Abuse::ControlFrames)
        );
    }

    /// A connection that opened one stream and was sent `data` DATA frames, then `flood`.
    fn after_one_stream(data: usize, flood: &[u8], count: usize) -> (FrameMeter, Option<Abuse>) {
        let mut m = FrameMeter::new(limits(10));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        bytes.extend(frame(HEADERS, 0x4, 1, &[0x82; 3]));
        assert_eq!(m.on_read(&bytes), None);
        for _ in 0..data {
            m.on_write(&frame(DATA, 0, 1, &[0; 10]));
        }
        let mut tripped = None;
        for _ in 0..count {
            if let Some(a) = m.on_read(flood) {
                tripped = Some(a);
            }
        }
        (m, tripped)
    }

    #[test]
    fn frames_that_move_nothing_are_bounded() {
        let window_update = frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]);
        // One stream: 5 + 2 × (1 + 10 × DATA frames written) WINDOW_UPDATEs.
        assert_eq!(after_one_stream(0, &window_update, 7).1, None);
        assert_eq!(
            after_one_stream(0, &window_update, 8).1,
            Some(Abuse::ControlFrames)
        );
        // A client granting window for what it is sent stays within it.
        assert_eq!(after_one_stream(100, &window_update, 2007).1, None);
        assert_eq!(
            after_one_stream(100, &window_update, 2008).1,
            Some(Abuse::ControlFrames)
        );
        // PRIORITY: 100 × (1 + streams).
        let priority = frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]);
        assert_eq!(after_one_stream(0, &priority, 200).1, None);
        assert_eq!(
            after_one_stream(0, &priority, 201).1,
            Some(Abuse::ControlFrames)
        );
        // A browser's priority tree, before any request, is no flood.
        let mut m = FrameMeter::new(limits(10));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        for stream in [3, 5, 7, 9, 11, 13] {
            bytes.extend(frame(PRIORITY, 0, stream, &[0, 0, 0, 0, 200]));
        }
        bytes.extend(frame(HEADERS, 0x5, 15, &[0x82; 3]));
        assert_eq!(m.on_read(&bytes), None);
        // Empty DATA without END_STREAM: one in a row; a payload or END_STREAM ends the run.
        let empty = frame(DATA, 0, 1, &[]);
        let mut mixed = empty.clone();
        mixed.extend(frame(DATA, 0, 1, &[1]));
        mixed.extend(empty.clone());
        mixed.extend(frame(DATA, END_STREAM, 1, &[]));
        assert_eq!(after_one_stream(0, &mixed, 50).1, None);
        assert_eq!(after_one_stream(0, &empty, 2).1, Some(Abuse::ControlFrames));
        // Unknown types count with PING and SETTINGS (3 in the window here, the client's
        // SETTINGS among them).
        let unknown = frame(0xfa, 0, 0, &[1, 2, 3]);
        assert_eq!(after_one_stream(0, &unknown, 2).1, None);
        let (m, tripped) = after_one_stream(0, &unknown, 3);
        assert_eq!(tripped, Some(Abuse::ControlFrames));
        assert_eq!(
            &m.goaway_rest()[9..13],
            &1u32.to_be_bytes(),
            "last stream id"
        );
    }

    /// h2's own GOAWAY ENHANCE_YOUR_CALM is seen however its bytes are split across writes;
    /// another GOAWAY (a graceful one) is not it.
    #[test]
    fn h2s_own_goaway_is_seen_across_writes() {
        let calm = frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0xb]);
        let graceful = frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]);
        for at in 0..calm.len() {
            let mut m = FrameMeter::new(limits(10));
            m.on_read(PREFACE);
            m.on_write(&frame(SETTINGS, 0, 0, &[]));
            m.on_write(&calm[..at]);
            m.on_write(&calm[at..]);
            assert!(m.take_library_calm(), "split at {at}");
            assert!(m.at_write_boundary());
            let mut m = FrameMeter::new(limits(10));
            m.on_read(PREFACE);
            m.on_write(&graceful[..at]);
            m.on_write(&graceful[at..]);
            assert!(!m.take_library_calm(), "split at {at}");
        }
    }

    #[test]
    fn write_boundaries_follow_frames() {
        let mut m = FrameMeter::new(limits(10));
        m.on_read(PREFACE);
        let f = frame(0x0, 0, 1, &[1; 20]);
        m.on_write(&f[..4]);
        assert!(!m.at_write_boundary());
        m.on_write(&f[4..15]);
        assert!(!m.at_write_boundary());
        m.on_write(&f[15..]);
        assert!(m.at_write_boundary());
    }
}
