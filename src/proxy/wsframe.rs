//! WebSocket frame boundaries (RFC 6455 §5.2), so that a tunnel the gateway closes can end
//! with a close frame rather than a cut connection.
//!
//! Contract:
//! - [`Frames`] follows the bytes written one way through a tunnel and knows, after any
//!   prefix of them, whether it ends exactly between two frames. It reads each frame's header
//!   (2 to 14 bytes) and skips its payload by length: no payload byte is looked at, nothing is
//!   buffered, and a payload length the protocol forbids (the top bit of the 64-bit form) is
//!   read as the huge length it says, so such a stream simply never reaches a boundary again.
//! - Between any two frames a close frame may be written, even inside a fragmented message
//!   (§5.4: control frames may be injected in its middle). Extensions (permessage-deflate)
//!   never touch control frames, whose RSV bits stay 0.
//! - [`close_frame`] builds the close frame a side is owed: unmasked to the client (the
//!   gateway is its server), masked with a fresh random key to the upstream (the gateway is
//!   its client, §5.3). Its reason is at most 123 bytes, as a control frame's payload is at
//!   most 125.

/// Where a one-way stream of frames is: inside a header, inside a payload, or between frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Frames {
    /// The current header's bytes so far (a header is at most 14 bytes).
    head: [u8; 14],
    /// How many of `head` are read; 0 with `left == 0` is a boundary.
    have: u8,
    /// Payload bytes of the current frame still to come.
    left: u64,
}

// === impl Frames ===

impl Frames {
    /// Whether the bytes so far end exactly between two frames.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Follows `bytes`. With `stop`, stops at the first boundary reached and returns how many
    /// bytes lead up to it (0 when already at one); otherwise follows them all and returns
    /// their count.
    pub(super) fn advance(&mut self, bytes: &[u8], stop: bool) -> usize {
        if stop && self.at_boundary() {
            return 0;
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.left > 0 {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                self.left -= take as u64;
                i += take;
            } else {
                self.head[usize::from(self.have)] = bytes[i];
                self.have += 1;
                i += 1;
                if self.have >= 2 && self.have == self.header_len() {
                    self.left = self.payload_len();
                    self.have = 0;
                }
            }
            if stop && self.at_boundary() {
                return i;
            }
        }
        i
    }

    /// The current header's whole length, once its second byte is read.
    fn header_len(&self) -> u8 {
        let len7 = self.head[1] & 0x7f;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// The payload length of a complete header.
    fn payload_len(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => u64::from_be_bytes([
                self.head[2],
                self.head[3],
                self.head[4],
                self.head[5],
                self.head[6],
                self.head[7],
                self.head[8],
                self.head[9],
            ]),
            n => u64::from(n),
        }
    }
}

/// A close frame with `code` and `reason` (cut to 123 bytes): unmasked for the client, or
/// masked with a fresh random key for the upstream.
pub(super) fn close_frame(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);
    let len = u8::try_from(payload.len()).unwrap_or(125);
    let mut frame = Vec::with_capacity(6 + payload.len());
    // FIN, opcode 0x8 (close).
    frame.push(0x88);
    if masked {
        let mut key = [0u8; 4];
        if aws_lc_rs::rand::fill(&mut key).is_err() {
            key = crate::server::request_id::random_u64().to_le_bytes()[..4]
                .try_into()
                .unwrap_or([0x5a; 4]);
        }
        frame.push(0x80 | len);
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        frame.push(len);
        frame.extend_from_slice(&payload);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header for a payload of `len` bytes.
    fn header(len: u64, masked: bool) -> Vec<u8> {
        let mask = if masked { 0x80 } else { 0 };
        let mut h = vec![0x82];
        match len {
            0..=125 => h.push(mask | len as u8),
            126..=0xffff => {
                h.push(mask | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(mask | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    fn frame(len: u64, masked: bool) -> Vec<u8> {
        let mut f = header(len, masked);
        f.resize(f.len() + len as usize, 0xab);
        f
    }

    #[test]
    fn boundaries_after_every_split() {
        // (what is written, whether it ends between frames)
        let two: Vec<u8> = [frame(3, false), frame(0, true)].concat();
        let cases: [(Vec<u8>, bool); 9] = [
            (vec![], true),
            (frame(0, false), true),
            (frame(5, false), true),
            (frame(5, true), true),
            (frame(300, false), true),
            (frame(70_000, true), true),
            (header(5, false), false),
            (frame(300, true)[..7].to_vec(), false),
            (two, true),
        ];
        for (bytes, whole) in cases {
            // Written whole, byte by byte, and in two pieces at every split point: the same.
            let mut f = Frames::default();
            assert_eq!(f.advance(&bytes, false), bytes.len());
            assert_eq!(f.at_boundary(), whole, "{} bytes", bytes.len());
            let mut f = Frames::default();
            for b in &bytes {
                f.advance(std::slice::from_ref(b), false);
            }
            assert_eq!(f.at_boundary(), whole);
            for split in 0..bytes.len().min(400) {
                let mut f = Frames::default();
                f.advance(&bytes[..split], false);
                f.advance(&bytes[split..], false);
                assert_eq!(f.at_boundary(), whole, "split at {split}");
            }
        }
    }

    #[test]
    fn stopping_at_the_next_boundary() {
        let bytes = [frame(3, false), frame(130, true), frame(1, false)].concat();
        let first = frame(3, false).len();
        let second = first + frame(130, true).len();
        let mut f = Frames::default();
        // At a boundary already: nothing more may go.
        assert_eq!(f.advance(&bytes, true), 0);
        // Two bytes into the first frame: the rest of it, and no further.
        f.advance(&bytes[..2], false);
        assert_eq!(f.advance(&bytes[2..], true), first - 2);
        assert!(f.at_boundary());
        // Inside the second frame's header.
        let mut f = Frames::default();
        f.advance(&bytes[..first + 3], false);
        assert_eq!(f.advance(&bytes[first + 3..], true), second - first - 3);
        assert!(f.at_boundary());
        // Following without stopping reads every frame.
        let mut f = Frames::default();
        assert_eq!(f.advance(&bytes, false), bytes.len());
        assert!(f.at_boundary());
    }

    #[test]
    fn a_forbidden_length_never_ends() {
        let mut f = Frames::default();
        let mut h = vec![0x82, 127];
        h.extend_from_slice(&u64::MAX.to_be_bytes());
        f.advance(&h, false);
        f.advance(&[0; 4096], false);
        assert!(!f.at_boundary());
        let mut g = f;
        assert_eq!(g.advance(&[0; 100], true), 100);
    }

    #[test]
    fn close_frames_for_each_side() {
        let plain = close_frame(1008, "tunnel_credential_expired", false);
        assert_eq!(&plain[..4], &[0x88, 27, 0x03, 0xf0]);
        assert_eq!(&plain[4..], b"tunnel_credential_expired");
        let masked = close_frame(1001, "tunnel_idle_timeout", true);
        assert_eq!(masked[0], 0x88);
        assert_eq!(masked[1], 0x80 | 21);
        let key = &masked[2..6];
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(&unmasked[..2], &1001u16.to_be_bytes());
        assert_eq!(&unmasked[2..], b"tunnel_idle_timeout");
        // Each is one whole frame; a long reason is cut to fit a control frame.
        let long = close_frame(1008, &"x".repeat(300), true);
        assert_eq!(long[1], 0x80 | 125);
        for f in [plain, masked, long] {
            let mut frames = Frames::default();
            frames.advance(&f, false);
            assert!(frames.at_boundary());
        }
    }
}
