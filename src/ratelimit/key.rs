//! What a limit counts separately, and the key a request is counted under.
//!
//! The key is what is counted (a principal, an address, a header…) fed into a hasher, tagged
//! by its kind so that a principal named like an address never shares its budget. The local
//! store hashes with a per-process random seed; Redis keys are a SHA-256 of the same input, so
//! every gateway of a fleet names a client's budget alike and nobody can aim a collision.

use std::fmt::Write as _;
use std::hash::Hasher;
use std::net::IpAddr;

use http::HeaderName;

use crate::authn::principal::{Principal, lookup};
use crate::request::RequestFacts;

/// What a limit counts separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountBy {
    /// The principal (anonymous requests by address).
    Principal,
    /// The API key's id (other requests by principal).
    ApiKey,
    /// The client address (IPv6 by /64).
    ClientIp,
    /// One budget for the rule.
    Route,
    /// A header set by a trusted proxy.
    Header(HeaderName),
    /// A claim.
    Claim(Box<[Box<str>]>),
}

// === impl CountBy ===

impl CountBy {
    /// Parses `key:`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "principal" => Ok(Self::Principal),
            "api_key" => Ok(Self::ApiKey),
            "client_ip" => Ok(Self::ClientIp),
            "route" => Ok(Self::Route),
            _ => {
                if let Some(name) = s.strip_prefix("header:") {
                    let name = name.trim();
                    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map(Self::Header)
                        .map_err(|_| format!("`{name}` is not a header name"))
                } else if let Some(path) = s.strip_prefix("claim:") {
                    claim_path(path)
                        .map(Self::Claim)
                        .ok_or_else(|| format!("`{s}`: a claim path is dot-separated names"))
                } else {
                    Err(format!(
                        "`{s}`: one of principal, api_key, client_ip, route, header:NAME, claim:PATH"
                    ))
                }
            }
        }
    }

    /// Feeds the request's key into `h`, as [`KeyBytes`] writes it.
    pub fn write<H: Hasher>(
        &self,
        h: &mut H,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        rule: &str,
    ) {
        let mut k = KeyBytes(h);
        match (self, principal) {
            (Self::ClientIp, _) => k.ip(facts.client_ip),
            (Self::Route, _) => {
                k.tag(1);
                k.text(rule);
            }
            (Self::ApiKey, Some(p)) if p.api_key_id.is_some() => {
                k.tag(2);
                k.text(&p.authenticator);
                k.maybe_text(p.api_key_id.as_deref());
            }
            // Why: an id is unique only within its authenticator, issuer and kind. One
            // `jwt` authenticator may trust several issuers, and a machine's `client_id` may
            // spell a user's `sub`: a partner issuer's `alice` spent the main issuer's
            // alice's budget. Regression: tests::principal_keys_tell_issuers_and_kinds_apart
            (Self::Principal | Self::ApiKey, Some(p)) => {
                k.tag(3);
                k.text(&p.authenticator);
                k.maybe_text(p.issuer.as_deref());
                k.tag(u8::from(matches!(
                    p.kind,
                    crate::authn::PrincipalKind::Machine
                )));
                k.text(&p.id);
            }
            // A header is believed only from a trusted proxy: a client choosing a new value
            // per request would get a new budget each time. Why the last value: a proxy that
            // appends its own (as to `X-Forwarded-For`) leaves the client's copy first, which
            // then chose the budget. Regression: tests (it)
            // ratelimit::header_key_counts_the_trusted_proxys_value
            // Why an empty value is no value: counted as one, every request carrying the header
            // empty shared one budget, where an absent one is counted by its address.
            // Regression: tests::an_empty_header_value_counts_as_absent
            (Self::Header(name), _) => match facts
                .headers
                .get_all(name)
                .iter()
                .next_back()
                .filter(|v| facts.peer_trusted && !v.as_bytes().trim_ascii().is_empty())
            {
                Some(v) => {
                    k.tag(4);
                    k.bytes(v.as_bytes());
                }
                None => k.ip(facts.client_ip),
            },
            (Self::Claim(path), Some(p)) => match lookup(&p.claims, path) {
                Some(serde_json::Value::String(s)) => {
                    k.tag(5);
                    k.text(s);
                }
                // Another JSON value: its text, written straight into the hash (no allocation
                // per request), under its own tag so that `42` and `"42"` are two budgets.
                Some(v) => {
                    k.tag(6);
                    let _ = write!(k, "{v}");
                }
                None => k.ip(facts.client_ip),
            },
            (Self::Principal | Self::ApiKey | Self::Claim(_), None) => k.ip(facts.client_ip),
        }
    }
}

/// A dotted claim path, or `None` when a segment is empty.
pub fn claim_path(path: &str) -> Option<Box<[Box<str>]>> {
    let path: Box<[Box<str>]> = path.trim().split('.').map(Into::into).collect();
    (!path.iter().any(|p| p.is_empty())).then_some(path)
}

/// An address as a key (IPv6 by its /64), as [`CountBy::write`] writes it.
#[cfg(test)]
pub fn write_ip<H: Hasher>(h: &mut H, ip: IpAddr) {
    KeyBytes(h).ip(ip);
}

/// A key's parts written into a hasher byte by byte, as spelled out here.
///
/// Why not `std::hash::Hash`: the Redis keys of every gateway of a fleet must agree, and the
/// bytes `Hash` feeds (length prefixes, enum discriminants, native-endian integers) are not
/// promised across Rust releases or platforms: a fleet mid-upgrade, or of two architectures,
/// would have split every budget in two. These are the bytes a 64-bit little-endian build fed
/// through `Hash` before, so the keys did not change. Regression: tests::redis_keys_are_pinned
struct KeyBytes<'h, H>(&'h mut H);

impl<H: Hasher> KeyBytes<'_, H> {
    /// One byte: a kind's tag, or a flag.
    fn tag(&mut self, tag: u8) {
        self.0.write(&[tag]);
    }

    /// Text: its bytes, then `0xff` (which no UTF-8 text holds).
    fn text(&mut self, s: &str) {
        self.0.write(s.as_bytes());
        self.0.write(&[0xff]);
    }

    /// Bytes: their length (8 bytes, little-endian), then them.
    fn bytes(&mut self, b: &[u8]) {
        self.0
            .write(&u64::try_from(b.len()).unwrap_or(u64::MAX).to_le_bytes());
        self.0.write(b);
    }

    /// Text that may be absent: 0 or 1 (8 bytes, little-endian), then the text if any.
    fn maybe_text(&mut self, s: Option<&str>) {
        self.0.write(&u64::from(s.is_some()).to_le_bytes());
        if let Some(s) = s {
            self.text(s);
        }
    }

    /// An address: IPv6 by its /64.
    fn ip(&mut self, ip: IpAddr) {
        self.tag(0);
        match ip {
            IpAddr::V4(v4) => self.0.write(&v4.octets()),
            // One site (a /64) holds more addresses than anyone could track: counting each
            // would hand a single client endless budgets and unbounded state.
            IpAddr::V6(v6) => self.0.write(&(u128::from(v6) >> 64).to_le_bytes()),
        }
    }
}

/// Formatted text, written straight into the hash (no terminator: the tag before it says
/// what it is, and it ends the key).
impl<H: Hasher> std::fmt::Write for KeyBytes<'_, H> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// A SHA-256 fed through [`Hasher`], for keys every gateway must spell alike.
pub struct Sha256(aws_lc_rs::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl Sha256 {
    /// The first 16 bytes of the digest in hex, appended to `out`.
    pub fn finish_hex(self, out: &mut String) {
        let d = self.0.finish();
        for b in d.as_ref().iter().take(16) {
            let _ = write!(out, "{b:02x}");
        }
    }
}

impl Hasher for Sha256 {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Never used: `finish_hex` reads the digest.
        0
    }
}
