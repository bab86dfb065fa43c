//! The `gcp` provider (alias `gcp_secret_manager`): Google Cloud Secret Manager over its REST
//! API (v1), spoken with reqwest (no Google SDK).
//!
//! **References:** `projects/P/secrets/S`, `projects/P/secrets/S/versions/V`, or a short `S`
//! when the provider sets `project`. Parameter `version` (default `latest`) picks the version;
//! a `/versions/V` in the reference wins, and a different `version` parameter next to it is a
//! `BadReference`. `field` is applied by the engine to JSON payloads. Malformed references are
//! rejected before any network call.
//!
//! **Options:** `project` (for short names), `endpoint_url` (default
//! `https://secretmanager.googleapis.com`), `credentials` (path to a credentials JSON file).
//! The common `timeout` bounds every HTTP request; connections give up after 5 s.
//!
//! **Read:** `GET {endpoint}/v1/projects/P/secrets/S/versions/V:access`; the base64 payload is
//! decoded as bytes (binary-safe) and its `dataCrc32c` (CRC32C, Castagnoli) is verified when
//! present (a mismatch is a `Backend` error, "corrupted payload", marked transient so the
//! engine retries once more). Errors: 404 / `NOT_FOUND`
//! → `NotFound`; 401, 403 / `PERMISSION_DENIED` → `Auth` with Google's message; 429, 5xx and
//! connection failures → transient `Network`; `FAILED_PRECONDITION` for a *destroyed* version →
//! `NotFound` (the value is gone for good), for a *disabled* one → `Backend` with a help saying
//! how to enable it.
//!
//! **Auth** (the first that applies; the access token is fetched once per process and cached
//! until 60 s before it expires):
//! 1. `GOOGLE_ACCESS_TOKEN`: a ready bearer token;
//! 2. the `credentials` option, else `GOOGLE_APPLICATION_CREDENTIALS`: a JSON file of type
//!    `service_account` (an RS256 JWT signed with its `private_key` is exchanged at its
//!    `token_uri` by the OAuth JWT-bearer grant) or `authorized_user` (its `refresh_token` is
//!    exchanged at `token_uri`, default `https://oauth2.googleapis.com/token`);
//! 3. gcloud's application-default credentials file,
//!    `$CLOUDSDK_CONFIG/application_default_credentials.json` or
//!    `~/.config/gcloud/application_default_credentials.json` (same two types);
//! 4. the metadata server (`metadata.google.internal`, or `GCE_METADATA_HOST`), asked with
//!    `Metadata-Flavor: Google` and a 2 s limit (or `timeout`, when shorter) so machines
//!    without one fail fast.
//!
//! Environment variables are read only through the build context. `HTTPS_PROXY` / `NO_PROXY`
//! (from the same place) apply to `https://` endpoints. Tokens, keys and values never appear in
//! errors or `Debug` output.
//!
//! **Write** (`kz put`): `POST …/secrets/S:addVersion` with the base64 payload and its CRC32C;
//! when the secret does not exist it is created first (`POST …/projects/P/secrets?secretId=S`,
//! automatic replication). With `field`, the latest JSON object is read, the member set, and
//! the whole object added as a new version. A write never names a version.
//!
//! **Delete** (`kz rm --purge`): destroys only the version the reference points at (by default
//! the latest: its number is looked up with `GET …/versions/latest`, then
//! `POST …/versions/N:destroy`). Older versions and the secret itself (with its IAM policy)
//! are kept; `gcloud secrets delete` removes everything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{BuildContext, GetEnv};

/// Secret Manager's public endpoint.
const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// Google's OAuth token endpoint (for user credentials without `token_uri`).
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The OAuth scope asked for.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The JWT-bearer grant type.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// The metadata server's host name on Google Cloud.
const METADATA_HOST: &str = "metadata.google.internal";
/// The metadata server's token path.
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// Whole-request limit for the metadata server (absent on most machines: fail fast).
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP connect limit for every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime asked for in a service-account JWT.
const JWT_LIFETIME_SECS: u64 = 3600;
/// A token is replaced this long before it expires (at most half its lifetime).
const REFRESH_MARGIN_SECS: u64 = 60;
/// Longest piece of backend text quoted in an error.
const MAX_QUOTED: usize = 300;
/// The four ways to authenticate, for errors.
const AUTH_WAYS: &str = "authenticate in one of four ways: (1) set GOOGLE_ACCESS_TOKEN (e.g. to `gcloud auth print-access-token`); (2) set `credentials = \"path/key.json\"` on the provider or GOOGLE_APPLICATION_CREDENTIALS to a service-account key file; (3) run `gcloud auth application-default login`; (4) run on Google Cloud with a service account attached (metadata server)";

/// Google Cloud Secret Manager.
pub struct GcpProvider {
    instance: String,
    project: Option<String>,
    endpoint: String,
    /// The `credentials` option, resolved against the file that set it.
    credentials: Option<PathBuf>,
    home: Option<PathBuf>,
    getenv: GetEnv,
    client: reqwest::Client,
    /// The per-request limit (the `timeout` option).
    timeout: Duration,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    /// Every access token sent so far ([`Provider::credentials`]: a server echoing one in an
    /// error does not get it printed).
    sent: std::sync::Mutex<Vec<Zeroizing<String>>>,
}

impl fmt::Debug for GcpProvider {
    // The cached token is left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpProvider")
            .field("instance", &self.instance)
            .field("project", &self.project)
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl GcpProvider {
    /// Builds the provider; no file is read and no request is made until first use.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let endpoint = inst
            .opt_str("endpoint_url")
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!(
                    "provider `{}`: `endpoint_url` must be an http(s) URL, not `{endpoint}`",
                    inst.name
                ),
            )
            .help(format!("remove it to use {DEFAULT_ENDPOINT}")));
        }
        let project = inst
            .opt_str("project")
            .filter(|p| !p.is_empty())
            .map(String::from);
        if let Some(p) = &project
            && !valid_project(p)
        {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!("provider `{}`: `project = \"{p}\"` is not a project id", inst.name),
            )
            .help("use the project id (e.g. `acme-prod`) or number, as `gcloud projects list` shows it"));
        }
        Ok(Self {
            instance: inst.name.clone(),
            project,
            endpoint,
            credentials: inst.opt_path("credentials", ctx.home.as_deref()),
            home: ctx.home.clone(),
            getenv: ctx.getenv.clone(),
            client: build_client(inst, &ctx.getenv)?,
            timeout: inst.timeout(),
            token: tokio::sync::Mutex::new(None),
            sent: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// A variable of kz's environment, when set and not empty.
    fn env(&self, name: &str) -> Option<String> {
        (self.getenv)(name).filter(|v| !v.is_empty())
    }

    /// Parses an item's reference and `version` parameter.
    fn parse(&self, item: &Item) -> Result<SecretRef, ProviderError> {
        SecretRef::parse(
            &item.reference,
            param(item, "version"),
            self.project.as_deref(),
            &self.instance,
        )
    }

    // ---- Secret Manager calls ----

    /// Reads one version's payload.
    async fn access(&self, r: &SecretRef) -> Result<SecretValue, ProviderError> {
        let url = format!("{}/v1/{}:access", self.endpoint, r.version_path());
        let body = self.call(Method::GET, &url, None, r).await?;
        let answer: AccessResponse = serde_json::from_slice(&body).map_err(|_| {
            ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "{}: Secret Manager's answer is not an AccessSecretVersion response",
                    r.who(&self.instance)
                ),
            )
            .help("check `endpoint_url`: it must point at the Secret Manager REST API")
        })?;
        decode_payload(answer.payload, r, &self.instance)
    }

    /// Adds a version; creates the secret first when it does not exist.
    async fn add_version(&self, r: &SecretRef, data: &[u8]) -> Result<(), ProviderError> {
        let encoded = Zeroizing::new(B64.encode(data));
        let crc = crc32c(data).to_string();
        let body = Zeroizing::new(
            serde_json::to_vec(&AddVersionRequest {
                payload: PayloadOut {
                    data: &encoded,
                    data_crc32c: &crc,
                },
            })
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Backend,
                    format!("cannot encode the request: {e}"),
                )
            })?,
        );
        let url = format!("{}/v1/{}:addVersion", self.endpoint, r.secret_path());
        match self.call(Method::POST, &url, Some(&body), r).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.create_secret(r).await?;
                self.call(Method::POST, &url, Some(&body), r)
                    .await
                    .map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Creates an empty secret with automatic replication (a concurrent creation is fine).
    async fn create_secret(&self, r: &SecretRef) -> Result<(), ProviderError> {
        let url = format!(
            "{}/v1/projects/{}/secrets?secretId={}",
            self.endpoint, r.project, r.secret
        );
        let body = br#"{"replication":{"automatic":{}}}"#;
        match self.call(Method::POST, &url, Some(body), r).await {
            Ok(_) => Ok(()),
            Err(e) if e.message.contains("ALREADY_EXISTS") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Destroys the version `r` points at (the latest by default).
    async fn destroy(&self, r: &SecretRef) -> Result<(), ProviderError> {
        let url = format!("{}/v1/{}", self.endpoint, r.version_path());
        let body = self.call(Method::GET, &url, None, r).await?;
        let meta: VersionMeta = serde_json::from_slice(&body).map_err(|_| {
            ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "{}: Secret Manager's answer is not a SecretVersion",
                    r.who(&self.instance)
                ),
            )
        })?;
        if meta.state == "DESTROYED" {
            return Err(ProviderError::not_found(format!(
                "{}: version {} is already destroyed",
                r.who(&self.instance),
                meta.number()
            )));
        }
        let url = format!(
            "{}/v1/{}/versions/{}:destroy",
            self.endpoint,
            r.secret_path(),
            meta.number()
        );
        self.call(Method::POST, &url, Some(b"{}"), r)
            .await
            .map(drop)
    }

    /// One authenticated Secret Manager request; a non-2xx answer becomes a typed error.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&[u8]>,
        r: &SecretRef,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let token = self.token().await?;
        if let Ok(mut sent) = self.sent.lock()
            && !sent.iter().any(|t| t.as_str() == token.as_str())
        {
            sent.push(Zeroizing::new(token.as_str().to_string()));
        }
        let mut req = self.client.request(method, url).bearer_auth(token.as_str());
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let (status, body) = send(req).await.map_err(|e| {
            send_error(
                &e,
                &format!(
                    "{}: cannot reach Secret Manager at {}",
                    r.who(&self.instance),
                    self.endpoint
                ),
            )
        })?;
        if status.is_success() {
            return Ok(body);
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            // Forget a token the server no longer takes, so the next call fetches a new one.
            *self.token.lock().await = None;
        }
        Err(api_error(status.as_u16(), &body, r, &self.instance))
    }

    // ---- auth ----

    /// A valid access token: the cached one, or a new one from the first source that applies.
    async fn token(&self) -> Result<Zeroizing<String>, ProviderError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && t.is_fresh()
        {
            return Ok(t.token.clone());
        }
        let source = self.find_source()?;
        let fresh = self.fetch_token(&source).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Where credentials come from (reads the credentials file, no network).
    fn find_source(&self) -> Result<AuthSource, ProviderError> {
        if let Some(token) = self.env("GOOGLE_ACCESS_TOKEN") {
            return Ok(AuthSource::EnvToken(Zeroizing::new(token)));
        }
        let explicit = match &self.credentials {
            Some(p) => Some((p.clone(), "the `credentials` option")),
            None => self
                .env("GOOGLE_APPLICATION_CREDENTIALS")
                .map(|p| (PathBuf::from(p), "GOOGLE_APPLICATION_CREDENTIALS")),
        };
        if let Some((path, origin)) = explicit {
            return load_credentials(&path, origin, &self.instance).map(AuthSource::File);
        }
        if let Some(adc) = self.adc_path()
            && adc.is_file()
        {
            return load_credentials(
                &adc,
                "gcloud's application-default credentials",
                &self.instance,
            )
            .map(AuthSource::File);
        }
        Ok(AuthSource::Metadata(
            self.env("GCE_METADATA_HOST")
                .unwrap_or_else(|| METADATA_HOST.to_string()),
        ))
    }

    /// gcloud's application-default credentials file.
    fn adc_path(&self) -> Option<PathBuf> {
        let dir = match self.env("CLOUDSDK_CONFIG") {
            Some(d) => PathBuf::from(d),
            None => self.home.as_ref()?.join(".config").join("gcloud"),
        };
        Some(dir.join("application_default_credentials.json"))
    }

    async fn fetch_token(&self, source: &AuthSource) -> Result<CachedToken, ProviderError> {
        match source {
            AuthSource::EnvToken(t) => Ok(CachedToken {
                token: t.clone(),
                refresh_at: None,
            }),
            AuthSource::File(file) => match &file.creds {
                Credentials::ServiceAccount(sa) => self.jwt_bearer(sa, &file.path).await,
                Credentials::AuthorizedUser(user) => self.refresh_grant(user, &file.path).await,
            },
            AuthSource::Metadata(host) => self.metadata_token(host).await,
        }
    }

    /// The OAuth JWT-bearer grant with a service-account key.
    async fn jwt_bearer(
        &self,
        sa: &ServiceAccountKey,
        path: &Path,
    ) -> Result<CachedToken, ProviderError> {
        let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes()).map_err(|_| {
            ProviderError::new(
                ErrorKind::Config,
                format!(
                    "provider `{}`: `private_key` in {} is not an RSA private key in PEM form",
                    self.instance,
                    path.display()
                ),
            )
            .help("download a new JSON key: `gcloud iam service-accounts keys create key.json --iam-account EMAIL`")
        })?;
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = JwtClaims {
            iss: &sa.client_email,
            scope: SCOPE,
            aud: &sa.token_uri,
            iat,
            exp: iat + JWT_LIFETIME_SECS,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = sa.private_key_id.clone();
        let assertion =
            Zeroizing::new(jsonwebtoken::encode(&header, &claims, &key).map_err(|_| {
                ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "provider `{}`: cannot sign a JWT with the key in {}",
                        self.instance,
                        path.display()
                    ),
                )
            })?);
        let form = [
            ("grant_type", JWT_BEARER_GRANT),
            ("assertion", assertion.as_str()),
        ];
        let what = format!(
            "service account {} (key {})",
            sa.client_email,
            path.display()
        );
        self.token_request(&sa.token_uri, &form, &what).await
    }

    /// The OAuth refresh-token grant with user credentials.
    async fn refresh_grant(
        &self,
        user: &AuthorizedUser,
        path: &Path,
    ) -> Result<CachedToken, ProviderError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", user.client_id.as_str()),
            ("client_secret", user.client_secret.as_str()),
            ("refresh_token", user.refresh_token.as_str()),
        ];
        let what = format!("user credentials {}", path.display());
        self.token_request(&user.token_uri, &form, &what).await
    }

    /// Posts a token request form and reads `{"access_token","expires_in"}`.
    async fn token_request(
        &self,
        uri: &str,
        form: &[(&str, &str)],
        what: &str,
    ) -> Result<CachedToken, ProviderError> {
        let req = self.client.post(uri).form(form);
        let (status, body) = send(req).await.map_err(|e| {
            send_error(
                &e,
                &format!(
                    "provider `{}`: cannot reach the token endpoint {uri} for {what}",
                    self.instance
                ),
            )
        })?;
        if !status.is_success() {
            let reason = oauth_reason(&body, status, form);
            let e = ProviderError::new(
                ErrorKind::Auth,
                format!(
                    "provider `{}`: the token endpoint {uri} refused {what}: {reason}",
                    self.instance
                ),
            );
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                ProviderError {
                    kind: ErrorKind::Network,
                    ..e
                }
                .transient()
            } else {
                e.help(format!(
                    "the credentials may be revoked or expired: create new ones, or {AUTH_WAYS}"
                ))
            });
        }
        self.token_answer(&body, &format!("the token endpoint {uri}"))
    }

    /// Asks the metadata server for the default service account's token.
    async fn metadata_token(&self, host: &str) -> Result<CachedToken, ProviderError> {
        let url = format!("http://{host}{METADATA_TOKEN_PATH}");
        let req = self
            .client
            .get(&url)
            .header("Metadata-Flavor", "Google")
            .timeout(METADATA_TIMEOUT.min(self.timeout));
        let (status, body) = send(req).await.map_err(|e| {
            ProviderError::new(
                ErrorKind::Auth,
                format!(
                    "provider `{}`: no Google credentials found: GOOGLE_ACCESS_TOKEN and GOOGLE_APPLICATION_CREDENTIALS are not set, there is no `credentials` option nor application-default credentials file{}, and the metadata server at {host} did not answer ({})",
                    self.instance,
                    self.adc_path().map(|p| format!(" ({})", p.display())).unwrap_or_default(),
                    root_cause(&e)
                ),
            )
            .help(AUTH_WAYS)
        })?;
        if !status.is_success() {
            return Err(ProviderError::new(
                ErrorKind::Auth,
                format!(
                    "provider `{}`: the metadata server at {host} gave no token (HTTP {status}): {}",
                    self.instance,
                    quote(&String::from_utf8_lossy(&body))
                ),
            )
            .help(format!("attach a service account to the VM, or {AUTH_WAYS}")));
        }
        self.token_answer(&body, &format!("the metadata server at {host}"))
    }

    /// Reads a token answer.
    fn token_answer(&self, body: &[u8], from: &str) -> Result<CachedToken, ProviderError> {
        let answer: TokenResponse = serde_json::from_slice(body).map_err(|_| {
            ProviderError::new(
                ErrorKind::Auth,
                format!(
                    "provider `{}`: {from} answered without an `access_token`",
                    self.instance
                ),
            )
        })?;
        let lifetime = answer.expires_in.unwrap_or(JWT_LIFETIME_SECS);
        let margin = REFRESH_MARGIN_SECS.min(lifetime / 2);
        Ok(CachedToken {
            token: Zeroizing::new(answer.access_token),
            refresh_at: Instant::now().checked_add(Duration::from_secs(lifetime - margin)),
        })
    }

    // ---- provider operations ----

    async fn read_item(&self, item: &Item) -> Result<SecretValue, ProviderError> {
        let r = self.parse(item)?;
        self.access(&r).await
    }

    async fn write_item(&self, item: &Item, value: &SecretValue) -> Result<(), ProviderError> {
        let r = self.parse(item)?;
        if r.version_named {
            return Err(ProviderError::new(
                ErrorKind::BadReference,
                format!(
                    "{}: a write adds a new version and cannot target version `{}`",
                    r.who(&self.instance),
                    r.version
                ),
            )
            .help(format!(
                "write to `projects/{}/secrets/{}` without a version",
                r.project, r.secret
            )));
        }
        match &item.field {
            None => self.add_version(&r, value.expose_bytes()).await,
            Some(field) => {
                let merged = self.merge_field(&r, field, value).await?;
                self.add_version(&r, &merged).await
            }
        }
    }

    /// The latest JSON object with `field` set to `value`.
    async fn merge_field(
        &self,
        r: &SecretRef,
        field: &str,
        value: &SecretValue,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let current = match self.access(r).await {
            Ok(v) => Some(v),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut object = match &current {
            None => serde_json::Map::new(),
            Some(v) => {
                match v.expose_str().and_then(|s| serde_json::from_str(s).ok()) {
                    Some(serde_json::Value::Object(map)) => map,
                    _ => {
                        return Err(ProviderError::new(
                        ErrorKind::Field,
                        format!("{}: cannot set field `{field}`: the stored value is not a JSON object", r.who(&self.instance)),
                    )
                    .help("remove `field` to replace the whole value"));
                    }
                }
            }
        };
        let text = value.expose_str().ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Field,
                format!(
                    "{}: cannot set field `{field}`: the value is not UTF-8 text",
                    r.who(&self.instance)
                ),
            )
        })?;
        object.insert(
            field.to_string(),
            serde_json::Value::String(text.to_string()),
        );
        serde_json::to_vec(&object)
            .map(Zeroizing::new)
            .map_err(|e| ProviderError::new(ErrorKind::Backend, format!("cannot encode JSON: {e}")))
    }

    async fn delete_item(&self, item: &Item) -> Result<(), ProviderError> {
        let r = self.parse(item)?;
        if item.field.is_some() {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!("{}: cannot delete one field of a secret version", r.who(&self.instance)),
            )
            .help("write the object without that field with `kz put`, or remove `field` to destroy the whole version"));
        }
        self.destroy(&r).await
    }
}

impl Provider for GcpProvider {
    fn credentials(&self) -> Vec<SecretValue> {
        self.sent
            .lock()
            .map(|sent| sent.iter().map(|t| SecretValue::from_str_copy(t)).collect())
            .unwrap_or_default()
    }

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

    /// The `credentials` file or `GOOGLE_APPLICATION_CREDENTIALS`, and gcloud's configuration
    /// directory (application-default credentials, gcloud's own tokens).
    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.credentials.iter().cloned().collect();
        if let Some(p) = self.env("GOOGLE_APPLICATION_CREDENTIALS") {
            out.push(PathBuf::from(p));
        }
        if let Some(dir) = self.adc_path().as_deref().and_then(Path::parent) {
            out.push(dir.to_path_buf());
        }
        out
    }

    fn describe(&self) -> Description {
        let auth = match self.find_source() {
            Ok(source) => source.describe(),
            Err(e) => format!("unusable: {e}"),
        };
        Description {
            instance: self.instance.clone(),
            type_name: "gcp",
            details: vec![
                (
                    "project".to_string(),
                    self.project
                        .clone()
                        .unwrap_or_else(|| "(none: references name it)".to_string()),
                ),
                ("endpoint".to_string(), self.endpoint.clone()),
                ("auth".to_string(), auth),
            ],
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { self.token().await.map(drop) })
    }
}

// ---- references ----

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SecretRef {
    project: String,
    secret: String,
    version: String,
    /// A version was named (in the reference or the `version` parameter).
    version_named: bool,
}

impl SecretRef {
    fn parse(
        reference: &str,
        version_param: Option<&str>,
        default_project: Option<&str>,
        instance: &str,
    ) -> Result<Self, ProviderError> {
        let bad = |why: &str| {
            ProviderError::new(
                ErrorKind::BadReference,
                format!("`{reference}` is not a Secret Manager reference (provider `{instance}`): {why}"),
            )
            .help("write `projects/PROJECT/secrets/NAME`, `projects/PROJECT/secrets/NAME/versions/N`, or `NAME` with `project = \"…\"` on the provider")
        };
        let parts: Vec<&str> = reference.split('/').collect();
        let (project, secret, in_ref) = match parts.as_slice() {
            ["projects", p, "secrets", s] => (*p, *s, None),
            ["projects", p, "secrets", s, "versions", v] => (*p, *s, Some(*v)),
            [""] => return Err(bad("the reference is empty")),
            [s] => match default_project {
                Some(p) => (p, *s, None),
                None => {
                    return Err(ProviderError::new(
                        ErrorKind::BadReference,
                        format!("`{reference}` is a short secret name, but provider `{instance}` has no `project` option"),
                    )
                    .help(format!("set `project = \"my-project\"` on [providers.{instance}], or write `projects/PROJECT/secrets/{reference}`")));
                }
            },
            _ => {
                return Err(bad(
                    "expected `projects/P/secrets/S[/versions/V]` or a short name",
                ));
            }
        };
        if !valid_project(project) {
            return Err(bad(&format!("`{project}` is not a project id")));
        }
        if !valid_secret_id(secret) {
            return Err(bad(&format!(
                "`{secret}` is not a secret id (1-255 letters, digits, `-` and `_`)"
            )));
        }
        let version = match (in_ref, version_param) {
            (Some(v), Some(p)) if v != p => {
                return Err(bad(&format!(
                    "the reference names version `{v}` but the `version` parameter says `{p}`"
                )));
            }
            (Some(v), _) | (None, Some(v)) => Some(v),
            (None, None) => None,
        };
        if let Some(v) = version
            && !valid_version(v)
        {
            return Err(bad(&format!(
                "`{v}` is not a version (a number, `latest` or an alias)"
            )));
        }
        Ok(Self {
            project: project.to_string(),
            secret: secret.to_string(),
            version: version.unwrap_or("latest").to_string(),
            version_named: version.is_some_and(|v| v != "latest"),
        })
    }

    fn secret_path(&self) -> String {
        format!("projects/{}/secrets/{}", self.project, self.secret)
    }

    fn version_path(&self) -> String {
        format!("{}/versions/{}", self.secret_path(), self.version)
    }

    /// "secret `projects/…/versions/V` (provider `name`)".
    fn who(&self, instance: &str) -> String {
        format!("secret `{}` (provider `{instance}`)", self.version_path())
    }
}

fn param<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Project ids (`acme-prod`), numbers, and domain-scoped ids (`example.com:proj`).
fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
}

fn valid_secret_id(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn valid_version(v: &str) -> bool {
    (1..=63).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

// ---- payloads ----

#[derive(Deserialize)]
struct AccessResponse {
    #[serde(default)]
    payload: PayloadIn,
}

#[derive(Deserialize, Default)]
struct PayloadIn {
    #[serde(default)]
    data: String,
    /// An int64, which Google's JSON writes as a string.
    #[serde(rename = "dataCrc32c", default)]
    data_crc32c: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct AddVersionRequest<'a> {
    payload: PayloadOut<'a>,
}

#[derive(Serialize)]
struct PayloadOut<'a> {
    data: &'a str,
    #[serde(rename = "dataCrc32c")]
    data_crc32c: &'a str,
}

#[derive(Deserialize)]
struct VersionMeta {
    name: String,
    #[serde(default)]
    state: String,
}

impl VersionMeta {
    /// The version number at the end of `name`.
    fn number(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or_default()
    }
}

/// Decodes the base64 payload and checks its CRC32C.
fn decode_payload(
    payload: PayloadIn,
    r: &SecretRef,
    instance: &str,
) -> Result<SecretValue, ProviderError> {
    let encoded = Zeroizing::new(payload.data);
    let bytes = B64.decode(encoded.as_bytes()).map_err(|_| {
        ProviderError::new(
            ErrorKind::Backend,
            format!("{}: the payload is not valid base64", r.who(instance)),
        )
    })?;
    let value = SecretValue::from_bytes(bytes);
    let Some(expected) = payload.data_crc32c else {
        return Ok(value);
    };
    let expected = match &expected {
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    };
    if expected == Some(u64::from(crc32c(value.expose_bytes()))) {
        Ok(value)
    } else {
        Err(ProviderError::new(
            ErrorKind::Backend,
            format!("{}: corrupted payload: its CRC32C does not match `dataCrc32c`", r.who(instance)),
        )
        .help("retry; if it persists, add a new version of the secret (the stored one may be damaged)")
        .transient())
    }
}

/// The CRC32C (Castagnoli) lookup table, reflected polynomial 0x82F63B78.
static CRC32C_TABLE: LazyLock<[u32; 256]> = LazyLock::new(|| {
    std::array::from_fn(|i| {
        let mut crc = u32::try_from(i).unwrap_or_default();
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
        crc
    })
});

/// CRC32C (Castagnoli) of `data`, as Secret Manager's `dataCrc32c`.
pub fn crc32c(data: &[u8]) -> u32 {
    let table = &*CRC32C_TABLE;
    !data.iter().fold(!0u32, |crc, &b| {
        let index = usize::from((crc as u8) ^ b);
        (crc >> 8) ^ table.get(index).copied().unwrap_or_default()
    })
}

// ---- auth types ----

/// Where the access token comes from.
enum AuthSource {
    EnvToken(Zeroizing<String>),
    File(CredentialsFile),
    Metadata(String),
}

impl AuthSource {
    /// A line for `kz doctor` (never the token).
    fn describe(&self) -> String {
        match self {
            AuthSource::EnvToken(_) => "GOOGLE_ACCESS_TOKEN (a ready access token)".to_string(),
            AuthSource::File(f) => match &f.creds {
                Credentials::ServiceAccount(sa) => format!(
                    "service account {} (key {}, from {})",
                    sa.client_email,
                    f.path.display(),
                    f.origin
                ),
                Credentials::AuthorizedUser(_) => {
                    format!("user credentials {} (from {})", f.path.display(), f.origin)
                }
            },
            AuthSource::Metadata(host) => format!("the metadata server at {host}"),
        }
    }
}

/// A loaded credentials file.
struct CredentialsFile {
    path: PathBuf,
    origin: &'static str,
    creds: Credentials,
}

enum Credentials {
    ServiceAccount(ServiceAccountKey),
    AuthorizedUser(AuthorizedUser),
}

struct ServiceAccountKey {
    client_email: String,
    private_key: Zeroizing<String>,
    private_key_id: Option<String>,
    token_uri: String,
}

struct AuthorizedUser {
    client_id: String,
    client_secret: Zeroizing<String>,
    refresh_token: Zeroizing<String>,
    token_uri: String,
}

/// The file as written (converted at once into the zeroizing types above).
#[derive(Deserialize)]
#[serde(tag = "type")]
enum RawCredentials {
    #[serde(rename = "service_account")]
    ServiceAccount {
        client_email: String,
        private_key: String,
        #[serde(default)]
        private_key_id: Option<String>,
        #[serde(default)]
        token_uri: Option<String>,
    },
    #[serde(rename = "authorized_user")]
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
        #[serde(default)]
        token_uri: Option<String>,
    },
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type", default)]
    ty: Option<String>,
}

/// Reads a credentials file. Parse errors give a position, never the file's text.
fn load_credentials(
    path: &Path,
    origin: &'static str,
    instance: &str,
) -> Result<CredentialsFile, ProviderError> {
    let shown = path.display();
    let text = std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        ProviderError::new(
            ErrorKind::Config,
            format!("provider `{instance}`: cannot read the credentials file {shown} (from {origin}): {e}"),
        )
        .help("point it at an existing JSON key file, or unset it")
    })?;
    let bad = |what: String| {
        ProviderError::new(
            ErrorKind::Config,
            format!("provider `{instance}`: the credentials file {shown} (from {origin}) {what}"),
        )
    };
    let ty = serde_json::from_slice::<TypeOnly>(&text)
        .map_err(|e| {
            bad(format!(
                "is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?
        .ty
        .unwrap_or_default();
    if ty != "service_account" && ty != "authorized_user" {
        return Err(bad(format!("has type `{ty}`, which kz does not support"))
            .help("use a service-account key (`\"type\": \"service_account\"`) or user credentials from `gcloud auth application-default login` (`\"type\": \"authorized_user\"`)"));
    }
    let raw: RawCredentials = serde_json::from_slice(&text).map_err(|e| {
        bad(format!(
            "is not a complete `{ty}` file (line {}, column {}; a field is missing or of the wrong type)",
            e.line(),
            e.column()
        ))
    })?;
    let creds = match raw {
        RawCredentials::ServiceAccount {
            client_email,
            private_key,
            private_key_id,
            token_uri,
        } => Credentials::ServiceAccount(ServiceAccountKey {
            client_email,
            private_key: Zeroizing::new(private_key),
            private_key_id,
            token_uri: token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
        }),
        RawCredentials::AuthorizedUser {
            client_id,
            client_secret,
            refresh_token,
            token_uri,
        } => Credentials::AuthorizedUser(AuthorizedUser {
            client_id,
            client_secret: Zeroizing::new(client_secret),
            refresh_token: Zeroizing::new(refresh_token),
            token_uri: token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
        }),
    };
    Ok(CredentialsFile {
        path: path.to_path_buf(),
        origin,
        creds,
    })
}

#[derive(Serialize)]
struct JwtClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A token and when to replace it (`None`: never, for `GOOGLE_ACCESS_TOKEN`).
struct CachedToken {
    token: Zeroizing<String>,
    refresh_at: Option<Instant>,
}

impl CachedToken {
    fn is_fresh(&self) -> bool {
        self.refresh_at.is_none_or(|at| Instant::now() < at)
    }
}

// ---- HTTP helpers ----

/// One client for every request; proxies only from the build context's environment.
fn build_client(
    inst: &ProviderInstance,
    getenv: &GetEnv,
) -> Result<reqwest::Client, ProviderError> {
    let var = |a: &str, b: &str| getenv(a).or_else(|| getenv(b)).filter(|v| !v.is_empty());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(inst.timeout())
        .no_proxy();
    if let Some(proxy) = var("HTTPS_PROXY", "https_proxy") {
        // The proxy URL may carry a password: it is never shown.
        let proxy = reqwest::Proxy::https(proxy.as_str())
            .map_err(|_| {
                ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "provider `{}`: HTTPS_PROXY is not a valid proxy URL",
                        inst.name
                    ),
                )
                .help("fix or unset HTTPS_PROXY")
            })?
            .no_proxy(var("NO_PROXY", "no_proxy").and_then(|n| reqwest::NoProxy::from_string(&n)));
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|e| {
        ProviderError::new(
            ErrorKind::Config,
            format!(
                "provider `{}`: cannot set up the HTTP client: {e}",
                inst.name
            ),
        )
    })
}

/// Sends a request and reads the whole answer.
async fn send(
    req: RequestBuilder,
) -> Result<(reqwest::StatusCode, Zeroizing<Vec<u8>>), reqwest::Error> {
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    Ok((status, Zeroizing::new(body.to_vec())))
}

/// A failed request: `Timeout` when the limit ran out, else a transient `Network` error.
fn send_error(e: &reqwest::Error, what: &str) -> ProviderError {
    if e.is_timeout() {
        ProviderError::new(ErrorKind::Timeout, format!("{what}: no answer in time"))
            .help("raise `timeout` on the provider, or check the network and `endpoint_url`")
    } else {
        ProviderError::new(ErrorKind::Network, format!("{what}: {}", root_cause(e)))
            .help("check the network and `endpoint_url` (default https://secretmanager.googleapis.com)")
            .transient()
    }
}

/// The innermost cause of an error (reqwest's own message only names the URL).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Google's error body: `{"error":{"code":…,"message":"…","status":"…"}}`.
#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    error: GoogleErrorBody,
}

#[derive(Deserialize, Default)]
struct GoogleErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
}

/// Maps a Secret Manager error answer to a typed error.
fn api_error(status: u16, body: &[u8], r: &SecretRef, instance: &str) -> ProviderError {
    let g = serde_json::from_slice::<GoogleError>(body)
        .unwrap_or_default()
        .error;
    let who = r.who(instance);
    let detail = if g.message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("{} (HTTP {status} {})", quote(&g.message), g.status)
    };
    let code = g.status.as_str();
    if status == 404 || code == "NOT_FOUND" {
        ProviderError::not_found(format!("{who}: not found: {detail}")).help(format!(
            "check the project, secret and version: `gcloud secrets versions list {} --project {}`",
            r.secret, r.project
        ))
    } else if status == 403 || code == "PERMISSION_DENIED" {
        ProviderError::new(ErrorKind::Auth, format!("{who}: permission denied: {detail}")).help(
            "grant the caller `roles/secretmanager.secretAccessor` (reads) or `roles/secretmanager.admin` (writes, deletes) on the secret or project, or use other credentials",
        )
    } else if status == 401 || code == "UNAUTHENTICATED" {
        ProviderError::new(
            ErrorKind::Auth,
            format!("{who}: the access token was refused: {detail}"),
        )
        .help(format!(
            "refresh GOOGLE_ACCESS_TOKEN or the credentials; {AUTH_WAYS}"
        ))
    } else if code == "FAILED_PRECONDITION" && g.message.contains("DESTROYED") {
        ProviderError::not_found(format!("{who}: the version is destroyed: {detail}"))
            .help("read another version, or add a new one with `kz put`")
    } else if code == "FAILED_PRECONDITION" {
        ProviderError::new(ErrorKind::Backend, format!("{who}: the version cannot be read: {detail}"))
            .help(format!(
                "a disabled version can be enabled with `gcloud secrets versions enable {} --secret {} --project {}`, or pick another version",
                r.version, r.secret, r.project
            ))
    } else if status == 429 || status >= 500 {
        ProviderError::new(
            ErrorKind::Network,
            format!("{who}: Secret Manager is unavailable: {detail}"),
        )
        .help("Secret Manager is throttling or failing; kz retries, try again later")
        .transient()
    } else {
        ProviderError::new(
            ErrorKind::Backend,
            format!("{who}: Secret Manager refused the request: {detail}"),
        )
    }
}

/// The reason an OAuth token endpoint gave (`error: error_description`), with any credential
/// sent in `form` removed.
fn oauth_reason(body: &[u8], status: reqwest::StatusCode, form: &[(&str, &str)]) -> String {
    #[derive(Deserialize)]
    struct OAuthError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_description: String,
    }
    let mut reason = match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) if !e.error.is_empty() => {
            format!("{}: {} (HTTP {status})", e.error, e.error_description)
        }
        _ => format!("HTTP {status}"),
    };
    for (key, sent) in form {
        if *key != "grant_type" && *key != "client_id" && !sent.is_empty() {
            reason = reason.replace(sent, "****");
        }
    }
    quote(&reason)
}

/// Backend text for a message: at most [`MAX_QUOTED`] characters, control characters removed.
fn quote(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = cleaned.trim();
    match trimmed.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}…", trimmed.get(..cut).unwrap_or(trimmed)),
        None => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_known_vectors() {
        // RFC 3720 B.4 and the common check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn references_parse() {
        let r = SecretRef::parse("projects/p1/secrets/s", None, None, "g").unwrap();
        assert_eq!(r.version_path(), "projects/p1/secrets/s/versions/latest");
        assert!(!r.version_named);
        let r = SecretRef::parse("s", Some("3"), Some("p2"), "g").unwrap();
        assert_eq!(r.version_path(), "projects/p2/secrets/s/versions/3");
        assert!(r.version_named);
        let r = SecretRef::parse("projects/p/secrets/s/versions/2", Some("2"), None, "g").unwrap();
        assert_eq!(r.version, "2");
        for bad in [
            "",
            "projects/p/secrets",
            "a/b",
            "projects/p/secrets/s/versions/",
            "projects/p/secrets/s?x/versions/1",
            "projects//secrets/s",
        ] {
            let e = SecretRef::parse(bad, None, Some("p"), "g").unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadReference, "{bad}");
        }
        let e =
            SecretRef::parse("projects/p/secrets/s/versions/2", Some("3"), None, "g").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadReference);
        let e = SecretRef::parse("s", None, None, "g").unwrap_err();
        assert!(e.message.contains("`project`"), "{e}");
    }

    #[test]
    fn oauth_reason_removes_what_was_sent() {
        let body = br#"{"error":"invalid_grant","error_description":"bad assertion abc.def.ghi"}"#;
        let r = oauth_reason(
            body,
            reqwest::StatusCode::BAD_REQUEST,
            &[("grant_type", "x"), ("assertion", "abc.def.ghi")],
        );
        assert!(
            r.contains("invalid_grant") && !r.contains("abc.def.ghi"),
            "{r}"
        );
    }
}
