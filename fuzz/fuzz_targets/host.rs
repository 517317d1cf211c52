//! Host parsing (`request::facts::parse_host`): never panics; an accepted host is lowercase,
//! without a trailing dot, and either an IPv6 literal in brackets or labels of letters,
//! digits, `-` and `_`; a port is decimal digits; parsing the host again (alone, or with its
//! port) gives the same answer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::request::facts::parse_host;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((host, port)) = parse_host(raw) else {
        return;
    };
    assert!(!host.is_empty(), "{raw:?}");
    assert!(!host.ends_with('.'), "{raw:?} gave {host:?}");
    assert!(
        !host.bytes().any(|b| b.is_ascii_uppercase()),
        "{raw:?} gave {host:?}"
    );
    if let Some(v6) = host.strip_prefix('[') {
        let v6 = v6
            .strip_suffix(']')
            .expect("a bracketed host ends with `]`");
        assert!(v6.parse::<std::net::Ipv6Addr>().is_ok(), "{raw:?}");
    } else {
        assert!(
            host.split('.').all(|label| !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
            "{raw:?} gave {host:?}"
        );
    }
    let again = parse_host(&host).expect("an accepted host parses again");
    assert_eq!((&*again.0, again.1), (&*host, None), "{raw:?}");
    if let Some(p) = port {
        // RFC 3986 §3.2.3: `port = *DIGIT`, nothing else (no sign, no space).
        let text = raw.rsplit_once(':').map_or("", |(_, t)| t);
        assert!(
            !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
            "{raw:?}: port {p} from {text:?}"
        );
        let with_port = format!("{host}:{p}");
        let again = parse_host(&with_port).expect("host:port parses again");
        assert_eq!((&*again.0, again.1), (&*host, Some(p)), "{raw:?}");
    }
});
