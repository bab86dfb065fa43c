//! The `local` provider: kz's own encrypted store, the default on a fresh machine.
//!
//! One age-encrypted file (option `path`, default `$XDG_DATA_HOME/keyzero/store.age`) whose
//! plaintext is `{"v":1,"entries":{"<ref>":{"value":"…","updated":"<RFC 3339>"}}}` (`value_b64`
//! for values that are not UTF-8). The X25519 identity is chosen once, when the store is
//! created, and recorded beside it in `store.age.meta` (`{"v":1,"identity":"<path>",
//! "recipient":"age1…"}`); it is never silently replaced later. By default the identity is
//! `$XDG_CONFIG_HOME/keyzero/identity.txt`, created with mode 0600. Writes encrypt only to the
//! recorded identity's own public key (a `.meta` naming another recipient is refused).
//!
//! Writes take an exclusive lock on `store.age.lock` (never through a symlink) across read, modify and write; the new
//! store goes to a temporary file in the same directory, is fsynced and renamed over the old
//! one, and the directory is fsynced. Reads take no lock (a rename is atomic).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use age::secrecy::ExposeSecret;
use base64::Engine as _;
use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::BuildContext;

/// The local store provider.
pub struct LocalProvider {
    instance: String,
    store: PathBuf,
    identity_option: Option<PathBuf>,
    default_identity: PathBuf,
    cache: Mutex<Option<Arc<Entries>>>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The decrypted entries (values stay zeroizing).
type Entries = BTreeMap<String, StoredValue>;

struct StoredValue {
    value: SecretValue,
    updated: String,
}

#[derive(Deserialize)]
struct StoreIn {
    v: u32,
    #[serde(default)]
    entries: BTreeMap<String, EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    value: Option<String>,
    value_b64: Option<String>,
    #[serde(default)]
    updated: String,
}

#[derive(Serialize)]
struct StoreOut<'a> {
    v: u32,
    entries: BTreeMap<&'a str, EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<&'a str>,
    updated: &'a str,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    v: u32,
    identity: PathBuf,
    recipient: String,
}

impl LocalProvider {
    /// Builds the provider (no file is touched until first use).
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let store = inst
            .opt_path("path", ctx.home.as_deref())
            .unwrap_or_else(|| ctx.data_home.join("keyzero").join("store.age"));
        let identity_option = match inst.opt_str("identity") {
            Some("keychain") => {
                return Err(ProviderError::new(
                    ErrorKind::Unsupported,
                    "a keychain-held identity for the local store is not available in this build yet",
                )
                .help("remove `identity = \"keychain\"` to use an identity file (mode 0600)"));
            }
            Some(_) => inst.opt_path("identity", ctx.home.as_deref()),
            None => None,
        };
        Ok(Self {
            instance: inst.name.clone(),
            store,
            identity_option,
            default_identity: ctx.config_home.join("keyzero").join("identity.txt"),
            cache: Mutex::new(None),
        })
    }

    /// The store file.
    pub fn store_path(&self) -> &Path {
        &self.store
    }

    fn meta_path(&self) -> PathBuf {
        sidecar(&self.store, "meta")
    }

    fn lock_path(&self) -> PathBuf {
        sidecar(&self.store, "lock")
    }

    /// The identity recorded for an existing store, checked against the option.
    fn recorded_identity(&self) -> Result<Meta, ProviderError> {
        let path = self.meta_path();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!("the local store `{}` has no readable identity record `{}`: {e}", self.store.display(), path.display()),
            )
            .help("restore the `.meta` file from a backup; kz never guesses the identity of an existing store")
        })?;
        let meta: Meta = serde_json::from_str(&text).map_err(|_| {
            ProviderError::new(
                ErrorKind::Config,
                format!("the identity record `{}` is malformed", path.display()),
            )
            .help("restore it from a backup")
        })?;
        if let Some(opt) = &self.identity_option
            && *opt != meta.identity
        {
            {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "the local store was created with the identity `{}`, but the `identity` option names `{}`",
                        meta.identity.display(),
                        opt.display()
                    ),
                )
                .help("an existing store keeps the identity it was created with: remove the option, or point `path` at a new store"));
            }
        }
        Ok(meta)
    }

    fn load_identity(path: &Path) -> Result<age::x25519::Identity, ProviderError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            ProviderError::new(ErrorKind::Config, format!("cannot read the local store's identity `{}`: {e}", path.display()))
                .help("this is the key the store was created with; without it the store cannot be decrypted: restore it from a backup (docs/providers.md, \"Backing up the local store\")")
        })?);
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .and_then(|l| age::x25519::Identity::from_str(l).ok())
            .ok_or_else(|| {
                ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "`{}` holds no X25519 identity (AGE-SECRET-KEY-1…)",
                        path.display()
                    ),
                )
                .help("restore the identity file from a backup")
            })
    }

    /// Reads and decrypts the store; a missing store is empty.
    fn read_entries(&self) -> Result<Entries, ProviderError> {
        let bytes = match std::fs::read(&self.store) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Entries::new()),
            Err(e) => {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "cannot read the local store `{}`: {e}",
                        self.store.display()
                    ),
                ));
            }
        };
        let meta = self.recorded_identity()?;
        let identity = Self::load_identity(&meta.identity)?;
        let decryptor = age::Decryptor::new_buffered(bytes.as_slice())
            .map_err(|e| corrupt(&self.store, &e.to_string()))?;
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Auth,
                    format!(
                        "cannot decrypt the local store `{}`: {e}",
                        self.store.display()
                    ),
                )
                .help(format!(
                    "the identity `{}` does not open this store; restore the right one",
                    meta.identity.display()
                ))
            })?;
        let mut plain = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut plain)
            .map_err(|e| corrupt(&self.store, &e.to_string()))?;
        let parsed: StoreIn = serde_json::from_slice(&plain)
            .map_err(|_| corrupt(&self.store, "the plaintext is not a keyzero store"))?;
        if parsed.v != 1 {
            return Err(corrupt(
                &self.store,
                &format!("unsupported store version {}", parsed.v),
            ));
        }
        let mut out = Entries::new();
        for (k, e) in parsed.entries {
            let value = match (e.value, e.value_b64) {
                (Some(v), _) => SecretValue::from_string(v),
                (None, Some(b)) => {
                    let b = Zeroizing::new(b);
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b.as_bytes())
                        .map_err(|_| {
                            corrupt(&self.store, &format!("entry `{k}` has invalid base64"))
                        })?;
                    SecretValue::from_bytes(bytes)
                }
                (None, None) => SecretValue::from_bytes(Vec::new()),
            };
            out.insert(
                k,
                StoredValue {
                    value,
                    updated: e.updated,
                },
            );
        }
        Ok(out)
    }

    fn cached_entries(&self) -> Result<Arc<Entries>, ProviderError> {
        let mut guard = self
            .cache
            .lock()
            .map_err(|_| ProviderError::new(ErrorKind::Backend, "store cache poisoned"))?;
        if let Some(e) = guard.as_ref() {
            return Ok(Arc::clone(e));
        }
        let e = Arc::new(self.read_entries()?);
        *guard = Some(Arc::clone(&e));
        Ok(e)
    }

    /// Creates the identity and its record for a new store (first write only).
    fn create_identity(&self) -> Result<Meta, ProviderError> {
        let path = self
            .identity_option
            .clone()
            .unwrap_or_else(|| self.default_identity.clone());
        let identity = if path.exists() {
            Self::load_identity(&path)?
        } else {
            let id = age::x25519::Identity::generate();
            let recipient = id.to_public().to_string();
            let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            let text = Zeroizing::new(format!(
                "# keyzero local store identity\n# created: {created}\n# public key: {recipient}\n{}\n",
                id.to_string().expose_secret()
            ));
            make_private_dir(path.parent())?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io_err(&path, "create the identity file", &e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io_err(&path, "write the identity file", &e))?;
            id
        };
        let meta = Meta {
            v: 1,
            identity: path,
            recipient: identity.to_public().to_string(),
        };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| ProviderError::new(ErrorKind::Backend, e.to_string()))?;
        write_atomic(&self.meta_path(), &json)?;
        Ok(meta)
    }

    /// Read, modify, write under the lock.
    fn modify(
        &self,
        f: impl FnOnce(&mut Entries) -> Result<(), ProviderError>,
    ) -> Result<(), ProviderError> {
        make_private_dir(self.store.parent())?;
        let lock_path = self.lock_path();
        // Never through a symlink: a committed `store.age.lock -> /elsewhere` would make kz
        // create a file outside the tree.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&lock_path)
            .map_err(|e| {
                io_err(&lock_path, "open the lock file", &e).help(
                    "the lock file must be a regular file (kz never follows a symlink there): remove it and retry",
                )
            })?;
        lock.lock()
            .map_err(|e| io_err(&lock_path, "lock the store", &e))?;
        let result = (|| {
            let meta = if self.meta_path().exists() {
                self.recorded_identity()?
            } else {
                self.create_identity()?
            };
            // Encrypt only to the identity's own key: a planted `.meta` naming another
            // recipient would hand every value written here to whoever holds that key.
            let recipient = Self::load_identity(&meta.identity)?.to_public();
            if recipient.to_string() != meta.recipient {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!(
                        "the identity record `{}` names a recipient that is not the public key of its identity `{}`: kz does not encrypt to it",
                        self.meta_path().display(),
                        meta.identity.display()
                    ),
                )
                .help("the record was altered (or planted): restore it from a backup, or point `path` at a new store"));
            }
            let mut entries = self.read_entries()?;
            f(&mut entries)?;
            let plain = serialize(&entries)?;
            let mut out = Vec::with_capacity(plain.len() + 256);
            let enc =
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| {
                        ProviderError::new(
                            ErrorKind::Backend,
                            format!("cannot encrypt the store: {e}"),
                        )
                    })?;
            let mut w = enc
                .wrap_output(&mut out)
                .map_err(|e| io_err(&self.store, "encrypt the store", &e))?;
            w.write_all(&plain)
                .and_then(|()| w.finish().map(drop))
                .map_err(|e| io_err(&self.store, "encrypt the store", &e))?;
            write_atomic(&self.store, &out)?;
            if let Ok(mut g) = self.cache.lock() {
                *g = Some(Arc::new(entries));
            }
            Ok(())
        })();
        let _ = lock.unlock();
        result
    }

    /// The store's key pair, creating the identity (and its record) when the store has none
    /// yet. The encrypted cache uses it, so cached values are as safe as stored ones.
    pub fn key_pair(
        &self,
    ) -> Result<(age::x25519::Identity, age::x25519::Recipient), ProviderError> {
        let meta = if self.meta_path().exists() {
            self.recorded_identity()?
        } else {
            make_private_dir(self.store.parent())?;
            self.create_identity()?
        };
        let identity = Self::load_identity(&meta.identity)?;
        let recipient = identity.to_public();
        Ok((identity, recipient))
    }

    /// Every ref in the store (for `kz doctor` and tests).
    pub fn refs(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self.cached_entries()?.keys().cloned().collect())
    }
}

fn serialize(entries: &Entries) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
    // Binary values are base64-encoded first; the encodings are zeroized when dropped.
    let encoded: BTreeMap<&str, Zeroizing<String>> = entries
        .iter()
        .filter(|(_, e)| e.value.expose_str().is_none())
        .map(|(k, e)| {
            (
                k.as_str(),
                Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(e.value.expose_bytes()),
                ),
            )
        })
        .collect();
    let out = StoreOut {
        v: 1,
        entries: entries
            .iter()
            .map(|(k, e)| {
                let b64 = encoded.get(k.as_str()).map(|s| s.as_str());
                (
                    k.as_str(),
                    EntryOut {
                        value: e.value.expose_str(),
                        value_b64: b64,
                        updated: &e.updated,
                    },
                )
            })
            .collect(),
    };
    let mut buf = Zeroizing::new(Vec::new());
    serde_json::to_writer(&mut *buf, &out).map_err(|e| {
        ProviderError::new(
            ErrorKind::Backend,
            format!("cannot serialise the store: {e}"),
        )
    })?;
    Ok(buf)
}

/// `O_NOFOLLOW`, for `OpenOptions::custom_flags` (the conversion cannot fail; if it did, every
/// flag set makes the open fail: closed, never following).
fn no_follow() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(i32::MAX)
}

fn sidecar(store: &Path, ext: &str) -> PathBuf {
    let mut name = store
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".");
    name.push(ext);
    store.with_file_name(name)
}

fn corrupt(path: &Path, why: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Backend,
        format!("the local store `{}` is damaged: {why}", path.display()),
    )
    .help("restore it from a backup, or move it away to start a new store")
}

fn io_err(path: &Path, what: &str, e: &std::io::Error) -> ProviderError {
    ProviderError::new(
        ErrorKind::Config,
        format!("cannot {what} `{}`: {e}", path.display()),
    )
    .help("check the directory's permissions and free space")
}

/// Creates a directory (and parents) with mode 0700 when missing.
pub fn make_private_dir(dir: Option<&Path>) -> Result<(), ProviderError> {
    let Some(dir) = dir else { return Ok(()) };
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, "create the directory", &e))
}

/// Writes `bytes` to `path` atomically with mode 0600 ([`crate::fsio::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProviderError> {
    crate::fsio::write_atomic(path, bytes, 0o600).map_err(|e| io_err(path, "write", &e))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Provider for LocalProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async move {
            let entries = match self.cached_entries() {
                Ok(e) => e,
                Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
            };
            items
                .iter()
                .map(|i| match entries.get(&i.reference) {
                    Some(v) => Ok(Resolved::Single(v.value.duplicate())),
                    None => Err(ProviderError::not_found(format!(
                        "`{}` is not in the local store",
                        i.reference
                    ))
                    .help(format!("store a value with `kz put {}`", i.name))),
                })
                .collect()
        })
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            self.modify(|entries| {
                entries.insert(
                    item.reference.clone(),
                    StoredValue {
                        value: value.duplicate(),
                        updated: now_rfc3339(),
                    },
                );
                Ok(())
            })
        })
    }

    fn delete<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            self.modify(|entries| match entries.remove(&item.reference) {
                Some(_) => Ok(()),
                None => Err(ProviderError::not_found(format!(
                    "`{}` is not in the local store",
                    item.reference
                ))),
            })
        })
    }

    fn max_batch(&self) -> usize {
        usize::MAX
    }

    fn describe(&self) -> Description {
        let identity = match self.recorded_identity() {
            Ok(m) => m.identity.display().to_string(),
            Err(_) => format!(
                "{} (created with the first `kz put`)",
                self.identity_option
                    .as_ref()
                    .unwrap_or(&self.default_identity)
                    .display()
            ),
        };
        Description {
            instance: self.instance.clone(),
            type_name: "local",
            details: vec![
                ("store".into(), self.store.display().to_string()),
                ("identity".into(), identity),
            ],
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move { self.cached_entries().map(drop) })
    }

    /// The store, its identity record, and the identity: the recorded one (what decrypts the
    /// store), else the one the first write would use.
    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        let mut out = vec![self.store.clone(), self.meta_path()];
        if let Ok(meta) = self.recorded_identity() {
            out.push(meta.identity);
        }
        let configured = self
            .identity_option
            .as_ref()
            .unwrap_or(&self.default_identity);
        if !out.contains(configured) {
            out.push(configured.clone());
        }
        out
    }
}
