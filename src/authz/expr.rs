//! `when`: a CEL expression (the `cel` crate) a rule must satisfy, compiled at load.
//!
//! Variables: `claims` (the principal's claims; empty when anonymous), `principal` (`id`,
//! `kind`, `authenticator`, `issuer`, `tenant`, `scopes`, `roles`, `api_key_id`,
//! `authenticated`), `request` (`method`, `host`, `path`, `query` as a map of first values,
//! `headers` as a map of names, lower case with `-` for `_` and `.`, to first values; a name
//! the expression reads that the
//! request repeats denies, see [`RequestReads`]), `params` (named path parameters of
//! the matching path pattern) and `action` (`create` = POST, `read` = GET/HEAD, `read_mine` =
//! GET/HEAD with a `mine` query parameter, `update` = PUT/PATCH, `delete` = DELETE, `options` =
//! OPTIONS, `other` for any other method).
//!
//! The comprehension macros (`all`, `exists`, `exists_one`, `map`, `filter`) work with the
//! variables they bind (`claims.roles.exists(r, r == 'admin')`); what they may cost is bounded
//! (see [`budget`]): nesting and size at compile, list length and steps as they run.
//!
//! Invariants: only a boolean `true` allows; `false`, another type, an evaluation error (a
//! missing claim, a type mismatch) or a spent budget denies. Only the variables an expression
//! refers to are built for a request.

mod budget;
mod fast;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::objects::Value as Cel;
use cel::{Context, IdedExpr, Program};
use http::Method;
use serde_json::Value;

use crate::authn::principal::{Principal, PrincipalKind};
use crate::authz::spoofable::Spoofable;
use crate::request::RequestFacts;

pub use self::budget::{Budget, MAX_COMPREHENSION_DEPTH, MAX_NESTING, MAX_NODES, MAX_SOURCE_BYTES};

/// A compiled `when` expression.
pub struct Condition {
    /// The expression, macros expanded (and, if it has comprehensions, metered).
    expr: IdedExpr,
    /// Whether it runs under the budget's meter.
    metered: bool,
    budget: Budget,
    source: Box<str>,
    /// Whether the expression reads `params` (the caller then extracts path parameters).
    uses_params: bool,
    /// Which keys of `request.query` and `request.headers` it reads.
    reads: RequestReads,
    /// Whether it reads `request.path` (or `request` as a whole).
    reads_path: bool,
    /// The query keys it reads, as written and as an upstream reads them; `None` when it
    /// reads the whole map (or none).
    query_keys: Option<Vec<(Box<str>, QueryName)>>,
    /// When it reads `request.query` whole: the text literals it holds, as written and as an
    /// upstream reads them (the names a comprehension over the map may compare with).
    literal_keys: Vec<(Box<str>, QueryName)>,
    /// The expression without CEL values, when it is one of the common ones (see [`fast`]).
    fast: Option<fast::Fast>,
}

/// Which keys of one of the request's maps an expression reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Keys {
    /// None.
    #[default]
    None,
    /// These (`request.query.k`, `request.query['k']`), lower-cased for headers.
    Some(Vec<String>),
    /// Any: the map is read as a whole (`size(…)`, `'k' in …`, a key computed at run time).
    All,
}

/// Which keys of `request.query` and `request.headers` an expression reads.
///
/// Why: the maps hold one value per key, and the upstream gets every value a request
/// repeats: `?author_id=alice&author_id=bob` met `request.query.author_id == principal.id` and
/// the upstream, reading the last (Django, PHP, Rails) or all of them (Spring), served bob's.
/// A key the expression reads that the request repeats makes it an error (a denial).
/// Regression: tests::repeated_keys_an_expression_reads_deny
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestReads {
    /// `request.query`'s keys (decoded names).
    pub query: Keys,
    /// `request.headers`' keys.
    pub headers: Keys,
}

/// Why a condition did not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionError {
    /// It evaluated to `false` (or to something other than a boolean).
    False,
    /// Evaluation failed: the message, for logs and `explain`.
    Error(String),
    /// The evaluation ran past its budget and was cut short.
    BudgetExceeded,
}

/// The variables an expression may read.
const VARIABLES: [&str; 5] = ["claims", "principal", "request", "params", "action"];

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
    /// Compiles an expression; unknown variables (not one of ours, not bound by a
    /// comprehension), comprehensions nested too deep and expressions too large are errors.
    pub fn compile(source: &str, budget: Budget) -> Result<Self, String> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(format!(
                "expression too long: {} bytes, at most {MAX_SOURCE_BYTES}",
                source.len()
            ));
        }
        let program = Program::compile(source).map_err(|e| {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("syntax error");
            // The parser's recursion limit is reported as its internal error's debug form.
            if line.contains("Recursion limit") {
                return "expression nested too deep: past the parser's limit (about 90 levels of parentheses)".to_owned();
            }
            format!("invalid CEL: {line}")
        })?;
        // Why: the crate's reference list names a comprehension's own variables (`r` in
        // `roles.exists(r, …)`) as if they were ours; the check walks scopes instead.
        // Regression: tests::comprehension_macros_and_their_variables
        check_shapes(program.expression())?;
        check_functions(&program)?;
        let mut checked = budget::check(program.expression(), &VARIABLES)?;
        checked.expr = budget::precompile_matches(checked.expr)?;
        let mut reads = RequestReads::default();
        request_reads(program.expression(), &mut reads);
        let fast = fast::Fast::compile(&checked.expr);
        Ok(Self {
            fast,
            expr: checked.expr,
            metered: checked.metered,
            budget,
            uses_params: checked.uses_params,
            reads_path: reads_path(program.expression()),
            query_keys: match &reads.query {
                Keys::Some(keys) => Some(QueryName::keyed(keys)),
                Keys::None | Keys::All => None,
            },
            literal_keys: match &reads.query {
                Keys::All => QueryName::keyed(&text_literals(program.expression())),
                Keys::None | Keys::Some(_) => Vec::new(),
            },
            reads,
            source: source.into(),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The path parameters it reads by name (`params.id`, `params['id']`; not `has(…)`), or
    /// `None` when it reads `params` in another way (whole, or by a computed key).
    pub fn params_named(&self) -> Option<Vec<&str>> {
        use cel::common::ast::{Expr, LiteralValue, operators};
        let mut named = Vec::new();
        let mut stack = vec![&self.expr];
        let is_params = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == "params");
        while let Some(e) = stack.pop() {
            match &e.expr {
                Expr::Select(s) if is_params(&s.operand) => {
                    if !s.test {
                        named.push(s.field.as_str());
                    }
                    continue;
                }
                Expr::Call(c)
                    if c.func_name == operators::INDEX
                        && c.args.len() == 2
                        && is_params(&c.args[0]) =>
                {
                    match &c.args[1].expr {
                        Expr::Literal(LiteralValue::String(k)) => named.push(k.inner()),
                        _ => return None,
                    }
                    continue;
                }
                Expr::Ident(n) if n == "params" => return None,
                _ => {}
            }
            stack.extend(budget::children(e));
        }
        Some(named)
    }

    /// Whether `params` is used (the caller then extracts path parameters).
    pub fn uses_params(&self) -> bool {
        self.uses_params
    }

    /// Whether it reads `request.path` (or `request` as a whole, which holds it).
    pub fn reads_path(&self) -> bool {
        self.reads_path
    }

    /// Evaluates the condition for a request. A variable is built only if the expression
    /// reads it, at most once; `claims` and `principal` are built once per principal and kept
    /// with it (a cached credential's later requests reuse them); the request's variables
    /// borrow from the request (no string is copied but decoded query values).
    /// `spoofable`: the headers the gateway removes before the upstream sees the request
    /// (identity and trusted-header spellings, the override family), absent from
    /// `request.headers`.
    pub fn eval(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        params: &[(Box<str>, String)],
        spoofable: &Spoofable,
    ) -> Result<(), ConditionError> {
        if let Some(repeated) = self.repeated_read(facts, spoofable) {
            return Err(ConditionError::Error(repeated));
        }
        if let Some(fast) = &self.fast {
            let input = fast::Input {
                facts,
                principal,
                params,
            };
            if let Some(allowed) = fast.eval(&input) {
                return if allowed {
                    Ok(())
                } else {
                    Err(ConditionError::False)
                };
            }
        }
        self.interpret(facts, principal, params, spoofable)
    }

    /// Evaluates the condition with the `cel` crate's interpreter, whatever the expression.
    fn interpret(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        params: &[(Box<str>, String)],
        spoofable: &Spoofable,
    ) -> Result<(), ConditionError> {
        let root: &Context<'_, '_> =
            ROOT.get_or_init(|| Context::with_env(Arc::new(budget::env())));
        let vars = Vars {
            facts,
            principal,
            params,
            spoofable,
            built: Default::default(),
        };
        let mut cx = root.new_inner_scope();
        cx.set_variable_resolver(&vars);
        let result = if self.metered {
            let (result, exceeded) = budget::metered(self.budget, || Cel::resolve(&self.expr, &cx));
            if exceeded {
                return Err(ConditionError::BudgetExceeded);
            }
            result
        } else {
            Cel::resolve(&self.expr, &cx)
        };
        match result {
            Ok(Cel::Bool(true)) => Ok(()),
            Ok(_) => Err(ConditionError::False),
            Err(e) => Err(ConditionError::Error(self.describe(&e))),
        }
    }

    /// What went wrong in an evaluation, without the request's values: types, operators,
    /// functions, and a missing key only when the expression itself spells it.
    ///
    /// Why: cel's own text repeats the values (`Unsupported binary operator 'div':
    /// String("Bearer eyJ…"), Int(2)`), and a condition that failed on a credential header
    /// wrote the client's token into the debug log, `explain` and `test`.
    /// Regression: tests::evaluation_errors_repeat_no_value
    fn describe(&self, e: &cel::ExecutionError) -> String {
        use cel::ExecutionError as E;
        fn kind(v: &Cel) -> String {
            v.type_of().to_string()
        }
        match e {
            E::InvalidArgumentCount { expected, actual } => {
                format!("invalid argument count: expected {expected}, got {actual}")
            }
            E::UnsupportedTargetType { target } => {
                format!("invalid argument type: {}", kind(target))
            }
            E::NotSupportedAsMethod { method, target } => {
                format!("method '{method}' not supported on {}", kind(target))
            }
            E::UnsupportedKeyType(v) => format!("a {} cannot be a map key", kind(v)),
            // `got` may be a value's debug text.
            E::UnexpectedType { want, .. } => format!("unexpected type: want {want}"),
            // A key the expression names (`request.headers['x-tenant']`) is told; one taken
            // from the request (a header's value used as a key) is not.
            E::NoSuchKey(k) if self.source.contains(k.as_str()) => format!("no such key: {k}"),
            E::NoSuchKey(_) => "no such key".to_owned(),
            // Types only.
            E::NoSuchOverload(o) => o.to_string(),
            E::UndeclaredReference(r) => format!("undeclared reference to '{r}'"),
            E::MissingArgumentOrTarget => "missing argument or target".to_owned(),
            E::ValuesNotComparable(a, b) => {
                format!("a {} cannot be compared to a {}", kind(a), kind(b))
            }
            E::UnsupportedBinaryOperator(op, a, b) => {
                format!("unsupported operator '{op}' on {} and {}", kind(a), kind(b))
            }
            E::UnsupportedIndex(i, v) => format!("a {} cannot index a {}", kind(i), kind(v)),
            // The gateway's own functions' messages hold no value (`budget`): kept.
            E::FunctionError { function, message }
                if ["when", "matches", "@range", "@read"].contains(&function.as_str()) =>
            {
                format!("{function}: {message}")
            }
            E::FunctionError { function, .. } => format!("function '{function}' failed"),
            E::DivisionByZero(_) => "division by zero".to_owned(),
            E::RemainderByZero(_) => "remainder by zero".to_owned(),
            E::Overflow(op, a, b) => {
                format!("overflow of '{op}' on {} and {}", kind(a), kind(b))
            }
            E::IndexOutOfBounds(_) => "index out of bounds".to_owned(),
            E::DuplicateKey(v) => format!("a repeated {} key", kind(v)),
            _ => "evaluation error".to_owned(),
        }
    }
}

impl Condition {
    /// Which keys of `request.query` and `request.headers` the expression reads.
    pub fn reads(&self) -> &RequestReads {
        &self.reads
    }

    /// A key the expression reads that the request repeats (or a query name that does not
    /// decode, which could be any key), as the error that denies.
    fn repeated_read(&self, facts: &RequestFacts<'_>, spoofable: &Spoofable) -> Option<String> {
        if self.reads.query != Keys::None
            && let Some(q) = facts.query
        {
            // Why: upstream frameworks read other spellings as the same parameter:
            // `author_id[]=bob` and `author_id[0]=bob` (qs, PHP and Rails arrays),
            // `[author_id]` and `author_id]` (qs, Rack 2), `author.id`, `author id`, ` author_id`
            // and `author[id` (PHP), `author_id%00x` (PHP cuts names at NUL), `AUTHOR_ID`
            // (ASP.NET ignores case), and pairs after `;` (Rack before 3, CGI.pm).
            // `?author_id=alice&author_id%5B%5D=bob` passed `request.query.author_id ==
            // principal.id` for alice while Express read [bob, alice]; `?IMPERSONATE=bob`
            // passed `!has(request.query.impersonate)` while ASP.NET read it. A name the
            // expression reads must be spelled exactly and once; a whole-map read refuses two
            // names that may be one parameter. Keyed children (`filter[owner]`,
            // `filter[status]`) are other parameters.
            // Regression: tests::repeated_keys_an_expression_reads_deny
            // The names seen, by base: a name may be read as another only with the same base.
            // Why by base, and at most `MAX_QUERY_NAMES`: each name was compared with every
            // earlier one, before the budget, and 2,377 names in an 8 KB target cost 0.4 to
            // 0.85 s per anonymous request. Regression: tests::many_query_names_are_cheap
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            let mut names_seen = 0usize;
            let mut exact = vec![0u8; self.query_keys.as_ref().map_or(0, Vec::len)];
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                for (n, kv) in pair.split(';').enumerate() {
                    let raw = kv.split_once('=').map_or(kv, |(k, _)| k);
                    let Some(k) = crate::authn::credential::decode(raw) else {
                        // After a `;` it may be part of a value: only a name after `&`
                        // must decode.
                        if n == 0 {
                            return Some("a query parameter name does not decode".to_owned());
                        }
                        continue;
                    };
                    if n > 0 && k.is_empty() {
                        continue;
                    }
                    let (first, second) = QueryName::readings(&k);
                    let names = || std::iter::once(&first).chain(second.as_ref());
                    let exactly = |key: &str| *k == *key;
                    let name: &str = &k;
                    let k = k.escape_debug();
                    // Why: `request.query` leaves out a pair whose value does not decode, so
                    // `?impersonate=%ZZ` passed `!has(request.query.impersonate)` while qs
                    // and PHP read the raw value. Regression: tests::repeated_keys_an_expression_reads_deny
                    let undecodable = || {
                        kv.split_once('=')
                            .is_some_and(|(_, v)| crate::authn::credential::decode(v).is_none())
                    };
                    match &self.query_keys {
                        None => {
                            if undecodable() {
                                return Some(format!(
                                    "query parameter `{k}` has a value that does not decode"
                                ));
                            }
                            names_seen += 1;
                            if names_seen > MAX_QUERY_NAMES {
                                return Some(format!(
                                    "more than {MAX_QUERY_NAMES} query parameters"
                                ));
                            }
                            let repeated = names().any(|n| {
                                seen.get(&n.base).is_some_and(|paths| {
                                    paths.iter().any(|p| {
                                        n.path.starts_with(p.as_str()) || p.starts_with(&n.path)
                                    })
                                })
                            });
                            // Any name, read through the whole map: told only when the
                            // expression spells it (`?<token>&<token>` is a name too).
                            // Regression: tests::evaluation_errors_repeat_no_value
                            if repeated && self.source.contains(name) {
                                return Some(format!(
                                    "query parameter `{k}` is repeated: the upstream may read another value"
                                ));
                            }
                            if repeated {
                                return Some(
                                    "a query parameter is repeated: the upstream may read another value"
                                        .to_owned(),
                                );
                            }
                            // Why: a condition that reads every name (`request.query.all(k,
                            // k != 'debug')`) saw `DEBUG`, `debug[]`, `debug[0]` and
                            // `x=1;debug` as written, and let them through to upstreams that
                            // read them as `debug`. A name an upstream may read as one the
                            // expression writes must be spelled as written there, and not
                            // come after a `;`; other names are as the client wrote them
                            // (`pageSize`). Regression: tests::whole_map_reads_deny_other_spellings
                            let odd = self.literal_keys.iter().any(|(lit, read)| {
                                names().any(|q| q.is_read_as(read)) && (n > 0 || !exactly(lit))
                            });
                            // Told only when the expression spells it, as for a repeat.
                            if odd && self.source.contains(name) {
                                return Some(format!(
                                    "query parameter `{k}` may be read as another name by the upstream"
                                ));
                            }
                            if odd {
                                return Some(
                                    "a query parameter may be read as another name by the upstream"
                                        .to_owned(),
                                );
                            }
                            for n in std::iter::once(first).chain(second) {
                                seen.entry(n.base).or_default().push(n.path);
                            }
                        }
                        Some(keys) => {
                            for ((key, read), count) in keys.iter().zip(&mut exact) {
                                if !names().any(|n| n.is_read_as(read)) {
                                    continue;
                                }
                                if n > 0 {
                                    return Some(format!(
                                        "query parameter `{k}` after a `;` may be read as `{key}` by the upstream"
                                    ));
                                }
                                if !exactly(key) {
                                    return Some(format!(
                                        "query parameter `{k}` may be read as `{key}` by the upstream"
                                    ));
                                }
                                if undecodable() {
                                    return Some(format!(
                                        "query parameter `{k}` has a value that does not decode"
                                    ));
                                }
                                *count += 1;
                                if *count > 1 {
                                    return Some(format!(
                                        "query parameter `{k}` is repeated: the upstream may read another value"
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        // `host` is the decided authority and `cookie` the joined crumbs (see
        // `request_value`): one value each, whatever the client sent.
        // Names hidden from the view are never read, repeated or not.
        // Why: CGI-style upstreams (Rack, PHP, WSGI) read `x_tenant` as `X-Tenant`, so
        // `X-Tenant: acme` with `x_tenant: evil` passed `request.headers['x-tenant'] == 'acme'`
        // while such an upstream may read evil: another `_`/`-` spelling is a repeat too.
        // Regression: tests::repeated_keys_an_expression_reads_deny
        let same = crate::authz::spoofable::same_dashed;
        let repeated = |name: &str| {
            name != "host"
                && name != "cookie"
                && facts
                    .headers
                    .keys()
                    .filter(|n| same(n.as_str(), name))
                    .flat_map(|n| facts.headers.get_all(n))
                    .nth(1)
                    .is_some()
                && !http::HeaderName::from_bytes(name.as_bytes())
                    .is_ok_and(|n| hidden(&n, facts, spoofable))
        };
        // Why: a value that is not text (bytes 0x80-0xFF, which HTTP/1.1 carries as obs-text)
        // is left out of `request.headers`, so `X-Impersonate: b\xE9b` passed
        // `!('x-impersonate' in request.headers)` while the upstream got the header. A name
        // the expression reads, in any `_`/`-` spelling, must be text.
        // Regression: tests::header_values_that_are_not_text_deny
        let unreadable = |name: &str| {
            name != "host"
                && facts
                    .headers
                    .iter()
                    .any(|(n, v)| same(n.as_str(), name) && v.to_str().is_err())
                && !http::HeaderName::from_bytes(name.as_bytes())
                    .is_ok_and(|n| hidden(&n, facts, spoofable))
        };
        // The first header the expression reads (every one, for a whole-map read) for which
        // `bad` holds.
        let first_read = |bad: &dyn Fn(&str) -> bool| match &self.reads.headers {
            Keys::None => None,
            Keys::Some(keys) => keys.iter().find(|k| bad(k)).cloned(),
            Keys::All => facts
                .headers
                .keys()
                .find(|n| bad(n.as_str()))
                .map(|n| n.as_str().to_owned()),
        };
        if let Some(h) = first_read(&unreadable) {
            return Some(format!(
                "header `{h}` has a value that is not text: the upstream may read it"
            ));
        }
        first_read(&repeated)
            .map(|h| format!("header `{h}` is repeated: the upstream may read another value"))
    }
}

impl Keys {
    fn add(&mut self, key: String) {
        match self {
            Self::None => *self = Self::Some(vec![key]),
            Self::Some(keys) if !keys.contains(&key) => keys.push(key),
            _ => {}
        }
    }
}

/// A bracket path as Rack 2 reads it: lower case, runs of `[` or `]` as one, a `]` right
/// after the base dropped, and a last child closed (`[[owner]]`, `][owner]` and `[owner`
/// are all `[owner]`).
fn bracket_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    for c in path.trim_start_matches(']').chars() {
        if (c == '[' || c == ']') && out.ends_with(c) {
            continue;
        }
        out.push(c.to_ascii_lowercase());
    }
    // `Some(i) > None`: a `[` with no `]` after it.
    if out.rfind('[') > out.rfind(']') {
        out.push(']');
    }
    out
}

/// The text literals of an expression (`'debug'` in `request.query.all(k, k != 'debug')`).
fn text_literals(e: &IdedExpr) -> Vec<String> {
    use cel::common::ast::{Expr, LiteralValue};
    let mut out = Vec::new();
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        if let Expr::Literal(LiteralValue::String(s)) = &e.expr {
            out.push(s.inner().to_owned());
        }
        stack.extend(budget::children(e));
    }
    out
}

/// Whether `e` reads `request.path`: `request.path`, `request['path']`, or `request` other
/// than through one of its fields.
fn reads_path(e: &IdedExpr) -> bool {
    use cel::common::ast::{Expr, LiteralValue, operators};
    let is_request = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == "request");
    match &e.expr {
        Expr::Select(s) if is_request(&s.operand) => s.field == "path",
        Expr::Call(c)
            if c.func_name == operators::INDEX && c.args.len() == 2 && is_request(&c.args[0]) =>
        {
            !matches!(&c.args[1].expr, Expr::Literal(LiteralValue::String(k)) if k.inner() != "path")
        }
        Expr::Ident(n) => n == "request",
        _ => budget::children(e).into_iter().any(reads_path),
    }
}

/// `principal`'s fields.
const PRINCIPAL_FIELDS: [&str; 9] = [
    "authenticated",
    "id",
    "kind",
    "authenticator",
    "issuer",
    "tenant",
    "api_key_id",
    "scopes",
    "roles",
];

/// `request`'s fields.
const REQUEST_FIELDS: [&str; 5] = ["method", "host", "path", "query", "headers"];

/// Every value `action` takes ([`action`]).
const ACTIONS: [&str; 7] = [
    "create",
    "read",
    "read_mine",
    "update",
    "delete",
    "options",
    "other",
];

/// Every value `principal.kind` takes.
const KINDS: [&str; 3] = ["user", "machine", "anonymous"];

/// Refuses what can never be true of the variables with a fixed shape: a field `principal`
/// or `request` does not have (`principal.idd`), an `action` or `principal.kind` compared
/// with a value it never takes (`action == 'raed'`), and a misspelled comprehension macro
/// (`roles.exsts(r, …)`, which would otherwise be reported as the unknown variable `r`).
///
/// Why: such a typo passed `check` and a hot reload, and the rule then failed closed for
/// every request: an outage shipped by an edit `check` had called ok. `claims` is the
/// issuer's to shape, and is not checked. Regression: tests::typos_in_fixed_shapes_are_refused
fn check_shapes(root: &IdedExpr) -> Result<(), String> {
    use cel::common::ast::{Expr, LiteralValue, operators};
    // A comprehension may bind one of our names (`[1].all(action, …)`): its reads are then
    // of the bound value, and that name is not checked anywhere.
    let mut shadowed: Vec<&str> = Vec::new();
    let mut stack = vec![root];
    while let Some(e) = stack.pop() {
        if let Expr::Comprehension(c) = &e.expr {
            shadowed.push(&c.iter_var);
            shadowed.extend(c.iter_var2.as_deref());
            shadowed.push(&c.accu_var);
        }
        stack.extend(budget::children(e));
    }
    let ident = |e: &IdedExpr, name: &str| {
        matches!(&e.expr, Expr::Ident(n) if n == name) && !shadowed.contains(&name)
    };
    let text = |e: &IdedExpr| match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
        _ => None,
    };
    let field = |var: &str, f: &str, fields: &[&str]| -> Result<(), String> {
        if fields.contains(&f) {
            Ok(())
        } else {
            Err(format!(
                "`{var}.{f}`: {var} has no field `{f}` (it has {})",
                fields.join(", ")
            ))
        }
    };
    // `x` compared with the literal `v`: `v` must be one of `values`.
    let value = |what: &str, v: &str, values: &[&str]| -> Result<(), String> {
        if values.contains(&v) {
            Ok(())
        } else {
            Err(format!(
                "`{what}` is never '{v}' (it is one of {})",
                values.join(", ")
            ))
        }
    };
    let is_kind = |e: &IdedExpr| matches!(&e.expr, Expr::Select(s) if !s.test && s.field == "kind" && ident(&s.operand, "principal"));
    let is_request = |e: &IdedExpr, f: &str| matches!(&e.expr, Expr::Select(s) if !s.test && s.field == f && ident(&s.operand, "request"));
    // Why: these passed `check` and could never be true: a header read by a name with
    // capitals (the map is keyed in lower case), a method compared in lower case (a
    // lowercase method is refused before any rule), a condition that is not a boolean.
    // Regression: tests::typos_in_fixed_shapes_are_refused
    // A name with `_` or `.` likewise: the map is keyed by each name as CGI-style
    // upstreams read it, `-` for both (see `request_value`).
    let header_name = |name: &str| -> Result<(), String> {
        if name
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b == b'_' || b == b'.')
        {
            Err(format!(
                "`request.headers['{name}']`: header names are keyed in lower case, with `-` for `_` and `.` ('{}')",
                crate::authz::identity::fold_name(name)
            ))
        } else {
            Ok(())
        }
    };
    if let Expr::Literal(l) = &root.expr
        && !matches!(l, LiteralValue::Boolean(_))
    {
        return Err("a condition must be true or false; this is a constant of another type".into());
    }
    // Why: `principal.id + 'x'` passed `check` and denied every request (403
    // `condition_failed`). What arithmetic, a list or a map gives is never a boolean.
    // Regression: tests::typos_in_fixed_shapes_are_refused
    let arithmetic = [
        operators::ADD,
        operators::SUBSTRACT,
        operators::MULTIPLY,
        operators::DIVIDE,
        operators::MODULO,
        operators::NEGATE,
    ];
    if matches!(&root.expr, Expr::List(_) | Expr::Map(_))
        || matches!(&root.expr, Expr::Call(c) if arithmetic.contains(&c.func_name.as_str()))
    {
        return Err(
            "a condition must be true or false; this gives a number, a string, a list or a map"
                .into(),
        );
    }
    // Why: a comparison or an operation between values of known, different types (a string
    // with a number, a number's `size`, a string where a condition belongs) passed `check`,
    // and the rule then denied every request (`request.path > 5`: "no matching overload")
    // or, with `!=`, held for every one (`params.id != 5`).
    // Regression: tests::type_errors_between_known_types_are_refused
    if let Some(t) = static_type(root, &shadowed, 0)?
        && t != Ty::Bool
    {
        return Err(format!(
            "a condition must be true or false; this gives {}",
            t.name()
        ));
    }
    let mut stack = vec![root];
    while let Some(e) = stack.pop() {
        match &e.expr {
            Expr::Select(s) => {
                if ident(&s.operand, "principal") {
                    field("principal", &s.field, &PRINCIPAL_FIELDS)?;
                } else if ident(&s.operand, "request") {
                    field("request", &s.field, &REQUEST_FIELDS)?;
                } else if is_request(&s.operand, "headers") {
                    header_name(&s.field)?;
                }
            }
            Expr::Call(c) if c.func_name == operators::INDEX && c.args.len() == 2 => {
                if let Some(f) = text(&c.args[1]) {
                    if is_request(&c.args[0], "headers") {
                        header_name(&f)?;
                    } else if ident(&c.args[0], "principal") {
                        field("principal", &f, &PRINCIPAL_FIELDS)?;
                    } else if ident(&c.args[0], "request") {
                        field("request", &f, &REQUEST_FIELDS)?;
                    }
                }
            }
            Expr::Call(c)
                if (c.func_name == operators::EQUALS || c.func_name == operators::NOT_EQUALS)
                    && c.args.len() == 2 =>
            {
                for (a, b) in [(&c.args[0], &c.args[1]), (&c.args[1], &c.args[0])] {
                    if let Some(v) = text(b) {
                        if is_request(a, "method") && v.bytes().any(|b| b.is_ascii_lowercase()) {
                            return Err(format!(
                                "`request.method` is never '{v}': methods are upper case ('{}'; a lowercase one is refused before any rule)",
                                v.to_ascii_uppercase()
                            ));
                        }
                        if ident(a, "action") {
                            value("action", &v, &ACTIONS)?;
                        } else if is_kind(a) {
                            value("principal.kind", &v, &KINDS)?;
                        }
                    }
                }
            }
            // Why: `principal.id.matches('[a-')` passed `check` and denied every request,
            // with the regex error only in `explain`. Regression: tests::typos_in_fixed_shapes_are_refused
            Expr::Call(c) if c.func_name == "matches" => {
                let pattern = match (&c.target, c.args.as_slice()) {
                    (Some(_), [p]) | (None, [_, p]) => text(p),
                    _ => None,
                };
                if let Some(p) = pattern
                    && let Err(e) = regex::Regex::new(&p)
                {
                    let e = e.to_string();
                    let why = e.lines().last().unwrap_or_default().trim();
                    return Err(format!(
                        "`matches('{p}')`: not a valid regular expression: {why}"
                    ));
                }
            }
            Expr::Call(c) if c.func_name == operators::IN && c.args.len() == 2 => {
                if is_request(&c.args[1], "headers")
                    && let Some(name) = text(&c.args[0])
                {
                    header_name(&name)?;
                }
                let what = if ident(&c.args[0], "action") {
                    Some(("action", &ACTIONS[..]))
                } else if is_kind(&c.args[0]) {
                    Some(("principal.kind", &KINDS[..]))
                } else {
                    None
                };
                if let (Some((what, values)), Expr::List(l)) = (what, &c.args[1].expr) {
                    for v in l.elements.iter().filter_map(text) {
                        value(what, &v, values)?;
                    }
                }
            }
            // A macro the parser did not know is left a call whose first argument is the
            // variable it meant to bind.
            Expr::Call(c)
                if c.target.is_some()
                    && c.args.len() >= 2
                    && matches!(&c.args[0].expr, Expr::Ident(n) if !VARIABLES.contains(&n.as_str())) =>
            {
                const MACROS: [&str; 5] = ["all", "exists", "exists_one", "map", "filter"];
                return Err(if MACROS.contains(&c.func_name.as_str()) {
                    format!(
                        "`{}` takes one variable and an expression (`{}(x, …)`; `map` may add a filter: `map(x, cond, value)`)",
                        c.func_name, c.func_name
                    )
                } else {
                    format!(
                        "unknown function `{}`: the macros are all, exists, exists_one, map and filter",
                        c.func_name
                    )
                });
            }
            _ => {}
        }
        stack.extend(budget::children(e));
    }
    Ok(())
}

/// Refuses a call of a function no context declares (`lowerAscii`, `nosuchfn`, a typo).
///
/// Why: such a call passed `check` and a reload, and failed at every request ("undeclared
/// reference"), so the rule denied them all: an outage shipped by an edit `check` had called
/// ok. Regression: tests::unknown_functions_are_refused
fn check_functions(program: &Program) -> Result<(), String> {
    let root: &Context<'_, '_> = ROOT.get_or_init(|| Context::with_env(Arc::new(budget::env())));
    for name in program.references().functions() {
        // Operators (`_==_`, `@in`, `!_`), and namespaced names, are the parser's own.
        if !name.starts_with(|c: char| c.is_ascii_alphabetic())
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            continue;
        }
        // Calls with no arguments, globally and on a value of each kind: a declared
        // function answers at least one with another error (its arguments), or a value; an
        // undeclared one each as undeclared.
        let undeclared = [
            "", "''.", "[].", "{}.", "1.", "1u.", "1.0.", "true.", "b''.",
        ]
        .iter()
        .all(|on| {
            Program::compile(&format!("{on}{name}()")).is_ok_and(|probe| {
                matches!(
                    probe.execute(root),
                    Err(cel::ExecutionError::UndeclaredReference(_))
                )
            })
        });
        if undeclared {
            return Err(format!(
                "unknown function `{name}` (the functions are CEL's standard ones: size, contains, startsWith, endsWith, matches, int, uint, double, string, …)"
            ));
        }
    }
    Ok(())
}

/// The type an expression has whatever the request, where it is known: the literals, the
/// fields of `principal` and `request` that always have one type, `action`, `params`, and
/// what operators and functions give. `claims`, and what may be null, are not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Null,
    List,
    Map,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Self::Bool => "a boolean",
            Self::Int | Self::Uint | Self::Double => "a number",
            Self::String => "a string",
            Self::Bytes => "bytes",
            Self::Null => "null",
            Self::List => "a list",
            Self::Map => "a map",
        }
    }

    fn number(self) -> bool {
        matches!(self, Self::Int | Self::Uint | Self::Double)
    }

    /// Whether a value of one may equal or be ordered with a value of the other.
    fn comparable(self, other: Self) -> bool {
        self == other || (self.number() && other.number())
    }
}

/// [`Ty`] of `e` (`None` when not known), or why it is an error whatever the request: an
/// operation between values of known types that do not go together.
///
/// Deeper than [`MAX_NESTING`] (refused later, by the budget), nothing is known: it runs
/// before that check, on a thread with a small stack.
fn static_type(e: &IdedExpr, shadowed: &[&str], depth: usize) -> Result<Option<Ty>, String> {
    use cel::common::ast::{Expr, LiteralValue, operators};
    if depth > MAX_NESTING {
        return Ok(None);
    }
    let ident = |e: &IdedExpr, name: &str| {
        matches!(&e.expr, Expr::Ident(n) if n == name) && !shadowed.contains(&name)
    };
    let is_request = |e: &IdedExpr, f: &str| matches!(&e.expr, Expr::Select(s) if !s.test && s.field == f && ident(&s.operand, "request"));
    let ty = |e: &IdedExpr| static_type(e, shadowed, depth + 1);
    Ok(match &e.expr {
        Expr::Literal(l) => Some(match l {
            LiteralValue::Boolean(_) => Ty::Bool,
            LiteralValue::Int(_) => Ty::Int,
            LiteralValue::UInt(_) => Ty::Uint,
            LiteralValue::Double(_) => Ty::Double,
            LiteralValue::String(_) => Ty::String,
            LiteralValue::Bytes(_) => Ty::Bytes,
            LiteralValue::Null => Ty::Null,
        }),
        Expr::List(l) => {
            for x in &l.elements {
                ty(x)?;
            }
            Some(Ty::List)
        }
        Expr::Map(_) => Some(Ty::Map),
        Expr::Ident(n) if n == "action" && !shadowed.contains(&"action") => Some(Ty::String),
        Expr::Select(s) if s.test => Some(Ty::Bool),
        Expr::Select(s) if ident(&s.operand, "principal") => match s.field.as_str() {
            "authenticated" => Some(Ty::Bool),
            "id" | "kind" | "authenticator" => Some(Ty::String),
            "scopes" | "roles" => Some(Ty::List),
            _ => None,
        },
        Expr::Select(s) if ident(&s.operand, "request") => match s.field.as_str() {
            "method" | "host" | "path" => Some(Ty::String),
            "query" | "headers" => Some(Ty::Map),
            _ => None,
        },
        Expr::Select(s)
            if ident(&s.operand, "params")
                || is_request(&s.operand, "headers")
                || is_request(&s.operand, "query") =>
        {
            Some(Ty::String)
        }
        Expr::Call(c) => {
            let mut args = Vec::with_capacity(c.args.len() + 1);
            if let Some(t) = &c.target {
                args.push(ty(t)?);
            }
            for a in &c.args {
                args.push(ty(a)?);
            }
            let f = c.func_name.as_str();
            let both = |op: &str| -> Result<Option<(Ty, Ty)>, String> {
                match args.as_slice() {
                    [Some(a), Some(b)] => Ok(Some((*a, *b))),
                    [_, _] => Ok(None),
                    _ => Err(format!("`{op}` takes two values")),
                }
            };
            match f {
                operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS => {
                    if let Some((a, b)) = both(f)?
                        && !a.comparable(b)
                        && a != Ty::Null
                        && b != Ty::Null
                    {
                        return Err(format!(
                            "compares {} with {}: never equal, never ordered (convert one: `int(…)`, `string(…)`)",
                            a.name(),
                            b.name()
                        ));
                    }
                    Some(Ty::Bool)
                }
                operators::ADD
                | operators::SUBSTRACT
                | operators::MULTIPLY
                | operators::DIVIDE
                | operators::MODULO => match both(f)? {
                    Some((a, b)) if a.number() && b.number() && a == b => Some(a),
                    Some(
                        (Ty::String, Ty::String) | (Ty::List, Ty::List) | (Ty::Bytes, Ty::Bytes),
                    ) if f == operators::ADD => args[0],
                    // CEL does no arithmetic between an int, a uint and a double either.
                    Some((a, b)) if a.number() && b.number() => {
                        let kind = |t: Ty| match t {
                            Ty::Int => "an int",
                            Ty::Uint => "a uint",
                            _ => "a double",
                        };
                        return Err(format!(
                            "no arithmetic between {} and {}: convert one (`double(…)`, `int(…)`)",
                            kind(a),
                            kind(b)
                        ));
                    }
                    Some((a, b)) => {
                        return Err(format!(
                            "no arithmetic between {} and {}: an error for every request",
                            a.name(),
                            b.name()
                        ));
                    }
                    None => None,
                },
                operators::LOGICAL_AND | operators::LOGICAL_OR | operators::LOGICAL_NOT => {
                    if let Some(t) = args.iter().flatten().find(|t| **t != Ty::Bool) {
                        return Err(format!(
                            "`&&`, `||` and `!` take conditions; this is {}",
                            t.name()
                        ));
                    }
                    Some(Ty::Bool)
                }
                operators::IN => {
                    if let [_, Some(t)] = args.as_slice()
                        && !matches!(t, Ty::List | Ty::Map)
                    {
                        return Err(format!(
                            "`in` looks in a list or a map; this is {}",
                            t.name()
                        ));
                    }
                    Some(Ty::Bool)
                }
                operators::CONDITIONAL => match args.as_slice() {
                    [c, a, b] => {
                        if let Some(c) = c.filter(|c| *c != Ty::Bool) {
                            return Err(format!(
                                "`? :` takes a condition first; this is {}",
                                c.name()
                            ));
                        }
                        if a == b { *a } else { None }
                    }
                    _ => None,
                },
                // (`contains` also looks in a list or a map.)
                "contains" => Some(Ty::Bool),
                "startsWith" | "endsWith" | "matches" => {
                    if let Some(t) = args.iter().flatten().find(|t| **t != Ty::String) {
                        return Err(format!("`{f}` takes strings; this is {}", t.name()));
                    }
                    Some(Ty::Bool)
                }
                "size" => {
                    if let [Some(t)] = args.as_slice()
                        && !matches!(t, Ty::String | Ty::Bytes | Ty::List | Ty::Map)
                    {
                        return Err(format!(
                            "`size` measures a string, a list or a map; this is {}",
                            t.name()
                        ));
                    }
                    Some(Ty::Int)
                }
                operators::INDEX
                    if c.args.first().is_some_and(|m| {
                        ident(m, "params") || is_request(m, "headers") || is_request(m, "query")
                    }) =>
                {
                    Some(Ty::String)
                }
                "int" => Some(Ty::Int),
                "uint" => Some(Ty::Uint),
                "double" => Some(Ty::Double),
                "string" => Some(Ty::String),
                "has" => Some(Ty::Bool),
                _ => None,
            }
        }
        _ => None,
    })
}

/// A query parameter name as the most lenient upstream frameworks read it: its base and
/// its bracket path (`filter[owner][]` is `filter` and `[owner][]`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueryName {
    /// Cut at a NUL (PHP's C strings), leading spaces and brackets dropped (PHP, qs, Rack 2),
    /// ASCII case folded (ASP.NET), and `.`, space, `+` and an unmatched `[` read as `_`
    /// (PHP).
    base: String,
    /// The brackets after the base, lower case, a run of `]` right after it dropped (Rack 2).
    path: String,
}

/// The most query parameters a request may have when an expression reads the whole
/// `request.query` map (PHP's `max_input_vars` is 1,000 too).
const MAX_QUERY_NAMES: usize = 1_000;

impl QueryName {
    /// The name as frameworks read it, and a second reading when they disagree: a `[` with no
    /// `]` after it is `_` to PHP (`author[id` is `author_id`) but opens a child to qs and
    /// Rack 2 (`author` and `[id`).
    fn readings(name: &str) -> (Self, Option<Self>) {
        let name = name.split('\0').next().unwrap_or_default();
        // Spring binds `!name` as `name`'s default value.
        let name = name
            .trim_start_matches([' ', '+', '!'])
            .trim_start_matches(['[', ']']);
        let (base, path) = match name.find(['[', ']']) {
            Some(i) => (&name[..i], &name[i..]),
            None => (name, ""),
        };
        let fold = |base: &str| -> String {
            base.chars()
                .map(|c| match c {
                    '.' | ' ' | '+' | '[' => '_',
                    c => c.to_ascii_lowercase(),
                })
                .collect()
        };
        let nested = Self {
            base: fold(base),
            path: bracket_path(path),
        };
        if path.starts_with('[') && !path.contains(']') {
            let flat = Self {
                base: fold(name),
                path: String::new(),
            };
            (flat, Some(nested))
        } else {
            (nested, None)
        }
    }

    /// The first reading (a key as an expression names it).
    fn of(name: &str) -> Self {
        Self::readings(name).0
    }

    /// Names an expression writes, each as written and as [`Self::of`] reads it.
    fn keyed(names: &[String]) -> Vec<(Box<str>, Self)> {
        names
            .iter()
            .map(|k| (k.as_str().into(), Self::of(k)))
            .collect()
    }

    /// Whether the upstream may read this name as part of `key`: the same base, and `key`'s
    /// brackets (none, for a plain key) leading this name's (`ids[]`, `ids[0]` and `ids`
    /// are read as `ids`; `filter[status]` is not `filter[owner]`).
    fn is_read_as(&self, key: &Self) -> bool {
        self.base == key.base && self.path.starts_with(&key.path)
    }

    /// Whether the upstream may read the two names as one parameter.
    fn may_be(&self, other: &Self) -> bool {
        self.is_read_as(other) || other.is_read_as(self)
    }
}

/// A (decoded) query name as upstream frameworks may read it ([`QueryName`]: PHP's `.` and
/// space, arrays, ASP.NET's case…), read once to compare with many names.
#[derive(Debug)]
pub struct QueryNameReadings<'a> {
    name: &'a str,
    readings: (QueryName, Option<QueryName>),
}

impl<'a> QueryNameReadings<'a> {
    /// The readings of `name`.
    pub fn of(name: &'a str) -> Self {
        Self {
            name,
            readings: QueryName::readings(name),
        }
    }

    /// The name as given.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Whether some framework may read `other` (decoded) and this name as one parameter.
    pub fn may_be(&self, other: &str) -> bool {
        let (b1, b2) = QueryName::readings(other);
        let (a1, a2) = &self.readings;
        let bs = [Some(&b1), b2.as_ref()];
        [Some(a1), a2.as_ref()]
            .into_iter()
            .flatten()
            .any(|x| bs.into_iter().flatten().any(|y| x.may_be(y)))
    }
}

/// Finds what `e` reads of `request.query` and `request.headers` (see [`RequestReads`]):
/// `request.<map>.k`, `request.<map>['k']` and `has(request.<map>.k)` read `k`; any other use
/// of the map, or of `request` as a whole, reads every key.
fn request_reads(e: &IdedExpr, out: &mut RequestReads) {
    use cel::common::ast::{Expr, LiteralValue, operators};
    // `request.query` or `request.headers`, as the map it names.
    fn map_of<'o>(e: &IdedExpr, out: &'o mut RequestReads) -> Option<&'o mut Keys> {
        let Expr::Select(s) = &e.expr else {
            return None;
        };
        if !matches!(&s.operand.expr, Expr::Ident(n) if n == "request") {
            return None;
        }
        match s.field.as_str() {
            "query" => Some(&mut out.query),
            "headers" => Some(&mut out.headers),
            _ => None,
        }
    }
    let lower = |k: &str, headers: bool| {
        if headers {
            k.to_ascii_lowercase()
        } else {
            k.to_owned()
        }
    };
    match &e.expr {
        Expr::Select(s) => {
            let headers = matches!(&s.operand.expr, Expr::Select(m) if m.field == "headers");
            if let Some(keys) = map_of(&s.operand, out) {
                keys.add(lower(&s.field, headers));
                return;
            }
            if let Expr::Ident(n) = &s.operand.expr
                && n == "request"
            {
                match s.field.as_str() {
                    // The map itself, not one key of it.
                    "query" => out.query = Keys::All,
                    "headers" => out.headers = Keys::All,
                    _ => {}
                }
                return;
            }
        }
        Expr::Call(c)
            if c.func_name == operators::INDEX && c.target.is_none() && c.args.len() == 2 =>
        {
            let headers = matches!(&c.args[0].expr, Expr::Select(m) if m.field == "headers");
            let key = match &c.args[1].expr {
                Expr::Literal(LiteralValue::String(k)) => Some(lower(k.inner(), headers)),
                _ => None,
            };
            if let Some(keys) = map_of(&c.args[0], out) {
                match key {
                    Some(k) => keys.add(k),
                    None => *keys = Keys::All,
                }
                request_reads(&c.args[1], out);
                return;
            }
        }
        // `'k' in request.<map>` asks for one key, as `has(request.<map>.k)` does.
        // Why: read as the whole map, the exact-spelling rule never applied to it:
        // `?DEBUG=1` passed `!('debug' in request.query)` while ASP.NET read `debug`.
        // Regression: tests::repeated_keys_an_expression_reads_deny
        Expr::Call(c)
            if c.func_name == operators::IN && c.target.is_none() && c.args.len() == 2 =>
        {
            if let Expr::Literal(LiteralValue::String(k)) = &c.args[0].expr {
                let headers = matches!(&c.args[1].expr, Expr::Select(m) if m.field == "headers");
                let key = lower(k.inner(), headers);
                if let Some(keys) = map_of(&c.args[1], out) {
                    keys.add(key);
                    return;
                }
            }
        }
        // `request` itself, handed whole to something.
        Expr::Ident(n) if n == "request" => {
            out.query = Keys::All;
            out.headers = Keys::All;
            return;
        }
        _ => {}
    }
    for child in budget::children(e) {
        request_reads(child, out);
    }
}

/// The variables of one evaluation, built when the expression first reads them.
struct Vars<'a, 'r> {
    facts: &'a RequestFacts<'r>,
    principal: Option<&'a Principal>,
    params: &'a [(Box<str>, String)],
    spoofable: &'a Spoofable,
    /// `claims`, `principal`, `request`, `params`, `action`; the first two only when not kept
    /// with the principal (anonymous).
    built: [OnceLock<Val<'a>>; 5],
}

/// A principal's CEL view, built once and kept in [`Principal::derived`].
struct PrincipalVals {
    claims: Val<'static>,
    principal: Val<'static>,
    /// What the two take on the heap (see [`view_weight`]).
    weight: usize,
}

impl crate::authn::principal::Weigh for PrincipalVals {
    fn weight(&self) -> usize {
        self.weight
    }
}

impl<'a, 'r> VariableResolver for Vars<'a, 'r> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let (slot, build): (usize, fn(&Vars<'a, 'r>) -> Val<'a>) = match name {
            "claims" | "principal" => {
                if let Some(p) = self.principal
                    && let Some(v) = p.derived.get_or_init(|| PrincipalVals {
                        claims: json_map_owned(&p.claims),
                        principal: principal_owned(p),
                        weight: view_weight(p),
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
            "request" => (2, |v| request_value(v.facts, v.spoofable)),
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
        // Why: the upstream decodes names, so `?m%69ne` is its "mine": classified on the
        // decoded name, and a name that does not decode (which a lenient upstream may read as
        // anything) as the narrower `read_mine`. And as frameworks read names: `MINE`
        // (ASP.NET), `mine[]` (PHP, Express), `;mine` (Rack 2), `mine\0x` (PHP) were `read`,
        // so an anonymous caller got "my posts" of any user_id through the seed policy.
        // Regression: expr::tests::action_reads_decoded_query_names
        let mine = facts.query.is_some_and(|q| {
            let mine = QueryNameReadings::of("mine");
            q.split(['&', ';']).any(|kv| {
                crate::authn::credential::decode(kv.split_once('=').map_or(kv, |(k, _)| k))
                    .is_none_or(|k| mine.may_be(&k))
            })
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

/// Whether `request.headers` leaves `name` out: a header the gateway removes
/// ([`Spoofable::is_doomed`]) or rewrites from the connection (the forwarding family).
fn hidden(name: &http::HeaderName, facts: &RequestFacts<'_>, spoofable: &Spoofable) -> bool {
    spoofable.is_doomed(name, facts.peer_trusted)
        || crate::authz::spoofable::family(name.as_str())
            == Some(crate::authz::spoofable::Family::Forwarding)
}

fn request_value<'a>(facts: &'a RequestFacts<'_>, spoofable: &Spoofable) -> Val<'a> {
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
    // Why: `host` is the authority the rules were matched on and the upstream is sent (an
    // absolute-form target or HTTP/2 `:authority` wins over a `Host` field), never the
    // client's own `Host` line: `request.headers['host'] == 'good.example'` passed for
    // `GET http://evil.example/` with `Host: good.example`, and failed for every HTTP/2
    // request, which has no `host` field.
    // Regression: expr::tests::host_header_is_the_decided_authority
    headers.insert(CelMapKey::from("host"), owned(facts.authority()));
    // Why: HTTP/2 browsers split `cookie` into one field per crumb, which the proxy joins
    // (RFC 9113 8.2.3) before forwarding; read as one value, never as a repeated header.
    // Regression: expr::tests::cookie_crumbs_are_one_header
    if facts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .nth(1)
        .is_some()
    {
        let joined = facts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        headers.insert(CelMapKey::from("cookie"), owned(joined));
    }
    for (name, value) in facts.headers {
        // Why: the policy must decide on what the upstream will see. A header the gateway
        // strips (an identity header's spelling, `X-Real-IP`, ...) or overwrites is the
        // client's word: `request.headers['x-user-id'] == params.user` passed with a sent
        // `X-User-Id: bob` while the upstream got alice's. Such names are absent here, so a
        // condition reading one fails closed. The forwarding family (`X-Forwarded-For`,
        // `X-Real-IP`, ...) is rewritten from the connection: `require.networks` decides on
        // the client's address, never these lines.
        // Regression: expr::tests::stripped_headers_are_not_in_the_view
        if hidden(name, facts, spoofable) {
            continue;
        }
        // Why: keyed as CGI-style upstreams (Rack, PHP, WSGI) read the name, `_` and `.` as
        // `-`: a lone `X_Impersonate: admin` passed `!('x-impersonate' in request.headers)`
        // and reached a WSGI app as `HTTP_X_IMPERSONATE`. (Two spellings of one name are a
        // repeat, and deny: see `RequestReads`.)
        // Regression: tests::a_header_spelled_with_underscores_or_dots_is_read_by_its_dashed_name
        if let Ok(v) = value.to_str() {
            let key = match crate::authz::spoofable::dashed(name.as_str()) {
                std::borrow::Cow::Borrowed(n) => CelMapKey::from(n),
                std::borrow::Cow::Owned(n) => CelMapKey::from(n),
            };
            headers.entry(key).or_insert_with(|| string(v));
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

/// The heap bytes of a principal's CEL view ([`principal_owned`] and [`json_map_owned`]),
/// reckoned from the principal the way those functions build it, for the token cache's
/// memory bound. Regression: tests (it) memory::token_cache_max_bytes_bounds_real_memory
fn view_weight(p: &Principal) -> usize {
    use std::mem::size_of;
    // One allocation: the allocator's 16-byte size classes.
    fn alloc(n: usize) -> usize {
        n.max(1).next_multiple_of(16)
    }
    // A boxed CEL string owning `len` bytes (`None`: borrowing them).
    fn text(len: Option<usize>) -> usize {
        alloc(size_of::<CelString<'static>>()) + len.map_or(0, alloc)
    }
    fn scalar() -> usize {
        alloc(size_of::<CelInt>())
    }
    // A boxed map of `n` entries (hashbrown's buckets and control bytes), entries apart.
    fn table(n: usize) -> usize {
        let buckets = if n == 0 {
            0
        } else {
            (n * 8 / 7).next_power_of_two().max(4)
        };
        let bucket = size_of::<(CelMapKey<'static>, Val<'static>)>() + 1;
        alloc(size_of::<CelMap<'static>>())
            + if n == 0 {
                0
            } else {
                alloc(buckets * bucket + 16)
            }
    }
    fn list(n: usize) -> usize {
        alloc(size_of::<CelList<'static>>())
            + if n == 0 {
                0
            } else {
                alloc(n * size_of::<Val<'static>>())
            }
    }
    fn json(v: &Value) -> usize {
        match v {
            Value::String(s) => text(Some(s.len())),
            Value::Array(a) => list(a.len()) + a.iter().map(json).sum::<usize>(),
            Value::Object(o) => claims(o),
            _ => scalar(),
        }
    }
    fn claims(m: &serde_json::Map<String, Value>) -> usize {
        table(m.len())
            + m.iter()
                .map(|(k, v)| alloc(k.len()) + json(v))
                .sum::<usize>()
    }
    let strings =
        |v: &[Box<str>]| list(v.len()) + v.iter().map(|s| text(Some(s.len()))).sum::<usize>();
    let opt = |v: Option<&str>| v.map_or_else(scalar, |s| text(Some(s.len())));
    let principal = table(11)
        + scalar()
        + text(Some(p.id.len()))
        + text(None)
        + text(Some(p.authenticator.len()))
        + opt(p.issuer.as_deref())
        + opt(p.tenant.as_deref())
        + opt(p.api_key_id.as_deref())
        + strings(&p.scopes)
        + strings(&p.roles);
    size_of::<PrincipalVals>() + principal + claims(&p.claims)
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
mod tests;
