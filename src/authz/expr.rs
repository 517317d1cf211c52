//! `when`: a CEL expression (the `cel` crate) a rule must satisfy, compiled at load.
//!
//! Variables: `claims` (the principal's claims; empty when anonymous), `principal` (`id`,
//! `kind`, `authenticator`, `issuer`, `tenant`, `scopes`, `roles`, `api_key_id`,
//! `authenticated`), `request` (`method`, `host`, `path`, `query` as a map of first values,
//! `headers` as a map of lowercase names to first values), `params` (named path parameters of
//! the matching path pattern) and `action` (`create` = POST, `read` = GET/HEAD, `read_mine` =
//! GET/HEAD with a `mine` query parameter, `update` = PUT/PATCH, `delete` = DELETE, otherwise
//! the method in lower case).
//!
//! Invariants: only a boolean `true` allows; `false`, another type or an evaluation error
//! (a missing claim, a type mismatch) denies. Only the variables an expression refers to are
//! built for a request.

use std::collections::HashMap;
use std::sync::OnceLock;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::objects::Value as Cel;
use cel::{Context, Program};
use http::Method;
use serde_json::Value;

use crate::authn::principal::{Principal, PrincipalKind};
use crate::request::RequestFacts;

/// A compiled `when` expression.
pub struct Condition {
    program: Program,
    source: Box<str>,
    /// Whether the expression reads `params` (the caller then extracts path parameters).
    uses_params: bool,
}

/// Why a condition did not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionError {
    /// It evaluated to `false` (or to something other than a boolean).
    False,
    /// Evaluation failed: the message, for logs and `explain`.
    Error(String),
}

static ROOT: OnceLock<Context<'static, 'static>> = OnceLock::new();

// === impl Condition ===

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Condition {
    /// Compiles an expression; unknown top-level variables are errors.
    pub fn compile(source: &str) -> Result<Self, String> {
        let program = Program::compile(source).map_err(|e| {
            let text = e.to_string();
            format!(
                "invalid CEL: {}",
                text.lines().next().unwrap_or("syntax error")
            )
        })?;
        let refs = program.references();
        let known = ["claims", "principal", "request", "params", "action"];
        for v in refs.variables() {
            if !known.contains(&v) {
                return Err(format!(
                    "unknown variable `{v}`: use claims, principal, request, params or action"
                ));
            }
        }
        Ok(Self {
            uses_params: refs.has_variable("params"),
            program,
            source: source.into(),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `params` is used (the caller then extracts path parameters).
    pub fn uses_params(&self) -> bool {
        self.uses_params
    }

    /// Evaluates the condition for a request. A variable is built only if the expression
    /// reads it, at most once; `claims` and `principal` are built once per principal and kept
    /// with it (a cached credential's later requests reuse them); the request's variables
    /// borrow from the request (no string is copied but decoded query values).
    pub fn eval(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        params: &[(Box<str>, String)],
    ) -> Result<(), ConditionError> {
        let root: &Context<'_, '_> = ROOT.get_or_init(Context::default);
        let vars = Vars {
            facts,
            principal,
            params,
            built: Default::default(),
        };
        let mut cx = root.new_inner_scope();
        cx.set_variable_resolver(&vars);
        match self.program.execute(&cx) {
            Ok(Cel::Bool(true)) => Ok(()),
            Ok(_) => Err(ConditionError::False),
            Err(e) => Err(ConditionError::Error(e.to_string())),
        }
    }
}

/// The variables of one evaluation, built when the expression first reads them.
struct Vars<'a, 'r> {
    facts: &'a RequestFacts<'r>,
    principal: Option<&'a Principal>,
    params: &'a [(Box<str>, String)],
    /// `claims`, `principal`, `request`, `params`, `action`; the first two only when not kept
    /// with the principal (anonymous).
    built: [OnceLock<Val<'a>>; 5],
}

/// A principal's CEL view, built once and kept in [`Principal::derived`].
struct PrincipalVals {
    claims: Val<'static>,
    principal: Val<'static>,
}

impl<'a, 'r> VariableResolver for Vars<'a, 'r> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let (slot, build): (usize, fn(&Vars<'a, 'r>) -> Val<'a>) = match name {
            "claims" | "principal" => {
                if let Some(p) = self.principal
                    && let Some(v) = p.derived.get_or_init(|| PrincipalVals {
                        claims: json_map_owned(&p.claims),
                        principal: principal_owned(p),
                    })
                {
                    let v = if name == "claims" {
                        &v.claims
                    } else {
                        &v.principal
                    };
                    return Some(CowVal::Borrowed(v.as_ref()));
                }
                // Anonymous; or (should another view ever take the principal's slot first) an
                // authenticated principal's view built for this evaluation alone: never the
                // anonymous one for someone authenticated.
                if name == "claims" {
                    (0, |v| {
                        v.principal
                            .map_or_else(|| map([]), |p| json_map_owned(&p.claims))
                    })
                } else {
                    (1, |v| {
                        v.principal.map_or_else(anonymous_value, principal_owned)
                    })
                }
            }
            "request" => (2, |v| request_value(v.facts)),
            "params" => (3, |v| {
                map(v.params.iter().map(|(k, val)| (&**k, string(val))))
            }),
            "action" => (4, |v| string(action(v.facts))),
            _ => return None,
        };
        Some(CowVal::Borrowed(
            self.built[slot].get_or_init(|| build(self)).as_ref(),
        ))
    }
}

/// The action a request performs, as row-level policies name them.
pub fn action(facts: &RequestFacts<'_>) -> &'static str {
    let m = facts.method;
    if *m == Method::GET || *m == Method::HEAD {
        let mine = facts.query.is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == "mine")
        });
        if mine { "read_mine" } else { "read" }
    } else if *m == Method::POST {
        "create"
    } else if *m == Method::PUT || *m == Method::PATCH {
        "update"
    } else if *m == Method::DELETE {
        "delete"
    } else if *m == Method::OPTIONS {
        "options"
    } else {
        "other"
    }
}

/// A CEL value borrowing for `'a`.
type Val<'a> = Box<dyn cel::common::value::Val + 'a>;

fn string(s: &str) -> Val<'_> {
    Box::new(CelString::from(s))
}

fn owned(s: String) -> Val<'static> {
    Box::new(CelString::from(s))
}

fn map<'a>(entries: impl IntoIterator<Item = (&'a str, Val<'a>)>) -> Val<'a> {
    let m: HashMap<CelMapKey<'a>, Val<'a>> = entries
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), v))
        .collect();
    Box::new(CelMap::from(m))
}

fn strings(v: &[Box<str>]) -> Val<'_> {
    Box::new(CelList::from(
        v.iter().map(|s| string(s)).collect::<Vec<_>>(),
    ))
}

/// `principal` for an anonymous request.
fn anonymous_value() -> Val<'static> {
    map([
        ("authenticated", Box::new(CelBool::from(false)) as Val<'_>),
        ("id", string("")),
        ("kind", string("anonymous")),
        ("authenticator", Box::new(CelNull)),
        ("issuer", Box::new(CelNull)),
        ("tenant", Box::new(CelNull)),
        ("api_key_id", Box::new(CelNull)),
        ("scopes", strings(&[])),
        ("roles", strings(&[])),
    ])
}

/// `principal` for an authenticated request, owning its strings (kept with the principal).
fn principal_owned(p: &Principal) -> Val<'static> {
    let opt = |v: Option<&str>| -> Val<'static> {
        match v {
            Some(s) => owned(s.to_owned()),
            None => Box::new(CelNull),
        }
    };
    let list = |v: &[Box<str>]| -> Val<'static> {
        Box::new(CelList::from(
            v.iter().map(|s| owned(s.to_string())).collect::<Vec<_>>(),
        ))
    };
    map([
        (
            "authenticated",
            Box::new(CelBool::from(true)) as Val<'static>,
        ),
        ("id", owned(p.id.to_string())),
        (
            "kind",
            string(match p.kind {
                PrincipalKind::User => "user",
                PrincipalKind::Machine => "machine",
            }),
        ),
        ("authenticator", owned(p.authenticator.to_string())),
        ("issuer", opt(p.issuer.as_deref())),
        ("tenant", opt(p.tenant.as_deref())),
        ("api_key_id", opt(p.api_key_id.as_deref())),
        ("scopes", list(&p.scopes)),
        ("roles", list(&p.roles)),
    ])
}

fn request_value<'a>(facts: &'a RequestFacts<'_>) -> Val<'a> {
    let mut query: HashMap<CelMapKey<'a>, Val<'a>> = HashMap::new();
    if let Some(q) = facts.query {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let (Some(k), Some(v)) = (
                crate::authn::credential::decode(k),
                crate::authn::credential::decode(v),
            ) else {
                continue;
            };
            query
                .entry(CelMapKey::from(k.into_owned()))
                .or_insert_with(|| owned(v.into_owned()));
        }
    }
    let mut headers: HashMap<CelMapKey<'a>, Val<'a>> = HashMap::new();
    for (name, value) in facts.headers {
        if let Ok(v) = value.to_str() {
            headers
                .entry(CelMapKey::from(name.as_str()))
                .or_insert_with(|| string(v));
        }
    }
    map([
        ("method", string(facts.method.as_str())),
        ("host", string(&facts.host)),
        ("path", string(&facts.path)),
        ("query", Box::new(CelMap::from(query)) as Val<'a>),
        ("headers", Box::new(CelMap::from(headers))),
    ])
}

/// Claims as CEL values owning their strings (kept with the principal).
fn json_map_owned(m: &serde_json::Map<String, Value>) -> Val<'static> {
    let m: HashMap<CelMapKey<'static>, Val<'static>> = m
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.clone()), json_owned(v)))
        .collect();
    Box::new(CelMap::from(m))
}

fn json_owned(v: &Value) -> Val<'static> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Value::String(s) => owned(s.clone()),
        Value::Array(a) => Box::new(CelList::from(a.iter().map(json_owned).collect::<Vec<_>>())),
        Value::Object(o) => json_map_owned(o),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Request;
    use serde_json::json;

    use super::*;
    use crate::request::facts::ConnInfo;

    fn principal() -> Principal {
        Principal {
            id: "u1".into(),
            kind: PrincipalKind::User,
            authenticator: Arc::from("users"),
            issuer: None,
            scopes: vec!["read".into()].into(),
            roles: vec!["admin".into()].into(),
            tenant: Some("acme".into()),
            api_key_id: None,
            claims: json!({"sub": "u1", "org": {"tier": 2}, "groups": ["a", "b"]})
                .as_object()
                .unwrap()
                .clone(),
            expires_at: None,
            derived: Default::default(),
        }
    }

    fn eval(
        expr: &str,
        method: &str,
        target: &str,
        p: Option<&Principal>,
    ) -> Result<(), ConditionError> {
        let (parts, ()) = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "api.test")
            .header("x-team", "blue")
            .body(())
            .unwrap()
            .into_parts();
        let conn = ConnInfo::new("127.0.0.1:1".parse().unwrap(), "l".into(), None);
        let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
        let params = [("user_id".into(), "u1".to_owned())];
        Condition::compile(expr).unwrap().eval(&facts, p, &params)
    }

    #[test]
    fn every_variable() {
        let p = principal();
        for expr in [
            "claims.org.tier == 2",
            "'b' in claims.groups",
            "principal.id == 'u1' && principal.kind == 'user' && principal.authenticated",
            "'admin' in principal.roles && principal.tenant == 'acme'",
            "request.method == 'GET' && request.host == 'api.test' && request.path == '/users/u1'",
            "request.query.page == '2' && request.headers['x-team'] == 'blue'",
            "params.user_id == principal.id",
            "action == 'read'",
            "request.path.startsWith('/users/')",
        ] {
            assert_eq!(
                eval(expr, "GET", "/users/u1?page=2", Some(&p)),
                Ok(()),
                "{expr}"
            );
        }
        assert_eq!(
            eval("params.user_id == principal.id", "GET", "/users/u1", None),
            Err(ConditionError::False)
        );
    }

    #[test]
    fn anonymous_and_repeated_variables() {
        for expr in [
            "!principal.authenticated && principal.kind == 'anonymous' && principal.id == ''",
            "size(claims) == 0 && !has(claims.sub) && principal.issuer == null",
            "request.path == '/users/u1' && request.method == 'GET' && request.query.page == '2'",
            "params.user_id == 'u1' && params.user_id.size() == 2",
        ] {
            assert_eq!(
                eval(expr, "GET", "/users/u1?page=2", None),
                Ok(()),
                "{expr}"
            );
        }
    }

    #[test]
    fn principal_view_is_kept_and_reused() {
        let p = principal();
        let expr =
            "claims.sub == principal.id && principal.roles == ['admin'] && has(claims.org.tier)";
        // The first evaluation builds the principal's view, the next ones reuse it.
        for _ in 0..3 {
            assert_eq!(eval(expr, "GET", "/", Some(&p)), Ok(()));
        }
        assert!(
            p.derived.get_or_init(|| 0u8).is_none(),
            "the view is stored"
        );
        // A clone (another request's principal) builds its own.
        let mut other = p.clone();
        other.id = "u2".into();
        assert_eq!(
            eval("principal.id == 'u2'", "GET", "/", Some(&other)),
            Ok(())
        );
        assert_eq!(
            eval(expr, "GET", "/", Some(&other)),
            Err(ConditionError::False)
        );
        assert_eq!(eval(expr, "GET", "/", Some(&p)), Ok(()));

        // A principal whose slot holds something else still evaluates as itself.
        let taken = principal();
        assert_eq!(taken.derived.get_or_init(|| 7u8), Some(&7));
        assert_eq!(eval(expr, "GET", "/", Some(&taken)), Ok(()));
        assert_eq!(
            eval(
                "principal.authenticated && size(claims) == 3",
                "GET",
                "/",
                Some(&taken)
            ),
            Ok(())
        );
    }

    #[test]
    fn actions_from_methods() {
        for (m, target, want) in [
            ("GET", "/x", "read"),
            ("HEAD", "/x", "read"),
            ("GET", "/x?mine", "read_mine"),
            ("GET", "/x?a=1&mine=true", "read_mine"),
            ("GET", "/x?mined=1", "read"),
            ("POST", "/x", "create"),
            ("PUT", "/x", "update"),
            ("PATCH", "/x", "update"),
            ("DELETE", "/x", "delete"),
        ] {
            assert_eq!(
                eval(&format!("action == '{want}'"), m, target, None),
                Ok(()),
                "{m} {target}"
            );
        }
    }

    #[test]
    fn only_true_allows() {
        let p = principal();
        assert_eq!(
            eval("false", "GET", "/", Some(&p)),
            Err(ConditionError::False)
        );
        assert_eq!(
            eval("'yes'", "GET", "/", Some(&p)),
            Err(ConditionError::False)
        );
        assert!(matches!(
            eval("claims.missing == 'x'", "GET", "/", Some(&p)),
            Err(ConditionError::Error(_))
        ));
        assert!(eval("claims.org.tier == 'two'", "GET", "/", Some(&p)).is_err());
    }

    #[test]
    fn compile_errors() {
        assert!(Condition::compile("claims.x ==").is_err());
        assert!(
            Condition::compile("user.id == 'a'")
                .unwrap_err()
                .contains("unknown variable `user`")
        );
    }
}
