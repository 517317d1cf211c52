//! Request ids: a client's well-formed id is propagated, anything else is replaced by a fresh
//! one, so logs, upstreams and the client all see the same id.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The request's id, taken from `name` when well-formed (1–128 of `[A-Za-z0-9._:-]`, at
/// least one a letter or digit) or generated.
pub fn take_or_generate(headers: &HeaderMap, name: &HeaderName) -> HeaderValue {
    match headers.get(name) {
        Some(v) if well_formed(v.as_bytes()) => v.clone(),
        _ => generate(),
    }
}

/// The id a peer gave in another form than a header (the Envoy Check's
/// `attributes.request.http.id`), when well-formed, as [`take_or_generate`] takes one; else a
/// fresh one.
pub fn take_or_generate_text(id: Option<&str>) -> HeaderValue {
    id.filter(|id| well_formed(id.as_bytes()))
        .and_then(|id| HeaderValue::from_str(id).ok())
        .unwrap_or_else(generate)
}

/// 1–128 of `[A-Za-z0-9._:-]`, at least one a letter or digit: safe in a log line and a
/// header, and short.
///
/// Why the letter or digit: the access log writes `-` for a field it does not have, so a
/// client's id `-` read as a request without one, and `.`, `_` or `:` alone name nothing to
/// correlate. Regression: tests::propagates_well_formed_ids_only
pub fn well_formed(b: &[u8]) -> bool {
    b.len() <= 128
        && b.iter().any(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
    /// The id of the request whose handling is unwinding on this thread ([`panicked`]).
    static PANICKED: std::cell::RefCell<Option<HeaderValue>> = const { std::cell::RefCell::new(None) };
}

/// Leaves `id` for the answer to the panic unwinding this thread ([`take_panicked`]): that
/// answer names the id the request's access-log line names.
pub fn panicked(id: &HeaderValue) {
    // A panic while the cell is borrowed cannot happen (it is only ever swapped); `try_` so
    // that unwinding never panics again.
    let _ = PANICKED.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            *p = Some(id.clone());
        }
    });
}

/// The id [`panicked`] left on this thread, or a fresh one.
pub fn take_panicked() -> HeaderValue {
    PANICKED
        .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.take()))
        .ok()
        .flatten()
        .unwrap_or_else(generate)
}

/// 32 hex digits from a per-thread generator: unique enough for correlation, no syscall and no
/// shared counter per request. Not a secret.
pub fn generate() -> HeaderValue {
    let (a, b) = STATE.with(|s| {
        let a = next(s);
        (a, next(s))
    });
    let mut buf = [0u8; 32];
    hex(a, &mut buf[..16]);
    hex(b, &mut buf[16..]);
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// 64 bits from the same per-thread generator (trace and span ids). Not a secret.
pub fn random_u64() -> u64 {
    STATE.with(next)
}

fn next(s: &Cell<u64>) -> u64 {
    // splitmix64
    let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    s.set(x);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t;
    }
    u64::from_le_bytes(b)
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagates_well_formed_ids_only() {
        let name = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        h.insert(&name, "abc-123".parse().unwrap());
        assert_eq!(take_or_generate(&h, &name), "abc-123");
        h.insert(&name, "bad id with spaces".parse().unwrap());
        let g = take_or_generate(&h, &name);
        assert_eq!(g.len(), 32);
        h.insert(&name, "x".repeat(129).parse().unwrap());
        assert_eq!(take_or_generate(&h, &name).len(), 32);
        for no_name in ["-", "--", ".", "_:.-", ""] {
            h.insert(&name, no_name.parse().unwrap());
            let g = take_or_generate(&h, &name);
            assert_eq!(g.len(), 32, "{no_name:?} kept");
            assert!(g.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(take_or_generate_text(Some(no_name)).len(), 32);
        }
        for kept in ["a", "-1-", "trace:7.b_c"] {
            h.insert(&name, kept.parse().unwrap());
            assert_eq!(take_or_generate(&h, &name), kept);
            assert_eq!(take_or_generate_text(Some(kept)), kept);
        }
        assert_ne!(generate(), generate());
    }
}
