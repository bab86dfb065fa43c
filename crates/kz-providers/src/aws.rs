//! The `aws` provider (aliases `aws-sm`, `aws_secrets_manager`): AWS Secrets Manager and SSM
//! Parameter Store; and the `aws_sts` provider: temporary credentials from STS `AssumeRole`.
//! Both speak to AWS through the official AWS SDK for Rust.
//!
//! **References (`aws`):**
//! - `sm://ID` (a secret name or ARN; a bare reference with no scheme means `sm://`) reads the
//!   secret's current value. Parameters `version_stage` (e.g. `AWSPREVIOUS`) and `version_id`
//!   pick another version. `sm://ID#field` (or the entry's `field`) parses the value as a JSON
//!   object and returns that member; a missing member is a `Field` error listing the keys that
//!   exist, never the values. A `SecretBinary` is returned as raw bytes (binary-safe).
//! - `ssm://NAME` reads a Parameter Store parameter with decryption (`ssm:///app/db` for the
//!   name `/app/db`; `ssm://NAME:3` or `ssm://NAME:label` for a version or label selector).
//!   `#field` / `field` work as for `sm://`.
//!
//! A reference with another scheme, an empty name, characters AWS never accepts in a name, or a
//! version parameter on an `ssm://` reference is a `BadReference` before any call.
//!
//! **Batching:** one batch may mix `sm://` and `ssm://` references. Several `sm://` references
//! without a version parameter go through `BatchGetSecretValue` (20 ids per call; an id that comes
//! back in neither the values nor the errors is not found; if the caller may not call
//! `BatchGetSecretValue` the ids are read one by one with `GetSecretValue`). Several `ssm://`
//! references go through `GetParameters` (10 names per call, `WithDecryption`; names listed in
//! `InvalidParameters` are not found). A single reference, and any `sm://` reference with
//! `version_stage`/`version_id`, uses `GetSecretValue` / `GetParameter`. All calls of one batch
//! run concurrently. [`Provider::max_batch`] is 20.
//!
//! **Options** (both types): `region`, `profile`, `endpoint_url`. They are handed to
//! `aws_config::defaults(BehaviorVersion::latest())`; whatever is not set comes from the SDK's
//! usual sources (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, `~/.aws/config`, ...). The SDK
//! configuration is loaded once per provider, on first use, and its clients are reused.
//!
//! **Auth:** the SDK's full default credential chain: environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), shared config and credentials files (with the
//! `profile` option or `AWS_PROFILE`), SSO (`aws sso login`), `credential_process`, web identity,
//! ECS and EC2 instance metadata. **Unlike other providers, the SDK reads the real process
//! environment (and `~/.aws`), not kz's injected `getenv`**: the chain has many sources and the
//! SDK gives no supported way to redirect them. The build context's `getenv` is only used to
//! show where the region and endpoint come from in `describe()`.
//!
//! **Retries and timeouts:** the SDK retries by itself, so kz does not wrap it in a second retry
//! loop: the SDK is configured with the standard retry mode, at most 3 attempts, an operation
//! timeout equal to the instance's `timeout` (all attempts included) and a connect timeout of at
//! most 5 s; every error is returned as not transient so the engine does not retry again.
//!
//! **Errors:** `ResourceNotFoundException`, `ParameterNotFound`, `ParameterVersionNotFound` and
//! `InvalidParameters` → `NotFound`; `AccessDenied*`, `UnrecognizedClient*`, `InvalidSignature*`,
//! `ExpiredToken*`, `InvalidClientTokenId`, `SignatureDoesNotMatch` and missing credentials →
//! `Auth` (the help names the credential chain, `aws sso login` and `AWS_PROFILE`); connection
//! failures → `Network`; the SDK's timeouts → `Timeout`; `DecryptionFailure` → `Backend`; no
//! region → `Config`. Messages name the reference, the provider instance, the AWS operation and
//! the service's error code and message; never a value or a credential (for writes, anything in
//! the service's message that quotes the written value is removed).
//!
//! **Write** (`kz put`): `sm://` → `PutSecretValue` (text as `SecretString`, other bytes as
//! `SecretBinary`); when the secret does not exist it is created with `CreateSecret` (by name;
//! an ARN that does not exist is `NotFound`). With `field`, a read-modify-write: the current
//! value must be a JSON object (else a `Field` error), the member is set and the other members
//! are kept; a missing secret is created as `{"field": "value"}`. `ssm://` → `PutParameter` of
//! type `SecureString` with `Overwrite` (text only), `field` handled the same way. Version
//! parameters are refused on writes.
//!
//! **Delete** (`kz rm --purge`): `sm://` → `DeleteSecret` with the default recovery window (the
//! secret can be restored with `aws secretsmanager restore-secret` for 30 days); `ssm://` →
//! `DeleteParameter`. With `field`, only that member is removed (read-modify-write) and the
//! secret or parameter is kept.
//!
//! **`aws_sts`:** the reference is a role ARN (or the `role_arn` parameter when the reference
//! is empty). Parameters `duration_seconds` (integer or string, 900–43200, default 900),
//! `session_name` (default `keyzero`), `external_id`. The value is the JSON text
//! `{"access_key_id","secret_access_key","session_token","expiration"}` (`expiration` in RFC 3339);
//! with `format = "env"` the result is instead the three variables `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (parameter `prefix` prepends a string to the
//! three names). Malformed parameters are `BadReference` before any call. Not writable; one role
//! per call. `check()` (both types) calls `sts:GetCallerIdentity`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_sts::primitives::DateTimeFormat;
use kz_config::ProviderInstance;
use kz_resolve::{
    BoxFuture, Description, ErrorKind, Item, Provider, ProviderError, join_all, json_field,
};
use kz_secret::{Resolved, SecretValue};
use serde::Serialize;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::{BuildContext, GetEnv};

/// Ids per `BatchGetSecretValue` call (the API's limit).
const SM_BATCH: usize = 20;
/// Names per `GetParameters` call (the API's limit).
const SSM_BATCH: usize = 10;
/// Attempts per AWS call, first one included (the SDK's standard retry mode).
const MAX_ATTEMPTS: u32 = 3;
/// Longest TCP connect wait.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pages followed for one `BatchGetSecretValue` id list (one is the norm).
const MAX_PAGES: usize = 10;
/// Longest reference or name accepted.
const MAX_NAME: usize = 2048;
/// STS session duration bounds, in seconds.
const MIN_DURATION: i32 = 900;
/// See [`MIN_DURATION`].
const MAX_DURATION: i32 = 43_200;
/// The default STS session duration.
const DEFAULT_DURATION: i32 = 900;
/// The default STS session name.
const DEFAULT_SESSION: &str = "keyzero";
/// Where the SDK looks for credentials, for `Auth` errors.
const CREDENTIAL_HELP: &str = "kz uses the AWS SDK's standard credential chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), a profile in ~/.aws/config and ~/.aws/credentials (the provider's `profile` option or AWS_PROFILE), SSO (run `aws sso login --profile NAME`), web identity, ECS or EC2 instance metadata; `aws sts get-caller-identity` shows which identity is found";
/// Where the SDK looks for a region, for `Config` errors.
const REGION_HELP: &str = "set `region = \"us-east-1\"` (for example) on the provider, or AWS_REGION, or a `region` in the AWS profile";

// ---------------------------------------------------------------------------------------------
// Settings shared by both providers
// ---------------------------------------------------------------------------------------------

/// The instance's SDK settings.
#[derive(Clone)]
struct Settings {
    instance: String,
    type_name: &'static str,
    region: Option<String>,
    profile: Option<String>,
    endpoint: Option<String>,
    timeout: Duration,
    getenv: GetEnv,
    home: Option<PathBuf>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("instance", &self.instance)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Settings {
    fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let nonempty = |name: &str| {
            inst.opt_str(name)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let endpoint = nonempty("endpoint_url").map(|e| e.trim_end_matches('/').to_string());
        if let Some(e) = &endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!(
                    "provider `{}`: `endpoint_url` must be an http(s) URL, not `{e}`",
                    inst.name
                ),
            )
            .help("remove it to use AWS's own endpoint for the region (or set AWS_ENDPOINT_URL)"));
        }
        let region = nonempty("region");
        if let Some(r) = &region
            && !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!(
                    "provider `{}`: `region = \"{r}\"` is not an AWS region",
                    inst.name
                ),
            )
            .help("use a region code such as `us-east-1` or `eu-west-3`"));
        }
        Ok(Self {
            instance: inst.name.clone(),
            type_name: inst.ty.name,
            region,
            profile: nonempty("profile"),
            endpoint,
            timeout: inst.timeout(),
            getenv: ctx.getenv.clone(),
            home: ctx.home.clone(),
        })
    }

    /// The files the SDK reads credentials from: `~/.aws` (shared credentials and config, SSO
    /// and CLI caches), `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE` and
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`.
    fn sources(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.home.iter().map(|h| h.join(".aws")).collect();
        for var in [
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            if let Some(p) = self.env(var) {
                out.push(match (p.strip_prefix("~/"), &self.home) {
                    (Some(rest), Some(h)) => h.join(rest),
                    _ => PathBuf::from(p),
                });
            }
        }
        out
    }

    /// Loads the SDK configuration (no network I/O until a client sends a request).
    async fn load(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(self.timeout)
                    .connect_timeout(self.timeout.min(CONNECT_TIMEOUT))
                    .build(),
            );
        if let Some(r) = &self.region {
            loader = loader.region(Region::new(r.clone()));
        }
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p.clone());
        }
        if let Some(e) = &self.endpoint {
            loader = loader.endpoint_url(e.clone());
        }
        loader.load().await
    }

    fn env(&self, name: &str) -> Option<String> {
        (self.getenv)(name).filter(|v| !v.is_empty())
    }

    /// Where requests go, for messages.
    fn endpoint_label(&self) -> String {
        if let Some(e) = &self.endpoint {
            return e.clone();
        }
        if let Some(e) = self.env("AWS_ENDPOINT_URL") {
            return format!("{e} (AWS_ENDPOINT_URL)");
        }
        match &self.region {
            Some(r) => format!("AWS's endpoint in {r}"),
            None => "AWS's endpoint for the configured region".to_string(),
        }
    }

    fn details(&self) -> Vec<(String, String)> {
        let region = match &self.region {
            Some(r) => r.clone(),
            None => match self
                .env("AWS_REGION")
                .or_else(|| self.env("AWS_DEFAULT_REGION"))
            {
                Some(r) => format!("{r} (AWS_REGION)"),
                None => "from the AWS profile or instance metadata".to_string(),
            },
        };
        let profile = match &self.profile {
            Some(p) => p.clone(),
            None => self
                .env("AWS_PROFILE")
                .map_or_else(|| "default".to_string(), |p| format!("{p} (AWS_PROFILE)")),
        };
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => self.env("AWS_ENDPOINT_URL").map_or_else(
                || "AWS's endpoint for the region".to_string(),
                |e| format!("{e} (AWS_ENDPOINT_URL)"),
            ),
        };
        vec![
            ("region".to_string(), region),
            ("profile".to_string(), profile),
            ("endpoint".to_string(), endpoint),
            (
                "credentials".to_string(),
                "the AWS SDK's default chain (env, profile, SSO, web identity, ECS, IMDS)"
                    .to_string(),
            ),
        ]
    }

    /// Turns an SDK failure into a typed error naming `who` and the operation.
    fn error<E>(&self, err: &SdkError<E>, service: &str, op: &str, who: &str) -> ProviderError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let head = format!("{who}: {service} {op} failed");
        if let SdkError::ServiceError(_) = err {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let (code, message) = match err.code() {
                Some(code) => (
                    code.to_string(),
                    err.message().unwrap_or("no message").to_string(),
                ),
                // Not the protocol's error shape (an XML error from a JSON service, a proxy):
                // take `<Code>`/`<Message>` when present, else the HTTP status.
                None => {
                    let body = err
                        .raw_response()
                        .and_then(|r| r.body().bytes())
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    match xml_tag(&body, "Code") {
                        Some(code) => (
                            code,
                            xml_tag(&body, "Message").unwrap_or_else(|| "no message".to_string()),
                        ),
                        None => (
                            format!("HTTP {}", status.unwrap_or_default()),
                            "the service's error could not be read".to_string(),
                        ),
                    }
                }
            };
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            let e = service_error(&code, &format!("{head}: {code}: {message}"), service);
            return if e.kind == ErrorKind::Backend && matches!(status, Some(401 | 403)) {
                ProviderError {
                    kind: ErrorKind::Auth,
                    ..e
                }
                .help(CREDENTIAL_HELP)
            } else {
                e
            };
        }
        let chain = chain_text(err);
        let lower = chain.to_ascii_lowercase();
        match err {
            SdkError::TimeoutError(_) => ProviderError::new(
                ErrorKind::Timeout,
                format!(
                    "{head}: no answer from {} within {} ({MAX_ATTEMPTS} attempts at most)",
                    self.endpoint_label(),
                    humantime::format_duration(self.timeout)
                ),
            )
            .help("check the network and `endpoint_url`, or raise the provider's `timeout`"),
            SdkError::DispatchFailure(d) if d.is_timeout() => ProviderError::new(
                ErrorKind::Timeout,
                format!("{head}: {} timed out: {chain}", self.endpoint_label()),
            )
            .help("check the network and `endpoint_url`, or raise the provider's `timeout`"),
            _ if lower.contains("credential") || lower.contains("profile") => ProviderError::new(
                ErrorKind::Auth,
                format!("{head}: no usable AWS credentials: {chain}"),
            )
            .help(CREDENTIAL_HELP),
            _ if lower.contains("region") => ProviderError::new(
                ErrorKind::Config,
                format!("{head}: no AWS region is configured: {chain}"),
            )
            .help(REGION_HELP),
            SdkError::DispatchFailure(_) => ProviderError::new(
                ErrorKind::Network,
                format!("{head}: cannot reach {}: {chain}", self.endpoint_label()),
            )
            .help(
                "check the network, the `region` and `endpoint_url` options (and AWS_ENDPOINT_URL)",
            ),
            SdkError::ResponseError(_) => ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "{head}: unreadable answer from {}: {chain}",
                    self.endpoint_label()
                ),
            )
            .help("check `endpoint_url` (and AWS_ENDPOINT_URL): it must point at an AWS API"),
            _ => ProviderError::new(ErrorKind::Config, format!("{head}: {chain}")),
        }
    }
}

/// Maps an AWS error code (from a call or from a batch's error list).
fn service_error(code: &str, message: &str, service: &str) -> ProviderError {
    let auth = [
        "AccessDenied",
        "UnrecognizedClient",
        "InvalidSignature",
        "ExpiredToken",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "UnauthorizedOperation",
        "NotAuthorized",
        "AuthFailure",
    ];
    let throttle = [
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ThrottledException",
    ];
    match code {
        "ResourceNotFoundException"
        | "ParameterNotFound"
        | "ParameterVersionNotFound"
        | "InvalidParameters" => ProviderError::not_found(message).help(format!(
            "check the name or ARN and the region; list them with `aws {} {}`",
            cli_service(service),
            if service == "SSM" {
                "describe-parameters"
            } else {
                "list-secrets"
            }
        )),
        c if c.starts_with("AccessDenied") => ProviderError::new(ErrorKind::Auth, message).help(
            format!(
                "the AWS identity was found but is not allowed to do this: grant it the IAM permission, or use another identity. {CREDENTIAL_HELP}"
            ),
        ),
        c if auth.iter().any(|a| c.starts_with(a)) => ProviderError::new(ErrorKind::Auth, message)
            .help(format!(
                "the AWS credentials are wrong or expired (after SSO, run `aws sso login` again). {CREDENTIAL_HELP}"
            )),
        "DecryptionFailure" | "InvalidKeyId" => ProviderError::new(ErrorKind::Backend, message)
            .help("the KMS key cannot decrypt the value: check the identity's kms:Decrypt permission on the secret's key"),
        c if throttle.contains(&c) => ProviderError::new(ErrorKind::Backend, message).help(
            format!("AWS throttled the calls ({MAX_ATTEMPTS} attempts made): lower the provider's `concurrency`"),
        ),
        "InvalidRequestException" if service == "Secrets Manager" => {
            ProviderError::new(ErrorKind::Backend, message).help(
                "a secret scheduled for deletion can be restored with `aws secretsmanager restore-secret --secret-id ID`",
            )
        }
        _ => ProviderError::new(ErrorKind::Backend, message),
    }
}

fn cli_service(service: &str) -> &'static str {
    match service {
        "SSM" => "ssm",
        "STS" => "sts",
        _ => "secretsmanager",
    }
}

/// The text of the first `<tag>…</tag>` in `body` (at most 300 characters).
fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let rest = body.get(start..)?;
    let end = rest.find(&format!("</{tag}>"))?;
    let text = rest.get(..end)?.trim();
    (!text.is_empty()).then(|| text.chars().take(300).collect())
}

/// An error and its sources, joined with `: ` (repeated texts dropped).
fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Removes what a service message may quote of a written value: every occurrence of the values
/// themselves, and AWS's `Value '…' at 'x'` validation quotes.
fn redact(mut e: ProviderError, values: &[&SecretValue]) -> ProviderError {
    e.message = redact_text(&e.message, values);
    e.help = e.help.as_deref().map(|h| redact_text(h, values));
    e
}

/// See [`redact`].
fn redact_text(text: &str, values: &[&SecretValue]) -> String {
    let mut out = strip_quoted_values(text);
    for v in values {
        if let Some(s) = v.expose_str()
            && s.len() >= 4
        {
            out = out.replace(s, "<value>");
        }
    }
    out
}

/// `Value 'x' at 'y'` → `Value <redacted> at 'y'` (AWS validation messages quote the input).
fn strip_quoted_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("Value '") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let quoted = after.get("Value '".len()..).unwrap_or("");
        match quoted.find("' at ") {
            Some(end) => {
                out.push_str("Value <redacted>");
                rest = quoted.get(end + 1..).unwrap_or("");
            }
            None => {
                out.push_str("Value <redacted>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A parameter of an item.
fn param<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A parameter that is set and not blank.
fn param_set<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    param(item, name).map(str::trim).filter(|v| !v.is_empty())
}

fn bad_ref(message: String, help: &str) -> ProviderError {
    ProviderError::new(ErrorKind::BadReference, message).help(help)
}

// ---------------------------------------------------------------------------------------------
// References
// ---------------------------------------------------------------------------------------------

/// Which store a reference points at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Secrets Manager: a name or ARN and an optional version.
    Sm {
        id: String,
        stage: Option<String>,
        version_id: Option<String>,
    },
    /// Parameter Store: a name (possibly with a `:version` / `:label` selector).
    Ssm { name: String },
}

/// A parsed `aws` reference.
#[derive(Debug, Clone)]
struct AwsRef {
    target: Target,
    field: Option<String>,
}

impl AwsRef {
    fn parse(item: &Item, instance: &str) -> Result<Self, ProviderError> {
        let raw = item.reference.as_str();
        let syntax = "use sm://NAME-OR-ARN[#field] for Secrets Manager or ssm://NAME (ssm:///path/name for a name that starts with `/`) for Parameter Store";
        let (is_ssm, rest) = if let Some(r) = raw.strip_prefix("sm://") {
            (false, r)
        } else if let Some(r) = raw.strip_prefix("ssm://") {
            (true, r)
        } else if let Some((scheme, _)) = raw.split_once("://") {
            return Err(bad_ref(
                format!(
                    "`{raw}` (provider `{instance}`): unknown scheme `{scheme}://`; the aws provider knows sm:// and ssm://"
                ),
                syntax,
            ));
        } else {
            (false, raw)
        };
        let (name, fragment) = match rest.split_once('#') {
            Some((n, f)) => (n, Some(f)),
            None => (rest, None),
        };
        let field = match (fragment, item.field.as_deref()) {
            (Some(""), _) => {
                return Err(bad_ref(
                    format!("`{raw}` (provider `{instance}`): empty field after `#`"),
                    "write sm://NAME#FIELD, or remove the `#`",
                ));
            }
            (Some(a), Some(b)) if a != b => {
                return Err(bad_ref(
                    format!(
                        "`{raw}` (provider `{instance}`): the reference names field `{a}` but the entry's `field` is `{b}`"
                    ),
                    "keep one of them",
                ));
            }
            (a, b) => a.or(b).map(String::from),
        };
        let kind = if is_ssm { "parameter" } else { "secret" };
        if name.is_empty() {
            return Err(bad_ref(
                format!("`{raw}` (provider `{instance}`): no {kind} name"),
                syntax,
            ));
        }
        // Secret names: letters, digits and /_+=.@- (ARNs add `:`); parameter names: letters,
        // digits and _.-/ (selectors and ARNs add `:`).
        let allowed: &str = if is_ssm { "_.-/:" } else { "/_+=.@-:" };
        if name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || allowed.contains(c))
        {
            return Err(bad_ref(
                format!(
                    "`{raw}` (provider `{instance}`): `{name}` is not a valid {kind} name (allowed: letters, digits and {allowed})"
                ),
                syntax,
            ));
        }
        let stage = param_set(item, "version_stage");
        let version_id = param_set(item, "version_id");
        let target = if is_ssm {
            if stage.is_some() || version_id.is_some() {
                return Err(bad_ref(
                    format!(
                        "`{raw}` (provider `{instance}`): `version_stage` and `version_id` apply to sm:// secrets only"
                    ),
                    "for a Parameter Store version or label, write ssm://NAME:VERSION or ssm://NAME:LABEL",
                ));
            }
            Target::Ssm {
                name: name.to_string(),
            }
        } else {
            for (p, v) in [("version_stage", stage), ("version_id", version_id)] {
                if let Some(v) = v
                    && (v.len() > 256 || v.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return Err(bad_ref(
                        format!("`{raw}` (provider `{instance}`): `{p}` is not valid"),
                        "version_stage is a label such as AWSCURRENT or AWSPREVIOUS; version_id is a version's UUID",
                    ));
                }
            }
            Target::Sm {
                id: name.to_string(),
                stage: stage.map(String::from),
                version_id: version_id.map(String::from),
            }
        };
        Ok(Self { target, field })
    }

    /// The reference as shown in messages (without the field).
    fn label(&self) -> String {
        match &self.target {
            Target::Sm {
                id,
                stage,
                version_id,
            } => {
                let mut s = format!("sm://{id}");
                if let Some(st) = stage {
                    s.push_str(&format!(" (version_stage {st})"));
                }
                if let Some(v) = version_id {
                    s.push_str(&format!(" (version_id {v})"));
                }
                s
            }
            Target::Ssm { name } => format!("ssm://{name}"),
        }
    }
}

/// `secret `sm://x` (provider `aws`)`.
fn who(label: &str, instance: &str) -> String {
    let kind = if label.starts_with("ssm://") {
        "parameter"
    } else {
        "secret"
    };
    format!("{kind} `{label}` (provider `{instance}`)")
}

/// A Secrets Manager value: the string, else the bytes.
fn sm_value(
    string: Option<String>,
    binary: Option<Blob>,
    who: &str,
) -> Result<SecretValue, ProviderError> {
    match (string, binary) {
        (Some(s), _) => Ok(SecretValue::from_string(s)),
        (None, Some(b)) => Ok(SecretValue::from_bytes(b.into_inner())),
        (None, None) => Err(ProviderError::new(
            ErrorKind::Backend,
            format!("{who}: Secrets Manager returned neither SecretString nor SecretBinary"),
        )),
    }
}

/// Applies `field` to a fetched value.
fn pick(value: SecretValue, field: Option<&str>, who: &str) -> Result<Resolved, ProviderError> {
    match field {
        None => Ok(Resolved::Single(value)),
        Some(f) => json_field(&value, f)
            .map(Resolved::Single)
            .map_err(|e| ProviderError {
                message: format!("{who}: {}", e.message),
                help: e
                    .help
                    .or_else(|| Some("remove `field` to get the whole value".to_string())),
                ..e
            }),
    }
}

/// Sets (`Some`) or removes (`None`) `field` in a JSON object value; `existing` is `None` when
/// the secret does not exist yet.
fn merge_field(
    existing: Option<SecretValue>,
    field: &str,
    new: Option<&SecretValue>,
    who: &str,
) -> Result<SecretValue, ProviderError> {
    let mut map = match &existing {
        None => serde_json::Map::new(),
        Some(v) => {
            let not_object = || {
                ProviderError::new(
                    ErrorKind::Field,
                    format!(
                        "{who}: cannot set field `{field}`: the current value is not a JSON object"
                    ),
                )
                .help("write the whole value without `field`, or store a JSON object first")
            };
            let text = v.expose_str().ok_or_else(not_object)?;
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(not_object()),
            }
        }
    };
    match new {
        Some(value) => {
            let text = value.expose_str().ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Field,
                    format!("{who}: cannot set field `{field}`: the value is not UTF-8 text"),
                )
                .help("a JSON member holds text: write binary data without `field`")
            })?;
            map.insert(
                field.to_string(),
                serde_json::Value::String(text.to_string()),
            );
        }
        None => {
            if map.remove(field).is_none() {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(ProviderError::new(
                    ErrorKind::Field,
                    format!("{who}: field `{field}` does not exist"),
                )
                .help(format!("the fields are: {}", keys.join(", "))));
            }
        }
    }
    let text = serde_json::to_string(&serde_json::Value::Object(map)).map_err(|e| {
        ProviderError::new(
            ErrorKind::Backend,
            format!("{who}: cannot encode JSON: {e}"),
        )
    })?;
    Ok(SecretValue::from_string(text))
}

// ---------------------------------------------------------------------------------------------
// The `aws` provider
// ---------------------------------------------------------------------------------------------

/// The SDK clients of one `aws` instance.
#[derive(Debug)]
struct Clients {
    sm: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
    sts: aws_sdk_sts::Client,
}

/// One fetch of a batch: the items it serves and its outcome.
type Fetched = Vec<(Vec<usize>, Result<SecretValue, ProviderError>)>;

/// AWS Secrets Manager (`sm://`) and SSM Parameter Store (`ssm://`).
pub struct AwsProvider {
    settings: Settings,
    clients: OnceCell<Clients>,
}

impl fmt::Debug for AwsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AwsProvider {
    /// Builds the provider from its options; the SDK configuration is loaded on first use.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        Ok(Self {
            settings: Settings::new(inst, ctx)?,
            clients: OnceCell::new(),
        })
    }

    fn instance(&self) -> &str {
        &self.settings.instance
    }

    async fn clients(&self) -> &Clients {
        self.clients
            .get_or_init(|| async {
                let config = self.settings.load().await;
                Clients {
                    sm: aws_sdk_secretsmanager::Client::new(&config),
                    ssm: aws_sdk_ssm::Client::new(&config),
                    sts: aws_sdk_sts::Client::new(&config),
                }
            })
            .await
    }

    fn parse(&self, item: &Item) -> Result<AwsRef, ProviderError> {
        AwsRef::parse(item, self.instance())
    }

    fn who(&self, label: &str) -> String {
        who(label, self.instance())
    }

    // ---- reads ----

    async fn resolve_all(&self, items: &[Item]) -> Vec<Result<Resolved, ProviderError>> {
        let mut results: Vec<Option<Result<Resolved, ProviderError>>> =
            items.iter().map(|_| None).collect();
        let mut parsed: Vec<Option<AwsRef>> = Vec::with_capacity(items.len());
        // Unique ids → the items that want them.
        let mut sm_plain: Vec<(String, Vec<usize>)> = Vec::new();
        let mut ssm: Vec<(String, Vec<usize>)> = Vec::new();
        let mut versioned: Vec<usize> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match self.parse(item) {
                Err(e) => {
                    if let Some(slot) = results.get_mut(i) {
                        *slot = Some(Err(e));
                    }
                    parsed.push(None);
                }
                Ok(r) => {
                    match &r.target {
                        Target::Sm {
                            id,
                            stage: None,
                            version_id: None,
                        } => add_to_group(&mut sm_plain, id, i),
                        Target::Sm { .. } => versioned.push(i),
                        Target::Ssm { name } => add_to_group(&mut ssm, name, i),
                    }
                    parsed.push(Some(r));
                }
            }
        }

        let mut jobs: Vec<BoxFuture<'_, Fetched>> = Vec::new();
        if let [(id, idx)] = sm_plain.as_slice() {
            let (id, idx) = (id.clone(), idx.clone());
            jobs.push(Box::pin(async move {
                let label = format!("sm://{id}");
                vec![(idx, self.sm_get(&id, None, None, &label).await)]
            }));
        } else {
            for chunk in sm_plain.chunks(SM_BATCH) {
                jobs.push(Box::pin(self.sm_batch(chunk)));
            }
        }
        if let [(name, idx)] = ssm.as_slice() {
            let (name, idx) = (name.clone(), idx.clone());
            jobs.push(Box::pin(
                async move { vec![(idx, self.ssm_get(&name).await)] },
            ));
        } else {
            for chunk in ssm.chunks(SSM_BATCH) {
                jobs.push(Box::pin(self.ssm_batch(chunk)));
            }
        }
        for i in versioned {
            if let Some(Some(r)) = parsed.get(i)
                && let Target::Sm {
                    id,
                    stage,
                    version_id,
                } = &r.target
            {
                let label = r.label();
                jobs.push(Box::pin(async move {
                    vec![(
                        vec![i],
                        self.sm_get(id, stage.as_deref(), version_id.as_deref(), &label)
                            .await,
                    )]
                }));
            }
        }

        for (idxs, outcome) in join_all(jobs).await.into_iter().flatten() {
            for i in idxs {
                let Some(Some(r)) = parsed.get(i) else {
                    continue;
                };
                let who = self.who(&r.label());
                let one = match &outcome {
                    Ok(v) => pick(v.duplicate(), r.field.as_deref(), &who),
                    Err(e) => Err(e.clone()),
                };
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(one);
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ProviderError::new(
                        ErrorKind::Backend,
                        "internal error: no result for this reference",
                    ))
                })
            })
            .collect()
    }

    /// `GetSecretValue`.
    async fn sm_get(
        &self,
        id: &str,
        stage: Option<&str>,
        version_id: Option<&str>,
        label: &str,
    ) -> Result<SecretValue, ProviderError> {
        let who = self.who(label);
        let out = self
            .clients()
            .await
            .sm
            .get_secret_value()
            .secret_id(id)
            .set_version_stage(stage.map(String::from))
            .set_version_id(version_id.map(String::from))
            .send()
            .await
            .map_err(|e| {
                self.settings
                    .error(&e, "Secrets Manager", "GetSecretValue", &who)
            })?;
        sm_value(out.secret_string, out.secret_binary, &who)
    }

    /// `GetSecretValue` that answers `None` for a secret that does not exist.
    async fn sm_get_opt(&self, id: &str) -> Result<Option<SecretValue>, ProviderError> {
        match self.sm_get(id, None, None, &format!("sm://{id}")).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `BatchGetSecretValue` for up to 20 ids.
    async fn sm_batch(&self, group: &[(String, Vec<usize>)]) -> Fetched {
        let ids: Vec<String> = group.iter().map(|(id, _)| id.clone()).collect();
        let mut found: Vec<Option<Result<SecretValue, ProviderError>>> =
            group.iter().map(|_| None).collect();
        let client = &self.clients().await.sm;
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = client
                .batch_get_secret_value()
                .set_secret_id_list(Some(ids.clone()))
                .set_next_token(next_token.take())
                .send()
                .await;
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    let probe = self.settings.error(
                        &e,
                        "Secrets Manager",
                        "BatchGetSecretValue",
                        &format!("{} secrets (provider `{}`)", ids.len(), self.instance()),
                    );
                    if probe.kind == ErrorKind::Auth && probe.message.contains("AccessDenied") {
                        // Allowed to read each secret but not to batch: read them one by one.
                        return self.sm_each(group).await;
                    }
                    return group
                        .iter()
                        .map(|(id, idx)| {
                            let who = self.who(&format!("sm://{id}"));
                            (
                                idx.clone(),
                                Err(self.settings.error(
                                    &e,
                                    "Secrets Manager",
                                    "BatchGetSecretValue",
                                    &who,
                                )),
                            )
                        })
                        .collect();
                }
            };
            for entry in out.secret_values.unwrap_or_default() {
                // One secret may answer several ids (its name and its ARN): fill them all.
                let value = sm_value(entry.secret_string, entry.secret_binary, "a secret");
                for ((id, _), slot) in group.iter().zip(found.iter_mut()) {
                    let answers = entry.name.as_deref() == Some(id.as_str())
                        || entry.arn.as_deref().is_some_and(|arn| arn_matches(arn, id));
                    if answers && slot.is_none() {
                        *slot = Some(match &value {
                            Ok(v) => Ok(v.duplicate()),
                            Err(_) => Err(ProviderError::new(
                                ErrorKind::Backend,
                                format!(
                                    "{}: Secrets Manager returned neither SecretString nor SecretBinary",
                                    self.who(&format!("sm://{id}"))
                                ),
                            )),
                        });
                    }
                }
            }
            for err in out.errors.unwrap_or_default() {
                let Some(sid) = err.secret_id.as_deref() else {
                    continue;
                };
                let code = err.error_code.as_deref().unwrap_or("UnknownError");
                let message = err.message.as_deref().unwrap_or("no message");
                for ((id, _), slot) in group.iter().zip(found.iter_mut()) {
                    if id == sid && slot.is_none() {
                        let who = self.who(&format!("sm://{id}"));
                        *slot = Some(Err(service_error(
                            code,
                            &format!(
                                "{who}: Secrets Manager BatchGetSecretValue failed for it: {code}: {message}"
                            ),
                            "Secrets Manager",
                        )));
                    }
                }
            }
            next_token = out.next_token.filter(|t| !t.is_empty());
            if next_token.is_none() {
                break;
            }
        }
        group
            .iter()
            .zip(found)
            .map(|((id, idx), f)| {
                let r = f.unwrap_or_else(|| {
                    Err(ProviderError::not_found(format!(
                        "{}: Secrets Manager BatchGetSecretValue returned neither its value nor an error",
                        self.who(&format!("sm://{id}"))
                    ))
                    .help("check the name or ARN and the region; list them with `aws secretsmanager list-secrets`"))
                });
                (idx.clone(), r)
            })
            .collect()
    }

    /// `GetSecretValue` for each id of a group, concurrently.
    async fn sm_each(&self, group: &[(String, Vec<usize>)]) -> Fetched {
        join_all(group.iter().map(|(id, idx)| async move {
            (
                idx.clone(),
                self.sm_get(id, None, None, &format!("sm://{id}")).await,
            )
        }))
        .await
    }

    /// `GetParameter` with decryption.
    async fn ssm_get(&self, name: &str) -> Result<SecretValue, ProviderError> {
        let who = self.who(&format!("ssm://{name}"));
        let out = self
            .clients()
            .await
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| self.settings.error(&e, "SSM", "GetParameter", &who))?;
        out.parameter
            .and_then(|p| p.value)
            .map(SecretValue::from_string)
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Backend,
                    format!("{who}: SSM GetParameter returned no value"),
                )
            })
    }

    /// `GetParameter` that answers `None` for a parameter that does not exist.
    async fn ssm_get_opt(&self, name: &str) -> Result<Option<SecretValue>, ProviderError> {
        match self.ssm_get(name).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GetParameters` (with decryption) for up to 10 names.
    async fn ssm_batch(&self, group: &[(String, Vec<usize>)]) -> Fetched {
        let names: Vec<String> = group.iter().map(|(n, _)| n.clone()).collect();
        let out = self
            .clients()
            .await
            .ssm
            .get_parameters()
            .set_names(Some(names))
            .with_decryption(true)
            .send()
            .await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                return group
                    .iter()
                    .map(|(name, idx)| {
                        let who = self.who(&format!("ssm://{name}"));
                        (
                            idx.clone(),
                            Err(self.settings.error(&e, "SSM", "GetParameters", &who)),
                        )
                    })
                    .collect();
            }
        };
        let mut found: Vec<Option<Result<SecretValue, ProviderError>>> =
            group.iter().map(|_| None).collect();
        for p in out.parameters.unwrap_or_default() {
            let Some(value) = p.value.map(SecretValue::from_string) else {
                continue;
            };
            for ((n, _), slot) in group.iter().zip(found.iter_mut()) {
                let answers = p.name.as_deref() == Some(n.as_str())
                    || p.arn.as_deref() == Some(n.as_str())
                    || p.name
                        .as_deref()
                        .zip(p.selector.as_deref())
                        .is_some_and(|(pn, sel)| format!("{pn}{sel}") == *n);
                if answers && slot.is_none() {
                    *slot = Some(Ok(value.duplicate()));
                }
            }
        }
        group
            .iter()
            .zip(found)
            .map(|((name, idx), f)| {
                let r = f.unwrap_or_else(|| {
                    let listed = out
                        .invalid_parameters
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .any(|n| n == name);
                    let why = if listed {
                        "listed it in InvalidParameters (it does not exist)"
                    } else {
                        "returned neither its value nor an error"
                    };
                    Err(service_error(
                        "InvalidParameters",
                        &format!(
                            "{}: SSM GetParameters {why}",
                            self.who(&format!("ssm://{name}"))
                        ),
                        "SSM",
                    ))
                });
                (idx.clone(), r)
            })
            .collect()
    }

    // ---- writes ----

    async fn write_value(&self, item: &Item, value: &SecretValue) -> Result<(), ProviderError> {
        let r = self.parse(item)?;
        let who = self.who(&r.label());
        match &r.target {
            Target::Sm {
                id,
                stage,
                version_id,
            } => {
                if stage.is_some() || version_id.is_some() {
                    return Err(bad_ref(
                        format!(
                            "{who}: a write creates a new current version and cannot target `version_stage`/`version_id`"
                        ),
                        "remove the version parameter to write",
                    ));
                }
                let new = match r.field.as_deref() {
                    None => value.duplicate(),
                    Some(f) => merge_field(self.sm_get_opt(id).await?, f, Some(value), &who)?,
                };
                self.sm_put(id, &new, &who)
                    .await
                    .map_err(|e| redact(e, &[value, &new]))
            }
            Target::Ssm { name } => {
                let new = match r.field.as_deref() {
                    None => value.duplicate(),
                    Some(f) => merge_field(self.ssm_get_opt(name).await?, f, Some(value), &who)?,
                };
                self.ssm_put(name, &new, &who)
                    .await
                    .map_err(|e| redact(e, &[value, &new]))
            }
        }
    }

    /// `PutSecretValue`, creating the secret when it does not exist.
    async fn sm_put(&self, id: &str, value: &SecretValue, who: &str) -> Result<(), ProviderError> {
        let sm = &self.clients().await.sm;
        let (string, binary) = match value.expose_str() {
            Some(s) => (Some(s.to_string()), None),
            None => (None, Some(Blob::new(value.expose_bytes().to_vec()))),
        };
        let put = || {
            sm.put_secret_value()
                .secret_id(id)
                .set_secret_string(string.clone())
                .set_secret_binary(binary.clone())
                .send()
        };
        let err = match put().await {
            Ok(_) => return Ok(()),
            Err(e) => self
                .settings
                .error(&e, "Secrets Manager", "PutSecretValue", who),
        };
        if err.kind != ErrorKind::NotFound {
            return Err(err);
        }
        if id.starts_with("arn:") {
            return Err(ProviderError {
                help: Some("a secret is created by name: use sm://NAME to create it".to_string()),
                ..err
            });
        }
        match sm
            .create_secret()
            .name(id)
            .set_secret_string(string.clone())
            .set_secret_binary(binary.clone())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceExistsException") => {
                put().await.map(drop).map_err(|e| {
                    self.settings
                        .error(&e, "Secrets Manager", "PutSecretValue", who)
                })
            }
            Err(e) => Err(self
                .settings
                .error(&e, "Secrets Manager", "CreateSecret", who)),
        }
    }

    /// `PutParameter` of type `SecureString`, overwriting.
    async fn ssm_put(
        &self,
        name: &str,
        value: &SecretValue,
        who: &str,
    ) -> Result<(), ProviderError> {
        let text = value.expose_str().ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Unsupported,
                format!("{who}: Parameter Store holds text only, and this value is not UTF-8"),
            )
            .help("store binary data in Secrets Manager (sm://) instead")
        })?;
        self.clients()
            .await
            .ssm
            .put_parameter()
            .name(name)
            .value(text)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .map(drop)
            .map_err(|e| self.settings.error(&e, "SSM", "PutParameter", who))
    }

    async fn delete_value(&self, item: &Item) -> Result<(), ProviderError> {
        let r = self.parse(item)?;
        let who = self.who(&r.label());
        match (&r.target, r.field.as_deref()) {
            (
                Target::Sm {
                    stage, version_id, ..
                },
                _,
            ) if stage.is_some() || version_id.is_some() => Err(bad_ref(
                format!("{who}: Secrets Manager deletes whole secrets, not one version"),
                "remove the version parameter to delete the secret",
            )),
            (Target::Sm { id, .. }, None) => self
                .clients()
                .await
                .sm
                .delete_secret()
                .secret_id(id)
                .send()
                .await
                .map(drop)
                .map_err(|e| {
                    self.settings
                        .error(&e, "Secrets Manager", "DeleteSecret", &who)
                }),
            (Target::Sm { id, .. }, Some(f)) => {
                let current = self.sm_get(id, None, None, &r.label()).await?;
                let new = merge_field(Some(current), f, None, &who)?;
                self.sm_put(id, &new, &who)
                    .await
                    .map_err(|e| redact(e, &[&new]))
            }
            (Target::Ssm { name }, None) => self
                .clients()
                .await
                .ssm
                .delete_parameter()
                .name(name)
                .send()
                .await
                .map(drop)
                .map_err(|e| self.settings.error(&e, "SSM", "DeleteParameter", &who)),
            (Target::Ssm { name }, Some(f)) => {
                let current = self.ssm_get(name).await?;
                let new = merge_field(Some(current), f, None, &who)?;
                self.ssm_put(name, &new, &who)
                    .await
                    .map_err(|e| redact(e, &[&new]))
            }
        }
    }
}

/// Adds item `i` to the group of `key`.
fn add_to_group(groups: &mut Vec<(String, Vec<usize>)>, key: &str, i: usize) {
    match groups.iter_mut().find(|(k, _)| k == key) {
        Some((_, idx)) => idx.push(i),
        None => groups.push((key.to_string(), vec![i])),
    }
}

/// Whether a secret's full ARN answers the id `id` (the full ARN, or a partial ARN without
/// the 6-character suffix Secrets Manager appends).
fn arn_matches(arn: &str, id: &str) -> bool {
    arn == id
        || (id.starts_with("arn:")
            && arn
                .strip_prefix(id)
                .is_some_and(|rest| rest.len() == 7 && rest.starts_with('-')))
}

impl Provider for AwsProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(self.resolve_all(items))
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.write_value(item, value))
    }

    fn delete<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.delete_value(item))
    }

    fn max_batch(&self) -> usize {
        SM_BATCH
    }

    fn handles_field(&self) -> bool {
        true
    }

    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        self.settings.sources()
    }

    fn describe(&self) -> Description {
        let mut details = self.settings.details();
        details.push((
            "refs".to_string(),
            "sm://NAME-OR-ARN[#field], ssm://NAME".to_string(),
        ));
        Description {
            instance: self.settings.instance.clone(),
            type_name: self.settings.type_name,
            details,
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let who = format!("provider `{}`", self.instance());
            self.clients()
                .await
                .sts
                .get_caller_identity()
                .send()
                .await
                .map(drop)
                .map_err(|e| self.settings.error(&e, "STS", "GetCallerIdentity", &who))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The `aws_sts` provider
// ---------------------------------------------------------------------------------------------

/// What an `aws_sts` entry produces.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StsFormat {
    /// One JSON value.
    Json,
    /// Three variables, names prefixed.
    Env(String),
}

/// A parsed `aws_sts` entry.
#[derive(Debug, Clone)]
struct StsRequest {
    role_arn: String,
    duration: i32,
    session_name: String,
    external_id: Option<String>,
    format: StsFormat,
}

impl StsRequest {
    fn parse(item: &Item, instance: &str) -> Result<Self, ProviderError> {
        let from_ref = Some(item.reference.trim()).filter(|r| !r.is_empty());
        let from_param = param_set(item, "role_arn");
        let role_arn = match (from_ref, from_param) {
            (Some(a), Some(b)) if a != b => {
                return Err(bad_ref(
                    format!(
                        "provider `{instance}`: the reference `{a}` and the `role_arn` parameter `{b}` name different roles"
                    ),
                    "keep one of them",
                ));
            }
            (Some(a), _) | (None, Some(a)) => a.to_string(),
            (None, None) => {
                return Err(bad_ref(
                    format!("provider `{instance}`: no role to assume"),
                    "set `ref = \"arn:aws:iam::ACCOUNT:role/NAME\"` (or the `role_arn` parameter)",
                ));
            }
        };
        let who = format!("role `{role_arn}` (provider `{instance}`)");
        if !(role_arn.starts_with("arn:")
            && role_arn.contains(":role/")
            && role_arn.len() <= MAX_NAME
            && !role_arn
                .chars()
                .any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(bad_ref(
                format!("{who}: not an IAM role ARN"),
                "a role ARN looks like arn:aws:iam::123456789012:role/NAME",
            ));
        }
        let duration = match param_set(item, "duration_seconds") {
            None => DEFAULT_DURATION,
            Some(d) => match d.parse::<i32>() {
                Ok(n) if (MIN_DURATION..=MAX_DURATION).contains(&n) => n,
                _ => {
                    return Err(bad_ref(
                        format!(
                            "{who}: `duration_seconds = {d}` is not a whole number of seconds between {MIN_DURATION} and {MAX_DURATION}"
                        ),
                        "write e.g. `duration_seconds = 3600` (the role's maximum session duration also applies)",
                    ));
                }
            },
        };
        let session_name = param_set(item, "session_name").unwrap_or(DEFAULT_SESSION);
        if !(2..=64).contains(&session_name.len())
            || !session_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        {
            return Err(bad_ref(
                format!("{who}: `session_name = {session_name}` is not a valid session name"),
                "use 2 to 64 letters, digits or +=,.@_-",
            ));
        }
        let external_id = param_set(item, "external_id");
        if let Some(x) = external_id
            && (!(2..=1224).contains(&x.len())
                || x.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(bad_ref(
                format!("{who}: `external_id` is not valid (2 to 1224 characters, no spaces)"),
                "use the external id the role's trust policy expects",
            ));
        }
        let prefix = param(item, "prefix").unwrap_or("");
        let format = match param_set(item, "format") {
            None | Some("json") => {
                if !prefix.is_empty() {
                    return Err(bad_ref(
                        format!("{who}: `prefix` applies only with `format = \"env\"`"),
                        "add `format = \"env\"` or remove `prefix`",
                    ));
                }
                StsFormat::Json
            }
            Some("env") => {
                let valid = prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !prefix.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    return Err(bad_ref(
                        format!(
                            "{who}: `prefix = \"{prefix}\"` does not make valid variable names"
                        ),
                        "use letters, digits and `_`, not starting with a digit (e.g. `prefix = \"DEPLOY_\"`)",
                    ));
                }
                StsFormat::Env(prefix.to_string())
            }
            Some(other) => {
                return Err(bad_ref(
                    format!("{who}: unknown `format = \"{other}\"`"),
                    "use `format = \"env\"` for AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, or leave it out for one JSON value",
                ));
            }
        };
        Ok(Self {
            role_arn,
            duration,
            session_name: session_name.to_string(),
            external_id: external_id.map(String::from),
            format,
        })
    }
}

/// The JSON value of an `aws_sts` entry.
#[derive(Serialize)]
struct CredentialsJson<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    session_token: &'a str,
    expiration: &'a str,
}

/// Temporary AWS credentials from STS `AssumeRole`.
pub struct StsProvider {
    settings: Settings,
    client: OnceCell<aws_sdk_sts::Client>,
}

impl fmt::Debug for StsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StsProvider")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StsProvider {
    /// Builds the provider from its options; the SDK configuration is loaded on first use.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        Ok(Self {
            settings: Settings::new(inst, ctx)?,
            client: OnceCell::new(),
        })
    }

    async fn client(&self) -> &aws_sdk_sts::Client {
        self.client
            .get_or_init(|| async { aws_sdk_sts::Client::new(&self.settings.load().await) })
            .await
    }

    async fn assume(&self, item: &Item) -> Result<Resolved, ProviderError> {
        let req = StsRequest::parse(item, &self.settings.instance)?;
        let who = format!(
            "role `{}` (provider `{}`)",
            req.role_arn, self.settings.instance
        );
        let out = self
            .client()
            .await
            .assume_role()
            .role_arn(&req.role_arn)
            .role_session_name(&req.session_name)
            .duration_seconds(req.duration)
            .set_external_id(req.external_id.clone())
            .send()
            .await
            .map_err(|e| {
                let err = self.settings.error(&e, "STS", "AssumeRole", &who);
                if err.kind == ErrorKind::Auth && err.message.contains("AccessDenied") {
                    err.help(format!(
                        "the caller may not assume this role: check the role's trust policy (and `external_id`, if it requires one). {CREDENTIAL_HELP}"
                    ))
                } else {
                    err
                }
            })?;
        let creds = out.credentials.ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Backend,
                format!("{who}: STS AssumeRole returned no credentials"),
            )
        })?;
        let expiration = creds
            .expiration
            .fmt(DateTimeFormat::DateTime)
            .map_err(|_| {
                ProviderError::new(
                    ErrorKind::Backend,
                    format!("{who}: STS returned an expiration that cannot be written as RFC 3339"),
                )
            })?;
        let access_key_id = Zeroizing::new(creds.access_key_id);
        let secret_access_key = Zeroizing::new(creds.secret_access_key);
        let session_token = Zeroizing::new(creds.session_token);
        match req.format {
            StsFormat::Json => {
                let text = serde_json::to_string(&CredentialsJson {
                    access_key_id: &access_key_id,
                    secret_access_key: &secret_access_key,
                    session_token: &session_token,
                    expiration: &expiration,
                })
                .map_err(|e| {
                    ProviderError::new(
                        ErrorKind::Backend,
                        format!("{who}: cannot encode the credentials as JSON: {e}"),
                    )
                })?;
                Ok(Resolved::Single(SecretValue::from_string(text)))
            }
            StsFormat::Env(prefix) => Ok(Resolved::Multi(vec![
                (
                    format!("{prefix}AWS_ACCESS_KEY_ID"),
                    SecretValue::from_str_copy(&access_key_id),
                ),
                (
                    format!("{prefix}AWS_SECRET_ACCESS_KEY"),
                    SecretValue::from_str_copy(&secret_access_key),
                ),
                (
                    format!("{prefix}AWS_SESSION_TOKEN"),
                    SecretValue::from_str_copy(&session_token),
                ),
            ])),
        }
    }
}

impl Provider for StsProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(join_all(items.iter().map(|item| self.assume(item))))
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        _value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!(
                    "provider `{}` (aws_sts) cannot store values: `{}` is a role to assume",
                    self.settings.instance, item.reference
                ),
            )
            .help("aws_sts issues temporary credentials; store secrets with the `aws` provider (sm:// or ssm://)"))
        })
    }

    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        self.settings.sources()
    }

    fn describe(&self) -> Description {
        let mut details = self.settings.details();
        details.push((
            "refs".to_string(),
            "ROLE-ARN (or the `role_arn` parameter)".to_string(),
        ));
        Description {
            instance: self.settings.instance.clone(),
            type_name: self.settings.type_name,
            details,
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let who = format!("provider `{}`", self.settings.instance);
            self.client()
                .await
                .get_caller_identity()
                .send()
                .await
                .map(drop)
                .map_err(|e| self.settings.error(&e, "STS", "GetCallerIdentity", &who))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_quotes_are_removed() {
        let m = "1 validation error detected: Value 'kz-canary-9' at 'secretString' failed to satisfy constraint";
        let out = strip_quoted_values(m);
        assert!(!out.contains("kz-canary-9"), "{out}");
        assert!(out.contains("at 'secretString' failed"), "{out}");
        assert_eq!(strip_quoted_values("no quotes"), "no quotes");
        assert_eq!(
            strip_quoted_values("Value 'unterminated"),
            "Value <redacted>"
        );
    }

    #[test]
    fn partial_arns_match_full_ones() {
        let full = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbCdEf";
        assert!(arn_matches(full, full));
        assert!(arn_matches(
            full,
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db"
        ));
        assert!(!arn_matches(
            full,
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:app"
        ));
        assert!(!arn_matches(full, "app/db"));
    }

    #[test]
    fn merge_keeps_other_members_and_refuses_non_objects() {
        let cur = SecretValue::from_str_copy(r#"{"user":"u","password":"old"}"#);
        let new = SecretValue::from_str_copy("new");
        let merged = merge_field(Some(cur), "password", Some(&new), "w").unwrap();
        let v: serde_json::Value = serde_json::from_str(merged.expose_str().unwrap()).unwrap();
        assert_eq!(v["user"], "u");
        assert_eq!(v["password"], "new");
        let e = merge_field(
            Some(SecretValue::from_str_copy("kz-canary-plain")),
            "f",
            Some(&new),
            "w",
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Field);
        assert!(!format!("{e} {e:?}").contains("kz-canary-plain"));
        let created = merge_field(None, "k", Some(&new), "w").unwrap();
        assert_eq!(created.expose_str(), Some(r#"{"k":"new"}"#));
    }
}
