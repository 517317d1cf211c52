//! Hop-by-hop headers (RFC 9110 §7.6.1) are meaningful for one connection only and are never
//! forwarded, in either direction. That includes every header a peer names in `Connection`, so
//! a client cannot smuggle a header past the gateway by declaring it hop-by-hop, nor make the
//! gateway forward one.

use http::{HeaderMap, HeaderName, header};

/// Asks for cleartext HTTP/2 (RFC 7540 §3.2); meaningless past the gateway.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Always hop-by-hop, whether named in `Connection` or not (a `match` on the text compiles
/// to a length switch and one compare).
pub fn is_fixed(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            // An upstream's challenge is for the gateway, the next client on the response
            // chain (RFC 2616 §13.5.1 listed it so). Regression: tests (it)
            // upstreams::upstream_proxy_authenticate_does_not_reach_the_client
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "http2-settings"
    )
}

/// Removes the fixed hop-by-hop set and every header named in `Connection`.
pub fn strip(headers: &mut HeaderMap) {
    let _ = strip_named(headers);
}

/// [`strip`], answering the headers `Connection` named that were there (besides the fixed
/// set): a decision door, which decides without them, names them to its peer for removal.
pub fn strip_named(headers: &mut HeaderMap) -> Vec<HeaderName> {
    let mut gone = Vec::new();
    // `Connection` is of the fixed set: a head without a fixed field (most requests, many
    // answers) has nothing to strip, told by one walk over its names without a lookup.
    if !headers.keys().any(is_fixed) {
        return gone;
    }
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let only_fixed = match (connection.next(), connection.next()) {
        (None, _) => true,
        // The usual `Connection: keep-alive` or `close` names nothing else.
        (Some(v), None) => {
            v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                || v.as_bytes().eq_ignore_ascii_case(b"close")
        }
        _ => false,
    };
    if !only_fixed {
        // `close` and the fixed set need no entry of their own.
        // As bytes: a line that is not visible ASCII still names the others on it.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(trim_ows)
            .filter(|t| !t.eq_ignore_ascii_case(b"close"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            // Why: the forwarding chain is the gateway's to rewrite; a peer naming it in
            // `Connection` must not make the gateway lose the real client address.
            .filter(|n| !is_fixed(n) && n != "x-forwarded-for" && n != "forwarded")
            .collect();
        // Why: one map lookup per named token. Testing each header present against the
        // token list, after each removal, is quadratic in what the client controls (a 16 KB
        // request held a core for 20 ms). Regression: tests::huge_connection_list
        for name in named {
            if headers.remove(&name).is_some() {
                gone.push(name);
            }
        }
    }
    remove_where(headers, is_fixed);
    gone
}

/// Removes from a trailer section what one may not carry: the hop-by-hop fields (which make
/// an HTTP/2 stream malformed) and the fields RFC 9110 §6.5.1 keeps out of trailers (framing,
/// routing, authentication, cookies, content and caching controls), as hyper's HTTP/1.1
/// encoder leaves them out.
///
/// Why: an HTTP/1.1 upstream's `keep-alive` trailer reset the stream of an HTTP/2 client, its
/// gRPC status lost; and its `set-cookie` or `authorization` trailers reached the client.
/// Regression: tests (it) upstreams::forbidden_trailer_fields_do_not_reach_http2_clients
pub fn strip_trailers(trailers: &mut HeaderMap) {
    strip(trailers);
    remove_where(trailers, |n| {
        matches!(
            n.as_str(),
            "authorization"
                | "cache-control"
                | "content-encoding"
                | "content-length"
                | "content-range"
                | "content-type"
                | "cookie"
                | "expect"
                | "host"
                | "max-forwards"
                | "set-cookie"
                | "www-authenticate"
        )
    });
}

/// Removes every header whose name `doomed` accepts, by walking the names present: cheaper
/// than asking the map for each of a list of names, and free of allocation. A request has a
/// handful of names and at most one or two doomed (an upstream's `Connection: keep-alive`),
/// so walking again after each removal costs less than collecting them.
pub fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|n| doomed(n)).cloned() {
        headers.remove(&name);
    }
}

/// Whether the client asks to switch to cleartext HTTP/2 (`Upgrade: h2c`), a known way to
/// tunnel past a proxy's per-request checks. Refused with 400.
pub fn is_h2c_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(HTTP2_SETTINGS)
        || headers
            .get_all(header::UPGRADE)
            .iter()
            // As bytes: another byte on the line must not hide the `h2c` on it.
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| trim_ows(t).eq_ignore_ascii_case(b"h2c"))
}

/// Whether a request's `Transfer-Encoding` is anything but exactly one `chunked` (any case,
/// optional whitespace): `gzip, chunked`, `chunked, chunked`, two header lines. Refused with
/// 501 (RFC 9112 §6.1), before the header is stripped as hop-by-hop.
///
/// Why: hyper de-chunks when the last coding is `chunked` and the gateway forwards the body
/// without the header, so the upstream would take gzip-coded (or still chunked) bytes for the
/// body itself: the body it acts on is not the body the client framed.
/// Regression: tests (it) smuggling::transfer_codings_other_than_chunked_refused
pub fn has_unsupported_transfer_coding(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','));
    match (codings.next(), codings.next()) {
        (None, _) => false,
        (Some(only), None) => !trim_ows(only).eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

/// Without the optional whitespace (SP, HTAB) around a list element.
pub fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always hop-by-hop, whether named in `Connection` or not.
    const HOP_BY_HOP: [HeaderName; 9] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ];

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
        h.append(
            "http2-settings",
            "AAMAAABkAARAAAAAAAIAAAAA".parse().unwrap(),
        );
        h.append("x-secret", "2".parse().unwrap());
        strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-forwarded-for", "x-kept"]);
        assert_eq!(h.len(), 2, "every value of a removed name goes");
    }

    #[test]
    fn a_connection_line_with_other_bytes_still_names_headers() {
        let mut up = HeaderMap::new();
        up.append(
            "upgrade",
            http::HeaderValue::from_bytes(b"h2c, \xff").unwrap(),
        );
        assert!(is_h2c_upgrade(&up));
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            http::HeaderValue::from_bytes(b"x-secret, \xff").unwrap(),
        );
        h.append("x-secret", "1".parse().unwrap());
        h.append("x-kept", "1".parse().unwrap());
        strip(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn huge_connection_list() {
        // Many named headers present, a long token list: every named one goes, others stay.
        let mut h = HeaderMap::new();
        let mut tokens: Vec<String> = (0..49).map(|i| format!("d{i}")).collect();
        tokens.extend(std::iter::repeat_n("z".to_owned(), 4000));
        h.append("connection", tokens.join(",").parse().unwrap());
        for i in 0..49 {
            h.append(
                HeaderName::from_bytes(format!("d{i}").as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
            h.append(
                HeaderName::from_bytes(format!("a{i}").as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        strip(&mut h);
        assert_eq!(h.len(), 49);
        assert!(h.keys().all(|k| k.as_str().starts_with('a')));
    }

    #[test]
    fn fixed_set_goes_without_connection_header() {
        let mut h = HeaderMap::new();
        h.append("te", "trailers".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        h.append("proxy-connection", "keep-alive".parse().unwrap());
        h.append("connection", "Keep-Alive".parse().unwrap());
        h.append("x-kept", "1".parse().unwrap());
        strip(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
        // Nothing to remove: the map is left as it was.
        strip(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn fixed_set_matches_the_list() {
        for n in HOP_BY_HOP.iter().chain([&HTTP2_SETTINGS]) {
            assert!(is_fixed(n), "{n}");
        }
        assert!(!is_fixed(&header::HOST) && !is_fixed(&header::AUTHORIZATION));
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

    #[test]
    fn transfer_codings_other_than_one_chunked() {
        let te = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(header::TRANSFER_ENCODING, l.parse().unwrap());
            }
            has_unsupported_transfer_coding(&h)
        };
        assert!(!te(&[]));
        for ok in ["chunked", "Chunked", " CHUNKED\t"] {
            assert!(!te(&[ok]), "{ok:?}");
        }
        for refused in [
            &["gzip, chunked"][..],
            &["chunked, chunked"],
            &["gzip", "chunked"],
            &["chunked", "chunked"],
            &[",chunked"],
            &["chunked,"],
            &["gzip"],
            &[""],
            &["chunked;q=1"],
        ] {
            assert!(te(refused), "{refused:?}");
        }
    }
}
