//! The common `when` expressions, compiled at load to a tree that reads the request, the
//! principal and the path parameters where they are, without building CEL values.
//!
//! Contract: [`Fast::eval`] returns `Some(b)` only where the `cel` crate's interpreter
//! returns `Ok(Bool(b))` for the same expression and request; wherever it might differ (a
//! missing key, a value of another type, a null, a number that is not an `i64`), it returns
//! `None` and the caller runs the interpreter, which also words the error. So the subset
//! decides nothing the interpreter would decide otherwise: it only skips the building.
//!
//! The subset: `&&`, `||`, `!`; `==` and `!=` between strings, booleans or integers; `in` a
//! list literal or a list the request reads; `has(claims.a.b)`; and as operands, literals,
//! `claims` paths (`claims.a.b`, `claims['a']`), `params.x`, `action`, `principal.*` and
//! `request.method`, `request.host`, `request.path`. Anything else (a function, a
//! comprehension, `request.query` or `request.headers`, arithmetic) leaves the whole
//! expression to the interpreter.
//!
//! Why `&&` and `||` may short-circuit here: the interpreter evaluates the left side first
//! and returns `false` (`&&`) or `true` (`||`) from it without the right side; a left side
//! this tree cannot decide gives `None` before the right side is looked at, so the
//! interpreter's error absorption (`error && false` is `false`) is never second-guessed.

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue, operators};
use serde_json::Value;

use crate::authn::principal::{Principal, PrincipalKind};
use crate::request::RequestFacts;

/// A compiled boolean expression of the subset.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fast {
    Lit(bool),
    And(Box<Self>, Box<Self>),
    Or(Box<Self>, Box<Self>),
    Not(Box<Self>),
    /// `a == b` (`false`) or `a != b` (`true`).
    Eq(Operand, Operand, bool),
    /// `a in [..]`.
    InList(Operand, Box<[Operand]>),
    /// `a in <a list the request reads>`.
    In(Operand, Operand),
    /// `has(claims.a.b)`: the path to the map, the key.
    Has(Box<[Box<str>]>, Box<str>),
    /// A boolean value read as the condition (`principal.authenticated`, `claims.verified`).
    Truth(Operand),
}

/// A value the subset reads.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    Str(Box<str>),
    Bool(bool),
    Int(i64),
    /// `claims.a.b`: the keys, outermost first.
    Claim(Box<[Box<str>]>),
    Param(Box<str>),
    Action,
    Principal(Field),
    Method,
    Host,
    Path,
}

/// A field of `principal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Authenticated,
    Id,
    Kind,
    Authenticator,
    Issuer,
    Tenant,
    ApiKeyId,
    Scopes,
    Roles,
}

/// What an operand read.
enum Read<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    /// A list of strings (`principal.roles`).
    Strs(&'a [Box<str>]),
    /// A claim's JSON array.
    Json(&'a [Value]),
}

/// What one evaluation reads.
pub(super) struct Input<'a, 'r> {
    pub facts: &'a RequestFacts<'r>,
    pub principal: Option<&'a Principal>,
    pub params: &'a [(Box<str>, String)],
}

// === impl Fast ===

impl Fast {
    /// The subset's tree for `e` (macros expanded), or `None` when `e` is outside it.
    pub(super) fn compile(e: &IdedExpr) -> Option<Self> {
        match &e.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Self::Lit(*b.inner())),
            Expr::Call(c) if c.target.is_none() => match (c.func_name.as_str(), &c.args[..]) {
                (operators::LOGICAL_AND, [a, b]) => Some(Self::And(
                    Box::new(Self::compile(a)?),
                    Box::new(Self::compile(b)?),
                )),
                (operators::LOGICAL_OR, [a, b]) => Some(Self::Or(
                    Box::new(Self::compile(a)?),
                    Box::new(Self::compile(b)?),
                )),
                (operators::LOGICAL_NOT, [a]) => Some(Self::Not(Box::new(Self::compile(a)?))),
                (operators::EQUALS, [a, b]) => {
                    Some(Self::Eq(Operand::compile(a)?, Operand::compile(b)?, false))
                }
                (operators::NOT_EQUALS, [a, b]) => {
                    Some(Self::Eq(Operand::compile(a)?, Operand::compile(b)?, true))
                }
                (operators::IN, [a, b]) => {
                    let needle = Operand::compile(a)?;
                    if let Expr::List(l) = &b.expr {
                        if !l.optional_indices.is_empty() {
                            return None;
                        }
                        let items = l
                            .elements
                            .iter()
                            .map(Operand::compile)
                            .collect::<Option<Box<[_]>>>()?;
                        return Some(Self::InList(needle, items));
                    }
                    Some(Self::In(needle, Operand::compile(b)?))
                }
                _ => None,
            },
            Expr::Select(s) if s.test => {
                let path = claim_path(&s.operand)?;
                Some(Self::Has(path, s.field.as_str().into()))
            }
            _ => Operand::compile(e).map(Self::Truth),
        }
    }

    /// The expression's value where the interpreter's would be that boolean; `None` where
    /// it might be anything else (an error, another type) or differ.
    pub(super) fn eval(&self, input: &Input<'_, '_>) -> Option<bool> {
        match self {
            Self::Lit(b) => Some(*b),
            Self::And(a, b) => {
                if !a.eval(input)? {
                    return Some(false);
                }
                b.eval(input)
            }
            Self::Or(a, b) => {
                if a.eval(input)? {
                    return Some(true);
                }
                b.eval(input)
            }
            Self::Not(a) => a.eval(input).map(|b| !b),
            Self::Eq(a, b, negate) => Some(same(&a.read(input)?, &b.read(input)?)? != *negate),
            Self::InList(needle, items) => {
                let needle = needle.read(input)?;
                // Every item read first: the interpreter builds the whole list (an item it
                // cannot build is an error) before it looks for the needle.
                let items = items
                    .iter()
                    .map(|i| i.read(input))
                    .collect::<Option<Vec<_>>>()?;
                let mut found = false;
                for item in &items {
                    found |= same(&needle, item)?;
                }
                Some(found)
            }
            Self::In(needle, list) => {
                let Read::Str(needle) = needle.read(input)? else {
                    return None;
                };
                match list.read(input)? {
                    Read::Strs(list) => Some(list.iter().any(|s| &**s == needle)),
                    Read::Json(list) => {
                        let mut found = false;
                        for v in list {
                            // A list of strings only: how the crate compares a string
                            // with another type is left to it.
                            found |= v.as_str()? == needle;
                        }
                        Some(found)
                    }
                    _ => None,
                }
            }
            Self::Has(path, key) => {
                let claims = &input.principal?.claims;
                let map = match &path[..] {
                    [] => claims,
                    [first, rest @ ..] => {
                        let mut v = claims.get(&**first)?;
                        for k in rest {
                            v = v.as_object()?.get(&**k)?;
                        }
                        v.as_object()?
                    }
                };
                Some(map.contains_key(&**key))
            }
            Self::Truth(o) => match o.read(input)? {
                Read::Bool(b) => Some(b),
                _ => None,
            },
        }
    }
}

/// Whether two reads are equal, where the crate's `==` is plainly that: strings, booleans
/// and integers of the same type. `None` for anything else.
fn same(a: &Read<'_>, b: &Read<'_>) -> Option<bool> {
    match (a, b) {
        (Read::Str(a), Read::Str(b)) => Some(a == b),
        (Read::Bool(a), Read::Bool(b)) => Some(a == b),
        (Read::Int(a), Read::Int(b)) => Some(a == b),
        _ => None,
    }
}

/// `claims`, `claims.a.b` or `claims['a']['b']` as the keys after `claims`.
fn claim_path(e: &IdedExpr) -> Option<Box<[Box<str>]>> {
    let mut keys: Vec<Box<str>> = Vec::new();
    let mut e = e;
    loop {
        match &e.expr {
            Expr::Ident(n) if n == "claims" => break,
            Expr::Select(s) if !s.test => {
                keys.push(s.field.as_str().into());
                e = &s.operand;
            }
            Expr::Call(c)
                if c.func_name == operators::INDEX && c.target.is_none() && c.args.len() == 2 =>
            {
                let Expr::Literal(LiteralValue::String(k)) = &c.args[1].expr else {
                    return None;
                };
                keys.push(k.inner().into());
                e = &c.args[0];
            }
            _ => return None,
        }
    }
    keys.reverse();
    Some(keys.into())
}

// === impl Operand ===

impl Operand {
    fn compile(e: &IdedExpr) -> Option<Self> {
        match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => Some(Self::Str(s.inner().into())),
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Self::Bool(*b.inner())),
            Expr::Literal(LiteralValue::Int(i)) => Some(Self::Int(*i.inner())),
            Expr::Ident(n) if n == "action" => Some(Self::Action),
            Expr::Select(s) if !s.test => match &s.operand.expr {
                Expr::Ident(n) if n == "params" => Some(Self::Param(s.field.as_str().into())),
                Expr::Ident(n) if n == "principal" => {
                    Some(Self::Principal(match s.field.as_str() {
                        "authenticated" => Field::Authenticated,
                        "id" => Field::Id,
                        "kind" => Field::Kind,
                        "authenticator" => Field::Authenticator,
                        "issuer" => Field::Issuer,
                        "tenant" => Field::Tenant,
                        "api_key_id" => Field::ApiKeyId,
                        "scopes" => Field::Scopes,
                        "roles" => Field::Roles,
                        _ => return None,
                    }))
                }
                Expr::Ident(n) if n == "request" => match s.field.as_str() {
                    "method" => Some(Self::Method),
                    "host" => Some(Self::Host),
                    "path" => Some(Self::Path),
                    _ => None,
                },
                _ => claim_operand(e),
            },
            Expr::Call(c) if c.func_name == operators::INDEX => claim_operand(e),
            _ => None,
        }
    }

    /// What the operand reads; `None` where the interpreter's value would be an error or a
    /// type the subset does not compare (a null, a map, a float).
    fn read<'a>(&'a self, input: &Input<'a, '_>) -> Option<Read<'a>> {
        Some(match self {
            Self::Str(s) => Read::Str(s),
            Self::Bool(b) => Read::Bool(*b),
            Self::Int(i) => Read::Int(*i),
            Self::Claim(path) => {
                let (first, rest) = path.split_first()?;
                let mut v = input.principal?.claims.get(&**first)?;
                for k in rest {
                    v = v.as_object()?.get(&**k)?;
                }
                match v {
                    Value::String(s) => Read::Str(s),
                    Value::Bool(b) => Read::Bool(*b),
                    Value::Number(n) => Read::Int(n.as_i64()?),
                    Value::Array(a) => Read::Json(a),
                    Value::Null | Value::Object(_) => return None,
                }
            }
            // Why: a pattern may name a parameter twice (`/t/{id}/u/{id}`); the interpreter's
            // map keeps the last value, and reading the first allowed `/t/alice/u/bob` for
            // alice where the interpreter denies it.
            // Regression: expr::tests::the_fast_subset_decides_as_the_interpreter
            Self::Param(name) => Read::Str(
                input
                    .params
                    .iter()
                    .rfind(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())?,
            ),
            Self::Action => Read::Str(super::action(input.facts)),
            Self::Method => Read::Str(input.facts.method.as_str()),
            Self::Host => Read::Str(&input.facts.host),
            Self::Path => Read::Str(&input.facts.path),
            Self::Principal(field) => match input.principal {
                Some(p) => match field {
                    Field::Authenticated => Read::Bool(true),
                    Field::Id => Read::Str(&p.id),
                    Field::Kind => Read::Str(match p.kind {
                        PrincipalKind::User => "user",
                        PrincipalKind::Machine => "machine",
                    }),
                    Field::Authenticator => Read::Str(&p.authenticator),
                    Field::Issuer => Read::Str(p.issuer.as_deref()?),
                    Field::Tenant => Read::Str(p.tenant.as_deref()?),
                    Field::ApiKeyId => Read::Str(p.api_key_id.as_deref()?),
                    Field::Scopes => Read::Strs(&p.scopes),
                    Field::Roles => Read::Strs(&p.roles),
                },
                // As `anonymous_value` has it.
                None => match field {
                    Field::Authenticated => Read::Bool(false),
                    Field::Id => Read::Str(""),
                    Field::Kind => Read::Str("anonymous"),
                    Field::Scopes | Field::Roles => Read::Strs(&[]),
                    Field::Authenticator | Field::Issuer | Field::Tenant | Field::ApiKeyId => {
                        return None;
                    }
                },
            },
        })
    }
}

/// A claim path of at least one key as an operand.
fn claim_operand(e: &IdedExpr) -> Option<Operand> {
    let path = claim_path(e)?;
    (!path.is_empty()).then_some(Operand::Claim(path))
}
