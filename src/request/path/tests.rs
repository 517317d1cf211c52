use std::borrow::Cow;

use proptest::prelude::*;

use super::{MAX_PATH_LEN, PathError, canonicalize, check_forwarded_as_is, upper_hex};

use PathError::*;

/// Every case: raw path, then the exact canonical path or error.
const CASES: &[(&str, Result<&str, PathError>)] = &[
    // Root and absoluteness.
    ("/", Ok("/")),
    ("", Err(NotAbsolute)),
    ("*", Err(NotAbsolute)),
    ("admin", Err(NotAbsolute)),
    ("a/b", Err(NotAbsolute)),
    ("%2Fadmin", Err(NotAbsolute)),
    // Repeated slashes.
    ("//a", Ok("/a")),
    ("//admin", Ok("/admin")),
    ("//a///b", Ok("/a/b")),
    ("//", Ok("/")),
    ("///", Ok("/")),
    ("/a//", Ok("/a/")),
    // Dot segments.
    ("/a/./b", Ok("/a/b")),
    ("/./admin", Ok("/admin")),
    ("/a/../b", Ok("/b")),
    ("/x/../admin", Ok("/admin")),
    ("/.", Ok("/")),
    ("/./", Ok("/")),
    ("/a/.", Ok("/a/")),
    ("/a/..", Ok("/")),
    ("/a/b/..", Ok("/a/")),
    ("/a/b/../", Ok("/a/")),
    ("/a/b/../../c", Ok("/c")),
    ("/a/./../b", Ok("/b")),
    ("/a//../b", Ok("/b")),
    ("/a/.//b", Ok("/a/b")),
    ("/..", Err(DotSegmentUnderflow)),
    ("/../a", Err(DotSegmentUnderflow)),
    ("/a/../..", Err(DotSegmentUnderflow)),
    ("/a/../../b", Err(DotSegmentUnderflow)),
    ("/./..", Err(DotSegmentUnderflow)),
    // Names that only look like dot segments.
    ("/...", Ok("/...")),
    ("/a..b/.c/d.", Ok("/a..b/.c/d.")),
    ("/.well-known/x", Ok("/.well-known/x")),
    // Encoded dots.
    ("/%2e%2e/admin", Err(EncodedDotSegment)),
    ("/public/%2e%2e/admin", Err(EncodedDotSegment)),
    ("/public/%2E%2E/admin", Err(EncodedDotSegment)),
    ("/.%2e/", Err(EncodedDotSegment)),
    ("/a/%2e./b", Err(EncodedDotSegment)),
    ("/a/%2e/b", Err(EncodedDotSegment)),
    ("/a/%2E", Err(EncodedDotSegment)),
    ("/a%2eb", Ok("/a.b")),
    ("/file%2Ejson", Ok("/file.json")),
    ("/%2e%2e%2e", Ok("/...")),
    ("/%2ewell-known", Ok("/.well-known")),
    // Decoded unreserved characters.
    ("/%61", Ok("/a")),
    ("/%61dmin", Ok("/admin")),
    ("/%41%42", Ok("/AB")),
    ("/%7e", Ok("/~")),
    ("/%7E%2d%5f%30", Ok("/~-_0")),
    // Other encoded bytes stay encoded, uppercase, never double-decoded.
    ("/a%20b", Ok("/a%20b")),
    ("/a%25", Ok("/a%25")),
    ("/100%25/x", Ok("/100%25/x")),
    ("/a%25z", Ok("/a%25z")),
    ("/a%25g0", Ok("/a%25g0")),
    ("/a%255", Ok("/a%255")),
    ("/a%25%7e", Ok("/a%25~")),
    // Sub-delimiters, `:` and `@` are decoded: every upstream routes them decoded.
    ("/%26%2B%3D", Ok("/&+=")),
    ("/v1/users%3Adelete", Ok("/v1/users:delete")),
    ("/v1/users%3adelete", Ok("/v1/users:delete")),
    ("/%40admin/x", Ok("/@admin/x")),
    ("/%21%24%27%28%29%2A%2C", Ok("/!$'()*,")),
    ("/a%2bb", Ok("/a+b")),
    // Not the gen-delimiters a path cannot carry raw.
    ("/a%5B%5D", Ok("/a%5B%5D")),
    // Encoded delimiters an upstream decoding again would act on.
    ("/admin%3Bx", Err(EncodedDelimiter)),
    ("/admin%3bx", Err(EncodedDelimiter)),
    ("/admin%3B", Err(EncodedDelimiter)),
    ("/admin%3Fx", Err(EncodedDelimiter)),
    ("/admin%3f", Err(EncodedDelimiter)),
    ("/admin%23x", Err(EncodedDelimiter)),
    ("/%3f%23%26", Err(EncodedDelimiter)),
    // Double encoding: a `%25` whose decoded text is an escape.
    ("/a%2520", Err(DoubleEncoding)),
    ("/x/%252e%252e/admin", Err(DoubleEncoding)),
    ("/x/%252E%252E/admin", Err(DoubleEncoding)),
    ("/%25%32%65", Err(DoubleEncoding)),
    ("/%25%32e", Err(DoubleEncoding)),
    ("/%252%65", Err(DoubleEncoding)),
    ("/a%2525", Err(DoubleEncoding)),
    ("/admin%253B", Err(DoubleEncoding)),
    ("/a%252F", Err(DoubleEncoding)),
    // Encoded separators and control bytes.
    ("/a%2Fb", Err(EncodedSlash)),
    ("/a%2fb", Err(EncodedSlash)),
    ("/a%5cb", Err(EncodedBackslash)),
    ("/a%5Cb", Err(EncodedBackslash)),
    ("/a%00", Err(ControlCharacter)),
    ("/a%0a", Err(ControlCharacter)),
    ("/a%0D%0A", Err(ControlCharacter)),
    ("/a%1F", Err(ControlCharacter)),
    ("/a%7f", Err(ControlCharacter)),
    // Malformed escapes.
    ("/a%", Err(InvalidPercentEncoding)),
    ("/a%4", Err(InvalidPercentEncoding)),
    ("/a%zz", Err(InvalidPercentEncoding)),
    ("/a%g0", Err(InvalidPercentEncoding)),
    ("/a%+1", Err(InvalidPercentEncoding)),
    ("/a%%41", Err(InvalidPercentEncoding)),
    // UTF-8.
    ("/caf%C3%A9", Ok("/caf%C3%A9")),
    ("/caf%c3%a9", Ok("/caf%C3%A9")),
    ("/%E2%82%AC", Ok("/%E2%82%AC")),
    ("/%F0%9F%A6%80/x", Ok("/%F0%9F%A6%80/x")),
    ("/%C3", Err(InvalidUtf8)),
    ("/%C3/", Err(InvalidUtf8)),
    ("/%C3a", Err(InvalidUtf8)),
    ("/%C3%41", Err(InvalidUtf8)),
    ("/%FF", Err(InvalidUtf8)),
    ("/%80", Err(InvalidUtf8)),
    ("/%C0%AF", Err(InvalidUtf8)),
    ("/%E0%80%AF", Err(InvalidUtf8)),
    ("/%ED%A0%80", Err(InvalidUtf8)),
    ("/%F4%90%80%80", Err(InvalidUtf8)),
    ("/%F8%88%80%80%80", Err(InvalidUtf8)),
    ("/%C3%A9%A9", Err(InvalidUtf8)),
    ("/caf\u{e9}", Err(NonAscii)),
    // Raw characters.
    ("/admin;x", Err(Semicolon)),
    ("/admin;", Err(Semicolon)),
    ("/a\\b", Err(Backslash)),
    ("/a\0", Err(ControlCharacter)),
    ("/a\tb", Err(ControlCharacter)),
    ("/a\x7f", Err(ControlCharacter)),
    ("/a b", Err(InvalidCharacter)),
    ("/a#b", Err(InvalidCharacter)),
    ("/a?b", Err(InvalidCharacter)),
    ("/a\"<>`{}|^[]", Err(InvalidCharacter)),
    ("/a!$&'()*+,=:@-._~", Ok("/a!$&'()*+,=:@-._~")),
    // Case is preserved.
    ("/Admin/API", Ok("/Admin/API")),
];

#[test]
fn table() {
    for &(raw, expected) in CASES {
        let got = canonicalize(raw);
        assert_eq!(got.as_deref().map_err(|e| *e), expected, "input {raw:?}");
    }
}

#[test]
fn canonical_input_is_borrowed() {
    for raw in [
        "/",
        "/a/b",
        "/a/",
        "/a%20b",
        "/a%25z",
        "/caf%C3%A9",
        "/...",
        "/.well-known/x",
        "/a!$&'()*+,=:@-._~",
    ] {
        let out = canonicalize(raw).unwrap();
        assert!(matches!(out, Cow::Borrowed(_)), "input {raw:?}");
        assert_eq!(out, raw);
    }
}

#[test]
fn as_sent_keeps_the_escapes_of_delimiters_and_fails_alike() {
    for (raw, want) in [
        ("/v1/users%3adelete", Ok("/v1/users%3Adelete")),
        ("/%40admin/./x", Ok("/%40admin/x")),
        ("/a%2Bb/%61", Ok("/a%2Bb/a")),
        ("/a%20b", Ok("/a%20b")),
        ("/a:b", Ok("/a:b")),
        ("/a%3Bb", Err(PathError::EncodedDelimiter)),
        ("/a%2Fb", Err(PathError::EncodedSlash)),
    ] {
        assert_eq!(
            super::canonicalize_as_sent(raw).map(Cow::into_owned),
            want.map(str::to_owned),
            "input {raw:?}"
        );
        assert_eq!(
            super::canonicalize_as_sent(raw).is_ok(),
            canonicalize(raw).is_ok(),
            "input {raw:?}"
        );
    }
}

#[test]
fn rewritten_input_is_owned() {
    for raw in ["//a", "/a/./b", "/%61", "/a%2b"] {
        assert!(
            matches!(canonicalize(raw).unwrap(), Cow::Owned(_)),
            "input {raw:?}"
        );
    }
}

#[test]
fn length_limit() {
    let mut raw = "/".repeat(MAX_PATH_LEN);
    assert_eq!(canonicalize(&raw).unwrap(), "/");
    raw.push('/');
    assert_eq!(canonicalize(&raw), Err(TooLong));
    assert_eq!(canonicalize(&"/%41".repeat(3000)), Err(TooLong));
}

#[test]
fn error_codes_and_messages() {
    let all = [
        TooLong,
        NotAbsolute,
        InvalidPercentEncoding,
        EncodedSlash,
        EncodedBackslash,
        ControlCharacter,
        InvalidUtf8,
        Backslash,
        Semicolon,
        NonAscii,
        InvalidCharacter,
        DotSegmentUnderflow,
        EncodedDotSegment,
        EncodedDelimiter,
        DoubleEncoding,
        NonCanonical,
    ];
    let mut codes: Vec<_> = all.iter().map(PathError::as_str).collect();
    for (error, code) in all.iter().zip(&codes) {
        assert!(
            code.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{code}"
        );
        let message = error.to_string();
        assert!(
            !message.is_empty() && message == message.to_lowercase(),
            "{message}"
        );
    }
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len());
}

#[test]
fn forwarded_as_is() {
    let cases = [
        ("/", true),
        ("/a", true),
        ("/a/", true),
        ("/a/b.c/..d/.e", true),
        ("/%61dmin", true),
        ("/a%20b/", true),
        ("/admin/../public/x", false),
        ("/./a", false),
        ("/a/.", false),
        ("/a/..", false),
        ("//a", false),
        ("/a//b", false),
        ("/a//", false),
        ("/..", false),
    ];
    for (raw, ok) in cases {
        let got = check_forwarded_as_is(raw);
        assert_eq!(got.is_ok(), ok, "{raw}: {got:?}");
        if !ok {
            assert_eq!(got, Err(NonCanonical), "{raw}");
        }
    }
    // The byte scan agrees with the reading by segments on every path of up to seven
    // characters from `/`, `.` and `a`.
    let by_segments = |raw: &str| {
        let mut segments = raw.split('/').skip(1).peekable();
        while let Some(s) = segments.next() {
            let last = segments.peek().is_none();
            if s == "." || s == ".." || (s.is_empty() && !last) {
                return false;
            }
        }
        true
    };
    let mut paths = vec![String::from("/")];
    for _ in 0..6 {
        let longer: Vec<String> = paths
            .iter()
            .flat_map(|p| ["/", ".", "a"].map(|c| format!("{p}{c}")))
            .collect();
        for raw in &longer {
            assert_eq!(
                check_forwarded_as_is(raw).is_ok(),
                by_segments(raw),
                "{raw}"
            );
        }
        paths = longer;
    }
    // Every path it accepts keeps its segments under canonicalisation: what the peer forwards
    // is what was decided, up to the decoding every upstream does.
    for raw in ["/a/b/", "/x/%7Ey", "/a/b.c/..d"] {
        let canon = canonicalize(raw).unwrap();
        assert_eq!(canon.split('/').count(), raw.split('/').count(), "{raw}");
    }
}

/// Pieces of raw paths that are accepted: dot segments, unreserved and reserved escapes in
/// both cases, `%25` before text that is not hex, whole UTF-8 sequences, sub-delimiters.
const ACCEPTED_PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "/",
    "a",
    "B",
    "z9",
    "-",
    "~",
    ".",
    ".",
    "..",
    "..",
    "%2e",
    "%2E",
    "%61",
    "%7e",
    "%20",
    "%2b",
    "%3a",
    "%40",
    "%2A",
    "%3D",
    "%5B",
    "%25",
    "%25z",
    "%C3%A9",
    "%c3%a9",
    "%E2%82%AC",
    "%F0%9F%A6%80",
    "!",
    "$",
    "&",
    "'",
    "(",
    ")",
    "*",
    "+",
    ",",
    "=",
    ":",
    "@",
];

/// Pieces that are refused, wherever they are (or, for `%25`+hex and a lone byte of a UTF-8
/// sequence, depending on what follows).
const REFUSED_PIECES: &[&str] = &[
    "%2F", "%5c", "%3B", "%3f", "%23", "%252e", "%2532", "%", "%4", "%zz", "%00", "%7F", "%C3",
    "%A9", ";", "\\", " ", "?", "\u{e9}",
];

/// A raw path: mostly absolute, mostly accepted pieces, so that about a third is accepted.
fn raw_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        24 => prop::sample::select(ACCEPTED_PIECES),
        1 => prop::sample::select(REFUSED_PIECES),
    ];
    (
        prop::bool::weighted(0.95),
        prop::collection::vec(piece, 0..24),
    )
        .prop_map(|(absolute, pieces)| {
            let mut raw = String::from(if absolute { "/" } else { "" });
            raw.extend(pieces);
            raw
        })
}

/// Percent-decodes every escape, `%25` included (test helper: the input is known well-formed).
fn decode_all(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The reference reading of a decoded absolute path (RFC 3986 §5.2.4 plus empty segments
/// dropped): what an upstream that decodes and then resolves serves. `None` for a `..` above
/// the root.
fn resolve(decoded: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            b"" | b"." => trailing_slash = last,
            b".." => {
                stack.pop()?;
                trailing_slash = last;
            }
            name => {
                stack.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut out = b"/".to_vec();
    out.extend(stack.join(&b'/'));
    if trailing_slash && !stack.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Every `Ok` output is canonical and a fixed point, borrowed the second time.
    #[test]
    fn canonical_output_is_a_fixed_point(raw in raw_path()) {
        if let Ok(out) = canonicalize(&raw) {
            assert_canonical(&raw, &out);
        }
    }

    /// Differential: an accepted path names the resource the reference reading of the input
    /// names (decode everything, then resolve dot segments), so no upstream that decodes
    /// first and resolves after, or the other way round, serves anything else.
    #[test]
    fn canonical_output_means_what_the_input_meant(raw in raw_path()) {
        if let Ok(out) = canonicalize(&raw) {
            let meant = resolve(&decode_all(&raw));
            prop_assert_eq!(
                Some(decode_all(&out)),
                meant,
                "input {:?} output {:?}", raw, out
            );
        }
    }
}

proptest! {
    // Arbitrary Unicode text is slower to generate than the pieces above.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text at all: an answer, never a panic.
    #[test]
    fn any_text_has_an_answer(raw in "/?\\PC{0,64}") {
        let _ = canonicalize(&raw);
    }
}

fn assert_canonical(raw: &str, out: &str) {
    let context = format!("input {raw:?} output {out:?}");
    assert!(out.starts_with('/'), "{context}");
    assert!(!out.contains("//"), "{context}");
    assert!(!out.contains("/./") && !out.contains("/../"), "{context}");
    assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{context}");
    assert!(!out.contains(';') && !out.contains('\\'), "{context}");
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        assert!(
            hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
            "{context}"
        );
        let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !super::is_unreserved(byte)
                && !super::is_raw_delimiter(byte)
                && byte != b'/'
                && byte != b'\\',
            "{context}"
        );
        assert!(byte >= 0x20 && byte != 0x7F, "{context}");
        assert!(!matches!(byte, b';' | b'?' | b'#'), "{context}");
        // Decoding once more never yields an escape: no double encoding.
        if byte == b'%' {
            let after = &bytes[i + 3..];
            assert!(
                !(after.len() >= 2 && after[0].is_ascii_hexdigit() && after[1].is_ascii_hexdigit()),
                "{context}"
            );
        }
    }
    let again = canonicalize(out).unwrap();
    assert!(matches!(again, Cow::Borrowed(_)), "{context}");
    assert_eq!(again, out, "{context}");
}

#[test]
fn upper_hex_cases_escapes_only() {
    for (raw, want, borrowed) in [
        ("/a/b", "/a/b", true),
        ("/caf%C3%A9", "/caf%C3%A9", true),
        ("/caf%c3%a9", "/caf%C3%A9", false),
        ("/x%3a/abc%2b", "/x%3A/abc%2B", false),
        // Letters outside escapes keep their case.
        ("/ab%2fcd", "/ab%2Fcd", false),
        ("/%aB", "/%AB", false),
    ] {
        let got = upper_hex(raw);
        assert_eq!(got, want, "{raw}");
        assert_eq!(matches!(got, Cow::Borrowed(_)), borrowed, "{raw}");
    }
}
