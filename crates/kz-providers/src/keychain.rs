//! The `keychain` provider: the operating system's own secret store.
//!
//! - **macOS**: the login Keychain, through the Security framework (the `keyring` crate's Apple
//!   store; generic-password items with the service and the account below).
//! - **Linux and other Unix**: the Secret Service D-Bus API on the session bus (GNOME Keyring,
//!   KWallet, KeePassXC), *not* the kernel keyring. Items live in the default collection and are
//!   found by the attributes `service` and `username` (the `keyring` crate's convention), so an
//!   item stored by another tool with
//!   `secret-tool store --label=… service keyzero username ACCOUNT` is found. When there is no
//!   such item, an item carrying `service` + `account` (secret-tool's other common spelling) is
//!   looked up through the Secret Service search API; several matches are an error.
//!
//! **References**: `ref` = the account name (any non-empty text without NUL).
//! **Options**: `service` (default `keyzero`), the service the items are filed under.
//! **Auth**: whatever unlocked the user's keyring (the desktop login, `gnome-keyring-daemon
//! --unlock`, …); a locked keyring or a denied access is an `Auth` error. When no Secret Service
//! is reachable (no session bus, or a bus without `org.freedesktop.secrets`) every call fails with
//! a `Network` error that says so and suggests the `local` provider.
//! **Write**: `kz put` creates the item or replaces its secret (bytes as given, so binary values
//! round-trip where the backend allows it; KWallet only keeps UTF-8); `delete` removes the item,
//! and a missing item is `NotFound`. A `field` cannot be written (an item holds one value); on
//! reads the engine picks `field` from a JSON value.
//!
//! D-Bus calls block, so every backend call runs in `tokio::task::spawn_blocking`; a batch is
//! resolved item after item inside one blocking task over the process's one connection.

use std::path::PathBuf;

use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use zeroize::Zeroize;

use crate::BuildContext;

/// The service used when the `service` option is not set.
pub const DEFAULT_SERVICE: &str = "keyzero";

/// The OS keychain provider (macOS Keychain / Secret Service).
pub struct KeychainProvider {
    instance: String,
    service: String,
    /// `DBUS_SESSION_BUS_ADDRESS` as kz sees it (for messages only: the connection itself is
    /// made by the `keyring` crate from the process environment).
    bus_address: Option<String>,
    /// `$XDG_RUNTIME_DIR/bus`, the session bus used when the variable is not set.
    runtime_bus: Option<PathBuf>,
    /// `$XDG_DATA_HOME/keyrings` (GNOME Keyring's files).
    keyrings: PathBuf,
}

impl std::fmt::Debug for KeychainProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeychainProvider")
            .field("instance", &self.instance)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// What a blocking task needs to name things in messages (owned, so it can move to a thread).
#[derive(Clone)]
struct Names {
    instance: String,
    service: String,
    bus_address: Option<String>,
    runtime_bus: Option<PathBuf>,
}

impl KeychainProvider {
    /// Builds the provider. Does no I/O: the keychain is first contacted on the first call.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let service = inst.opt_str("service").unwrap_or(DEFAULT_SERVICE);
        if service.is_empty() || service.contains('\0') {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!(
                    "provider `{}`: option `service` must be non-empty text without NUL",
                    inst.name
                ),
            )
            .help(format!(
                "remove `service` to use the default `{DEFAULT_SERVICE}`, or set it to your application's name"
            )));
        }
        Ok(Self {
            instance: inst.name.clone(),
            service: service.to_owned(),
            bus_address: (ctx.getenv)("DBUS_SESSION_BUS_ADDRESS").filter(|a| !a.is_empty()),
            runtime_bus: ctx.runtime_dir.as_ref().map(|d| d.join("bus")),
            keyrings: ctx.data_home.join("keyrings"),
        })
    }

    fn names(&self) -> Names {
        Names {
            instance: self.instance.clone(),
            service: self.service.clone(),
            bus_address: self.bus_address.clone(),
            runtime_bus: self.runtime_bus.clone(),
        }
    }
}

/// Rejects references the backend cannot hold, before any call.
fn check_reference(item: &Item) -> Result<(), ProviderError> {
    if item.reference.is_empty() {
        return Err(ProviderError::new(
            ErrorKind::BadReference,
            "a keychain reference is an account name and cannot be empty",
        )
        .help("set `ref` to the item's account name, e.g. `ref = \"myapp-db-url\"`"));
    }
    if item.reference.contains('\0') {
        return Err(ProviderError::new(
            ErrorKind::BadReference,
            "a keychain account name cannot contain a NUL character",
        )
        .help("set `ref` to the item's account name, e.g. `ref = \"myapp-db-url\"`"));
    }
    Ok(())
}

/// Runs blocking keychain work off the async runtime's worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r,
        Err(e) => Err(ProviderError::new(
            ErrorKind::Backend,
            format!(
                "the keychain call did not complete ({})",
                if e.is_panic() {
                    "it panicked"
                } else {
                    "it was cancelled"
                }
            ),
        )),
    }
}

/// Makes sure the platform store is up (connects to the Secret Service on first use).
fn store_ready(names: &Names) -> Result<(), ProviderError> {
    match keyring::Entry::store_status() {
        Ok(()) => Ok(()),
        Err(e) => Err(unavailable(names, e)),
    }
}

fn entry(names: &Names, account: &str) -> Result<keyring::Entry, ProviderError> {
    store_ready(names)?;
    keyring::Entry::new(&names.service, account).map_err(|e| map_error(names, account, e))
}

fn get(names: &Names, account: &str) -> Result<SecretValue, ProviderError> {
    let entry = entry(names, account)?;
    match entry.get_secret() {
        Ok(v) => Ok(SecretValue::from_bytes(v)),
        // Not stored under `username` (the keyring crate's attribute): look for an item that
        // another tool stored under the conventional `account` attribute.
        Err(keyring::Error::NoEntry) => by_account_attribute(names, account),
        Err(e) => Err(map_error(names, account, e)),
    }
}

/// The item whose attributes are `service` + `account` (as `secret-tool store … account A`
/// writes them), when exactly one exists.
fn by_account_attribute(names: &Names, account: &str) -> Result<SecretValue, ProviderError> {
    let spec = std::collections::HashMap::from([
        ("service", names.service.as_str()),
        ("account", account),
    ]);
    let found = keyring_core::Entry::search(&spec).map_err(|e| map_error(names, account, e))?;
    if found.len() > 1 {
        return Err(map_error(names, account, keyring::Error::Ambiguous(found)));
    }
    match found.first() {
        None => Err(map_error(names, account, keyring::Error::NoEntry)),
        Some(one) => one
            .get_secret()
            .map(SecretValue::from_bytes)
            .map_err(|e| map_error(names, account, e)),
    }
}

fn put(names: &Names, account: &str, value: &SecretValue) -> Result<(), ProviderError> {
    let entry = entry(names, account)?;
    entry
        .set_secret(value.expose_bytes())
        .map_err(|e| map_error(names, account, e))
}

fn remove(names: &Names, account: &str) -> Result<(), ProviderError> {
    let entry = entry(names, account)?;
    entry
        .delete_credential()
        .map_err(|e| map_error(names, account, e))
}

/// The error for "the platform store could not be set up".
fn unavailable(names: &Names, e: &keyring::Error) -> ProviderError {
    if cfg!(any(target_os = "macos", target_os = "windows")) {
        return ProviderError::new(
            ErrorKind::Network,
            format!("the system keychain is not available: {}", describe_error(e)),
        )
        .help(format!(
            "keep this secret in kz's own encrypted store instead: set `type = \"local\"` on provider `{}`",
            names.instance
        ));
    }
    let detail = describe_error(e);
    let bus_known =
        names.bus_address.is_some() || names.runtime_bus.as_ref().is_some_and(|p| p.exists());
    let no_service = [
        "org.freedesktop.secrets",
        "ServiceUnknown",
        "NameHasNoOwner",
    ]
    .iter()
    .any(|needle| detail.contains(needle));
    let what = if !bus_known {
        "DBUS_SESSION_BUS_ADDRESS is not set and there is no session bus at $XDG_RUNTIME_DIR/bus"
            .to_owned()
    } else if no_service {
        format!(
            "the D-Bus session bus has no Secret Service (no `org.freedesktop.secrets`): {detail}"
        )
    } else {
        format!("cannot connect to the D-Bus session bus: {detail}")
    };
    ProviderError::new(
        ErrorKind::Network,
        format!(
            "no Secret Service is reachable for provider `{}` ({what})",
            names.instance
        ),
    )
    .help(format!(
        "start a Secret Service in this session (GNOME Keyring, KWallet or KeePassXC; e.g. \
         `gnome-keyring-daemon --start --components=secrets`), or keep this secret in kz's own \
         encrypted store, which needs no daemon: set `type = \"local\"` on provider `{}`",
        names.instance
    ))
}

/// A keyring error as text that never holds secret bytes (the variants carrying data are
/// described without it).
fn describe_error(e: &keyring::Error) -> String {
    match e {
        keyring::Error::PlatformFailure(inner) | keyring::Error::NoStorageAccess(inner) => {
            inner.to_string()
        }
        keyring::Error::BadEncoding(_) | keyring::Error::BadDataFormat(..) => {
            "the stored data could not be decoded".to_owned()
        }
        keyring::Error::Ambiguous(items) => format!("{} items match", items.len()),
        other => other.to_string(),
    }
}

/// Maps a `keyring` error for one account to a provider error.
fn map_error(names: &Names, account: &str, e: keyring::Error) -> ProviderError {
    let service = &names.service;
    let which = format!("account `{account}` in service `{service}`");
    match e {
        keyring::Error::NoEntry => ProviderError::not_found(format!(
            "no keychain item for {which}"
        ))
        .help(store_help(service, account)),
        keyring::Error::NoStorageAccess(inner) => ProviderError::new(
            ErrorKind::Auth,
            format!("the keychain refused access to {which}: {inner}"),
        )
        .help(
            "unlock the keyring (log in to the desktop session, or unlock it with your keyring \
             manager, e.g. `gnome-keyring-daemon --unlock` reading the password on stdin) and retry",
        ),
        keyring::Error::Ambiguous(items) => ProviderError::new(
            ErrorKind::Backend,
            format!(
                "{} keychain items match {which}; kz cannot tell which one to use",
                items.len()
            ),
        )
        .help(if cfg!(target_os = "macos") {
            format!("remove the duplicates in Keychain Access, keeping one item for service `{service}`, account `{account}`")
        } else {
            format!(
                "remove the duplicates (e.g. with Seahorse, or `secret-tool clear service {service} username {account}` \
                 and store the value again with `kz put`)"
            )
        }),
        keyring::Error::BadEncoding(mut bytes) => {
            bytes.zeroize();
            ProviderError::new(
                ErrorKind::Backend,
                format!("the keychain item for {which} is not valid text"),
            )
        }
        keyring::Error::BadDataFormat(mut bytes, inner) => {
            bytes.zeroize();
            ProviderError::new(
                ErrorKind::Backend,
                format!("the keychain item for {which} is malformed: {inner}"),
            )
        }
        keyring::Error::TooLong(attr, limit) => ProviderError::new(
            ErrorKind::BadReference,
            format!("the keychain's `{attr}` for {which} is longer than its limit of {limit}"),
        )
        .help("use a shorter account name (`ref`) or `service`"),
        keyring::Error::Invalid(attr, reason) => ProviderError::new(
            ErrorKind::BadReference,
            format!("the keychain rejected `{attr}` for {which}: {reason}"),
        )
        .help("check the account name (`ref`) and the `service` option"),
        keyring::Error::NoDefaultStore => unavailable(names, &keyring::Error::NoDefaultStore),
        keyring::Error::NotSupportedByStore(why) => ProviderError::new(
            ErrorKind::Unsupported,
            format!("the keychain cannot do this for {which}: {why}"),
        ),
        keyring::Error::PlatformFailure(inner) => ProviderError::new(
            ErrorKind::Backend,
            format!("the keychain failed for {which}: {inner}"),
        )
        .help("check that the keyring daemon is running (`kz doctor`)"),
        other => ProviderError::new(
            ErrorKind::Backend,
            format!("the keychain failed for {which}: {}", describe_error(&other)),
        ),
    }
}

fn store_help(service: &str, account: &str) -> String {
    if cfg!(target_os = "macos") {
        format!(
            "store it with `kz put NAME`, or `security add-generic-password -s {service} -a {account} -w`"
        )
    } else {
        format!(
            "store it with `kz put NAME`, or `secret-tool store --label={account} service {service} username {account}` \
             (items are looked up by the attributes `service` and `username`, then `service` and `account`)"
        )
    }
}

impl Provider for KeychainProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async move {
            // References are checked first: a malformed one never reaches the backend.
            let checked: Vec<Result<String, ProviderError>> = items
                .iter()
                .map(|i| check_reference(i).map(|()| i.reference.clone()))
                .collect();
            if checked.iter().all(Result::is_err) {
                return checked
                    .into_iter()
                    .filter_map(Result::err)
                    .map(Err)
                    .collect();
            }
            let names = self.names();
            let count = checked.len();
            let done = blocking(move || {
                if let Err(e) = store_ready(&names) {
                    return Ok(checked
                        .into_iter()
                        .map(|r| r.and_then(|_| Err::<Resolved, _>(e.clone())))
                        .collect::<Vec<_>>());
                }
                Ok(checked
                    .into_iter()
                    .map(|r| r.and_then(|account| get(&names, &account).map(Resolved::Single)))
                    .collect())
            })
            .await;
            match done {
                Ok(v) => v,
                Err(e) => (0..count).map(|_| Err(e.clone())).collect(),
            }
        })
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            check_reference(item)?;
            if let Some(field) = &item.field {
                return Err(ProviderError::new(
                    ErrorKind::Unsupported,
                    format!("cannot write field `{field}`: a keychain item holds one value"),
                )
                .help("remove `field` from the secret to store the whole value"));
            }
            let names = self.names();
            let account = item.reference.clone();
            let value = value.duplicate();
            blocking(move || put(&names, &account, &value)).await
        })
    }

    fn delete<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            check_reference(item)?;
            let names = self.names();
            let account = item.reference.clone();
            blocking(move || remove(&names, &account)).await
        })
    }

    fn max_batch(&self) -> usize {
        usize::MAX
    }

    /// The session bus's socket (the Secret Service answers there) and GNOME Keyring's files.
    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.runtime_bus.iter().cloned().collect();
        out.push(self.keyrings.clone());
        out
    }

    fn describe(&self) -> Description {
        let backend = if cfg!(target_os = "macos") {
            "macOS Keychain".to_owned()
        } else if cfg!(target_os = "windows") {
            "Windows Credential Manager".to_owned()
        } else {
            format!(
                "Secret Service on the D-Bus session bus ({})",
                match (&self.bus_address, &self.runtime_bus) {
                    (Some(a), _) => a.clone(),
                    (None, Some(p)) => format!("unix:path={}", p.display()),
                    (None, None) => "DBUS_SESSION_BUS_ADDRESS not set".to_owned(),
                }
            )
        };
        Description {
            instance: self.instance.clone(),
            type_name: "keychain",
            details: vec![
                ("backend".into(), backend),
                ("service".into(), self.service.clone()),
            ],
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            let names = self.names();
            blocking(move || store_ready(&names)).await
        })
    }
}
