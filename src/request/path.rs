//! Path canonicalisation: the one path the gateway decides on and forwards upstream.
//!
//! [`canonicalize`] takes the raw path of an origin-form request target (the caller has already
//! split off the query at `?`) and returns its canonical form, or a [`PathError`] that the caller
//! turns into a 400. The gateway must never see one path while an upstream (Tomcat, nginx, IIS,
//! Node, Go, Spring) sees another, so anything an upstream could read differently is rejected
//! rather than guessed at.
//!
//! # Canonical form
//!
//! - It starts with `/`; the root is `/`.
//! - No empty segment (`//a///b` is `/a/b`) except a trailing slash, which is kept (`/a/`).
//! - No `.` or `..` segment: they are resolved (`/a/./b` is `/a/b`, `/a/b/..` is `/a/`); a `..`
//!   above the root is rejected, never clamped.
//! - A percent-encoded character a path may carry as it is is decoded: the unreserved ones
//!   (`ALPHA DIGIT - . _ ~`: `/%61` is `/a`), the sub-delimiters but `;` (`! $ & ' ( ) * + ,
//!   =`) and `:` and `@` (`/users%3Adelete` is `/users:delete`). Every other encoded byte that is
//!   accepted stays encoded, with uppercase hex (`%20`, `%C3%A9`). So a character is encoded
//!   in the canonical form exactly when it must be, and two spellings an upstream routes alike
//!   are one path to the rules. Nothing is decoded twice.
//! - Case is preserved.
//!
//! # Invariants of an `Ok` output
//!
//! - It is ASCII, with no raw `;`, `\`, control character or character that needs encoding.
//! - Every `%` is followed by two uppercase hex digits encoding neither a character a path may
//!   carry as it is (unreserved, sub-delimiter, `:`, `@`), `/`, `\` nor a control byte, and the
//!   fully decoded path is valid UTF-8.
//! - `canonicalize(output) == Ok(Cow::Borrowed(output))`: canonicalisation is idempotent, and a
//!   path already canonical is returned without allocating. Otherwise it allocates once.
//!
//! # Rejected
//!
//! Encoded `/` and `\` (upstreams disagree on whether they split segments), raw `\` (IIS reads it
//! as `/`), raw `;` (Tomcat and Jetty path parameters: `/admin;x` is `/admin` to them), a `.` or
//! `..` segment spelled with an encoded dot (`/%2e%2e/admin`), raw or encoded control bytes,
//! raw non-ASCII, malformed escapes, invalid UTF-8 after decoding, and paths over
//! [`MAX_PATH_LEN`] bytes.
//!
//! Also rejected: the encoded delimiters `%3B` (`;`), `%3F` (`?`) and `%23` (`#`), and double
//! encoding (a `%25` whose decoded text is itself an escape: `%252e`, `%25%32%65`, `%2525`).
//! The rule matched `/admin%3Bx` or `/x%252e%252e/admin`, but an upstream that decodes once
//! more, or strips path parameters after decoding, serves `/admin` or `/x/../admin`. A `%25`
//! followed by anything else (`/100%25`, `/a%25z`) is an ordinary percent sign and stays.
//!
//! # Doors that do not forward
//!
//! The proxy forwards the canonical path (its escaped sub-delimiters, `:` and `@` as sent, see
//! below), so the path decided is the path served. The decision
//! doors cannot: the peer in front (Envoy, nginx, Caddy, Traefik) forwards the path as the
//! client sent it, and an upstream that does not resolve `..` itself (Flask, Express) would
//! serve `/admin/../public/x` from its admin handler while the gateway allowed `/public/x`.
//! [`check_forwarded_as_is`] finds, for those doors, a path whose segments canonicalisation
//! would change: a `.` or `..` segment, or an empty one (`//`). The request is still decided
//! on its canonical path (a denial is the proxy's answer); an allow becomes 400
//! `non_canonical_path` (`RequestFacts::forwarded_as_sent`). An escaped character a path may
//! carry as it is (`/%61dmin`, `/%40x`) changes no segment, and is decided decoded, as nginx,
//! Caddy, Go, Spring and WSGI route it; but an upstream that routes on the raw path (Envoy's
//! route table, Express) reads `/%40x` as another name than `/@x`. So the path is read a
//! second time as the upstream receives it (`RequestFacts::path_as_sent`): at the proxy, with
//! its escaped sub-delimiters, `:` and `@` as sent ([`canonicalize_as_sent`]), which is what
//! it forwards; at a decision door, exactly as sent (hex digits uppercased, [`upper_hex`]). An
//! allow holds only if that reading meets the same rule, and a condition of the rule that
//! reads the path holds on it (the decision engine).

use std::borrow::Cow;

/// `raw` with the hex digits of its escapes in uppercase (`%c3%a9` is `%C3%A9`: RFC 3986,
/// 6.2.2.1), borrowed when they already are. For a path [`canonicalize`] accepted, whose every
/// `%` starts an escape.
pub fn upper_hex(raw: &str) -> Cow<'_, str> {
    let b = raw.as_bytes();
    let lower = |i: usize| b.get(i).is_some_and(u8::is_ascii_lowercase);
    let any = b
        .iter()
        .enumerate()
        .any(|(i, c)| *c == b'%' && (lower(i + 1) || lower(i + 2)));
    if !any {
        return Cow::Borrowed(raw);
    }
    let mut out = b.to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] == b'%' {
            let end = (i + 3).min(out.len());
            out[i + 1..end].make_ascii_uppercase();
            i += 3;
        } else {
            i += 1;
        }
    }
    // Only ASCII letters changed case: still UTF-8.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| raw.to_owned()))
}

/// Longest raw path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 8192;

/// Why a raw path has no canonical form. Every variant is a 400 for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH_LEN`] bytes.
    #[error("path too long")]
    TooLong,
    /// Empty, or does not start with `/` (`*`, `admin`).
    #[error("path not absolute")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in path")]
    InvalidPercentEncoding,
    /// `%2F`: upstreams disagree on whether it splits segments.
    #[error("encoded slash in path")]
    EncodedSlash,
    /// `%5C`: some upstreams read it as a slash.
    #[error("encoded backslash in path")]
    EncodedBackslash,
    /// A raw or encoded control byte (0x00-0x1F, 0x7F).
    #[error("control character in path")]
    ControlCharacter,
    /// The percent-decoded path is not valid UTF-8 (truncated, overlong, surrogate, ...).
    #[error("invalid utf-8 in path")]
    InvalidUtf8,
    /// A raw `\`: IIS and others read it as a slash.
    #[error("backslash in path")]
    Backslash,
    /// A raw `;`: Tomcat and Jetty strip path parameters (`/admin;x` is `/admin` to them).
    #[error("semicolon in path")]
    Semicolon,
    /// A raw byte at or above 0x80.
    #[error("non-ascii byte in path")]
    NonAscii,
    /// A raw character that must be percent-encoded in a path (space, `"`, `#`, `<`, `?`, ...).
    #[error("invalid character in path")]
    InvalidCharacter,
    /// A `..` segment above the root.
    #[error("dot segment above root in path")]
    DotSegmentUnderflow,
    /// A `.` or `..` segment spelled with an encoded dot (`%2e%2e`, `.%2E`).
    #[error("encoded dot segment in path")]
    EncodedDotSegment,
    /// `%3B`, `%3F` or `%23`: a delimiter an upstream that decodes again would act on.
    #[error("encoded delimiter in path")]
    EncodedDelimiter,
    /// `%25` whose decoded text is itself an escape (`%252e`, `%25%32%65`).
    #[error("double encoding in path")]
    DoubleEncoding,
    /// A `.`, `..` or empty segment at a door whose peer forwards the path as sent (see
    /// [`check_forwarded_as_is`]).
    #[error("path not in canonical form")]
    NonCanonical,
}

/// Refuses a raw path (without its query) whose segments [`canonicalize`] would change: a
/// `.` or `..` segment, or an empty segment other than a trailing slash. For the doors whose
/// peer forwards the path as sent (see the [module docs](self)); call it on a path
/// [`canonicalize`] accepted.
///
/// Why: `/admin/../public/x` was allowed as `/public/x` while nginx, Caddy and Envoy forwarded
/// it unchanged. Regression: tests::forwarded_as_is, tests (it) conformance (`/./`, `//`).
pub fn check_forwarded_as_is(raw: &str) -> Result<(), PathError> {
    // One pass over the bytes after the leading `/` (a split iterator cost a decision door
    // about 1% of its work per request).
    let bytes = raw.as_bytes();
    let mut start = 1;
    for end in 1..=bytes.len() {
        if end < bytes.len() && bytes[end] != b'/' {
            continue;
        }
        let segment = &bytes[start..end];
        let last = end == bytes.len();
        if segment == b"." || segment == b".." || (segment.is_empty() && !last) {
            return Err(PathError::NonCanonical);
        }
        start = end + 1;
    }
    Ok(())
}

/// Canonicalises the raw path of an origin-form request target (without its query).
///
/// Returns the input itself when it is already canonical. See the [module docs](self).
pub fn canonicalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    canonicalize_with(raw, true)
}

/// [`canonicalize`], but an escaped sub-delimiter, `:` or `@` stays escaped (uppercase hex), as
/// the client wrote it: the path the proxy forwards, so that a signature over it still holds
/// and `%2B` stays a plus, and the reading of an upstream that routes on the raw path. It
/// fails exactly when [`canonicalize`] fails.
pub fn canonicalize_as_sent(raw: &str) -> Result<Cow<'_, str>, PathError> {
    canonicalize_with(raw, false)
}

fn canonicalize_with(raw: &str, decode_delimiters: bool) -> Result<Cow<'_, str>, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut canon = Canonicalizer::new(bytes, decode_delimiters);
    let mut i = 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'/' => {
                canon.utf8.ascii()?;
                canon.end_segment(false)?;
                i += 1;
            }
            b'%' => {
                canon.escape(i)?;
                i += 3;
            }
            _ => {
                check_raw(b)?;
                canon.utf8.ascii()?;
                canon.keep(&[b]);
                i += 1;
            }
        }
    }
    canon.utf8.ascii()?;
    canon.end_segment(true)?;
    canon.finish(raw)
}

/// Accepts a raw byte other than `/` and `%` if it may appear unencoded in a canonical path.
fn check_raw(b: u8) -> Result<(), PathError> {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Ok(()),
        b if is_raw_delimiter(b) => Ok(()),
        // Why: path parameters; `/admin;x` would pass a rule on `/admin/` but reach `/admin`.
        // Regression: tests::table (`/admin;x`).
        b';' => Err(PathError::Semicolon),
        b'\\' => Err(PathError::Backslash),
        0x00..=0x1F | 0x7F => Err(PathError::ControlCharacter),
        0x80..=0xFF => Err(PathError::NonAscii),
        // Space " # < > ? [ ] ^ ` { | }: a conforming client encodes them.
        _ => Err(PathError::InvalidCharacter),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A character a canonical path carries unencoded although it is not unreserved: the
/// sub-delimiters but `;`, and `:` and `@` (RFC 3986 `pchar`).
fn is_raw_delimiter(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

fn hex_value(b: u8) -> Result<u8, PathError> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(PathError::InvalidPercentEncoding),
    }
}

/// Uppercase hex digit for the low nibble of `n`.
fn hex_digit(n: u8) -> u8 {
    let n = n & 0x0F;
    if n < 10 { b'0' + n } else { b'A' + (n - 10) }
}

/// Single-pass canonicaliser that allocates only once the output stops being a prefix of the
/// input.
struct Canonicalizer<'a> {
    raw: &'a [u8],
    /// `None` while the output so far is `raw[..mirrored]`, byte for byte.
    out: Option<Vec<u8>>,
    /// Length of the output while it is still borrowed. Only [`Self::keep`] grows it, by bytes
    /// mirrored from `raw`, so it never exceeds `raw.len()`.
    mirrored: usize,
    /// Where the current segment starts in the output; the byte before it is `/`.
    seg_start: usize,
    /// The current segment contains a percent-encoded dot.
    seg_encoded_dot: bool,
    utf8: Utf8Check,
    /// Escapes of the sub-delimiters, `:` and `@` are decoded ([`canonicalize`]) or kept
    /// ([`canonicalize_as_sent`]).
    decode_delimiters: bool,
}

/// What a finished segment is, once decoded.
enum Segment {
    Empty,
    Dot,
    DotDot,
    Name,
}

/// Validates, incrementally, the UTF-8 of the decoded byte stream. Raw bytes are all ASCII, so
/// only percent-encoded bytes at or above 0x80 start or continue a multi-byte sequence.
#[derive(Default)]
struct Utf8Check {
    buf: [u8; 4],
    len: usize,
    need: usize,
}

// === impl PathError ===

impl PathError {
    /// Stable snake_case reason code for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::NotAbsolute => "not_absolute",
            Self::InvalidPercentEncoding => "invalid_percent_encoding",
            Self::EncodedSlash => "encoded_slash",
            Self::EncodedBackslash => "encoded_backslash",
            Self::ControlCharacter => "control_character",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Backslash => "backslash",
            Self::Semicolon => "semicolon",
            Self::NonAscii => "non_ascii",
            Self::InvalidCharacter => "invalid_character",
            Self::DotSegmentUnderflow => "dot_segment_underflow",
            Self::EncodedDotSegment => "encoded_dot_segment",
            Self::EncodedDelimiter => "encoded_delimiter",
            Self::DoubleEncoding => "double_encoding",
            Self::NonCanonical => "non_canonical_path",
        }
    }
}

// === impl Canonicalizer ===

impl<'a> Canonicalizer<'a> {
    /// Starts after the leading `/`, which the caller has checked.
    fn new(raw: &'a [u8], decode_delimiters: bool) -> Self {
        Self {
            raw,
            out: None,
            mirrored: 1,
            seg_start: 1,
            seg_encoded_dot: false,
            utf8: Utf8Check::default(),
            decode_delimiters,
        }
    }

    /// Appends bytes equal to the raw bytes at the current position.
    fn keep(&mut self, bytes: &[u8]) {
        match &mut self.out {
            Some(out) => out.extend_from_slice(bytes),
            None => self.mirrored += bytes.len(),
        }
    }

    /// Appends bytes that differ from the raw input.
    fn push(&mut self, bytes: &[u8]) {
        self.owned().extend_from_slice(bytes);
    }

    /// The output as an owned buffer, allocated once: the output is never longer than the input.
    fn owned(&mut self) -> &mut Vec<u8> {
        let (raw, mirrored) = (self.raw, self.mirrored);
        self.out.get_or_insert_with(|| {
            let mut out = Vec::with_capacity(raw.len());
            // `mirrored <= raw.len()`: see the field.
            out.extend_from_slice(raw.get(..mirrored).unwrap_or_default());
            out
        })
    }

    fn len(&self) -> usize {
        self.out.as_ref().map_or(self.mirrored, Vec::len)
    }

    /// The current segment as written so far, decoded unreserved characters included.
    fn segment(&self) -> &[u8] {
        let written = match &self.out {
            Some(out) => out.get(self.seg_start..),
            None => self.raw.get(self.seg_start..self.mirrored),
        };
        written.unwrap_or_default()
    }

    /// Handles the `%` at `raw[i]`.
    fn escape(&mut self, i: usize) -> Result<(), PathError> {
        let (Some(&hi), Some(&lo)) = (self.raw.get(i + 1), self.raw.get(i + 2)) else {
            return Err(PathError::InvalidPercentEncoding);
        };
        let byte = (hex_value(hi)? << 4) | hex_value(lo)?;
        match byte {
            b'/' => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::EncodedBackslash),
            // Why: the rule saw `/admin%3Bx` (one segment); an upstream that decodes and then
            // strips path parameters, or splits the query or fragment again, serves `/admin`.
            // Regression: tests::table (`/admin%3Bx`, `/admin%3Fx`, `/admin%23x`).
            b';' | b'?' | b'#' => return Err(PathError::EncodedDelimiter),
            // Why: `%252e%252e` is `%2e%2e` to an upstream that decodes once more, then `..`.
            // Regression: tests::table (`/x/%252e%252e/admin`, `/%25%32%65`).
            b'%' if self.escape_follows(i + 3) => return Err(PathError::DoubleEncoding),
            0x00..=0x1F | 0x7F => return Err(PathError::ControlCharacter),
            0x80..=0xFF => self.utf8.high(byte)?,
            _ => self.utf8.ascii()?,
        }
        if is_unreserved(byte) || (self.decode_delimiters && is_raw_delimiter(byte)) {
            // Why: `/%61dmin` must meet the rules for `/admin`. And `/v1/users%3Adelete` those
            // for `/v1/users:delete`: nginx, Caddy and Go decode the escape before they route,
            // and served the denied `:delete` (likewise `/%40admin`, `/a%2Bb`); matched as
            // written, the escape missed the deny rule and reached a catch-all allow.
            // Regression: tests::table (`/v1/users%3Adelete`), tests (it)
            // paths::an_escaped_delimiter_is_decided_as_the_upstream_routes_it
            self.seg_encoded_dot |= byte == b'.';
            self.push(&[byte]);
        } else {
            let canonical = [b'%', hex_digit(byte >> 4), hex_digit(byte)];
            if canonical == [b'%', hi, lo] {
                self.keep(&canonical);
            } else {
                self.push(&canonical);
            }
        }
        Ok(())
    }

    /// Whether the two characters at `raw[j..]`, each raw or percent-encoded, decode to hex
    /// digits: what follows a `%25` that an upstream decoding twice reads as an escape.
    fn escape_follows(&self, j: usize) -> bool {
        let decoded = |at: usize| -> Option<(u8, usize)> {
            match *self.raw.get(at)? {
                b'%' => {
                    let hi = hex_value(*self.raw.get(at + 1)?).ok()?;
                    let lo = hex_value(*self.raw.get(at + 2)?).ok()?;
                    Some(((hi << 4) | lo, 3))
                }
                b => Some((b, 1)),
            }
        };
        let Some((first, width)) = decoded(j) else {
            return false;
        };
        let Some((second, _)) = decoded(j + width) else {
            return false;
        };
        first.is_ascii_hexdigit() && second.is_ascii_hexdigit()
    }

    /// Resolves the segment just written, at a raw `/` or (`last`) at the end of the input.
    fn end_segment(&mut self, last: bool) -> Result<(), PathError> {
        let segment = match self.segment() {
            b"" => Segment::Empty,
            b"." => Segment::Dot,
            b".." => Segment::DotDot,
            _ => Segment::Name,
        };
        // Why: `/public/%2e%2e/admin` must not resolve differently in an upstream that decodes
        // after resolving dot segments. Regression: tests::table (`/public/%2e%2e/admin`).
        if matches!(segment, Segment::Dot | Segment::DotDot) && self.seg_encoded_dot {
            return Err(PathError::EncodedDotSegment);
        }
        let seg_start = self.seg_start;
        match segment {
            Segment::Name if last => {}
            Segment::Name => self.keep(b"/"),
            // A trailing slash (or the root) is already written.
            Segment::Empty if last => {}
            // Drop the raw `/`: the output already ends with one.
            Segment::Empty => {
                self.owned();
            }
            // Remove the segment; its `/` stays, the raw one that follows is dropped.
            Segment::Dot => self.owned().truncate(seg_start),
            Segment::DotDot => {
                // The output before the segment is `/s1/.../sk/`; remove `sk/` as well.
                // Why: clamping at the root would hide a traversal attempt. Regression:
                // tests::table (`/a/../..`).
                let out = self.owned();
                let previous = seg_start
                    .checked_sub(1)
                    .and_then(|end| out.get(..end))
                    .and_then(|before| before.iter().rposition(|&c| c == b'/'))
                    .ok_or(PathError::DotSegmentUnderflow)?;
                out.truncate(previous + 1);
            }
        }
        self.seg_start = self.len();
        self.seg_encoded_dot = false;
        Ok(())
    }

    fn finish(self, raw: &'a str) -> Result<Cow<'a, str>, PathError> {
        match self.out {
            // Nothing was dropped or rewritten, so `mirrored == raw.len()`.
            None => Ok(Cow::Borrowed(raw)),
            // Always ASCII; checked rather than assumed.
            Some(out) => String::from_utf8(out)
                .map(Cow::Owned)
                .map_err(|_| PathError::InvalidUtf8),
        }
    }
}

// === impl Utf8Check ===

impl Utf8Check {
    /// An ASCII byte, raw or decoded: no multi-byte sequence may be pending.
    fn ascii(&self) -> Result<(), PathError> {
        if self.len == 0 {
            Ok(())
        } else {
            Err(PathError::InvalidUtf8)
        }
    }

    /// A decoded byte at or above 0x80.
    fn high(&mut self, b: u8) -> Result<(), PathError> {
        if self.len == 0 {
            // 0x80-0xBF: stray continuation; 0xC0, 0xC1: always overlong; 0xF5-0xFF: beyond
            // U+10FFFF. The rest (overlong, surrogates, range) is left to `str::from_utf8`.
            self.need = match b {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return Err(PathError::InvalidUtf8),
            };
        }
        let slot = self.buf.get_mut(self.len).ok_or(PathError::InvalidUtf8)?;
        *slot = b;
        self.len += 1;
        if self.len == self.need {
            let sequence = self.buf.get(..self.len).ok_or(PathError::InvalidUtf8)?;
            std::str::from_utf8(sequence).map_err(|_| PathError::InvalidUtf8)?;
            self.len = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
