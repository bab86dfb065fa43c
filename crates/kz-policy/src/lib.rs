//! Team-mode policy: the decision core between "an identity asks for a ref" and "allow or deny,
//! by which policy".
//!
//! - [`PolicySet::compile`] takes the bundle's policies (name, CEL rule, effect), checks each rule
//!   once (size limits such as [`MAX_RULE_BYTES`] before the parser sees it, then the parsed
//!   tree: `glob`/`matches` arguments must be literals and are checked here, their matchers built
//!   on first use; a rule that is plainly not boolean, or that can never be reached after an
//!   unconditional one, is refused) and builds the literal-guard index.
//! - [`PolicySet::decide`] evaluates top-down, first `true` rule decides with its effect; no
//!   match denies as `implicit-deny`; a rule that errors or yields a non-boolean denies, naming
//!   the policy. It is **total**: a panic inside the CEL dependency is contained at this boundary
//!   and becomes a deny with a diagnostic.
//! - Literal guards: a rule one of whose top-level `&&` conjuncts compares an identity field (or
//!   `ref`, `resolver`, `mode`) with a string literal, or matches `ref` against a glob or prefix
//!   literal, is skipped without evaluation when that conjunct is false for the request. CEL's
//!   `&&` is false whenever any conjunct is false (errors included), so skipping such a rule
//!   never changes the decision; [`PolicySet::decide_unindexed`] evaluates every rule in order
//!   and the differential property test proves both agree.
//!
//! Boundary: no I/O, no async, no secrets. Identity verification lives elsewhere; this crate
//! receives a normalised [`Identity`] (plain data) and the request's fields.

#![forbid(unsafe_code)]
// Only the CLI prints (`kz-cli`); libraries return values, errors and notes.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod analyze;
mod eval;
mod glob;
mod guard;
mod lazy_regex;
mod limits;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use glob::{Glob, GlobError};
pub use limits::{MAX_NESTING, MAX_OPERATORS, MAX_RULE_BYTES, MAX_TREE_DEPTH};

/// What a matching rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One policy as the bundle states it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySource {
    pub name: String,
    pub rule: String,
    pub effect: Effect,
}

/// The normalised identity exposed to rules (`server.md`, "Identity"). A field the issuer's
/// profile does not fill is `""` (`groups`: empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Identity {
    pub issuer: String,
    pub sub: String,
    pub org: String,
    pub service: String,
    pub env: String,
    pub action: String,
    pub branch: String,
    pub actor: String,
    pub groups: Vec<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// How the request reached the server (`request.transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Http,
    Mcp,
    Proxy,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Mcp => "mcp",
            Transport::Proxy => "proxy",
        }
    }
}

/// Everything a rule can see besides the identity.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub identity: &'a Identity,
    /// The requested name (`ref`).
    pub reference: &'a str,
    /// The matched resolver's name, `""` if none.
    pub resolver: &'a str,
    pub mode: &'a str,
    /// Caller-supplied and **untrusted**; `Null` when absent (rules see an empty map).
    pub context: &'a serde_json::Value,
    /// `request.time` and `now`.
    pub time: chrono::DateTime<chrono::Utc>,
    /// `request.ip`, `""` when unknown.
    pub ip: &'a str,
    pub transport: Transport,
}

/// Stack size of the thread that parses rules (reserved address space; only what the parser
/// touches is ever committed).
pub const PARSE_STACK: usize = 64 << 20;

/// The policy name of a decision that no rule matched.
pub const IMPLICIT_DENY: &str = "implicit-deny";

/// The outcome of [`PolicySet::decide`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// The deciding policy, or [`IMPLICIT_DENY`].
    pub policy: String,
    /// Why a request was denied by an error (the rule's error, or that it was not boolean).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.effect == Effect::Allow
    }
}

/// What happened to one policy while deciding (`kz policy eval` shows it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Step {
    /// Not evaluated: the named literal guard is false for this request.
    SkippedByGuard { policy: String, guard: String },
    /// Evaluated to a boolean.
    Evaluated { policy: String, value: bool },
    /// Evaluated to an error or a non-boolean: the request is denied by this policy.
    Failed { policy: String, reason: String },
}

/// Why the bundle's policies cannot be used. `policy` is the index into the sources, so the
/// bundle layer can add the YAML line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub policy: usize,
    pub name: String,
    pub message: String,
    pub help: String,
}

/// A policy compiled once: its evaluable expression and its guard.
#[derive(Debug)]
struct Rule {
    name: String,
    effect: Effect,
    expr: cel::common::ast::IdedExpr,
    /// The rule's literal guards, the one the index files it under first.
    guards: Vec<guard::Guard>,
    /// The request variables it reads.
    variables: Vec<&'static str>,
}

impl Rule {
    /// The first guard that is false for `req`, if any: the rule is then false.
    fn failing_guard(&self, req: &Request<'_>) -> Option<&guard::Guard> {
        self.guards.iter().find(|g| !g.holds(req))
    }
}

/// The compiled policies of one bundle. Cheap to share (`Send + Sync`).
pub struct PolicySet {
    rules: Vec<Rule>,
    index: guard::Index,
    env: Arc<cel::Env>,
    patterns: Arc<analyze::Patterns>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("rules", &self.rules.len())
            .field("indexed", &self.index.guarded())
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// Compiles every policy, reporting every problem at once.
    ///
    /// The CEL parser recurses deeply per nesting level (about 170 KiB of stack per level in a
    /// debug build), so compilation runs on its own thread with a [`PARSE_STACK`]-byte stack:
    /// no caller's stack size decides whether a rule within the limits can be loaded.
    pub fn compile(sources: &[PolicySource]) -> Result<Self, Vec<CompileError>> {
        let thread_failed = |why: &str| {
            vec![CompileError {
                policy: 0,
                name: String::new(),
                message: format!("the policy compiler {why}"),
                help: "retry; if it persists, report it with the bundle".to_owned(),
            }]
        };
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("kz-policy-compile".into())
                .stack_size(PARSE_STACK)
                .spawn_scoped(scope, || Self::compile_here(sources))
                .map_err(|_| thread_failed("thread could not be started"))?
                .join()
                .map_err(|_| thread_failed("failed"))?
        })
    }

    fn compile_here(sources: &[PolicySource]) -> Result<Self, Vec<CompileError>> {
        let env = Arc::new(cel::Env::stdlib());
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(sources.len());
        let mut patterns = analyze::Patterns::default();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut unconditional: Option<&str> = None;
        for (i, src) in sources.iter().enumerate() {
            let fail = |message: String, help: &str| CompileError {
                policy: i,
                name: src.name.clone(),
                message,
                help: help.to_owned(),
            };
            if src.name.trim().is_empty() {
                errors.push(fail(
                    "a policy has an empty name".into(),
                    "give every policy a unique `name`",
                ));
            } else if let Some(first) = names.insert(&src.name, i) {
                errors.push(fail(
                    format!(
                        "policy `{}` is defined twice (also policy #{})",
                        src.name,
                        first + 1
                    ),
                    "give every policy a unique `name`",
                ));
            }
            if let Some(before) = unconditional {
                errors.push(fail(
                    format!(
                        "policy `{}` can never apply: policy `{before}` above it is always true",
                        src.name
                    ),
                    "move the unconditional policy last, or give it a condition",
                ));
            }
            match analyze::compile_rule(&env, &src.rule, &mut patterns) {
                Ok(compiled) => {
                    if compiled.always_true {
                        unconditional.get_or_insert(&src.name);
                    }
                    rules.push(Rule {
                        name: src.name.clone(),
                        effect: src.effect,
                        guards: guard::Guard::all(&compiled.expr),
                        variables: compiled.variables,
                        expr: compiled.expr,
                    });
                }
                Err(e) => errors.push(fail(e.message, &e.help)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let index = guard::Index::build(rules.iter().map(|r| r.guards.first()));
        Ok(PolicySet {
            rules,
            index,
            env,
            patterns: Arc::new(patterns),
        })
    }

    /// The request variables (`org`, `issuer`, `context`, …) policy `index` reads, outside
    /// any comprehension's own names: what the bundle's advice about rules is based on.
    pub fn variables(&self, index: usize) -> &[&'static str] {
        self.rules
            .get(index)
            .map_or(&[], |r| r.variables.as_slice())
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no policies (every request is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The decision for `req`, evaluating only the rules the guard index cannot rule out.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        self.run(req, true, None)
    }

    /// The decision and the trace of every policy up to the deciding one.
    pub fn decide_traced(&self, req: &Request<'_>) -> (Decision, Vec<Step>) {
        let mut trace = Vec::new();
        let decision = self.run(req, true, Some(&mut trace));
        (decision, trace)
    }

    /// The decision by evaluating every rule in order, without the guard index (the reference
    /// the index is proven against, and the benchmark's baseline).
    pub fn decide_unindexed(&self, req: &Request<'_>) -> Decision {
        self.run(req, false, None)
    }

    /// Records `skipped`, rules the index left out, with the guard each is filed under.
    fn trace_indexed_out(&self, trace: &mut Vec<Step>, skipped: Option<&[Rule]>) {
        for rule in skipped.unwrap_or_default() {
            trace.push(Step::SkippedByGuard {
                policy: rule.name.clone(),
                guard: rule
                    .guards
                    .first()
                    .map(guard::Guard::describe)
                    .unwrap_or_default(),
            });
        }
    }

    fn run(&self, req: &Request<'_>, indexed: bool, mut trace: Option<&mut Vec<Step>>) -> Decision {
        let vars = eval::Vars::new(req);
        let evaluator = eval::Evaluator::new(&self.env, &vars, &self.patterns);
        let candidates = if indexed {
            self.index.candidates(req)
        } else {
            (0..self.rules.len()).collect()
        };
        let mut next = 0usize;
        for i in candidates {
            if let Some(trace) = trace.as_deref_mut() {
                self.trace_indexed_out(trace, self.rules.get(next..i));
            }
            next = i.saturating_add(1);
            let Some(rule) = self.rules.get(i) else {
                continue;
            };
            if indexed && let Some(failing) = rule.failing_guard(req) {
                if let Some(trace) = trace.as_deref_mut() {
                    trace.push(Step::SkippedByGuard {
                        policy: rule.name.clone(),
                        guard: failing.describe(),
                    });
                }
                continue;
            }
            match evaluator.eval(&rule.expr) {
                Ok(value) => {
                    if let Some(trace) = trace.as_deref_mut() {
                        trace.push(Step::Evaluated {
                            policy: rule.name.clone(),
                            value,
                        });
                    }
                    if value {
                        return Decision {
                            effect: rule.effect,
                            policy: rule.name.clone(),
                            reason: None,
                        };
                    }
                }
                Err(reason) => {
                    if let Some(trace) = trace.as_deref_mut() {
                        trace.push(Step::Failed {
                            policy: rule.name.clone(),
                            reason: reason.clone(),
                        });
                    }
                    return Decision {
                        effect: Effect::Deny,
                        policy: rule.name.clone(),
                        reason: Some(reason),
                    };
                }
            }
        }
        if let Some(trace) = trace {
            self.trace_indexed_out(trace, self.rules.get(next..));
        }
        Decision {
            effect: Effect::Deny,
            policy: IMPLICIT_DENY.to_owned(),
            reason: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_set_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PolicySet>();
    }
}
