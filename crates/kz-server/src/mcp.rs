//! The MCP server: the pipeline's third front-end, over stdio (`kz server start --mcp`) or
//! Streamable HTTP (`--mcp-listen`, an OAuth 2.1 resource server: [`http_router`]).
//!
//! Tools (`server.md`, "MCP"), each taking the caller's identity, over stdio, from
//! `--identity-token-file` (read at every call) or, for compatibility, a `jwt` argument; over
//! HTTP, from the request's bearer token:
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
    source: Source,
}

/// Where a tool call's identity comes from.
#[derive(Clone, Debug)]
enum Source {
    /// stdio: the token file (read at each call), or the call's `jwt` argument.
    Stdio(Option<PathBuf>),
    /// Streamable HTTP: the request's bearer token, verified by [`authenticate`].
    Http,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The caller of one HTTP request, as [`authenticate`] verified it (in the request's
/// extensions, which rmcp hands to the tool with the request's parts).
#[derive(Clone)]
struct VerifiedCaller {
    identity: Arc<kz_policy::Identity>,
    token_id: String,
}

/// What a tool call knows of its transport: the verified HTTP caller and its address.
#[derive(Default)]
struct CallContext {
    caller: Option<VerifiedCaller>,
    ip: String,
    request_id: Option<String>,
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
    /// A stdio server over `state`, taking identities from `identity_file` when given, else
    /// from each call's `jwt`.
    pub fn new(state: Arc<AppState>, identity_file: Option<PathBuf>) -> Self {
        Self {
            state,
            source: Source::Stdio(identity_file),
        }
    }

    /// A Streamable HTTP server over `state`: identities are the requests' bearer tokens.
    fn http(state: Arc<AppState>) -> Self {
        Self {
            state,
            source: Source::Http,
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

    /// The caller's token (stdio): the `jwt` argument or the identity file, exactly one.
    fn token(
        file: Option<&PathBuf>,
        jwt: Option<String>,
    ) -> Result<zeroize::Zeroizing<String>, ToolError> {
        match (file, jwt) {
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

    /// The caller: over HTTP the request's verified bearer token; over stdio the token file
    /// or `jwt`, verified here. With how audit records name the token.
    async fn identity(
        &self,
        loaded: &crate::state::Loaded,
        jwt: Option<String>,
        call: &CallContext,
        request_id: &str,
    ) -> Result<(Arc<kz_policy::Identity>, String), ToolError> {
        let file = match &self.source {
            Source::Http => {
                if jwt.is_some() {
                    return Err(ToolError(
                        "over HTTP the caller is the request's bearer token; a `jwt` argument is \
                         refused: call again without it"
                            .into(),
                    ));
                }
                let c = call
                    .caller
                    .as_ref()
                    .ok_or_else(|| ToolError("the request carried no verified identity".into()))?;
                return Ok((Arc::clone(&c.identity), c.token_id.clone()));
            }
            Source::Stdio(file) => file.as_ref(),
        };
        let token = Self::token(file, jwt)?;
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
        crate::api::within_rate(&self.state, caller.identity, 1).map_err(|e| {
            ToolError(format!(
                "this identity is over its rate (--rate-limit, counted in refs); retry in {} s",
                e.retry_after().unwrap_or(1)
            ))
        })?;
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

    async fn fetch(&self, mut args: FetchArgs, call: &CallContext, request_id: &str) -> ToolResult {
        let started = Instant::now();
        let loaded = self.state.current.load_full();
        if !loaded.bundle.mcp.fetch {
            return Err(ToolError(
                "`fetch` is off: the bundle's `mcp.tools` does not list it".into(),
            ));
        }
        crate::api::audit_room(&self.state, 2)?;
        let (identity, token_id) = self
            .identity(&loaded, args.jwt.take(), call, request_id)
            .await?;
        let caller = Caller {
            identity: &identity,
            token_id: &token_id,
            ip: &call.ip,
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
            .client_ip(call.ip.clone())
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
        if matches!(&outcome, Err(r) if r.withhold) {
            // The audit record must not carry what the guess carried.
            seen = Target {
                method: WITHHELD.to_owned(),
                host: WITHHELD.to_owned(),
                path: WITHHELD.to_owned(),
            };
        }
        let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut record = record;
        for (v, set) in [
            (seen.method, Record::method as fn(Record, String) -> Record),
            (seen.host, Record::host),
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

    /// Checks the agent's request and makes it with the credential; `seen` gets the target as
    /// checked. Order: what the request is (method, URL) → the caller not locked out → the
    /// credential → a guess anywhere in what the agent wrote (before anything of it can reach a
    /// refusal message or the audit log) → the resolver's binding → the call.
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
        let caller = upstream::CallerId {
            issuer: &identity.issuer,
            sub: &identity.sub,
        };
        if resolver.hosts.is_empty() {
            return Err(forbidden(format!(
                "resolver `{}` is bound to no host, so its credential is sent nowhere; the \
                 bundle must give it `hosts`",
                resolver.name
            )));
        }
        upstream::not_locked_out(&self.state, caller)?;
        let body = Bytes::from(args.body.clone().unwrap_or_default());
        if body.len() > upstream::MAX_BODY {
            return Err(upstream::refuse(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} bytes", upstream::MAX_BODY),
            ));
        }
        let _slot = upstream::slot()?;
        let credential =
            pipeline::credential(loaded, &self.state.metrics, resolver, &args.resource)
                .await
                .map_err(|why| {
                    upstream::refuse(
                        http::StatusCode::BAD_GATEWAY,
                        format!("the credential is not available: {why}"),
                    )
                })?;
        upstream::not_burned(&self.state, resolver, &credential)?;
        // Everything the agent wrote, as written (headers that will be dropped included): the
        // credential in any of it is a guess.
        let m = upstream::matcher(&credential);
        let method_text = args.method.as_deref().unwrap_or("GET");
        let mut written: Vec<&[u8]> = vec![method_text.as_bytes(), args.url.as_bytes(), &body];
        for (name, value) in args.headers.iter().flatten() {
            written.push(name.as_bytes());
            written.push(value.as_bytes());
        }
        if written.iter().any(|w| !m.hits_in(w).is_empty()) {
            return Err(upstream::guessed(
                &self.state,
                resolver,
                &credential,
                caller,
            ));
        }
        let method = Method::from_bytes(method_text.as_bytes())
            .map_err(|_| bad(format!("`{method_text}` is not an HTTP method")))?;
        seen.method = method.as_str().to_owned();
        upstream::never_sent(&method)?;
        // The URL is parsed once: what is checked is what is connected to.
        let uri: Uri = args.url.parse().map_err(|_| {
            bad("`url` is not a URL: write an absolute `https://host/path`".to_owned())
        })?;
        let dest = kz_egress::destination_from_absolute(&uri)
            .map_err(|why| bad(format!("`url` is refused: {why}")))?;
        let path = uri.path().to_owned();
        let host = kz_egress::host_port(&dest.host, dest.port);
        seen.host.clone_from(&host);
        let in_hosts = resolver
            .hosts
            .iter()
            .any(|p| (dest.https || p.cleartext) && p.matches(&dest.host, dest.port));
        if !in_hosts {
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
        seen.path.clone_from(&path);
        if let Err(r) = resolver.binding.check(method.as_str(), &path) {
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
        let outgoing = Outgoing {
            method: &method,
            uri: &uri,
            headers: &headers,
            body,
        };
        upstream::spend(
            &self.state,
            client,
            resolver,
            &credential,
            &m,
            caller,
            outgoing,
        )
        .await
    }

    async fn resolve(&self, args: ResolveArgs, call: &CallContext, request_id: &str) -> ToolResult {
        let loaded = self.state.current.load_full();
        if !loaded.bundle.mcp.resolve {
            return Err(ToolError(
                "`resolve` is off: it hands the value to the agent, so the bundle must list it \
                 (`mcp: { tools: [fetch, resolve] }`); use `fetch` to call an API with the secret"
                    .into(),
            ));
        }
        crate::api::audit_room(&self.state, 1)?;
        let (identity, token_id) = self.identity(&loaded, args.jwt, call, request_id).await?;
        let caller = Caller {
            identity: &identity,
            token_id: &token_id,
            ip: &call.ip,
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

    async fn list_resources(
        &self,
        args: ListArgs,
        call: &CallContext,
        request_id: &str,
    ) -> ToolResult {
        let loaded = self.state.current.load_full();
        let (identity, _) = self.identity(&loaded, args.jwt, call, request_id).await?;
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
                ip: &call.ip,
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
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // Over HTTP, rmcp hands over the request's parts: the caller verified by
        // `authenticate`, the peer address and the request id.
        let call = context
            .extensions
            .get::<http::request::Parts>()
            .map(|parts| CallContext {
                caller: parts.extensions.get::<VerifiedCaller>().cloned(),
                ip: parts
                    .extensions
                    .get::<crate::api::Peer>()
                    .map(|p| p.0.ip().to_string())
                    .unwrap_or_default(),
                request_id: parts
                    .extensions
                    .get::<crate::api::RequestId>()
                    .map(|r| r.0.clone()),
            })
            .unwrap_or_default();
        let request_id = call
            .request_id
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let name = request.name.as_ref();
        let outcome = match name {
            "fetch" => match args::<FetchArgs>(name, request.arguments) {
                Ok(a) => self.fetch(a, &call, &request_id).await,
                Err(e) => Err(e),
            },
            "resolve" => match args::<ResolveArgs>(name, request.arguments) {
                Ok(a) => self.resolve(a, &call, &request_id).await,
                Err(e) => Err(e),
            },
            "list_resources" => match args::<ListArgs>(name, request.arguments) {
                Ok(a) => self.list_resources(a, &call, &request_id).await,
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

/// How the Streamable HTTP endpoint presents itself (`--mcp-listen`).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// The canonical URL of the MCP endpoint (`--mcp-resource`, default `http[s]://ADDR/mcp`):
    /// the RFC 9728 `resource`, and the audience every bearer token must carry.
    pub resource: String,
    /// `Host` values accepted (DNS-rebinding defence): the resource's authority and, on a
    /// loopback address, the loopback names with the port.
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted when a browser sends one: the resource's origin.
    pub allowed_origins: Vec<String>,
}

impl HttpSettings {
    /// The settings for an endpoint bound to `addr` (`tls`: served over TLS), with the
    /// operator's `resource` URL if given.
    pub fn new(
        addr: std::net::SocketAddr,
        tls: bool,
        resource: Option<&str>,
    ) -> Result<Self, String> {
        let scheme = if tls { "https" } else { "http" };
        let resource = match resource {
            Some(r) => r.trim_end_matches('/').to_owned(),
            None => format!("{scheme}://{addr}/mcp"),
        };
        let uri: Uri = resource
            .parse()
            .map_err(|_| format!("`{resource}` is not a URL"))?;
        let (Some(rscheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!("`{resource}` is not an absolute http(s) URL"));
        };
        if !matches!(rscheme, "http" | "https") || uri.query().is_some() {
            return Err(format!(
                "`{resource}` must be an http(s) URL without a query (RFC 9728)"
            ));
        }
        let resource_host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback_resource = resource_host == "localhost"
            || resource_host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if rscheme == "http" && !loopback_resource {
            return Err(format!(
                "`{resource}` would carry bearer tokens in clear text: an MCP endpoint that is \
                 not on loopback must be https (serve TLS with --tls-cert/--tls-key, or name the \
                 https URL of the TLS front end with --mcp-resource)"
            ));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if rscheme == "https" { 443 } else { 80 });
        let host = authority.host();
        let mut allowed_hosts = vec![authority.as_str().to_owned(), format!("{host}:{port}")];
        if addr.ip().is_loopback() {
            for name in ["localhost", "127.0.0.1", "[::1]"] {
                allowed_hosts.push(format!("{name}:{}", addr.port()));
            }
        }
        let allowed_origins = vec![format!("{rscheme}://{host}:{port}")];
        Ok(Self {
            resource,
            allowed_hosts,
            allowed_origins,
        })
    }

    /// The RFC 9728 metadata URL for the resource: the well-known path inserted before the
    /// resource's path.
    pub fn metadata_url(&self) -> String {
        let well_known = "/.well-known/oauth-protected-resource";
        match self.resource.parse::<Uri>() {
            Ok(u) => {
                let path = u.path().trim_end_matches('/');
                format!(
                    "{}://{}{well_known}{path}",
                    u.scheme_str().unwrap_or("https"),
                    u.authority().map_or("", |a| a.as_str())
                )
            }
            Err(_) => format!("{}{well_known}", self.resource),
        }
    }

    /// The path of the MCP endpoint within the server (the resource's path, `/mcp` by default).
    fn endpoint_path(&self) -> String {
        let path = self
            .resource
            .parse::<Uri>()
            .map(|u| u.path().to_owned())
            .unwrap_or_default();
        if path.is_empty() || path == "/" {
            "/mcp".to_owned()
        } else {
            path
        }
    }
}

/// What [`authenticate`] and the metadata route share.
struct HttpContext {
    state: Arc<AppState>,
    settings: HttpSettings,
}

/// The Streamable HTTP router (`--mcp-listen`): the MCP endpoint behind bearer-token
/// authentication, and its RFC 9728 protected-resource metadata.
pub fn http_router(state: Arc<AppState>, settings: HttpSettings) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let endpoint = settings.endpoint_path();
    let metadata_path = settings
        .metadata_url()
        .parse::<Uri>()
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|_| "/.well-known/oauth-protected-resource".to_owned());
    let config = StreamableHttpServerConfig::default()
        // Stateless: each POST stands alone, so replicas behind a load balancer need nothing
        // shared, and nothing of a session outlives its request.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(settings.allowed_hosts.clone())
        .with_allowed_origins(settings.allowed_origins.clone())
        .with_max_request_body_bytes(crate::MAX_BODY_BYTES + upstream::MAX_BODY);
    let service_state = Arc::clone(&state);
    let service = StreamableHttpService::new(
        move || Ok(Server::http(Arc::clone(&service_state))),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let ctx = Arc::new(HttpContext {
        state: Arc::clone(&state),
        settings,
    });
    let mcp =
        axum::Router::new()
            .fallback_service(service)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&ctx),
                authenticate,
            ));
    let mut router = axum::Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(metadata),
        )
        .nest(&endpoint, mcp);
    if metadata_path != "/.well-known/oauth-protected-resource" {
        router = router.route(&metadata_path, axum::routing::get(metadata));
    }
    router
        .with_state(Arc::clone(&ctx))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::api::around,
        ))
}

/// RFC 9728 protected-resource metadata: this resource, the issuers the bundle trusts (the
/// authorization servers), bearer tokens in the header only.
async fn metadata(
    axum::extract::State(ctx): axum::extract::State<Arc<HttpContext>>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let loaded = ctx.state.current.load();
    let servers: Vec<&str> = loaded
        .bundle
        .issuers
        .iter()
        .map(|i| i.issuer_url.as_str())
        .collect();
    let body = json!({
        "resource": ctx.settings.resource,
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "keyzero",
        "resource_documentation": "https://github.com/keyzero/keyzero/blob/main/docs/mcp.md",
    });
    (
        [
            (http::header::CONTENT_TYPE, "application/json"),
            (http::header::CACHE_CONTROL, "max-age=300"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A `401` that points the client at the metadata (RFC 9728 §5.1; RFC 6750 §3).
fn unauthorized(ctx: &HttpContext, error: Option<&str>, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        ctx.settings.metadata_url()
    );
    if let Some(e) = error {
        challenge.push_str(&format!(", error=\"{e}\""));
    }
    let mut resp = (
        http::StatusCode::UNAUTHORIZED,
        [(http::header::CONTENT_TYPE, "application/json")],
        json!({"error": "invalid_token", "message": message}).to_string(),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Why a request's `Host` (or HTTP/2 authority) or `Origin` is not this server's, if it is not.
fn foreign_origin(settings: &HttpSettings, req: &axum::extract::Request) -> Option<String> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let Some(host) = host else {
        return Some("the request names no host".into());
    };
    if !settings
        .allowed_hosts
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&host))
    {
        return Some(format!(
            "the request is for host `{host}`, not this MCP server (a DNS-rebinding guard); \
             use {}",
            settings.resource
        ));
    }
    if let Some(origin) = req.headers().get(http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let normalised = match origin.parse::<Uri>() {
            Ok(u) => match (u.scheme_str(), u.host()) {
                (Some(scheme), Some(h)) => {
                    let port = u
                        .port_u16()
                        .unwrap_or(if scheme == "https" { 443 } else { 80 });
                    Some(format!("{scheme}://{h}:{port}"))
                }
                _ => None,
            },
            Err(_) => None,
        };
        if !normalised.is_some_and(|o| {
            settings
                .allowed_origins
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&o))
        }) {
            return Some(format!(
                "requests from the web origin `{origin}` are refused (a DNS-rebinding guard)"
            ));
        }
    }
    None
}

/// Verifies the request's bearer token as `/v1/resolve` does, and that its audience is this
/// resource (a token minted for another server is not accepted here); the verified caller goes
/// into the request's extensions for the tools. The token itself goes nowhere else.
async fn authenticate(
    axum::extract::State(ctx): axum::extract::State<Arc<HttpContext>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let request_id = req
        .extensions()
        .get::<crate::api::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    // DNS rebinding first: a page that made a browser resolve its name to this server gets
    // 403 whatever else it sends (rmcp checks the same again).
    if let Some(why) = foreign_origin(&ctx.settings, &req) {
        use axum::response::IntoResponse as _;
        tracing::info!(request_id = %request_id, why = %why, "MCP request from a foreign host or origin refused");
        return (
            http::StatusCode::FORBIDDEN,
            [(http::header::CONTENT_TYPE, "application/json")],
            json!({"error": "forbidden", "message": why}).to_string(),
        )
            .into_response();
    }
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| zeroize::Zeroizing::new(t.trim().to_owned()))
        });
    let Some(token) = token else {
        return unauthorized(
            &ctx,
            None,
            "this MCP endpoint needs `Authorization: Bearer <token>`; the metadata in \
             WWW-Authenticate names the issuers it trusts",
        );
    };
    let loaded = ctx.state.current.load_full();
    let identity = match loaded
        .verifier
        .verify_shared(&token, SystemTime::now())
        .await
    {
        Ok(id) => id,
        Err(e) => {
            tracing::info!(request_id = %request_id, code = e.code(), reason = %e, "MCP token refused");
            return unauthorized(
                &ctx,
                Some("invalid_token"),
                &format!(
                    "the token was refused ({}); the server's log has the details under request id {request_id}",
                    e.code()
                ),
            );
        }
    };
    let audience_ok = match identity.claims.get("aud") {
        Some(Value::String(a)) => a.trim_end_matches('/') == ctx.settings.resource,
        Some(Value::Array(list)) => list.iter().any(|a| {
            a.as_str()
                .is_some_and(|a| a.trim_end_matches('/') == ctx.settings.resource)
        }),
        _ => false,
    };
    if !audience_ok {
        tracing::info!(request_id = %request_id, resource = %ctx.settings.resource, "MCP token of another audience refused");
        return unauthorized(
            &ctx,
            Some("invalid_token"),
            &format!(
                "the token's audience is not this MCP server: its `aud` must include {}",
                ctx.settings.resource
            ),
        );
    }
    let token_id = crate::api::token_id(&identity, &token);
    req.extensions_mut()
        .insert(VerifiedCaller { identity, token_id });
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_names_its_metadata_hosts_and_origin() {
        let local = HttpSettings::new("127.0.0.1:8090".parse().unwrap(), false, None).unwrap();
        assert_eq!(local.resource, "http://127.0.0.1:8090/mcp");
        assert_eq!(
            local.metadata_url(),
            "http://127.0.0.1:8090/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(local.endpoint_path(), "/mcp");
        assert!(local.allowed_hosts.contains(&"localhost:8090".to_owned()));
        assert!(!local.allowed_hosts.iter().any(|h| h.starts_with("evil")));
        let public = HttpSettings::new(
            "0.0.0.0:8443".parse().unwrap(),
            false,
            Some("https://kz.example.com/agents/mcp/"),
        )
        .unwrap();
        assert_eq!(public.resource, "https://kz.example.com/agents/mcp");
        assert_eq!(
            public.metadata_url(),
            "https://kz.example.com/.well-known/oauth-protected-resource/agents/mcp"
        );
        assert_eq!(public.endpoint_path(), "/agents/mcp");
        assert_eq!(
            public.allowed_hosts,
            ["kz.example.com", "kz.example.com:443"]
        );
        assert_eq!(public.allowed_origins, ["https://kz.example.com:443"]);
        for bad in [
            "http://kz.example.com/mcp",
            "ftp://kz/mcp",
            "https://kz/mcp?x=1",
            "/mcp",
        ] {
            assert!(
                HttpSettings::new("0.0.0.0:1".parse().unwrap(), false, Some(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
