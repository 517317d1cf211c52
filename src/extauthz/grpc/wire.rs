//! The `CheckRequest` as the gRPC door reads it: only the fields it reads, each text borrowed
//! from the received message instead of copied into a `String` of its own.
//!
//! Contract, for any bytes: [`CheckRequest::read`] accepts them exactly when envoy-types'
//! `CheckRequest` (prost) decodes them with every occurrence of each field listed below
//! valid, and no map holds more entries than asked; then each of these fields holds what
//! prost's holds:
//!
//! | field | read as |
//! |---|---|
//! | `attributes.source.address` | the oneof's last member; a socket address's `address` |
//! | `attributes.source.certificate` | text |
//! | `attributes.request.http.{id, method, path, host, scheme}` | text |
//! | `attributes.request.http.headers` | a map: each name once, with the last value sent |
//! | `attributes.request.http.header_map.headers` | `key` and `value` text, `raw_value` bytes |
//! | `attributes.context_extensions` | a map, as `headers` |
//! | `attributes.tls_session.sni` | text |
//!
//! An occurrence of a string field listed here that is not UTF-8 makes the message
//! unreadable, as prost refuses it. Fields not listed (`destination`, `metadata_context`, the
//! body, a pipe's path…) are skipped as unknown fields, unchecked: nothing reads them.
//! Regression: tests::reads_what_prost_reads
//!
//! The message is walked before it is decoded ([`walk`]): each string read is checked there,
//! and the entries of each map counted, so that a message of more header entries than any
//! request the door takes (`headers_too_many` once decoded) is refused before any is
//! decoded, and one of more than [`MAX_CONTEXT_ENTRIES`] context extensions too.
//!
//! Why the count first: a 4 MiB message of two-byte map entries decodes into two million
//! 64-byte entries (160 MB), where prost's map kept one per name. Regression:
//! tests::too_many_entries_are_refused_unread
//!
//! Why: prost's `CheckRequest` copied every string (each header name and value, the
//! certificate) into an allocation of its own and hashed each header into a map; decoding
//! was a sixth of the door's instructions per Check (`bench/door_instructions.sh`).

use bytes::Bytes;
use prost::Message as _;

/// A Check's message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// A `map<string, string>`: on the wire, repeated entries.
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
    #[prost(message, optional, tag = "12")]
    pub tls_session: Option<TlsSession>,
}

/// `AttributeContext.Peer`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    #[prost(bytes = "bytes", tag = "5")]
    pub certificate: Bytes,
}

/// `envoy.config.core.v3.Address`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(oneof = "AddressKind", tags = "1, 2, 3")]
    pub address: Option<AddressKind>,
}

/// `Address.address`: which kind of address, the socket address's read.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum AddressKind {
    #[prost(message, tag = "1")]
    SocketAddress(SocketAddress),
    #[prost(message, tag = "2")]
    Pipe(Unread),
    #[prost(message, tag = "3")]
    EnvoyInternalAddress(Unread),
}

/// `envoy.config.core.v3.SocketAddress`, the field read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    #[prost(bytes = "bytes", tag = "2")]
    pub address: Bytes,
}

/// A message none of whose fields is read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unread {}

/// `AttributeContext.Request`, the field read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub method: Bytes,
    /// A `map<string, string>`: on the wire, repeated entries.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    #[prost(bytes = "bytes", tag = "4")]
    pub path: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub host: Bytes,
    #[prost(bytes = "bytes", tag = "6")]
    pub scheme: Bytes,
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// One entry of a `map<string, string>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

/// `AttributeContext.TlsSession`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TlsSession {
    #[prost(bytes = "bytes", tag = "1")]
    pub sni: Bytes,
}

/// The text of a string field of a message [`CheckRequest::read`] accepted (checked there).
pub(crate) fn text(field: &[u8]) -> &str {
    // A field read here was checked as UTF-8 when the message was read; the empty text is
    // never reached.
    std::str::from_utf8(field).unwrap_or_default()
}

// === impl CheckRequest ===

impl CheckRequest {
    /// The message in `bytes`, each of its header maps of at most `max_entries` entries and
    /// its context extensions of at most [`MAX_CONTEXT_ENTRIES`] (see the module docs), or
    /// why not. Its fields share `bytes`' buffer.
    pub fn read(bytes: Bytes, max_entries: usize) -> Result<Self, Unreadable> {
        walk(&bytes, max_entries)?;
        let mut check = Self::decode(bytes).map_err(|_| Unreadable::Malformed)?;
        if let Some(a) = &mut check.attributes {
            once_each(&mut a.context_extensions);
            if let Some(h) = a.request.as_mut().and_then(|r| r.http.as_mut()) {
                once_each(&mut h.headers);
            }
        }
        Ok(check)
    }

    /// The HTTP request described, when there is one.
    pub fn http(&self) -> Option<&HttpRequest> {
        self.attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
    }
}

/// The most context extensions a Check may carry; past them it is `invalid_check_request`.
pub(crate) const MAX_CONTEXT_ENTRIES: usize = 1024;

/// Why a message is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Not a `CheckRequest`, or a string read that is not UTF-8.
    Malformed,
    /// A header map of more entries than asked.
    TooManyEntries,
}

impl Unreadable {
    /// The reason code of the denial.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "invalid_check_request",
            Self::TooManyEntries => "headers_too_many",
        }
    }
}

/// Entries counted per map, over every occurrence of the messages holding it.
#[derive(Default)]
struct Counts {
    headers: usize,
    header_map: usize,
    context: usize,
}

/// Checks every occurrence of each string field read (UTF-8) and counts the entries of each
/// map, without decoding: stops at the first string that is not text, or once a map passes
/// `max_entries`.
fn walk(bytes: &[u8], max_entries: usize) -> Result<(), Unreadable> {
    let mut n = Counts::default();
    let count = |c: &mut usize| {
        *c += 1;
        if *c > max_entries {
            Err(Unreadable::TooManyEntries)
        } else {
            Ok(())
        }
    };
    fields(bytes, |tag, attributes| {
        if tag != 1 {
            return Ok(());
        }
        fields(attributes, |tag, f| match tag {
            1 => fields(f, |tag, f| match tag {
                1 => fields(f, |tag, f| match tag {
                    // A socket address's `address`.
                    1 => fields(f, |tag, f| if tag == 2 { utf8(f) } else { Ok(()) }),
                    _ => Ok(()),
                }),
                5 => utf8(f),
                _ => Ok(()),
            }),
            4 => fields(f, |tag, f| {
                if tag != 2 {
                    return Ok(());
                }
                fields(f, |tag, f| match tag {
                    1 | 2 | 4 | 5 | 6 => utf8(f),
                    3 => {
                        count(&mut n.headers)?;
                        fields(f, |tag, f| if tag <= 2 { utf8(f) } else { Ok(()) })
                    }
                    13 => fields(f, |tag, f| {
                        if tag != 1 {
                            return Ok(());
                        }
                        count(&mut n.header_map)?;
                        fields(f, |tag, f| if tag <= 2 { utf8(f) } else { Ok(()) })
                    }),
                    _ => Ok(()),
                })
            }),
            10 => {
                // Why a bound of their own: they are the operator's (Envoy's route config),
                // not the request's; counted against the header limit, a route with many
                // failed every Check as `headers_too_many`.
                n.context += 1;
                if n.context > MAX_CONTEXT_ENTRIES {
                    return Err(Unreadable::Malformed);
                }
                fields(f, |tag, f| if tag <= 2 { utf8(f) } else { Ok(()) })
            }
            12 => fields(f, |tag, f| if tag == 1 { utf8(f) } else { Ok(()) }),
            _ => Ok(()),
        })
    })
}

/// Calls `each` with the tag and the bytes of every length-delimited field of the message in
/// `bytes`, skipping the others.
fn fields(
    mut bytes: &[u8],
    mut each: impl FnMut(u32, &[u8]) -> Result<(), Unreadable>,
) -> Result<(), Unreadable> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    while !bytes.is_empty() {
        let (tag, wire) = decode_key(&mut bytes).map_err(|_| Unreadable::Malformed)?;
        if wire == WireType::LengthDelimited {
            let len = decode_varint(&mut bytes).map_err(|_| Unreadable::Malformed)?;
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= bytes.len())
                .ok_or(Unreadable::Malformed)?;
            let (field, rest) = bytes.split_at(len);
            bytes = rest;
            each(tag, field)?;
        } else {
            skip_field(wire, tag, &mut bytes, DecodeContext::default())
                .map_err(|_| Unreadable::Malformed)?;
        }
    }
    Ok(())
}

/// A string field's bytes are text. (`is_ascii` first: a word at a time, and most are.)
fn utf8(b: &[u8]) -> Result<(), Unreadable> {
    if b.is_ascii() || std::str::from_utf8(b).is_ok() {
        Ok(())
    } else {
        Err(Unreadable::Malformed)
    }
}

/// A map's entries as the map holds them: each name once, with the last value sent for it,
/// at the place of that last one.
fn once_each(entries: &mut Vec<Entry>) {
    // Few entries (a request's headers): compared pairwise, nothing allocated.
    let repeated = if entries.len() <= 32 {
        entries
            .iter()
            .enumerate()
            .any(|(i, e)| entries[i + 1..].iter().any(|l| l.key == e.key))
    } else {
        let mut seen = std::collections::HashSet::with_capacity_and_hasher(
            entries.len(),
            foldhash::fast::RandomState::default(),
        );
        !entries.iter().all(|e| seen.insert(&e.key[..]))
    };
    if !repeated {
        return;
    }
    let mut seen: std::collections::HashSet<Bytes, foldhash::fast::RandomState> =
        std::collections::HashSet::default();
    let mut kept: Vec<Entry> = entries
        .drain(..)
        .rev()
        .filter(|e| seen.insert(e.key.clone()))
        .collect();
    kept.reverse();
    *entries = kept;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::ext_authz::v3::pb::CheckRequest as Envoys;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext as EnvoysContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context as ctx;
    use prost::Message as _;

    use super::*;

    /// What the door reads of envoy-types' message, in the form [`read_here`] gives it.
    fn read_by_prost(m: &Envoys) -> String {
        let Some(a) = &m.attributes else {
            return "no attributes".into();
        };
        let mut out = Vec::new();
        if let Some(s) = &a.source {
            let address = match s.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(core::address::Address::SocketAddress(s)) => format!("socket {}", s.address),
                Some(core::address::Address::Pipe(_)) => "pipe".into(),
                Some(core::address::Address::EnvoyInternalAddress(_)) => "internal".into(),
                None => "none".into(),
            };
            out.push(format!("source {address} cert {:?}", s.certificate));
        }
        if let Some(h) = a.request.as_ref().and_then(|r| r.http.as_ref()) {
            out.push(format!(
                "http {:?} {:?} {:?} {:?} {:?}",
                h.id, h.method, h.path, h.host, h.scheme
            ));
            out.push(format!("headers {}", sorted(&h.headers)));
            if let Some(m) = &h.header_map {
                for v in &m.headers {
                    out.push(format!("raw {:?} {:?} {:?}", v.key, v.value, v.raw_value));
                }
            }
        }
        out.push(format!("context {}", sorted(&a.context_extensions)));
        if let Some(t) = &a.tls_session {
            out.push(format!("sni {:?}", t.sni));
        }
        out.join("\n")
    }

    fn sorted(m: &HashMap<String, String>) -> String {
        let mut v: Vec<_> = m.iter().collect();
        v.sort();
        format!("{v:?}")
    }

    fn read_here(m: &CheckRequest) -> String {
        let Some(a) = &m.attributes else {
            return "no attributes".into();
        };
        let mut out = Vec::new();
        if let Some(s) = &a.source {
            let address = match s.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(AddressKind::SocketAddress(s)) => format!("socket {}", text(&s.address)),
                Some(AddressKind::Pipe(_)) => "pipe".into(),
                Some(AddressKind::EnvoyInternalAddress(_)) => "internal".into(),
                None => "none".into(),
            };
            out.push(format!("source {address} cert {:?}", text(&s.certificate)));
        }
        if let Some(h) = m.http() {
            out.push(format!(
                "http {:?} {:?} {:?} {:?} {:?}",
                text(&h.id),
                text(&h.method),
                text(&h.path),
                text(&h.host),
                text(&h.scheme)
            ));
            out.push(format!("headers {}", entries(&h.headers)));
            if let Some(m) = &h.header_map {
                for v in &m.headers {
                    out.push(format!(
                        "raw {:?} {:?} {:?}",
                        text(&v.key),
                        text(&v.value),
                        v.raw_value.to_vec()
                    ));
                }
            }
        }
        out.push(format!("context {}", entries(&a.context_extensions)));
        if let Some(t) = &a.tls_session {
            out.push(format!("sni {:?}", text(&t.sni)));
        }
        out.join("\n")
    }

    fn entries(e: &[Entry]) -> String {
        let mut v: Vec<(String, String)> = e
            .iter()
            .map(|e| (text(&e.key).to_owned(), text(&e.value).to_owned()))
            .collect();
        v.sort();
        format!("{v:?}")
    }

    fn full() -> Envoys {
        let headers: HashMap<String, String> = [
            (":authority", "app.example"),
            (":path", "/api/x?a=1"),
            ("authorization", "Bearer abc"),
            ("x-note", "é"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Envoys {
            attributes: Some(EnvoysContext {
                source: Some(ctx::Peer {
                    address: Some(core::Address {
                        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                            address: "198.51.100.7".into(),
                            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                                4431,
                            )),
                            ..Default::default()
                        })),
                    }),
                    principal: "spiffe://x".into(),
                    certificate: "-----BEGIN%20CERTIFICATE-----".into(),
                    ..Default::default()
                }),
                destination: Some(ctx::Peer {
                    service: "dest".into(),
                    ..Default::default()
                }),
                request: Some(ctx::Request {
                    http: Some(ctx::HttpRequest {
                        id: "1234".into(),
                        method: "POST".into(),
                        headers,
                        path: "/api/x?a=1".into(),
                        host: "app.example".into(),
                        scheme: "https".into(),
                        body: "{\"a\":1}".into(),
                        header_map: Some(core::HeaderMap {
                            headers: vec![
                                core::HeaderValue {
                                    key: "x-raw".into(),
                                    raw_value: vec![0xff, b' ', b'a'],
                                    ..Default::default()
                                },
                                core::HeaderValue {
                                    key: "x-text".into(),
                                    value: "t".into(),
                                    ..Default::default()
                                },
                            ],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: [("svc".to_owned(), "billing".to_owned())].into(),
                tls_session: Some(ctx::TlsSession {
                    sni: "app.example".into(),
                }),
                ..Default::default()
            }),
        }
    }

    /// Bytes appended to a message: protobuf merges a field sent again into the first.
    fn again(tag: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    /// `attributes { <inner> }` as bytes.
    fn in_attributes(inner: &[u8]) -> Vec<u8> {
        again(1, inner)
    }

    #[test]
    fn reads_what_prost_reads() {
        let whole = full().encode_to_vec();
        let entry = |k: &[u8], v: &[u8]| {
            let mut e = again(1, k);
            e.extend(again(2, v));
            e
        };
        // `request { http { headers { <entry> } } }` inside the attributes.
        let header =
            |k: &[u8], v: &[u8]| in_attributes(&again(4, &again(2, &again(3, &entry(k, v)))));
        // `request { http { <inner> } }` inside the attributes.
        let http = |inner: &[u8]| in_attributes(&again(4, &again(2, inner)));
        // A header of `header_map` made of `inner`.
        let raw = |inner: &[u8]| http(&again(13, &again(1, inner)));
        let pipe_source = in_attributes(&again(1, &again(1, &again(2, &again(1, b"/tmp/s")))));
        let socket_source =
            in_attributes(&again(1, &again(1, &again(1, &again(2, b"203.0.113.9")))));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("whole", whole.clone()),
            ("a header sent twice: the last counts", {
                let mut b = whole.clone();
                b.extend(header(b"authorization", b"Bearer second"));
                b
            }),
            ("a header name in two cases", {
                let mut b = whole.clone();
                b.extend(header(b"Authorization", b"Bearer other"));
                b
            }),
            ("a pipe after the socket address", {
                let mut b = whole.clone();
                b.extend(pipe_source.clone());
                b
            }),
            ("a socket address after a pipe", {
                let mut b = pipe_source.clone();
                b.extend(socket_source);
                b
            }),
            ("a context extension sent twice", {
                let mut b = whole.clone();
                b.extend(in_attributes(&again(10, &entry(b"svc", b"shop"))));
                b
            }),
            (
                "an entry without a value",
                in_attributes(&again(10, &again(1, b"k"))),
            ),
            ("not UTF-8 in a header value", {
                let mut b = whole.clone();
                b.extend(header(b"x-bad", &[0xff, 0xfe]));
                b
            }),
            ("not UTF-8 in a header name", {
                let mut b = whole.clone();
                b.extend(header(&[b'x', 0xc3, 0x28], b"v"));
                b
            }),
            (
                "not UTF-8 in the path",
                in_attributes(&again(4, &again(2, &again(4, &[b'/', 0xff])))),
            ),
            (
                "not UTF-8 in the certificate",
                in_attributes(&again(1, &again(5, &[0xc0, 0x80]))),
            ),
            (
                "not UTF-8 in the SNI",
                in_attributes(&again(12, &again(1, &[0xff]))),
            ),
            (
                "not UTF-8 in a context extension",
                in_attributes(&again(10, &entry(b"svc", &[0xe2, 0x82]))),
            ),
            ("not UTF-8 in a raw header's name", raw(&again(1, &[0xff]))),
            (
                "not UTF-8 in a raw header's value",
                raw(&again(2, &[b'a', 0xff])),
            ),
            (
                "not UTF-8 in the source address",
                in_attributes(&again(1, &again(1, &again(1, &again(2, &[0xff]))))),
            ),
            ("not UTF-8 in the id", http(&again(1, &[0xff]))),
            ("not UTF-8 in a path sent again", {
                let mut b = http(&again(4, &[b'/', 0xff]));
                b.extend(http(&again(4, b"/open/x")));
                b
            }),
            ("not UTF-8 in a socket address a pipe replaces", {
                let mut b = in_attributes(&again(1, &again(1, &again(1, &again(2, &[0xff])))));
                b.extend(pipe_source);
                b
            }),
            (
                "not UTF-8 in a key an entry sends again",
                in_attributes(&again(10, &[again(1, &[0xff]), entry(b"k", b"v")].concat())),
            ),
            ("not UTF-8 in the method", http(&again(2, &[0xff]))),
            ("not UTF-8 in the host", http(&again(5, &[0xff]))),
            ("not UTF-8 in the scheme", http(&again(6, &[0xff]))),
            ("a raw value that is not UTF-8", raw(&again(3, &[0xff]))),
            ("truncated", whole[..whole.len() / 2].to_vec()),
            ("garbage", vec![0xff; 16]),
            (
                "a string field with the wrong wire type",
                vec![0x0a, 0x02, 0x20, 0x01],
            ),
        ];
        for (what, bytes) in cases {
            let prost = Envoys::decode(&bytes[..]).ok();
            let here = CheckRequest::read(Bytes::from(bytes), 100).ok();
            let unreadable = what.starts_with("not UTF-8")
                || [
                    "truncated",
                    "garbage",
                    "a string field with the wrong wire type",
                ]
                .contains(&what);
            assert_eq!(here.is_none(), unreadable, "{what}");
            match (&prost, &here) {
                (Some(p), Some(h)) => {
                    assert_eq!(read_here(h), read_by_prost(p), "{what}");
                }
                (None, None) => {}
                _ => panic!("{what}: prost read {prost:?}, the door {here:?}"),
            }
        }
    }

    /// A message with more entries in a map than asked is refused before anything is decoded
    /// (`headers_too_many`), whichever map; at the limit it is read. Duplicates count.
    #[test]
    fn too_many_entries_are_refused_unread() {
        let entry = |k: &[u8]| [again(1, k), again(2, b"v")].concat();
        let header = |i: usize| {
            in_attributes(&again(
                4,
                &again(2, &again(3, &entry(format!("x-{i}").as_bytes()))),
            ))
        };
        let raw = |i: usize| {
            in_attributes(&again(
                4,
                &again(
                    2,
                    &again(13, &again(1, &entry(format!("x-{i}").as_bytes()))),
                ),
            ))
        };
        let context = |i: usize| in_attributes(&again(10, &entry(format!("c{i}").as_bytes())));
        for (what, one) in [
            ("headers", &header as &dyn Fn(usize) -> Vec<u8>),
            ("header_map", &raw),
        ] {
            let message = |n: usize| Bytes::from((0..n).flat_map(one).collect::<Vec<u8>>());
            assert!(
                CheckRequest::read(message(10), 10).is_ok(),
                "{what}: 10 of 10"
            );
            assert_eq!(
                CheckRequest::read(message(11), 10).err(),
                Some(Unreadable::TooManyEntries),
                "{what}: 11 of 10"
            );
            // The same name eleven times is eleven entries.
            let same = Bytes::from((0..11).flat_map(|_| one(0)).collect::<Vec<u8>>());
            assert_eq!(
                CheckRequest::read(same, 10).err(),
                Some(Unreadable::TooManyEntries),
                "{what}: one name eleven times"
            );
        }
        // Context extensions are the operator's: bounded on their own, whatever the header
        // limit.
        let contexts = |n: usize| Bytes::from((0..n).flat_map(context).collect::<Vec<u8>>());
        assert!(CheckRequest::read(contexts(MAX_CONTEXT_ENTRIES), 10).is_ok());
        assert_eq!(
            CheckRequest::read(contexts(MAX_CONTEXT_ENTRIES + 1), 10).err(),
            Some(Unreadable::Malformed)
        );
        assert_eq!(Unreadable::TooManyEntries.code(), "headers_too_many");
        assert_eq!(Unreadable::Malformed.code(), "invalid_check_request");
    }

    /// Of a name sent more often than the pairwise comparison covers, the last value counts
    /// too, each name once.
    #[test]
    fn many_names_sent_twice_keep_their_last_values() {
        let entry = |k: &str, v: &str| {
            again(
                3,
                &[again(1, k.as_bytes()), again(2, v.as_bytes())].concat(),
            )
        };
        let mut http = Vec::new();
        for round in ["first", "last"] {
            for i in 0..40 {
                http.extend(entry(&format!("x-{i}"), &format!("{round}-{i}")));
            }
        }
        let bytes = in_attributes(&again(4, &again(2, &http)));
        let prost = Envoys::decode(&bytes[..]).expect("prost reads it");
        let here = CheckRequest::read(Bytes::from(bytes), 100).expect("read");
        assert_eq!(read_here(&here), read_by_prost(&prost));
        assert_eq!(here.http().expect("http").headers.len(), 40);
    }

    /// Fields nothing reads are not checked: a body that is not UTF-8 does not make the
    /// message unreadable (prost's would be; the door reads no body).
    #[test]
    fn fields_not_read_are_skipped() {
        let mut bytes = full().encode_to_vec();
        bytes.extend(in_attributes(&again(
            4,
            &again(2, &again(11, &[0xff, 0xfe])),
        )));
        assert!(Envoys::decode(&bytes[..]).is_err());
        let check = CheckRequest::read(Bytes::from(bytes), 100).expect("read");
        assert_eq!(text(&check.http().expect("http").path), "/api/x?a=1");
    }
}
