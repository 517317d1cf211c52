//! Hop-by-hop headers (RFC 9110 §7.6.1) are meaningful for one connection only and are never
//! forwarded, in either direction. That includes every header a peer names in `Connection`, so
//! a client cannot smuggle a header past the gateway by declaring it hop-by-hop, nor make the
//! gateway forward one.

use http::{HeaderMap, HeaderName, header};

/// Always hop-by-hop, whether named in `Connection` or not.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the headers named in `Connection`, then the fixed hop-by-hop set.
pub fn strip(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // `keep-alive`, `close` and the fixed set are removed below anyway: the common
        // `Connection: keep-alive` costs no allocation.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            // Why: the forwarding chain is the gateway's to rewrite; a peer naming it in
            // `Connection` must not make the gateway lose the real client address.
            .filter(|n| !HOP_BY_HOP.contains(n) && n != "x-forwarded-for" && n != "forwarded")
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("http2-settings");
}

/// Whether the client asks to switch to cleartext HTTP/2 (`Upgrade: h2c`), a known way to
/// tunnel past a proxy's per-request checks. Refused with 400.
pub fn is_h2c_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key("http2-settings")
        || headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("h2c"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            "keep-alive, X-Secret , close".parse().unwrap(),
        );
        h.append("connection", "x-other, X-Forwarded-For".parse().unwrap());
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-secret", "1".parse().unwrap());
        h.append("x-other", "1".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("te", "trailers".parse().unwrap());
        h.append("upgrade", "websocket".parse().unwrap());
        h.append("proxy-authorization", "Basic x".parse().unwrap());
        h.append("x-kept", "1".parse().unwrap());
        strip(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "x-forwarded-for"]);
    }

    #[test]
    fn h2c_upgrade_detected() {
        let mut h = HeaderMap::new();
        h.append("upgrade", "websocket, H2C".parse().unwrap());
        assert!(is_h2c_upgrade(&h));
        let mut h = HeaderMap::new();
        h.append(
            "http2-settings",
            "AAMAAABkAARAAAAAAAIAAAAA".parse().unwrap(),
        );
        assert!(is_h2c_upgrade(&h));
        let mut h = HeaderMap::new();
        h.append("upgrade", "websocket".parse().unwrap());
        assert!(!is_h2c_upgrade(&h));
    }
}
