//! The MCP server (`kz server start --mcp`): the pipeline's third front-end, over stdio.
//!
//! Tools (`server.md`, "MCP"), each taking the caller's identity from `--identity-token-file`
//! (read at every call) or, for compatibility, a `jwt` argument:
//!
//! - `fetch`: decides the ref as `/v1/resolve` does, then makes the agent's HTTP request with
//!   the credential at the resolver's `credential_location`, through [`crate::upstream`] (the
//!   same checked path as the credential proxy), and returns `{status, headers, body}` scrubbed.
//! - `resolve` (only when the bundle lists it under `mcp.tools`): the `/v1/resolve` result for
//!   one ref, value included.
//! - `list_resources`: the resolvers this identity may use, with their bindings.
//!
//! Every failure is a tool result with `isError: true` and a message that says what to do;
//! JSON-RPC errors are left to the SDK (unknown method, malformed message). Nothing but
//! JSON-RPC goes to stdout: the audit log may not be `-` here, and logs go to stderr.
//!
//! **Invariants:** an agent's `fetch` never returns the credential (it is scrubbed from the
//! answer, and a request that carries it is refused and locks the caller out); every decision
//! and every use is audited before the tool answers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use bytes::Bytes;
use kz_audit::{Decision, Record, Transport as AuditTransport};
use kz_policy::Transport;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServiceExt as _};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::AppState;
use crate::pipeline::{self, Caller};
use crate::upstream::{self, Outgoing, Refusal, WITHHELD};

/// The largest identity token file read.
const MAX_TOKEN_FILE: usize = 16 * 1024;

/// The MCP server: the shared state and where the caller's identity comes from.
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
    identity_file: Option<PathBuf>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("identity_file", &self.identity_file)
            .finish_non_exhaustive()
    }
}

/// `fetch`'s arguments.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FetchArgs {
    /// The secret to use, by the name the bundle serves (e.g. `openai/api-key`).
    resource: String,
    /// The absolute URL to call (`https://host/path?query`); its host, method and path must be
    /// within the resolver's `hosts`, `methods` and `paths`.
    url: String,
    /// The HTTP method (default `GET`).
    #[serde(default)]
    method: Option<String>,
    /// Request headers. Credential headers (`Authorization`, `Proxy-Authorization`, `Cookie`),
    /// the credential's own header, and headers that change the method or path are dropped.
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    /// The request body, as text.
    #[serde(default)]
    body: Option<String>,
    /// Facts for the bundle's policies (`context.*`).
    #[serde(default)]
    context: Option<Map<String, Value>>,
    /// Not recommended: the caller's identity token. It enters the model's context and
    /// transcript; start keyzero with `--identity-token-file` instead.
    #[serde(default)]
    jwt: Option<String>,
}

/// `resolve`'s arguments.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ResolveArgs {
    /// The secret to resolve, by the name the bundle serves.
    resource: String,
    /// Facts for the bundle's policies (`context.*`).
    #[serde(default)]
    context: Option<Map<String, Value>>,
    /// Not recommended: the caller's identity token (see `fetch`).
    #[serde(default)]
    jwt: Option<String>,
}

/// `list_resources`' arguments.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    /// Not recommended: the caller's identity token (see `fetch`).
    #[serde(default)]
    jwt: Option<String>,
}

/// The target of a `fetch`, as checked, for its audit record.
#[derive(Default)]
struct Target {
    method: String,
    host: String,
    path: String,
}

/// A tool call's failure: the message the agent reads.
struct ToolError(String);

impl From<Refusal> for ToolError {
    fn from(r: Refusal) -> Self {
        ToolError(r.message)
    }
}

impl From<crate::api::ApiError> for ToolError {
    fn from(e: crate::api::ApiError) -> Self {
        ToolError(e.message().to_owned())
    }
}

type ToolResult = Result<CallToolResult, ToolError>;

/// The input schema of `T`, as an MCP tool wants it.
fn schema<T: JsonSchema>() -> Arc<Map<String, Value>> {
    let mut s = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Some(o) = s.as_object_mut() {
        // The draft marker and title are noise to a model.
        o.remove("$schema");
        o.remove("title");
    }
    Arc::new(match s {
        Value::Object(o) => o,
        _ => Map::from_iter([("type".to_owned(), Value::String("object".to_owned()))]),
    })
}

impl Server {
    /// A server over `state`, taking identities from `identity_file` when given.
    pub fn new(state: Arc<AppState>, identity_file: Option<PathBuf>) -> Self {
        Self {
            state,
            identity_file,
        }
    }

    /// The tools the bundle in force serves.
    fn tools(&self) -> Vec<Tool> {
        let mcp = self.state.current.load().bundle.mcp;
        let mut tools = Vec::new();
        if mcp.fetch {
            tools.push(Tool::new(
                "fetch",
                "Call an HTTP API with a secret the bundle serves, without seeing it: keyzero \
                 decides by policy, puts the credential where the API expects it, makes the \
                 request (only to the hosts, methods and paths the secret is bound to; no \
                 redirect is followed) and returns {status, headers, body} with every form of \
                 the credential removed. Never put a credential in the arguments: a request that \
                 carries it is refused and this caller is locked out.",
                schema::<FetchArgs>(),
            ));
        }
        if mcp.resolve {
            tools.push(Tool::new(
                "resolve",
                "Return the value of a secret the bundle serves, if policy allows (this hands \
                 the value to the agent; prefer `fetch`).",
                schema::<ResolveArgs>(),
            ));
        }
        tools.push(Tool::new(
            "list_resources",
            "List the secrets this identity may use, with the hosts, methods and paths each is \
             bound to (names and bindings only, never a value).",
            schema::<ListArgs>(),
        ));
        tools
    }

    /// The caller's token: the `jwt` argument or the identity file, exactly one of them.
    fn token(&self, jwt: Option<String>) -> Result<zeroize::Zeroizing<String>, ToolError> {
        match (&self.identity_file, jwt) {
            (Some(_), Some(_)) => Err(ToolError(
                "this keyzero takes the caller's identity from its --identity-token-file; a `jwt` \
                 argument is refused (it would let the agent act as another identity): call \
                 again without `jwt`"
                    .into(),
            )),
            (None, Some(t)) => Ok(zeroize::Zeroizing::new(t.trim().to_owned())),
            (Some(path), None) => {
                let read = kz_bundle::read_limited(path, MAX_TOKEN_FILE).map_err(|e| {
                    ToolError(format!(
                        "the identity token file {} cannot be read ({e}); the operator must \
                         fix --identity-token-file",
                        path.display()
                    ))
                })?;
                let bytes = zeroize::Zeroizing::new(read.ok_or_else(|| {
                    ToolError(format!(
                        "the identity token file {} is over {MAX_TOKEN_FILE} bytes",
                        path.display()
                    ))
                })?);
                let text = std::str::from_utf8(&bytes).map_err(|_| {
                    ToolError(format!(
                        "the identity token file {} is not text",
                        path.display()
                    ))
                })?;
                Ok(zeroize::Zeroizing::new(text.trim().to_owned()))
            }
            (None, None) => Err(ToolError(
                "no identity: keyzero was started without --identity-token-file, so each call \
                 must pass `jwt` (the operator should set --identity-token-file instead)"
                    .into(),
            )),
        }
    }

    /// Verifies the caller's token: its identity and how audit records name the token.
    async fn identity(
        &self,
        loaded: &crate::state::Loaded,
        jwt: Option<String>,
        request_id: &str,
    ) -> Result<(Arc<kz_policy::Identity>, String), ToolError> {
        let token = self.token(jwt)?;
        let identity = loaded
            .verifier
            .verify_shared(&token, SystemTime::now())
            .await
            .map_err(|e| {
                tracing::info!(request_id = %request_id, code = e.code(), reason = %e, "token refused");
                ToolError(format!(
                    "the identity token was refused ({}); keyzero's log has the details under \
                     request id {request_id}",
                    e.code()
                ))
            })?;
        let token_id = crate::api::token_id(&identity, &token);
        Ok((identity, token_id))
    }

    /// Decides (and, with `fetch_value`, resolves) one ref; the records are written before
    /// anything is returned.
    async fn decide(
        &self,
        loaded: &crate::state::Loaded,
        caller: &Caller<'_>,
        resource: &str,
        context: Option<Map<String, Value>>,
        fetch_value: bool,
    ) -> Result<kz_wire::ResolveResponse, ToolError> {
        kz_bundle::validate_ref(resource).map_err(|e| {
            ToolError(format!(
                "invalid resource {}: {e}",
                Value::String(resource.to_owned())
            ))
        })?;
        crate::api::within_rate(&self.state, caller.identity, 1)?;
        let context = context.map_or(Value::Null, Value::Object);
        let answer = pipeline::answer(
            loaded,
            &self.state.metrics,
            caller,
            &[resource],
            &context,
            fetch_value,
        )
        .await;
        self.state
            .audit
            .try_append_all(answer.records)
            .map_err(|e| {
                self.state.metrics.audit_refused.inc();
                ToolError(format!(
                    "the audit log cannot take the decision record, so nothing is done: {e}; retry shortly"
                ))
            })?;
        Ok(answer.response)
    }

    async fn fetch(&self, mut args: FetchArgs, request_id: &str) -> ToolResult {
        let started = Instant::now();
        let loaded = self.state.current.load_full();
        if !loaded.bundle.mcp.fetch {
            return Err(ToolError(
                "`fetch` is off: the bundle's `mcp.tools` does not list it".into(),
            ));
        }
        crate::api::audit_room(&self.state, 2)?;
        let (identity, token_id) = self.identity(&loaded, args.jwt.take(), request_id).await?;
        let caller = Caller {
            identity: &identity,
            token_id: &token_id,
            ip: "",
            request_id,
            transport: Transport::Mcp,
        };
        let response = self
            .decide(&loaded, &caller, &args.resource, args.context.take(), false)
            .await?;
        refused_ref(&response, &args.resource)?;
        let Some(resolver) = loaded.bundle.resolver_for(&args.resource) else {
            return Err(ToolError(format!(
                "no resolver serves {}",
                Value::String(args.resource)
            )));
        };
        let record = Record::new(AuditTransport::Mcp)
            .request_id(request_id)
            .issuer(identity.issuer.clone())
            .subject(identity.sub.clone())
            .token_id(token_id.clone())
            .reference(args.resource.clone())
            .resolver(resolver.name.clone())
            .backend(resolver.backend.clone())
            .mode(resolver.mode.name());
        let mut seen = Target::default();
        let outcome = self
            .use_credential(&loaded, resolver, &identity, &args, &mut seen)
            .await;
        let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut record = record.method(seen.method);
        for (v, set) in [
            (seen.host, Record::host as fn(Record, String) -> Record),
            (seen.path, Record::path),
        ] {
            if !v.is_empty() {
                record = set(record, v);
            }
        }
        let record = match &outcome {
            Ok(_) => record.decision(Decision::Allow),
            Err(r) => {
                let decision = if matches!(r.status.as_u16(), 502..=504) {
                    Decision::Error
                } else {
                    Decision::Deny
                };
                record
                    .decision(decision)
                    .reason(r.detail.clone().unwrap_or_else(|| r.message.clone()))
            }
        }
        .latency_us(latency);
        if self.state.audit.try_append_all(vec![record]).is_err() {
            return Err(ToolError(
                "the audit log cannot take the record of this request, so its answer is not \
                 returned; retry shortly"
                    .into(),
            ));
        }
        let answer = outcome?;
        Ok(CallToolResult::structured(answer_json(&answer)))
    }

    /// Checks the agent's request against the resolver's binding and makes it with the
    /// credential; `seen` gets the target as checked.
    async fn use_credential(
        &self,
        loaded: &crate::state::Loaded,
        resolver: &kz_bundle::Resolver,
        identity: &kz_policy::Identity,
        args: &FetchArgs,
        seen: &mut Target,
    ) -> Result<upstream::Answer, Refusal> {
        let forbidden = |m: String| upstream::refuse(http::StatusCode::FORBIDDEN, m);
        let bad = |m: String| upstream::refuse(http::StatusCode::BAD_REQUEST, m);
        let method_text = args.method.as_deref().unwrap_or("GET");
        let method = Method::from_bytes(method_text.as_bytes())
            .map_err(|_| bad(format!("`{method_text}` is not an HTTP method")))?;
        seen.method = method.as_str().to_owned();
        if matches!(method.as_str(), "CONNECT" | "TRACE" | "TRACK") {
            return Err(forbidden(format!(
                "{method} is never sent with a credential"
            )));
        }
        // The URL is parsed once: what is checked is what is connected to.
        let uri: Uri = args.url.parse().map_err(|_| {
            bad("`url` is not a URL: write an absolute `https://host/path`".to_owned())
        })?;
        let dest = kz_egress::destination_from_absolute(&uri)
            .map_err(|why| bad(format!("`url` is refused: {why}")))?;
        let path = uri.path().to_owned();
        let host = kz_egress::host_port(&dest.host, dest.port);
        if resolver.hosts.is_empty() {
            return Err(forbidden(format!(
                "resolver `{}` is bound to no host, so its credential is sent nowhere; the \
                 bundle must give it `hosts`",
                resolver.name
            )));
        }
        let in_hosts = resolver
            .hosts
            .iter()
            .any(|p| (dest.https || p.cleartext) && p.matches(&dest.host, dest.port));
        if !in_hosts {
            seen.host.clone_from(&host);
            return Err(forbidden(format!(
                "`{}` may not be sent to {}{host} (its hosts: {})",
                resolver.name,
                if dest.https { "https://" } else { "http://" },
                resolver
                    .hosts
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Err(r) = resolver.binding.check(method.as_str(), &path) {
            seen.host.clone_from(&host);
            let why = match r {
                kz_config::BindingRefusal::Method => format!(
                    "`{}` may not be used for {method} (its methods: {})",
                    resolver.name, resolver.binding.methods
                ),
                kz_config::BindingRefusal::Path => format!(
                    "`{}` may not be used on {path} (its paths: {})",
                    resolver.name,
                    resolver.binding.paths_text()
                ),
                kz_config::BindingRefusal::AmbiguousPath(why) => {
                    format!("`{}`'s paths cannot decide this path: {why}", resolver.name)
                }
            };
            return Err(forbidden(why));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in args.headers.iter().flatten() {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("header `{name}` is not a header name")))?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                bad(format!(
                    "the value of header `{name}` is not a header value"
                ))
            })?;
            headers.append(n, v);
        }
        let body = Bytes::from(args.body.clone().unwrap_or_default());
        if body.len() > upstream::MAX_BODY {
            return Err(upstream::refuse(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} bytes", upstream::MAX_BODY),
            ));
        }
        let subject = upstream::subject(&identity.issuer, &identity.sub);
        upstream::not_locked_out(&self.state, &subject)?;
        let _slot = upstream::slot()?;
        let client = loaded
            .egress
            .as_ref()
            .and_then(|e| e.get(&resolver.name))
            .ok_or_else(|| {
                forbidden(format!(
                    "resolver `{}` has no upstream client (a bug of kz: every resolver with \
                     hosts has one)",
                    resolver.name
                ))
            })?;
        let credential =
            pipeline::credential(loaded, &self.state.metrics, resolver, &args.resource)
                .await
                .map_err(|why| {
                    upstream::refuse(
                        http::StatusCode::BAD_GATEWAY,
                        format!("the credential is not available: {why}"),
                    )
                })?;
        let outgoing = Outgoing {
            method: &method,
            uri: &uri,
            headers: &headers,
            body,
        };
        let answer = upstream::spend(
            &self.state,
            client,
            resolver,
            &credential,
            &subject,
            outgoing,
        )
        .await;
        let (host, path) = match &answer {
            Err(r) if r.withhold => (WITHHELD.to_owned(), WITHHELD.to_owned()),
            _ => (host, path),
        };
        seen.host = host;
        seen.path = path;
        answer
    }

    async fn resolve(&self, args: ResolveArgs, request_id: &str) -> ToolResult {
        let loaded = self.state.current.load_full();
        if !loaded.bundle.mcp.resolve {
            return Err(ToolError(
                "`resolve` is off: it hands the value to the agent, so the bundle must list it \
                 (`mcp: { tools: [fetch, resolve] }`); use `fetch` to call an API with the secret"
                    .into(),
            ));
        }
        crate::api::audit_room(&self.state, 1)?;
        let (identity, token_id) = self.identity(&loaded, args.jwt, request_id).await?;
        let caller = Caller {
            identity: &identity,
            token_id: &token_id,
            ip: "",
            request_id,
            transport: Transport::Mcp,
        };
        let response = self
            .decide(&loaded, &caller, &args.resource, args.context, true)
            .await?;
        refused_ref(&response, &args.resource)?;
        let body = response
            .to_json()
            .map_err(|e| ToolError(format!("the answer could not be written: {e}")))?;
        let text =
            std::str::from_utf8(&body).map_err(|_| ToolError("the answer is not text".into()))?;
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }

    async fn list_resources(&self, args: ListArgs, request_id: &str) -> ToolResult {
        let loaded = self.state.current.load_full();
        let (identity, _) = self.identity(&loaded, args.jwt, request_id).await?;
        let now = chrono::Utc::now();
        let mut out = Vec::new();
        for r in &loaded.bundle.resolvers {
            let decision = loaded.bundle.policies.decide(&kz_policy::Request {
                identity: &identity,
                reference: &r.name,
                resolver: &r.name,
                mode: r.mode.name(),
                context: &Value::Null,
                time: now,
                ip: "",
                transport: Transport::Mcp,
            });
            if !decision.allowed() {
                continue;
            }
            out.push(json!({
                "name": r.name,
                "mode": r.mode.name(),
                "hosts": r.hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "methods": r.binding.methods.to_string(),
                "paths": r.binding.paths_text(),
            }));
        }
        Ok(CallToolResult::structured(json!({ "resources": out })))
    }
}

/// A tool error when the ref was denied or could not be served.
fn refused_ref(response: &kz_wire::ResolveResponse, resource: &str) -> Result<(), ToolError> {
    let Some(r) = response.results.get(resource) else {
        return Err(ToolError("no decision was made for the resource".into()));
    };
    if !r.allowed {
        return Err(ToolError(format!(
            "denied by policy `{}`{}: this identity may not use {}",
            r.policy.as_deref().unwrap_or("implicit-deny"),
            r.reason
                .as_deref()
                .map(|why| format!(" ({why})"))
                .unwrap_or_default(),
            Value::String(resource.to_owned())
        )));
    }
    if let Some(e) = &r.error {
        return Err(ToolError(format!(
            "{} cannot be served: {e}",
            Value::String(resource.to_owned())
        )));
    }
    Ok(())
}

/// `{status, headers, body}` of a scrubbed answer; a body that is not UTF-8 is given as
/// `body_base64`.
fn answer_json(a: &upstream::Answer) -> Value {
    let mut headers = Map::new();
    for (name, v) in &a.headers {
        let v = Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match headers.get_mut(name.as_str()) {
            Some(Value::Array(list)) => list.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
            None => {
                headers.insert(name.as_str().to_owned(), v);
            }
        }
    }
    let (key, body) = match std::str::from_utf8(&a.body) {
        Ok(text) => ("body", Value::String(text.to_owned())),
        Err(_) => {
            use base64::Engine as _;
            (
                "body_base64",
                Value::String(base64::engine::general_purpose::STANDARD.encode(&a.body)),
            )
        }
    };
    let mut out = Map::new();
    out.insert("status".into(), a.status.as_u16().into());
    out.insert("headers".into(), Value::Object(headers));
    out.insert(key.into(), body);
    Value::Object(out)
}

/// Parses a tool's arguments, or says what is wrong with them.
fn args<T: for<'de> Deserialize<'de>>(
    tool: &str,
    arguments: Option<Map<String, Value>>,
) -> Result<T, ToolError> {
    serde_json::from_value(Value::Object(arguments.unwrap_or_default())).map_err(|e| {
        // serde's message names the field; the value itself is not repeated.
        ToolError(format!("invalid arguments for `{tool}`: {e}"))
    })
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("keyzero", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "keyzero lets you call APIs with secrets you never see: use `list_resources` to \
                 learn which secrets you may use and where, then `fetch` to make the request.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let request_id = format!("{:032x}", rand::random::<u128>());
        let name = request.name.as_ref();
        let outcome = match name {
            "fetch" => match args::<FetchArgs>(name, request.arguments) {
                Ok(a) => self.fetch(a, &request_id).await,
                Err(e) => Err(e),
            },
            "resolve" => match args::<ResolveArgs>(name, request.arguments) {
                Ok(a) => self.resolve(a, &request_id).await,
                Err(e) => Err(e),
            },
            "list_resources" => match args::<ListArgs>(name, request.arguments) {
                Ok(a) => self.list_resources(a, &request_id).await,
                Err(e) => Err(e),
            },
            other => Err(ToolError(format!(
                "no tool `{other}`: the tools are fetch, resolve (when enabled) and list_resources"
            ))),
        };
        Ok(match outcome {
            Ok(r) => r,
            Err(ToolError(message)) => CallToolResult::error(vec![ContentBlock::text(message)]),
        }
        .into())
    }
}

/// Serves MCP on stdin/stdout until the client closes stdin or `stop` fires.
pub async fn serve_stdio(
    server: Server,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| format!("the MCP session did not start: {e}"))?;
    let cancel = running.cancellation_token();
    tokio::select! {
        r = running.waiting() => { r.map_err(|e| format!("the MCP session failed: {e}"))?; }
        _ = stop.wait_for(|s| *s) => { cancel.cancel(); }
    }
    Ok(())
}
