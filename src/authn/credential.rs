//! Finding a credential in a request: `Authorization: Bearer`, a named header, a named cookie or
//! (opt-in) a query parameter.
//!
//! Invariants: a credential that appears twice with different values, in one place or across
//! the configured places, is refused as ambiguous rather than guessed at (the upstream might
//! read the other one); a malformed `Authorization: Bearer` value is a credential that fails,
//! never an absent one, so it cannot fall through to anonymous access.

use crate::authz::expr::QueryNameReadings;
use crate::authz::spoofable::same_dashed;
use std::borrow::Cow;

use http::{HeaderMap, HeaderName, header};

/// A compiled credential location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A header holding the bare token.
    Header(HeaderName),
    /// A cookie.
    Cookie(Box<str>),
    /// A query parameter.
    Query(Box<str>),
}

/// `Authorization`, as a bearer token's header.
static AUTHORIZATION: HeaderName = header::AUTHORIZATION;

impl CredentialSource {
    /// The header the credential is read from, if one is (not a cookie or query parameter).
    pub fn header(&self) -> Option<&HeaderName> {
        match self {
            Self::Bearer => Some(&AUTHORIZATION),
            Self::Header(h) => Some(h),
            Self::Cookie(_) | Self::Query(_) => None,
        }
    }

    /// How the config spells it, for diagnostics.
    pub fn describe(&self) -> String {
        match self {
            Self::Bearer => "bearer".into(),
            Self::Header(h) => format!("header {h}"),
            Self::Cookie(c) => format!("cookie {c}"),
            Self::Query(q) => format!("query {q}"),
        }
    }
}

/// What a search for a credential found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// Nothing in any configured place.
    Nothing,
    /// One credential (possibly found in several places, always with the same value).
    Token(Cow<'a, str>),
    /// An `Authorization: Bearer` token whose token68 syntax is not checked yet (only from
    /// [`find_deferred`]): [`check_bearer`] checks it.
    Unchecked(&'a [u8]),
    /// Two different credentials, or a repeated `Authorization` header.
    Conflict,
    /// `Authorization: Bearer` with no token or a value outside the token68 syntax.
    Malformed,
}

/// As [`find`], but a lone `Authorization: Bearer` source leaves its token's syntax unchecked
/// ([`Found::Unchecked`]), for a caller that looks it up in the verified-token cache first.
///
/// Why: the token68 scan and the UTF-8 check of a kilobyte token were a twentieth of a cached
/// decision at the doors, and a token the cache holds passed both when it was cached
/// ([`super::cache::TokenCache::get_bearer`]). Lone source only: with several, which failure
/// comes first (malformed, conflict) depends on checking each as it is found.
pub fn find_deferred<'a>(
    sources: &[CredentialSource],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Found<'a> {
    match sources {
        [CredentialSource::Bearer] => bearer_unchecked(headers),
        _ => find(sources, headers, query),
    }
}

/// Looks for a credential in every configured place.
pub fn find<'a>(
    sources: &[CredentialSource],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Found<'a> {
    let mut found: Option<Cow<'a, str>> = None;
    for source in sources {
        let here = match source {
            CredentialSource::Bearer => bearer_unchecked(headers).checked(),
            CredentialSource::Header(name) => single_header(headers, name),
            CredentialSource::Cookie(name) => cookie(headers, name),
            CredentialSource::Query(name) => query_param(query, name),
        };
        match here {
            Found::Nothing => {}
            Found::Token(t) => match &found {
                None => found = Some(t),
                // Why: a gateway that picks one of two tokens and forwards both lets the
                // upstream act on the one that was never verified.
                Some(prev) if *prev != t => return Found::Conflict,
                Some(_) => {}
            },
            other @ (Found::Conflict | Found::Malformed | Found::Unchecked(_)) => return other,
        }
    }
    found.map_or(Found::Nothing, Found::Token)
}

impl Found<'_> {
    /// An unchecked bearer token checked ([`check_bearer`]); anything else as it is.
    pub fn checked(self) -> Self {
        match self {
            Self::Unchecked(token) => check_bearer(token),
            other => other,
        }
    }
}

/// `Authorization: Bearer <token68>`; the scheme is case-insensitive (RFC 9110 §11.1). The
/// token comes back [`Found::Unchecked`].
fn bearer_unchecked(headers: &HeaderMap) -> Found<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Found::Nothing;
    };
    if values.next().is_some() {
        // Regression: tests::duplicate_authorization_is_a_conflict
        return Found::Conflict;
    }
    let bytes = value.as_bytes();
    if !bytes
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"bearer"))
    {
        // Another scheme (Basic, Digest…): not ours to judge, unless the value is not even
        // visible text.
        if value.to_str().is_err() {
            return Found::Malformed;
        }
        // Why: `Basic eHl6,Bearer forged` is two Authorization fields joined (Envoy merges
        // repeated headers so): a conflict at the proxy door, it passed the gRPC door as
        // "another scheme", the bearer token unread and forwarded.
        // Regression: tests::joined_authorization_is_a_conflict
        let joined_bearer = bytes.split(|&b| b == b',').skip(1).any(|element| {
            let element = trim_blanks(element);
            element
                .get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"bearer"))
                && matches!(element.get(6), Some(b' ' | b'\t'))
        });
        return if joined_bearer {
            Found::Conflict
        } else {
            Found::Nothing
        };
    }
    // Why: `Bearertoken` or `Bearer\u{b}token` must not pass as "another scheme" and reach
    // an upstream that splits differently. Regression: tests::malformed_bearer_is_not_absent
    let Some((b' ' | b'\t', rest)) = bytes.get(6..).and_then(<[u8]>::split_first) else {
        return Found::Malformed;
    };
    Found::Unchecked(trim_blanks(rest))
}

/// A bearer token's syntax: token68, or a conflict or a malformed credential.
///
/// Works on bytes in one pass over the token (a token is often a kilobyte): the token68 check
/// implies visible ASCII, so no separate `to_str` pass.
pub fn check_bearer(token: &[u8]) -> Found<'_> {
    if !is_token68(token) {
        // Why: token68 has no comma, so `Bearer a, Bearer b` is two Authorization headers
        // joined (as Envoy and other proxies merge repeated headers): the same conflict as
        // two fields. Looked for only here: a valid token, the common case, has none.
        // Regression: tests::joined_authorization_is_a_conflict
        return if token.contains(&b',') {
            Found::Conflict
        } else {
            Found::Malformed
        };
    }
    match std::str::from_utf8(token) {
        Ok(t) => Found::Token(Cow::Borrowed(t)),
        Err(_) => Found::Malformed,
    }
}

fn trim_blanks(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn single_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Found<'a> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        // Why: alone, another spelling (`X_Api_Key`) is still the credential to a CGI-style
        // upstream; on a request another authenticator allowed it went on unverified, next
        // to identity headers naming someone else. It is a credential nobody verified:
        // ambiguous, as beside the credential.
        // Regression: tests::credentials_in_other_spellings_conflict
        if headers
            .keys()
            .any(|k| same_dashed(k.as_str(), name.as_str()))
        {
            return Found::Conflict;
        }
        return Found::Nothing;
    };
    if values.next().is_some() {
        return Found::Conflict;
    }
    match value.to_str() {
        // Why: Envoy (and other proxies) join repeated headers with a comma, so two
        // `X-Api-Key` fields, a conflict at the proxy, reached the gRPC door as one key that
        // failed to verify (401) instead. No credential a header carries alone has a comma
        // (API keys, tokens).
        // Regression: tests::joined_header_credential_is_a_conflict, tests (it) conformance
        // (`two api keys`)
        Ok(v) if v.contains(',') => Found::Conflict,
        // Why: CGI-style upstreams (PHP, Rack, WSGI) read `X_Api_Key` as `X-Api-Key`: with
        // `x-api-key: K1` and `x_api_key: FORGED` the gateway verified K1 and named its owner
        // while the upstream could read FORGED (which no strip removes). Another spelling
        // beside the credential is a second credential. Regression:
        // tests::credentials_in_other_spellings_conflict
        _ if headers.keys().any(|k| {
            k != name && crate::authz::spoofable::same_dashed(k.as_str(), name.as_str())
        }) =>
        {
            Found::Conflict
        }
        Ok(v) if !v.trim().is_empty() => Found::Token(Cow::Borrowed(v.trim())),
        _ => Found::Malformed,
    }
}

/// Whether some upstream reads the cookie named `k` (as sent) as the cookie `name`, though
/// `k` is not `name`: the same name in another case (ASP.NET Core), percent-encoded, or with
/// PHP's folds (`laravel.session` and `laravel session` are `laravel_session`, `name[a]` an
/// array), as query names fold.
fn cookie_read_as(k: &[u8], name: &QueryNameReadings<'_>) -> bool {
    if k == name.name().as_bytes() {
        return false;
    }
    name.may_be(&decode_lenient(k))
}

/// A query or cookie name as a lenient framework decodes it: each valid `%XX` as its byte,
/// anything else kept as it is, then read as UTF-8 with replacement characters.
///
/// Why not [`decode`]: it gives up on a name with one bad escape or one byte that is not
/// UTF-8, and `access_token%00%ff` was then never compared, while PHP cuts the name at the
/// NUL and reads `access_token`. Regression: tests::credentials_in_other_spellings_conflict
pub fn decode_lenient(k: &[u8]) -> String {
    let mut out = Vec::with_capacity(k.len());
    let mut i = 0;
    while i < k.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            k[i],
            k.get(i + 1).copied().and_then(hex),
            k.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                // Two hex digits: one byte.
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every `name=value` pair over all `Cookie` headers (RFC 6265 §5.4); repeated names must agree.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Found<'a> {
    let mut found: Option<&'a str> = None;
    for value in headers.get_all(header::COOKIE) {
        // Parsed as bytes: one non-ASCII byte elsewhere in the header must not hide our cookie.
        // Why: Envoy joins repeated `Cookie` fields with a comma, which no cookie value may
        // hold (RFC 6265 §4.1.1): a second field's credential hid behind the first at the gRPC
        // door. Regression: tests::joined_cookie_fields_are_read
        for pair in value.as_bytes().split(|b| *b == b';' || *b == b',') {
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.trim_ascii() != name.as_bytes() {
                continue;
            }
            let Ok(v) = std::str::from_utf8(v) else {
                return Found::Malformed;
            };
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            match found {
                Some(prev) if prev != v => return Found::Conflict,
                _ => found = Some(v),
            }
        }
    }
    // Why: ASP.NET Core reads cookie names in any case and PHP decodes them, so with
    // `session=K1; SESSION=FORGED` the gateway verified K1 while the upstream could read
    // FORGED (and only `session` is stripped). Another spelling beside the credential is a
    // second credential; looked for only once one is found.
    // Regression: tests::credentials_in_other_spellings_conflict
    if found.is_some() && {
        let readings = QueryNameReadings::of(name);
        headers.get_all(header::COOKIE).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b';' || *b == b',')
                .filter_map(|pair| pair.iter().position(|b| *b == b'=').map(|eq| &pair[..eq]))
                .any(|k| cookie_read_as(k.trim_ascii(), &readings))
        })
    } {
        return Found::Conflict;
    }
    match found {
        None => Found::Nothing,
        Some("") => Found::Malformed,
        Some(v) => Found::Token(Cow::Borrowed(v)),
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Found<'a> {
    let Some(query) = query else {
        return Found::Nothing;
    };
    let mut found: Option<Cow<'a, str>> = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k).as_deref() != Some(name) {
            continue;
        }
        let Some(v) = decode(v) else {
            return Found::Malformed;
        };
        match &found {
            Some(prev) if *prev != v => return Found::Conflict,
            _ => found = Some(v),
        }
    }
    // Why: frameworks read other spellings as the same parameter (PHP `api.key` and
    // `api key` as `api_key`, arrays `api_key[]`, ASP.NET any case), so with
    // `?api_key=K1&api.key=FORGED` the gateway verified K1 while the upstream could read
    // FORGED. Another spelling beside the credential is a second credential (a name that
    // does not decode is read as itself, never as an ASCII name); looked for only once one
    // is found.
    // Regression: tests::credentials_in_other_spellings_conflict
    // And Rack 2 and older Python split on `;` as well: `?a=1;api_key=F&api_key=K1` carries a
    // second credential the `&` reading does not see. Alone, another spelling is still the
    // credential to those upstreams, and went on unverified beside another authenticator's
    // principal: ambiguous too (a cookie is left alone: another app's `SESSION` cookie on the
    // same site is everyday traffic).
    let readings = QueryNameReadings::of(name);
    let another_spelling = query.split('&').any(|pair| {
        pair.split(';').enumerate().any(|(i, piece)| {
            let k = piece.split_once('=').map_or(piece, |(k, _)| k);
            // The first piece's exact name is the credential read above.
            let exact = decode(k).is_some_and(|d| *d == *name);
            if exact {
                i > 0
            } else {
                readings.may_be(&decode_lenient(k.as_bytes()))
            }
        })
    });
    if another_spelling {
        return Found::Conflict;
    }
    match found {
        None => Found::Nothing,
        Some(v) if v.is_empty() => Found::Malformed,
        Some(v) => Found::Token(v),
    }
}

/// Percent-decodes a query component (`+` is a space); `None` on invalid encoding or UTF-8.
pub fn decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Two hex digits exactly: `from_str_radix` alone would take a sign (`%+5`).
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// token68 (RFC 9110 §11.2): `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_token68(b: &[u8]) -> bool {
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    let body = &b[..b.len() - pad];
    // Bitwise, without early exit, so the loop vectorises.
    !body.is_empty() && body.iter().fold(true, |ok, &c| ok & token68_char(c))
}

#[inline]
fn token68_char(c: u8) -> bool {
    let letter = (c | 0x20).wrapping_sub(b'a') < 26;
    let digit = c.wrapping_sub(b'0') < 10;
    letter
        | digit
        | (c == b'-')
        | (c == b'.')
        | (c == b'_')
        | (c == b'~')
        | (c == b'+')
        | (c == b'/')
}

/// Removes the credential from the headers and returns the query without it, so what was
/// verified is not forwarded (when the authenticator says so, and always for query tokens).
pub fn strip(source: &CredentialSource, headers: &mut HeaderMap) {
    match source {
        CredentialSource::Bearer => {
            headers.remove(header::AUTHORIZATION);
        }
        CredentialSource::Header(name) => {
            // Its other spellings too (`x_api_key`): upstreams read them as the credential.
            let spellings: Vec<HeaderName> = headers
                .keys()
                .filter(|k| same_dashed(k.as_str(), name.as_str()))
                .cloned()
                .collect();
            for k in spellings {
                headers.remove(k);
            }
        }
        CredentialSource::Cookie(name) => match without_cookie(headers, name) {
            None => {
                headers.remove(header::COOKIE);
            }
            Some(kept) => {
                headers.insert(header::COOKIE, kept);
            }
        },
        CredentialSource::Query(_) => {}
    }
}

/// The `Cookie` header value without the cookie `name` (every `Cookie` field joined), or
/// `None` when no other cookie is left.
pub fn without_cookie(headers: &HeaderMap, name: &str) -> Option<http::HeaderValue> {
    let named = |pair: &str| pair.split_once('=').is_some_and(|(k, _)| k.trim() == name);
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        // As `cookie` reads them: a piece holding the cookie after a comma (fields Envoy
        // joined) is taken apart; any other piece stays whole, commas and all.
        .flat_map(|piece| {
            let joined = piece.contains(',') && piece.split(',').any(named);
            // A piece has no `;` left: split on it, it stays whole.
            piece.split(if joined { ',' } else { ';' })
        })
        .filter(|pair| !named(pair))
        .map(|pair| pair.trim().to_owned())
        .filter(|pair| !pair.is_empty())
        .collect();
    if kept.is_empty() {
        return None;
    }
    http::HeaderValue::from_str(&kept.join("; ")).ok()
}

/// The query without any pair that carries one of the names as frameworks read it
/// ([`carries_named`]); `None` when nothing is left, borrowed when none is present.
pub fn strip_query<'q>(query: &'q str, names: &[Box<str>]) -> Option<Cow<'q, str>> {
    let readings = readings_of(names);
    strip_query_pairs(query, |pair| carries_named(pair, &readings))
}

/// How frameworks read each of `names` ([`QueryNameReadings`]), read once for every pair.
pub fn readings_of(names: &[Box<str>]) -> Vec<QueryNameReadings<'_>> {
    names.iter().map(|n| QueryNameReadings::of(n)).collect()
}

/// Whether the raw query pair `pair` carries one of `names`: its key, or the key of a piece
/// after a `;` (Rack 2), decoded, or read as the name the way frameworks read names (case,
/// brackets, PHP's folds: [`QueryNameReadings`]).
pub fn carries_named(pair: &str, names: &[QueryNameReadings<'_>]) -> bool {
    pair.split(';').any(|piece| {
        let k = piece.split_once('=').map_or(piece, |(k, _)| k);
        let lenient = decode_lenient(k.as_bytes());
        names
            .iter()
            .any(|n| decode(k).is_some_and(|d| *d == *n.name()) || n.may_be(&lenient))
    })
}

/// Whether the raw query key `k` decodes to one of `names`.
pub fn is_named(k: &str, names: &[Box<str>]) -> bool {
    decode(k).is_some_and(|k| names.iter().any(|n| **n == *k))
}

/// The query without the pairs whose raw key is `doomed` (`None` when nothing is left);
/// borrowed when none is.
pub fn strip_query_where<'q>(
    query: &'q str,
    doomed: impl Fn(&str) -> bool,
) -> Option<Cow<'q, str>> {
    strip_query_pairs(query, |pair| {
        doomed(pair.split_once('=').map_or(pair, |(k, _)| k))
    })
}

/// The query without the raw pairs `doomed` (`None` when nothing is left); borrowed when none
/// is.
pub fn strip_query_pairs<'q>(
    query: &'q str,
    doomed: impl Fn(&str) -> bool,
) -> Option<Cow<'q, str>> {
    let gone = |pair: &&str| doomed(pair);
    if !query.split('&').any(|p| gone(&p)) {
        return Some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !gone(p)).collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

/// Whether the query may hold a method override (`_method=DELETE`), read cheaply: it names
/// `method` in some case, or has an escape that could spell it. [`is_method_override`] tells
/// which keys are one.
pub fn may_override_method(query: &str) -> bool {
    query.as_bytes().contains(&b'%')
        || query
            .as_bytes()
            .windows(6)
            .any(|w| w.eq_ignore_ascii_case(b"method"))
}

/// Whether some framework reads the raw query key `k` as `_method`, the method override of
/// Symfony (and Laravel), Express's method-override and others: an upstream serving
/// `POST /users/1?_method=DELETE` deletes, where a rule denying `DELETE` decided a POST.
///
/// Also `X-HTTP-Method-Override` in any case: ASP.NET MVC 5 and Web Pages read it from the
/// query of a POST (after the header and the form), so `?X-HTTP-Method-Override=DELETE`
/// reached `[HttpDelete]` actions past a rule denying DELETE.
pub fn is_method_override(k: &str) -> bool {
    static METHOD: std::sync::LazyLock<QueryNameReadings<'static>> =
        std::sync::LazyLock::new(|| QueryNameReadings::of("_method"));
    // Every spelling read as an override names `method` or holds an escape: any other key
    // (the usual query, `page=2`) is told apart without decoding or allocating.
    if !may_override_method(k) {
        return false;
    }
    let name = decode_lenient(k.as_bytes());
    METHOD.may_be(&name) || read_as_aspnet(&name).eq_ignore_ascii_case("x-http-method-override")
}

/// A decoded query key as ASP.NET (System.Web) compares it: `%uXXXX` escapes decoded too, and
/// the letters whose invariant case mapping is ASCII (`ı`, `İ`, `ſ`, the Kelvin sign) read as
/// that letter (`OrdinalIgnoreCase`).
///
/// Why: `?%u0058-HTTP-Method-Override=DELETE` and `?X-HTTP-Method-Overr%C4%B1de=DELETE` were
/// not taken for the override that MVC 5 reads them as. Regression: tests::method_overrides_in_the_query
fn read_as_aspnet(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name.trim();
    while let Some(c) = rest.chars().next() {
        if let Some(hex) = rest
            .strip_prefix("%u")
            .or_else(|| rest.strip_prefix("%U"))
            .and_then(|r| r.get(..4))
            && let Some(decoded) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
        {
            out.push(decoded);
            rest = &rest[6..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.chars()
        .map(|c| match c {
            '\u{131}' | '\u{130}' => 'i',
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            c => c,
        })
        .collect()
}

/// Whether a raw query holds a method override ([`is_method_override`]) under any name.
pub fn query_overrides_method(query: &str) -> bool {
    may_override_method(query) && query.split('&').any(pair_overrides_method)
}

/// Whether the raw query pair `pair` (between two `&`) carries a method override: its key, or
/// the key of a piece after a `;`.
///
/// Why: Rack 2, Bottle and older Python split the query on `;` as well, so
/// `GET /ro/x?a=1;_method=DELETE` reached such an upstream as a DELETE, past a rule allowing
/// only GET, at every door (the `&` reading saw only the key `a`), as `?a=1;api_key=` once
/// carried a second credential. Regression: tests::method_overrides_in_the_query,
/// tests (it) proxy::query_method_override_never_reaches_the_upstream
pub fn pair_overrides_method(pair: &str) -> bool {
    pair.split(';')
        .any(|piece| is_method_override(piece.split_once('=').map_or(piece, |(k, _)| k)))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn decode_takes_two_hex_digits_exactly() {
        assert_eq!(decode("a%41+b").as_deref(), Some("aA b"));
        for bad in ["%+5", "%-1", "%4", "%G0", "%", "%FF"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn tok(s: &str) -> Found<'_> {
        Found::Token(Cow::Borrowed(s))
    }

    #[test]
    fn joined_authorization_is_a_conflict() {
        for v in [
            "Bearer a, Bearer b",
            "Bearer a,b",
            "Bearer a, Basic eA==",
            "Basic eHl6,Bearer forged",
            "Basic eHl6, bearer\tforged",
            "Digest username=\"a\", Bearer x",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(
                find(&[CredentialSource::Bearer], &h, None),
                Found::Conflict,
                "{v}"
            );
        }
    }

    #[test]
    fn other_schemes_are_not_ours() {
        for v in [
            "Basic eHl6",
            "Digest username=\"a\", realm=\"b\", nonce=\"c\"",
            "Basic eHl6, Bearerx",
            "Negotiate YII=",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(
                find(&[CredentialSource::Bearer], &h, None),
                Found::Nothing,
                "{v}"
            );
        }
    }

    #[test]
    fn joined_cookie_fields_are_read() {
        let session = [CredentialSource::Cookie("session".into())];
        for (v, want) in [
            ("a=1,session=tok", tok("tok")),
            ("a=1, session=tok; b=2", tok("tok")),
            ("session=tok,session=other", Found::Conflict),
            ("pref=x,y; b=2", Found::Nothing),
        ] {
            let h = headers(&[("cookie", v)]);
            assert_eq!(find(&session, &h, None), want, "{v}");
        }
        // Cut out as it was read; a piece without it keeps its commas.
        let h = headers(&[("cookie", "a=1,session=tok; pref=x,y")]);
        assert_eq!(without_cookie(&h, "session").unwrap(), "a=1; pref=x,y");
        let h = headers(&[("cookie", "session=tok")]);
        assert_eq!(without_cookie(&h, "session"), None);
    }

    #[test]
    fn a_lone_bearer_source_defers_only_the_syntax() {
        let bearer = [CredentialSource::Bearer];
        let both = [
            CredentialSource::Bearer,
            CredentialSource::Header(HeaderName::from_static("x-token")),
        ];
        for (v, checked) in [
            ("Bearer abc.def", tok("abc.def")),
            ("Bearer a,b", Found::Conflict),
            ("Bearer a b", Found::Malformed),
            ("Bearer ", Found::Malformed),
        ] {
            let h = headers(&[("authorization", v)]);
            let deferred = find_deferred(&bearer, &h, None);
            assert!(matches!(deferred, Found::Unchecked(_)), "{v}");
            assert_eq!(deferred.checked(), checked, "{v}");
            assert_eq!(find(&bearer, &h, None), checked, "{v}");
            assert_eq!(
                find_deferred(&both, &h, None),
                checked,
                "{v}: several sources"
            );
        }
        // What is decided before the token is read is decided as `find` does.
        for v in ["Bearertoken", "Basic eA=="] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(
                find_deferred(&bearer, &h, None),
                find(&bearer, &h, None),
                "{v}"
            );
        }
    }

    #[test]
    fn joined_header_credential_is_a_conflict() {
        let name = HeaderName::from_static("x-api-key");
        let source = [CredentialSource::Header(name)];
        for v in ["pck_a,pck_b", "pck_a, pck_a", ","] {
            let h = headers(&[("x-api-key", v)]);
            assert_eq!(find(&source, &h, None), Found::Conflict, "{v}");
        }
        let h = headers(&[("x-api-key", "pck_a")]);
        assert_eq!(find(&source, &h, None), tok("pck_a"));
    }

    /// Sources, headers, query, and what is found.
    type Case<'a> = (
        &'a [CredentialSource],
        &'a [(&'a str, &'a str)],
        Option<&'a str>,
        Found<'a>,
    );

    #[test]
    fn credentials_in_other_spellings_conflict() {
        let header = [CredentialSource::Header(HeaderName::from_static(
            "x-api-key",
        ))];
        let cookie = [CredentialSource::Cookie("session".into())];
        let query = [CredentialSource::Query("api_key".into())];
        let php = [CredentialSource::Cookie("laravel_session".into())];
        let underscored = [CredentialSource::Header(HeaderName::from_static(
            "x_api_key",
        ))];
        // (sources, headers, query, found)
        let cases: &[Case<'_>] = &[
            (
                &header,
                &[("x-api-key", "k1"), ("x_api_key", "f")],
                None,
                Found::Conflict,
            ),
            (
                &header,
                &[("x-api-key", "k1"), ("X_API-KEY", "k1")],
                None,
                Found::Conflict,
            ),
            (
                &header,
                &[("x-api-key", "k1"), ("x-api.key", "f")],
                None,
                Found::Conflict,
            ),
            (
                &header,
                &[("x-api-key", "k1"), ("x-api-keys", "f")],
                None,
                tok("k1"),
            ),
            (
                &header,
                &[("x-api-key", "k1"), ("x_other", "f")],
                None,
                tok("k1"),
            ),
            // Alone, another spelling is a credential nobody verified.
            (&header, &[("x_api_key", "f")], None, Found::Conflict),
            (&header, &[("x-api-keys", "f")], None, Found::Nothing),
            (
                &cookie,
                &[("cookie", "session=k1; SESSION=f")],
                None,
                Found::Conflict,
            ),
            (
                &cookie,
                &[("cookie", "session=k1; %73ession=f")],
                None,
                Found::Conflict,
            ),
            (
                &cookie,
                &[("cookie", "session=k1"), ("cookie", "Session=k1")],
                None,
                Found::Conflict,
            ),
            (
                &cookie,
                &[("cookie", "session=k1; sessions=x; theme=dark")],
                None,
                tok("k1"),
            ),
            (&cookie, &[("cookie", "SESSION=f")], None, Found::Nothing),
            (
                &cookie,
                &[("cookie", "session.=f; session=k1")],
                None,
                tok("k1"),
            ),
            (
                &php,
                &[("cookie", "laravel.session=f; laravel_session=k1")],
                None,
                Found::Conflict,
            ),
            (
                &php,
                &[("cookie", "laravel session=f; laravel_session=k1")],
                None,
                Found::Conflict,
            ),
            (
                &php,
                &[("cookie", "laravel_session[a]=f; laravel_session=k1")],
                None,
                Found::Conflict,
            ),
            (
                &php,
                &[("cookie", "laravel_session=k1; a%zz=1")],
                None,
                tok("k1"),
            ),
            (
                &php,
                &[("cookie", "laravel_session%00%ff=f; laravel_session=k1")],
                None,
                Found::Conflict,
            ),
            (
                &underscored,
                &[("x_api_key", "k1"), ("x-api-key", "f")],
                None,
                Found::Conflict,
            ),
            (&query, &[], Some("api_key=k1&api.key=f"), Found::Conflict),
            (&query, &[], Some("api_key=k1&api%20key=f"), Found::Conflict),
            (&query, &[], Some("api_key=k1&API_KEY=f"), Found::Conflict),
            (
                &query,
                &[],
                Some("api_key=k1&api_key%5B%5D=f"),
                Found::Conflict,
            ),
            (
                &query,
                &[],
                Some("a=1;api_key=f&api_key=k1"),
                Found::Conflict,
            ),
            (
                &query,
                &[],
                Some("api_key=k1&x=1;API.KEY=f"),
                Found::Conflict,
            ),
            // Read as themselves: never `api_key`.
            (&query, &[], Some("api_key=k1&%zz=1&caf%E9=1"), tok("k1")),
            // PHP cuts a name at NUL, whatever follows.
            (
                &query,
                &[],
                Some("api_key=k1&api_key%00%ff=f"),
                Found::Conflict,
            ),
            (
                &query,
                &[],
                Some("api_key=k1&api_key%00x=f"),
                Found::Conflict,
            ),
            (&query, &[], Some("api_key=k1;x=1"), tok("k1;x=1")),
            (
                &query,
                &[],
                Some("api_key=k1&api_key_hint=x&a=1"),
                tok("k1"),
            ),
            (&query, &[], Some("api.key=f"), Found::Conflict),
            (&query, &[], Some("API_KEY=f"), Found::Conflict),
            (&query, &[], Some("x=1;api_key=f"), Found::Conflict),
            (&query, &[], Some("api_key_hint=x"), Found::Nothing),
        ];
        for (sources, pairs, q, want) in cases {
            let h = headers(pairs);
            assert_eq!(&find(sources, &h, *q), want, "{pairs:?} {q:?}");
        }
    }

    #[test]
    fn method_overrides_in_the_query() {
        for (k, want) in [
            ("_method", true),
            ("_METHOD", true),
            ("%5Fmethod", true),
            ("_m%65thod", true),
            ("_method[]", true),
            (" _method", true),
            ("_method%00%ff", true),
            ("X-HTTP-Method-Override", true),
            ("x-http-method-override", true),
            ("X%2DHTTP-Method-Override", true),
            ("%u0058-HTTP-Method-Override", true),
            ("X-HTTP-Method-Overr%C4%B1de", true),
            ("X-HTTP-Method-Overr%u0131de", true),
            ("%u00", false),
            ("%uZZZZ-method", false),
            ("method", false),
            ("x-http-method", false),
            ("_methods", false),
            ("x_method", false),
        ] {
            assert_eq!(is_method_override(k), want, "{k}");
        }
        assert!(!may_override_method("a=1&b=2"));
        assert!(may_override_method("a=1&_Method=PUT"));
        assert!(query_overrides_method("a=1&_Method=PUT"));
        assert!(query_overrides_method("%5Fmethod"));
        assert!(!query_overrides_method("a=%41&method=PUT&_methods=x"));
        // A piece after a `;` is a pair to Rack 2, Bottle and older Python.
        for q in [
            "a=1;_method=DELETE",
            "a=1;%5Fmethod=DELETE",
            "a=1;x-http-method-override=DELETE&b=2",
            "b=2&a;_METHOD=PUT",
        ] {
            assert!(query_overrides_method(q), "{q}");
        }
        assert!(!query_overrides_method("a=1;method=x;_methods=y"));
        assert_eq!(
            strip_query_where("_method=DELETE&a=1&method=x", is_method_override).as_deref(),
            Some("a=1&method=x")
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "Bearer  abc ",
            "Bearer\tabc",
        ] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(
                find(&[CredentialSource::Bearer], &h, None),
                tok("abc"),
                "{v}"
            );
        }
    }

    #[test]
    fn other_schemes_are_not_bearer_tokens() {
        let h = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(find(&[CredentialSource::Bearer], &h, None), Found::Nothing);
    }

    #[test]
    fn malformed_bearer_is_not_absent() {
        for v in ["Bearer", "Bearer ", "Bearer a b", "Bearer =abc"] {
            let h = headers(&[("authorization", v)]);
            assert_eq!(
                find(&[CredentialSource::Bearer], &h, None),
                Found::Malformed,
                "{v}"
            );
        }
    }

    #[test]
    fn duplicate_authorization_is_a_conflict() {
        let h = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert_eq!(find(&[CredentialSource::Bearer], &h, None), Found::Conflict);
    }

    #[test]
    fn header_and_cookie_must_agree() {
        let sources = [
            CredentialSource::Bearer,
            CredentialSource::Cookie("session".into()),
        ];
        let same = headers(&[
            ("authorization", "Bearer t1"),
            ("cookie", "a=1; session=t1"),
        ]);
        assert_eq!(find(&sources, &same, None), tok("t1"));
        let differ = headers(&[("authorization", "Bearer t1"), ("cookie", "session=t2")]);
        assert_eq!(find(&sources, &differ, None), Found::Conflict);
        let cookie_only = headers(&[("cookie", "x=y"), ("cookie", "session=\"t3\"")]);
        assert_eq!(find(&sources, &cookie_only, None), tok("t3"));
        let twice = headers(&[("cookie", "session=a; session=b")]);
        assert_eq!(find(&sources, &twice, None), Found::Conflict);
        let mut hidden = headers(&[("authorization", "Bearer t1")]);
        hidden.append(
            "cookie",
            HeaderValue::from_bytes(b"session=t2; x=\x80").unwrap(),
        );
        assert_eq!(
            find(&sources, &hidden, None),
            Found::Conflict,
            "a non-ASCII byte hides nothing"
        );
    }

    #[test]
    fn query_parameter_is_decoded_and_must_be_single() {
        let s = [CredentialSource::Query("access_token".into())];
        let h = HeaderMap::new();
        assert_eq!(
            find(&s, &h, Some("a=1&access_token=x%2By")),
            Found::Token(Cow::Owned("x+y".into()))
        );
        assert_eq!(
            find(&s, &h, Some("access_token=a&access_token=b")),
            Found::Conflict
        );
        assert_eq!(find(&s, &h, Some("access_token=%zz")), Found::Malformed);
        assert_eq!(find(&s, &h, Some("other=1")), Found::Nothing);
    }

    #[test]
    fn strip_removes_only_the_credential() {
        let mut h = headers(&[
            ("cookie", "a=1; session=t; b=2"),
            ("authorization", "Bearer t"),
        ]);
        strip(&CredentialSource::Cookie("session".into()), &mut h);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
        strip(&CredentialSource::Bearer, &mut h);
        assert!(h.get("authorization").is_none());
        assert_eq!(
            strip_query(
                "a=1&access_token=x&b=2&token=y",
                &["access_token".into(), "token".into()]
            )
            .as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(
            strip_query("access_token=x", &["access_token".into()]),
            None
        );
        assert!(matches!(
            strip_query("a=1", &["access_token".into()]),
            Some(Cow::Borrowed("a=1"))
        ));
        // Other spellings go too: upstreams read them as the credential.
        assert_eq!(
            strip_query(
                "a=1&API_KEY=x&api.key=y&b=2;api_key=z&api_key_hint=h",
                &["api_key".into()]
            )
            .as_deref(),
            Some("a=1&api_key_hint=h")
        );
        let mut h = headers(&[("x-api-key", "k"), ("x_api_key", "f"), ("x-api-keys", "o")]);
        strip(
            &CredentialSource::Header(HeaderName::from_static("x-api-key")),
            &mut h,
        );
        assert!(h.get("x-api-key").is_none() && h.get("x_api_key").is_none());
        assert_eq!(h.get("x-api-keys").unwrap(), "o");
    }
}
