//! The provider trait and its typed errors.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use kz_secret::{Resolved, SecretValue};

/// A boxed future (providers are trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One reference to resolve or write.
#[derive(Debug, Clone)]
pub struct Item {
    /// The secret's variable name (for plugin ids and messages; never sent to a backend as data
    /// other than the plugin protocol's `id`).
    pub name: String,
    /// The reference as the provider sees it.
    pub reference: String,
    /// `field`, when set.
    pub field: Option<String>,
    /// Provider parameters, as text.
    pub params: Vec<(String, String)>,
}

/// What kind of failure (decides `optional`, `--missing` and retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The backend answered that the secret or field does not exist.
    NotFound,
    /// The value is empty and `allow_empty` is not set.
    Empty,
    /// Credentials missing, wrong or denied.
    Auth,
    /// The backend could not be reached.
    Network,
    /// The per-call timeout ran out (retries included).
    Timeout,
    /// The reference does not fit the provider's syntax (found before any call).
    BadReference,
    /// A `field` was asked of a value that has no such field, or is not structured.
    Field,
    /// The operation is not supported (a write to a read-only provider).
    Unsupported,
    /// The provider's own configuration is wrong (missing identity file, bad option).
    Config,
    /// Anything else the backend answered.
    Backend,
}

impl ErrorKind {
    /// A short label for messages.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Empty => "empty value",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Network => "backend unreachable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::BadReference => "invalid reference",
            ErrorKind::Field => "field not found",
            ErrorKind::Unsupported => "not supported",
            ErrorKind::Config => "provider misconfigured",
            ErrorKind::Backend => "backend error",
        }
    }
}

/// A provider failure. The message is the backend's, with any credentials removed, and never
/// holds a secret value.
#[derive(Debug, Clone)]
pub struct ProviderError {
    /// The kind.
    pub kind: ErrorKind,
    /// What happened.
    pub message: String,
    /// How to fix it, when the provider knows.
    pub help: Option<String>,
    /// Worth retrying (throttling, 5xx, connection reset).
    pub transient: bool,
}

impl ProviderError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            help: None,
            transient: false,
        }
    }

    /// A not-found error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Adds a help line.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Marks the error as worth retrying.
    #[must_use]
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProviderError {}

/// What a provider says about itself (for `kz doctor`, `kz add`, `kz status`).
#[derive(Debug, Clone)]
pub struct Description {
    /// Instance name.
    pub instance: String,
    /// Type name.
    pub type_name: &'static str,
    /// Human-readable facts ("store: /path", "identity: /path").
    pub details: Vec<(String, String)>,
}

/// A secret backend. Implementations live in `kz-providers`.
///
/// `resolve` gets a batch and returns one result per item, in order. A provider with a batch
/// API uses it; others resolve the items one after another or concurrently (the engine already
/// splits work into batches of at most [`Provider::max_batch`] and runs batches concurrently,
/// bounded by the instance's `concurrency`).
pub trait Provider: Send + Sync {
    /// Resolves a batch.
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>>;

    /// Stores a value.
    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let _ = (item, value);
        Box::pin(async {
            Err(ProviderError::new(
                ErrorKind::Unsupported,
                "this provider cannot store values",
            ))
        })
    }

    /// Deletes a value (`kz rm --purge`).
    fn delete<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), ProviderError>> {
        let _ = item;
        Box::pin(async {
            Err(ProviderError::new(
                ErrorKind::Unsupported,
                "this provider cannot delete values",
            ))
        })
    }

    /// Items per `resolve` call (1: one call per item).
    fn max_batch(&self) -> usize {
        1
    }

    /// Whether the provider applies `field` itself; otherwise the engine picks the field from a
    /// JSON object value.
    fn handles_field(&self) -> bool {
        false
    }

    /// Facts for `kz doctor` and `kz status`.
    fn describe(&self) -> Description;

    /// Checks that the backend is reachable and authenticated, without reading a secret.
    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    /// The files and directories on this machine that `items`' values, or this provider's
    /// backend credentials, come from (a store and its identity, a dotenv file, a token or
    /// credentials file, a CLI's configuration directory), whether or not they exist now.
    /// Reads nothing secret and contacts nothing. `kz run --blind --isolate` hides each from
    /// the command; without `--isolate` kz names those that exist. Default: none (the values
    /// come from kz's environment or from a service whose credentials are not files).
    fn sources(&self, items: &[Item]) -> Vec<PathBuf> {
        let _ = items;
        Vec::new()
    }

    /// The credentials this provider has used so far (tokens read or obtained by logging in), so
    /// that [`Redacting`] removes them from backend messages. Called after each operation.
    fn credentials(&self) -> Vec<SecretValue> {
        Vec::new()
    }
}

/// What a removed credential or value is shown as in a message.
pub const REDACTED: &str = "<redacted>";

/// Wraps a provider so that no error it returns (from `resolve`, `write`, `delete`, `check`)
/// holds a credential it used, an ambient credential it was given, or a value it resolved or
/// was asked to store: a backend (or whatever a configured address points at) that echoes the
/// request's token in its error text gets it replaced by [`REDACTED`]. Every built provider is
/// wrapped (`kz_providers::build`), so this is the one place backend messages are cleaned.
pub struct Redacting {
    inner: std::sync::Arc<dyn Provider>,
    ambient: Vec<SecretValue>,
}

impl fmt::Debug for Redacting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redacting")
            .field("type", &self.inner.describe().type_name)
            .field("ambient", &self.ambient.len())
            .finish()
    }
}

impl Redacting {
    /// Wraps `inner`; `ambient` are credentials from kz's environment the provider may send
    /// (its type's credential variables).
    pub fn new(inner: std::sync::Arc<dyn Provider>, ambient: Vec<SecretValue>) -> Self {
        Self { inner, ambient }
    }

    fn clean(&self, e: ProviderError, values: &[&SecretValue]) -> ProviderError {
        let creds = self.inner.credentials();
        let patterns = creds
            .iter()
            .chain(&self.ambient)
            .chain(values.iter().copied())
            .map(|v| v.expose_bytes().to_vec());
        redact_error(
            e,
            kz_redact::Redactor::uniform(patterns, REDACTED.as_bytes()),
        )
    }
}

/// `text` with every non-empty value of `secrets` replaced by [`REDACTED`] (for a provider that
/// must cut a backend message short: redact first, so no part of a credential survives the cut).
pub fn redact_text(text: &str, secrets: &[SecretValue]) -> String {
    let r = kz_redact::Redactor::uniform(
        secrets.iter().map(|v| v.expose_bytes().to_vec()),
        REDACTED.as_bytes(),
    );
    if r.is_empty() {
        return text.to_string();
    }
    String::from_utf8_lossy(&r.replace_all(text.as_bytes())).into_owned()
}

/// Replaces every pattern of `r` in an error's message and help.
pub fn redact_error(mut e: ProviderError, r: kz_redact::Redactor) -> ProviderError {
    if r.is_empty() {
        return e;
    }
    fn fix(r: &kz_redact::Redactor, s: &str) -> String {
        String::from_utf8_lossy(&r.replace_all(s.as_bytes())).into_owned()
    }
    e.message = fix(&r, &e.message);
    e.help = e.help.as_deref().map(|h| fix(&r, h));
    e
}

fn resolved_values(r: &Resolved) -> Vec<&SecretValue> {
    match r {
        Resolved::Single(v) => vec![v],
        Resolved::Multi(m) => m.iter().map(|(_, v)| v).collect(),
    }
}

impl Provider for Redacting {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async move {
            let results = self.inner.resolve(items).await;
            if results.iter().all(Result::is_ok) {
                return results;
            }
            let values: Vec<SecretValue> = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .flat_map(resolved_values)
                .map(SecretValue::duplicate)
                .collect();
            let values: Vec<&SecretValue> = values.iter().collect();
            results
                .into_iter()
                .map(|r| r.map_err(|e| self.clean(e, &values)))
                .collect()
        })
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            self.inner
                .write(item, value)
                .await
                .map_err(|e| self.clean(e, &[value]))
        })
    }

    fn delete<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            self.inner
                .delete(item)
                .await
                .map_err(|e| self.clean(e, &[]))
        })
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    fn handles_field(&self) -> bool {
        self.inner.handles_field()
    }

    fn describe(&self) -> Description {
        self.inner.describe()
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { self.inner.check().await.map_err(|e| self.clean(e, &[])) })
    }

    fn credentials(&self) -> Vec<SecretValue> {
        self.inner.credentials()
    }

    fn sources(&self, items: &[Item]) -> Vec<PathBuf> {
        self.inner.sources(items)
    }
}

/// Runs futures concurrently on the current task and returns their outputs in order (for
/// providers that fan one batch out into several backend calls).
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Picks `field` from a JSON object value. A missing member is an error listing the keys that
/// exist (never the values).
pub fn json_field(value: &SecretValue, field: &str) -> Result<SecretValue, ProviderError> {
    let text = value.expose_str().ok_or_else(|| {
        ProviderError::new(
            ErrorKind::Field,
            format!("cannot pick field `{field}`: the value is not UTF-8 text"),
        )
    })?;
    let parsed: serde_json::Value = serde_json::from_str(text).map_err(|_| {
        ProviderError::new(
            ErrorKind::Field,
            format!("cannot pick field `{field}`: the value is not a JSON object"),
        )
        .help("remove `field` to get the whole value")
    })?;
    let serde_json::Value::Object(map) = parsed else {
        return Err(ProviderError::new(
            ErrorKind::Field,
            format!("cannot pick field `{field}`: the value is JSON but not an object"),
        )
        .help("remove `field` to get the whole value"));
    };
    match map.get(field) {
        Some(serde_json::Value::String(s)) => Ok(SecretValue::from_str_copy(s)),
        Some(serde_json::Value::Null) | None => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            Err(
                ProviderError::new(ErrorKind::Field, format!("field `{field}` does not exist"))
                    .help(format!("the fields are: {}", keys.join(", "))),
            )
        }
        Some(other) => Ok(SecretValue::from_string(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacting_cleans_every_error_of_credentials_and_values() {
        struct Echo;
        impl Provider for Echo {
            fn resolve<'a>(
                &'a self,
                items: &'a [Item],
            ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
                Box::pin(async move {
                    items
                        .iter()
                        .map(|i| match i.reference.as_str() {
                            "ok" => Ok(Resolved::Single(SecretValue::from_str_copy("kz-value-1"))),
                            _ => Err(ProviderError::new(
                                ErrorKind::Auth,
                                "token kz-sent-1 (ambient kz-env-1) denied; other value kz-value-1",
                            )
                            .help("kz-sent-1 again")),
                        })
                        .collect()
                })
            }
            fn describe(&self) -> Description {
                Description {
                    instance: "e".into(),
                    type_name: "echo",
                    details: Vec::new(),
                }
            }
            fn credentials(&self) -> Vec<SecretValue> {
                vec![SecretValue::from_str_copy("kz-sent-1")]
            }
        }
        let p = Redacting::new(
            std::sync::Arc::new(Echo),
            vec![SecretValue::from_str_copy("kz-env-1")],
        );
        let item = |r: &str| Item {
            name: "X".into(),
            reference: r.into(),
            field: None,
            params: Vec::new(),
        };
        let items = [item("ok"), item("bad")];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(p.resolve(&items));
        let e = out[1].as_ref().unwrap_err();
        let shown = format!("{} {:?}", e.message, e.help);
        assert!(
            !shown.contains("kz-sent-1")
                && !shown.contains("kz-env-1")
                && !shown.contains("kz-value-1"),
            "{shown}"
        );
        assert_eq!(shown.matches(REDACTED).count(), 4, "{shown}");
        assert_eq!(
            redact_text("a kz-x b", &[SecretValue::from_str_copy("kz-x")]),
            "a <redacted> b"
        );
    }

    #[test]
    fn json_field_lists_keys_never_values() {
        let v = SecretValue::from_str_copy(r#"{"user":"u","password":"kz-canary-1","port":5432}"#);
        assert_eq!(json_field(&v, "user").unwrap().expose_str(), Some("u"));
        assert_eq!(json_field(&v, "port").unwrap().expose_str(), Some("5432"));
        let e = json_field(&v, "pass").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Field);
        let shown = format!("{} {:?} {:?}", e, e.help, e);
        assert!(
            shown.contains("password") && !shown.contains("kz-canary-1"),
            "{shown}"
        );
        let e = json_field(&SecretValue::from_str_copy("kz-canary-1"), "x").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("kz-canary-1"));
    }
}
