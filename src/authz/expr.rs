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
    uses: Uses,
}

#[derive(Debug, Clone, Copy, Default)]
struct Uses {
    claims: bool,
    principal: bool,
    request: bool,
    params: bool,
    action: bool,
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
        let uses = Uses {
            claims: refs.has_variable("claims"),
            principal: refs.has_variable("principal"),
            request: refs.has_variable("request"),
            params: refs.has_variable("params"),
            action: refs.has_variable("action"),
        };
        Ok(Self {
            program,
            source: source.into(),
            uses,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `params` is used (the caller then extracts path parameters).
    pub fn uses_params(&self) -> bool {
        self.uses.params
    }

    /// Evaluates the condition for a request. The variables borrow from the request and the
    /// principal (no string is copied but decoded query values).
    pub fn eval(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        params: &[(Box<str>, String)],
    ) -> Result<(), ConditionError> {
        let root: &Context<'_, '_> = ROOT.get_or_init(Context::default);
        let mut cx = root.new_inner_scope();
        if self.uses.claims {
            let claims = principal.map_or_else(|| map([]), |p| json_map(&p.claims));
            cx.add_variable_as_val("claims", claims);
        }
        if self.uses.principal {
            cx.add_variable_as_val("principal", principal_value(principal));
        }
        if self.uses.request {
            cx.add_variable_as_val("request", request_value(facts));
        }
        if self.uses.params {
            cx.add_variable_as_val("params", map(params.iter().map(|(k, v)| (&**k, string(v)))));
        }
        if self.uses.action {
            cx.add_variable_as_val("action", string(action(facts)));
        }
        match self.program.execute(&cx) {
            Ok(Cel::Bool(true)) => Ok(()),
            Ok(_) => Err(ConditionError::False),
            Err(e) => Err(ConditionError::Error(e.to_string())),
        }
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

fn optional(v: Option<&str>) -> Val<'_> {
    match v {
        Some(s) => string(s),
        None => Box::new(CelNull),
    }
}

fn principal_value(p: Option<&Principal>) -> Val<'_> {
    let opt = optional;
    map([
        (
            "authenticated",
            Box::new(CelBool::from(p.is_some())) as Val<'_>,
        ),
        ("id", string(p.map_or("", |p| &p.id))),
        (
            "kind",
            string(match p.map(|p| p.kind) {
                Some(PrincipalKind::User) => "user",
                Some(PrincipalKind::Machine) => "machine",
                None => "anonymous",
            }),
        ),
        ("authenticator", opt(p.map(|p| &*p.authenticator))),
        ("issuer", opt(p.and_then(|p| p.issuer.as_deref()))),
        ("tenant", opt(p.and_then(|p| p.tenant.as_deref()))),
        ("api_key_id", opt(p.and_then(|p| p.api_key_id.as_deref()))),
        ("scopes", strings(p.map_or(&[], |p| &p.scopes))),
        ("roles", strings(p.map_or(&[], |p| &p.roles))),
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

fn json_map(m: &serde_json::Map<String, Value>) -> Val<'_> {
    map(m.iter().map(|(k, v)| (k.as_str(), json(v))))
}

fn json(v: &Value) -> Val<'_> {
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
        Value::String(s) => string(s),
        Value::Array(a) => Box::new(CelList::from(a.iter().map(json).collect::<Vec<_>>())),
        Value::Object(o) => json_map(o),
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
