//! What a `when` expression may cost, checked once at compile and metered as it runs.
//!
//! At compile, on the expression with its macros expanded: every identifier is one of the
//! variables or one a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) binds;
//! comprehension bodies nest at most [`MAX_COMPREHENSION_DEPTH`] deep; the whole has at most
//! [`MAX_NODES`] nodes. The expression is then rewritten so that each comprehension's range
//! goes through `@range` and each value a comprehension body reads from the variables goes
//! through `@read` (names no expression can spell). Both charge the evaluation's meter: a
//! range costs its length times the size of the body run for each element, a read the length
//! of the list or map read. A range longer than `max_list_size`, or a total over `max_steps`,
//! stops the evaluation, and the condition denies (`condition_budget_exceeded`) whatever the
//! expression would have answered: an `||` must not turn a cut-short evaluation into `true`.
//!
//! Invariant: an expression without comprehensions is neither rewritten nor metered; its
//! cost is linear in its size and in the size of the request and the token it reads.

use std::cell::Cell;

use cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SelectExpr,
};
use cel::common::types::{CelInt, CelList, CelMap, DYN_TYPE, INT_TYPE};
use cel::common::value::CowVal;
use cel::{Env, ExecutionError};

use crate::config::raw::RawConditionLimits;

/// How deep comprehension bodies nest: `a.exists(x, b.exists(y, …))` is 2. Each level
/// multiplies the work by the length of a list.
pub const MAX_COMPREHENSION_DEPTH: usize = 2;

/// Most nodes an expression has once its macros are expanded (a comprehension adds about
/// eight to what is written).
pub const MAX_NODES: usize = 1000;

/// How deep an expression nests (`1 + 1 + 1` is 3 deep: operators associate to the left).
/// Checking, evaluating and dropping recurse over it on a thread's stack.
pub const MAX_NESTING: usize = 100;

/// Longest expression source, in bytes: the parser, too, recurses.
pub const MAX_SOURCE_BYTES: usize = 4096;

/// The run-time limits of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Longest list or map a comprehension may range over.
    pub max_list_size: u64,
    /// Steps one evaluation may take.
    pub max_steps: u64,
}

/// An expression checked and rewritten for metering.
pub(super) struct Checked {
    /// The expression to evaluate.
    pub expr: IdedExpr,
    /// Whether it has a comprehension (and must run metered).
    pub metered: bool,
    /// Whether it reads `params`.
    pub uses_params: bool,
}

/// The meter of the evaluation running on this thread.
#[derive(Debug, Clone, Copy)]
struct Meter {
    max_list_size: u64,
    steps_left: u64,
    exceeded: bool,
}

/// The function a comprehension's range goes through: `@range(range, body size)`.
const RANGE: &str = "@range";
/// The function a value read from the variables inside a comprehension body goes through.
const READ: &str = "@read";

thread_local! {
    // Why: the interpreter calls `@range` and `@read` as plain functions, with no state of
    // the evaluation; an evaluation never awaits and never starts another on its thread, so
    // the thread's meter is that evaluation's. Outside `metered` the meter is spent: a
    // metered expression evaluated any other way fails (closed).
    static METER: Cell<Meter> = const { Cell::new(Meter::SPENT) };
}

// === impl Budget ===

impl From<&RawConditionLimits> for Budget {
    fn from(raw: &RawConditionLimits) -> Self {
        Self {
            max_list_size: raw.max_list_size.get(),
            max_steps: raw.max_steps.get(),
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::from(&RawConditionLimits::default())
    }
}

// === impl Meter ===

impl Meter {
    const SPENT: Self = Self {
        max_list_size: 0,
        steps_left: 0,
        exceeded: true,
    };

    /// Charges `steps`; `range` is the length of a comprehension's range, if this is one.
    fn charge(steps: u64, range: Option<u64>) -> Result<(), ExecutionError> {
        METER.with(|cell| {
            let mut m = cell.get();
            if m.exceeded || range.is_some_and(|n| n > m.max_list_size) || steps > m.steps_left {
                m.exceeded = true;
                cell.set(m);
                return Err(ExecutionError::function_error(
                    "when",
                    "evaluation budget exceeded",
                ));
            }
            m.steps_left -= steps;
            cell.set(m);
            Ok(())
        })
    }
}

/// Runs `eval` under a fresh meter; returns its result and whether the budget ran out.
pub(super) fn metered<T>(budget: Budget, eval: impl FnOnce() -> T) -> (T, bool) {
    METER.with(|m| {
        m.set(Meter {
            max_list_size: budget.max_list_size,
            steps_left: budget.max_steps,
            exceeded: false,
        });
    });
    let out = eval();
    let exceeded = METER.with(|m| m.replace(Meter::SPENT).exceeded);
    (out, exceeded)
}

/// The standard environment with `@range` and `@read`.
pub(super) fn env() -> Env {
    let mut env = Env::stdlib();
    let added = env
        .add_overload(RANGE, "portcullis_range", vec![DYN_TYPE, INT_TYPE], range)
        .and_then(|()| env.add_overload(READ, "portcullis_read", vec![DYN_TYPE], read))
        .and_then(|()| {
            env.add_overload(
                MATCH,
                "portcullis_match",
                vec![DYN_TYPE, INT_TYPE],
                match_pattern,
            )
        });
    if let Err(e) = added {
        // Not reachable with these fresh names; should it happen, metered expressions fail
        // to evaluate, and deny.
        tracing::error!(error = %e, "CEL budget functions not registered");
    }
    env
}

/// The length of a list or map; anything else costs nothing by itself.
fn length(v: &CowVal<'_, '_>) -> u64 {
    let n = v
        .downcast_ref::<CelList<'_>>()
        .map(|l| l.inner().len())
        .or_else(|| v.downcast_ref::<CelMap<'_>>().map(|m| m.inner().len()))
        .unwrap_or(0);
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `@range(range, body)`: the range itself, once `length × body` steps are paid.
fn range<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let body = args
        .pop()
        .and_then(|b| b.downcast_ref::<CelInt>().map(|i| *i.inner()))
        .and_then(|b| u64::try_from(b).ok());
    let (Some(body), Some(range)) = (body, args.pop()) else {
        return Err(ExecutionError::function_error(RANGE, "bad arguments"));
    };
    let n = length(&range);
    Meter::charge(n.saturating_mul(body), Some(n))?;
    Ok(range)
}

/// `@read(value)`: the value, once its length is paid.
fn read<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let Some(value) = args.pop() else {
        return Err(ExecutionError::function_error(READ, "bad arguments"));
    };
    Meter::charge(length(&value), None)?;
    Ok(value)
}

/// Checks an expression (macros expanded) and rewrites it for metering. `known` are the
/// variables an expression may read.
pub(super) fn check(expr: &IdedExpr, known: &[&str]) -> Result<Checked, String> {
    // Why: before any recursion over the tree (clone, walk, evaluation): a stack overflow
    // aborts the process, on a reload as on a request.
    // Regression: tests::comprehension_compile_errors
    if nesting(expr) > MAX_NESTING {
        return Err(format!(
            "expression nested too deep: at most {MAX_NESTING} levels (a chain of `+` nests \
             one level per operand)"
        ));
    }
    let mut walk = Walk {
        known,
        bound: Vec::new(),
        depth: 0,
        nodes: 0,
        // Ids of the nodes added: far above the parser's, which count from 1.
        next_id: u64::MAX / 2,
        comprehensions: false,
        uses_params: false,
        error: None,
    };
    let rewritten = walk.expr(expr.clone());
    if let Some(e) = walk.error {
        return Err(e);
    }
    if walk.nodes > MAX_NODES {
        return Err(format!(
            "expression too large: {} nodes once its macros are expanded, at most {MAX_NODES}",
            walk.nodes
        ));
    }
    Ok(Checked {
        // Unmetered expressions are evaluated exactly as parsed.
        expr: if walk.comprehensions {
            rewritten
        } else {
            expr.clone()
        },
        metered: walk.comprehensions,
        uses_params: walk.uses_params,
    })
}

/// How deep the tree goes, found without recursion.
fn nesting(root: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1)];
    while let Some((e, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        stack.extend(children(e).into_iter().map(|c| (c, depth + 1)));
    }
    deepest
}

/// The nodes right under `e`.
pub(super) fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    fn entry(x: &EntryExpr) -> Vec<&IdedExpr> {
        match x {
            EntryExpr::StructField(f) => vec![&f.value],
            EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
        }
    }
    match &e.expr {
        Expr::Call(c) => c.target.as_deref().into_iter().chain(&c.args).collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m.entries.iter().flat_map(|x| entry(&x.expr)).collect(),
        Expr::Struct(s) => s.entries.iter().flat_map(|x| entry(&x.expr)).collect(),
        Expr::Select(s) => vec![&s.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// One pass over the expression: checks, counts, and wraps.
struct Walk<'k> {
    known: &'k [&'k str],
    /// Names bound by the comprehensions around the current node.
    bound: Vec<String>,
    /// Comprehension bodies around the current node.
    depth: usize,
    nodes: usize,
    next_id: u64,
    comprehensions: bool,
    uses_params: bool,
    error: Option<String>,
}

// === impl Walk ===

impl Walk<'_> {
    fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }

    fn call(&mut self, func: &str, args: Vec<IdedExpr>) -> IdedExpr {
        self.next_id += 1;
        IdedExpr {
            id: self.next_id,
            expr: Expr::Call(CallExpr {
                func_name: func.to_owned(),
                target: None,
                args,
            }),
        }
    }

    /// A variable the expression reads (not one a comprehension binds), checked.
    fn free_variable(&mut self, name: &str) -> bool {
        if name.starts_with('@') || self.bound.iter().any(|b| b == name) {
            return false;
        }
        if !self.known.contains(&name) {
            self.fail(format!(
                "unknown variable `{name}`: use claims, principal, request, params or action"
            ));
        } else if name == "params" {
            self.uses_params = true;
        }
        true
    }

    fn expr(&mut self, e: IdedExpr) -> IdedExpr {
        self.nodes += 1;
        let IdedExpr { id, expr } = e;
        let expr = match expr {
            Expr::Ident(name) => {
                let free = self.free_variable(&name);
                let e = IdedExpr {
                    id,
                    expr: Expr::Ident(name),
                };
                // Why: inside a comprehension body each read of the variables runs once per
                // element; what it reads (a claim's list, say) is paid for each time.
                // Regression: tests::nested_comprehension_over_a_large_claim_is_cut_short
                return if free && self.depth > 0 {
                    self.call(READ, vec![e])
                } else {
                    e
                };
            }
            Expr::Select(s) if !s.test && self.depth > 0 && self.reads_variable(&s) => {
                // `claims.a.b` in a body: paid for as the value it reads, not per segment.
                let e = self.chain(IdedExpr {
                    id,
                    expr: Expr::Select(s),
                });
                return self.call(READ, vec![e]);
            }
            Expr::Select(mut s) => {
                s.operand = Box::new(self.expr(*s.operand));
                Expr::Select(s)
            }
            Expr::Call(mut c) => {
                c.target = c.target.map(|t| Box::new(self.expr(*t)));
                c.args = c.args.into_iter().map(|a| self.expr(a)).collect();
                Expr::Call(c)
            }
            Expr::List(mut l) => {
                l.elements = l.elements.into_iter().map(|x| self.expr(x)).collect();
                Expr::List(l)
            }
            Expr::Map(mut m) => {
                for entry in &mut m.entries {
                    self.entry(&mut entry.expr);
                }
                Expr::Map(m)
            }
            Expr::Struct(mut s) => {
                for entry in &mut s.entries {
                    self.entry(&mut entry.expr);
                }
                Expr::Struct(s)
            }
            Expr::Comprehension(c) => Expr::Comprehension(Box::new(self.comprehension(*c))),
            literal @ Expr::Literal(_) => literal,
            Expr::Unspecified => {
                self.fail("unsupported expression".to_owned());
                Expr::Unspecified
            }
        };
        IdedExpr { id, expr }
    }

    fn entry(&mut self, entry: &mut EntryExpr) {
        match entry {
            EntryExpr::StructField(f) => f.value = self.expr(std::mem::take(&mut f.value)),
            EntryExpr::MapEntry(m) => {
                m.key = self.expr(std::mem::take(&mut m.key));
                m.value = self.expr(std::mem::take(&mut m.value));
            }
        }
    }

    /// Whether a field selection spells `variable.field…` of a variable the expression reads.
    fn reads_variable(&self, s: &SelectExpr) -> bool {
        let mut e = &s.operand.expr;
        loop {
            match e {
                Expr::Select(inner) if !inner.test => e = &inner.operand.expr,
                Expr::Ident(name) => {
                    return !name.starts_with('@') && !self.bound.iter().any(|b| b == name);
                }
                _ => return false,
            }
        }
    }

    /// Counts and checks a `variable.field…` chain, left as it is.
    fn chain(&mut self, e: IdedExpr) -> IdedExpr {
        let mut at = &e.expr;
        loop {
            match at {
                Expr::Select(s) => {
                    self.nodes += 1;
                    at = &s.operand.expr;
                }
                Expr::Ident(name) => {
                    self.nodes += 1;
                    let name = name.clone();
                    self.free_variable(&name);
                    break;
                }
                _ => break,
            }
        }
        e
    }

    fn comprehension(&mut self, c: ComprehensionExpr) -> ComprehensionExpr {
        self.comprehensions = true;
        let ComprehensionExpr {
            iter_range,
            iter_var,
            iter_var2,
            accu_var,
            accu_init,
            loop_cond,
            loop_step,
            result,
        } = c;
        let iter_range = self.expr(iter_range);
        let accu_init = self.expr(accu_init);
        let outer = self.bound.len();
        self.bound.push(iter_var.clone());
        self.bound.extend(iter_var2.clone());
        self.bound.push(accu_var.clone());
        self.depth += 1;
        if self.depth > MAX_COMPREHENSION_DEPTH {
            self.fail(format!(
                "comprehensions (all, exists, exists_one, map, filter) nest at most \
                 {MAX_COMPREHENSION_DEPTH} deep"
            ));
        }
        let before = self.nodes;
        let loop_cond = self.expr(loop_cond);
        let loop_step = self.expr(loop_step);
        // The steps one element costs: the body's nodes, and one for the element.
        let body = i64::try_from(self.nodes - before + 1).unwrap_or(i64::MAX);
        self.depth -= 1;
        self.bound.truncate(outer);
        self.bound.push(accu_var.clone());
        let result = self.expr(result);
        self.bound.truncate(outer);
        self.next_id += 1;
        let weight = IdedExpr {
            id: self.next_id,
            expr: Expr::Literal(LiteralValue::Int(CelInt::from(body))),
        };
        ComprehensionExpr {
            iter_range: self.call(RANGE, vec![iter_range, weight]),
            iter_var,
            iter_var2,
            accu_var,
            accu_init,
            loop_cond,
            loop_step,
            result,
        }
    }
}

// === `matches` patterns, compiled once ===

/// The function a `matches` call becomes: `@match(text, pattern index)`.
const MATCH: &str = "@match";

/// Every pattern a `matches` call of a loaded expression names, compiled, by index (grows
/// with the distinct patterns loaded, never shrinks); read without a lock per request.
pub(super) static PATTERNS: std::sync::LazyLock<arc_swap::ArcSwap<Vec<regex::Regex>>> =
    std::sync::LazyLock::new(arc_swap::ArcSwap::default);

/// Each pattern's index in [`PATTERNS`] (used at load only).
static PATTERN_INDEX: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());

/// The index of `pattern` in [`PATTERNS`], compiled and added if new.
fn pattern_index(pattern: &str) -> Result<usize, String> {
    let mut index = PATTERN_INDEX
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, i)) = index.iter().find(|(p, _)| p == pattern) {
        return Ok(*i);
    }
    let compiled = regex::Regex::new(pattern).map_err(|e| {
        let e = e.to_string();
        let why = e.lines().last().unwrap_or_default().trim().to_owned();
        format!("`matches('{pattern}')`: not a valid regular expression: {why}")
    })?;
    let mut all = Vec::clone(&PATTERNS.load());
    all.push(compiled);
    let i = all.len() - 1;
    PATTERNS.store(std::sync::Arc::new(all));
    index.push((pattern.to_owned(), i));
    Ok(i)
}

/// `@match(text, index)`: whether `text` matches the pattern at `index`.
fn match_pattern<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let index = args.pop();
    let (Some(text), Some(index)) = (args.pop(), index) else {
        return Err(ExecutionError::function_error("matches", "bad arguments"));
    };
    let index = index
        .downcast_ref::<CelInt>()
        .and_then(|i| usize::try_from(*i.inner()).ok());
    let text = text.downcast_ref::<cel::common::types::CelString<'_>>();
    let (Some(index), Some(text)) = (index, text) else {
        return Err(ExecutionError::function_error(
            "matches",
            "matches() applies to a string",
        ));
    };
    let patterns = PATTERNS.load();
    let Some(re) = patterns.get(index) else {
        return Err(ExecutionError::function_error("matches", "unknown pattern"));
    };
    Ok(CowVal::Owned(Box::new(cel::common::types::CelBool::from(
        re.is_match(text.inner()),
    ))))
}

/// `e` with every `matches` call made `@match(text, index)`, its pattern compiled now.
///
/// Why: the `cel` crate compiles the pattern on every call, outside the budget: a
/// `matches` with a counted repetition (`[\w.-]{1,200}`) cost 150 ms per request, and
/// inside `request.query.all(k, k.matches(…))` one request of 990 query names held a
/// worker for 22 s. A pattern is compiled once, at load; one that is not a literal (built
/// from the request) is refused.
/// Regression: tests::matches_compiles_its_pattern_once
pub(super) fn precompile_matches(e: IdedExpr) -> Result<IdedExpr, String> {
    let IdedExpr { id, expr } = e;
    let expr = match expr {
        Expr::Call(c) if c.func_name == "matches" => {
            let CallExpr { target, args, .. } = c;
            let mut args = args.into_iter();
            let (text, pattern) = match (target, args.next(), args.next(), args.next()) {
                (Some(t), Some(p), None, None) => (*t, p),
                (None, Some(t), Some(p), None) => (t, p),
                _ => return Err("`matches` takes a string and a pattern".to_owned()),
            };
            let Expr::Literal(LiteralValue::String(p)) = &pattern.expr else {
                return Err(
                    "`matches` takes a pattern written in the expression (a quoted string), \
                     not one built from the request"
                        .to_owned(),
                );
            };
            let index = i64::try_from(pattern_index(p.inner())?).unwrap_or(i64::MAX);
            Expr::Call(CallExpr {
                func_name: MATCH.to_owned(),
                target: None,
                args: vec![
                    precompile_matches(text)?,
                    IdedExpr {
                        id: pattern.id,
                        expr: Expr::Literal(LiteralValue::Int(CelInt::from(index))),
                    },
                ],
            })
        }
        Expr::Call(mut c) => {
            c.target = match c.target {
                Some(t) => Some(Box::new(precompile_matches(*t)?)),
                None => None,
            };
            c.args = c
                .args
                .into_iter()
                .map(precompile_matches)
                .collect::<Result<_, _>>()?;
            Expr::Call(c)
        }
        Expr::Select(mut s) => {
            s.operand = Box::new(precompile_matches(*s.operand)?);
            Expr::Select(s)
        }
        Expr::List(mut l) => {
            l.elements = l
                .elements
                .into_iter()
                .map(precompile_matches)
                .collect::<Result<_, _>>()?;
            Expr::List(l)
        }
        Expr::Map(mut m) => {
            for entry in &mut m.entries {
                precompile_entry(&mut entry.expr)?;
            }
            Expr::Map(m)
        }
        Expr::Struct(mut s) => {
            for entry in &mut s.entries {
                precompile_entry(&mut entry.expr)?;
            }
            Expr::Struct(s)
        }
        Expr::Comprehension(c) => {
            let mut c = *c;
            c.iter_range = precompile_matches(c.iter_range)?;
            c.accu_init = precompile_matches(c.accu_init)?;
            c.loop_cond = precompile_matches(c.loop_cond)?;
            c.loop_step = precompile_matches(c.loop_step)?;
            c.result = precompile_matches(c.result)?;
            Expr::Comprehension(Box::new(c))
        }
        other => other,
    };
    Ok(IdedExpr { id, expr })
}

fn precompile_entry(entry: &mut EntryExpr) -> Result<(), String> {
    match entry {
        EntryExpr::StructField(f) => f.value = precompile_matches(std::mem::take(&mut f.value))?,
        EntryExpr::MapEntry(m) => {
            m.key = precompile_matches(std::mem::take(&mut m.key))?;
            m.value = precompile_matches(std::mem::take(&mut m.value))?;
        }
    }
    Ok(())
}
