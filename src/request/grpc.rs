//! Whether a client speaks gRPC, by its `content-type`, and how an answer the gateway makes
//! for it (a refusal, a failure, a shed request) is labelled.
//!
//! Contract:
//! - Media types are case-insensitive (RFC 9110 §8.3.1): `Application/GRPC` is gRPC.
//! - `application/grpc`, with or without a `+codec` suffix, is gRPC over HTTP/2; gRPC-Web
//!   (`application/grpc-web…`) and its base64 text form (`application/grpc-web-text…`) are
//!   told apart, because a gRPC-Web client rejects an answer labelled `application/grpc`.
//! - The label is one of three constants, never the client's own text echoed back.

use http::{HeaderMap, header};

/// The gRPC flavour a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grpc {
    /// `application/grpc[+codec]`.
    Native,
    /// `application/grpc-web[+codec]`.
    Web,
    /// `application/grpc-web-text[+codec]`.
    WebText,
}

impl Grpc {
    /// The flavour `headers` announce, if any.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        Self::of_content_type(headers.get(header::CONTENT_TYPE)?.as_bytes())
    }

    /// The flavour a `content-type` value announces, if any (a door that reads headers from
    /// elsewhere than a `HeaderMap`: Envoy's Check attributes).
    pub fn of_content_type(ct: &[u8]) -> Option<Self> {
        let rest = ct
            .get(..16)
            .filter(|p| p.eq_ignore_ascii_case(b"application/grpc"))
            .map(|_| &ct[16..])?;
        // The subtype ends there: a codec suffix, parameters, or nothing.
        let ends = |r: &[u8]| matches!(r.first(), None | Some(b'+' | b';' | b' ' | b'\t'));
        let after = |p: &[u8]| {
            rest.get(..p.len())
                .filter(|r| r.eq_ignore_ascii_case(p))
                .map(|_| &rest[p.len()..])
        };
        if ends(rest) {
            Some(Self::Native)
        } else if after(b"-web-text").is_some_and(ends) {
            Some(Self::WebText)
        } else if after(b"-web").is_some_and(ends) {
            Some(Self::Web)
        } else {
            None
        }
    }

    /// The `content-type` of an answer the gateway makes for this client.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Native => "application/grpc",
            Self::Web => "application/grpc-web+proto",
            Self::WebText => "application/grpc-web-text+proto",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours_by_content_type() {
        use Grpc::*;
        for (ct, want) in [
            ("application/grpc", Some(Native)),
            ("application/grpc+proto", Some(Native)),
            ("application/grpc+json", Some(Native)),
            ("Application/GRPC", Some(Native)),
            ("application/grpc; charset=utf-8", Some(Native)),
            ("application/grpc-web", Some(Web)),
            ("application/grpc-web+proto", Some(Web)),
            ("Application/gRPC-Web+json", Some(Web)),
            ("application/grpc-web-text", Some(WebText)),
            ("application/grpc-web-text+proto", Some(WebText)),
            ("application/grpcx", None),
            ("application/grpc-webx", None),
            ("application/grpc-web-textual", None),
            ("application/grpc-other", None),
            ("application/grp", None),
            ("application/json", None),
            ("", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(Grpc::of(&h), want, "{ct:?}");
        }
        assert_eq!(Grpc::of(&HeaderMap::new()), None);
    }
}
