//! The `keyzero` provider (alias `kz`): the client side of team mode. Secrets come from a keyzero
//! team server (`kz server start`) through `POST /v1/resolve` (`server.md`, "HTTP API"), whose
//! request and answer shapes are `kz-wire`'s.
//!
//! **Options.** `endpoint` (required: `https://…`, or `http://` to a loopback host only, since
//! the request carries a bearer token and the answer carries values), `audience` (default
//! `keyzero`; what a `github-actions` token is requested for), `ca_cert` (a PEM file added to the
//! trusted roots), and where the workload identity token comes from:
//!
//! | `token_source` | the token |
//! |---|---|
//! | `github-actions` | requested from `ACTIONS_ID_TOKEN_REQUEST_URL` (+ `&audience=`) with the bearer `ACTIONS_ID_TOKEN_REQUEST_TOKEN` |
//! | `gitlab` | the variable `token_env` names (the job's `id_tokens` entry) |
//! | `kubernetes` | a projected token file: `token_file`, default `/var/run/secrets/tokens/keyzero` |
//! | `env:VAR` | the variable `VAR` |
//! | `file:PATH` | the file (relative to the config file) |
//! | `token` | the `token` option (refused in the committed `.keyzero.toml`) |
//!
//! Without `token_source`: the `token` option, else `token_env`, else `token_file`, else
//! `KEYZERO_TOKEN`. The token is read at each batch (files re-read; a `github-actions` token is
//! requested once per run and reused for at most a minute).
//!
//! **Requests.** One `POST /v1/resolve` with `refs` per batch of at most [`kz_wire::MAX_REFS`]
//! (the engine splits larger runs), `Authorization: Bearer <token>`, and one `X-Request-Id` for
//! the whole run. Each ref's result maps back to every secret that named it; a denied ref fails
//! with the server's policy and reason. Redirects are never followed (the bearer would go
//! along).
//!
//! Tokens never appear in messages or `Debug` output: every token sent is reported by
//! [`Provider::credentials`], so the `Redacting` wrapper removes it from any error text.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use kz_wire::{ErrorBody, ErrorCode, RefResult, ResolveRequest, ResolveResponse, WireValue};
use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::http::{build_client, error_chain, is_loopback};
use crate::{BuildContext, GetEnv};

/// The default projected service-account token of `token_source = "kubernetes"`.
pub const K8S_TOKEN_FILE: &str = "/var/run/secrets/tokens/keyzero";
/// The variable read when no token source is configured.
pub const DEFAULT_TOKEN_ENV: &str = "KEYZERO_TOKEN";
/// GitHub's OIDC token endpoint (set by the runner when the job has `id-token: write`).
const GH_URL_ENV: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The bearer for [`GH_URL_ENV`].
const GH_BEARER_ENV: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";
/// Upper bound of the GitHub token request (the instance `timeout` may be shorter).
const GH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a requested GitHub token is reused within one run.
const GH_REUSE: Duration = Duration::from_secs(60);
/// The largest answer read (100 values with room to spare).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// The largest token file read.
const MAX_TOKEN_FILE: u64 = 64 * 1024;
/// Longest piece of server text quoted in an error.
const MAX_QUOTED: usize = 300;

/// Where the workload identity token comes from.
#[derive(Debug)]
enum TokenSource {
    /// GitHub Actions' OIDC endpoint.
    GithubActions,
    /// A GitLab `id_tokens` variable.
    Gitlab(String),
    /// A projected Kubernetes token file.
    Kubernetes(PathBuf),
    /// A variable of kz's environment.
    Env(String),
    /// A file.
    File(PathBuf),
    /// The `token` option (never printed: `Zeroizing<String>`'s Debug is not used, see below).
    Static(StaticToken),
}

/// The `token` option's value, with a redacted `Debug`.
struct StaticToken(Zeroizing<String>);

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl TokenSource {
    /// Names the source and where it reads from (never the token).
    fn describe(&self) -> String {
        match self {
            TokenSource::GithubActions => {
                format!("github-actions (requested from ${GH_URL_ENV})")
            }
            TokenSource::Gitlab(var) => format!("gitlab (${var})"),
            TokenSource::Kubernetes(p) => format!("kubernetes ({})", p.display()),
            TokenSource::Env(var) => format!("${var}"),
            TokenSource::File(p) => p.display().to_string(),
            TokenSource::Static(_) => "the `token` option".into(),
        }
    }

    /// How to fix a missing or refused token from this source.
    fn fix(&self) -> String {
        match self {
            TokenSource::GithubActions => format!(
                "give the job `permissions: id-token: write` (GitHub sets {GH_URL_ENV} and {GH_BEARER_ENV} only then)"
            ),
            TokenSource::Gitlab(var) => format!(
                "declare it in the job: `id_tokens: {{ {var}: {{ aud: <the server's audience> }} }}`"
            ),
            TokenSource::Kubernetes(p) => format!(
                "mount a projected service-account token at {} (volume `serviceAccountToken` with the server's audience), or set `token_file`",
                p.display()
            ),
            TokenSource::Env(var) => format!("export {var} with a token the server accepts"),
            TokenSource::File(p) => {
                format!("write a token the server accepts to {}", p.display())
            }
            TokenSource::Static(_) => {
                "set `token` in .keyzero.local.toml or the global config to a token the server accepts".into()
            }
        }
    }
}

/// GitHub's token answer.
#[derive(Deserialize)]
struct GithubToken {
    value: Zeroizing<String>,
}

/// A keyzero team server.
pub struct KeyzeroProvider {
    instance: String,
    type_name: &'static str,
    /// `endpoint` as configured (no user info, query or fragment).
    endpoint: Url,
    /// `endpoint` + `/v1/resolve`.
    resolve_url: Url,
    audience: String,
    ca_cert: Option<PathBuf>,
    timeout: Duration,
    client: reqwest::Client,
    source: TokenSource,
    getenv: GetEnv,
    /// One id for every request of this run.
    request_id: String,
    /// A GitHub token already requested in this run, and when.
    github: tokio::sync::Mutex<Option<(Instant, Zeroizing<String>)>>,
    /// Every credential sent so far (identity tokens, GitHub's request bearer).
    sent: std::sync::Mutex<Vec<Zeroizing<String>>>,
}

impl fmt::Debug for KeyzeroProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyzeroProvider")
            .field("instance", &self.instance)
            .field("endpoint", &self.endpoint.as_str())
            .field("audience", &self.audience)
            .field("token_source", &self.source.describe())
            .finish_non_exhaustive()
    }
}

/// A configuration error naming the instance.
fn config_error(instance: &str, msg: impl fmt::Display, help: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Config, format!("provider `{instance}`: {msg}")).help(help)
}

/// Checks a URL that a bearer token is sent to: `https://`, or `http://` to a loopback host;
/// no user info, query or fragment. `what` names the option or variable.
fn check_url(instance: &str, what: &str, text: &str) -> Result<Url, ProviderError> {
    let bad = |why: &str| {
        config_error(
            instance,
            format!("{what} is not usable: {why}"),
            "write the server's base URL, e.g. endpoint = \"https://keyzero.example.com\" (http:// only for 127.0.0.1, ::1 or localhost)",
        )
    };
    let url = Url::parse(text.trim()).map_err(|e| bad(&format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(bad(
                "plain http:// is accepted only for a loopback host (the request carries a bearer token and the answer carries secret values); use https://",
            ));
        }
        other => return Err(bad(&format!("the scheme `{other}` is not http(s)"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not hold a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(bad("it must not have a fragment"));
    }
    Ok(url)
}

/// Reads the token source options.
fn parse_source(inst: &ProviderInstance, ctx: &BuildContext) -> Result<TokenSource, ProviderError> {
    let home = ctx.home.as_deref();
    let token = inst
        .opt_str("token")
        .map(|t| StaticToken(Zeroizing::new(t.trim().to_string())));
    let token_env = inst.opt_str("token_env").map(|s| s.trim().to_string());
    let token_file = inst.opt_path("token_file", home);
    let err = |msg: String, help: &str| config_error(&inst.name, msg, help);
    let Some(kind) = inst.opt_str("token_source").map(str::trim) else {
        // No source named: the one option given, else $KEYZERO_TOKEN.
        let given = [token.is_some(), token_env.is_some(), token_file.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(err(
                "more than one of `token`, `token_env` and `token_file` is set".into(),
                "keep one, or name the source with `token_source`",
            ));
        }
        return Ok(match (token, token_env, token_file) {
            (Some(t), _, _) => TokenSource::Static(t),
            (_, Some(v), _) => TokenSource::Env(v),
            (_, _, Some(p)) => TokenSource::File(p),
            _ => TokenSource::Env(DEFAULT_TOKEN_ENV.into()),
        });
    };
    kz_config::catalog::check_keyzero_token_source(kind).map_err(|m| {
        err(
            m,
            &format!("use one of: {}", kz_config::catalog::KEYZERO_TOKEN_SOURCES),
        )
    })?;
    let unused = |names: &[(&str, bool)]| -> Result<(), ProviderError> {
        match names.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(err(
                format!("`{name}` does not apply to token_source = \"{kind}\""),
                "remove it, or change `token_source`",
            )),
            None => Ok(()),
        }
    };
    let (has_token, has_env, has_file) =
        (token.is_some(), token_env.is_some(), token_file.is_some());
    let source = if kind == "github-actions" {
        unused(&[
            ("token", has_token),
            ("token_env", has_env),
            ("token_file", has_file),
        ])?;
        TokenSource::GithubActions
    } else if kind == "gitlab" {
        unused(&[("token", has_token), ("token_file", has_file)])?;
        let var = token_env.filter(|v| !v.is_empty()).ok_or_else(|| {
            err(
                "token_source = \"gitlab\" needs `token_env`, the variable of the job's `id_tokens` entry".into(),
                "e.g. token_env = \"KEYZERO_ID_TOKEN\" with `id_tokens: { KEYZERO_ID_TOKEN: { aud: keyzero } }` in .gitlab-ci.yml",
            )
        })?;
        TokenSource::Gitlab(var)
    } else if kind == "kubernetes" {
        unused(&[("token", has_token), ("token_env", has_env)])?;
        TokenSource::Kubernetes(token_file.unwrap_or_else(|| PathBuf::from(K8S_TOKEN_FILE)))
    } else if kind == "token" {
        unused(&[("token_env", has_env), ("token_file", has_file)])?;
        TokenSource::Static(token.ok_or_else(|| {
            err(
                "token_source = \"token\" needs the `token` option".into(),
                "set `token` in .keyzero.local.toml or the global config (never in the committed .keyzero.toml)",
            )
        })?)
    } else if let Some(var) = kind.strip_prefix("env:") {
        unused(&[
            ("token", has_token),
            ("token_env", has_env),
            ("token_file", has_file),
        ])?;
        TokenSource::Env(var.trim().to_string())
    } else if let Some(path) = kind.strip_prefix("file:") {
        unused(&[
            ("token", has_token),
            ("token_env", has_env),
            ("token_file", has_file),
        ])?;
        let file = inst
            .option("token_source")
            .map(|o| o.node.pos.file.clone())
            .unwrap_or_default();
        TokenSource::File(kz_config::model::resolve_path(path.trim(), &file, home))
    } else {
        return Err(err(
            format!("unknown token_source `{kind}`"),
            &format!("use one of: {}", kz_config::catalog::KEYZERO_TOKEN_SOURCES),
        ));
    };
    Ok(source)
}

impl KeyzeroProvider {
    /// Builds the provider from its options. Nothing is sent and no token is read until first
    /// use; `ca_cert` is read now (the HTTP client needs it).
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let endpoint_text = inst.opt_str("endpoint").ok_or_else(|| {
            config_error(
                &inst.name,
                "no `endpoint`: the keyzero provider needs the team server's URL",
                format!(
                    "set it: [providers.{}] endpoint = \"https://keyzero.example.com\"",
                    inst.name
                ),
            )
        })?;
        let endpoint = check_url(&inst.name, "`endpoint`", endpoint_text)?;
        if endpoint.query().is_some() {
            return Err(config_error(
                &inst.name,
                "`endpoint` must not have a query",
                "write the server's base URL, e.g. endpoint = \"https://keyzero.example.com\"",
            ));
        }
        let resolve_url = Url::parse(&format!(
            "{}{}",
            endpoint.as_str().trim_end_matches('/'),
            kz_wire::RESOLVE_PATH
        ))
        .map_err(|e| config_error(&inst.name, format!("`endpoint`: {e}"), "check `endpoint`"))?;
        let audience = inst
            .opt_str("audience")
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .unwrap_or("keyzero")
            .to_string();
        let ca_cert = inst.opt_path("ca_cert", ctx.home.as_deref());
        let timeout = inst.timeout();
        let client = build_client(
            &inst.name,
            &endpoint,
            ca_cert.as_deref(),
            timeout,
            &ctx.getenv,
            reqwest::redirect::Policy::none(),
        )?;
        let source = parse_source(inst, ctx)?;
        let request_id = {
            let bytes: [u8; 16] = rand::random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        Ok(Self {
            instance: inst.name.clone(),
            type_name: inst.ty.name,
            endpoint,
            resolve_url,
            audience,
            ca_cert,
            timeout,
            client,
            source,
            getenv: ctx.getenv.clone(),
            request_id,
            github: tokio::sync::Mutex::new(None),
            sent: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// "the keyzero server at ENDPOINT".
    fn who(&self) -> String {
        format!(
            "the keyzero server at {}",
            self.endpoint.as_str().trim_end_matches('/')
        )
    }

    /// Records a credential about to be sent, so `Redacting` removes it from any error.
    fn remember(&self, credential: &str) {
        let Ok(mut sent) = self.sent.lock() else {
            return;
        };
        if !credential.is_empty() && !sent.iter().any(|s| s.as_str() == credential) {
            sent.push(Zeroizing::new(credential.to_string()));
        }
    }

    /// The error for a token that cannot be had (`Auth`: the run cannot authenticate).
    fn no_token(&self, why: impl fmt::Display) -> ProviderError {
        ProviderError::new(
            ErrorKind::Auth,
            format!(
                "provider `{}`: no identity token from {}: {why}",
                self.instance,
                self.source.describe()
            ),
        )
        .help(self.source.fix())
    }

    /// Reads (or requests) the identity token for this batch.
    async fn token(&self) -> Result<Zeroizing<String>, ProviderError> {
        let token = match &self.source {
            TokenSource::Static(t) => t.0.clone(),
            TokenSource::Env(var) | TokenSource::Gitlab(var) => match (self.getenv)(var) {
                Some(v) => Zeroizing::new(v.trim().to_string()),
                None => return Err(self.no_token(format!("{var} is not set"))),
            },
            TokenSource::File(path) | TokenSource::Kubernetes(path) => {
                self.read_token_file(path)?
            }
            TokenSource::GithubActions => self.github_token().await?,
        };
        if token.is_empty() {
            return Err(self.no_token("it is empty"));
        }
        self.remember(&token);
        Ok(token)
    }

    fn read_token_file(&self, path: &std::path::Path) -> Result<Zeroizing<String>, ProviderError> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .map_err(|e| self.no_token(format!("cannot read {}: {e}", path.display())))?;
        let mut text = Zeroizing::new(String::new());
        file.take(MAX_TOKEN_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| self.no_token(format!("cannot read {}: {e}", path.display())))?;
        if text.len() as u64 > MAX_TOKEN_FILE {
            return Err(self.no_token(format!(
                "{} is larger than {MAX_TOKEN_FILE} bytes, so it is not a token",
                path.display()
            )));
        }
        Ok(Zeroizing::new(text.trim().to_string()))
    }

    /// A GitHub Actions OIDC token for `audience`: reused within the run for [`GH_REUSE`], else
    /// requested.
    async fn github_token(&self) -> Result<Zeroizing<String>, ProviderError> {
        let mut cached = self.github.lock().await;
        if let Some((at, token)) = cached.as_ref()
            && at.elapsed() < GH_REUSE
        {
            return Ok(token.clone());
        }
        let getvar = |name: &str| (self.getenv)(name).filter(|v| !v.trim().is_empty());
        let url_text = getvar(GH_URL_ENV).ok_or_else(|| {
            self.no_token(format!("{GH_URL_ENV} is not set (not a GitHub Actions job, or the job may not request tokens)"))
        })?;
        let bearer = Zeroizing::new(
            getvar(GH_BEARER_ENV)
                .ok_or_else(|| self.no_token(format!("{GH_BEARER_ENV} is not set")))?
                .trim()
                .to_string(),
        );
        // The URL is not shown: it is one of the runner's credential variables.
        let mut url = check_url(&self.instance, &format!("${GH_URL_ENV}"), &url_text)
            .map_err(|e| self.no_token(e.message))?;
        url.query_pairs_mut()
            .append_pair("audience", &self.audience);
        self.remember(&bearer);
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", bearer.as_str())).map_err(|_| {
                self.no_token(format!(
                    "{GH_BEARER_ENV} holds characters that cannot be sent in a header"
                ))
            })?;
        auth.set_sensitive(true);
        let answer = self
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout.min(GH_TIMEOUT))
            .send()
            .await
            .map_err(|e| {
                let mut err = self.no_token(format!(
                    "the request to ${GH_URL_ENV} failed: {}",
                    if e.is_timeout() {
                        "no answer in time".to_string()
                    } else {
                        error_chain(&e)
                    }
                ));
                err.kind = ErrorKind::Network;
                err.transient()
            })?;
        let status = answer.status();
        let body = read_limited(answer, 1024 * 1024).await.map_err(|why| {
            let mut err = self.no_token(format!("reading the answer of ${GH_URL_ENV}: {why}"));
            err.kind = ErrorKind::Network;
            err.transient()
        })?;
        if !status.is_success() {
            let err = self.no_token(format!("${GH_URL_ENV} answered HTTP {}", status.as_u16()));
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    err.transient()
                } else {
                    err
                },
            );
        }
        let parsed: GithubToken = serde_json::from_slice(&body).map_err(|_| {
            self.no_token(format!(
                "${GH_URL_ENV} answered something other than {{\"value\": TOKEN}}"
            ))
        })?;
        let token = Zeroizing::new(parsed.value.trim().to_string());
        *cached = Some((Instant::now(), token.clone()));
        Ok(token)
    }

    /// Sends one batch; every item gets a result.
    async fn resolve_batch(&self, items: &[Item]) -> Vec<Result<Resolved, ProviderError>> {
        match self.exchange(items).await {
            Ok(answer) => items.iter().map(|i| self.result_for(i, &answer)).collect(),
            Err(e) => items.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// The request for a batch and the parsed answer; an error applies to every item.
    async fn exchange(&self, items: &[Item]) -> Result<ResolveResponse, ProviderError> {
        let mut refs: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            if item.reference.is_empty() {
                return Err(ProviderError::new(
                    ErrorKind::BadReference,
                    "an empty ref cannot be asked of a keyzero server",
                ));
            }
            if !refs.contains(&item.reference) {
                refs.push(item.reference.clone());
            }
        }
        let body = serde_json::to_vec(&ResolveRequest::for_refs(refs)).map_err(|e| {
            ProviderError::new(
                ErrorKind::Backend,
                format!("cannot write the resolve request: {e}"),
            )
        })?;
        let token = self.token().await?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
            .map_err(|_| self.no_token("it holds characters that cannot be sent in a header"))?;
        auth.set_sensitive(true);
        let reply = self
            .client
            .post(self.resolve_url.clone())
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .header(kz_wire::REQUEST_ID_HEADER, self.request_id.as_str())
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = reply.status();
        let body = read_limited(reply, MAX_ANSWER)
            .await
            .map_err(|why| match why {
                BodyError::Transport(e) => self.transport_error(&e),
                too_large @ BodyError::TooLarge(_) => {
                    ProviderError::new(ErrorKind::Backend, format!("{}: {too_large}", self.who()))
                        .help("check that `endpoint` points at a keyzero server")
                }
            })?;
        if status != StatusCode::OK {
            return Err(self.status_error(status, &body));
        }
        ResolveResponse::from_json(&body).map_err(|e| {
            ProviderError::new(ErrorKind::Backend, format!("{}: {e}", self.who()))
                .help("check that `endpoint` points at a keyzero server (`kz server start`) of a compatible version")
        })
    }

    /// Maps a transport failure (never holds the token: the header is marked sensitive).
    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        crate::http::transport_error(
            e,
            &self.who(),
            self.timeout,
            self.ca_cert.as_deref(),
            "`endpoint`",
        )
    }

    /// The error for an answer other than `200`: the server's code and message when it sent
    /// its error body.
    fn status_error(&self, status: StatusCode, body: &[u8]) -> ProviderError {
        let code = status.as_u16();
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let said = match &parsed {
            Some(b) => format!(
                "{} ({})",
                quote(&b.message, &self.credentials()),
                error_code_name(b.error)
            ),
            None => "(the answer is not a keyzero error body)".to_string(),
        };
        let message = format!("{} answered HTTP {code}: {said}", self.who());
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::new(
                ErrorKind::Auth,
                format!("{}: the server refused the token: {said}", self.who()),
            )
            .help(format!(
                "the token from {} is missing, expired, for another audience or from an issuer the server's bundle does not trust; {}",
                self.source.describe(),
                self.source.fix()
            )),
            StatusCode::BAD_REQUEST => ProviderError::new(ErrorKind::BadReference, message)
                .help("check the refs against the resolvers of the server's bundle"),
            StatusCode::TOO_MANY_REQUESTS => ProviderError::new(ErrorKind::Network, message)
                .help("the server limits requests per identity; try again later")
                .transient(),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                ProviderError::new(ErrorKind::Config, message).help(
                    "check that `endpoint` is the base URL of a keyzero server (`kz server start`)",
                )
            }
            s if s.is_server_error() => ProviderError::new(ErrorKind::Network, message)
                .help("the server is not ready or failed (`/readyz` says which); try again later")
                .transient(),
            s if s.is_redirection() => ProviderError::new(ErrorKind::Config, message).help(
                "the server redirected, which kz never follows with a token: set `endpoint` to the final URL",
            ),
            _ => ProviderError::new(ErrorKind::Backend, message),
        }
    }

    /// One item's result from the answer.
    fn result_for(&self, item: &Item, answer: &ResolveResponse) -> Result<Resolved, ProviderError> {
        let r = &item.reference;
        let Some(result) = answer.results.get(r) else {
            return Err(ProviderError::new(
                ErrorKind::Backend,
                format!("{}: the answer has no result for `{r}`", self.who()),
            )
            .help("the server answered for other refs than it was asked; check its version"));
        };
        if !result.allowed && result.error.as_deref() == Some(kz_wire::NO_RESOLVER) {
            return Err(ProviderError::not_found(format!(
                "{}: `{r}`: {}",
                self.who(),
                kz_wire::NO_RESOLVER
            ))
            .help("check the ref against the resolvers of the server's bundle"));
        }
        if !result.allowed {
            return Err(denied(r, result));
        }
        if let Some(e) = &result.error {
            let said = quote(e, &self.credentials());
            let lower = said.to_lowercase();
            let not_found = lower.contains("not found")
                || lower.contains("no resolver")
                || lower.contains("does not exist");
            let message = format!("{}: `{r}`: {said}", self.who());
            return Err(if not_found {
                ProviderError::not_found(message)
                    .help("check the ref against the resolvers of the server's bundle")
            } else {
                ProviderError::new(ErrorKind::Backend, message)
                    .help("the server's backend failed for this ref; its audit log has the details")
            });
        }
        match (&result.value, &result.token) {
            (Some(WireValue::Single(v)), _) => Ok(Resolved::Single(v.duplicate())),
            (Some(WireValue::Multi(m)), _) => Ok(Resolved::Multi(
                m.iter().map(|(k, v)| (k.clone(), v.duplicate())).collect(),
            )),
            // `short_lived`: the token is what the command uses (at the credential proxy).
            (None, Some(t)) => Ok(Resolved::Single(t.duplicate())),
            (None, None) => Err(ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "{}: `{r}` was allowed but the answer holds no value",
                    self.who()
                ),
            )
            .help("the server may have answered a `/v1/decide` request; check `endpoint`")),
        }
    }

    /// `GET /healthz` with the token read (for `kz doctor`).
    async fn check_server(&self) -> Result<(), ProviderError> {
        self.token().await?;
        let url = Url::parse(&format!(
            "{}{}",
            self.endpoint.as_str().trim_end_matches('/'),
            kz_wire::HEALTH_PATH
        ))
        .map_err(|e| {
            config_error(
                &self.instance,
                format!("`endpoint`: {e}"),
                "check `endpoint`",
            )
        })?;
        let reply = self
            .client
            .get(url)
            .header(kz_wire::REQUEST_ID_HEADER, self.request_id.as_str())
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = reply.status();
        let body = read_limited(reply, 64 * 1024).await.map_err(|why| {
            ProviderError::new(ErrorKind::Network, format!("{}: {why}", self.who()))
        })?;
        if status != StatusCode::OK {
            return Err(self.status_error(status, &body));
        }
        serde_json::from_slice::<kz_wire::Health>(&body)
            .map(|_| ())
            .map_err(|_| {
                ProviderError::new(
                    ErrorKind::Backend,
                    format!("{}: `/healthz` is not a keyzero health answer", self.who()),
                )
                .help("check that `endpoint` points at a keyzero server")
            })
    }
}

/// The error of a denied ref: the server's policy and reason.
fn denied(r: &str, result: &RefResult) -> ProviderError {
    let policy = result.policy.as_deref().unwrap_or("(none named)");
    let message = match result.reason.as_deref().filter(|s| !s.is_empty()) {
        Some(reason) => format!("`{r}` denied by policy `{policy}`: {}", cut(reason)),
        None => format!("`{r}` denied by policy `{policy}`"),
    };
    ProviderError::new(ErrorKind::Auth, message).help(format!(
        "the server's bundle does not allow this identity to read `{r}`; ask its owners to change policy `{policy}`, or test it with `kz policy eval`"
    ))
}

/// The wire name of an error code.
fn error_code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{code:?}"))
}

/// Server text for an error: credentials removed first, then cut short.
fn quote(text: &str, credentials: &[SecretValue]) -> String {
    cut(&kz_resolve::redact_text(text, credentials))
}

/// At most [`MAX_QUOTED`] characters, control characters replaced.
fn cut(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTED)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_QUOTED {
        out.push('…');
    }
    out
}

/// Why an answer's body could not be read.
enum BodyError {
    /// Larger than the limit.
    TooLarge(usize),
    /// The connection failed or timed out.
    Transport(reqwest::Error),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge(limit) => write!(f, "the answer is larger than {limit} bytes"),
            BodyError::Transport(e) => f.write_str(&error_chain(e)),
        }
    }
}

/// Reads an answer's body into a zeroizing buffer, at most `limit` bytes. When the buffer must
/// grow, the old one is zeroized (no copy of a value is left behind).
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    let hint = resp
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(8192);
    if hint > limit {
        return Err(BodyError::TooLarge(limit));
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(hint));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        let need = buf.len().saturating_add(chunk.len());
        if need > limit {
            return Err(BodyError::TooLarge(limit));
        }
        if need > buf.capacity() {
            let mut bigger = Zeroizing::new(Vec::with_capacity(need.max(buf.capacity() * 2)));
            bigger.extend_from_slice(&buf);
            buf = bigger;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

impl Provider for KeyzeroProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(self.resolve_batch(items))
    }

    fn max_batch(&self) -> usize {
        kz_wire::MAX_REFS
    }

    /// The token file of `file:`/`kubernetes` sources.
    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        match &self.source {
            TokenSource::File(p) | TokenSource::Kubernetes(p) => vec![p.clone()],
            _ => Vec::new(),
        }
    }

    fn credentials(&self) -> Vec<SecretValue> {
        let mut out: Vec<SecretValue> = self
            .sent
            .lock()
            .map(|sent| sent.iter().map(|s| SecretValue::from_str_copy(s)).collect())
            .unwrap_or_default();
        if let TokenSource::Static(t) = &self.source
            && !t.0.is_empty()
        {
            out.push(SecretValue::from_str_copy(&t.0));
        }
        out
    }

    fn describe(&self) -> Description {
        let mut details = vec![
            (
                "endpoint".to_string(),
                self.endpoint.as_str().trim_end_matches('/').to_string(),
            ),
            ("audience".into(), self.audience.clone()),
            ("token".into(), self.source.describe()),
        ];
        if let Some(ca) = &self.ca_cert {
            details.push(("ca_cert".into(), ca.display().to_string()));
        }
        Description {
            instance: self.instance.clone(),
            type_name: self.type_name,
            details,
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.check_server())
    }
}

#[cfg(test)]
mod tests {
    //! Against a STAND-IN of the team server's `POST /v1/resolve` (the real `kz-server` is
    //! tested end to end by the CLI's tests): a small hyper server on 127.0.0.1 that checks the
    //! bearer and reads the body with kz-wire's own types, plus a stand-in of GitHub's OIDC
    //! token endpoint on the same server.
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use kz_config::{LoadRequest, load};

    use super::*;

    /// A value the stand-in hands out; it must never appear in an error.
    const CANARY: &str = "kz-canary-value-4e1d9a";
    /// The identity token the stand-in accepts; never in an error either.
    const TOKEN: &str = "kz-canary-token-7b3c55.jwt.sig";
    /// GitHub's request bearer (stand-in).
    const GH_BEARER: &str = "kz-canary-ghbearer-2f8e11";

    /// What the stand-in does with the next resolve requests.
    #[derive(Clone)]
    enum Mode {
        /// Answers each ref by its first path segment (see [`result_for_ref`]).
        Normal,
        /// Answers this status and body.
        Fixed(u16, String),
        /// Sleeps this long first.
        Slow(Duration),
    }

    /// One resolve request the stand-in received.
    #[derive(Clone, Debug)]
    struct Seen {
        refs: Vec<String>,
        bearer: Option<String>,
        request_id: Option<String>,
    }

    struct State {
        mode: Mutex<Mode>,
        seen: Mutex<Vec<Seen>>,
        /// The audiences GitHub's stand-in was asked for.
        gh_audiences: Mutex<Vec<String>>,
    }

    struct StandIn {
        addr: SocketAddr,
        ca_pem: String,
        state: Arc<State>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl StandIn {
        fn url(&self) -> String {
            let scheme = if self.ca_pem.is_empty() {
                "http"
            } else {
                "https"
            };
            format!("{scheme}://localhost:{}", self.addr.port())
        }

        fn set_mode(&self, m: Mode) {
            *self.state.mode.lock().unwrap() = m;
        }

        fn seen(&self) -> Vec<Seen> {
            self.state.seen.lock().unwrap().clone()
        }

        /// Starts on 127.0.0.1:0, plain HTTP, or TLS with a certificate from a private CA.
        async fn start(tls: bool) -> Self {
            let state = Arc::new(State {
                mode: Mutex::new(Mode::Normal),
                seen: Mutex::new(Vec::new()),
                gh_audiences: Mutex::new(Vec::new()),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (acceptor, ca_pem) = if tls {
                let (a, pem) = tls_acceptor();
                (Some(a), pem)
            } else {
                (None, String::new())
            };
            let st = Arc::clone(&state);
            let task = tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let st = Arc::clone(&st);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let st = Arc::clone(&st);
                            async move { Ok::<_, Infallible>(answer(req, &st).await) }
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match acceptor {
                            Some(a) => {
                                if let Ok(tls) = a.accept(tcp).await {
                                    let _ =
                                        builder.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                            }
                        }
                    });
                }
            });
            Self {
                addr,
                ca_pem,
                state,
                task,
            }
        }
    }

    fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kz test keyzero ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_cert.pem(),
        )
    }

    fn reply(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(body.into()));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    fn error_reply(code: ErrorCode, message: &str) -> Response<Full<Bytes>> {
        let body = serde_json::to_vec(&ErrorBody {
            error: code,
            message: message.into(),
        })
        .unwrap();
        reply(code.status(), body)
    }

    /// The stand-in's answer for one ref, by its first segment: `allow/…` a value holding the
    /// canary, `json/…` a JSON object, `multi/…` two variables, `deny/…` denied by `ci-only`,
    /// `fail/…` a backend error, `nores/…` no resolver, `short/…` a short-lived token, `gone/…`
    /// left out of the answer.
    fn result_for_ref(r: &str) -> Option<RefResult> {
        let allowed = |value| RefResult {
            allowed: true,
            policy: Some("ci".into()),
            mode: Some("direct".into()),
            value: Some(value),
            ..RefResult::default()
        };
        let v = |s: String| SecretValue::from_string(s);
        Some(match r.split('/').next().unwrap_or("") {
            "allow" => allowed(WireValue::Single(v(format!("{CANARY}:{r}")))),
            "json" => allowed(WireValue::Single(v(format!(
                r#"{{"user":"app","password":"{CANARY}"}}"#
            )))),
            "multi" => allowed(WireValue::Multi(vec![
                ("A_KEY".into(), v(format!("{CANARY}-a"))),
                ("B_KEY".into(), v(format!("{CANARY}-b"))),
            ])),
            "deny" => RefResult {
                allowed: false,
                policy: Some("ci-only".into()),
                reason: Some("the branch is not main".into()),
                ..RefResult::default()
            },
            "fail" => RefResult {
                allowed: true,
                policy: Some("ci".into()),
                error: Some("backend `vault` failed: connection refused".into()),
                ..RefResult::default()
            },
            "nores" => RefResult {
                allowed: false,
                policy: Some("ci".into()),
                error: Some(kz_wire::NO_RESOLVER.into()),
                ..RefResult::default()
            },
            "short" => RefResult {
                allowed: true,
                mode: Some("short_lived".into()),
                token: Some(v(format!("{CANARY}-short"))),
                ttl: Some(300),
                proxy: Some("https://proxy.example".into()),
                ..RefResult::default()
            },
            _ => return None,
        })
    }

    async fn answer(req: Request<Incoming>, st: &State) -> Response<Full<Bytes>> {
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(String::from);
        let request_id = req
            .headers()
            .get(kz_wire::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if path == "/gh-token" {
            // GitHub's stand-in: its own bearer, `audience` in the query.
            if bearer.as_deref() != Some(GH_BEARER) || !query.contains("api-version=2.0") {
                return reply(401, "{\"message\":\"bad credentials\"}");
            }
            let aud = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("audience="))
                .unwrap_or("")
                .to_string();
            st.gh_audiences.lock().unwrap().push(aud.clone());
            return reply(200, format!(r#"{{"count":1,"value":"{TOKEN}.{aud}"}}"#));
        }
        if path == kz_wire::HEALTH_PATH {
            return reply(
                200,
                r#"{"status":"ok","bundle_loaded":true,"bundle_version":"1","bundle_revision":"sha256:00"}"#,
            );
        }
        if path != kz_wire::RESOLVE_PATH || method != hyper::Method::POST {
            return error_reply(ErrorCode::NotFound, "no such endpoint");
        }
        let parsed: Result<ResolveRequest, _> = serde_json::from_slice(&body);
        let refs: Vec<String> = match parsed.as_ref().map(ResolveRequest::requested) {
            Ok(Ok(refs)) => refs.into_iter().map(String::from).collect(),
            _ => return error_reply(ErrorCode::InvalidRequest, "bad request body"),
        };
        st.seen.lock().unwrap().push(Seen {
            refs: refs.clone(),
            bearer: bearer.clone(),
            request_id,
        });
        let mode = st.mode.lock().unwrap().clone();
        match mode {
            Mode::Fixed(status, body) => return reply(status, body),
            Mode::Slow(d) => tokio::time::sleep(d).await,
            Mode::Normal => {}
        }
        let accepted = bearer
            .as_deref()
            .is_some_and(|b| b == TOKEN || b.starts_with(&format!("{TOKEN}.")));
        if !accepted {
            return error_reply(
                ErrorCode::InvalidToken,
                "the token's signature does not verify",
            );
        }
        let mut resp = ResolveResponse::default();
        for r in refs {
            if let Some(res) = result_for_ref(&r) {
                resp.results.insert(r, res);
            }
        }
        reply(200, resp.to_json().unwrap().to_vec())
    }

    // ----- building providers -----

    /// A project directory with a config and a fake environment.
    struct Project {
        dir: tempfile::TempDir,
        env: HashMap<String, String>,
    }

    impl Project {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                env: HashMap::new(),
            }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn set(&mut self, k: &str, v: &str) -> &mut Self {
            self.env.insert(k.into(), v.into());
            self
        }

        fn ctx(&self) -> BuildContext {
            let env = self.env.clone();
            BuildContext {
                home: Some(self.path().join("home")),
                config_home: self.path().join("config"),
                data_home: self.path().join("data"),
                runtime_dir: None,
                project_dir: self.path().to_path_buf(),
                getenv: Arc::new(move |k| env.get(k).cloned()),
                verbose: false,
                interactive: false,
            }
        }

        /// Loads `[providers.k]` (type keyzero) with `options`, `local` in .keyzero.local.toml,
        /// and `secrets` lines.
        fn config(&self, options: &str, local: &str, secrets: &str) -> kz_config::Config {
            std::fs::write(
                self.path().join(".keyzero.toml"),
                format!("[providers.k]\ntype = \"keyzero\"\n{options}\n\n[secrets]\n{secrets}\n"),
            )
            .unwrap();
            if !local.is_empty() {
                std::fs::write(
                    self.path().join(".keyzero.local.toml"),
                    format!("[providers.k]\n{local}\n"),
                )
                .unwrap();
            }
            let loaded = load(&LoadRequest {
                start_dir: self.path(),
                config_file: None,
                env_flag: None,
                global_file: None,
                getenv: &|_| None,
            });
            loaded
                .config
                .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics))
        }

        fn try_provider(
            &self,
            options: &str,
            local: &str,
        ) -> Result<KeyzeroProvider, ProviderError> {
            let cfg = self.config(options, local, "");
            KeyzeroProvider::new(cfg.provider("k").unwrap(), &self.ctx())
        }

        fn provider(&self, options: &str, local: &str) -> KeyzeroProvider {
            self.try_provider(options, local).unwrap()
        }

        /// The provider as kz builds it: wrapped in `Redacting`.
        fn built(&self, options: &str, local: &str) -> Arc<dyn Provider> {
            let cfg = self.config(options, local, "");
            crate::build(cfg.provider("k").unwrap(), &self.ctx()).unwrap()
        }
    }

    fn item(r: &str) -> Item {
        Item {
            name: format!("V_{}", r.replace(['/', '-'], "_").to_uppercase()),
            reference: r.into(),
            field: None,
            params: Vec::new(),
        }
    }

    fn single(r: &Result<Resolved, ProviderError>) -> String {
        match r {
            Ok(Resolved::Single(v)) => v.expose_str().unwrap().to_string(),
            other => panic!("not a single value: {other:?}"),
        }
    }

    /// No error's message or help holds a value or a credential.
    fn assert_clean(e: &ProviderError) {
        let text = format!("{} {}", e.message, e.help.as_deref().unwrap_or(""));
        for c in [CANARY, TOKEN, GH_BEARER] {
            assert!(!text.contains(c), "`{c}` leaked into: {text}");
        }
    }

    fn err(r: &Result<Resolved, ProviderError>) -> &ProviderError {
        let e = r
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        assert_clean(e);
        e
    }

    fn endpoint(s: &StandIn) -> String {
        format!("endpoint = \"{}\"", s.url())
    }

    // ----- tests -----

    #[tokio::test]
    async fn keyzero_maps_every_result_of_one_request_back_to_its_items() {
        let s = StandIn::start(false).await;
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        let k = p.built(&endpoint(&s), "");
        assert_eq!(k.max_batch(), kz_wire::MAX_REFS);
        let items: Vec<Item> = [
            "allow/a", "allow/a", "deny/b", "fail/c", "gone/d", "nores/e", "multi/f", "short/g",
        ]
        .into_iter()
        .map(item)
        .collect();
        let out = k.resolve(&items).await;
        assert_eq!(out.len(), items.len());
        assert_eq!(single(&out[0]), format!("{CANARY}:allow/a"));
        assert_eq!(single(&out[1]), format!("{CANARY}:allow/a"));
        let denied = err(&out[2]);
        assert_eq!(denied.kind, ErrorKind::Auth);
        assert!(
            denied
                .message
                .contains("denied by policy `ci-only`: the branch is not main")
                && denied.message.contains("deny/b"),
            "{}",
            denied.message
        );
        assert!(denied.help.is_some());
        let failed = err(&out[3]);
        assert_eq!(failed.kind, ErrorKind::Backend);
        assert!(
            failed.message.contains("connection refused"),
            "{}",
            failed.message
        );
        let gone = err(&out[4]);
        assert_eq!(gone.kind, ErrorKind::Backend);
        assert!(
            gone.message.contains("no result for `gone/d`"),
            "{}",
            gone.message
        );
        assert_eq!(err(&out[5]).kind, ErrorKind::NotFound);
        match &out[6] {
            Ok(Resolved::Multi(m)) => {
                let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, ["A_KEY", "B_KEY"]);
                assert_eq!(m[0].1.expose_str(), Some(format!("{CANARY}-a").as_str()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(single(&out[7]), format!("{CANARY}-short"));
        // One request, refs deduplicated, the bearer and a request id.
        let seen = s.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            seen[0].refs,
            [
                "allow/a", "deny/b", "fail/c", "gone/d", "nores/e", "multi/f", "short/g"
            ]
        );
        assert_eq!(seen[0].bearer.as_deref(), Some(TOKEN));
        let id = seen[0].request_id.clone().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        // The same id for the whole run; another run (another provider) gets its own.
        k.resolve(&[item("allow/x")]).await;
        assert_eq!(s.seen()[1].request_id.as_deref(), Some(id.as_str()));
        p.built(&endpoint(&s), "").resolve(&[item("allow/x")]).await;
        assert_ne!(s.seen()[2].request_id.as_deref(), Some(id.as_str()));
    }

    #[tokio::test]
    async fn keyzero_a_loopback_endpoint_is_never_reached_through_a_proxy() {
        let s = StandIn::start(false).await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY"] {
            p.set(var, &format!("http://127.0.0.1:{dead}"));
        }
        let k = p.built(&endpoint(&s), "");
        assert_eq!(
            single(&k.resolve(&[item("allow/a")]).await[0]),
            format!("{CANARY}:allow/a")
        );
    }

    #[tokio::test]
    async fn keyzero_field_is_left_to_the_engine() {
        let s = StandIn::start(false).await;
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        let k = p.provider(&endpoint(&s), "");
        assert!(!k.handles_field());
        let out = k.resolve(&[item("json/db")]).await;
        let Ok(Resolved::Single(v)) = &out[0] else {
            panic!()
        };
        assert_eq!(
            kz_resolve::json_field(v, "password").unwrap().expose_str(),
            Some(CANARY)
        );
    }

    #[tokio::test]
    async fn keyzero_error_answers_name_code_and_message_and_never_the_token() {
        let s = StandIn::start(false).await;
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", "a-token-the-stand-in-refuses");
        let k = p.built(&endpoint(&s), "");
        let out = k.resolve(&[item("allow/a")]).await;
        let e = err(&out[0]);
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(!e.transient);
        assert!(
            e.message.contains("the server refused the token")
                && e.message.contains("signature does not verify")
                && e.message.contains("invalid_token"),
            "{}",
            e.message
        );
        assert!(
            e.help.as_deref().unwrap().contains("KEYZERO_TOKEN"),
            "{e:?}"
        );

        // A server that echoes the token in its message: redacted.
        p.set("KEYZERO_TOKEN", TOKEN);
        let k = p.built(&endpoint(&s), "");
        let echo = serde_json::to_string(&ErrorBody {
            error: ErrorCode::InvalidToken,
            message: format!("token {TOKEN} expired"),
        })
        .unwrap();
        let cases: Vec<(u16, String, ErrorKind, bool)> = vec![
            (401, echo, ErrorKind::Auth, false),
            (
                429,
                serde_json::to_string(&ErrorBody {
                    error: ErrorCode::RateLimited,
                    message: "slow down".into(),
                })
                .unwrap(),
                ErrorKind::Network,
                true,
            ),
            (
                503,
                serde_json::to_string(&ErrorBody {
                    error: ErrorCode::NotReady,
                    message: "no bundle loaded".into(),
                })
                .unwrap(),
                ErrorKind::Network,
                true,
            ),
            (
                400,
                serde_json::to_string(&ErrorBody {
                    error: ErrorCode::InvalidRequest,
                    message: "invalid ref `allow/a`".into(),
                })
                .unwrap(),
                ErrorKind::BadReference,
                false,
            ),
            (
                502,
                format!("<html>{TOKEN} {CANARY}</html>"),
                ErrorKind::Network,
                true,
            ),
            (
                200,
                format!("{{\"results\": \"{CANARY}\"}}"),
                ErrorKind::Backend,
                false,
            ),
            (200, "not json".into(), ErrorKind::Backend, false),
            (302, String::new(), ErrorKind::Config, false),
        ];
        for (status, body, kind, transient) in cases {
            s.set_mode(Mode::Fixed(status, body.clone()));
            let out = k.resolve(&[item("allow/a"), item("allow/b")]).await;
            assert_eq!(out.len(), 2);
            for r in &out {
                let e = err(r);
                assert_eq!(
                    (e.kind, e.transient),
                    (kind, transient),
                    "{status} {body}: {e:?}"
                );
                if status != 200 {
                    assert!(
                        e.message.contains(&status.to_string()) || status == 401,
                        "{e:?}"
                    );
                }
            }
            if status == 401 {
                assert!(out[0].as_ref().err().unwrap().message.contains("expired"));
            }
            if status == 503 {
                let e = out[0].as_ref().err().unwrap();
                assert!(
                    e.message.contains("not_ready") && e.message.contains("no bundle"),
                    "{e:?}"
                );
            }
            if body.starts_with("<html>") {
                assert!(
                    out[0]
                        .as_ref()
                        .err()
                        .unwrap()
                        .message
                        .contains("not a keyzero error body")
                );
            }
        }
    }

    #[tokio::test]
    async fn keyzero_server_down_is_a_transient_network_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        let k = p.built(&format!("endpoint = \"http://127.0.0.1:{port}\""), "");
        let out = k.resolve(&[item("allow/a")]).await;
        let e = err(&out[0]);
        assert_eq!(e.kind, ErrorKind::Network);
        assert!(e.transient);
        assert!(e.message.contains(&format!("127.0.0.1:{port}")), "{e:?}");
    }

    #[tokio::test]
    async fn keyzero_a_server_that_does_not_answer_times_out() {
        let s = StandIn::start(false).await;
        s.set_mode(Mode::Slow(Duration::from_secs(30)));
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        let k = p.built(&format!("{}\ntimeout = \"300ms\"", endpoint(&s)), "");
        let out = k.resolve(&[item("allow/a")]).await;
        assert_eq!(err(&out[0]).kind, ErrorKind::Timeout);
    }

    /// A raw loopback server that answers every connection with `head` and then holds the
    /// connection open without sending more.
    fn raw_server(head: String) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 65536];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(head.as_bytes());
                open.push(conn);
            }
        });
        port
    }

    #[tokio::test]
    async fn keyzero_stalled_and_oversized_answers_fail_cleanly() {
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        // The head, part of the body, then nothing: the timeout applies to the body too.
        let port = raw_server(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"results\":".into(),
        );
        let k = p.built(
            &format!("endpoint = \"http://127.0.0.1:{port}\"\ntimeout = \"300ms\""),
            "",
        );
        assert_eq!(
            err(&k.resolve(&[item("allow/a")]).await[0]).kind,
            ErrorKind::Timeout
        );
        // An answer announced larger than any resolve answer: refused before it is read.
        let port = raw_server(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_ANSWER + 1
        ));
        let k = p.built(&format!("endpoint = \"http://127.0.0.1:{port}\""), "");
        let e = err(&k.resolve(&[item("allow/a")]).await[0]).clone();
        assert_eq!(e.kind, ErrorKind::Backend);
        assert!(e.message.contains("larger than"), "{e:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keyzero_runs_of_more_than_100_refs_go_in_batches_of_100() {
        let s = StandIn::start(false).await;
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        let secrets: String = (0..250)
            .map(|i| format!("S{i} = {{ provider = \"k\", ref = \"allow/{i}\" }}\n"))
            .collect();
        let cfg = p.config(&endpoint(&s), "", &secrets);
        let inst = cfg.provider("k").unwrap();
        let (instances, failed) = crate::build_instances([inst], &p.ctx());
        assert!(failed.is_empty());
        let requests: Vec<kz_resolve::Request> = cfg
            .secrets
            .iter()
            .map(kz_resolve::Request::from_entry)
            .collect();
        let out = kz_resolve::resolve_all(&requests, &instances).await;
        assert_eq!(out.len(), 250);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(single(&o.result), format!("{CANARY}:allow/{i}"));
        }
        let mut sizes: Vec<usize> = s.seen().iter().map(|x| x.refs.len()).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [50, 100, 100]);
    }

    #[tokio::test]
    async fn keyzero_token_sources() {
        let s = StandIn::start(false).await;
        let base = endpoint(&s);
        let last_bearer = || s.seen().last().unwrap().bearer.clone().unwrap();

        // env:VAR (also an ambient credential of the instance, removed from every error)
        let mut p = Project::new();
        p.set("MY_KZ_TOKEN", TOKEN);
        let opts = format!("{base}\ntoken_source = \"env:MY_KZ_TOKEN\"");
        let cfg = p.config(&opts, "", "");
        let ambient = crate::ambient_credentials(cfg.provider("k").unwrap(), &p.ctx());
        assert!(ambient.iter().any(|c| c.expose_str() == Some(TOKEN)));
        let k = p.provider(&opts, "");
        assert!(k.resolve(&[item("allow/a")]).await[0].is_ok());
        assert_eq!(last_bearer(), TOKEN);

        // gitlab: the id_tokens variable named by token_env.
        let mut p = Project::new();
        p.set("KZ_ID_TOKEN", TOKEN);
        let k = p.provider(
            &format!("{base}\ntoken_source = \"gitlab\"\ntoken_env = \"KZ_ID_TOKEN\""),
            "",
        );
        assert!(k.resolve(&[item("allow/a")]).await[0].is_ok());
        let p = Project::new();
        let k = p.provider(
            &format!("{base}\ntoken_source = \"gitlab\"\ntoken_env = \"KZ_ID_TOKEN\""),
            "",
        );
        let e = k.resolve(&[item("allow/a")]).await.remove(0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.message.contains("KZ_ID_TOKEN") && e.help.unwrap().contains("id_tokens"));

        // file:PATH, relative to the config file, re-read at each batch.
        let p = Project::new();
        std::fs::write(p.path().join("tok"), format!("{TOKEN}\n")).unwrap();
        let k = p.provider(&format!("{base}\ntoken_source = \"file:tok\""), "");
        assert_eq!(k.sources(&[]), [p.path().join("tok")]);
        assert!(k.resolve(&[item("allow/a")]).await[0].is_ok());
        assert_eq!(last_bearer(), TOKEN);
        std::fs::write(p.path().join("tok"), "rotated").unwrap();
        let e = k.resolve(&[item("allow/a")]).await.remove(0).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        assert_eq!(last_bearer(), "rotated");
        std::fs::remove_file(p.path().join("tok")).unwrap();
        let e = k.resolve(&[item("allow/a")]).await.remove(0).unwrap_err();
        assert!(
            e.message.contains("tok") && e.kind == ErrorKind::Auth,
            "{e:?}"
        );

        // kubernetes: a projected token file (token_file overrides the default path).
        let p = Project::new();
        std::fs::write(p.path().join("sa"), TOKEN).unwrap();
        let k = p.provider(
            &format!("{base}\ntoken_source = \"kubernetes\"\ntoken_file = \"sa\""),
            "",
        );
        assert!(k.resolve(&[item("allow/a")]).await[0].is_ok());
        let k = p.provider(&format!("{base}\ntoken_source = \"kubernetes\""), "");
        assert_eq!(k.sources(&[]), [PathBuf::from(K8S_TOKEN_FILE)]);

        // A static token, from the local file (refused in the committed one).
        let p = Project::new();
        let k = p.built(&base, &format!("token = \"{TOKEN}\""));
        assert!(k.resolve(&[item("allow/a")]).await[0].is_ok());
        assert_eq!(last_bearer(), TOKEN);
        assert!(
            k.credentials()
                .iter()
                .any(|c| c.expose_str() == Some(TOKEN))
        );

        // Nothing configured and KEYZERO_TOKEN unset.
        let p = Project::new();
        let e = p
            .provider(&base, "")
            .resolve(&[item("allow/a")])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.message.contains("KEYZERO_TOKEN"), "{e:?}");
    }

    #[tokio::test]
    async fn keyzero_github_actions_tokens_are_requested_for_the_audience() {
        let s = StandIn::start(false).await;
        let mut p = Project::new();
        p.set(
            GH_URL_ENV,
            &format!(
                "http://127.0.0.1:{}/gh-token?api-version=2.0",
                s.addr.port()
            ),
        );
        p.set(GH_BEARER_ENV, GH_BEARER);
        let opts = format!(
            "{}\ntoken_source = \"github-actions\"\naudience = \"kz-prod\"",
            endpoint(&s)
        );
        let k = p.built(&opts, "");
        assert!(k.resolve(&[item("allow/a")]).await[0].is_ok());
        assert!(k.resolve(&[item("allow/b")]).await[0].is_ok());
        // Requested once for the run, for the audience; sent as the bearer.
        assert_eq!(*s.state.gh_audiences.lock().unwrap(), ["kz-prod"]);
        assert_eq!(
            s.seen().last().unwrap().bearer.as_deref(),
            Some(format!("{TOKEN}.kz-prod").as_str())
        );
        assert!(
            k.credentials()
                .iter()
                .any(|c| c.expose_str() == Some(GH_BEARER))
        );

        // A wrong bearer: refused, and the error names the variable, never the bearer.
        p.set(GH_BEARER_ENV, &format!("{GH_BEARER}-wrong"));
        let k = p.built(&opts, "");
        let e = k.resolve(&[item("allow/a")]).await.remove(0).unwrap_err();
        assert_clean(&e);
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(
            e.message.contains(GH_URL_ENV)
                && e.message.contains("401")
                && !e.message.contains("-wrong"),
            "{e:?}"
        );

        // Not in a job that may request tokens.
        let p = Project::new();
        let e = p
            .provider(&opts, "")
            .resolve(&[item("allow/a")])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.message.contains(GH_URL_ENV) && e.help.unwrap().contains("id-token: write"));

        // GitHub's URL must be https (or loopback http) too.
        let mut p = Project::new();
        p.set(GH_URL_ENV, "http://token.example.com/x?api-version=2.0");
        p.set(GH_BEARER_ENV, GH_BEARER);
        let e = p
            .built(&opts, "")
            .resolve(&[item("allow/a")])
            .await
            .remove(0)
            .unwrap_err();
        assert_clean(&e);
        assert!(e.message.contains("loopback"), "{e:?}");
        assert!(!e.message.contains("token.example.com"), "{e:?}");
    }

    #[tokio::test]
    async fn keyzero_plain_http_is_refused_except_to_loopback() {
        let p = Project::new();
        for ok in [
            "http://127.0.0.1:1",
            "http://127.8.9.10:1",
            "http://[::1]:1",
            "http://localhost:1/prefix/",
            "https://keyzero.example.com",
        ] {
            let k = p.provider(&format!("endpoint = \"{ok}\""), "");
            assert!(k.resolve_url.as_str().ends_with("/v1/resolve"), "{ok}");
        }
        for bad in [
            "http://keyzero.example.com",
            "http://10.0.0.1:8080",
            "http://127.0.0.1.nip.io",
            "http://[::ffff:127.0.0.1]:1",
            "ftp://127.0.0.1",
            "https://user:pw@keyzero.example.com",
            "https://keyzero.example.com/?x=1",
        ] {
            let e = p
                .try_provider(&format!("endpoint = \"{bad}\""), "")
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config, "{bad}");
            assert!(e.message.contains("`endpoint`"), "{bad}: {e:?}");
            assert!(!e.message.contains("pw@"), "{e:?}");
        }
        let e = p.try_provider("", "").unwrap_err();
        assert!(
            e.message.contains("no `endpoint`") && e.help.is_some(),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn keyzero_https_with_a_private_ca_needs_ca_cert() {
        let s = StandIn::start(true).await;
        let mut p = Project::new();
        p.set("KEYZERO_TOKEN", TOKEN);
        std::fs::write(p.path().join("ca.pem"), &s.ca_pem).unwrap();
        let k = p.built(&format!("{}\nca_cert = \"ca.pem\"", endpoint(&s)), "");
        assert_eq!(
            single(&k.resolve(&[item("allow/a")]).await[0]),
            format!("{CANARY}:allow/a")
        );
        let k = p.built(&endpoint(&s), "");
        let e = k.resolve(&[item("allow/a")]).await.remove(0).unwrap_err();
        assert_clean(&e);
        assert_eq!(e.kind, ErrorKind::Network);
        assert!(e.help.unwrap().contains("ca_cert"), "{}", e.message);
        assert_eq!(
            s.seen().len(),
            1,
            "nothing is sent over an untrusted connection"
        );
    }

    #[test]
    fn keyzero_token_source_options_are_checked() {
        let p = Project::new();
        let base = "endpoint = \"https://kz.example.com\"";
        for (opts, local, says) in [
            ("token_source = \"gitlab\"", "", "needs `token_env`"),
            ("token_source = \"token\"", "", "needs the `token` option"),
            (
                "token_source = \"github-actions\"\ntoken_env = \"X\"",
                "",
                "`token_env` does not apply",
            ),
            ("token_env = \"X\"\ntoken_file = \"f\"", "", "more than one"),
            (
                "token_source = \"kubernetes\"",
                "token = \"t\"",
                "`token` does not apply",
            ),
        ] {
            let e = p
                .try_provider(&format!("{base}\n{opts}"), local)
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config, "{opts}");
            assert!(e.message.contains(says), "{opts}: {e:?}");
            assert!(
                e.message.contains("provider `k`") && e.help.is_some(),
                "{e:?}"
            );
        }
        // Debug never shows a static token.
        let k = p.provider(base, &format!("token = \"{TOKEN}\""));
        assert!(!format!("{k:?}").contains(TOKEN));
        assert!(!format!("{:?}", k.describe()).contains(TOKEN));
    }

    #[test]
    fn keyzero_token_source_forms_are_checked_when_the_config_loads() {
        let p = Project::new();
        for (value, says) in [
            ("vault", "unknown token_source `vault`"),
            ("env:", "does not name a variable"),
            ("env:A=B", "does not name a variable"),
            ("file: ", "does not name a file"),
        ] {
            std::fs::write(
                p.path().join(".keyzero.toml"),
                format!("[providers.k]\ntype = \"keyzero\"\nendpoint = \"https://kz.example.com\"\ntoken_source = \"{value}\"\n"),
            )
            .unwrap();
            let loaded = load(&LoadRequest {
                start_dir: p.path(),
                config_file: None,
                env_flag: None,
                global_file: None,
                getenv: &|_| None,
            });
            assert!(loaded.config.is_none(), "{value}");
            let d = loaded
                .diagnostics
                .iter()
                .find(|d| d.message.contains(says))
                .unwrap_or_else(|| panic!("{value}: {:?}", loaded.diagnostics));
            assert_eq!(d.line, Some(4), "{d:?}");
            assert!(
                d.help.as_deref().unwrap_or("").contains("github-actions"),
                "{d:?}"
            );
        }
    }

    #[test]
    fn keyzero_literal_tokens_are_refused_in_the_committed_file() {
        let p = Project::new();
        std::fs::write(
            p.path().join(".keyzero.toml"),
            format!("[providers.k]\ntype = \"kz\"\nendpoint = \"https://kz.example.com\"\ntoken = \"{TOKEN}\"\n"),
        )
        .unwrap();
        let loaded = load(&LoadRequest {
            start_dir: p.path(),
            config_file: None,
            env_flag: None,
            global_file: None,
            getenv: &|_| None,
        });
        assert!(loaded.config.is_none());
        assert!(
            loaded
                .diagnostics
                .iter()
                .any(|d| d.code == "config::credential_in_project_file"),
            "{:?}",
            loaded.diagnostics
        );
        // The options that choose the server or the token need trust.
        let ty = kz_config::catalog::find("keyzero").unwrap();
        for o in [
            "endpoint",
            "ca_cert",
            "token_source",
            "token_env",
            "token_file",
        ] {
            assert!(ty.option(o).unwrap().needs_trust, "{o}");
        }
        assert!(ty.option("token").unwrap().credential);
        assert!(ty.implemented);
    }

    #[tokio::test]
    async fn keyzero_check_reads_the_token_and_asks_healthz() {
        let s = StandIn::start(false).await;
        let mut p = Project::new();
        let k = p.built(&endpoint(&s), "");
        let e = k.check().await.unwrap_err();
        assert!(
            e.kind == ErrorKind::Auth && e.message.contains("KEYZERO_TOKEN"),
            "{e:?}"
        );
        p.set("KEYZERO_TOKEN", TOKEN);
        p.built(&endpoint(&s), "").check().await.unwrap();
        // Not a keyzero server: /healthz is missing.
        let k = p.built(&format!("endpoint = \"{}/not-here\"", s.url()), "");
        let e = k.check().await.unwrap_err();
        assert_clean(&e);
        assert_eq!(e.kind, ErrorKind::Config, "{e:?}");
        assert!(s.seen().is_empty(), "check never resolves a secret");
    }
}
