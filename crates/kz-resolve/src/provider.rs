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
