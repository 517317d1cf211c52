//! The forward-auth door: nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`,
//! APISIX `forward-auth` and the Kong plugin under `examples/kong/` ask whether a request may
//! pass, describing it in headers; 2xx allows, with the identity headers in the answer for the
//! peer to copy (`auth_request_set`, `authResponseHeaders`, `copy_headers`).
//!
//! How the original request is described (these headers ARE the request, so the door only
//! believes them from its configured `peers`):
//!
//! | what | headers, in order of preference |
//! |---|---|
//! | method | `X-Forwarded-Method` (Traefik, Caddy, APISIX), `X-Original-Method` (nginx): required |
//! | target | `X-Forwarded-Uri` (Traefik, Caddy, APISIX), `X-Original-URI` (nginx): origin form, required |
//! | host | `X-Forwarded-Host`: required |
//! | scheme | `X-Forwarded-Proto` (`http` or `https`), else `http` |
//! | client | `X-Forwarded-For`, read through the door's peers and `server.trusted_proxies` |
//!
//! A door's `headers:` names other headers for the method, target, host or scheme (a peer set
//! up to send, say, `X-Auth-Uri`); a part named there is read from that header only.
//!
//! An allowed request's answer carries the identity headers to set (and `x-real-ip`,
//! `x-forwarded-host`), and `x-portcullis-remove`: the comma-separated names of the headers
//! the upstream must not get (spoofable ones, a stripped credential). The door cannot remove
//! them itself: the peer must, by applying that list or by clearing those names in its own
//! configuration (the shipped examples do both where the peer can).
//!
//! Two headers of one row that disagree, a repeated one, or a missing one are refused (400): a
//! peer is never second-guessed. Nothing falls back on the door request's own method or `Host`:
//! nginx's `auth_request` subrequest is always a GET to the door's own host, so a `DELETE` for
//! `admin.example` would be judged as a GET for `portcullis`.
//! Refusals carry their status unless `status_map` says the peer cannot pass it (nginx turns
//! anything but 2xx, 401 and 403 into 500); then the mapped status goes out with the real one in
//! `x-portcullis-status` and the reason code in `x-portcullis-error`, which the shipped nginx
//! config turns back into the real answer.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use http_body_util::Full;

use crate::decision::{Allow, Refusal};
use crate::door::{self, Described, HttpDoor, Undescribed};
use crate::request::facts::Door;
use crate::snapshot::DoorSettings;

/// The forward-auth door.
#[derive(Debug, Default)]
pub struct ForwardAuth;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = door::X_FORWARDED_PROTO;

/// The headers that describe the original request (a door's `headers:`): for each part, the
/// names read, all of which must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptionHeaders {
    /// The method.
    pub method: Box<[HeaderName]>,
    /// The path and query.
    pub uri: Box<[HeaderName]>,
    /// The host.
    pub host: Box<[HeaderName]>,
    /// The scheme.
    pub proto: HeaderName,
}

impl Default for DescriptionHeaders {
    fn default() -> Self {
        Self {
            method: Box::new([X_FORWARDED_METHOD, X_ORIGINAL_METHOD]),
            uri: Box::new([X_FORWARDED_URI, X_ORIGINAL_URI]),
            host: Box::new([X_FORWARDED_HOST]),
            proto: X_FORWARDED_PROTO,
        }
    }
}

impl DescriptionHeaders {
    /// The usual names, each part replaced by the configured name where there is one;
    /// `Err((part, message))` for a name that is not a header name, is given twice, is
    /// another part's usual one, or is `Host` or hop-by-hop.
    pub fn configured(
        raw: &crate::config::raw::RawDescriptionHeaders,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let mut out = Self::default();
        let mut errors = Vec::new();
        let mut seen: Vec<HeaderName> = Vec::new();
        let mut parse = |part: &'static str, name: &Option<String>| -> Option<HeaderName> {
            let name = name.as_deref()?;
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) if seen.contains(&h) => {
                    errors.push((part, format!("`{name}` already describes another part")));
                    None
                }
                // Why: `Host` is the subrequest's own (the door's host), and hop-by-hop
                // headers never reach a door's description: either would describe every
                // request alike, or none. Regression: tests (it)
                // doors::forward_auth_headers_must_be_header_names_each_once
                Ok(h) if h == http::header::HOST || crate::server::hop_by_hop::is_fixed(&h) => {
                    errors.push((
                        part,
                        format!("`{name}` is not the peer's to describe the request with"),
                    ));
                    None
                }
                Ok(h) => {
                    seen.push(h.clone());
                    Some(h)
                }
                Err(_) => {
                    errors.push((part, format!("`{name}` is not a header name")));
                    None
                }
            }
        };
        if let Some(h) = parse("method", &raw.method) {
            out.method = Box::new([h]);
        }
        if let Some(h) = parse("uri", &raw.uri) {
            out.uri = Box::new([h]);
        }
        if let Some(h) = parse("host", &raw.host) {
            out.host = Box::new([h]);
        }
        if let Some(h) = parse("proto", &raw.proto) {
            out.proto = h;
        }
        // A configured name may not be another part's usual one (`host: X-Forwarded-Uri`).
        let parts: [(&'static str, &[HeaderName]); 4] = [
            ("method", &out.method),
            ("uri", &out.uri),
            ("host", &out.host),
            ("proto", std::slice::from_ref(&out.proto)),
        ];
        for (i, (part, names)) in parts.iter().enumerate() {
            for (other, theirs) in &parts[i + 1..] {
                if let Some(n) = names.iter().find(|n| theirs.contains(n)) {
                    errors.push((
                        if raw_names(raw, part) { part } else { other },
                        format!("`{n}` already describes the {other} or the {part}"),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// Whether the config names the header of `part` itself.
fn raw_names(raw: &crate::config::raw::RawDescriptionHeaders, part: &str) -> bool {
    match part {
        "method" => raw.method.is_some(),
        "uri" => raw.uri.is_some(),
        "host" => raw.host.is_some(),
        _ => raw.proto.is_some(),
    }
}

/// The usual names, for a door compiled without any.
static USUAL: std::sync::LazyLock<DescriptionHeaders> =
    std::sync::LazyLock::new(DescriptionHeaders::default);

impl HttpDoor for ForwardAuth {
    const DOOR: Door = Door::ForwardAuth;

    fn describe(
        &self,
        settings: &DoorSettings,
        parts: &mut http::request::Parts,
    ) -> Result<Described, Undescribed> {
        let names = match settings {
            DoorSettings::ForwardAuth { headers, .. } => &**headers,
            _ => &*USUAL,
        };
        // The method's and target's headers leave the request as they are read (one hash and
        // probe for each, where a read and a removal took two): the described request is the
        // client's, without its description.
        let mut headers = std::mem::take(&mut parts.headers);
        // Why: the subrequest's own method and host are the peer's, not the client's; a
        // DELETE judged by GET-only allow rules, or a request for a `hosts:`-scoped deny rule
        // judged under the door's own host, passed. Regression: tests (it)
        // doors::forward_auth_bad_descriptions (missing_original_method, missing_original_host)
        let method = take_one_of(&mut headers, &names.method, "ambiguous_method")?
            .ok_or(Undescribed("missing_original_method"))?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| Undescribed("invalid_original_method"))?;
        // `take_one_of` checked that each value is visible text (UTF-8 in a target's query).
        let target = take_one_of(&mut headers, &names.uri, "ambiguous_uri")?
            .ok_or(Undescribed("missing_original_uri"))?;
        let target = std::str::from_utf8(target.as_bytes()).unwrap_or_default();
        // Why: an absolute or empty target would be read differently by the peer's upstream
        // than by the rules. Regression: tests (it) doors::forward_auth_bad_descriptions
        // A `CONNECT` (whatever it names) and `OPTIONS *` go on, for the facts to refuse as
        // the proxy does (405, 400 `unsupported_target`) once the head's limits are checked.
        // Regression: tests (it) conformance ("connect authority form", "asterisk target")
        if !crate::request::facts::door_takes_target(&method, target) {
            return Err(Undescribed("invalid_original_uri"));
        }
        let target = target.to_owned();
        // Kept as the peer sent it (a reference count, no copy): the `Host` it replaces below.
        // Why: a host that is no text was refused as `invalid_description_header` here and
        // as `invalid_host` by the proxy door (the same 400, another reason code).
        // Regression: tests::descriptions
        let host = one_of(&headers, &names.host, "ambiguous_host")
            .map_err(|e| match e {
                Undescribed("invalid_description_header") => Undescribed("invalid_host"),
                e => e,
            })?
            .cloned()
            .ok_or(Undescribed("missing_original_host"))?;
        let scheme = door::scheme_in(&headers, &names.proto)?;
        // Read as one field each, or refused above; the host's values all agree.
        let describing = door::lines_of(&headers, names.host.iter().chain([&names.proto]));
        let authority = host.to_str().unwrap_or_default().to_owned();
        // Why: the subrequest's own `Host` is the door's (Traefik, APISIX and the Kong plugin
        // send it), and a rule or delegate reading `request.headers['host']` judged the door's
        // host, not the client's. The described host replaces it, as the proxy door reads the
        // client's own. Regression: tests (it) doors::forward_auth_rules_read_the_described_host
        headers.insert(http::header::HOST, host);
        Ok(Described {
            method,
            scheme,
            authority: Some(authority),
            target,
            headers,
            describing,
        })
    }

    fn allow(&self, allow: &Allow) -> Response<Full<Bytes>> {
        let mut resp = door::allow_response(allow);
        // Why: this door cannot remove a header from what its peer forwards, and the peers'
        // own configuration only clears the names written in it. The list lets a peer that
        // can act on it (the Kong plugin, an nginx `map`) strip exactly what the proxy door
        // would. Regression: tests (it) doors::forward_auth_names_what_to_remove
        if let Some(v) = door::removal_list(&allow.mutation) {
            resp.headers_mut().insert(door::REMOVE_HEADER, v);
        }
        resp
    }

    fn deny(&self, settings: &DoorSettings, refusal: Refusal) -> Response<Full<Bytes>> {
        let map = match settings {
            DoorSettings::ForwardAuth { status_map, .. } => &status_map[..],
            _ => &[],
        };
        door::render_refusal(refusal, map)
    }
}

/// The value of the first of `names` present (at most one value each; equal when several are
/// present).
fn one_of<'h>(
    h: &'h HeaderMap,
    names: &[HeaderName],
    ambiguous: &'static str,
) -> Result<Option<&'h HeaderValue>, Undescribed> {
    let mut found: Option<&HeaderValue> = None;
    for name in names {
        match (found, door::single_value(h, name)?) {
            (Some(a), Some(b)) if a != b => return Err(Undescribed(ambiguous)),
            (None, Some(b)) => found = Some(b),
            _ => {}
        }
    }
    Ok(found)
}

/// A target whose only bytes past ASCII are UTF-8 in its query (`/s?q=café`, as nginx's
/// `$request_uri` carries it): the proxy door takes such a query, so this door does too.
///
/// Why: it refused it (400 `non_ascii`) while the proxy door, the gRPC door and Envoy's HTTP
/// mode decided it. Regression: tests::descriptions, conformance (`raw utf-8 query`)
fn utf8_in_query(bytes: &[u8]) -> bool {
    let Some(first_high) = bytes.iter().position(|b| *b >= 0x80) else {
        return false;
    };
    bytes[..first_high].contains(&b'?') && std::str::from_utf8(bytes).is_ok()
}

/// [`one_of`], each of `names` present taken out of `h` as it is read.
fn take_one_of(
    h: &mut HeaderMap,
    names: &[HeaderName],
    ambiguous: &'static str,
) -> Result<Option<HeaderValue>, Undescribed> {
    let mut found: Option<HeaderValue> = None;
    for name in names {
        // `try_entry` fails only for a map past http's size limit, which hyper never builds:
        // refused rather than read.
        let Ok(entry) = h.try_entry(name) else {
            return Err(Undescribed("repeated_description_header"));
        };
        let http::header::Entry::Occupied(entry) = entry else {
            continue;
        };
        if entry.iter().nth(1).is_some() {
            return Err(Undescribed("repeated_description_header"));
        }
        let value = entry.remove();
        if value.to_str().is_err() && !utf8_in_query(value.as_bytes()) {
            // Why: nginx's `$request_uri` carries a raw UTF-8 path as the client sent it; the
            // proxy door refuses that path as `non_ascii`, and so does this one (the same 400
            // with another reason code before). Regression: tests::descriptions
            let high = value.as_bytes().iter().any(|b| *b >= 0x80);
            return Err(Undescribed(if high {
                "non_ascii"
            } else {
                "invalid_description_header"
            }));
        }
        match &found {
            Some(a) if *a != value => return Err(Undescribed(ambiguous)),
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(headers: &[(&str, &str)]) -> Result<Described, &'static str> {
        let mut req = http::Request::get("/auth");
        for (name, value) in headers {
            req = req.header(*name, HeaderValue::from_bytes(value.as_bytes()).unwrap());
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        ForwardAuth
            .describe(&DoorSettings::Proxy, &mut parts)
            .map_err(|Undescribed(reason)| reason)
    }

    #[test]
    fn descriptions() {
        const HOST: (&str, &str) = ("x-forwarded-host", "app.example");
        // (headers besides the host, the method and target described, or the refusal)
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Result<(&'a str, &'a str), &'a str>,
        );
        let cases: [Case<'_>; 12] = [
            (
                &[("x-original-method", "GET"), ("x-original-uri", "/a?b")],
                Ok(("GET", "/a?b")),
            ),
            (
                &[("x-forwarded-method", "PUT"), ("x-forwarded-uri", "/p")],
                Ok(("PUT", "/p")),
            ),
            (
                &[
                    ("x-forwarded-method", "PUT"),
                    ("x-original-method", "PUT"),
                    ("x-original-uri", "/p"),
                ],
                Ok(("PUT", "/p")),
            ),
            (
                &[
                    ("x-forwarded-method", "PUT"),
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/p"),
                ],
                Err("ambiguous_method"),
            ),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/"),
                ],
                Err("repeated_description_header"),
            ),
            (&[("x-original-uri", "/")], Err("missing_original_method")),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/caf\u{e9}"),
                ],
                Err("non_ascii"),
            ),
            // UTF-8 in the query is the proxy door's too; before a `?` it is not, nor is a
            // byte that is no UTF-8.
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/s?q=caf\u{e9}"),
                ],
                Ok(("GET", "/s?q=caf\u{e9}")),
            ),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/caf\u{e9}?q=1"),
                ],
                Err("non_ascii"),
            ),
            (&[("x-original-method", "GET")], Err("missing_original_uri")),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "http://evil/"),
                ],
                Err("invalid_original_uri"),
            ),
            (
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/"),
                    ("x-forwarded-proto", "ftp"),
                ],
                Err("invalid_forwarded_proto"),
            ),
        ];
        for (headers, want) in cases {
            let all: Vec<_> = headers.iter().copied().chain([HOST]).collect();
            let got = describe(&all);
            let got = got.as_ref().map(|d| (d.method.as_str(), d.target.as_str()));
            assert_eq!(got.map_err(|e| *e), want, "{headers:?}");
        }
        // A host that is no text: the proxy door's reason for its `Host`.
        let got = describe(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/"),
            ("x-forwarded-host", "caf\u{e9}.example"),
        ]);
        assert_eq!(got.err(), Some("invalid_host"));
    }

    #[test]
    fn describing_headers_leave_the_request_others_stay() {
        let d = describe(&[
            ("x-forwarded-method", "GET"),
            ("x-original-uri", "/a"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "https"),
            ("authorization", "Bearer t"),
            ("x-custom", "1"),
        ])
        .unwrap();
        assert_eq!(d.scheme, crate::request::facts::Scheme::Https);
        assert_eq!(d.authority.as_deref(), Some("app.example"));
        for gone in ["x-forwarded-method", "x-original-uri"] {
            assert!(!d.headers.contains_key(gone), "{gone} kept");
        }
        for kept in [
            "x-forwarded-host",
            "x-forwarded-proto",
            "authorization",
            "x-custom",
        ] {
            assert!(d.headers.contains_key(kept), "{kept} lost");
        }
    }
}
