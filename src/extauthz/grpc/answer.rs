//! [`Answer`]: a Check's answer, an allow written to the wire straight from the decision.
//!
//! Why: an allow names some forty headers to remove besides the identity headers it sets; as
//! Envoy's generated `CheckResponse`, each name and value became an owned `String`, allocated,
//! copied, encoded and freed on every Check: with building the list itself, a tenth of the
//! door's CPU per Check. An allow is encoded here from the [`Allow`] it answers, the message
//! [`super::allowed`] builds field for field; every other answer is that message, encoded by
//! prost. Regression: tests::an_allow_encodes_as_the_message_it_stands_for
//!
//! The wire format, from Envoy's protos (field numbers):
//!
//! ```text
//! CheckResponse     status 1 (google.rpc.Status: code 1, empty for OK), ok_response 3,
//!                   dynamic_metadata 4 (google.protobuf.Struct)
//! OkHttpResponse    headers 2, headers_to_remove 5, response_headers_to_add 6,
//!                   query_parameters_to_remove 8
//! HeaderValueOption header 1 (HeaderValue: key 1, value 2), append_action 3
//! Struct            fields 1: map entries (key 1, value 2: Value, string_value 3)
//! ```

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes};
use envoy_types::ext_authz::v3::pb::CheckResponse;
use http::{HeaderName, HeaderValue};
use prost::encoding::{
    DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len,
};

use crate::authn::PrincipalKind;
use crate::authz::spoofable::DoorList;
use crate::decision::Allow;

/// What the door answers one Check with.
#[derive(Debug)]
pub enum Answer {
    /// `OK`: the allow's header mutation and its principal as dynamic metadata
    /// ([`Self::allowed`]).
    Allowed(Allowed),
    /// Any other answer (a denial), as the message.
    Message(CheckResponse),
}

/// An allow with the lengths its encoding needs, reckoned once from it; private, so that the
/// two cannot disagree.
#[derive(Debug)]
pub struct Allowed {
    allow: Allow,
    /// The `OkHttpResponse`'s length, and the dynamic metadata's.
    lens: (usize, usize),
}

const STATUS: u32 = 1;
const OK_RESPONSE: u32 = 3;
const DYNAMIC_METADATA: u32 = 4;
const OK_HEADERS: u32 = 2;
const OK_HEADERS_TO_REMOVE: u32 = 5;
const OK_RESPONSE_HEADERS_TO_ADD: u32 = 6;
const OK_QUERY_PARAMETERS_TO_REMOVE: u32 = 8;
const OPTION_HEADER: u32 = 1;
const OPTION_APPEND_ACTION: u32 = 3;
const HEADER_KEY: u32 = 1;
const HEADER_VALUE: u32 = 2;
const STRUCT_FIELDS: u32 = 1;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const VALUE_STRING: u32 = 3;

// === impl Answer ===

impl Default for Answer {
    fn default() -> Self {
        Self::Message(CheckResponse::default())
    }
}

impl Answer {
    /// The answer to an allowed request.
    pub fn allowed(allow: Allow) -> Self {
        let lens = (Self::ok_len(&allow), Self::metadata_len(&allow));
        Self::Allowed(Allowed { allow, lens })
    }

    /// The HTTP status it stands for, for metrics and the log.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Allowed(_) => 200,
            Self::Message(m) => super::http_status_of(m),
        }
    }

    /// The allow's fields, each once, in the order written: the dynamic metadata's entries.
    fn metadata(a: &Allow) -> impl Iterator<Item = (&'static str, &str)> {
        let principal = a.principal.as_deref().map(|p| {
            let kind = match p.kind {
                PrincipalKind::User => "user",
                PrincipalKind::Machine => "machine",
            };
            [("principal_id", &*p.id), ("principal_kind", kind)]
        });
        std::iter::once(("rule", &*a.rule.0)).chain(principal.into_iter().flatten())
    }

    fn ok_len(a: &Allow) -> usize {
        let m = &a.mutation;
        m.set
            .iter()
            .map(|(n, v)| field_len(OK_HEADERS, option_len(n, v)))
            .sum::<usize>()
            + m.removed_variable()
                .map(|n| field_len(OK_HEADERS_TO_REMOVE, n.as_str().len()))
                .sum::<usize>()
            + m.removed_fixed().map_or(0, |d| rest(d).len())
            + m.response
                .iter()
                .map(|(n, v)| field_len(OK_RESPONSE_HEADERS_TO_ADD, option_len(n, v)))
                .sum::<usize>()
            + m.query_remove
                .iter()
                .map(|q| field_len(OK_QUERY_PARAMETERS_TO_REMOVE, q.len()))
                .sum::<usize>()
    }

    fn metadata_len(a: &Allow) -> usize {
        Self::metadata(a)
            .map(|(k, v)| field_len(STRUCT_FIELDS, entry_len(k, v)))
            .sum()
    }
}

impl prost::Message for Answer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let (a, (ok_len, metadata_len)) = match self {
            Self::Allowed(Allowed { allow, lens }) => (allow, *lens),
            Self::Message(m) => return m.encode_raw(buf),
        };
        // `status`: code 0 (OK), every field at its default.
        head(STATUS, 0, buf);
        head(OK_RESPONSE, ok_len, buf);
        let m = &a.mutation;
        for (n, v) in &m.set {
            put_option(OK_HEADERS, n, v, buf);
        }
        for n in m.removed_variable() {
            put_bytes(OK_HEADERS_TO_REMOVE, n.as_str().as_bytes(), buf);
        }
        if let Some(d) = m.removed_fixed() {
            buf.put_slice(&rest(d));
        }
        for (n, v) in &m.response {
            put_option(OK_RESPONSE_HEADERS_TO_ADD, n, v, buf);
        }
        for q in &m.query_remove {
            put_bytes(OK_QUERY_PARAMETERS_TO_REMOVE, q.as_bytes(), buf);
        }
        head(DYNAMIC_METADATA, metadata_len, buf);
        for (k, v) in Self::metadata(a) {
            head(STRUCT_FIELDS, entry_len(k, v), buf);
            put_bytes(ENTRY_KEY, k.as_bytes(), buf);
            head(ENTRY_VALUE, field_len(VALUE_STRING, v.len()), buf);
            put_bytes(VALUE_STRING, v.as_bytes(), buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent: a decoder reads it as a CheckResponse.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Allowed(Allowed {
                lens: (ok, metadata),
                ..
            }) => {
                field_len(STATUS, 0)
                    + field_len(OK_RESPONSE, *ok)
                    + field_len(DYNAMIC_METADATA, *metadata)
            }
            Self::Message(m) => m.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// The door list's names that are never set, as `headers_to_remove` entries: written once
/// per snapshot, copied into every answer.
fn rest(d: &DoorList) -> Bytes {
    d.rendered(render_rest)
}

fn render_rest(names: &[HeaderName]) -> Bytes {
    let mut buf = Vec::new();
    for n in names {
        put_bytes(OK_HEADERS_TO_REMOVE, n.as_str().as_bytes(), &mut buf);
    }
    buf.into()
}

/// A length-delimited field of `len` bytes, key and length included.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string field (proto3: left out when empty).
fn string_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { field_len(tag, len) }
}

fn head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    head(tag, bytes.len(), buf);
    buf.put_slice(bytes);
}

/// A header value as the message's text: what [`super::allowed`] sends (identity and response
/// header values are visible ASCII; anything else is read lossily, as there).
fn text(v: &HeaderValue) -> Cow<'_, str> {
    // (UTF-8 as it is, the usual case, without the lossy reader's chunking.)
    match std::str::from_utf8(v.as_bytes()) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v.as_bytes()),
    }
}

/// A `HeaderValue` message's body.
fn header_len(name: &HeaderName, value: &str) -> usize {
    string_len(HEADER_KEY, name.as_str().len()) + string_len(HEADER_VALUE, value.len())
}

/// A `HeaderValueOption` message's body: the header, overwriting (`Vary` appending: see
/// [`super::append_action`]).
fn option_len(name: &HeaderName, value: &HeaderValue) -> usize {
    field_len(OPTION_HEADER, header_len(name, &text(value))) + action_len(name)
}

/// The append action of `name`, as [`super::allowed`] sets it.
fn action(name: &HeaderName) -> u64 {
    super::append_action(name) as u64
}

/// The append action field (proto3: left out when 0, `APPEND_IF_EXISTS_OR_ADD`).
fn action_len(name: &HeaderName) -> usize {
    match action(name) {
        0 => 0,
        a => key_len(OPTION_APPEND_ACTION) + encoded_len_varint(a),
    }
}

fn put_option(tag: u32, name: &HeaderName, value: &HeaderValue, buf: &mut impl BufMut) {
    let value = text(value);
    let header = header_len(name, &value);
    head(
        tag,
        field_len(OPTION_HEADER, header) + action_len(name),
        buf,
    );
    head(OPTION_HEADER, header, buf);
    if !name.as_str().is_empty() {
        put_bytes(HEADER_KEY, name.as_str().as_bytes(), buf);
    }
    if !value.is_empty() {
        put_bytes(HEADER_VALUE, value.as_bytes(), buf);
    }
    match action(name) {
        0 => {}
        a => {
            encode_key(OPTION_APPEND_ACTION, WireType::Varint, buf);
            encode_varint(a, buf);
        }
    }
}

/// A `Struct` map entry's body: its key, and a `Value` holding a string (a oneof member:
/// written even when empty).
fn entry_len(key: &str, value: &str) -> usize {
    string_len(ENTRY_KEY, key.len()) + field_len(ENTRY_VALUE, field_len(VALUE_STRING, value.len()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderName;
    use prost::Message as _;

    use super::*;
    use crate::authn::principal::Principal;
    use crate::authz::route::RuleId;
    use crate::authz::spoofable::Spoofable;
    use crate::decision::HeaderMutation;

    fn allow(principal: Option<Principal>, mutation: HeaderMutation) -> Allow {
        Allow {
            failed_open: None,
            rule: RuleId("orders/read".into()),
            upstream: None,
            principal: principal.map(Arc::new),
            authenticator: None,
            query_credentials: None,
            mutation,
            identity_refused: 0,
            timeouts: None,
            edge: None,
        }
    }

    fn principal(kind: PrincipalKind) -> Principal {
        crate::testing::principal("alice", kind)
    }

    fn header(n: &'static str, v: &'static str) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static(n), HeaderValue::from_static(v))
    }

    /// What the door writes decodes as exactly the message `allowed` builds, whatever the
    /// allow holds: a principal of each kind or none, identity headers some of which are on
    /// the door's list, the request's own removals, response headers, values with UTF-8 and
    /// without, a list long enough for multi-byte lengths.
    #[test]
    fn an_allow_encodes_as_the_message_it_stands_for() {
        let identity = [
            HeaderName::from_static("x-user-id"),
            HeaderName::from_static("x-tenant-id"),
        ];
        let spoofable = Spoofable::new(&identity, Vec::new());
        let many: Vec<(HeaderName, HeaderValue)> = (0..40)
            .map(|i| {
                (
                    HeaderName::from_bytes(format!("x-set-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_str(&"v".repeat(i * 5)).unwrap(),
                )
            })
            .collect();
        let cases = [
            allow(None, HeaderMutation::default()),
            allow(
                Some(principal(PrincipalKind::User)),
                HeaderMutation {
                    set: vec![
                        header("x-user-id", "alice"),
                        header("x-real-ip", "192.0.2.1"),
                    ],
                    remove: vec![HeaderName::from_static("x_user_id")],
                    named: Some(Arc::clone(spoofable.door_removal(false))),
                    // `vary` is appended, every other header set over what was there.
                    response: vec![
                        header("ratelimit-remaining", "9"),
                        header("vary", "origin"),
                        header("access-control-allow-origin", "https://app.example"),
                    ],
                    query_remove: vec!["api_key".into(), "api%5Fkey".into()],
                },
            ),
            allow(
                Some(principal(PrincipalKind::Machine)),
                HeaderMutation {
                    set: vec![(
                        HeaderName::from_static("x-name"),
                        HeaderValue::from_bytes("Zoë".as_bytes()).unwrap(),
                    )],
                    remove: Vec::new(),
                    named: Some(Arc::clone(spoofable.door_removal(true))),
                    response: Vec::new(),
                    query_remove: Vec::new(),
                },
            ),
            allow(
                None,
                HeaderMutation {
                    set: many,
                    ..HeaderMutation::default()
                },
            ),
        ];
        for a in cases {
            let expected = crate::extauthz::grpc::allowed(&a);
            let answer = Answer::allowed(a);
            let bytes = answer.encode_to_vec();
            assert_eq!(bytes.len(), answer.encoded_len());
            let decoded = CheckResponse::decode(&*bytes).unwrap();
            assert_eq!(decoded, expected);
            assert_eq!(answer.http_status(), 200);
        }
    }

    #[test]
    fn any_other_answer_is_its_message() {
        let m = crate::extauthz::grpc::denied(crate::decision::Refusal::error(
            http::StatusCode::BAD_REQUEST,
            "invalid_path",
            &HeaderValue::from_static("req-1"),
        ));
        let answer = Answer::Message(m.clone());
        assert_eq!(answer.encode_to_vec(), m.encode_to_vec());
        assert_eq!(answer.http_status(), 400);
    }
}
