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
use std::sync::{Arc, OnceLock};

use cel::objects::{Key, Value as Cel};
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

    /// Evaluates the condition for a request.
    pub fn eval(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        params: &[(Box<str>, String)],
    ) -> Result<(), ConditionError> {
        let root = ROOT.get_or_init(Context::default);
        let mut cx = root.new_inner_scope();
        if self.uses.claims {
            let claims = principal.map_or(Cel::Map(HashMap::<Key, Cel>::new().into()), |p| {
                json_map(&p.claims)
            });
            cx.add_variable_from_value("claims", claims);
        }
        if self.uses.principal {
            cx.add_variable_from_value("principal", principal_value(principal));
        }
        if self.uses.request {
            cx.add_variable_from_value("request", request_value(facts));
        }
        if self.uses.params {
            let map: HashMap<Key, Cel> = params.iter().map(|(k, v)| (key(k), string(v))).collect();
            cx.add_variable_from_value("params", Cel::Map(map.into()));
        }
        if self.uses.action {
            cx.add_variable_from_value("action", string(action(facts)));
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

fn string(s: &str) -> Cel {
    Cel::String(Arc::new(s.to_owned()))
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_owned()))
}

fn strings(v: &[Box<str>]) -> Cel {
    Cel::List(Arc::new(v.iter().map(|s| string(s)).collect()))
}

fn principal_value(p: Option<&Principal>) -> Cel {
    let mut m: HashMap<Key, Cel> = HashMap::new();
    m.insert(key("authenticated"), Cel::Bool(p.is_some()));
    let opt = |v: Option<&str>| v.map_or(Cel::Null, string);
    m.insert(key("id"), string(p.map_or("", |p| &p.id)));
    m.insert(
        key("kind"),
        string(match p.map(|p| p.kind) {
            Some(PrincipalKind::User) => "user",
            Some(PrincipalKind::Machine) => "machine",
            None => "anonymous",
        }),
    );
    m.insert(key("authenticator"), opt(p.map(|p| &*p.authenticator)));
    m.insert(key("issuer"), opt(p.and_then(|p| p.issuer.as_deref())));
    m.insert(key("tenant"), opt(p.and_then(|p| p.tenant.as_deref())));
    m.insert(
        key("api_key_id"),
        opt(p.and_then(|p| p.api_key_id.as_deref())),
    );
    m.insert(key("scopes"), strings(p.map_or(&[], |p| &p.scopes)));
    m.insert(key("roles"), strings(p.map_or(&[], |p| &p.roles)));
    Cel::Map(m.into())
}

fn request_value(facts: &RequestFacts<'_>) -> Cel {
    let mut query: HashMap<Key, Cel> = HashMap::new();
    if let Some(q) = facts.query {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let (Some(k), Some(v)) = (
                crate::authn::credential::decode(k),
                crate::authn::credential::decode(v),
            ) else {
                continue;
            };
            query.entry(key(&k)).or_insert_with(|| string(&v));
        }
    }
    let mut headers: HashMap<Key, Cel> = HashMap::new();
    for (name, value) in facts.headers {
        if let Ok(v) = value.to_str() {
            headers
                .entry(key(name.as_str()))
                .or_insert_with(|| string(v));
        }
    }
    let mut m: HashMap<Key, Cel> = HashMap::new();
    m.insert(key("method"), string(facts.method.as_str()));
    m.insert(key("host"), string(&facts.host));
    m.insert(key("path"), string(&facts.path));
    m.insert(key("query"), Cel::Map(query.into()));
    m.insert(key("headers"), Cel::Map(headers.into()));
    Cel::Map(m.into())
}

fn json_map(m: &serde_json::Map<String, Value>) -> Cel {
    let map: HashMap<Key, Cel> = m.iter().map(|(k, v)| (key(k), json(v))).collect();
    Cel::Map(map.into())
}

fn json(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Cel::Int(i)
            } else if let Some(u) = n.as_u64() {
                Cel::UInt(u)
            } else {
                Cel::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => string(s),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(json).collect())),
        Value::Object(o) => json_map(o),
    }
}

#[cfg(test)]
mod tests {
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
        let conn = ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            listener: "l".into(),
            tls: None,
        };
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
