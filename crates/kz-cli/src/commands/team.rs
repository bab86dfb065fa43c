//! Team-mode commands that work on a bundle without serving it: `kz server check`,
//! `kz policy eval`, `kz policy test`, `kz token sign`. They only dispatch: the bundle is
//! `kz-bundle`, identity `kz-identity`, decisions `kz-policy`.

use std::path::Path;

use kz_bundle::Bundle;
use kz_config::Diagnostic;
use kz_config::tree::{Node, Val};
use kz_policy::{Decision, Identity, Request, Step, Transport};
use serde_json::{Value, json};

use crate::cli::{
    PolicyEvalArgs, PolicyTestArgs, ReportFormat, ServerCheckArgs, TokenSignArgs, TransportArg,
};
use crate::commands::print_out;
use crate::context::Ctx;
use crate::report::{CmdResult, Failure, escape, exit, json_value};

/// Loads the bundle, or every problem in it.
fn load(path: &Path) -> Result<Bundle, Failure> {
    kz_bundle::load(path).map_err(Failure::many)
}

/// `kz server check`.
pub fn server_check(ctx: &Ctx, args: &ServerCheckArgs) -> CmdResult {
    let file = args.bundle.display().to_string();
    let (bundle, diags) = match kz_bundle::load(&args.bundle) {
        Ok(b) => {
            let mut warnings = b.unavailable_secrets();
            warnings.extend(b.warnings());
            (Some(b), warnings)
        }
        Err(d) => (None, d),
    };
    let per_replica = bundle
        .as_ref()
        .map(Bundle::per_replica_settings)
        .unwrap_or_default();
    match args.format {
        ReportFormat::Json => {
            let errors: Vec<Value> = diags
                .iter()
                .filter(|d| d.is_error())
                .map(json_value)
                .collect();
            let warnings: Vec<Value> = diags
                .iter()
                .filter(|d| !d.is_error())
                .map(json_value)
                .collect();
            let counts = bundle.as_ref().map(|b| {
                json!({
                    "issuers": b.issuers.len(),
                    "backends": b.backends.len(),
                    "resolvers": b.resolvers.len(),
                    "policies": b.policies.len(),
                })
            });
            let doc = json!({
                "version": 1,
                "file": file,
                "valid": bundle.is_some(),
                "counts": counts,
                "per_replica": per_replica,
                "errors": errors,
                "warnings": warnings,
            });
            print_out(&format!("{doc}\n"))?;
        }
        ReportFormat::Text => {
            ctx.out.all(&diags);
            match &bundle {
                Some(b) => {
                    let mut text = format!(
                        "{}: valid ({}, {}, {}, {})\n",
                        escape(&file),
                        count(b.issuers.len(), "issuer", "issuers"),
                        count(b.backends.len(), "backend", "backends"),
                        count(b.resolvers.len(), "resolver", "resolvers"),
                        count(b.policies.len(), "policy", "policies")
                    );
                    if !per_replica.is_empty() {
                        text.push_str("per replica (not shared between server replicas):\n");
                        for n in &per_replica {
                            text.push_str(&format!("  - {}\n", escape(n)));
                        }
                    }
                    print_out(&text)?;
                }
                None => {
                    let n = diags.iter().filter(|d| d.is_error()).count();
                    ctx.out
                        .note(&format!("{n} problem(s) found in {}", escape(&file)));
                }
            }
        }
    }
    Ok(if bundle.is_some() {
        exit::OK
    } else {
        exit::ERROR
    })
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn transport(t: TransportArg) -> Transport {
    match t {
        TransportArg::Http => Transport::Http,
        TransportArg::Mcp => Transport::Mcp,
        TransportArg::Proxy => Transport::Proxy,
    }
}

/// One request to decide, as `policy eval` and each `policy test` case state it.
struct Case {
    identity: Identity,
    reference: String,
    context: Value,
    transport: Transport,
}

/// The decision for `case` with its trace, the matched resolver's name and mode.
fn decide(bundle: &Bundle, case: &Case) -> (Decision, Vec<Step>, String, String) {
    let resolver = kz_bundle::validate_ref(&case.reference)
        .ok()
        .and_then(|()| bundle.resolver_for(&case.reference));
    let resolver_name = resolver.map(|r| r.name.clone()).unwrap_or_default();
    let mode = resolver
        .map(|r| r.mode.name().to_owned())
        .unwrap_or_default();
    let req = Request {
        identity: &case.identity,
        reference: &case.reference,
        resolver: &resolver_name,
        mode: &mode,
        context: &case.context,
        time: chrono::Utc::now(),
        ip: "",
        transport: case.transport,
    };
    let (decision, trace) = bundle.policies.decide_traced(&req);
    (decision, trace, resolver_name, mode)
}

fn trace_json(trace: &[Step]) -> Value {
    Value::Array(
        trace
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
            .collect(),
    )
}

fn trace_text(trace: &[Step]) -> String {
    let mut out = String::new();
    for s in trace {
        let line = match s {
            Step::SkippedByGuard { policy, guard } => {
                format!("skipped   {policy}  (guard `{guard}` is false)")
            }
            Step::Evaluated { policy, value } => format!("evaluated {policy}  -> {value}"),
            Step::Failed { policy, reason } => format!("failed    {policy}  -> {reason}"),
        };
        out.push_str(&format!("  {}\n", escape(&line)));
    }
    out
}

/// Parses `--context`: a JSON object (or nothing).
fn parse_context(raw: Option<&str>) -> Result<Value, Failure> {
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Failure::usage(
            "--context must be a JSON object",
            "write e.g. --context '{\"ticket\":\"INC-1\"}'",
        )),
        Err(e) => Err(Failure::usage(
            format!("--context is not JSON: {e}"),
            "write e.g. --context '{\"ticket\":\"INC-1\"}'",
        )),
    }
}

/// `kz policy eval`.
pub fn policy_eval(_ctx: &Ctx, args: &PolicyEvalArgs) -> CmdResult {
    let bundle = load(&args.bundle)?;
    let context = parse_context(args.context.as_deref())?;
    let identity = match (&args.token, &args.claims) {
        (Some(token), _) => crate::commands::team_identity::verify_token(&bundle, token)?,
        (None, Some(file)) => {
            let claims = read_claims(file)?;
            crate::commands::team_identity::from_claims(&bundle, args.issuer.as_deref(), &claims)?
        }
        (None, None) => {
            return Err(Failure::usage(
                "give --token or --claims",
                "kz policy eval -b bundle.yaml --claims claims.json --ref prod/db",
            ));
        }
    };
    if let Err(why) = kz_bundle::validate_ref(&args.reference) {
        return Err(Failure::usage(
            format!("--ref: {why}"),
            "give the name a caller would request",
        ));
    }
    let case = Case {
        identity,
        reference: args.reference.clone(),
        context,
        transport: transport(args.transport),
    };
    let (decision, trace, resolver, mode) = decide(&bundle, &case);
    match args.format {
        ReportFormat::Json => {
            let doc = json!({
                "version": 1,
                "allowed": decision.allowed(),
                "effect": decision.effect,
                "policy": decision.policy,
                "reason": decision.reason,
                "ref": case.reference,
                "resolver": resolver,
                "mode": mode,
                "identity": case.identity,
                "trace": trace_json(&trace),
            });
            print_out(&format!("{doc}\n"))?;
        }
        ReportFormat::Text => {
            let mut text = format!(
                "{} by policy `{}`{}\n",
                if decision.allowed() { "ALLOW" } else { "DENY" },
                escape(&decision.policy),
                decision
                    .reason
                    .as_deref()
                    .map(|r| format!(": {}", escape(r)))
                    .unwrap_or_default()
            );
            text.push_str(&format!(
                "ref `{}` -> resolver `{}`{}\n",
                escape(&case.reference),
                escape(&resolver),
                if resolver.is_empty() {
                    " (no resolver matches: the server would answer `no resolver matches ref`)"
                } else {
                    ""
                }
            ));
            let id = &case.identity;
            text.push_str(&format!(
                "identity: issuer={} sub={} org={} service={} env={} action={} branch={} actor={} groups=[{}]\n",
                escape(&id.issuer),
                escape(&id.sub),
                escape(&id.org),
                escape(&id.service),
                escape(&id.env),
                escape(&id.action),
                escape(&id.branch),
                escape(&id.actor),
                escape(&id.groups.join(","))
            ));
            text.push_str("trace:\n");
            text.push_str(&trace_text(&trace));
            print_out(&text)?;
        }
    }
    Ok(exit::OK)
}

/// Reads a JSON object of claims from `file` (`-`: standard input).
fn read_claims(file: &Path) -> Result<serde_json::Map<String, Value>, Failure> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s).map_err(|e| {
            Failure::msg(
                "io::stdin",
                format!("cannot read claims from standard input: {e}"),
                "pipe a JSON object",
            )
        })?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| {
            Failure::msg(
                "policy::claims",
                format!("cannot read the claims file {}: {e}", file.display()),
                "give a JSON file of claims with --claims",
            )
        })?
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Failure::msg(
            "policy::claims",
            format!("{} is not a JSON object of claims", file.display()),
            "write the token's payload, e.g. {\"iss\": \"…\", \"sub\": \"…\"}",
        )),
        Err(e) => Err(Failure::msg(
            "policy::claims",
            format!("{} is not JSON: {e}", file.display()),
            "write the token's payload, e.g. {\"iss\": \"…\", \"sub\": \"…\"}",
        )),
    }
}

/// A positioned YAML value as JSON (claims and context of a test case).
fn to_json(n: &Node) -> Value {
    match &n.val {
        Val::Str(s) | Val::Datetime(s) => Value::String(s.clone()),
        Val::Int(i) => Value::from(*i),
        Val::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Val::Bool(b) => Value::Bool(*b),
        Val::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Val::Table(t) => Value::Object(
            t.iter()
                .map(|e| (e.key.clone(), to_json(&e.node)))
                .collect(),
        ),
    }
}

const CASE_KEYS: &[&str] = &[
    "name",
    "issuer",
    "claims",
    "identity",
    "ref",
    "context",
    "transport",
    "expect",
    "policy",
];

/// One parsed test case.
struct TestCase {
    name: String,
    line: usize,
    case: Case,
    expect_allow: bool,
    expect_policy: Option<String>,
}

fn test_error(file: &Path, n: &Node, path: &str, msg: String, help: &str) -> Diagnostic {
    Diagnostic::error("policy::test_file", msg)
        .at(&n.pos)
        .in_file(file)
        .key(path)
        .help(help)
}

/// Parses TESTS.yaml: every problem at once.
fn parse_tests(bundle: &Bundle, file: &Path) -> Result<Vec<TestCase>, Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::msg(
            "policy::test_file",
            format!("cannot read {}: {e}", file.display()),
            "give the path of a YAML file with `tests:`",
        )
    })?;
    let root = kz_config::yaml::parse_yaml(file, &text).map_err(Failure::many)?;
    let mut diags = Vec::new();
    for e in root.as_table().unwrap_or_default() {
        if e.key != "tests" {
            diags.push(kz_config::schema::unknown_key(e, &e.key, &["tests"]));
        }
    }
    let items = match root.get("tests").map(|e| &e.node.val) {
        Some(Val::Array(a)) => a.as_slice(),
        _ => {
            diags.push(test_error(
                file,
                &root,
                "tests",
                "the file needs a list `tests:`".into(),
                "write `tests:` followed by `- name: …` entries",
            ));
            &[]
        }
    };
    let mut out = Vec::new();
    for (i, n) in items.iter().enumerate() {
        let path = format!("tests[{i}]");
        let Some(t) = n.as_table() else {
            diags.push(test_error(
                file,
                n,
                &path,
                format!("`{path}` must be a mapping"),
                "write `- name: …`",
            ));
            continue;
        };
        for e in t {
            if !CASE_KEYS.contains(&e.key.as_str()) {
                diags.push(kz_config::schema::unknown_key(
                    e,
                    &format!("{path}.{}", e.key),
                    CASE_KEYS,
                ));
            }
        }
        let get = |k: &str| t.iter().find(|e| e.key == k).map(|e| &e.node);
        let str_of = |k: &str| get(k).and_then(Node::as_str).map(str::to_owned);
        let name = str_of("name").unwrap_or_else(|| path.clone());
        let Some(reference) = str_of("ref") else {
            diags.push(test_error(
                file,
                n,
                &path,
                format!("`{path}` needs `ref` (a string)"),
                "add `ref: prod/db`",
            ));
            continue;
        };
        if let Err(why) = kz_bundle::validate_ref(&reference) {
            let at = get("ref").unwrap_or(n);
            diags.push(test_error(file, at, &format!("{path}.ref"), format!("`{path}.ref`: {why}"), "the server refuses such a ref before any policy: test the names callers can request"));
            continue;
        }
        let expect_allow = match str_of("expect").as_deref() {
            Some("allow") => true,
            Some("deny") => false,
            _ => {
                diags.push(test_error(
                    file,
                    n,
                    &path,
                    format!("`{path}` needs `expect: allow` or `expect: deny`"),
                    "add `expect: allow` or `expect: deny`",
                ));
                continue;
            }
        };
        let transport = match str_of("transport").as_deref() {
            None | Some("http") => Transport::Http,
            Some("mcp") => Transport::Mcp,
            Some("proxy") => Transport::Proxy,
            Some(other) => {
                diags.push(test_error(
                    file,
                    n,
                    &path,
                    format!("`{path}.transport`: unknown transport `{other}`"),
                    "use http, mcp or proxy",
                ));
                continue;
            }
        };
        let context = match get("context") {
            None => Value::Null,
            Some(c) if c.as_table().is_some() => to_json(c),
            Some(c) => {
                diags.push(test_error(
                    file,
                    c,
                    &path,
                    format!("`{path}.context` must be a mapping"),
                    "write `context: { ticket: INC-1 }`",
                ));
                continue;
            }
        };
        let identity = match (get("claims"), get("identity")) {
            (Some(c), None) => {
                let Value::Object(claims) = to_json(c) else {
                    diags.push(test_error(
                        file,
                        c,
                        &path,
                        format!("`{path}.claims` must be a mapping"),
                        "write the token's claims as a mapping",
                    ));
                    continue;
                };
                match crate::commands::team_identity::from_claims(
                    bundle,
                    str_of("issuer").as_deref(),
                    &claims,
                ) {
                    Ok(id) => id,
                    Err(f) => {
                        diags.extend(
                            f.diagnostics
                                .into_iter()
                                .map(|d| d.at(&c.pos).in_file(file)),
                        );
                        continue;
                    }
                }
            }
            (None, Some(id)) => match serde_json::from_value::<Identity>(to_json(id)) {
                Ok(v) => v,
                Err(e) => {
                    diags.push(test_error(file, id, &path, format!("`{path}.identity`: {e}"), "fields: issuer, sub, org, service, env, action, branch, actor, groups, claims"));
                    continue;
                }
            },
            _ => {
                diags.push(test_error(file, n, &path, format!("`{path}` needs exactly one of `claims` or `identity`"), "give the token's claims (mapped through the issuer's profile) or a normalised identity"));
                continue;
            }
        };
        out.push(TestCase {
            name,
            line: n.pos.line,
            case: Case {
                identity,
                reference,
                context,
                transport,
            },
            expect_allow,
            expect_policy: str_of("policy"),
        });
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(Failure::many(diags))
    }
}

/// `kz policy test`.
pub fn policy_test(_ctx: &Ctx, args: &PolicyTestArgs) -> CmdResult {
    let bundle = load(&args.bundle)?;
    let cases = parse_tests(&bundle, &args.tests)?;
    let mut results = Vec::new();
    let mut failed = 0usize;
    let mut text = String::new();
    for t in &cases {
        let (decision, trace, resolver, _) = decide(&bundle, &t.case);
        let mut problems = Vec::new();
        if decision.allowed() != t.expect_allow {
            problems.push(format!(
                "expected {}, got {}",
                if t.expect_allow { "allow" } else { "deny" },
                if decision.allowed() { "allow" } else { "deny" }
            ));
        }
        if let Some(p) = &t.expect_policy
            && *p != decision.policy
        {
            problems.push(format!("expected policy `{p}`, got `{}`", decision.policy));
        }
        let ok = problems.is_empty();
        if !ok {
            failed += 1;
        }
        match args.format {
            ReportFormat::Json => results.push(json!({
                "name": t.name,
                "line": t.line,
                "passed": ok,
                "allowed": decision.allowed(),
                "policy": decision.policy,
                "reason": decision.reason,
                "resolver": resolver,
                "problems": problems,
                "trace": if ok { Value::Null } else { trace_json(&trace) },
            })),
            ReportFormat::Text => {
                if ok {
                    text.push_str(&format!("ok    {}\n", escape(&t.name)));
                } else {
                    text.push_str(&format!(
                        "FAIL  {} (line {}): {}\n",
                        escape(&t.name),
                        t.line,
                        escape(&problems.join("; "))
                    ));
                    text.push_str(&trace_text(&trace));
                }
            }
        }
    }
    match args.format {
        ReportFormat::Json => {
            let doc = json!({
                "version": 1,
                "passed": cases.len() - failed,
                "failed": failed,
                "tests": results,
            });
            print_out(&format!("{doc}\n"))?;
        }
        ReportFormat::Text => {
            text.push_str(&format!(
                "{} passed, {failed} failed\n",
                cases.len() - failed
            ));
            print_out(&text)?;
        }
    }
    Ok(if failed == 0 { exit::OK } else { exit::ERROR })
}

/// `kz token sign`.
pub fn token_sign(_ctx: &Ctx, args: &TokenSignArgs) -> CmdResult {
    let token = crate::commands::team_identity::sign(args)?;
    print_out(&format!("{token}\n"))?;
    Ok(exit::OK)
}
