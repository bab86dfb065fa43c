//! Evaluation of compiled rules against one request: the request's variables (built once per
//! decision and handed to CEL through a resolver, so untrusted `context` can never shadow an
//! identity field), the precompiled `glob`/`matches` functions, and containment of any panic
//! of the CEL evaluator.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cel::common::ast::IdedExpr;
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::extractors::This;
use cel::{Context, ExecutionError, Value};

use crate::Request;
use crate::analyze::MATCHES;
use crate::glob::Glob;

/// Longest error text kept in a decision's reason (CEL errors can quote whole values).
const MAX_REASON: usize = 300;

/// The variables of one request, by name.
pub(crate) struct Vars {
    vars: Vec<(&'static str, Box<dyn Val>)>,
}

impl VariableResolver for Vars {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        self.vars
            .iter()
            .find(|(name, _)| *name == variable)
            .map(|(_, v)| CowVal::Borrowed(v.as_ref()))
    }
}

fn val(v: Value) -> Result<Box<dyn Val>, String> {
    Box::<dyn Val>::try_from(v).map_err(|e| format!("request data cannot be used in rules: {e}"))
}

fn json(v: &serde_json::Value) -> Result<Value, String> {
    cel::to_value(v).map_err(|e| format!("request data cannot be used in rules: {e}"))
}

#[derive(serde::Serialize)]
struct RequestVar<'a> {
    time: cel::Timestamp,
    ip: &'a str,
    transport: &'a str,
}

impl Vars {
    pub(crate) fn new(req: &Request<'_>) -> Result<Self, String> {
        let id = req.identity;
        let s = |v: &str| val(Value::String(Arc::new(v.to_owned())));
        let now = cel::Timestamp(req.time.fixed_offset());
        let context = match req.context {
            serde_json::Value::Null => Value::Map(HashMap::<String, Value>::new().into()),
            other => json(other)?,
        };
        let request = cel::to_value(RequestVar {
            time: now,
            ip: req.ip,
            transport: req.transport.as_str(),
        })
        .map_err(|e| format!("request data cannot be used in rules: {e}"))?;
        let groups = Value::List(Arc::new(
            id.groups
                .iter()
                .map(|g| Value::String(Arc::new(g.clone())))
                .collect(),
        ));
        let claims = json(&serde_json::Value::Object(id.claims.clone()))?;
        Ok(Vars {
            vars: vec![
                ("issuer", s(&id.issuer)?),
                ("sub", s(&id.sub)?),
                ("org", s(&id.org)?),
                ("service", s(&id.service)?),
                ("env", s(&id.env)?),
                ("action", s(&id.action)?),
                ("branch", s(&id.branch)?),
                ("actor", s(&id.actor)?),
                ("groups", val(groups)?),
                ("claims", val(claims)?),
                ("ref", s(req.reference)?),
                ("resolver", s(req.resolver)?),
                ("mode", s(req.mode)?),
                ("context", val(context)?),
                ("request", val(request)?),
                ("now", val(Value::Timestamp(now.0))?),
            ],
        })
    }
}

/// Evaluates rules for one request.
pub(crate) struct Evaluator<'a> {
    ctx: Context<'a, 'a>,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        env: &Arc<cel::Env>,
        vars: &'a Vars,
        globs: &Arc<HashMap<String, Glob>>,
        regexes: &Arc<HashMap<String, regex::Regex>>,
    ) -> Self {
        let mut ctx = Context::with_env(Arc::clone(env));
        ctx.set_variable_resolver(vars);
        let globs = Arc::clone(globs);
        // Neither name is declared by CEL's standard library, so adding them cannot conflict.
        let _ = ctx.add_function(
            "glob",
            move |This(this): This<Arc<String>>,
                  pattern: Arc<String>|
                  -> Result<bool, ExecutionError> {
                globs
                    .get(pattern.as_str())
                    .map(|g| g.is_match(&this))
                    .ok_or_else(|| {
                        ExecutionError::function_error("glob", "pattern was not compiled at load")
                    })
            },
        );
        let regexes = Arc::clone(regexes);
        let _ = ctx.add_function(
            MATCHES,
            move |This(this): This<Arc<String>>,
                  pattern: Arc<String>|
                  -> Result<bool, ExecutionError> {
                regexes
                    .get(pattern.as_str())
                    .map(|re| re.is_match(&this))
                    .ok_or_else(|| {
                        ExecutionError::function_error("matches", "regex was not compiled at load")
                    })
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
            Ok(Err(e)) => Err(shorten(&e.to_string().replace(MATCHES, "matches"))),
            Err(_) => Err("the policy engine failed while evaluating this rule".to_owned()),
        }
    }
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
