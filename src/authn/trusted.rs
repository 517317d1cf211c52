//! Trusted identity headers: an inner proxy that already authenticated the caller says who it
//! is in request headers (dauth's `trust://`).
//!
//! Invariants: the headers are read only when the peer is inside a configured network: the
//! TCP peer at the proxy door, the address a decision door's peer vouches for at the others
//! ([`crate::request::facts::ConnInfo`]), never an address the client wrote; and only the configured names are read. From any other peer they are
//! not a credential at all, and the proxy removes every configured name (and its `_` spelling)
//! from every request before forwarding, whatever the decision, so a client can never pass one
//! to the upstream.

use crate::config::FieldError;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use serde_json::{Map, Value};

use super::principal::{Principal, PrincipalKind};
use crate::authn::jwt::verify::TokenError;
use crate::config::raw::{RawPrincipalKind, RawTrustedHeaders};

/// A compiled trusted-headers authenticator.
#[derive(Debug)]
pub struct TrustedHeaders {
    networks: Box<[IpNet]>,
    id: HeaderName,
    kind_header: Option<HeaderName>,
    kind: PrincipalKind,
    scopes: Option<HeaderName>,
    roles: Option<HeaderName>,
    tenant: Option<HeaderName>,
    claims: Box<[(Box<str>, HeaderName)]>,
}

/// What the headers of one request amount to.
#[derive(Debug)]
pub enum Seen {
    /// No id header, or a peer outside the trusted networks.
    Nothing,
    /// A principal.
    Principal(Arc<Principal>),
    /// Present but unusable.
    Invalid(TokenError),
}

// === impl TrustedHeaders ===

impl TrustedHeaders {
    /// Compiles the raw settings; errors are (field, message).
    pub fn compile(raw: &RawTrustedHeaders) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut name = |field: String, v: &str| match HeaderName::from_bytes(v.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errors.push(FieldError::new(
                    field,
                    format!("`{v}` is not a valid header name"),
                ));
                None
            }
        };
        let id = name("id".into(), &raw.id);
        let kind_header = raw
            .kind_header
            .as_deref()
            .and_then(|v| name("kind_header".into(), v));
        let scopes = raw.scopes.as_deref().and_then(|v| name("scopes".into(), v));
        let roles = raw.roles.as_deref().and_then(|v| name("roles".into(), v));
        let tenant = raw.tenant.as_deref().and_then(|v| name("tenant".into(), v));
        let claims: Vec<_> = raw
            .claims
            .iter()
            .filter_map(|(c, h)| Some((c.as_str().into(), name(format!("claims.{c}"), h)?)))
            .collect();
        if raw.networks.is_empty() {
            errors.push(FieldError::new(
                "networks",
                "at least one network is required: headers are only believed from these peers",
            ));
        }
        match id {
            Some(id) if errors.is_empty() => Ok(Self {
                networks: raw.networks.iter().map(|n| n.0).collect(),
                id,
                kind_header,
                kind: match raw.kind {
                    RawPrincipalKind::User => PrincipalKind::User,
                    RawPrincipalKind::Machine => PrincipalKind::Machine,
                },
                scopes,
                roles,
                tenant,
                claims: claims.into(),
            }),
            _ => Err(errors),
        }
    }

    /// Every header name this authenticator reads (removed from every forwarded request).
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        std::iter::once(&self.id)
            .chain(&self.kind_header)
            .chain(&self.scopes)
            .chain(&self.roles)
            .chain(&self.tenant)
            .chain(self.claims.iter().map(|(_, h)| h))
    }

    /// Whether the id header is present and the peer trusted.
    pub fn present(&self, headers: &HeaderMap, peer: std::net::IpAddr) -> bool {
        headers.contains_key(&self.id) && self.trusts(peer)
    }

    fn trusts(&self, peer: std::net::IpAddr) -> bool {
        // The proxy door's listener already unmaps `::ffff:a.b.c.d`; peers reported by other
        // doors may not be, and a miss here would refuse a trusted proxy.
        self.networks
            .iter()
            .any(|n| n.contains(&peer.to_canonical()))
    }

    /// Reads the principal from the headers of a request from `peer`.
    pub fn read(
        &self,
        headers: &HeaderMap,
        peer: std::net::IpAddr,
        authenticator: &Arc<str>,
    ) -> Seen {
        if !self.present(headers, peer) {
            return Seen::Nothing;
        }
        let one = |h: &HeaderName| -> Result<Option<&str>, TokenError> {
            let mut all = headers.get_all(h).iter();
            let Some(v) = all.next() else { return Ok(None) };
            if all.next().is_some() {
                return Err(TokenError::BadIdentityHeader);
            }
            v.to_str()
                .map(Some)
                .map_err(|_| TokenError::BadIdentityHeader)
        };
        let build = || -> Result<Principal, TokenError> {
            let id = one(&self.id)?
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or(TokenError::BadIdentityHeader)?;
            let kind = match self.kind_header.as_ref().map(one).transpose()?.flatten() {
                None => self.kind,
                Some(k) if k.eq_ignore_ascii_case("user") => PrincipalKind::User,
                Some(k) if k.eq_ignore_ascii_case("machine") => PrincipalKind::Machine,
                Some(_) => return Err(TokenError::BadIdentityHeader),
            };
            let list = |h: &Option<HeaderName>| -> Result<Box<[Box<str>]>, TokenError> {
                Ok(match h.as_ref().map(one).transpose()?.flatten() {
                    None => Box::default(),
                    Some(v) => v
                        .split([' ', ','])
                        .filter(|s| !s.is_empty())
                        .map(Into::into)
                        .collect(),
                })
            };
            let scopes = list(&self.scopes)?;
            let roles = list(&self.roles)?;
            let tenant = self
                .tenant
                .as_ref()
                .map(one)
                .transpose()?
                .flatten()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Into::into);
            let mut claims = Map::new();
            for (c, h) in &*self.claims {
                if let Some(v) = one(h)? {
                    claims.insert((**c).to_owned(), Value::String(v.to_owned()));
                }
            }
            // Last: `claims.sub` is always the principal id.
            claims.insert("sub".into(), Value::String(id.to_owned()));
            Ok(Principal {
                id: id.into(),
                kind,
                authenticator: Arc::clone(authenticator),
                issuer: None,
                scopes,
                roles,
                tenant,
                api_key_id: None,
                claims,
                expires_at: None,
                valid_until: None,
                derived: Default::default(),
            })
        };
        match build() {
            Ok(p) => Seen::Principal(Arc::new(p)),
            Err(e) => Seen::Invalid(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::Network;

    fn auth(nets: &[&str]) -> TrustedHeaders {
        TrustedHeaders::compile(&RawTrustedHeaders {
            networks: nets.iter().map(|n| Network(n.parse().unwrap())).collect(),
            id: "x-auth-user".into(),
            kind_header: Some("x-auth-kind".into()),
            kind: RawPrincipalKind::User,
            scopes: Some("x-auth-scopes".into()),
            roles: None,
            tenant: None,
            claims: [("email".to_owned(), "x-auth-email".to_owned())].into(),
        })
        .unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_from_trusted_peers() {
        let a = auth(&["10.0.0.0/8"]);
        let h = headers(&[("x-auth-user", "alice"), ("x-auth-scopes", "a b,c")]);
        let name: Arc<str> = "inner".into();
        match a.read(&h, "10.1.2.3".parse().unwrap(), &name) {
            Seen::Principal(p) => {
                assert_eq!(&*p.id, "alice");
                assert_eq!(p.scopes.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            a.read(&h, "192.168.1.1".parse().unwrap(), &name),
            Seen::Nothing
        ));
        assert!(matches!(
            a.read(&h, "::ffff:10.0.0.1".parse().unwrap(), &name),
            Seen::Principal(_)
        ));
    }

    #[test]
    fn repeated_or_bad_values_are_invalid() {
        let a = auth(&["127.0.0.0/8"]);
        let name: Arc<str> = "inner".into();
        let peer = "127.0.0.1".parse().unwrap();
        for h in [
            headers(&[("x-auth-user", "a"), ("x-auth-user", "b")]),
            headers(&[("x-auth-user", " ")]),
            headers(&[("x-auth-user", "a"), ("x-auth-kind", "robot")]),
        ] {
            assert!(matches!(a.read(&h, peer, &name), Seen::Invalid(_)), "{h:?}");
        }
    }

    #[test]
    fn names_cover_every_read_header() {
        let a = auth(&["127.0.0.0/8"]);
        let names: Vec<_> = a.names().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "x-auth-user",
                "x-auth-kind",
                "x-auth-scopes",
                "x-auth-email"
            ]
        );
    }
}
