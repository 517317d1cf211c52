//! Path canonicalisation (`request::path::canonicalize`): never panics; an `Ok` output is
//! canonical (module docs, "Invariants of an `Ok` output"), a fixed point returned borrowed,
//! never longer than the input, and the input itself when the input was already canonical.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use portcullis::request::path::canonicalize;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = canonicalize(raw) else {
        return;
    };
    assert!(out.len() <= raw.len(), "{raw:?} grew to {out:?}");
    if let Cow::Borrowed(b) = &out {
        assert_eq!(*b, raw, "borrowed output is the input");
    }
    assert_canonical(&out);
    match canonicalize(&out) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, &*out, "{raw:?}"),
        other => panic!("{raw:?} gave {out:?}, which gives {other:?}"),
    }
});

/// What a canonical path never carries encoded: the unreserved characters, the
/// sub-delimiters but `;`, and `:` and `@`.
fn is_raw_in_paths(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

fn assert_canonical(out: &str) {
    let bytes = out.as_bytes();
    assert!(out.starts_with('/'), "{out:?}");
    assert!(out.is_ascii(), "{out:?}");
    assert!(!out.contains("//"), "{out:?}");
    for segment in out.split('/') {
        assert!(segment != "." && segment != "..", "{out:?}");
    }
    assert!(
        !bytes
            .iter()
            .any(|&b| b.is_ascii_control() || matches!(b, b';' | b'\\' | b' ' | b'?' | b'#')),
        "{out:?}"
    );
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = &bytes[i + 1..i + 3];
        assert!(
            hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
            "{out:?}"
        );
        let byte = (hex_value(hex[0]) << 4) | hex_value(hex[1]);
        assert!(
            !is_raw_in_paths(byte),
            "{out:?}: a byte a path carries as it is left encoded"
        );
        assert!(
            !matches!(byte, b'/' | b'\\' | b';' | b'?' | b'#') && byte >= 0x20 && byte != 0x7F,
            "{out:?}: refused byte encoded"
        );
        decoded.push(byte);
        i += 3;
    }
    assert!(
        std::str::from_utf8(&decoded).is_ok(),
        "{out:?}: decodes to invalid UTF-8"
    );
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        _ => b - b'A' + 10,
    }
}
