//! [`HeaderMutation`]: what an allowed request's headers become on the way upstream, computed
//! once in the core so that every door hands back the same change in its own format (the
//! proxy applies it, the gRPC door returns it as `OkHttpResponse`, the HTTP doors as response
//! headers and a list of names to remove).
//!
//! Invariants:
//! - `remove` names every header of the request that a client must not hand an upstream
//!   ([`crate::authz::spoofable::Spoofable`]), in the spelling the request used, and the
//!   verified credential's header when its authenticator strips it.
//! - `set` holds the identity headers (and the signed assertion), and replaces any value the
//!   request had. No name is in both lists: Envoy applies `headers_to_remove` *after* the
//!   headers it sets, so a name in both would reach the upstream with no value at all.
//! - At the decision doors, whose peer forwards the request itself, `remove` also names every
//!   identity and override header whether or not the door saw it (a peer shows the door only
//!   some headers), and the forwarding headers the proxy door would rewrite are handed back:
//!   `x-real-ip` and `x-forwarded-host` set to what was decided, `forwarded` removed.
//!   `X-Forwarded-For` and `-Proto` stay the peer's to write. The proxy door writes all of
//!   them itself (`proxy::forwarded`).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::authn::Authenticator;
use crate::authn::credential::CredentialSource;
use crate::authz::spoofable::DoorList;
use crate::request::RequestFacts;
use crate::request::facts::{Door, ip_header_value};
use crate::snapshot::Snapshot;

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The change to an allowed request's headers (and to its response's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMutation {
    /// Headers to set, replacing any value the request had.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Headers of the request to remove, with every value.
    pub remove: Vec<HeaderName>,
    /// At a decision door, the names it removes whether or not the request showed them (the
    /// snapshot's list, shared); [`Self::removed`] gives them with `remove`.
    pub named: Option<Arc<DoorList>>,
    /// Headers to add to the response the client gets.
    pub response: Vec<(HeaderName, HeaderValue)>,
    /// At a decision door, the query parameters carrying a credential the authenticator
    /// strips, each as configured and, if the request spelled it otherwise (`api%5Fkey`), as
    /// spelled: the proxy door cuts them from the target it forwards; of the decision doors
    /// only the gRPC door can have its peer remove them (`query_parameters_to_remove`).
    pub query_remove: Vec<Box<str>>,
}

// === impl HeaderMutation ===

impl HeaderMutation {
    /// The mutation for an allowed request: its spoofable headers and (when the authenticator
    /// strips it) its credential removed, `set` (the identity headers) set.
    pub fn compute(
        snapshot: &Snapshot,
        facts: &RequestFacts<'_>,
        authenticator: Option<&Authenticator>,
        query_credentials: Option<&[Box<str>]>,
        set: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        let mut out = Self {
            set,
            remove: Vec::new(),
            named: None,
            response: Vec::new(),
            query_remove: Vec::new(),
        };
        // Why: one walk over the names present; no allocation unless a header goes.
        // Regression: tests::spoofed_and_credential_headers_are_removed
        for name in facts.headers.keys() {
            // Why `Expect` at the proxy door: the gateway answered the client's
            // `100-continue` itself and sends the body at once; passed on, it invited the
            // upstream to answer before reading the body, which then sat on a pooled
            // connection. (Behind Envoy with `proxy_100_continue` the upstream must see it.)
            // Regression: tests (it) smuggling::expect_is_answered_by_the_gateway_and_not_forwarded
            if snapshot.spoofable.is_doomed(name, facts.peer_trusted)
                || (name == http::header::EXPECT && facts.conn.door == Door::Proxy)
            {
                out.remove.push(name.clone());
            }
        }
        // What was verified here is not replayed upstream when the authenticator says so.
        if let Some(a) = authenticator.filter(|a| a.strip) {
            for source in &*a.sources {
                out.strip_credential(source, facts.headers);
            }
        }
        // Why: only the proxy door forwards a target of its own; behind Envoy a verified
        // `?api_key=` reached the upstream although the authenticator strips. And, as the
        // proxy door does, every query credential of the rule goes, whichever authenticator
        // verified and whatever its `strip` (a URL ends up in logs): behind Envoy one with
        // `strip: false` reached the upstream that the proxy door cuts.
        // Regression: tests (it) grpc::query_credential_removed_by_envoy
        if let (Some(names), Some(query)) = (query_credentials, facts.query)
            && facts.conn.door != Door::Proxy
        {
            for name in names {
                out.query_remove_credential(name, query);
            }
        }
        // And a method override in the query (`_method=DELETE`), which the proxy door cuts.
        if let Some(query) = facts.query
            && facts.conn.door != Door::Proxy
            && crate::authn::credential::may_override_method(query)
        {
            for pair in query.split('&') {
                // Envoy reads the pair's key up to `=`: `a=1;_method=DELETE` goes as `a`.
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                if crate::authn::credential::pair_overrides_method(pair) {
                    out.push_query_remove(key);
                    // A name that does not decode (`_method%00%ff`) is named as sent only.
                    if let Some(decoded) = crate::authn::credential::decode(key) {
                        out.push_query_remove(&decoded);
                    }
                }
            }
        }
        if facts.conn.door != Door::Proxy {
            // Why: only the proxy door rewrites the forwarding headers; behind Envoy or nginx a
            // client's `X-Real-IP`, `X-Forwarded-Host` or `Forwarded` reached the upstream.
            // Regression: tests::decision_doors_name_every_family
            // Why shared: copying these ~40 names into every answer (and, at the gRPC door,
            // each into a string) was a tenth of the door's CPU per Check.
            out.named = Some(Arc::clone(
                snapshot.spoofable.door_removal(facts.peer_trusted),
            ));
            out.set.push((X_REAL_IP, ip_header_value(facts.client_ip)));
            let host = match facts.port {
                Some(p) => {
                    let mut text = String::with_capacity(facts.host.len() + 6);
                    text.push_str(&facts.host);
                    text.push(':');
                    // Writing to a String cannot fail.
                    let _ = write!(text, "{p}");
                    HeaderValue::from_maybe_shared(Bytes::from(text))
                }
                None => HeaderValue::from_str(&facts.host),
            };
            match host {
                Ok(h) => out.set.push((X_FORWARDED_HOST, h)),
                Err(_) => out.push_remove(X_FORWARDED_HOST),
            }
            // A name the request showed (or the door pushed) that is on the list is named
            // once, in the list. Regression: tests::decision_doors_name_every_family
            if let Some(named) = &out.named {
                out.remove.retain(|n| !named.contains(n));
            }
        }
        // Why: Envoy removes after it sets; a name in both lists reached the upstream empty,
        // so a client sending `x-tenant-id` erased the gateway's tenant.
        // Regression: tests::no_name_is_both_set_and_removed
        let set = &out.set;
        out.remove.retain(|n| !set.iter().any(|(s, _)| s == n));
        out
    }

    /// How many headers [`Self::compute`] may add to the `set` it is given, for `facts`: a
    /// decision door's `x-real-ip` and `x-forwarded-host`.
    pub fn set_headroom(facts: &RequestFacts<'_>) -> usize {
        if facts.conn.door == Door::Proxy { 0 } else { 2 }
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

    /// Names the query parameter `name` for removal, in each spelling the request used.
    fn query_remove_credential(&mut self, name: &str, query: &str) {
        for pair in query.split('&') {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if crate::authn::credential::decode(key).is_none_or(|k| *k != *name) {
                continue;
            }
            self.push_query_remove(name);
            self.push_query_remove(key);
        }
    }

    /// Names the query parameter spelled `spelled` for removal, once.
    fn push_query_remove(&mut self, spelled: &str) {
        if !self.query_remove.iter().any(|q| **q == *spelled) {
            self.query_remove.push(spelled.into());
        }
    }

    /// Names `names` for removal too, unless set or already listed: headers the request's
    /// `Connection` named, which a decision door left out of the decision as the proxy door
    /// does.
    ///
    /// Why: the proxy door forwards none of them; a decision door's peer that does not honour
    /// `Connection` would forward them, and a rule denying on a header's presence was decided
    /// without it. Regression: tests (it) doors::headers_named_in_connection_are_removed_too
    pub fn remove_unseen(&mut self, names: Vec<HeaderName>) {
        for name in names {
            let set = self.set.iter().any(|(s, _)| *s == name);
            let listed = self
                .named
                .as_ref()
                .is_some_and(|d| d.iter().any(|d| *d == name));
            if !set && !listed {
                self.push_remove(name);
            }
        }
    }

    fn push_remove(&mut self, name: HeaderName) {
        // The lists are a few names long: a scan beats hashing.
        if !self.remove.contains(&name) {
            self.remove.push(name);
        }
    }

    /// Every header to remove, each once: the request's own, then (at a decision door) the
    /// names the door list adds, less those set.
    pub fn removed(&self) -> impl Iterator<Item = &HeaderName> + Clone {
        self.removed_variable()
            .chain(self.removed_fixed().into_iter().flat_map(|d| d.split().1))
    }

    /// What [`Self::removed`] gives before the door list's fixed part: the request's own
    /// names, then the list's identity names not set.
    pub fn removed_variable(&self) -> impl Iterator<Item = &HeaderName> + Clone {
        let identity = self.named.as_deref().map_or(&[][..], |d| d.split().0);
        self.remove.iter().chain(
            identity
                .iter()
                .filter(|n| !self.set.iter().any(|(s, _)| s == *n)),
        )
    }

    /// The door list whose fixed part (names never set) ends [`Self::removed`], at a
    /// decision door: the same for every answer of a snapshot, rendered once by the doors.
    pub fn removed_fixed(&self) -> Option<&DoorList> {
        self.named.as_deref()
    }

    /// Applies the request side to `headers`: every removal, then every set.
    pub fn apply(self, headers: &mut HeaderMap) {
        for name in self.removed() {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed().next().is_none() && self.response.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::request::facts::{ConnInfo, Door};

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
        mutation_at(Door::Proxy, peer, headers, strip, true)
    }

    fn mutation_at(
        door: Door,
        peer: &str,
        headers: &[(&str, &str)],
        strip: bool,
        identity: bool,
    ) -> HeaderMutation {
        let (snap, _dir) = snapshot();
        mutation_in(&snap, door, peer, headers, strip, identity)
    }

    fn mutation_in(
        snap: &Snapshot,
        door: Door,
        peer: &str,
        headers: &[(&str, &str)],
        strip: bool,
        identity: bool,
    ) -> HeaderMutation {
        let mut req = http::Request::get("/x").header("host", "h");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let conn = ConnInfo::for_door(door, peer.parse().unwrap(), Arc::from("l"), None);
        let facts = RequestFacts::from_parts(&parts, &conn, &snap.server.trusted_proxies).unwrap();
        let a = snap.authn.at(0).unwrap();
        let authenticator = if strip { Some(a) } else { None };
        let set = if identity {
            vec![(
                HeaderName::from_static("x-user-id"),
                HeaderValue::from_static("alice"),
            )]
        } else {
            Vec::new()
        };
        HeaderMutation::compute(snap, &facts, authenticator, None, set)
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
        let mut removed: Vec<&str> = m.removed().map(HeaderName::as_str).collect();
        removed.sort_unstable();
        assert_eq!(
            removed,
            [
                "authorization",
                "true-client-ip",
                "x-original-url",
                "x-token",
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
    fn no_name_is_both_set_and_removed() {
        for door in Door::ALL {
            let m = mutation_at(door, "192.0.2.1:1", &[("x-user-id", "root")], false, true);
            for (name, _) in &m.set {
                assert!(
                    !m.removed().any(|n| n == name),
                    "{door:?}: {name} set and removed"
                );
            }
            assert!(
                m.set.iter().any(|(n, v)| n == "x-user-id" && v == "alice"),
                "{door:?}"
            );
        }
    }

    #[test]
    fn decision_doors_name_every_family() {
        let sent = [
            ("x-real-ip", "10.0.0.1"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=127.0.0.1;host=evil.example"),
            // Shown by the request and on the door's list: named once.
            ("x-original-url", "/admin"),
            ("x-user-id", "root"),
            ("x_user_id", "root"),
        ];
        for door in [Door::EnvoyGrpc, Door::EnvoyHttp, Door::ForwardAuth] {
            // Anonymous: no identity set, so the identity names are removed too.
            let m = mutation_at(door, "192.0.2.1:1", &sent, false, false);
            let removed: Vec<&str> = m.removed().map(HeaderName::as_str).collect();
            let mut once = removed.clone();
            once.sort_unstable();
            once.dedup();
            assert_eq!(once.len(), removed.len(), "{door:?}: {removed:?}");
            assert!(removed.contains(&"x_user_id"), "{door:?}: {removed:?}");
            // Named whether or not the request had them.
            for name in ["forwarded", "x-user-id", "x-original-url", "true-client-ip"] {
                assert!(removed.contains(&name), "{door:?}: {name} in {removed:?}");
            }
            let set: Vec<(&str, &str)> = m
                .set
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
                .collect();
            assert!(
                set.contains(&("x-real-ip", "192.0.2.1")),
                "{door:?}: {set:?}"
            );
            assert!(
                set.contains(&("x-forwarded-host", "h")),
                "{door:?}: {set:?}"
            );
            // From a trusted hop, its address claims stay.
            let m = mutation_at(door, "10.1.2.3:1", &[], false, false);
            assert!(!m.removed().any(|n| n == "true-client-ip"), "{door:?}");
        }
        // The proxy door writes the forwarding headers itself and names only what it saw (less
        // the identity header it sets).
        let m = mutation("192.0.2.1:1", &sent, false);
        let removed: Vec<&str> = m.removed().map(HeaderName::as_str).collect();
        assert_eq!(removed, ["x-original-url", "x_user_id"]);
        assert!(!m.set.iter().any(|(n, _)| n == "x-real-ip"));
    }

    #[test]
    fn forwarded_credentials_and_trusted_claims_stay() {
        // No strip: the credential stays; from a trusted proxy its claims stay too.
        let m = mutation(
            "10.1.2.3:1",
            &[("authorization", "Bearer t"), ("true-client-ip", "1.2.3.4")],
            false,
        );
        assert!(m.removed().next().is_none(), "{:?}", m.remove);
        // A cookie that was the only one: the header goes.
        let m = mutation("192.0.2.1:1", &[("cookie", "session=t")], true);
        assert_eq!(m.removed().collect::<Vec<_>>(), [header::COOKIE]);
    }

    /// The HTTP doors' list (the fixed part joined once per snapshot) says exactly what
    /// `removed` gives, in order, whatever varies: identity set or not, names the request
    /// showed, a trusted peer, the proxy door (no list).
    #[test]
    fn the_joined_list_is_removed_in_order() {
        let sent = [
            ("x-original-url", "/admin"),
            ("x_user_id", "root"),
            ("x-kept", "1"),
        ];
        for door in Door::ALL {
            for peer in ["192.0.2.1:1", "10.1.2.3:1"] {
                for headers in [&sent[..], &[]] {
                    for identity in [true, false] {
                        let m = mutation_at(door, peer, headers, false, identity);
                        let expected: Vec<&str> = m.removed().map(HeaderName::as_str).collect();
                        let joined = crate::door::removal_list(&m);
                        let got = joined.as_ref().map_or("", |v| v.to_str().unwrap());
                        assert_eq!(got, expected.join(","), "{door:?} {peer} {identity}");
                    }
                }
            }
        }
    }

    /// The list remembered after the last answer's variable names ([`DoorList::joined_after`])
    /// is handed over only for the same names: answers with different ones, in turns, from one
    /// snapshot, each get their own.
    #[test]
    fn a_remembered_list_is_only_reused_for_the_same_names() {
        let (snap, _dir) = snapshot();
        let cases: [(&[(&str, &str)], bool); 4] = [
            (&[("authorization", "Bearer t")], true),
            (&[("x-original-url", "/admin"), ("x_user_id", "root")], true),
            (&[], false),
            (&[("x_user_id", "root")], false),
        ];
        for round in 0..3 {
            for (headers, strip) in cases.iter().chain(cases.iter().rev()) {
                let m = mutation_in(
                    &snap,
                    Door::ForwardAuth,
                    "192.0.2.1:1",
                    headers,
                    *strip,
                    true,
                );
                let expected: Vec<&str> = m.removed().map(HeaderName::as_str).collect();
                let joined = crate::door::removal_list(&m);
                let got = joined.as_ref().map_or("", |v| v.to_str().unwrap());
                assert_eq!(got, expected.join(","), "round {round}: {headers:?}");
            }
        }
    }
}
