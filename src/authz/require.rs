//! A rule's requirements beyond "who": scopes, roles, claims, principal kind, client networks
//! and a client certificate. Compiled at load; checked on every request against the principal
//! the request authenticated as (never against a cached decision), so a credential cached for
//! one route grants another only if that route's own requirements hold.

use crate::config::FieldError;
use ipnet::IpNet;
use serde_json::Value;

use crate::authn::PrincipalKind;
use crate::authn::principal::{Principal, lookup};
use crate::config::raw::{RawClaimCheck, RawPrincipalKind, RawRequire, RawStringSet};
use crate::request::RequestFacts;

/// Compiled requirements; the default requires nothing.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    scopes: StringSet,
    roles: StringSet,
    claims: Box<[(ClaimPath, ClaimCheck)]>,
    kind: Option<PrincipalKind>,
    networks: Box<[IpNet]>,
    mtls: bool,
    /// `WWW-Authenticate` for a missing scope, naming the scopes this rule requires
    /// (RFC 6750 §3 `scope`), built once at load.
    scope_challenge: Option<http::HeaderValue>,
    /// The same, in the `ApiKey` scheme, for a principal an API key authenticated.
    api_key_scope_challenge: Option<http::HeaderValue>,
}

/// A dotted claim path, split.
type ClaimPath = Box<[Box<str>]>;

#[derive(Debug, Clone, Default)]
struct StringSet {
    all_of: Box<[Box<str>]>,
    any_of: Box<[Box<str>]>,
}

#[derive(Debug, Clone)]
enum ClaimCheck {
    Equals(Value),
    OneOf(Box<[Value]>),
    Contains(Value),
}

/// Which requirement a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmet {
    /// A scope is missing (403 `insufficient_scope`, RFC 6750 §3.1).
    Scope,
    /// A role is missing.
    Role,
    /// A claim has another value, or is absent.
    Claim,
    /// A user where a machine is required, or the reverse.
    Kind,
    /// The client address is outside the allowed networks.
    Network,
    /// No verified client certificate.
    ClientCertificate,
    /// The rule's `when` expression did not hold.
    Condition,
    /// The rule's `when` expression ran past its budget (`policies.conditions`).
    ConditionBudget,
}

// === impl Unmet ===

impl Unmet {
    /// Reason code (logs, metrics and the response body).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scope => "insufficient_scope",
            Self::Role => "role_required",
            Self::Claim => "claim_mismatch",
            Self::Kind => "principal_kind",
            Self::Network => "network_not_allowed",
            Self::ClientCertificate => "client_certificate_required",
            Self::Condition => "condition_failed",
            Self::ConditionBudget => "condition_budget_exceeded",
        }
    }
}

// === impl Requirements ===

impl Requirements {
    /// Compiles the raw requirements; errors are (field, message).
    pub fn compile(raw: &RawRequire) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let set = |s: &Option<RawStringSet>, field: &str, errors: &mut Vec<FieldError>| {
            let Some(s) = s else {
                return StringSet::default();
            };
            if s.all_of.is_empty() && s.any_of.is_empty() {
                errors.push(FieldError::new(
                    field.to_owned(),
                    "give `all_of` or `any_of`",
                ));
            }
            if s.all_of.iter().chain(&s.any_of).any(|v| v.is_empty()) {
                errors.push(FieldError::new(
                    field.to_owned(),
                    "values must not be empty",
                ));
            }
            StringSet {
                all_of: s.all_of.iter().map(|v| v.as_str().into()).collect(),
                any_of: s.any_of.iter().map(|v| v.as_str().into()).collect(),
            }
        };
        let scopes = set(&raw.scopes, "scopes", &mut errors);
        let roles = set(&raw.roles, "roles", &mut errors);
        let mut claims = Vec::new();
        for (path, check) in &raw.claims {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                errors.push(FieldError::new(
                    format!("claims.{path}"),
                    "not a claim path",
                ));
                continue;
            }
            let split: Box<[Box<str>]> = path.split('.').map(Into::into).collect();
            // Why: scopes and roles refused empty values, claims did not: `contains: ""`
            // passed a token whose `groups` held a double space, `equals:` left empty (YAML
            // null) one whose claim was null. An empty template variable writes exactly these.
            // Regression: tests::empty_claim_values_are_refused
            let blank = |v: &serde_json::Value| {
                v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
            };
            let (field, values): (&str, Vec<&serde_json::Value>) = match check {
                RawClaimCheck::Equals(v) => ("equals", vec![v]),
                RawClaimCheck::OneOf(vs) => ("one_of", vs.iter().collect()),
                RawClaimCheck::Contains(v) => ("contains", vec![v]),
            };
            if values.into_iter().any(blank) {
                errors.push(FieldError::new(
                    format!("claims.{path}.{field}"),
                    "values must not be empty or null",
                ));
                continue;
            }
            let check = match check {
                RawClaimCheck::Equals(v) => ClaimCheck::Equals(v.clone()),
                RawClaimCheck::OneOf(vs) if vs.is_empty() => {
                    errors.push(FieldError::new(
                        format!("claims.{path}.one_of"),
                        "must list values",
                    ));
                    continue;
                }
                RawClaimCheck::OneOf(vs) => ClaimCheck::OneOf(vs.clone().into()),
                RawClaimCheck::Contains(v) => ClaimCheck::Contains(v.clone()),
            };
            claims.push((split, check));
        }
        if errors.is_empty() {
            Ok(Self {
                scopes,
                roles,
                claims: claims.into(),
                kind: raw.kind.map(|k| match k {
                    RawPrincipalKind::User => PrincipalKind::User,
                    RawPrincipalKind::Machine => PrincipalKind::Machine,
                }),
                networks: raw.networks.iter().map(|n| n.0).collect(),
                mtls: raw.mtls,
                scope_challenge: None,
                api_key_scope_challenge: None,
            })
        } else {
            Err(errors)
        }
    }

    /// Builds the `insufficient_scope` challenge naming this rule's scopes (`all_of`, then
    /// `any_of`), from the realm's generic one. Scopes outside RFC 6749's scope-token
    /// characters are left out of it.
    pub fn with_scope_challenge(mut self, challenges: &crate::snapshot::Challenges) -> Self {
        let scopes: Vec<&str> = self
            .scopes
            .all_of
            .iter()
            .chain(&*self.scopes.any_of)
            .map(|s| &**s)
            .filter(|s| {
                s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
            })
            .collect();
        if scopes.is_empty() {
            return self;
        }
        let with_scopes = |base: &http::HeaderValue| {
            let base = base.to_str().unwrap_or_default();
            http::HeaderValue::from_str(&format!("{base}, scope=\"{}\"", scopes.join(" "))).ok()
        };
        self.scope_challenge = with_scopes(&challenges.insufficient_scope);
        self.api_key_scope_challenge = with_scopes(&challenges.api_key_insufficient_scope);
        self
    }

    /// The `insufficient_scope` challenge naming this rule's scopes, when it has some.
    pub fn scope_challenge(&self) -> Option<&http::HeaderValue> {
        self.scope_challenge.as_ref()
    }

    /// [`Self::scope_challenge`] in the `ApiKey` scheme.
    pub fn api_key_scope_challenge(&self) -> Option<&http::HeaderValue> {
        self.api_key_scope_challenge.as_ref()
    }

    /// Whether there are no requirements.
    pub fn is_empty(&self) -> bool {
        !self.needs_principal() && self.networks.is_empty() && !self.mtls
    }

    /// Whether any requirement needs a principal (an anonymous request fails them with 401).
    pub fn needs_principal(&self) -> bool {
        !self.scopes.is_empty()
            || !self.roles.is_empty()
            || !self.claims.is_empty()
            || self.kind.is_some()
    }

    /// Checks of the connection, before any credential is verified.
    pub fn check_request(&self, facts: &RequestFacts<'_>) -> Result<(), Unmet> {
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.contains(&facts.client_ip))
        {
            return Err(Unmet::Network);
        }
        let has_cert = facts
            .conn
            .tls
            .as_ref()
            .is_some_and(|t| t.client_cert.is_some());
        if self.mtls && !has_cert {
            return Err(Unmet::ClientCertificate);
        }
        Ok(())
    }

    /// Checks of the principal.
    pub fn check_principal(&self, p: &Principal) -> Result<(), Unmet> {
        if !self.scopes.holds(&p.scopes) {
            return Err(Unmet::Scope);
        }
        if !self.roles.holds(&p.roles) {
            return Err(Unmet::Role);
        }
        if self.kind.is_some_and(|k| k != p.kind) {
            return Err(Unmet::Kind);
        }
        for (path, check) in &*self.claims {
            let v = lookup(&p.claims, path);
            let ok = match (check, v) {
                (_, None) => false,
                (ClaimCheck::Equals(want), Some(v)) => v == want,
                (ClaimCheck::OneOf(want), Some(v)) => want.contains(v),
                (ClaimCheck::Contains(want), Some(Value::Array(items))) => items.contains(want),
                // A space-separated string (as `scope` claims are) contains a word.
                (ClaimCheck::Contains(Value::String(w)), Some(Value::String(s))) => {
                    s.split(' ').any(|x| x == w)
                }
                (ClaimCheck::Contains(_), Some(_)) => false,
            };
            if !ok {
                return Err(Unmet::Claim);
            }
        }
        Ok(())
    }
}

impl StringSet {
    fn is_empty(&self) -> bool {
        self.all_of.is_empty() && self.any_of.is_empty()
    }

    fn holds(&self, have: &[Box<str>]) -> bool {
        self.all_of.iter().all(|w| have.contains(w))
            && (self.any_of.is_empty() || self.any_of.iter().any(|w| have.contains(w)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn principal(scopes: &[&str], claims: &Value) -> Principal {
        Principal {
            id: "u".into(),
            kind: PrincipalKind::User,
            authenticator: Arc::from("a"),
            issuer: None,
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
            roles: vec!["admin".into()].into(),
            tenant: None,
            api_key_id: None,
            claims: claims.as_object().unwrap().clone(),
            expires_at: None,
            valid_until: None,
            derived: Default::default(),
        }
    }

    fn req(yaml: Value) -> Requirements {
        Requirements::compile(&serde_json::from_value(yaml).unwrap()).unwrap()
    }

    #[test]
    fn empty_claim_values_are_refused() {
        for (yaml, field) in [
            (
                json!({"claims": {"groups": {"contains": ""}}}),
                "claims.groups.contains",
            ),
            (
                json!({"claims": {"groups": {"contains": " "}}}),
                "claims.groups.contains",
            ),
            (
                json!({"claims": {"tenant": {"equals": null}}}),
                "claims.tenant.equals",
            ),
            (
                json!({"claims": {"tenant": {"equals": ""}}}),
                "claims.tenant.equals",
            ),
            (
                json!({"claims": {"tenant": {"one_of": ["acme", ""]}}}),
                "claims.tenant.one_of",
            ),
            (
                json!({"claims": {"tenant": {"one_of": [null]}}}),
                "claims.tenant.one_of",
            ),
        ] {
            let errors = Requirements::compile(&serde_json::from_value(yaml.clone()).unwrap())
                .err()
                .unwrap_or_else(|| panic!("accepted: {yaml}"));
            assert!(
                errors.iter().any(|e| e.field == field),
                "{yaml}: {errors:?}"
            );
        }
        // Values that are not strings stand for themselves.
        for yaml in [
            json!({"claims": {"age": {"equals": 0}}}),
            json!({"claims": {"admin": {"equals": false}}}),
            json!({"claims": {"groups": {"contains": "ops"}}}),
        ] {
            assert!(
                Requirements::compile(&serde_json::from_value(yaml.clone()).unwrap()).is_ok(),
                "{yaml}"
            );
        }
    }

    #[test]
    fn scopes_roles_kind() {
        let p = principal(&["read", "write"], &json!({}));
        assert_eq!(
            req(json!({"scopes": {"all_of": ["read", "write"]}})).check_principal(&p),
            Ok(())
        );
        assert_eq!(
            req(json!({"scopes": {"all_of": ["read", "admin"]}})).check_principal(&p),
            Err(Unmet::Scope)
        );
        assert_eq!(
            req(json!({"scopes": {"any_of": ["x", "write"]}})).check_principal(&p),
            Ok(())
        );
        assert_eq!(
            req(json!({"scopes": {"any_of": ["x", "y"]}})).check_principal(&p),
            Err(Unmet::Scope)
        );
        assert_eq!(
            req(json!({"roles": {"all_of": ["admin"]}})).check_principal(&p),
            Ok(())
        );
        assert_eq!(
            req(json!({"roles": {"any_of": ["ops"]}})).check_principal(&p),
            Err(Unmet::Role)
        );
        assert_eq!(
            req(json!({"kind": "machine"})).check_principal(&p),
            Err(Unmet::Kind)
        );
    }

    #[test]
    fn claim_checks() {
        let p = principal(
            &[],
            &json!({"tenant": "acme", "org": {"tier": 2}, "groups": ["a", "b"], "amr": "pwd otp"}),
        );
        for (check, ok) in [
            (json!({"tenant": {"equals": "acme"}}), true),
            (json!({"tenant": {"equals": "other"}}), false),
            (json!({"org.tier": {"equals": 2}}), true),
            (json!({"org.tier": {"equals": "2"}}), false),
            (json!({"tenant": {"one_of": ["x", "acme"]}}), true),
            (json!({"groups": {"contains": "b"}}), true),
            (json!({"groups": {"contains": "c"}}), false),
            (json!({"amr": {"contains": "otp"}}), true),
            (json!({"amr": {"contains": "ot"}}), false),
            (json!({"missing": {"equals": "x"}}), false),
        ] {
            let r = req(json!({ "claims": check }));
            assert_eq!(r.check_principal(&p).is_ok(), ok, "{check}");
        }
    }
}
