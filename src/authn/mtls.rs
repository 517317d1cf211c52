//! Client certificates as credentials: the listener's `client_auth` verified the chain during
//! the handshake; this turns the certificate's names into a principal.
//!
//! Invariants: only a verified certificate ever reaches here: one rustls verified against the
//! configured CAs (an unverified one fails the handshake), or one Envoy passed to the gRPC door
//! whose config says Envoy verifies them (`client_certificates: true`; otherwise the door
//! ignores it). The id is read from the configured names in
//! order, and a certificate with none of them is refused rather than given an empty id.

use crate::config::FieldError;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::principal::{Principal, PrincipalKind};
use crate::authn::jwt::verify::TokenError;
use crate::config::raw::{RawCertName, RawMtls, RawPrincipalKind};
use crate::request::facts::ClientCert;

/// A compiled mTLS authenticator.
#[derive(Debug)]
pub struct Mtls {
    id: Box<[RawCertName]>,
    kind: PrincipalKind,
    /// Listeners whose certificates count; empty: all.
    listeners: Box<[Box<str>]>,
}

// === impl Mtls ===

impl Mtls {
    /// Compiles the raw settings.
    pub fn compile(raw: &RawMtls) -> Result<Self, FieldError> {
        if raw.id.is_empty() {
            return Err(FieldError::new(
                "id",
                "at least one certificate name is required",
            ));
        }
        Ok(Self {
            id: raw.id.clone().into(),
            kind: match raw.kind {
                RawPrincipalKind::User => PrincipalKind::User,
                RawPrincipalKind::Machine => PrincipalKind::Machine,
            },
            listeners: raw.listeners.iter().map(|l| l.as_str().into()).collect(),
        })
    }

    /// Whether certificates verified by `listener` count for this authenticator.
    pub fn accepts_listener(&self, listener: &str) -> bool {
        self.listeners.is_empty() || self.listeners.iter().any(|l| **l == *listener)
    }

    /// The principal a verified certificate speaks for, at `now`.
    pub fn principal(
        &self,
        cert: &ClientCert,
        authenticator: &Arc<str>,
        now: u64,
    ) -> Result<Principal, TokenError> {
        // Why: the certificate was verified at the handshake; a connection kept open past its
        // `notAfter` (or a Check carrying it) went on authenticating requests, and what they
        // opened was cut only after the upstream had served them.
        // Regression: tests::a_certificate_is_refused_outside_its_validity
        if now >= cert.not_after {
            return Err(TokenError::Expired);
        }
        // Why: a certificate Envoy hands the gRPC door in a Check is believed as Envoy
        // verified it; one not valid yet (issued ahead, or a clock skewed at the peer) was
        // accepted, where the handshake's own verification refuses it.
        // Regression: tests::a_certificate_is_refused_outside_its_validity
        if now < cert.not_before {
            return Err(TokenError::NotYetValid);
        }
        // Why: with the default order (URI SAN, DNS SAN, CN), a certificate without a URI SAN
        // and `CN=spiffe://corp/admin` (or that text as a DNS SAN) was the principal
        // `spiffe://corp/admin`, where a CA lets requesters choose their CN but not their
        // URI SANs. A name that is not a URI SAN and holds `:` (which every URI has, and no
        // DNS name or mailbox does) is passed over, so no name passes for another kind.
        // Regression: tests::a_name_cannot_pass_for_a_uri
        let id = self
            .id
            .iter()
            .find_map(|n| match n {
                RawCertName::SanUri => cert.san_uri.first(),
                RawCertName::SanDns => cert.san_dns.first().filter(|v| !v.contains(':')),
                RawCertName::SanEmail => cert.san_email.first().filter(|v| !v.contains(':')),
                RawCertName::SubjectCn => cert.subject_cn.as_ref().filter(|v| !v.contains(':')),
            })
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
            .ok_or(TokenError::NoPrincipal)?;
        let strings =
            |v: &[Box<str>]| Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect());
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::String(id.to_string()));
        claims.insert("subject".into(), Value::String(cert.subject.to_string()));
        claims.insert("san_dns".into(), strings(&cert.san_dns));
        claims.insert("san_uri".into(), strings(&cert.san_uri));
        claims.insert("san_email".into(), strings(&cert.san_email));
        claims.insert(
            "fingerprint_sha256".into(),
            Value::String(cert.fingerprint.to_string()),
        );
        claims.insert("exp".into(), Value::from(cert.not_after));
        Ok(Principal {
            id: (**id).into(),
            kind: self.kind,
            authenticator: Arc::clone(authenticator),
            issuer: None,
            scopes: Box::default(),
            roles: Box::default(),
            tenant: None,
            api_key_id: None,
            claims,
            expires_at: Some(cert.not_after),
            valid_until: Some(cert.not_after),
            derived: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_from_first_present_name() {
        let cert = ClientCert {
            subject: "CN=billing".into(),
            subject_cn: Some("billing".into()),
            san_uri: vec!["spiffe://corp/billing".into()].into(),
            not_after: 100,
            ..ClientCert::default()
        };
        let name: Arc<str> = "m".into();
        let m = Mtls::compile(&RawMtls {
            id: vec![RawCertName::SanUri, RawCertName::SubjectCn],
            kind: RawPrincipalKind::Machine,
            listeners: vec![],
        })
        .unwrap();
        assert_eq!(
            &*m.principal(&cert, &name, 0).unwrap().id,
            "spiffe://corp/billing"
        );
        let m = Mtls::compile(&RawMtls {
            id: vec![RawCertName::SanDns, RawCertName::SubjectCn],
            kind: RawPrincipalKind::Machine,
            listeners: vec!["internal".into()],
        })
        .unwrap();
        assert_eq!(&*m.principal(&cert, &name, 0).unwrap().id, "billing");
        assert!(m.accepts_listener("internal"));
        assert!(!m.accepts_listener("partners"));
        let m = Mtls::compile(&RawMtls {
            id: vec![RawCertName::SanEmail],
            kind: RawPrincipalKind::User,
            listeners: vec![],
        })
        .unwrap();
        assert_eq!(m.principal(&cert, &name, 0), Err(TokenError::NoPrincipal));
    }

    #[test]
    fn a_name_cannot_pass_for_a_uri() {
        let name: Arc<str> = "m".into();
        let m = Mtls::compile(&RawMtls {
            id: vec![
                RawCertName::SanUri,
                RawCertName::SanDns,
                RawCertName::SubjectCn,
            ],
            kind: RawPrincipalKind::Machine,
            listeners: vec![],
        })
        .unwrap();
        let cert = |cn: &str, dns: &[&str]| ClientCert {
            subject_cn: Some(cn.into()),
            san_dns: dns.iter().map(|d| (*d).into()).collect(),
            not_after: 100,
            ..ClientCert::default()
        };
        assert_eq!(
            m.principal(&cert("spiffe://corp/admin", &[]), &name, 0),
            Err(TokenError::NoPrincipal)
        );
        assert_eq!(
            &*m.principal(&cert("billing", &["spiffe://corp/admin"]), &name, 0)
                .unwrap()
                .id,
            "billing",
            "a DNS SAN holding a URI is passed over"
        );
        assert_eq!(
            &*m.principal(&cert("billing", &["billing.corp"]), &name, 0)
                .unwrap()
                .id,
            "billing.corp"
        );
    }

    #[test]
    fn a_certificate_is_refused_outside_its_validity() {
        let cert = ClientCert {
            subject_cn: Some("billing".into()),
            not_before: 50,
            not_after: 100,
            ..ClientCert::default()
        };
        let m = Mtls::compile(&RawMtls {
            id: vec![RawCertName::SubjectCn],
            kind: RawPrincipalKind::Machine,
            listeners: vec![],
        })
        .unwrap();
        let name: Arc<str> = "m".into();
        assert_eq!(m.principal(&cert, &name, 49), Err(TokenError::NotYetValid));
        assert!(m.principal(&cert, &name, 50).is_ok());
        let p = m.principal(&cert, &name, 99).unwrap();
        assert_eq!((p.expires_at, p.valid_until), (Some(100), Some(100)));
        assert_eq!(m.principal(&cert, &name, 100), Err(TokenError::Expired));
    }
}
