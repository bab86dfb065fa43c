//! Load-time checks of one rule: limits, parse (panics contained), tree depth, literal
//! arguments of `glob` and `matches` (checked here, each distinct pattern once per bundle, and
//! built on first use; `matches` calls are rewritten to the precompiled form), and rules that
//! are plainly not boolean.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use crate::glob::Glob;
use crate::lazy_regex::LazyRegex;
use crate::limits::{self, MAX_TREE_DEPTH};

/// The name `matches` calls are rewritten to; evaluation looks the regex up by its literal.
pub(crate) const MATCHES: &str = "__kz_matches";

pub(crate) struct Compiled {
    pub expr: IdedExpr,
    pub always_true: bool,
    /// The request variables the rule reads.
    pub variables: Vec<&'static str>,
}

/// The `glob` and `matches` patterns of a bundle, by their literal, each checked once however
/// many rules use it.
#[derive(Debug, Default)]
pub(crate) struct Patterns {
    pub globs: HashMap<String, Glob>,
    pub regexes: HashMap<String, LazyRegex>,
}

pub(crate) struct RuleError {
    pub message: String,
    pub help: String,
}

fn err(message: impl Into<String>, help: &str) -> RuleError {
    RuleError {
        message: message.into(),
        help: help.to_owned(),
    }
}

pub(crate) fn compile_rule(
    env: &cel::Env,
    rule: &str,
    patterns: &mut Patterns,
) -> Result<Compiled, RuleError> {
    limits::check(rule).map_err(|m| err(m, "split the rule into several policies"))?;
    // `parser().parse` is `compile` without the copy of the tree into a `Program`.
    let parsed = catch_unwind(AssertUnwindSafe(|| env.parser().parse(rule))).map_err(|_| {
        err(
            "the CEL parser failed on this rule",
            "check the rule's syntax",
        )
    })?;
    let mut expr = parsed.map_err(|e| {
        err(
            format!("the rule is not valid CEL: {}", one_line(&e.to_string())),
            "check the rule's syntax (CEL: https://cel.dev)",
        )
    })?;
    if depth_exceeds(&expr, MAX_TREE_DEPTH) {
        return Err(err(
            format!("the rule's expression is nested more than {MAX_TREE_DEPTH} levels deep"),
            "split the rule into several policies",
        ));
    }
    if comprehension_depth(&expr) > MAX_COMPREHENSION_NESTING {
        return Err(err(
            "the rule nests comprehensions (`all`, `exists`, `exists_one`, `map`, `filter`) inside one another",
            "a nested comprehension multiplies its cost by the size of each list (a caller's claims or context can be long): use one level, or split the rule",
        ));
    }
    let mut free = Vec::new();
    free_identifiers(&expr, &mut Vec::new(), &mut free);
    let variables: Vec<&'static str> = crate::eval::NAMES
        .into_iter()
        .filter(|n| free.contains(n))
        .collect();
    let unknown = free
        .iter()
        .find(|n| !crate::eval::NAMES.contains(n) && !TYPE_NAMES.contains(n))
        .map(|n| n.to_string());
    if let Some(name) = unknown {
        let hint = crate::eval::NAMES
            .iter()
            .find(|n| {
                n.eq_ignore_ascii_case(&name) || n.starts_with(name.get(..2).unwrap_or(&name))
            })
            .map_or(String::new(), |n| format!("did you mean `{n}`? "));
        return Err(err(
            format!("the rule uses `{name}`, which is not a variable"),
            &format!(
                "{hint}variables: {}; a typo would make the rule an error on every request",
                crate::eval::NAMES.join(", ")
            ),
        ));
    }
    let mut problems = Vec::new();
    rewrite(&mut expr, patterns, &mut problems);
    if let Some(first) = problems.into_iter().next() {
        return Err(first);
    }
    if let Some(kind) = plainly_not_boolean(&expr) {
        return Err(err(
            format!("the rule is not boolean: it evaluates to {kind}"),
            "a rule must be a condition, e.g. `org == \"acme\" && ref.glob(\"prod/**\")`",
        ));
    }
    let always_true = matches!(&expr.expr, Expr::Literal(LiteralValue::Boolean(b)) if *b.inner());
    Ok(Compiled {
        expr,
        always_true,
        variables,
    })
}

/// How deeply comprehensions may nest: one level (`groups.exists(g, g == "x")`). Each level
/// multiplies the work by a list's length, and lists can come from the caller.
const MAX_COMPREHENSION_NESTING: usize = 1;

/// Type names CEL lets a rule write as identifiers (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "timestamp",
    "duration",
    "dyn",
];

fn comprehension_depth(e: &IdedExpr) -> usize {
    let below = children(e)
        .into_iter()
        .map(comprehension_depth)
        .max()
        .unwrap_or(0);
    below + usize::from(matches!(e.expr, Expr::Comprehension(_)))
}

/// Every identifier not bound by an enclosing comprehension (variables, type names, and
/// anything else a rule names), in order of appearance.
fn free_identifiers<'e>(e: &'e IdedExpr, bound: &mut Vec<&'e str>, out: &mut Vec<&'e str>) {
    match &e.expr {
        Expr::Ident(name) => {
            if !bound.contains(&name.as_str()) {
                out.push(name);
            }
        }
        Expr::Comprehension(c) => {
            free_identifiers(&c.iter_range, bound, out);
            let before = bound.len();
            bound.push(&c.iter_var);
            bound.extend(c.iter_var2.as_deref());
            bound.push(&c.accu_var);
            for x in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                free_identifiers(x, bound, out);
            }
            bound.truncate(before);
        }
        _ => {
            for c in children(e) {
                free_identifiers(c, bound, out);
            }
        }
    }
}

/// CEL error texts span lines (source excerpt and caret); a diagnostic wants one.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether the tree is deeper than `limit`; the walk itself stops at the limit.
fn depth_exceeds(e: &IdedExpr, limit: usize) -> bool {
    let Some(limit) = limit.checked_sub(1) else {
        return true;
    };
    children(e).into_iter().any(|c| depth_exceeds(c, limit))
}

fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Call(c) => c
            .target
            .iter()
            .map(|t| t.as_ref())
            .chain(c.args.iter())
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m
            .entries
            .iter()
            .flat_map(|e| entry_children(&e.expr))
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .flat_map(|e| entry_children(&e.expr))
            .collect(),
        Expr::Select(s) => vec![s.operand.as_ref()],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_children(e: &EntryExpr) -> Vec<&IdedExpr> {
    match e {
        EntryExpr::StructField(f) => vec![&f.value],
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// Checks `glob`/`matches` literals (a pattern already in `out` is not checked again) and
/// renames `matches` to the precompiled form.
fn rewrite(e: &mut IdedExpr, out: &mut Patterns, problems: &mut Vec<RuleError>) {
    if let Expr::Call(call) = &mut e.expr {
        let pattern_arg = call.args.last().and_then(string_literal).map(str::to_owned);
        let arity_ok = match &call.target {
            Some(_) => call.args.len() == 1,
            None => call.args.len() == 2,
        };
        match call.func_name.as_str() {
            "glob" if arity_ok => match pattern_arg {
                Some(p) if out.globs.contains_key(&p) => {}
                Some(p) => match Glob::new(&p) {
                    Ok(g) => {
                        out.globs.insert(p, g);
                    }
                    Err(e) => problems.push(err(
                        e.0,
                        "`*` matches within a segment, `**` across, `?` one character, `[ab]` a class",
                    )),
                },
                None => problems.push(err(
                    "the pattern of `glob` must be a string literal",
                    "write the pattern in the rule, e.g. `ref.glob(\"prod/**\")`",
                )),
            },
            "matches" if arity_ok => match pattern_arg {
                Some(p) if out.regexes.contains_key(&p) => call.func_name = MATCHES.to_owned(),
                Some(p) => match LazyRegex::check(&p) {
                    Ok(re) => {
                        out.regexes.insert(p, re);
                        call.func_name = MATCHES.to_owned();
                    }
                    Err(e) => problems.push(err(
                        format!("invalid regex in `matches`: {e}"),
                        "fix the regular expression (RE2 syntax)",
                    )),
                },
                None => problems.push(err(
                    "the regex of `matches` must be a string literal",
                    "write the regex in the rule, e.g. `sub.matches(\"^repo:acme/.*$\")`",
                )),
            },
            _ => {}
        }
    }
    for child in children_mut(e) {
        rewrite(child, out, problems);
    }
}

fn children_mut(e: &mut IdedExpr) -> Vec<&mut IdedExpr> {
    match &mut e.expr {
        Expr::Call(c) => c
            .target
            .iter_mut()
            .map(|t| t.as_mut())
            .chain(c.args.iter_mut())
            .collect(),
        Expr::Comprehension(c) => {
            let c = c.as_mut();
            vec![
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ]
        }
        Expr::List(l) => l.elements.iter_mut().collect(),
        Expr::Map(m) => m
            .entries
            .iter_mut()
            .flat_map(|e| entry_children_mut(&mut e.expr))
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter_mut()
            .flat_map(|e| entry_children_mut(&mut e.expr))
            .collect(),
        Expr::Select(s) => vec![s.operand.as_mut()],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn entry_children_mut(e: &mut EntryExpr) -> Vec<&mut IdedExpr> {
    match e {
        EntryExpr::StructField(f) => vec![&mut f.value],
        EntryExpr::MapEntry(m) => vec![&mut m.key, &mut m.value],
    }
}

/// What a rule evaluates to when that is plainly not a boolean, judged from its shape alone.
fn plainly_not_boolean(e: &IdedExpr) -> Option<&'static str> {
    match &e.expr {
        Expr::Literal(LiteralValue::Boolean(_)) => None,
        Expr::Literal(LiteralValue::String(_)) => Some("a string"),
        Expr::Literal(LiteralValue::Bytes(_)) => Some("bytes"),
        Expr::Literal(LiteralValue::Null) => Some("null"),
        Expr::Literal(_) => Some("a number"),
        Expr::List(_) => Some("a list"),
        Expr::Map(_) => Some("a map"),
        Expr::Struct(_) => Some("a message"),
        Expr::Call(c) => match c.func_name.as_str() {
            operators::ADD
            | operators::SUBSTRACT
            | operators::MULTIPLY
            | operators::DIVIDE
            | operators::MODULO
            | operators::NEGATE => Some("a number, string or list (arithmetic)"),
            "size" | "int" | "uint" | "double" | "string" | "bytes" | "timestamp" | "duration" => {
                Some("a non-boolean conversion")
            }
            operators::CONDITIONAL => {
                let branch = |i: usize| c.args.get(i).and_then(plainly_not_boolean);
                branch(1).and(branch(2))
            }
            _ => None,
        },
        _ => None,
    }
}
