//! Identity headers: trusted headers the gateway sets on an allowed request, rendered from
//! templates compiled at load (`x-user-id: "{principal.id}"`).
//!
//! Invariants:
//! - Every configured identity header name (from any rule) is removed from every client
//!   request, in every `_`/`-` and case spelling, before the rule's own are added
//!   ([`crate::authz::spoofable::Spoofable`]); a client can never supply one.
//! - A header whose template refers to something absent (no principal, no such claim, an
//!   object claim) is not set at all, rather than set empty.
//! - A rendered value that is not visible ASCII (CR, LF, control characters, non-ASCII) is
//!   never forwarded: the header is left out and counted.

use crate::config::FieldError;
use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::authn::principal::{Principal, PrincipalKind, lookup};

/// The identity headers of one rule: the global ones merged with the rule's overrides.
///
/// Why rendered once per principal: a cached credential's headers are the same on every
/// request, and rendering (a string per header, its checks, a header value) was done on each.
/// What depends only on the principal is kept with it ([`Principal::derived`], keyed by this
/// set's `id`); `{client.ip}` and `{rule.name}` are rendered per request.
/// Regression: tests::principal_parts_are_rendered_once_per_principal
#[derive(Debug, Clone, Default)]
pub struct IdentityHeaders {
    headers: Box<[(HeaderName, Template)]>,
    /// Unique to this compiled set (never an address, which a later set could reuse).
    id: u64,
    /// Per header, whether its template reads the principal and nothing of the request
    /// (decided at compile time).
    per_principal: Box<[bool]>,
}

/// One header's rendering.
#[derive(Debug, Clone)]
enum Rendered {
    Set(HeaderValue),
    /// Absent or empty: not set.
    Unset,
    /// A value with forbidden characters, or an ambiguous list element: left out, counted.
    Refused,
}

/// A principal's rendered headers, kept with it.
struct Kept(Box<[Rendered]>);

impl crate::authn::principal::Weigh for Kept {
    fn weight(&self) -> usize {
        let alloc = |n: usize| n.max(1).next_multiple_of(16);
        // A value's bytes and, once cloned into a request, the shared header of its buffer.
        let values: usize = self
            .0
            .iter()
            .map(|r| match r {
                Rendered::Set(v) => alloc(v.len()) + alloc(32),
                _ => 0,
            })
            .sum();
        std::mem::size_of::<Self>() + alloc(std::mem::size_of_val(&*self.0)) + values
    }
}

/// Ids of compiled [`IdentityHeaders`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A compiled template: literal text and variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Box<[Part]>,
    /// The punctuation its literal text separates values with (`;` and `=` in
    /// `id={principal.id};tenant={principal.tenant}`): a value holding one is refused.
    delimiters: Box<[char]>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(Box<str>),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq)]
enum Var {
    PrincipalId,
    PrincipalKind,
    PrincipalAuthenticator,
    PrincipalIssuer,
    PrincipalTenant,
    PrincipalScopes,
    PrincipalRoles,
    ApiKeyId,
    Claim(Box<[Box<str>]>),
    ClientIp,
    RuleName,
}

/// What a rendering needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The principal, if authenticated.
    pub principal: Option<&'a Principal>,
    /// The client address.
    pub client_ip: IpAddr,
    /// The deciding rule's name.
    pub rule: &'a str,
}

/// Headers the gateway reserves: an identity header may not replace them.
const RESERVED: &[&str] = &[
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "x-request-id",
];

/// Why a name is the gateway's own to write, for an identity header or the assertion's:
/// its namespace (the assertion, the doors' answers) or the trace context it writes after
/// the identity headers. (A delegate's header may not be in the namespace either, and `check`
/// warns about one naming the trace context: `config::compile::limits`.)
///
/// Why: an assertion named `traceparent` never reached the upstream, and an identity header
/// `x-portcullis-assertion` lost to the assertion, both silently.
/// Regression: tests::reserved_names_are_refused
pub fn gateway_owned(h: &HeaderName) -> Option<&'static str> {
    let dashed = fold_name(h.as_str());
    if dashed.starts_with("x-portcullis-") {
        Some("is in the gateway's own namespace (x-portcullis-*); choose another name")
    } else if dashed == "traceparent" || dashed == "tracestate" {
        Some("is the trace context the gateway writes; choose another name")
    } else {
        None
    }
}

// === impl Template ===

impl Template {
    /// Parses `text {var} text`; `{{` and `}}` are literal braces.
    pub fn parse(s: &str) -> Result<Self, String> {
        // Why: checked over the whole text, variable names included: `{claims.e\t\0}` parsed
        // as a claim path holding control bytes. Found by fuzzing (fuzz/ `identity`).
        // Regression: tests::control_characters_refused_inside_variables
        if s.chars().any(char::is_control) {
            return Err("control characters are not allowed in a template".into());
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("unclosed `{{{name}`")),
                        }
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit).into()));
                    }
                    parts.push(Part::Var(parse_var(name.trim())?));
                }
                '}' => return Err("unmatched `}` (write `}}` for a literal brace)".into()),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit.into()));
        }
        if !s.is_ascii() {
            return Err("header values are ASCII; write the text in ASCII".into());
        }
        // `.`, `-` and `_` are left out: they are parts of names (`{principal.id}@corp.example`)
        // more often than separators. A space is one (`{principal.id} {principal.tenant}`).
        let mut delimiters: Vec<char> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Literal(l) => Some(l.chars()),
                Part::Var(_) => None,
            })
            .flatten()
            .filter(|c| (c.is_ascii_punctuation() && !matches!(c, '.' | '-' | '_')) || *c == ' ')
            .collect();
        delimiters.sort_unstable();
        delimiters.dedup();
        Ok(Self {
            parts: parts.into(),
            delimiters: delimiters.into(),
        })
    }

    /// The value as JSON, for a signed assertion: a template that is one variable keeps the
    /// variable's shape (a claim as it is, scopes and roles as arrays); anything else is the
    /// rendered string. `None` when a variable is absent, or a value in a longer template is
    /// ambiguous ([`push_element`], [`push_scalar`]).
    ///
    /// Why one variable is taken as it is: JSON trims nothing, and the whitespace check meant
    /// for headers dropped `sub` from the assertion of a principal ` alice` (and every such
    /// principal got the same token). Regression: tests::assertion_values_are_exact
    pub fn render_json(&self, cx: &Context<'_>) -> Option<Value> {
        if let [Part::Var(v)] = &*self.parts
            && let Some(p) = cx.principal
        {
            let strings = |items: &[Box<str>]| {
                Value::Array(items.iter().map(|s| Value::from(&**s)).collect())
            };
            match v {
                Var::Claim(path) => return lookup(&p.claims, path).cloned(),
                Var::PrincipalId => return Some(Value::from(&*p.id)),
                Var::PrincipalIssuer => return p.issuer.as_deref().map(Value::from),
                Var::PrincipalTenant => return p.tenant.as_deref().map(Value::from),
                Var::ApiKeyId => return p.api_key_id.as_deref().map(Value::from),
                Var::PrincipalScopes => return Some(strings(&p.scopes)),
                Var::PrincipalRoles => return Some(strings(&p.roles)),
                _ => {}
            }
        }
        self.render(cx).ok().map(Value::String)
    }

    /// Whether it reads the principal and nothing of the request.
    fn per_principal(&self) -> bool {
        let mut reads_principal = false;
        for part in &*self.parts {
            match part {
                Part::Literal(_) => {}
                Part::Var(Var::ClientIp | Var::RuleName) => return false,
                Part::Var(_) => reads_principal = true,
            }
        }
        reads_principal
    }

    /// The value, or why there is none.
    pub fn render(&self, cx: &Context<'_>) -> Result<String, Miss> {
        let mut out = String::new();
        for part in &*self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) => {
                    let from = out.len();
                    render_var(v, cx, &mut out)?;
                    // Why: `id={principal.id};tenant={principal.tenant}` with a `sub` of
                    // `alice;tenant=root` read as tenant `root` to a parser taking the first.
                    // Regression: tests::a_value_holding_its_templates_delimiter_is_refused
                    if out[from..].contains(&*self.delimiters) {
                        return Err(Miss::Ambiguous);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "principal.id" => Var::PrincipalId,
        "principal.kind" => Var::PrincipalKind,
        "principal.authenticator" => Var::PrincipalAuthenticator,
        "principal.issuer" => Var::PrincipalIssuer,
        "principal.tenant" => Var::PrincipalTenant,
        "principal.scopes" => Var::PrincipalScopes,
        "principal.roles" => Var::PrincipalRoles,
        "apikey.id" => Var::ApiKeyId,
        "client.ip" => Var::ClientIp,
        "rule.name" => Var::RuleName,
        other => match other.strip_prefix("claims.") {
            Some(path) if !path.is_empty() && !path.split('.').any(str::is_empty) => {
                Var::Claim(path.split('.').map(Into::into).collect())
            }
            _ => {
                return Err(format!(
                    "unknown variable `{{{other}}}`: use principal.id, principal.kind, principal.authenticator, principal.issuer, principal.tenant, principal.scopes, principal.roles, apikey.id, claims.<path>, client.ip or rule.name"
                ));
            }
        },
    })
}

/// Why a variable renders nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Absent (no principal, no such claim, an empty list): the header is not set.
    Absent,
    /// A list element that would read as two, or as none, once joined (it is empty, holds
    /// the separator, or has whitespace at its ends): the header is left out and counted.
    Ambiguous,
}

/// Appends one element of a joined list, refusing one an upstream would split or trim
/// differently. Why: joined, the role `admin, user` is indistinguishable from two roles.
/// Regression: tests::joined_elements_are_unambiguous
fn push_element(out: &mut String, item: &str, sep: char) -> Result<(), Miss> {
    let bad = item.is_empty()
        || item.starts_with(char::is_whitespace)
        || item.ends_with(char::is_whitespace)
        || item.contains(sep)
        || (sep == ' ' && item.contains(char::is_whitespace));
    if bad {
        return Err(Miss::Ambiguous);
    }
    out.push_str(item);
    Ok(())
}

/// Appends a principal's or claim's text, refusing one with whitespace at its ends. Why: HTTP
/// and most parsers trim it, so a token whose `sub` is ` alice` reached the upstream as
/// `alice` (and `user  alice` read as `user alice`), while the gateway itself
/// (`params.id == principal.id`) held it to be someone else.
/// Regression: tests::values_with_spaces_at_their_ends_are_refused
///
/// Why `,` too: an id or tenant `acme,root` reads as two to an upstream splitting the header
/// as a list, as a string claim holding one does ([`claim_text`]).
/// Regression: tests::a_string_claim_holding_a_comma_is_refused
fn push_scalar(out: &mut String, text: &str) -> Result<(), Miss> {
    if text.starts_with(char::is_whitespace)
        || text.ends_with(char::is_whitespace)
        || text.contains(',')
    {
        return Err(Miss::Ambiguous);
    }
    out.push_str(text);
    Ok(())
}

fn render_var(v: &Var, cx: &Context<'_>, out: &mut String) -> Result<(), Miss> {
    let join = |items: &[Box<str>], sep: char, out: &mut String| {
        if items.is_empty() {
            return Err(Miss::Absent);
        }
        for (i, s) in items.iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            push_element(out, s, sep)?;
        }
        Ok(())
    };
    match v {
        Var::ClientIp => crate::request::facts::push_ip(out, cx.client_ip),
        Var::RuleName => out.push_str(cx.rule),
        v => {
            let p = cx.principal.ok_or(Miss::Absent)?;
            match v {
                Var::PrincipalId => push_scalar(out, &p.id)?,
                Var::PrincipalKind => out.push_str(match p.kind {
                    PrincipalKind::User => "user",
                    PrincipalKind::Machine => "machine",
                }),
                Var::PrincipalAuthenticator => out.push_str(&p.authenticator),
                Var::PrincipalIssuer => push_scalar(out, p.issuer.as_deref().ok_or(Miss::Absent)?)?,
                Var::PrincipalTenant => push_scalar(out, p.tenant.as_deref().ok_or(Miss::Absent)?)?,
                Var::PrincipalScopes => join(&p.scopes, ' ', out)?,
                Var::PrincipalRoles => join(&p.roles, ',', out)?,
                Var::ApiKeyId => push_scalar(out, p.api_key_id.as_deref().ok_or(Miss::Absent)?)?,
                Var::Claim(path) => claim_text(lookup(&p.claims, path).ok_or(Miss::Absent)?, out)?,
                Var::ClientIp | Var::RuleName => {}
            }
        }
    }
    Ok(())
}

/// Strings as they are, numbers and booleans as JSON, arrays of those joined with `,` (each
/// element unambiguous, see [`push_element`]). A string holding `,` is refused as an
/// element holding it is: once in a header, one string `g1,admin` and the list `[g1, admin]`
/// are the same text.
///
/// Why: `x-user-groups: "{claims.groups}"` refused `["g1,admin"]` but sent the string
/// `"g1,admin"` (an IdP's single group, named by the user) as is, and an upstream splitting
/// the header read the group `admin`.
/// Regression: tests::a_string_claim_holding_a_comma_is_refused
fn claim_text(v: &Value, out: &mut String) -> Result<(), Miss> {
    match v {
        Value::String(s) if s.contains(',') => return Err(Miss::Ambiguous),
        Value::String(s) => push_scalar(out, s)?,
        // Why: serde_json reads an integer past u64 as a float, and two such claims
        // (18446744073709551617, ...618) rendered as one `1.8446744073709552e+19`: a number
        // no longer exact names nobody in particular.
        // Regression: tests::an_inexact_number_is_refused
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.abs() >= 9_007_199_254_740_992.0)
                && n.is_f64() =>
        {
            return Err(Miss::Ambiguous);
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Array(items) if items.is_empty() => return Err(Miss::Absent),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Value::String(s) => push_element(out, s, ',')?,
                    Value::Array(_) | Value::Object(_) | Value::Null => return Err(Miss::Absent),
                    scalar => claim_text(scalar, out)?,
                }
            }
        }
        Value::Object(_) | Value::Null => return Err(Miss::Absent),
    }
    Ok(())
}

/// A header name as frameworks read it: lower case, `_` and `.` as `-`
/// ([`crate::authz::spoofable::dashed`]).
pub fn fold_name(name: &str) -> String {
    crate::authz::spoofable::dashed(&name.to_ascii_lowercase()).into_owned()
}

// === impl IdentityHeaders ===

impl IdentityHeaders {
    /// Compiles `(name, template)` pairs; errors are (name, message).
    pub fn compile<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut headers = Vec::new();
        let mut folded: Vec<(String, &str)> = Vec::new();
        for (name, template) in pairs {
            let header = match check_name(name) {
                // Why: the gateway's own names (the identity assertion, the doors' answers)
                // won over an identity header spelled like them, silently.
                // Regression: tests::reserved_names_are_refused
                Ok(h) if let Some(why) = gateway_owned(&h) => {
                    errors.push(FieldError::new(name.to_owned(), format!("`{name}` {why}")));
                    continue;
                }
                Ok(h) => h,
                Err(m) => {
                    errors.push(FieldError::new(name.to_owned(), m));
                    continue;
                }
            };
            // Why: `X-User` and `x_user` are one header to the frameworks that fold `_` and
            // case; both were accepted, one value picked silently and the other spelling sent
            // as well. Regression: tests::spellings_of_one_name_are_an_error
            let fold = fold_name(name);
            if let Some((_, first)) = folded.iter().find(|(f, _)| *f == fold) {
                errors.push(FieldError::new(
                    name.to_owned(),
                    format!(
                        "the same header as `{first}` to an upstream that folds `_` and case: name it once"
                    ),
                ));
                continue;
            }
            folded.push((fold, name));
            match Template::parse(template) {
                Ok(t) => headers.push((header, t)),
                Err(m) => errors.push(FieldError::new(name.to_owned(), m)),
            }
        }
        if errors.is_empty() {
            let per_principal = headers
                .iter()
                .map(|(_, t): &(_, Template)| t.per_principal())
                .collect();
            Ok(Self {
                headers: headers.into(),
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                per_principal,
            })
        } else {
            Err(errors)
        }
    }

    /// The header names.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter().map(|(h, _)| h)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Renders every header; returns the headers set (with room for `headroom` more) and how
    /// many values were refused.
    pub fn render(
        &self,
        cx: &Context<'_>,
        headroom: usize,
    ) -> (Vec<(HeaderName, HeaderValue)>, usize) {
        let kept = match cx.principal {
            Some(p) if self.per_principal.contains(&true) => p
                .derived
                .keyed(self.id, || {
                    Kept(
                        self.headers
                            .iter()
                            .zip(&self.per_principal)
                            .map(|((_, t), &kept)| match kept {
                                true => render_one(t, cx),
                                false => Rendered::Unset,
                            })
                            .collect(),
                    )
                })
                .map(|k| &k.0),
            _ => None,
        };
        let mut out = Vec::with_capacity(self.headers.len() + headroom);
        let mut refused = 0;
        for (i, ((name, t), &per_principal)) in
            self.headers.iter().zip(&self.per_principal).enumerate()
        {
            let rendered = match kept.and_then(|k| k.get(i)) {
                Some(r) if per_principal => r.clone(),
                _ => render_one(t, cx),
            };
            match rendered {
                Rendered::Set(v) => out.push((name.clone(), v)),
                Rendered::Unset => {}
                Rendered::Refused => refused += 1,
            }
        }
        (out, refused)
    }
}

/// One header's value for `cx`.
fn render_one(t: &Template, cx: &Context<'_>) -> Rendered {
    let text = match t.render(cx) {
        // Why: an empty value is no value; documented as not set.
        // Regression: tests::empty_values_are_not_set
        Ok(text) if text.is_empty() => return Rendered::Unset,
        Ok(text) => text,
        Err(Miss::Absent) => return Rendered::Unset,
        Err(Miss::Ambiguous) => return Rendered::Refused,
    };
    // Visible ASCII and spaces only: no CR, LF, control or non-ASCII bytes upstream.
    // No space at the ends either (HTTP trims them; see `push_scalar`).
    let clean = !text.starts_with(' ')
        && !text.ends_with(' ')
        && text.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
    match HeaderValue::try_from(text) {
        Ok(v) if clean => Rendered::Set(v),
        _ => Rendered::Refused,
    }
}

/// A valid, lowercase, non-reserved header name.
pub fn check_name(name: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))?;
    let dashed = fold_name(h.as_str());
    if RESERVED.contains(&dashed.as_str()) || dashed.starts_with(':') {
        return Err(format!(
            "`{name}` is set by the gateway or the protocol; choose another name"
        ));
    }
    use crate::authz::spoofable::{Family, family};
    if matches!(
        family(&dashed),
        Some(Family::Override | Family::Forwarding | Family::Claim | Family::Framing)
    ) {
        return Err(format!(
            "`{name}` is a forwarding or override header upstreams already read; choose another name"
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn principal() -> Principal {
        Principal {
            id: "alice".into(),
            kind: PrincipalKind::User,
            authenticator: Arc::from("users"),
            issuer: Some("https://iss".into()),
            scopes: vec!["read".into(), "write".into()].into(),
            roles: vec!["admin".into(), "ops".into()].into(),
            tenant: Some("acme".into()),
            api_key_id: None,
            claims: json!({"email": "a@x", "n": 3, "ok": true, "groups": ["a", "b"], "obj": {"k": 1}, "evil": "a\r\nx-admin: 1", "name": "José"})
                .as_object()
                .unwrap()
                .clone(),
            expires_at: None,
            valid_until: None,
            derived: Default::default(),
        }
    }

    fn render(t: &str, p: Option<&Principal>) -> Option<String> {
        Template::parse(t)
            .unwrap()
            .render(&Context {
                principal: p,
                client_ip: "192.0.2.1".parse().unwrap(),
                rule: "r",
            })
            .ok()
    }

    fn render_headers(h: &IdentityHeaders, p: &Principal) -> (Vec<(String, String)>, usize) {
        let (set, refused) = h.render(
            &Context {
                principal: Some(p),
                client_ip: "192.0.2.1".parse().unwrap(),
                rule: "r",
            },
            0,
        );
        let set = set
            .into_iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        (set, refused)
    }

    #[test]
    fn spellings_of_one_name_are_an_error() {
        let errors = IdentityHeaders::compile([
            ("X-User", "{principal.id}"),
            ("x-user", "{principal.id}"),
            ("x_user", "{principal.id}"),
            ("x-user-roles", "{principal.roles}"),
        ])
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["x-user", "x_user"]);
        assert!(
            errors[1].message.contains("the same header as `X-User`"),
            "{errors:?}"
        );
        assert!(IdentityHeaders::compile([("x-user", "a"), ("x-users", "b")]).is_ok());
    }

    #[test]
    fn joined_elements_are_unambiguous() {
        let h = IdentityHeaders::compile([
            ("x-roles", "{principal.roles}"),
            ("x-scopes", "{principal.scopes}"),
            ("x-groups", "{claims.groups}"),
        ])
        .unwrap();
        // Elements each render as one; an element that would read as two (or none, or be
        // trimmed differently) refuses its header.
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            serde_json::Value,
            &'a [(&'a str, &'a str)],
            usize,
        );
        let cases: &[Case<'_>] = &[
            (
                &["admin", "ops"],
                &["read", "write"],
                json!(["a", 1, true]),
                &[
                    ("x-roles", "admin,ops"),
                    ("x-scopes", "read write"),
                    ("x-groups", "a,1,true"),
                ],
                0,
            ),
            (
                &["admin, user"],
                &["read"],
                json!(["a"]),
                &[("x-scopes", "read"), ("x-groups", "a")],
                1,
            ),
            (&["admin,user"], &["read write"], json!(["a,b"]), &[], 3),
            (&["", "x"], &["a\tb"], json!(["", "b"]), &[], 3),
            (
                &[" admin"],
                &["read"],
                json!(["b "]),
                &[("x-scopes", "read")],
                2,
            ),
            (
                &["a b"],
                &["x"],
                json!([]),
                &[("x-roles", "a b"), ("x-scopes", "x")],
                0,
            ),
        ];
        for (roles, scopes, groups, want, refused) in cases {
            let mut p = principal();
            p.roles = roles.iter().map(|r| Box::<str>::from(*r)).collect();
            p.scopes = scopes.iter().map(|r| Box::<str>::from(*r)).collect();
            p.claims.insert("groups".into(), groups.clone());
            let (set, n) = render_headers(&h, &p);
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            assert_eq!((set, n), (want, *refused), "{roles:?} {scopes:?} {groups}");
        }
    }

    /// A string claim holding `,` reads, once in a header, as the list it is not: refused, as
    /// an element holding it is; other claims and headers go on.
    #[test]
    fn a_string_claim_holding_a_comma_is_refused() {
        let h = IdentityHeaders::compile([
            ("x-groups", "{claims.groups}"),
            ("x-user-id", "{principal.id}"),
            ("x-tenant-id", "{principal.tenant}"),
        ])
        .unwrap();
        for (groups, want, refused) in [
            (
                json!("g1"),
                &[
                    ("x-groups", "g1"),
                    ("x-user-id", "alice"),
                    ("x-tenant-id", "acme"),
                ][..],
                0,
            ),
            (
                json!("g1,admin"),
                &[("x-user-id", "alice"), ("x-tenant-id", "acme")][..],
                1,
            ),
            (
                json!(["g1", "admin"]),
                &[
                    ("x-groups", "g1,admin"),
                    ("x-user-id", "alice"),
                    ("x-tenant-id", "acme"),
                ][..],
                0,
            ),
        ] {
            let mut p = principal();
            p.claims.insert("groups".into(), groups.clone());
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            assert_eq!(render_headers(&h, &p), (want, refused), "{groups}");
        }
        // An id or tenant holding one, likewise.
        let mut p = principal();
        p.id = "alice,bob".into();
        p.tenant = Some("acme,root".into());
        p.claims.insert("groups".into(), json!("g1"));
        assert_eq!(
            render_headers(&h, &p),
            (vec![("x-groups".to_owned(), "g1".to_owned())], 2)
        );
    }

    /// A value holding the punctuation its template separates values with is refused: it would
    /// add a field of its own. `.`, `-` and `_` are parts of names, not separators.
    #[test]
    fn a_value_holding_its_templates_delimiter_is_refused() {
        let h = IdentityHeaders::compile([
            ("x-who", "id={principal.id};tenant={claims.tenant}"),
            ("x-mail", "{principal.id}@corp.example"),
        ])
        .unwrap();
        for (id, tenant, want, refused) in [
            (
                "alice.b-c_d",
                "acme",
                &[
                    ("x-mail", "alice.b-c_d@corp.example"),
                    ("x-who", "id=alice.b-c_d;tenant=acme"),
                ][..],
                0,
            ),
            // Not `x-mail`'s delimiter: it adds no field there.
            (
                "alice;tenant=root",
                "acme",
                &[("x-mail", "alice;tenant=root@corp.example")][..],
                1,
            ),
            (
                "alice",
                "acme;id=root",
                &[("x-mail", "alice@corp.example")][..],
                1,
            ),
            (
                "bob@evil",
                "acme",
                &[("x-who", "id=bob@evil;tenant=acme")][..],
                1,
            ),
        ] {
            let mut p = principal();
            p.id = id.into();
            p.claims.insert("tenant".into(), json!(tenant));
            let (mut set, n) = render_headers(&h, &p);
            set.sort();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect();
            assert_eq!((set, n), (want, refused), "{id} {tenant}");
        }
    }

    /// An integer past what a float holds exactly (serde_json reads it as one) names nobody
    /// in particular: refused; exact numbers render as they are.
    #[test]
    fn an_inexact_number_is_refused() {
        let h = IdentityHeaders::compile([("x-n", "{claims.n}")]).unwrap();
        for (n, want) in [
            (
                json!(18_446_744_073_709_551_615_u64),
                Some("18446744073709551615"),
            ),
            (json!(-42), Some("-42")),
            (json!(1.5), Some("1.5")),
            (
                serde_json::from_str::<serde_json::Value>("18446744073709551617").unwrap(),
                None,
            ),
        ] {
            let mut p = principal();
            p.claims.insert("n".into(), n.clone());
            let (set, refused) = render_headers(&h, &p);
            match want {
                Some(v) => assert_eq!(set, [("x-n".to_owned(), v.to_owned())], "{n}"),
                None => assert_eq!((set.len(), refused), (0, 1), "{n}"),
            }
        }
    }

    /// A value HTTP would trim is refused: the upstream would read another principal than the
    /// one the gateway decided on.
    #[test]
    fn values_with_spaces_at_their_ends_are_refused() {
        let h = IdentityHeaders::compile([
            ("x-user-id", "{principal.id}"),
            ("x-tenant-id", "{claims.tenant}"),
            ("x-who", "user {principal.id}"),
        ])
        .unwrap();
        for (id, tenant, want, refused) in [
            (" alice", "acme", &[("x-tenant-id", "acme")][..], 2),
            ("alice ", "acme", &[("x-tenant-id", "acme")][..], 2),
            (
                "alice",
                "acme ",
                &[("x-user-id", "alice"), ("x-who", "user alice")][..],
                1,
            ),
            // Inside, a space is kept, but not where the template separates with one.
            ("al ice", " acme", &[("x-user-id", "al ice")][..], 2),
        ] {
            let mut p = principal();
            p.id = id.into();
            p.claims.insert("tenant".into(), json!(tenant));
            let (set, n) = render_headers(&h, &p);
            let mut set: Vec<_> = set;
            set.sort();
            let mut want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            want.sort();
            assert_eq!((set, n), (want, refused), "{id:?} {tenant:?}");
        }
    }

    #[test]
    fn assertion_values_are_exact() {
        let mut p = principal();
        p.id = " alice".into();
        p.claims.insert("tenant".into(), json!("acme "));
        let cx = Context {
            principal: Some(&p),
            client_ip: "192.0.2.1".parse().unwrap(),
            rule: "r",
        };
        let json = |t: &str| Template::parse(t).unwrap().render_json(&cx);
        assert_eq!(json("{principal.id}"), Some(json!(" alice")));
        assert_eq!(json("{claims.tenant}"), Some(json!("acme ")));
        assert_eq!(json("{principal.issuer}"), Some(json!("https://iss")));
        // In a longer template the value would be read trimmed: left out, as in a header.
        assert_eq!(json("user {principal.id}"), None);
    }

    #[test]
    fn empty_values_are_not_set() {
        let h = IdentityHeaders::compile([
            ("x-scopes", "{principal.scopes}"),
            ("x-roles", "{principal.roles}"),
            ("x-empty", "{claims.empty}"),
            ("x-none", "{claims.none}"),
            ("x-user-id", "{principal.id}"),
        ])
        .unwrap();
        let mut p = principal();
        p.scopes = Box::default();
        p.roles = Box::default();
        p.claims.insert("empty".into(), json!(""));
        p.claims.insert("none".into(), json!([]));
        let (set, refused) = render_headers(&h, &p);
        assert_eq!(set, [("x-user-id".to_owned(), "alice".to_owned())]);
        assert_eq!(refused, 0);
    }

    #[test]
    fn templates_render_every_variable() {
        let p = principal();
        for (t, want) in [
            ("{principal.id}", Some("alice")),
            (
                "user={principal.id};kind={principal.kind}",
                Some("user=alice;kind=user"),
            ),
            ("{principal.scopes}", Some("read write")),
            ("{principal.roles}", Some("admin,ops")),
            ("{principal.tenant}", Some("acme")),
            ("{principal.issuer}", Some("https://iss")),
            ("{principal.authenticator}", Some("users")),
            ("{claims.email}", Some("a@x")),
            ("{claims.n}/{claims.ok}", Some("3/true")),
            ("{claims.groups}", Some("a,b")),
            ("{client.ip} {rule.name}", Some("192.0.2.1 r")),
            ("{{literal}}", Some("{literal}")),
            ("{apikey.id}", None),
            ("{claims.missing}", None),
            ("{claims.obj}", None),
        ] {
            assert_eq!(render(t, Some(&p)).as_deref(), want, "{t}");
        }
        assert_eq!(render("{principal.id}", None), None, "anonymous");
        assert_eq!(render("{client.ip}", None).as_deref(), Some("192.0.2.1"));
    }

    #[test]
    fn bad_templates_are_refused() {
        for t in [
            "{principal.email}",
            "{claims.}",
            "{claims..a}",
            "{open",
            "a}b",
            "é",
        ] {
            assert!(Template::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn control_characters_refused_inside_variables() {
        for t in [
            "u={claims.e\t\0\0\0}",
            "{claims.a\nb}",
            "{principal.id\r}",
            "{\u{7f}claims.a}",
            "x\u{85}y",
            "a\tb",
        ] {
            assert_eq!(
                Template::parse(t),
                Err("control characters are not allowed in a template".into()),
                "{t:?}"
            );
        }
        // Spaces around a name are still fine.
        assert!(Template::parse("{ principal.id }").is_ok());
    }

    #[test]
    fn values_with_cr_lf_or_non_ascii_are_never_set() {
        let h = IdentityHeaders::compile([
            ("x-evil", "{claims.evil}"),
            ("x-name", "{claims.name}"),
            ("x-user-id", "{principal.id}"),
        ])
        .unwrap();
        let p = principal();
        let (set, refused) = h.render(
            &Context {
                principal: Some(&p),
                client_ip: "192.0.2.1".parse().unwrap(),
                rule: "r",
            },
            0,
        );
        assert_eq!(refused, 2);
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].0.as_str(), "x-user-id");
    }

    #[test]
    fn reserved_names_are_refused() {
        for n in [
            "Host",
            "authorization",
            "x_forwarded_for",
            "X-Request-Id",
            "x-original-url",
            "X_Forwarded_Uri",
            "true-client-ip",
            "bad name",
        ] {
            assert!(check_name(n).is_err(), "{n}");
        }
        assert!(check_name("X-User-Id").is_ok());
        for n in [
            "x-portcullis-assertion",
            "X_Portcullis_Status",
            "traceparent",
        ] {
            assert!(
                IdentityHeaders::compile([(n, "{principal.id}")]).is_err(),
                "{n}"
            );
        }
    }

    /// What reads only the principal is rendered once per principal and kept with it; the
    /// client address and the rule name are rendered per request; refusals are counted on
    /// every request as before; each compiled set keeps its own values.
    #[test]
    fn principal_parts_are_rendered_once_per_principal() {
        let h = IdentityHeaders::compile([
            ("x-user-id", "{principal.id}"),
            ("x-client", "{client.ip}"),
            ("x-bad", "{claims.evil}"),
            ("x-rule", "{rule.name}/{principal.tenant}"),
        ])
        .unwrap();
        let p = principal();
        let at = |ip: &str, rule: &'static str| Context {
            principal: Some(&p),
            client_ip: ip.parse().unwrap(),
            rule,
        };
        let text = |v: Vec<(HeaderName, HeaderValue)>| {
            v.into_iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        let (first, refused) = h.render(&at("192.0.2.1", "a"), 0);
        assert_eq!(refused, 1);
        assert_eq!(
            text(first),
            ["x-user-id=alice", "x-client=192.0.2.1", "x-rule=a/acme"]
        );
        // Kept: asking again does not render.
        assert!(
            p.derived
                .keyed::<Kept>(h.id, || panic!("rendered again"))
                .is_some()
        );
        let (second, refused) = h.render(&at("198.51.100.7", "b"), 0);
        assert_eq!(refused, 1);
        assert_eq!(
            text(second),
            ["x-user-id=alice", "x-client=198.51.100.7", "x-rule=b/acme"]
        );
        // Another set on the same principal keeps its own values; past the slots, each set
        // is still rendered right, only not kept.
        for i in 0..6 {
            let other =
                IdentityHeaders::compile([("x-id", "{principal.id}-{principal.kind}")]).unwrap();
            let (v, _) = other.render(&at("192.0.2.1", "a"), 0);
            assert_eq!(text(v), ["x-id=alice-user"], "set {i}");
        }
        assert_eq!(
            text(h.render(&at("192.0.2.1", "a"), 0).0),
            ["x-user-id=alice", "x-client=192.0.2.1", "x-rule=a/acme"]
        );
        // A clone of the principal starts with nothing kept.
        let copy = p.clone();
        assert!(
            copy.derived
                .keyed::<u8>(h.id, || 1)
                .is_some_and(|v| *v == 1)
        );
    }
}
