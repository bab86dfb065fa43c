//! The `hashicorp` provider (aliases `vault`, `hashicorp_vault`, `openbao`): HashiCorp Vault and
//! OpenBao through their HTTP API (`/v1/...`).
//!
//! **References.** `ref` is a Vault path, either the API path (`secret/data/app`) or the logical
//! path (`secret/app`), optionally followed by `#field`. The secrets engine serving a path is
//! found once per mount per process with `GET /v1/sys/internal/ui/mounts/<path>` (which answers
//! for limited tokens too) and cached:
//!
//! - KV v2: `data/` is inserted after the mount when missing; param `version` reads an older
//!   version (`?version=N`). `field` (or `#field`) picks one key; without it a single-key secret
//!   gives its value and a multi-key secret gives the JSON text of its data.
//! - KV v1: the same rules, without versions.
//! - any other engine (`database/creds/ROLE`, `cubbyhole/...`, ...): the response's `data` as JSON
//!   text, or one `field` of it.
//!
//! **Options.** `address` (else `VAULT_ADDR`, else `BAO_ADDR`, else `http://127.0.0.1:8200`),
//! `namespace` (else `VAULT_NAMESPACE`; sent as `X-Vault-Namespace`), `ca_cert` (a PEM file added
//! to the trusted roots) and `auth`. Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and
//! `NO_PROXY` of kz's environment. The instance `timeout` bounds every HTTP call.
//!
//! **Auth.** `auth = "token"` (the default) uses option `token`, `token_env` or `token_file`,
//! else `VAULT_TOKEN`, else `BAO_TOKEN`, else `~/.vault-token`. A table logs in instead:
//! `{ method = "approle", role_id, secret_id | secret_id_env | secret_id_file }`,
//! `{ method = "kubernetes", role, token_file }` (default the pod's service-account token) or
//! `{ method = "jwt", role, token_env | token_file }`; `mount` changes the auth mount (default the
//! method's name). The login happens once, lazily, and its token is shared by every call of the
//! process; it is renewed (`auth/token/renew-self`) when two thirds of its lease have passed, or
//! replaced by a new login when it cannot be renewed.
//!
//! **Writes** (`kz put`) merge one key (`field`, or `value` without one) into the secret and never
//! drop the others: on KV v2 by reading the current data and version and writing with
//! check-and-set (a missing secret is written with `cas = 0`; a conflict is retried), on KV v1 by
//! read, merge, write. **Deletes** (`kz rm --purge`) remove the latest KV v2 version (or the KV v1
//! secret), or only `field` when one is set. Other engines are read-only here.
//!
//! Tokens never appear in messages or `Debug` output; errors carry Vault's own `errors` text.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kz_config::ProviderInstance;
use kz_config::tree::{Entry, Val};
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::{BuildContext, GetEnv};

/// Where Vault listens when nothing says otherwise.
const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8200";
/// The pod's service-account token (Kubernetes auth).
const K8S_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Check-and-set attempts before a write gives up.
const CAS_ATTEMPTS: usize = 3;
/// Longest piece of Vault text quoted in an error.
const MAX_QUOTED: usize = 300;

/// A Vault / OpenBao server.
pub struct VaultProvider {
    instance: String,
    type_name: &'static str,
    /// `address` with any user info removed; `/v1/...` is appended to it.
    address: Url,
    namespace: Option<String>,
    ca_cert: Option<PathBuf>,
    timeout: Duration,
    client: reqwest::Client,
    auth: Auth,
    getenv: GetEnv,
    home: Option<PathBuf>,
    /// The token in use (read or logged in once, shared by all calls).
    session: Mutex<Option<Session>>,
    /// Mounts already looked up.
    mounts: Mutex<Vec<Mount>>,
    /// Every credential sent so far (tokens, login secrets), so a server that echoes one in an
    /// error message does not get it printed ([`Provider::credentials`]).
    sent: std::sync::Mutex<Vec<Zeroizing<String>>>,
}

impl fmt::Debug for VaultProvider {
    // The auth sources and the session are left out: they hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultProvider")
            .field("instance", &self.instance)
            .field("address", &self.address.as_str())
            .field("namespace", &self.namespace)
            .field("auth", &self.auth.method())
            .finish_non_exhaustive()
    }
}

/// Where a credential comes from (read when first needed).
enum Source {
    /// Written in the config (`token`, `secret_id`).
    Inline(Zeroizing<String>, &'static str),
    /// An environment variable of kz.
    Env(String),
    /// A file (trimmed).
    File(PathBuf),
}

impl Source {
    /// Reads the credential; `None` when the variable is unset or the file does not exist.
    fn read(&self, getenv: &GetEnv) -> Result<Option<Zeroizing<String>>, ProviderError> {
        match self {
            Source::Inline(v, _) => Ok(Some(v.clone())),
            Source::Env(name) => Ok(getenv(name)
                .map(|v| Zeroizing::new(v.trim().to_string()))
                .filter(|v| !v.is_empty())),
            Source::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    let text = Zeroizing::new(text);
                    Ok(Some(Zeroizing::new(text.trim().to_string())).filter(|v| !v.is_empty()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(ProviderError::new(
                    ErrorKind::Config,
                    format!("cannot read {}: {e}", path.display()),
                )
                .help("check the file's permissions")),
            },
        }
    }

    /// Names the source (never its value).
    fn describe(&self) -> String {
        match self {
            Source::Inline(_, option) => format!("option `{option}`"),
            Source::Env(name) => format!("${name}"),
            Source::File(path) => path.display().to_string(),
        }
    }
}

/// How kz obtains its Vault token.
enum Auth {
    /// A token as is: from the source, or (`None`) the default chain.
    Token(Option<Source>),
    /// Logs in at `auth/<mount>/login`.
    Login {
        method: &'static str,
        mount: String,
        login: Login,
    },
}

/// What a login sends.
enum Login {
    AppRole {
        role_id: String,
        secret_id: Option<Source>,
    },
    /// Kubernetes and JWT: a role and a signed token.
    Jwt { role: String, jwt: Source },
}

impl Auth {
    /// The method's name.
    fn method(&self) -> &'static str {
        match self {
            Auth::Token(_) => "token",
            Auth::Login { method, .. } => method,
        }
    }

    /// For `describe()`: the method and where its credential comes from.
    fn describe(&self) -> String {
        match self {
            Auth::Token(Some(s)) => format!("token from {}", s.describe()),
            Auth::Token(None) => "token from $VAULT_TOKEN, $BAO_TOKEN or ~/.vault-token".into(),
            Auth::Login {
                method,
                mount,
                login,
            } => {
                let from = match login {
                    Login::AppRole {
                        secret_id: Some(s), ..
                    } => format!(", secret_id from {}", s.describe()),
                    Login::AppRole { .. } => String::new(),
                    Login::Jwt { role, jwt } => {
                        format!(", role `{role}`, JWT from {}", jwt.describe())
                    }
                };
                format!("{method} (auth/{mount}){from}")
            }
        }
    }
}

/// A token in use.
struct Session {
    token: Zeroizing<String>,
    /// When to renew (or log in again); `None`: never.
    renew_at: Option<Instant>,
    renewable: bool,
}

/// What serves a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    KvV1,
    KvV2,
    Other,
}

/// A mount looked up with `sys/internal/ui/mounts`.
#[derive(Debug, Clone)]
struct Mount {
    /// With a trailing `/` (`secret/`).
    path: String,
    engine: Engine,
}

/// The result of a mount lookup.
enum Lookup {
    Known(Mount),
    /// Vault would not say (no access, or no such mount): why.
    Unknown(ProviderError),
}

/// Changes a secret's data in place; gets whether the secret exists and returns whether data
/// remains (`false`: delete the secret).
type Edit<'a> = dyn FnMut(&mut Map<String, Value>, bool) -> Result<bool, ProviderError> + Send + 'a;

/// A parsed item.
struct Target {
    /// The path as written, without `/` at either end and without `#field`.
    path: String,
    field: Option<String>,
    version: Option<u64>,
}

/// A finished HTTP exchange.
struct Reply {
    status: StatusCode,
    body: Zeroizing<Vec<u8>>,
}

/// Vault's answer envelope.
#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

/// Vault's error body.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// `data` of a KV v2 read.
#[derive(Deserialize)]
struct KvV2Data {
    data: Option<Map<String, Value>>,
    metadata: Option<KvV2Metadata>,
}

#[derive(Deserialize)]
struct KvV2Metadata {
    #[serde(default)]
    version: u64,
}

/// `data` of `sys/internal/ui/mounts/<path>`.
#[derive(Deserialize)]
struct MountData {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    options: Option<MountOptions>,
}

#[derive(Deserialize)]
struct MountOptions {
    version: Option<String>,
}

/// A login or renewal answer.
#[derive(Deserialize)]
struct AuthEnvelope {
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
struct AuthData {
    client_token: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

impl VaultProvider {
    /// Builds the provider from its options. Nothing is sent and no credential is read until
    /// first use; `ca_cert` is read now (the HTTP client needs it).
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let getenv = ctx.getenv.clone();
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let address_text = inst
            .opt_str("address")
            .map(String::from)
            .or_else(|| nonempty(getenv("VAULT_ADDR")))
            .or_else(|| nonempty(getenv("BAO_ADDR")))
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let address = parse_address(&inst.name, address_text.trim())?;
        let namespace = inst
            .opt_str("namespace")
            .map(String::from)
            .or_else(|| nonempty(getenv("VAULT_NAMESPACE")))
            .map(|n| n.trim().trim_matches('/').to_string())
            .filter(|n| !n.is_empty());
        if let Some(ns) = &namespace
            && HeaderValue::from_str(ns).is_err()
        {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!(
                    "provider `{}`: the namespace `{ns}` cannot be sent in a header",
                    inst.name
                ),
            )
            .help("write the namespace path, e.g. namespace = \"team/app\""));
        }
        let ca_cert = inst.opt_path("ca_cert", ctx.home.as_deref());
        let timeout = inst.timeout();
        let client = crate::http::build_client(
            &inst.name,
            &address,
            ca_cert.as_deref(),
            timeout,
            &getenv,
            reqwest::redirect::Policy::default(),
        )?;
        Ok(Self {
            instance: inst.name.clone(),
            type_name: inst.ty.name,
            address,
            namespace,
            ca_cert,
            timeout,
            client,
            auth: parse_auth(inst, ctx)?,
            getenv,
            home: ctx.home.clone(),
            session: Mutex::new(None),
            mounts: Mutex::new(Vec::new()),
            sent: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Records the credentials a request carries: its token and a login's secrets.
    fn remember_sent(&self, token: Option<&str>, body: Option<&Value>) {
        let login = body
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|o| ["secret_id", "jwt"].into_iter().filter_map(|k| o.get(k)))
            .filter_map(Value::as_str);
        let Ok(mut sent) = self.sent.lock() else {
            return;
        };
        for c in token.into_iter().chain(login) {
            if !c.is_empty() && !sent.iter().any(|s| s.as_str() == c) {
                sent.push(Zeroizing::new(c.to_string()));
            }
        }
    }

    /// "Vault at ADDRESS".
    fn who(&self) -> String {
        format!("Vault at {}", self.address.as_str().trim_end_matches('/'))
    }

    // ----- HTTP -----

    /// `address` + `/v1/` + `path`, each segment percent-encoded.
    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        let mut url = self.address.clone();
        url.path_segments_mut()
            .map_err(|()| {
                ProviderError::new(
                    ErrorKind::Config,
                    format!("`{}` cannot take a path", self.address),
                )
            })?
            .pop_if_empty()
            .push("v1")
            .extend(path.split('/'));
        Ok(url)
    }

    /// Sends one request. Only transport failures are errors here; callers look at the status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<(&str, String)>,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Reply, ProviderError> {
        let mut req = self.client.request(method, self.url(path)?);
        self.remember_sent(token, body);
        if let Some(ns) = &self.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token).map_err(|_| {
                ProviderError::new(
                    ErrorKind::Auth,
                    "the Vault token holds characters that cannot be sent in a header",
                )
                .help("check the token's source for stray characters")
            })?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(q) = query {
            req = req.query(&[q]);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        Ok(Reply {
            status,
            body: Zeroizing::new(body.to_vec()),
        })
    }

    /// Maps a reqwest failure (never holds a token: the header is marked sensitive).
    fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        crate::http::transport_error(
            e,
            &self.who(),
            self.timeout,
            self.ca_cert.as_deref(),
            "`address` (or VAULT_ADDR)",
        )
    }

    /// The error for an unexpected status; `what` names the operation and path.
    fn status_error(&self, reply: &Reply, what: &str) -> ProviderError {
        let said = vault_errors(&reply.body, &self.credentials());
        let said = if said.is_empty() {
            reply.status.to_string()
        } else {
            said
        };
        let code = reply.status.as_u16();
        let message = format!("{}: {what}: {said} (HTTP {code})", self.who());
        match reply.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                ProviderError::new(ErrorKind::Auth, message).help(format!(
                    "the token ({}) is invalid or expired, or its policies do not allow this path",
                    self.auth.describe()
                ))
            }
            StatusCode::NOT_FOUND => ProviderError::not_found(message),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::PRECONDITION_FAILED => {
                ProviderError::new(ErrorKind::Network, message).transient()
            }
            s if s.is_server_error() => ProviderError::new(ErrorKind::Network, message)
                .help("the server failed or is sealed (`bao status` / `vault status`)")
                .transient(),
            _ => ProviderError::new(ErrorKind::Backend, message),
        }
    }

    /// Parses a successful answer.
    fn parse<T: for<'de> Deserialize<'de>>(
        &self,
        reply: &Reply,
        what: &str,
    ) -> Result<T, ProviderError> {
        // serde's message may quote the input, so it is not shown.
        serde_json::from_slice(&reply.body).map_err(|_| {
            ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "{}: {what}: the answer is not the JSON Vault sends",
                    self.who()
                ),
            )
            .help("check that `address` points at a Vault or OpenBao server")
        })
    }

    // ----- tokens -----

    /// The token to use: read or logged in once, renewed or replaced when due.
    async fn token(&self) -> Result<Zeroizing<String>, ProviderError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref()
            && s.renew_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(s.token.clone());
        }
        let fresh = match guard.take() {
            Some(old) if old.renewable => match self.renew(&old.token).await {
                Ok(s) => s,
                Err(_) => self.login().await?,
            },
            _ => self.login().await?,
        };
        let token = fresh.token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// Reads the configured token, or logs in.
    async fn login(&self) -> Result<Session, ProviderError> {
        match &self.auth {
            Auth::Token(source) => Ok(Session {
                token: self.static_token(source.as_ref())?,
                renew_at: None,
                renewable: false,
            }),
            Auth::Login {
                method,
                mount,
                login,
            } => {
                let body = self.login_body(method, login)?;
                let path = format!("auth/{mount}/login");
                let reply = self
                    .send(Method::POST, &path, None, Some(&body), None)
                    .await?;
                if !reply.status.is_success() {
                    let mut e =
                        self.status_error(&reply, &format!("{method} login at `{path}` failed"));
                    if matches!(reply.status.as_u16(), 400 | 401 | 403 | 404) {
                        e.kind = ErrorKind::Auth;
                        e.help = Some(format!(
                            "check the {method} credentials ({}) and that the auth method is enabled at `auth/{mount}` (option `mount` changes it)",
                            self.auth.describe()
                        ));
                    }
                    return Err(e);
                }
                self.session_from(&reply, &format!("{method} login"))
            }
        }
    }

    /// `auth/token/renew-self`.
    async fn renew(&self, token: &str) -> Result<Session, ProviderError> {
        let reply = self
            .send(
                Method::POST,
                "auth/token/renew-self",
                None,
                Some(&serde_json::json!({})),
                Some(token),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(self.status_error(&reply, "token renewal failed"));
        }
        self.session_from(&reply, "token renewal")
    }

    fn session_from(&self, reply: &Reply, what: &str) -> Result<Session, ProviderError> {
        let env: AuthEnvelope = self.parse(reply, what)?;
        let auth = env.auth.ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Auth,
                format!("{}: {what} answered no token", self.who()),
            )
        })?;
        let token = Zeroizing::new(auth.client_token);
        let renew_at = (auth.lease_duration > 0)
            .then(|| Instant::now() + Duration::from_secs(auth.lease_duration) * 2 / 3);
        Ok(Session {
            token,
            renew_at,
            renewable: auth.renewable,
        })
    }

    /// The body of a login request.
    fn login_body(&self, method: &str, login: &Login) -> Result<Value, ProviderError> {
        match login {
            Login::AppRole { role_id, secret_id } => {
                let mut body = serde_json::json!({ "role_id": role_id });
                if let Some(source) = secret_id {
                    let secret = source
                        .read(&self.getenv)?
                        .ok_or_else(|| missing_credential("the AppRole secret_id", source))?;
                    if let Value::Object(map) = &mut body {
                        map.insert("secret_id".into(), Value::String(secret.to_string()));
                    }
                }
                Ok(body)
            }
            Login::Jwt { role, jwt } => {
                let token = jwt
                    .read(&self.getenv)?
                    .ok_or_else(|| missing_credential(&format!("the {method} login token"), jwt))?;
                Ok(serde_json::json!({ "role": role, "jwt": token.as_str() }))
            }
        }
    }

    /// A token from its source, or from the default chain.
    fn static_token(&self, source: Option<&Source>) -> Result<Zeroizing<String>, ProviderError> {
        if let Some(source) = source {
            return source
                .read(&self.getenv)?
                .ok_or_else(|| missing_credential("the Vault token", source));
        }
        let mut chain = vec![
            Source::Env("VAULT_TOKEN".into()),
            Source::Env("BAO_TOKEN".into()),
        ];
        if let Some(home) = &self.home {
            chain.push(Source::File(home.join(".vault-token")));
        }
        for s in &chain {
            if let Some(t) = s.read(&self.getenv)? {
                return Ok(t);
            }
        }
        Err(ProviderError::new(
            ErrorKind::Auth,
            format!("no Vault token for provider `{}`: VAULT_TOKEN and BAO_TOKEN are unset and ~/.vault-token does not exist", self.instance),
        )
        .help("log in with `bao login` / `vault login`, export VAULT_TOKEN, or set `token_env`, `token_file` or `auth = { method = \"approle\", … }` on the provider"))
    }

    // ----- mounts -----

    /// The mount serving `path`: cached, else looked up once.
    async fn mount_for(&self, path: &str, token: &str) -> Result<Lookup, ProviderError> {
        // The lock is held across the lookup so concurrent first reads of a mount ask once.
        let mut mounts = self.mounts.lock().await;
        let with_slash = format!("{path}/");
        if let Some(m) = mounts
            .iter()
            .filter(|m| with_slash.starts_with(&m.path))
            .max_by_key(|m| m.path.len())
        {
            return Ok(Lookup::Known(m.clone()));
        }
        let what = format!("looking up the mount of `{path}`");
        let reply = self
            .send(
                Method::GET,
                &format!("sys/internal/ui/mounts/{path}"),
                None,
                None,
                Some(token),
            )
            .await?;
        if !reply.status.is_success() {
            let e = self.status_error(&reply, &what);
            return match e.kind {
                ErrorKind::Auth | ErrorKind::NotFound | ErrorKind::Backend => {
                    Ok(Lookup::Unknown(e))
                }
                _ => Err(e),
            };
        }
        let env: Envelope<MountData> = self.parse(&reply, &what)?;
        let Some(data) = env.data else {
            return Ok(Lookup::Unknown(ProviderError::new(
                ErrorKind::Backend,
                format!("{}: {what}: no mount information", self.who()),
            )));
        };
        let engine = match (data.kind.as_str(), data.options.and_then(|o| o.version)) {
            ("kv" | "generic", Some(v)) if v == "2" => Engine::KvV2,
            ("kv" | "generic", _) => Engine::KvV1,
            _ => Engine::Other,
        };
        let mount_path = format!("{}/", data.path.trim_matches('/'));
        // A namespace prefix (`team/secret/`) is part of the path as written; keep it only when
        // the ref starts with it, else the mount is relative to the namespace header.
        let mount_path = if with_slash.starts_with(&mount_path) {
            mount_path
        } else {
            return Ok(Lookup::Unknown(ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "{}: {what}: the mount `{mount_path}` does not prefix the path",
                    self.who()
                ),
            )));
        };
        let mount = Mount {
            path: mount_path,
            engine,
        };
        mounts.push(mount.clone());
        Ok(Lookup::Known(mount))
    }

    // ----- reads -----

    async fn read_item(&self, item: &Item) -> Result<SecretValue, ProviderError> {
        let t = parse_item(item)?;
        let token = self.token().await?;
        let mount = match self.mount_for(&t.path, &token).await? {
            Lookup::Known(m) => Some(m),
            Lookup::Unknown(_) => None,
        };
        match mount {
            Some(m) if m.engine == Engine::KvV2 => {
                let api = kv2_path(&m, &t.path)?;
                let data = self.read_kv2(&api, &token, t.version).await?;
                pick(&Value::Object(data), t.field.as_deref(), true, &t.path)
            }
            _ if t.version.is_some() => Err(ProviderError::new(
                ErrorKind::BadReference,
                format!(
                    "`{}` is not in a KV v2 mount, so param `version` does not apply",
                    t.path
                ),
            )
            .help("remove `version`, or point the ref at a KV v2 secret")),
            m => {
                let data = self
                    .read_plain(&t.path, &token)
                    .await?
                    .ok_or_else(|| not_found(&self.who(), &t.path))?;
                let kv = m.is_some_and(|m| m.engine == Engine::KvV1);
                pick(&data, t.field.as_deref(), kv, &t.path)
            }
        }
    }

    /// Reads a KV v2 secret's data (`api` is `<mount>/data/<path>`).
    async fn read_kv2(
        &self,
        api: &str,
        token: &str,
        version: Option<u64>,
    ) -> Result<Map<String, Value>, ProviderError> {
        let query = version.map(|v| ("version", v.to_string()));
        let reply = self
            .send(Method::GET, api, query, None, Some(token))
            .await?;
        let what = match version {
            Some(v) => format!("version {v} of `{api}`"),
            None => format!("`{api}`"),
        };
        if reply.status == StatusCode::NOT_FOUND {
            return Err(not_found(&self.who(), &what));
        }
        if !reply.status.is_success() {
            return Err(self.status_error(&reply, &format!("reading {what}")));
        }
        let env: Envelope<KvV2Data> = self.parse(&reply, &format!("reading {what}"))?;
        env.data
            .and_then(|d| d.data)
            .ok_or_else(|| not_found(&self.who(), &what))
    }

    /// Reads any path's `data`; `None` on 404.
    async fn read_plain(&self, path: &str, token: &str) -> Result<Option<Value>, ProviderError> {
        let reply = self
            .send(Method::GET, path, None, None, Some(token))
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let what = format!("reading `{path}`");
        if !reply.status.is_success() {
            return Err(self.status_error(&reply, &what));
        }
        if reply.body.is_empty() {
            return Ok(None);
        }
        let env: Envelope<Value> = self.parse(&reply, &what)?;
        Ok(env.data.filter(|d| !d.is_null()))
    }

    // ----- writes -----

    /// The KV mount of a path to modify (other engines are refused).
    async fn kv_mount(&self, t: &Target, token: &str) -> Result<Mount, ProviderError> {
        match self.mount_for(&t.path, token).await? {
            Lookup::Known(m) if m.engine != Engine::Other => Ok(m),
            Lookup::Known(m) => Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!("`{}` is served by a secrets engine that is not KV (mount `{}`): kz writes only to KV mounts", t.path, m.path),
            )
            .help("write to a path of a KV v1 or v2 mount, or use the engine's own tools")),
            Lookup::Unknown(e) => Err(e),
        }
    }

    /// Reads, edits and writes a KV secret, keeping the keys `edit` does not touch. `edit`
    /// returns whether data remains (`false`: delete the secret).
    async fn modify(&self, t: &Target, edit: &mut Edit<'_>) -> Result<(), ProviderError> {
        if t.version.is_some() {
            return Err(ProviderError::new(
                ErrorKind::BadReference,
                format!("param `version` cannot be written (`{}`)", t.path),
            )
            .help("remove `version` from the secret to write its latest version"));
        }
        let token = self.token().await?;
        let mount = self.kv_mount(t, &token).await?;
        if mount.engine == Engine::KvV1 {
            let mut data = match self.read_plain(&t.path, &token).await? {
                Some(Value::Object(map)) => (map, true),
                _ => (Map::new(), false),
            };
            return if edit(&mut data.0, data.1)? {
                let body = Value::Object(data.0);
                self.expect_ok(Method::POST, &t.path, Some(&body), &token)
                    .await
            } else {
                self.expect_ok(Method::DELETE, &t.path, None, &token).await
            };
        }
        let api = kv2_path(&mount, &t.path)?;
        for _ in 0..CAS_ATTEMPTS {
            let (mut data, version, exists) = self.read_for_cas(&api, &token).await?;
            if !edit(&mut data, exists)? {
                return self.expect_ok(Method::DELETE, &api, None, &token).await;
            }
            let body = serde_json::json!({ "options": { "cas": version }, "data": data });
            let reply = self
                .send(Method::POST, &api, None, Some(&body), Some(&token))
                .await?;
            if reply.status.is_success() {
                return Ok(());
            }
            if reply.status == StatusCode::BAD_REQUEST
                && vault_errors(&reply.body, &[]).contains("check-and-set")
            {
                continue;
            }
            return Err(self.status_error(&reply, &format!("writing `{api}`")));
        }
        Err(ProviderError::new(
            ErrorKind::Backend,
            format!("{}: `{api}` kept changing while kz wrote it ({CAS_ATTEMPTS} check-and-set conflicts)", self.who()),
        )
        .help("another writer is updating this secret; try again")
        .transient())
    }

    /// The current data and version of a KV v2 secret (empty and the last version, or 0, when
    /// it does not exist or its latest version is deleted), and whether it exists.
    async fn read_for_cas(
        &self,
        api: &str,
        token: &str,
    ) -> Result<(Map<String, Value>, u64, bool), ProviderError> {
        let reply = self.send(Method::GET, api, None, None, Some(token)).await?;
        let what = format!("reading `{api}`");
        if reply.status == StatusCode::NOT_FOUND {
            let version = serde_json::from_slice::<Envelope<KvV2Data>>(&reply.body)
                .ok()
                .and_then(|e| e.data)
                .and_then(|d| d.metadata)
                .map_or(0, |m| m.version);
            return Ok((Map::new(), version, false));
        }
        if !reply.status.is_success() {
            return Err(self.status_error(&reply, &what));
        }
        let env: Envelope<KvV2Data> = self.parse(&reply, &what)?;
        let data = env.data.unwrap_or(KvV2Data {
            data: None,
            metadata: None,
        });
        let version = data.metadata.map_or(0, |m| m.version);
        let exists = data.data.is_some();
        Ok((data.data.unwrap_or_default(), version, exists))
    }

    /// Sends a request that answers no data.
    async fn expect_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: &str,
    ) -> Result<(), ProviderError> {
        let verb = if method == Method::DELETE {
            "deleting"
        } else {
            "writing"
        };
        let reply = self.send(method, path, None, body, Some(token)).await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(self.status_error(&reply, &format!("{verb} `{path}`")))
        }
    }

    async fn write_item(&self, item: &Item, value: &SecretValue) -> Result<(), ProviderError> {
        let t = parse_item(item)?;
        let text = value.expose_str().ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Unsupported,
                format!("`{}`: Vault stores text and the value is not UTF-8", t.path),
            )
            .help("encode the value (for example as base64) before storing it")
        })?;
        let key = t.field.clone().unwrap_or_else(|| "value".to_string());
        self.modify(&t, &mut |data, _| {
            data.insert(key.clone(), Value::String(text.to_string()));
            Ok(true)
        })
        .await
        .map_err(|e| scrub(e, text))
    }

    async fn delete_item(&self, item: &Item) -> Result<(), ProviderError> {
        let t = parse_item(item)?;
        let who = self.who();
        let path = t.path.clone();
        let field = t.field.clone();
        self.modify(&t, &mut |data, exists| {
            let Some(field) = &field else {
                return Ok(false);
            };
            if !exists {
                return Err(not_found(&who, &format!("`{path}`")));
            }
            if data.remove(field).is_none() {
                return Err(missing_field(field, data, &path));
            }
            Ok(!data.is_empty())
        })
        .await
    }

    async fn check_token(&self) -> Result<(), ProviderError> {
        let token = self.token().await?;
        let reply = self
            .send(
                Method::GET,
                "auth/token/lookup-self",
                None,
                None,
                Some(&token),
            )
            .await?;
        if reply.status.is_success() {
            Ok(())
        } else {
            let mut e = self.status_error(&reply, "checking the token (auth/token/lookup-self)");
            if e.kind == ErrorKind::NotFound {
                e.kind = ErrorKind::Backend;
            }
            Err(e)
        }
    }
}

impl Provider for VaultProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(self.read_item(item).await.map(Resolved::Single));
            }
            out
        })
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.write_item(item, value))
    }

    fn delete<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.delete_item(item))
    }

    fn max_batch(&self) -> usize {
        1
    }

    fn handles_field(&self) -> bool {
        true
    }

    /// The files the token or the login credential is read from (`~/.vault-token` for the
    /// default chain).
    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        let file = |s: &Source| match s {
            Source::File(p) => Some(p.clone()),
            Source::Inline(..) | Source::Env(_) => None,
        };
        match &self.auth {
            Auth::Token(Some(s)) => file(s).into_iter().collect(),
            Auth::Token(None) => self.home.iter().map(|h| h.join(".vault-token")).collect(),
            Auth::Login { login, .. } => match login {
                Login::AppRole { secret_id, .. } => secret_id.iter().filter_map(file).collect(),
                Login::Jwt { jwt, .. } => file(jwt).into_iter().collect(),
            },
        }
    }

    fn credentials(&self) -> Vec<SecretValue> {
        self.sent
            .lock()
            .map(|sent| sent.iter().map(|s| SecretValue::from_str_copy(s)).collect())
            .unwrap_or_default()
    }

    fn describe(&self) -> Description {
        let mut details = vec![(
            "address".to_string(),
            self.address.as_str().trim_end_matches('/').to_string(),
        )];
        if let Some(ns) = &self.namespace {
            details.push(("namespace".into(), ns.clone()));
        }
        details.push(("auth".into(), self.auth.describe()));
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
        Box::pin(self.check_token())
    }
}

// ----- building -----

/// Parses `address` (http or https; user info is refused: credentials do not belong there).
fn parse_address(instance: &str, text: &str) -> Result<Url, ProviderError> {
    let bad = |why: &str| {
        ProviderError::new(
            ErrorKind::Config,
            format!("provider `{instance}`: the Vault address is invalid: {why}"),
        )
        .help("set `address = \"https://vault.example.com:8200\"` (or VAULT_ADDR)")
    };
    let url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("it must not hold a user name or password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    Ok(url)
}

/// Reads the `auth` option (and `token`/`token_env`/`token_file` for token auth).
fn parse_auth(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Auth, ProviderError> {
    let home = ctx.home.as_deref();
    let config_error = |msg: String, help: &str| {
        ProviderError::new(
            ErrorKind::Config,
            format!("provider `{}`: {msg}", inst.name),
        )
        .help(help.to_string())
    };
    let top_token = || -> Option<Source> {
        if let Some(t) = inst.opt_str("token") {
            return Some(Source::Inline(Zeroizing::new(t.to_string()), "token"));
        }
        if let Some(e) = inst.opt_str("token_env") {
            return Some(Source::Env(e.to_string()));
        }
        inst.opt_path("token_file", home).map(Source::File)
    };
    let Some(opt) = inst.option("auth") else {
        return Ok(Auth::Token(top_token()));
    };
    let entries: &[Entry] = match &opt.node.val {
        Val::Str(s) if s == "token" => return Ok(Auth::Token(top_token())),
        Val::Str(s) => {
            return Err(config_error(
                format!("`auth = \"{s}\"` needs its settings"),
                "write a table, e.g. auth = { method = \"approle\", role_id = \"…\", secret_id_env = \"VAULT_SECRET_ID\" }",
            ));
        }
        Val::Table(t) => t,
        other => {
            return Err(config_error(
                format!(
                    "`auth` must be a string or a table, not {}",
                    other.type_name()
                ),
                "write auth = \"token\" or auth = { method = \"…\", … }",
            ));
        }
    };
    let get = |key: &str| entries.iter().find(|e| e.key == key);
    let get_str = |key: &str| get(key).and_then(|e| e.node.as_str()).map(String::from);
    let get_path = |key: &str| {
        get(key).and_then(|e| {
            e.node
                .as_str()
                .map(|p| kz_config::model::resolve_path(p, &e.node.pos.file, home))
        })
    };
    let method = get_str("method").unwrap_or_else(|| "token".into());
    let (method, default_mount): (&'static str, &str) = match method.as_str() {
        "token" => {
            let source = if let Some(t) = get_str("token") {
                Some(Source::Inline(Zeroizing::new(t), "auth.token"))
            } else if let Some(e) = get_str("token_env") {
                Some(Source::Env(e))
            } else {
                get_path("token_file").map(Source::File).or_else(top_token)
            };
            return Ok(Auth::Token(source));
        }
        "approle" => ("approle", "approle"),
        "kubernetes" => ("kubernetes", "kubernetes"),
        "jwt" => ("jwt", "jwt"),
        other => {
            return Err(config_error(
                format!("unknown auth method `{other}`"),
                "use one of: token, approle, kubernetes, jwt",
            ));
        }
    };
    let mount = get_str("mount")
        .map(|m| m.trim_matches('/').to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| default_mount.to_string());
    let login = match method {
        "approle" => {
            let role_id = get_str("role_id").filter(|r| !r.is_empty()).ok_or_else(|| {
                config_error(
                    "AppRole auth needs `role_id`".into(),
                    "auth = { method = \"approle\", role_id = \"…\", secret_id_env = \"VAULT_SECRET_ID\" }",
                )
            })?;
            if get("secret_id").is_some() && opt.role == kz_config::Role::Project {
                return Err(config_error(
                    "`auth.secret_id` is a credential and is refused in the committed .keyzero.toml".into(),
                    "use `secret_id_env` or `secret_id_file`, or move it to .keyzero.local.toml",
                ));
            }
            let secret_id = if let Some(s) = get_str("secret_id") {
                Some(Source::Inline(Zeroizing::new(s), "auth.secret_id"))
            } else if let Some(e) = get_str("secret_id_env") {
                Some(Source::Env(e))
            } else {
                get_path("secret_id_file").map(Source::File)
            };
            Login::AppRole { role_id, secret_id }
        }
        _ => {
            let role = get_str("role").filter(|r| !r.is_empty()).ok_or_else(|| {
                config_error(
                    format!("{method} auth needs `role`"),
                    "add role = \"…\" (the Vault role to log in as) to `auth`",
                )
            })?;
            let jwt = if let Some(e) = get_str("token_env").filter(|_| method == "jwt") {
                Source::Env(e)
            } else if let Some(p) = get_path("token_file") {
                Source::File(p)
            } else if method == "kubernetes" {
                Source::File(PathBuf::from(K8S_TOKEN_FILE))
            } else {
                return Err(config_error(
                    "JWT auth needs `token_env` or `token_file` (where the JWT is)".into(),
                    "auth = { method = \"jwt\", role = \"…\", token_env = \"CI_JOB_JWT\" }",
                ));
            };
            Login::Jwt { role, jwt }
        }
    };
    Ok(Auth::Login {
        method,
        mount,
        login,
    })
}

// ----- helpers -----

/// Splits the ref (`path[#field]`) and checks it, before any network call.
fn parse_item(item: &Item) -> Result<Target, ProviderError> {
    let bad = |why: String| {
        ProviderError::new(
            ErrorKind::BadReference,
            format!("`{}` is not a Vault path: {why}", item.reference),
        )
        .help("write a path such as `secret/app`, `secret/data/app` or `secret/app#field`")
    };
    let (raw_path, fragment) = match item.reference.split_once('#') {
        Some((p, "")) => return Err(bad(format!("nothing follows `#` in `{p}#`"))),
        Some((p, f)) => (p, Some(f.to_string())),
        None => (item.reference.as_str(), None),
    };
    let field = match (&item.field, fragment) {
        (Some(a), Some(b)) if *a != b => {
            return Err(bad(format!("`#{b}` and field `{a}` disagree")));
        }
        (Some(a), _) => Some(a.clone()),
        (None, f) => f,
    };
    let path = raw_path.trim_matches('/');
    if path.is_empty() {
        return Err(bad("the path is empty".into()));
    }
    if path.chars().any(char::is_control) {
        return Err(bad("it contains a control character".into()));
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(bad("it has an empty, `.` or `..` segment".into()));
    }
    let mut version = None;
    for (k, v) in &item.params {
        match k.as_str() {
            "version" => {
                let n = v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        ProviderError::new(
                            ErrorKind::BadReference,
                            format!(
                                "param `version` of `{}` must be a positive integer, not `{v}`",
                                item.reference
                            ),
                        )
                        .help("write version = 3 (a KV v2 version number)")
                    })?;
                version = Some(n);
            }
            other => {
                return Err(ProviderError::new(
                    ErrorKind::BadReference,
                    format!("the hashicorp provider has no param `{other}`"),
                )
                .help("the only param is `version` (KV v2)"));
            }
        }
    }
    Ok(Target {
        path: path.to_string(),
        field,
        version,
    })
}

/// The KV v2 API path: `data/` inserted after the mount unless present.
fn kv2_path(mount: &Mount, path: &str) -> Result<String, ProviderError> {
    let rest = format!("{path}/");
    let rest = rest
        .strip_prefix(&mount.path)
        .unwrap_or_default()
        .trim_end_matches('/');
    if rest.is_empty() {
        return Err(ProviderError::new(
            ErrorKind::BadReference,
            format!(
                "`{path}` names the mount `{}`, not a secret in it",
                mount.path
            ),
        )
        .help(format!("write `{}NAME`", mount.path)));
    }
    let rest = rest.strip_prefix("data/").unwrap_or(rest);
    Ok(format!("{}data/{rest}", mount.path))
}

/// Picks `field` from a secret's data; without one, a single-key KV secret gives its value
/// and anything else the JSON text of the data.
fn pick(
    data: &Value,
    field: Option<&str>,
    single_key: bool,
    path: &str,
) -> Result<SecretValue, ProviderError> {
    let map = data.as_object();
    match (field, map) {
        (Some(f), Some(map)) => match map.get(f) {
            None | Some(Value::Null) => Err(missing_field(f, map, path)),
            Some(v) => Ok(value_text(v)),
        },
        (Some(f), None) => Err(ProviderError::new(
            ErrorKind::Field,
            format!("cannot pick field `{f}` of `{path}`: its data is not an object"),
        )
        .help("remove `field` to get the whole value")),
        (None, Some(map)) if single_key && map.len() == 1 => Ok(map
            .values()
            .next()
            .map_or_else(|| SecretValue::from_bytes(Vec::new()), value_text)),
        (None, _) => Ok(SecretValue::from_string(data.to_string())),
    }
}

/// A JSON value as a secret: strings as they are, anything else as JSON text.
fn value_text(v: &Value) -> SecretValue {
    match v {
        Value::String(s) => SecretValue::from_str_copy(s),
        other => SecretValue::from_string(other.to_string()),
    }
}

fn missing_field(field: &str, map: &Map<String, Value>, path: &str) -> ProviderError {
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    ProviderError::new(
        ErrorKind::Field,
        format!("field `{field}` does not exist in `{path}`"),
    )
    .help(if keys.is_empty() {
        "the secret has no fields".to_string()
    } else {
        format!("the fields are: {}", keys.join(", "))
    })
}

fn not_found(who: &str, what: &str) -> ProviderError {
    let what = if what.starts_with('`') || what.starts_with("version") {
        what.to_string()
    } else {
        format!("`{what}`")
    };
    ProviderError::not_found(format!("{who}: secret {what} not found"))
        .help("check the path (`bao kv get PATH` / `vault kv get PATH`), the namespace, or store it with `kz put`")
}

fn missing_credential(what: &str, source: &Source) -> ProviderError {
    let help = match source {
        Source::Env(name) => format!("export {name}, or point the provider at another source"),
        Source::File(path) => format!(
            "create {} or point the provider at another file",
            path.display()
        ),
        Source::Inline(..) => "set a non-empty value".to_string(),
    };
    ProviderError::new(
        ErrorKind::Auth,
        format!("{what} is missing: {} is unset or empty", source.describe()),
    )
    .help(help)
}

/// Vault's `errors`, joined and shortened.
/// Vault's `errors`, with the credentials sent removed before the text is cut short.
fn vault_errors(body: &[u8], sent: &[SecretValue]) -> String {
    let text = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.errors.join("; "))
        .unwrap_or_default();
    let text = kz_resolve::redact_text(&text, sent);
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() > MAX_QUOTED {
        let cut: String = text.chars().take(MAX_QUOTED).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Removes a value from an error's text (a write's value must never be quoted back).
fn scrub(mut e: ProviderError, value: &str) -> ProviderError {
    // Very short values would mangle the message (status codes) and are no real secrets.
    if value.len() >= 4 {
        e.message = e.message.replace(value, "****");
        e.help = e.help.map(|h| h.replace(value, "****"));
    }
    e
}
