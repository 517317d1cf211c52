//! `X-Forwarded-*`, `Forwarded` and `x-real-ip` towards the upstream.
//!
//! Invariant: from a peer that is not a trusted proxy, every such header the client sent is
//! replaced, so a client can never choose the address or scheme an upstream believes. From a
//! trusted proxy the chain is extended.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::request::facts::Scheme;

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that make some upstreams serve another path or method than the one decided on
/// (IIS URL Rewrite, Symfony/Laminas, method-override middleware). Never forwarded, from
/// anyone: the decision was made on the request line.
const OVERRIDES: [HeaderName; 6] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-prefix"),
];

/// Client-address and scheme claims some frameworks believe; only a trusted proxy may send them.
const CLAIMS: [HeaderName; 7] = [
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
];

/// Rewrites the forwarding headers. `host` is the authority the client addressed.
pub fn apply(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    client_ip: IpAddr,
    scheme: Scheme,
    host: &HeaderValue,
) {
    let proto = match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    for name in &OVERRIDES {
        headers.remove(name);
    }
    if !peer_trusted {
        for name in &CLAIMS {
            headers.remove(name);
        }
    }
    let host_text = host.to_str().unwrap_or("");
    let peer_value = ip_value(peer);
    if peer_trusted {
        append_list(headers, XFF, peer_value.to_str().unwrap_or(""));
        if !headers.contains_key(&XFP) {
            headers.insert(XFP, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(&XFH) {
            headers.insert(XFH, host.clone());
        }
        let element = forwarded_element(peer, proto, host_text);
        append_list(headers, FORWARDED, &element);
    } else {
        headers.insert(XFP, HeaderValue::from_static(proto));
        headers.insert(XFH, host.clone());
        let element = forwarded_element(peer, proto, host_text);
        set_owned(headers, FORWARDED, element);
    }
    // From an untrusted peer the client is the peer: one value serves both headers.
    let real_ip = if client_ip == peer {
        peer_value.clone()
    } else {
        ip_value(client_ip)
    };
    if !peer_trusted {
        headers.insert(XFF, peer_value);
    }
    headers.insert(X_REAL_IP, real_ip);
}

/// An address as a header value, built in one allocation.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut s = String::with_capacity(40);
    let _ = write!(s, "{ip}");
    // An address's text is always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
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

/// `for=…;proto=…;host="…"` (RFC 7239), IPv6 addresses quoted and bracketed.
fn forwarded_element(peer: IpAddr, proto: &str, host: &str) -> String {
    let mut s = String::with_capacity(64);
    match peer {
        IpAddr::V4(v4) => {
            let _ = write!(s, "for={v4}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(s, "for=\"[{v6}]\"");
        }
    }
    let _ = write!(s, ";proto={proto}");
    if host
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        let _ = write!(s, ";host=\"{host}\"");
    }
    s
}

/// Joins every existing value of `name` and `item` into one comma-separated value.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut joined = String::new();
    for v in headers.get_all(&name) {
        if let Ok(s) = v.to_str() {
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(s);
        }
    }
    if !joined.is_empty() {
        joined.push_str(", ");
    }
    joined.push_str(item);
    set_owned(headers, name, joined);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_peer_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "6.6.6.6".parse().unwrap());
        h.insert(XFP, "https".parse().unwrap());
        h.insert(XFH, "evil".parse().unwrap());
        h.insert(FORWARDED, "for=6.6.6.6".parse().unwrap());
        h.insert(X_REAL_IP, "6.6.6.6".parse().unwrap());
        h.insert("x-original-url", "/admin".parse().unwrap());
        h.insert("x-http-method-override", "DELETE".parse().unwrap());
        h.insert("true-client-ip", "6.6.6.6".parse().unwrap());
        h.insert("x-forwarded-ssl", "on".parse().unwrap());
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        apply(
            &mut h,
            peer,
            false,
            peer,
            Scheme::Http,
            &HeaderValue::from_static("app.example"),
        );
        assert_eq!(h[&XFF], "192.0.2.1");
        assert_eq!(h[&XFP], "http");
        assert_eq!(h[&XFH], "app.example");
        assert_eq!(
            h[&FORWARDED],
            "for=192.0.2.1;proto=http;host=\"app.example\""
        );
        assert_eq!(h[&X_REAL_IP], "192.0.2.1");
        for gone in [
            "x-original-url",
            "x-http-method-override",
            "true-client-ip",
            "x-forwarded-ssl",
        ] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }
    }

    #[test]
    fn trusted_peer_chain_is_extended() {
        let mut h = HeaderMap::new();
        h.insert(XFF, "1.1.1.1".parse().unwrap());
        h.insert(XFP, "https".parse().unwrap());
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "1.1.1.1".parse().unwrap();
        apply(
            &mut h,
            peer,
            true,
            client,
            Scheme::Http,
            &HeaderValue::from_static("app"),
        );
        assert_eq!(h[&XFF], "1.1.1.1, 10.0.0.1");
        assert_eq!(h[&XFP], "https");
        assert_eq!(h[&X_REAL_IP], "1.1.1.1");
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            forwarded_element(v6, "https", "h"),
            "for=\"[::1]\";proto=https;host=\"h\""
        );
    }
}
