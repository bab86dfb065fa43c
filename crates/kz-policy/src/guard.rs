//! Literal guards and their index.
//!
//! A guard is one top-level `&&` conjunct of a rule that compares a request field with a string
//! literal (`org == "acme"`, `"main" == branch`, `ref == "api-key"`) or constrains `ref` to a
//! literal prefix (`ref.glob("prod/**")`, `ref.startsWith("prod/")`). These fields are always
//! strings, so the conjunct never errors; when it is false the whole conjunction is false (CEL's
//! `&&` is false if any side is false, errors included). The index therefore returns, in rule
//! order, every rule whose guard holds plus every rule without one, and skipping the rest cannot
//! change the decision.

use std::collections::HashMap;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};

use crate::Request;
use crate::glob::literal_prefix;

/// A request field a guard can test, in the order guards are preferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Field {
    Issuer,
    Org,
    Service,
    Env,
    Ref,
    Resolver,
    Mode,
    Branch,
    Action,
    Actor,
    Sub,
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "issuer" => Field::Issuer,
            "org" => Field::Org,
            "service" => Field::Service,
            "env" => Field::Env,
            "ref" => Field::Ref,
            "resolver" => Field::Resolver,
            "mode" => Field::Mode,
            "branch" => Field::Branch,
            "action" => Field::Action,
            "actor" => Field::Actor,
            "sub" => Field::Sub,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Field::Issuer => "issuer",
            Field::Org => "org",
            Field::Service => "service",
            Field::Env => "env",
            Field::Ref => "ref",
            Field::Resolver => "resolver",
            Field::Mode => "mode",
            Field::Branch => "branch",
            Field::Action => "action",
            Field::Actor => "actor",
            Field::Sub => "sub",
        }
    }

    fn of<'r>(self, req: &'r Request<'_>) -> &'r str {
        let id = req.identity;
        match self {
            Field::Issuer => &id.issuer,
            Field::Org => &id.org,
            Field::Service => &id.service,
            Field::Env => &id.env,
            Field::Ref => req.reference,
            Field::Resolver => req.resolver,
            Field::Mode => req.mode,
            Field::Branch => &id.branch,
            Field::Action => &id.action,
            Field::Actor => &id.actor,
            Field::Sub => &id.sub,
        }
    }
}

/// The one guard the index uses for a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Guard {
    Eq(Field, String),
    RefPrefix(String),
}

impl Guard {
    /// Every guard among the rule's top-level conjuncts, the best first: an equality (a hash
    /// lookup) before a prefix, earlier fields first, the longest prefix. The index files the
    /// rule under the first; the others are checked before the rule is evaluated.
    pub(crate) fn all(expr: &IdedExpr) -> Vec<Guard> {
        let mut conjuncts = Vec::new();
        flatten_and(expr, &mut conjuncts);
        let mut found: Vec<Guard> = conjuncts.into_iter().filter_map(guard_of).collect();
        found.sort_by_key(|g| match g {
            Guard::Eq(f, _) => (0, *f as usize, 0),
            Guard::RefPrefix(p) => (1, 0, usize::MAX - p.len()),
        });
        found
    }

    /// Whether the guard's conjunct is true for `req`.
    pub(crate) fn holds(&self, req: &Request<'_>) -> bool {
        match self {
            Guard::Eq(field, value) => field.of(req) == value,
            Guard::RefPrefix(p) => req.reference.starts_with(p.as_str()),
        }
    }

    /// For the trace: the guard as a condition.
    pub(crate) fn describe(&self) -> String {
        match self {
            Guard::Eq(f, v) => format!("{} == {v:?}", f.name()),
            Guard::RefPrefix(p) => format!("ref starts with {p:?}"),
        }
    }
}

fn flatten_and<'e>(e: &'e IdedExpr, out: &mut Vec<&'e IdedExpr>) {
    match &e.expr {
        Expr::Call(c) if c.func_name == operators::LOGICAL_AND && c.target.is_none() => {
            for a in &c.args {
                flatten_and(a, out);
            }
        }
        _ => out.push(e),
    }
}

fn ident(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Ident(name) => Some(name),
        _ => None,
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn guard_of(e: &IdedExpr) -> Option<Guard> {
    let Expr::Call(c) = &e.expr else {
        return None;
    };
    match (c.func_name.as_str(), c.target.as_deref(), c.args.as_slice()) {
        (operators::EQUALS, None, [a, b]) => {
            let (field, lit) = match (ident(a), string_literal(b), string_literal(a), ident(b)) {
                (Some(f), Some(l), _, _) | (_, _, Some(l), Some(f)) => (f, l),
                _ => return None,
            };
            Some(Guard::Eq(Field::parse(field)?, lit.to_owned()))
        }
        ("glob", Some(target), [pattern]) if ident(target) == Some("ref") => {
            // The pattern was compiled (and checked) with the rule; only its prefix matters here.
            let pattern = string_literal(pattern)?;
            let prefix = literal_prefix(pattern);
            if prefix.len() == pattern.len() {
                return Some(Guard::Eq(Field::Ref, pattern.to_owned()));
            }
            (!prefix.is_empty()).then(|| Guard::RefPrefix(prefix.to_owned()))
        }
        ("startsWith", Some(target), [prefix]) if ident(target) == Some("ref") => {
            let prefix = string_literal(prefix)?;
            (!prefix.is_empty()).then(|| Guard::RefPrefix(prefix.to_owned()))
        }
        _ => None,
    }
}

/// Rules by guard.
#[derive(Debug, Default)]
pub(crate) struct Index {
    rules: usize,
    unguarded: Vec<usize>,
    eq: Vec<(Field, HashMap<String, Vec<usize>>)>,
    prefix: Vec<(String, usize)>,
}

impl Index {
    pub(crate) fn build<'g>(guards: impl Iterator<Item = Option<&'g Guard>>) -> Self {
        let mut index = Index::default();
        for (i, guard) in guards.enumerate() {
            index.rules += 1;
            match guard {
                None => index.unguarded.push(i),
                Some(Guard::RefPrefix(p)) => index.prefix.push((p.clone(), i)),
                Some(Guard::Eq(field, value)) => {
                    let slot = match index.eq.iter().position(|(f, _)| f == field) {
                        Some(pos) => pos,
                        None => {
                            index.eq.push((*field, HashMap::new()));
                            index.eq.len() - 1
                        }
                    };
                    if let Some((_, map)) = index.eq.get_mut(slot) {
                        map.entry(value.clone()).or_default().push(i);
                    }
                }
            }
        }
        index
    }

    /// How many rules have a guard.
    pub(crate) fn guarded(&self) -> usize {
        self.rules - self.unguarded.len()
    }

    /// The rules that may be true for `req`, in rule order.
    pub(crate) fn candidates(&self, req: &Request<'_>) -> Vec<usize> {
        if self.unguarded.len() == self.rules {
            return self.unguarded.clone();
        }
        let mut out = self.unguarded.clone();
        for (field, map) in &self.eq {
            if let Some(rules) = map.get(field.of(req)) {
                out.extend_from_slice(rules);
            }
        }
        out.extend(
            self.prefix
                .iter()
                .filter(|(p, _)| req.reference.starts_with(p.as_str()))
                .map(|(_, i)| *i),
        );
        out.sort_unstable();
        out
    }
}
