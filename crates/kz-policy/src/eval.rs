//! Evaluation of compiled rules against one request: the request's variables (built once per
//! decision and handed to CEL through a resolver, so untrusted `context` can never shadow an
//! identity field), the precompiled `glob`/`matches` functions, and containment of any panic
//! of the CEL evaluator.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use cel::common::ast::IdedExpr;
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::extractors::This;
use cel::{Context, ExecutionError, Value};

use crate::Request;
use crate::analyze::{MATCHES, Patterns};

/// Longest error text kept in a decision's reason (CEL errors can quote whole values).
const MAX_REASON: usize = 300;

/// The names rules can use, in the order of [`Vars`]'s cells.
pub(crate) const NAMES: [&str; 16] = [
    "issuer", "sub", "org", "service", "env", "action", "branch", "actor", "groups", "claims",
    "ref", "resolver", "mode", "context", "request", "now",
];

/// The variables of one request, each converted to CEL's form on first use only (most
/// decisions read two or three of them; `claims` and `context` are the costly ones).
pub(crate) struct Vars<'r> {
    req: &'r Request<'r>,
    cells: [OnceLock<Option<Box<dyn Val>>>; NAMES.len()],
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let i = NAMES.iter().position(|n| *n == variable)?;
        self.cells
            .get(i)?
            .get_or_init(|| self.build(variable).ok())
            .as_deref()
            .map(CowVal::Borrowed)
    }
}

fn val(v: Value) -> Result<Box<dyn Val>, ExecutionError> {
    Box::<dyn Val>::try_from(v)
}

fn json(v: &impl serde::Serialize) -> Result<Value, ExecutionError> {
    cel::to_value(v).map_err(|e| ExecutionError::function_error("request", e))
}

#[derive(serde::Serialize)]
struct RequestVar<'a> {
    time: cel::Timestamp,
    ip: &'a str,
    transport: &'a str,
}

impl<'r> Vars<'r> {
    pub(crate) fn new(req: &'r Request<'r>) -> Self {
        Vars {
            req,
            cells: Default::default(),
        }
    }

    fn build(&self, name: &str) -> Result<Box<dyn Val>, ExecutionError> {
        let (req, id) = (self.req, self.req.identity);
        let s = |v: &str| val(Value::String(Arc::new(v.to_owned())));
        let now = cel::Timestamp(req.time.fixed_offset());
        match name {
            "issuer" => s(&id.issuer),
            "sub" => s(&id.sub),
            "org" => s(&id.org),
            "service" => s(&id.service),
            "env" => s(&id.env),
            "action" => s(&id.action),
            "branch" => s(&id.branch),
            "actor" => s(&id.actor),
            "groups" => val(Value::List(Arc::new(
                id.groups
                    .iter()
                    .map(|g| Value::String(Arc::new(g.clone())))
                    .collect(),
            ))),
            "claims" => val(json(&id.claims)?),
            "ref" => s(req.reference),
            "resolver" => s(req.resolver),
            "mode" => s(req.mode),
            "context" => match req.context {
                serde_json::Value::Null => val(Value::Map(HashMap::<String, Value>::new().into())),
                other => val(json(other)?),
            },
            "request" => val(json(&RequestVar {
                time: now,
                ip: req.ip,
                transport: req.transport.as_str(),
            })?),
            _ => val(Value::Timestamp(now.0)),
        }
    }
}

/// Evaluates rules for one request.
pub(crate) struct Evaluator<'a> {
    ctx: Context<'a, 'a>,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(env: &Arc<cel::Env>, vars: &'a Vars<'a>, patterns: &Arc<Patterns>) -> Self {
        let mut ctx = Context::with_env(Arc::clone(env));
        ctx.set_variable_resolver(vars);
        let globs = Arc::clone(patterns);
        // Neither name is declared by CEL's standard library, so adding them cannot conflict.
        let _ = ctx.add_function(
            "glob",
            move |This(this): This<Arc<String>>,
                  pattern: Arc<String>|
                  -> Result<bool, ExecutionError> {
                let glob = globs.globs.get(pattern.as_str()).ok_or_else(|| {
                    ExecutionError::function_error("glob", "pattern was not compiled at load")
                })?;
                glob.try_match(&this)
                    .map_err(|e| ExecutionError::function_error("glob", e.0))
            },
        );
        let regexes = Arc::clone(patterns);
        let _ = ctx.add_function(
            MATCHES,
            move |This(this): This<Arc<String>>,
                  pattern: Arc<String>|
                  -> Result<bool, ExecutionError> {
                let re = regexes.regexes.get(pattern.as_str()).ok_or_else(|| {
                    ExecutionError::function_error("matches", "regex was not compiled at load")
                })?;
                re.is_match(&this)
                    .map_err(|e| ExecutionError::function_error("matches", e))
            },
        );
        Evaluator { ctx }
    }

    /// The rule's boolean value, or why it denies (an error, a non-boolean, a contained panic).
    pub(crate) fn eval(&self, expr: &IdedExpr) -> Result<bool, String> {
        match catch_unwind(AssertUnwindSafe(|| self.ctx.resolve(expr))) {
            Ok(Ok(Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!(
                "the rule evaluated to a {:?}, not a boolean",
                other.type_of()
            )),
            Ok(Err(e)) => Err(shorten(&describe(&e).replace(MATCHES, "matches"))),
            Err(_) => Err("the policy engine failed while evaluating this rule".to_owned()),
        }
    }
}

/// An evaluation error as a decision's reason: what failed and on which types, never the values
/// themselves. A value's text is not stable (a map prints in hash order, so two evaluations of
/// one request would give two reasons) and would copy the caller's context and claims into
/// every record of the decision.
#[allow(deprecated)] // the deprecated variants are still produced by some paths of `cel`
fn describe(e: &ExecutionError) -> String {
    use ExecutionError as E;
    let t = |v: &Value| v.type_of().to_string();
    match e {
        // `got` is a type name, or with some conversions the value's debug text.
        E::UnexpectedType { got, want } if is_type_name(got) => {
            format!("unexpected type: got '{got}', want '{want}'")
        }
        E::UnexpectedType { want, .. } => format!("unexpected type: want '{want}'"),
        E::InvalidArgumentCount { .. }
        | E::NoSuchKey(_)
        | E::NoSuchOverload(_)
        | E::UndeclaredReference(_)
        | E::MissingArgumentOrTarget
        | E::FunctionError { .. } => e.to_string(),
        E::UnsupportedTargetType { target } => format!("invalid argument type: {}", t(target)),
        E::NotSupportedAsMethod { method, target } => {
            format!("method '{method}' not supported on type {}", t(target))
        }
        E::UnsupportedKeyType(v) => format!("a {} cannot be a map key", t(v)),
        E::ValuesNotComparable(a, b) => format!("a {} cannot be compared to a {}", t(a), t(b)),
        E::UnsupportedUnaryOperator(op, v) => {
            format!("unsupported unary operator '{op}' on a {}", t(v))
        }
        E::UnsupportedBinaryOperator(op, a, b) => {
            format!(
                "unsupported binary operator '{op}' on a {} and a {}",
                t(a),
                t(b)
            )
        }
        E::UnsupportedMapIndex(v) => format!("a {} cannot index a map", t(v)),
        E::UnsupportedListIndex(v) => format!("a {} cannot index a list", t(v)),
        E::UnsupportedIndex(a, b) => format!("a {} cannot index a {}", t(a), t(b)),
        E::DivisionByZero(v) => format!("division by zero of a {}", t(v)),
        E::RemainderByZero(v) => format!("remainder by zero of a {}", t(v)),
        E::Overflow(op, a, b) => {
            format!(
                "overflow from binary operator '{op}' on a {} and a {}",
                t(a),
                t(b)
            )
        }
        E::IndexOutOfBounds(_) => "index out of bounds".to_owned(),
        E::DuplicateKey(v) => format!("repeated {} key in a map", t(v)),
        E::UnsupportedFunctionCallIdentifierType(_) | E::UnsupportedFieldsConstruction(_) => {
            "unsupported expression".to_owned()
        }
        E::InternalError(_) => "internal error of the policy engine".to_owned(),
        _ => "the rule could not be evaluated".to_owned(),
    }
}

fn is_type_name(s: &str) -> bool {
    s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._<>:, ".contains(&b))
}

fn shorten(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.len() <= MAX_REASON {
        return one;
    }
    let mut end = MAX_REASON;
    while !one.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", one.get(..end).unwrap_or_default())
}
