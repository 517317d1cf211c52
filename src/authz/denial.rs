//! What a rule's denials look like: a status in place of 403, a login redirect for browsers
//! that lack a valid credential, and extra members for the JSON body. Compiled at load; at
//! request time the only work is formatting the return address of a redirect.

use crate::config::FieldError;
use http::{HeaderValue, StatusCode};

use crate::config::raw::RawDenial;
use crate::request::RequestFacts;
use crate::request::facts::Scheme;

/// A rule's compiled denial shape.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Denial {
    /// Replaces 403 for policy denials.
    pub status: Option<StatusCode>,
    /// Where browsers without a valid credential are sent.
    pub login: Option<Login>,
    /// Extra JSON members, serialized at load: `"k":v,"k2":v2` (no braces, no leading comma).
    pub extra: Option<Box<str>>,
}

/// A login redirect target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The login URL followed by `?` or `&` and `param=`.
    prefix: Box<str>,
}

/// Field path (under `denial.`) and message.
pub type CompileError = FieldError;

impl Denial {
    /// Compiles a rule's `denial`, reporting every mistake.
    pub fn compile(raw: &RawDenial) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let status = match raw.status {
            None => None,
            Some(s @ (401 | 407)) => {
                errors.push(FieldError::new(
                    "status",
                    format!("{s} needs a challenge the gateway sends itself: use another 4xx"),
                ));
                None
            }
            Some(s @ 400..=499) => StatusCode::from_u16(s).ok(),
            Some(s) => {
                errors.push(FieldError::new(
                    "status",
                    format!("{s} is not a 4xx status"),
                ));
                None
            }
        };
        let param = raw.return_param.as_deref().unwrap_or("rd");
        if param.is_empty() || !param.bytes().all(is_unreserved) {
            errors.push(FieldError::new(
                "return_param",
                format!(
                    "`{param}` must be a non-empty name of letters, digits, `-`, `.`, `_`, `~`"
                ),
            ));
        }
        let login = match &raw.login_url {
            None => {
                if raw.return_param.is_some() {
                    errors.push(FieldError::new("return_param", "needs `login_url`"));
                }
                None
            }
            Some(url) => match check_login_url(url) {
                Ok(()) => {
                    let sep = if url.contains('?') { '&' } else { '?' };
                    Some(Login {
                        prefix: format!("{url}{sep}{param}=").into(),
                    })
                }
                Err(m) => {
                    errors.push(FieldError::new("login_url", m));
                    None
                }
            },
        };
        let mut extra = String::new();
        for (k, v) in &raw.body {
            if k == "error" || k == "request_id" {
                errors.push(FieldError::new(
                    "body",
                    format!("`{k}` is set by the gateway on every denial"),
                ));
                continue;
            }
            if !extra.is_empty() {
                extra.push(',');
            }
            // A String key and a JSON value always serialize.
            extra.push_str(&serde_json::Value::String(k.clone()).to_string());
            extra.push(':');
            extra.push_str(&v.to_string());
        }
        if errors.is_empty() {
            Ok(Self {
                status,
                login,
                extra: (!extra.is_empty()).then(|| extra.into()),
            })
        } else {
            Err(errors)
        }
    }
}

impl Login {
    /// The `Location` of a redirect for this request, if it is a browser navigation: a `GET`
    /// or `HEAD` whose `Accept` names `text/html`. The return address is the URL that was
    /// decided on (canonical path and raw query, without the parameters named in
    /// `query_credentials`), percent-encoded as one query value.
    ///
    /// Why without them: the return address carried a query credential (an API key in
    /// `?api_key=`) to the login page, its logs and the browser's history.
    /// Regression: tests (it) policy::explain_never_echoes_a_query_credential
    pub fn location(
        &self,
        facts: &RequestFacts<'_>,
        query_credentials: Option<&[Box<str>]>,
    ) -> Option<HeaderValue> {
        if !is_navigation(facts) {
            return None;
        }
        let scheme = match facts.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        let mut out = String::with_capacity(self.prefix.len() + 64 + facts.path.len());
        out.push_str(&self.prefix);
        encode_into(&mut out, scheme);
        out.push_str("%3A%2F%2F");
        encode_into(&mut out, &facts.host);
        if let Some(port) = facts.port {
            out.push_str("%3A");
            out.push_str(&port.to_string());
        }
        encode_into(&mut out, facts.forwarded_path());
        let query = match (facts.query, query_credentials) {
            (Some(q), Some(names)) => crate::authn::credential::strip_query(q, names),
            (q, _) => q.map(std::borrow::Cow::Borrowed),
        };
        if let Some(q) = query {
            out.push_str("%3F");
            encode_into(&mut out, &q);
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// A browser navigation: it can follow a redirect to a login page and come back.
fn is_navigation(facts: &RequestFacts<'_>) -> bool {
    (facts.method == http::Method::GET || facts.method == http::Method::HEAD)
        && facts
            .headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(accepts_html)
}

/// Whether an `Accept` value lists `text/html` without refusing it (`q=0`).
fn accepts_html(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        parts
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("text/html"))
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// `login_url` is an absolute `http(s)` URL or an absolute path, without a fragment, and
/// usable as a header value.
fn check_login_url(url: &str) -> Result<(), String> {
    if url.contains('#') {
        return Err(format!("`{url}`: a fragment is never sent to a server"));
    }
    if HeaderValue::from_str(url).is_err() || url.bytes().any(|b| b == b' ') {
        return Err(format!(
            "`{url}`: spaces and control or non-ASCII characters must be percent-encoded"
        ));
    }
    let uri: http::Uri = url.parse().map_err(|_| {
        format!("`{url}` is not an absolute URL (`https://…`) nor a path starting with `/`")
    })?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        Some(_) => Err(format!("`{url}`: only http and https URLs with a host")),
        None if url.starts_with('/') && !url.starts_with("//") => Ok(()),
        None => Err(format!(
            "`{url}`: an absolute URL (`https://…`) or a path starting with `/`"
        )),
    }
}

/// RFC 3986 unreserved characters: never percent-encoded.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `s` percent-encoded as one query value (everything but unreserved characters).
fn encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawDenial {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn compiles_status_login_and_body() {
        let d = Denial::compile(&raw(
            "status: 404\nlogin_url: https://login.example.com/start?x=1\nbody: {help: \"ask #platform\", n: 2}\n",
        ))
        .ok();
        let d = d.as_ref();
        assert_eq!(d.and_then(|d| d.status), Some(StatusCode::NOT_FOUND));
        assert_eq!(
            d.and_then(|d| d.login.as_ref()).map(|l| &*l.prefix),
            Some("https://login.example.com/start?x=1&rd=")
        );
        assert_eq!(
            d.and_then(|d| d.extra.as_deref()),
            Some(r##""help":"ask #platform","n":2"##)
        );
    }

    #[test]
    fn refuses_each_mistake() {
        let cases = [
            ("status: 401\n", "status"),
            ("status: 500\n", "status"),
            ("status: 302\n", "status"),
            ("login_url: login.example.com\n", "login_url"),
            ("login_url: //evil.example/\n", "login_url"),
            ("login_url: javascript:alert(1)\n", "login_url"),
            ("login_url: https://l.example/#frag\n", "login_url"),
            ("login_url: \"https://l.example/a b\"\n", "login_url"),
            ("return_param: rd\n", "return_param"),
            ("login_url: /login\nreturn_param: \"a&b\"\n", "return_param"),
            ("body: {error: mine}\n", "body"),
            ("body: {request_id: mine}\n", "body"),
        ];
        for (yaml, field) in cases {
            let errs = Denial::compile(&raw(yaml)).err().unwrap_or_default();
            assert!(
                errs.iter().any(|e| e.field == field),
                "{yaml:?}: expected an error on {field}, got {errs:?}"
            );
        }
    }

    #[test]
    fn html_is_accepted_unless_refused() {
        for (accept, want) in [
            ("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8", true),
            ("TEXT/HTML", true),
            ("application/json, text/html;q=0.1", true),
            ("application/json", false),
            ("text/html;q=0, application/json", false),
            ("text/html; q=0.0", false),
            ("text/htmlx", false),
        ] {
            assert_eq!(accepts_html(accept), want, "{accept}");
        }
    }

    #[test]
    fn encodes_return_address_as_one_value() {
        let mut out = String::new();
        encode_into(&mut out, "/a b/c?d=e&f=g#h");
        assert_eq!(out, "%2Fa%20b%2Fc%3Fd%3De%26f%3Dg%23h");
    }
}
