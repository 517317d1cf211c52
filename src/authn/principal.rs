//! [`Principal`]: who a verified credential speaks for, ready for policies and identity
//! headers. Built once per verified credential and cached with it.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::raw::{RawMachineRule, RawPrincipalMapping};

/// A user or a machine (a service client acting for itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A person, through some client.
    User,
    /// A service client (client-credentials grant and the like).
    Machine,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Stable id (`sub`, or `client_id` for machines without one, or the api key's owner).
    pub id: Arc<str>,
    /// User or machine.
    pub kind: PrincipalKind,
    /// The authenticator that verified it.
    pub authenticator: Arc<str>,
    /// The token issuer, for JWT and introspection.
    pub issuer: Option<Arc<str>>,
    /// Scopes granted.
    pub scopes: Box<[Box<str>]>,
    /// Roles.
    pub roles: Box<[Box<str>]>,
    /// Tenant.
    pub tenant: Option<Box<str>>,
    /// The api key id, when an api key authenticated.
    pub api_key_id: Option<Box<str>>,
    /// Every claim (empty for credentials without claims).
    pub claims: Map<String, Value>,
    /// Unix time after which the credential is no longer valid, if it expires.
    pub expires_at: Option<u64>,
    /// Unix second from which the gateway refuses the credential: `expires_at` plus the
    /// verifier's leeway (a JWT), else `expires_at`.
    pub valid_until: Option<u64>,
    /// Views of this principal computed on first use and kept for as long as it is cached.
    pub derived: Derived,
}

/// Values derived from a [`Principal`] the first time they are needed (the policy engine's
/// CEL view of it, a rule's identity headers), so that every later request with the same
/// cached credential reuses them. Not part of the principal's identity: equality ignores them
/// and a clone starts empty. Counts the bytes it holds, for the token cache's memory bound.
#[derive(Default)]
pub struct Derived {
    /// The one value of its kind (the CEL view).
    one: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
    /// Values told apart by a key (a rule's identity headers, by the headers' id), allocated
    /// on first use: a principal no rule renders for pays one pointer.
    keyed: std::sync::OnceLock<Box<[KeyedSlot; KEYED_SLOTS]>>,
    /// What the values above take, as their [`Weigh`] estimates it.
    bytes: std::sync::atomic::AtomicUsize,
}

/// A derived value's estimate of the heap memory it holds, itself included.
pub trait Weigh: std::any::Any + Send + Sync {
    /// Bytes, allocator rounding included where it is known to matter.
    fn weight(&self) -> usize;
}

/// How many keyed values a principal keeps: the rules one credential is mostly used with. A
/// further key gets `None` and its caller computes the value each time.
const KEYED_SLOTS: usize = 4;

type KeyedSlot = std::sync::OnceLock<(u64, Box<dyn std::any::Any + Send + Sync>)>;

/// What boxing a value costs beside the value: the allocation's header and rounding.
const BOX_OVERHEAD: usize = 16;

impl Derived {
    /// The value, computed by `init` on first use; `None` only if a value of another type was
    /// stored first.
    pub fn get_or_init<T: Weigh>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.one.get_or_init(|| self.counted(init())).downcast_ref()
    }

    /// The value for `key`, computed by `init` the first time; `None` when every slot holds
    /// another key (or a value of another type), and the caller computes it itself.
    pub fn keyed<T: Weigh>(&self, key: u64, init: impl FnOnce() -> T) -> Option<&T> {
        let slots = self.keyed.get_or_init(|| {
            self.add(std::mem::size_of::<[KeyedSlot; KEYED_SLOTS]>() + BOX_OVERHEAD);
            Box::default()
        });
        let mut init = Some(init);
        for slot in slots.iter() {
            let (k, v) = match slot.get() {
                Some(kv) => kv,
                None => {
                    let f = init.take()?;
                    // Another thread may fill the slot first, with its own key.
                    slot.get_or_init(|| (key, self.counted(f())))
                }
            };
            if *k == key {
                return v.downcast_ref();
            }
        }
        None
    }

    /// The bytes the derived values hold so far.
    pub fn bytes(&self) -> usize {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn counted<T: Weigh>(&self, v: T) -> Box<dyn std::any::Any + Send + Sync> {
        self.add(v.weight() + BOX_OVERHEAD);
        Box::new(v)
    }

    fn add(&self, n: usize) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
impl Weigh for u8 {
    fn weight(&self) -> usize {
        1
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

impl Clone for Derived {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A compiled [`RawPrincipalMapping`].
#[derive(Debug, Clone)]
pub struct Mapping {
    id_claim: Box<str>,
    roles_claim: Option<Box<[Box<str>]>>,
    tenant_claim: Option<Box<[Box<str>]>>,
    scope_claims: Box<[Box<str>]>,
    machine_when: Box<[MachineRule]>,
}

#[derive(Debug, Clone)]
enum MachineRule {
    ClientIdWithoutSub,
    Present(Box<[Box<str>]>),
    Equals(Box<[Box<str>]>, Box<str>),
}

/// Why claims make no principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// No id claim (nor `client_id`/`azp` for a machine).
    #[error("no principal id claim")]
    MissingId,
}

// === impl Principal ===

impl Principal {
    /// Whether the principal holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }

    /// Its size in bytes beyond a fixed part the cache counts (the struct and its claims map's
    /// first node), for the cache's memory bound. Calibrated against measured growth.
    ///
    /// Why: a claim adds its key and value but no map node until the node's eleven slots are
    /// full, so a per-claim overhead over-counted small tokens' claims while the fixed parts
    /// were under-counted.
    /// Regression: tests (it) memory::token_cache_max_bytes_bounds_real_memory
    pub fn weight(&self) -> usize {
        let strs = |v: &[Box<str>]| v.iter().map(|s| s.len() + 16).sum::<usize>();
        256 + self.id.len()
            + strs(&self.scopes)
            + strs(&self.roles)
            + self
                .claims
                .iter()
                .map(|(k, v)| k.len() + json_weight(v) + 16)
                .sum::<usize>()
    }
}

fn json_weight(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 24,
        Value::Array(a) => a.iter().map(json_weight).sum::<usize>() + 24,
        Value::Object(o) => o.iter().map(|(k, v)| k.len() + json_weight(v) + 48).sum(),
        _ => 16,
    }
}

// === impl Mapping ===

impl Mapping {
    /// Compiles the raw mapping.
    pub fn compile(raw: &RawPrincipalMapping) -> Self {
        Self {
            id_claim: raw.id_claim.as_str().into(),
            roles_claim: raw.roles_claim.as_deref().map(split_path),
            tenant_claim: raw.tenant_claim.as_deref().map(split_path),
            scope_claims: raw.scope_claims.iter().map(|s| s.as_str().into()).collect(),
            machine_when: raw
                .machine_when
                .iter()
                .map(|r| match r {
                    RawMachineRule::ClientIdWithoutSub => MachineRule::ClientIdWithoutSub,
                    RawMachineRule::ClaimPresent(c) => MachineRule::Present(split_path(c)),
                    RawMachineRule::ClaimEquals(e) => {
                        MachineRule::Equals(split_path(&e.claim), e.value.as_str().into())
                    }
                })
                .collect(),
        }
    }

    /// Builds the principal from verified claims.
    pub fn principal(
        &self,
        claims: Map<String, Value>,
        authenticator: &Arc<str>,
        issuer: Option<Arc<str>>,
        expires_at: Option<u64>,
    ) -> Result<Principal, PrincipalError> {
        let machine = self.machine_when.iter().any(|rule| match rule {
            // Why `username` too: RFC 7662 names the resource owner of a user's token
            // `username` (`sub` is optional), and `{"username": "carol", "client_id":
            // "svc-batch"}` became the machine principal `svc-batch`, with the client's
            // `kind: machine` rules and its budget. Such a token names no id here: refused.
            // Regression: tests::machine_by_client_id_without_sub
            MachineRule::ClientIdWithoutSub => {
                !claims.contains_key("sub")
                    && !claims.contains_key("username")
                    && (claims.contains_key("client_id") || claims.contains_key("azp"))
            }
            MachineRule::Present(path) => lookup(&claims, path).is_some(),
            MachineRule::Equals(path, value) => {
                lookup(&claims, path).and_then(Value::as_str) == Some(value)
            }
        });
        let id = claims
            .get(&*self.id_claim)
            .and_then(Value::as_str)
            .or_else(|| {
                machine
                    .then(|| {
                        claims
                            .get("client_id")
                            .or_else(|| claims.get("azp"))
                            .and_then(Value::as_str)
                    })
                    .flatten()
            })
            .filter(|s| !s.is_empty())
            .ok_or(PrincipalError::MissingId)?;
        let scopes = self
            .scope_claims
            .iter()
            .find_map(|c| claims.get(&**c))
            .map(|v| strings(v, true))
            .unwrap_or_default();
        let roles = self
            .roles_claim
            .as_ref()
            .and_then(|p| lookup(&claims, p))
            .map(|v| strings(v, false))
            .unwrap_or_default();
        let tenant = self
            .tenant_claim
            .as_ref()
            .and_then(|p| lookup(&claims, p))
            .and_then(Value::as_str)
            .map(Into::into);
        Ok(Principal {
            id: id.into(),
            kind: if machine {
                PrincipalKind::Machine
            } else {
                PrincipalKind::User
            },
            authenticator: Arc::clone(authenticator),
            issuer,
            scopes,
            roles,
            tenant,
            api_key_id: None,
            claims,
            expires_at,
            valid_until: expires_at,
            derived: Default::default(),
        })
    }
}

impl Principal {
    /// When what its request opened (a long response, a tunnel, an identity assertion) ends
    /// with the credential, seen at `now`: `exp`, or, for a credential accepted within its
    /// verifier's leeway (already past `exp`), the end of that leeway, when a new request
    /// with it would be refused.
    // Why: a tunnel or stream opened with a token inside its leeway was closed the moment it
    // opened (or, for a plain response, never cut), and its identity assertion was minted
    // already expired. Regression: tests (it) edge::a_tunnel_opened_within_the_leeway_ends_with_it
    pub fn ends_at(&self, now: u64) -> Option<u64> {
        match self.expires_at {
            Some(exp) if exp > now => Some(exp),
            Some(exp) => Some(self.valid_until.unwrap_or(exp)),
            None => None,
        }
    }
}

fn split_path(path: &str) -> Box<[Box<str>]> {
    path.split('.').map(Into::into).collect()
}

/// The value at a dotted claim path.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &[Box<str>]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(&**first)?;
    for key in rest {
        v = v.as_object()?.get(&**key)?;
    }
    Some(v)
}

/// A string (split on spaces when `split` is set, as OAuth `scope` is) or an array of strings.
fn strings(v: &Value, split: bool) -> Box<[Box<str>]> {
    match v {
        Value::String(s) if split => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(Into::into)
            .collect(),
        Value::String(s) => Box::new([s.as_str().into()]),
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(Into::into).collect(),
        _ => Box::default(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::raw::RawClaimEquals;

    #[expect(clippy::needless_pass_by_value, reason = "tests pass json! literals")]
    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn build(mapping: &RawPrincipalMapping, c: Value) -> Result<Principal, PrincipalError> {
        Mapping::compile(mapping).principal(claims(c), &"jwt".into(), None, None)
    }

    #[test]
    fn user_with_scopes_roles_and_tenant() {
        let m = RawPrincipalMapping {
            roles_claim: Some("realm_access.roles".into()),
            tenant_claim: Some("org.id".into()),
            ..Default::default()
        };
        let p = build(
            &m,
            json!({"sub": "u1", "scope": "read  write", "realm_access": {"roles": ["admin"]}, "org": {"id": "t9"}}),
        )
        .unwrap();
        assert_eq!(&*p.id, "u1");
        assert_eq!(p.kind, PrincipalKind::User);
        assert_eq!(&*p.scopes, &["read".into(), "write".into()] as &[Box<str>]);
        assert_eq!(&*p.roles, &["admin".into()] as &[Box<str>]);
        assert_eq!(p.tenant.as_deref(), Some("t9"));
    }

    #[test]
    fn machine_by_client_id_without_sub() {
        let p = build(
            &RawPrincipalMapping::default(),
            json!({"client_id": "svc", "scp": ["a", "b"]}),
        )
        .unwrap();
        assert_eq!(&*p.id, "svc");
        assert_eq!(p.kind, PrincipalKind::Machine);
        assert!(p.has_scope("b"));
        // A user's introspected token: `username` names its owner. Not the client's machine
        // principal; it names no id here, so it is refused.
        let user = build(
            &RawPrincipalMapping::default(),
            json!({"username": "carol", "client_id": "svc-batch", "scope": "orders:read"}),
        );
        assert!(user.is_err(), "{user:?}");
    }

    #[test]
    fn machine_by_claim_value() {
        let m = RawPrincipalMapping {
            machine_when: vec![RawMachineRule::ClaimEquals(RawClaimEquals {
                claim: "gty".into(),
                value: "client-credentials".into(),
            })],
            ..Default::default()
        };
        let p = build(
            &m,
            json!({"sub": "svc@clients", "gty": "client-credentials"}),
        )
        .unwrap();
        assert_eq!(p.kind, PrincipalKind::Machine);
        let p = build(&m, json!({"sub": "u", "gty": "password"})).unwrap();
        assert_eq!(p.kind, PrincipalKind::User);
    }

    #[test]
    fn no_id_is_an_error() {
        assert_eq!(
            build(&RawPrincipalMapping::default(), json!({"scope": "a"})),
            Err(PrincipalError::MissingId)
        );
        assert_eq!(
            build(&RawPrincipalMapping::default(), json!({"sub": ""})),
            Err(PrincipalError::MissingId)
        );
        assert_eq!(
            build(&RawPrincipalMapping::default(), json!({"sub": 7})),
            Err(PrincipalError::MissingId)
        );
    }
}
