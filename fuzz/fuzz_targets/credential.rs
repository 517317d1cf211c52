//! Credential extraction (`authn::credential::find`, `strip`, `strip_query`). The input is a
//! request in text: the first line is the query, each further line a `name: value` header
//! (bytes as they are, so values may hold obs-text).
//!
//! Contract: never panics; a token found is non-empty, and a bearer token is token68; a token
//! found through several places is the one found through each; after `strip` (headers) or
//! `strip_query` (query) nothing is found in that place any more: what was verified is never
//! forwarded; `find` never leaves a token unchecked, and `find_deferred`'s answer, once
//! checked, is `find`'s.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::authn::credential::{
    CredentialSource, Found, find, find_deferred, strip, strip_query,
};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let query = lines
        .next()
        .and_then(|q| std::str::from_utf8(q).ok())
        .filter(|q| !q.is_empty());
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let sources = [
        CredentialSource::Bearer,
        CredentialSource::Header(HeaderName::from_static("x-api-key")),
        CredentialSource::Cookie("session".into()),
        CredentialSource::Query("access_token".into()),
    ];

    // Each place alone, then all of them together.
    let mut tokens = Vec::new();
    let mut undecided = false;
    for source in &sources {
        let one = std::slice::from_ref(source);
        assert_eq!(
            find_deferred(one, &headers, query).checked(),
            find(one, &headers, query),
            "{source:?}: the deferred check differs"
        );
        match find(one, &headers, query) {
            Found::Token(t) => {
                assert!(!t.is_empty(), "{source:?}: empty token");
                if *source == CredentialSource::Bearer {
                    assert!(
                        t.bytes().all(|b| b.is_ascii_alphanumeric()
                            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')),
                        "bearer token outside token68: {t:?}"
                    );
                }
                tokens.push(t.into_owned());
            }
            Found::Conflict | Found::Malformed => undecided = true,
            Found::Nothing => {}
            Found::Unchecked(_) => panic!("{source:?}: find left a token unchecked"),
        }
    }
    match find(&sources, &headers, query) {
        Found::Nothing => assert!(tokens.is_empty() && !undecided),
        Found::Token(t) => {
            assert!(!undecided, "a conflict or malformed place was ignored");
            assert!(tokens.iter().all(|each| *each == *t), "{tokens:?} vs {t:?}");
        }
        Found::Conflict | Found::Malformed => {
            let differ = tokens.windows(2).any(|w| w[0] != w[1]);
            assert!(undecided || differ, "{tokens:?}: refused for no reason");
        }
        Found::Unchecked(_) => panic!("find left a token unchecked"),
    }

    // What is stripped is gone.
    for source in &sources[..3] {
        let mut stripped = headers.clone();
        strip(source, &mut stripped);
        assert_eq!(
            find(std::slice::from_ref(source), &stripped, None),
            Found::Nothing,
            "{source:?} still found after strip"
        );
    }
    if let Some(q) = query {
        let names: [Box<str>; 1] = ["access_token".into()];
        let left = strip_query(q, &names);
        assert_eq!(
            find(&sources[3..], &HeaderMap::new(), left.as_deref()),
            Found::Nothing,
            "{q:?} still carries the token as {left:?}"
        );
    }
});
