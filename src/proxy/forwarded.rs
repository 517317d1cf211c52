//! `X-Forwarded-*`, `Forwarded` and `x-real-ip` towards the upstream.
//!
//! Invariant: from a peer that is not a trusted proxy, every such header the client sent is
//! replaced, so a client can never choose the address or scheme an upstream believes. From a
//! trusted proxy the `X-Forwarded-For` chain is extended, `Forwarded` is written anew from
//! what the gateway resolved, and the host is always the one the rules matched.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::request::RequestFacts;
use crate::request::facts::{Scheme, push_ip};

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Where an allowed request came from, for the headers the gateway writes.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The peer's address as header text (see [`super::service::Conn::peer_text`]).
    pub peer_text: HeaderValue,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The client address (see [`RequestFacts`]).
    pub client_ip: IpAddr,
    /// How the client reached the gateway.
    pub scheme: Scheme,
    /// The authority that was decided on.
    pub authority: HeaderValue,
}

impl Origin {
    /// Where a request came from; the authority is the one that was decided on (lowercase
    /// host, port): usually the client's `Host` exactly, shared without a copy, rebuilt only
    /// when normalisation changed it.
    pub fn of(
        facts: &RequestFacts<'_>,
        parts: &http::request::Parts,
        peer_text: &HeaderValue,
    ) -> Self {
        let authority = match parts.headers.get(header::HOST) {
            Some(h)
                if parts.uri.authority().is_none()
                    && !h.as_bytes().iter().any(u8::is_ascii_uppercase)
                    && !h.as_bytes().ends_with(b".")
                    && !h.as_bytes().windows(2).any(|w| w == b".:") =>
            {
                h.clone()
            }
            _ => HeaderValue::from_maybe_shared(bytes::Bytes::from(facts.authority()))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        };
        Self {
            peer: facts.conn.peer.ip(),
            peer_text: peer_text.clone(),
            peer_trusted: facts.peer_trusted,
            client_ip: facts.client_ip,
            scheme: facts.scheme,
            authority,
        }
    }
}

/// Rewrites the forwarding headers for a request from `origin`. Other spellings, overrides and
/// untrusted claims are already gone ([`crate::authz::spoofable::Spoofable::strip`]).
pub fn apply(headers: &mut HeaderMap, origin: &Origin) {
    let proto = match origin.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let host = &origin.authority;
    let host_text = host.to_str().unwrap_or("");
    let peer_text = origin.peer_text.to_str().unwrap_or("");
    if origin.peer_trusted {
        append_list(headers, XFF, peer_text);
        if !headers.contains_key(&XFP) {
            headers.insert(XFP, HeaderValue::from_static(proto));
        }
        // Why: the rules matched the request's own host; a trusted proxy that passes its
        // client's `X-Forwarded-Host: admin.example` (or `Forwarded: host=`) on had the
        // upstream's framework (Django's USE_X_FORWARDED_HOST, Express's trust proxy,
        // Spring's ForwardedHeaderFilter) act on a host no rule decided. The host is the
        // decided one, as the decision doors already say. Regression:
        // tests::trusted_peer_hosts_are_the_decided_one
        headers.insert(XFH, host.clone());
        // Why: the gateway finds the client in `X-Forwarded-For` and never reads `Forwarded`,
        // yet it extended the chain a trusted proxy passed on, which that proxy (nginx, a
        // cloud load balancer) never checked: `Forwarded: for=203.0.113.9;proto=https` from
        // the client told an RFC 7239 upstream another client and scheme than the gateway
        // resolved (and `host=` another host than the rules matched). It is written anew:
        // the client the gateway resolved, then the peer.
        // Regression: tests::trusted_peer_forwarded_is_what_the_gateway_resolved
        let element = forwarded_element(origin.peer, peer_text, proto, host_text);
        let value = if origin.client_ip == origin.peer {
            element
        } else {
            let mut s = String::with_capacity(element.len() + 48);
            s.push_str("for=");
            if origin.client_ip.is_ipv4() {
                push_ip(&mut s, origin.client_ip);
            } else {
                s.push_str("\"[");
                push_ip(&mut s, origin.client_ip);
                s.push_str("]\"");
            }
            // The scheme the trusted proxy says its client used, as `X-Forwarded-Proto`
            // (kept) says it: an upstream reading `Forwarded` first (Spring) must not see
            // another.
            if let Some(p) = headers
                .get(&XFP)
                .map(HeaderValue::as_bytes)
                .and_then(|p| match p {
                    b"http" => Some("http"),
                    b"https" => Some("https"),
                    _ => None,
                })
            {
                s.push_str(";proto=");
                s.push_str(p);
            }
            s.push_str(", ");
            s.push_str(&element);
            s
        };
        set_owned(headers, FORWARDED, value);
    } else {
        headers.insert(XFP, HeaderValue::from_static(proto));
        headers.insert(XFH, host.clone());
        let element = forwarded_element(origin.peer, peer_text, proto, host_text);
        set_owned(headers, FORWARDED, element);
        headers.insert(XFF, origin.peer_text.clone());
    }
    // From an untrusted peer the client is the peer: one value serves both headers.
    let real_ip = if origin.client_ip == origin.peer {
        origin.peer_text.clone()
    } else {
        let mut s = String::with_capacity(40);
        push_ip(&mut s, origin.client_ip);
        // An address's text is always a valid header value.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    };
    headers.insert(X_REAL_IP, real_ip);
}

/// Sets a header from an owned string without copying it again.
fn set_owned(headers: &mut HeaderMap, name: HeaderName, value: String) {
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// `for=…;proto=…;host="…"` (RFC 7239), IPv6 addresses quoted and bracketed; `peer_text` is
/// the peer's address as text.
fn forwarded_element(peer: IpAddr, peer_text: &str, proto: &str, host: &str) -> String {
    let mut s = String::with_capacity(32 + peer_text.len() + host.len());
    if peer.is_ipv4() {
        s.push_str("for=");
        s.push_str(peer_text);
    } else {
        s.push_str("for=\"[");
        s.push_str(peer_text);
        s.push_str("]\"");
    }
    s.push_str(";proto=");
    s.push_str(proto);
    if host
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        s.push_str(";host=\"");
        s.push_str(host);
        s.push('"');
    }
    s
}

/// Joins every existing value of `name` and `item` into one comma-separated value, each as
/// its bytes.
///
/// Why bytes: a line that is not visible ASCII (one `\xff`) was dropped whole, and with it
/// the client address the trusted proxy had appended to the client's own line: the upstream
/// saw the proxy as the client. Regression: tests::unreadable_lines_are_kept
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(&name) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if !joined.is_empty() {
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(item.as_bytes());
    // Header value bytes joined by `, ` are header value bytes.
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_lines_are_kept() {
        let mut h = HeaderMap::new();
        h.append(XFF, HeaderValue::from_bytes(b"\xff, 203.0.113.5").unwrap());
        h.append(XFF, HeaderValue::from_static("198.51.100.1"));
        append_list(&mut h, XFF, "127.0.0.3");
        assert_eq!(
            h[&XFF].as_bytes(),
            b"\xff, 203.0.113.5, 198.51.100.1, 127.0.0.3"
        );
    }

    fn origin(peer: IpAddr, peer_trusted: bool, client_ip: IpAddr, host: &'static str) -> Origin {
        Origin {
            peer,
            peer_text: HeaderValue::from_str(&peer.to_string()).unwrap(),
            peer_trusted,
            client_ip,
            scheme: Scheme::Http,
            authority: HeaderValue::from_static(host),
        }
    }

    #[test]
    fn untrusted_peer_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "6.6.6.6".parse().unwrap());
        h.insert(XFP, "https".parse().unwrap());
        h.insert(XFH, "evil".parse().unwrap());
        h.insert(FORWARDED, "for=6.6.6.6".parse().unwrap());
        h.insert(X_REAL_IP, "6.6.6.6".parse().unwrap());
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        apply(&mut h, &origin(peer, false, peer, "app.example"));
        assert_eq!(h[&XFF], "192.0.2.1");
        assert_eq!(h[&XFP], "http");
        assert_eq!(h[&XFH], "app.example");
        assert_eq!(
            h[&FORWARDED],
            "for=192.0.2.1;proto=http;host=\"app.example\""
        );
        assert_eq!(h[&X_REAL_IP], "192.0.2.1");
    }

    #[test]
    fn trusted_peer_forwarded_is_what_the_gateway_resolved() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "1.1.1.1".parse().unwrap();
        // The client's scheme is X-Forwarded-Proto's, as sent upstream (the peer's scheme
        // when the proxy sent none).
        let resolved = "for=1.1.1.1;proto=http, for=10.0.0.1;proto=http;host=\"app\"";
        for sent in [
            // A client's own element (another address, scheme, host), passed on by the proxy.
            "for=203.0.113.9;proto=https",
            "for=1.1.1.1;host=admin.example;proto=https, for=2.2.2.2",
            "for=\"[::1]\";HOST=\"a;b,c\", for=3.3.3.3",
            "for=1.1.1.1;xhost=admin.example",
            "by=\"a,host=evil\"",
            "for=1.1.1.1;host=\"admin",
        ] {
            let mut h = HeaderMap::new();
            h.insert(XFH, "admin.example".parse().unwrap());
            h.insert(FORWARDED, sent.parse().unwrap());
            apply(&mut h, &origin(peer, true, client, "app"));
            assert_eq!(h[&XFH], "app", "{sent}");
            assert_eq!(h[&FORWARDED], resolved, "{sent}");
        }
        // None sent: the same.
        let mut h = HeaderMap::new();
        apply(&mut h, &origin(peer, true, client, "app"));
        assert_eq!(h[&FORWARDED], resolved);
        // The client's scheme, as the trusted proxy's X-Forwarded-Proto says it.
        let mut h = HeaderMap::new();
        h.insert(XFP, "https".parse().unwrap());
        apply(&mut h, &origin(peer, true, client, "app"));
        assert_eq!(
            h[&FORWARDED],
            "for=1.1.1.1;proto=https, for=10.0.0.1;proto=http;host=\"app\""
        );
        assert_eq!(h[&XFP], "https");
        // The client is the peer (no X-Forwarded-For): one element; IPv6 quoted.
        apply(&mut h, &origin(peer, true, peer, "app"));
        assert_eq!(h[&FORWARDED], "for=10.0.0.1;proto=http;host=\"app\"");
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        apply(&mut h, &origin(peer, true, v6, "app"));
        assert_eq!(
            h[&FORWARDED],
            "for=\"[2001:db8::7]\";proto=https, for=10.0.0.1;proto=http;host=\"app\""
        );
    }

    #[test]
    fn trusted_peer_chain_is_extended() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "1.1.1.1".parse().unwrap());
        h.insert(XFP, "https".parse().unwrap());
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "1.1.1.1".parse().unwrap();
        apply(&mut h, &origin(peer, true, client, "app"));
        assert_eq!(h[&XFF], "1.1.1.1, 10.0.0.1");
        assert_eq!(h[&XFP], "https");
        assert_eq!(h[&X_REAL_IP], "1.1.1.1");
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            forwarded_element(v6, "::1", "https", "h"),
            "for=\"[::1]\";proto=https;host=\"h\""
        );
    }
}
