//! W3C trace context (`traceparent`, `tracestate`; Trace Context Level 1): each hop keeps the
//! trace id and puts its own span id in `traceparent`, so a trace shows the gateway between
//! the client and the upstream.
//!
//! Invariants: a `traceparent` is believed only when it is the request's only one and is
//! well-formed (version not `ff`; version `00` exactly 55 characters, a later version at
//! least 55 with a `-` after them; lowercase hex; trace id and parent id not all zeros);
//! anything else starts a new trace, and its `tracestate` goes with it (a state without its
//! parent means nothing). The span id is always new.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on (the specification's bound on what a vendor must pass).
const MAX_TRACESTATE: usize = 512;
/// Members longer than this go first when a `tracestate` is cut to [`MAX_TRACESTATE`].
const LONG_MEMBER: usize = 128;
/// The `trace-flags` bits Trace Context Level 1 defines (sampled); the others are zeroed.
const KNOWN_FLAGS: u8 = 0x01;

/// The trace context of one hop through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace: the client's, or new.
    pub trace_id: [u8; 16],
    /// The client's span, when it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span for this request: always new.
    pub span_id: [u8; 8],
    /// `trace-flags` (bit 0: sampled).
    pub flags: u8,
    /// The client's `tracestate`, passed on with a valid `traceparent`.
    pub state: Option<HeaderValue>,
}

/// What the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A valid `traceparent`: the trace goes on.
    Valid,
    /// None: a new trace.
    Absent,
    /// One that is not valid, or several: replaced by a new trace.
    Malformed,
}

// === impl TraceContext ===

impl TraceContext {
    /// The context for a request with `headers`; `sampled` is the flag of a new trace.
    pub fn from_headers(headers: &HeaderMap, sampled: bool) -> (Self, Received) {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let (first, second) = (values.next(), values.next());
        let received = match (first, second) {
            (None, _) => Received::Absent,
            (Some(v), None) => match parse(v.as_bytes()) {
                Some((trace_id, parent_id, flags)) => {
                    let state = tracestate(headers);
                    return (
                        Self {
                            trace_id,
                            parent_id: Some(parent_id),
                            span_id: new_span_id(),
                            // "Vendors MUST set unknown flags to zero" (version 00).
                            flags: flags & KNOWN_FLAGS,
                            state,
                        },
                        Received::Valid,
                    );
                }
                None => Received::Malformed,
            },
            (Some(_), Some(_)) => Received::Malformed,
        };
        (Self::new(sampled), received)
    }

    /// A new trace.
    pub fn new(sampled: bool) -> Self {
        let mut trace_id = [0u8; 16];
        loop {
            trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
            trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
            if trace_id != [0; 16] {
                break;
            }
        }
        Self {
            trace_id,
            parent_id: None,
            span_id: new_span_id(),
            flags: u8::from(sampled),
            state: None,
        }
    }

    /// `traceparent` for the next hop: version 00, the trace, this hop's span, the flags.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        hex(&[self.flags], &mut out[53..55]);
        // Lowercase hex and dashes: always a valid header value.
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    /// The trace id in hex (the access log's `trace_id`).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex(&self.trace_id, &mut out);
        out
    }

    /// Sets `traceparent` (and the client's `tracestate`, or none) on a request for the next
    /// hop.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
        match &self.state {
            Some(s) => {
                headers.insert(TRACESTATE, s.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// Whether the sampled flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The trace id (hex) of a request's valid `traceparent`, if it has one: for the logs of the
/// doors whose peer owns the trace.
pub fn trace_id_of(headers: &HeaderMap) -> Option<[u8; 32]> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let (first, second) = (values.next()?, values.next());
    if second.is_some() {
        return None;
    }
    let (trace_id, _, _) = parse(first.as_bytes())?;
    let mut out = [0u8; 32];
    hex(&trace_id, &mut out);
    Some(out)
}

/// Parses a `traceparent`: (trace id, parent id, flags).
fn parse(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 {
        return None;
    }
    let version = unhex::<1>(&v[0..2])?[0];
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let parent_id = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

/// The client's `tracestate` (several fields joined with `,`), with no empty list member, at
/// most [`MAX_MEMBERS`] members within [`MAX_TRACESTATE`]; `None` when nothing is left or
/// when a member is not one (see below).
///
/// Why: a state over the bound was dropped whole, and an empty one passed on. The
/// specification cuts it instead: members over [`LONG_MEMBER`] characters first, then members
/// from the end, until it fits; and a vendor should not send an empty one.
/// Regression: tests::tracestate_is_cut_as_the_specification_says
///
/// Why the members are read: a list of 40 members, a member `not valid`, or one key twice
/// (two fields `a=1` and `a=2`) went upstream as sent. The specification allows 32 members,
/// each `key=value` by its grammar, each key once: a list that breaks it is dropped, and one
/// longer than 32 members is cut from the end.
/// Regression: tests::tracestate_members_are_read_as_the_specification_says
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let first = values.next()?;
    let second = values.next();
    let mut members: Vec<&[u8]> = std::iter::once(first)
        .chain(second)
        .chain(values)
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(crate::server::hop_by_hop::trim_ows)
        .filter(|m| !m.is_empty())
        .collect();
    if !members.iter().all(|m| member_key(m).is_some()) {
        return None;
    }
    // Cut first: the repeated-key check compares pairs, at most 32 × 32 of them whatever the
    // client sent (thousands of one-letter members fit in a header).
    members.truncate(MAX_MEMBERS);
    for (i, m) in members.iter().enumerate() {
        let key = member_key(m);
        if members[..i].iter().any(|o| member_key(o) == key) {
            return None;
        }
    }
    // The usual case: one field, as sent.
    if second.is_none()
        && first.len() <= MAX_TRACESTATE
        && members.len() == first.as_bytes().split(|&b| b == b',').count()
    {
        return Some(first.clone());
    }
    let len = |ms: &[&[u8]]| {
        ms.iter()
            .map(|m| m.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
    };
    if len(&members) > MAX_TRACESTATE {
        members.retain(|m| m.len() <= LONG_MEMBER);
    }
    while len(&members) > MAX_TRACESTATE {
        members.pop();
    }
    if members.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&members.join(&b","[..]))
        .ok()
        .filter(|v| v.to_str().is_ok())
}

/// Most list members a `tracestate` may hold.
const MAX_MEMBERS: usize = 32;

/// A list member's key, when the member is `key=value` as the specification writes them: a
/// key of lowercase letters, digits and `_-*/` (starting with a letter; a multi-tenant
/// `tenant@system`, the tenant may start with a digit), a value of 1 to 256 printable
/// characters other than `,` and `=`, not ending in a space.
fn member_key(m: &[u8]) -> Option<&[u8]> {
    let eq = m.iter().position(|&b| b == b'=')?;
    let (key, value) = (&m[..eq], &m[eq + 1..]);
    let key_char = |b: &u8| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/');
    let key_ok = match key.iter().position(|&b| b == b'@') {
        None => {
            key.len() <= 256
                && key.first().is_some_and(u8::is_ascii_lowercase)
                && key.iter().all(key_char)
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.iter().all(key_char)
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && system.iter().all(key_char)
        }
    };
    let value_ok = (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ');
    (key_ok && value_ok).then_some(key)
}

/// Lowercase hex only (the specification refuses uppercase).
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = random_u64().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

fn random_u64() -> u64 {
    crate::server::request_id::random_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(tp: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in tp {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_keeps_its_trace_and_gets_a_new_span() {
        let mut h = headers(&[VALID]);
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let (cx, got) = TraceContext::from_headers(&h, false);
        assert_eq!(got, Received::Valid);
        let tp = cx.traceparent();
        let tp = tp.to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"));
        assert_ne!(&tp[36..52], "00f067aa0ba902b7");
        assert_eq!(cx.parent_id, Some(*b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7"));
        assert_eq!(cx.state.as_ref().unwrap(), "congo=t61rcWkgMzE");
        assert_eq!(
            std::str::from_utf8(&cx.trace_id_hex()).unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn malformed_traceparents_start_a_new_trace() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "",
        ] {
            let mut h = headers(&[bad]);
            h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
            let (cx, got) = TraceContext::from_headers(&h, false);
            assert_eq!(got, Received::Malformed, "{bad}");
            assert!(cx.parent_id.is_none() && cx.state.is_none(), "{bad}");
            assert_ne!(&cx.trace_id_hex()[..], b"4bf92f3577b34da6a3ce929d0e0e4736");
        }
        // Two of them: which is meant cannot be told.
        let (_, got) = TraceContext::from_headers(&headers(&[VALID, VALID]), false);
        assert_eq!(got, Received::Malformed);
        // A later version may carry more fields after a dash.
        let (_, got) = TraceContext::from_headers(
            &headers(&["01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"]),
            false,
        );
        assert_eq!(got, Received::Valid);
    }

    #[test]
    fn a_new_trace_is_well_formed_and_round_trips() {
        let (cx, got) = TraceContext::from_headers(&HeaderMap::new(), true);
        assert_eq!(got, Received::Absent);
        assert!(cx.is_sampled());
        let tp = cx.traceparent();
        assert_eq!(tp.len(), 55);
        let (again, got) = TraceContext::from_headers(&headers(&[tp.to_str().unwrap()]), false);
        assert_eq!(got, Received::Valid);
        assert_eq!(again.trace_id, cx.trace_id);
        assert_eq!(again.parent_id, Some(cx.span_id));
    }

    /// The `tracestate` passed on for a valid `traceparent` and these `tracestate` fields.
    fn state(fields: &[&str]) -> Option<String> {
        let mut h = headers(&[VALID]);
        for f in fields {
            h.append(TRACESTATE, HeaderValue::from_str(f).unwrap());
        }
        TraceContext::from_headers(&h, false)
            .0
            .state
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn tracestate_is_cut_as_the_specification_says() {
        // Fields join; optional whitespace and empty members go.
        assert_eq!(state(&["a=1", "b=2"]).unwrap(), "a=1,b=2");
        assert_eq!(state(&["a=1 ,, b=2"]).unwrap(), "a=1,b=2");
        assert_eq!(state(&["congo=t61rcWkgMzE"]).unwrap(), "congo=t61rcWkgMzE");
        // Nothing in it: not passed on.
        assert_eq!(state(&[""]), None);
        assert_eq!(state(&[" , "]), None);
        // Over 512: members over 128 characters go first, then members from the end.
        let long = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (0..30)
            .map(|i| format!("k{i:02}={}", "v".repeat(14)))
            .collect();
        let mut fields = vec![long.as_str()];
        fields.extend(small.iter().map(String::as_str));
        let cut = state(&fields).unwrap();
        assert!(!cut.contains("big="), "{cut}");
        assert!(cut.len() <= 512, "{}", cut.len());
        assert!(cut.starts_with("k00=vvvvvvvvvvvvvv,k01="), "{cut}");
        // 30 members of 18 characters: 569 with the commas; 27 fit (27 * 19 - 1 = 512).
        assert_eq!(cut.split(',').count(), 27);
        // At most 32 members: the rest, from the end, go.
        let many: Vec<String> = (0..60).map(|i| format!("k{i:02}=v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cut = state(&many).unwrap();
        assert_eq!(cut.split(',').count(), 32);
        assert!(cut.ends_with("k31=v"), "{cut}");
    }

    #[test]
    fn tracestate_members_are_read_as_the_specification_says() {
        for ok in [
            "rojo=00f067aa0ba902b7",
            "congo=t61rcWkgMzE,rojo=x",
            "fw529a3039@dt=abc",
            "a-b_c*d/e=1 2",
        ] {
            assert_eq!(state(&[ok]).as_deref(), Some(ok), "{ok}");
        }
        for bad in [
            "not valid member",
            "Upper=1",
            "1abc=1",
            "a=",
            "=b",
            "a=b=c",
            "a@Sys=1",
            "a=1,a=2",
        ] {
            assert_eq!(state(&[bad]), None, "{bad}");
        }
        assert_eq!(state(&["a=1", "a=2"]), None, "one key in two fields");
    }

    #[test]
    fn unknown_flags_are_zeroed() {
        let h = headers(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff"]);
        let (cx, got) = TraceContext::from_headers(&h, false);
        assert_eq!(got, Received::Valid);
        assert!(cx.is_sampled());
        assert!(cx.traceparent().to_str().unwrap().ends_with("-01"));
        let h = headers(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe"]);
        assert!(
            TraceContext::from_headers(&h, false)
                .0
                .traceparent()
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }
}
