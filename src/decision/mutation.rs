//! [`HeaderMutation`]: what an allowed request's headers become on the way upstream, computed
//! once in the core so that every door hands back the same change in its own format (the
//! proxy applies it, the gRPC door returns it as `OkHttpResponse`, the HTTP doors as response
//! headers and a list of names to remove).
//!
//! Invariants:
//! - `remove` names every header of the request that a client must not hand an upstream
//!   ([`crate::authz::spoofable::Spoofable`]), in the spelling the request used, and the
//!   verified credential's header when its authenticator strips it.
//! - `set` holds the identity headers (and the signed assertion); a name in both lists is
//!   removed first, then set, so only the gateway's value reaches the upstream.
//! - Nothing here depends on the door.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::authn::Authenticator;
use crate::authn::credential::CredentialSource;
use crate::request::RequestFacts;
use crate::snapshot::Snapshot;

/// The change to an allowed request's headers (and to its response's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMutation {
    /// Headers to set, replacing any value the request had.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove, with every value.
    pub remove: Vec<HeaderName>,
    /// Headers to add to the response the client gets.
    pub response: Vec<(HeaderName, HeaderValue)>,
}

// === impl HeaderMutation ===

impl HeaderMutation {
    /// The mutation for an allowed request: its spoofable headers and (when the authenticator
    /// strips it) its credential removed, `set` (the identity headers) set.
    pub fn compute(
        snapshot: &Snapshot,
        facts: &RequestFacts<'_>,
        authenticator: Option<&Authenticator>,
        set: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        let mut out = Self {
            set,
            remove: Vec::new(),
            response: Vec::new(),
        };
        // Why: one walk over the names present; no allocation unless a header goes.
        // Regression: tests::spoofed_and_credential_headers_are_removed
        for name in facts.headers.keys() {
            if snapshot.spoofable.is_doomed(name, facts.peer_trusted) {
                out.remove.push(name.clone());
            }
        }
        // What was verified here is not replayed upstream when the authenticator says so.
        if let Some(a) = authenticator.filter(|a| a.strip) {
            for source in &*a.sources {
                out.strip_credential(source, facts.headers);
            }
        }
        out
    }

    /// Removes the header carrying `source`'s credential; a cookie is cut out of `Cookie`.
    fn strip_credential(&mut self, source: &CredentialSource, headers: &HeaderMap) {
        let name = match source {
            CredentialSource::Bearer => header::AUTHORIZATION,
            CredentialSource::Header(h) => h.clone(),
            CredentialSource::Cookie(cookie) => {
                if !headers.contains_key(header::COOKIE) {
                    return;
                }
                match crate::authn::credential::without_cookie(headers, cookie) {
                    None => self.push_remove(header::COOKIE),
                    Some(kept) => {
                        self.set.retain(|(n, _)| n != header::COOKIE);
                        self.set.push((header::COOKIE, kept));
                    }
                }
                return;
            }
            // Query credentials are removed from the target the door forwards.
            CredentialSource::Query(_) => return,
        };
        if headers.contains_key(&name) {
            self.push_remove(name);
        }
    }

    fn push_remove(&mut self, name: HeaderName) {
        if !self.remove.contains(&name) {
            self.remove.push(name);
        }
    }

    /// Applies the request side to `headers`: every removal, then every set.
    pub fn apply(self, headers: &mut HeaderMap) {
        for name in self.remove {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty() && self.response.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::request::facts::ConnInfo;

    /// A snapshot with identity header `x-user-id`, a cookie-stripping authenticator and a
    /// trusted proxy network.
    fn snapshot() -> (Snapshot, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(
            dir.path().join("policies/p.yaml"),
            "rules:\n  - {name: all, match: {paths: [\"/**\"]}, effect: allow, anonymous: true, upstream: u}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("k.secret"), [b'k'; 32]).unwrap();
        std::fs::write(
            dir.path().join("c.yaml"),
            "listeners: [{name: l, address: \"127.0.0.1:0\"}]\nupstreams: {u: {url: \"http://127.0.0.1:9\"}}\npolicies: {dir: policies}\nserver: {trusted_proxies: [10.0.0.0/8]}\nidentity_headers: {x-user-id: \"{principal.id}\"}\nauthenticators:\n  web:\n    jwt:\n      from: [bearer, {cookie: session}, {header: x-token}]\n      providers: [{issuer: i, audiences: [a], keys: [{hmac: {secret: {file: k.secret}, algorithms: [HS256]}}]}]\n",
        )
        .unwrap();
        let (snap, _) = crate::config::build(&dir.path().join("c.yaml"), None).unwrap();
        (snap, dir)
    }

    fn mutation(peer: &str, headers: &[(&str, &str)], strip: bool) -> HeaderMutation {
        let (snap, _dir) = snapshot();
        let mut req = http::Request::get("/x").header("host", "h");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let conn = ConnInfo::new(peer.parse().unwrap(), Arc::from("l"), None);
        let facts = RequestFacts::from_parts(&parts, &conn, &snap.server.trusted_proxies).unwrap();
        let a = snap.authn.at(0).unwrap();
        let authenticator = if strip { Some(a) } else { None };
        let set = vec![(
            HeaderName::from_static("x-user-id"),
            HeaderValue::from_static("alice"),
        )];
        HeaderMutation::compute(&snap, &facts, authenticator, set)
    }

    #[test]
    fn spoofed_and_credential_headers_are_removed() {
        let sent = [
            ("x_user_id", "root"),
            ("x-user-id", "root"),
            ("x_real_ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("authorization", "Bearer t"),
            ("x-token", "t"),
            ("cookie", "a=1; session=t; b=2"),
            ("x-kept", "1"),
        ];
        let m = mutation("192.0.2.1:1", &sent, true);
        let mut removed: Vec<&str> = m.remove.iter().map(HeaderName::as_str).collect();
        removed.sort_unstable();
        assert_eq!(
            removed,
            [
                "authorization",
                "true-client-ip",
                "x-original-url",
                "x-token",
                "x-user-id",
                "x_real_ip",
                "x_user_id"
            ]
        );
        assert_eq!(
            m.set,
            [
                (
                    HeaderName::from_static("x-user-id"),
                    HeaderValue::from_static("alice")
                ),
                (header::COOKIE, HeaderValue::from_static("a=1; b=2")),
            ]
        );
        // Applied: only the gateway's values remain.
        let mut h = HeaderMap::new();
        for (k, v) in sent {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m.apply(&mut h);
        let mut left: Vec<(&str, &str)> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                ("cookie", "a=1; b=2"),
                ("x-kept", "1"),
                ("x-user-id", "alice")
            ]
        );
    }

    #[test]
    fn forwarded_credentials_and_trusted_claims_stay() {
        // No strip: the credential stays; from a trusted proxy its claims stay too.
        let m = mutation(
            "10.1.2.3:1",
            &[("authorization", "Bearer t"), ("true-client-ip", "1.2.3.4")],
            false,
        );
        assert!(m.remove.is_empty(), "{:?}", m.remove);
        // A cookie that was the only one: the header goes.
        let m = mutation("192.0.2.1:1", &[("cookie", "session=t")], true);
        assert_eq!(m.remove, [header::COOKIE]);
    }
}
