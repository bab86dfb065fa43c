//! The `age` provider: secrets kept in age-encrypted files, one file per reference.
//!
//! - `ref` is the path of an encrypted file (binary or ASCII-armoured), relative to the project
//!   directory unless absolute; a relative path that climbs out of the project with `..` is
//!   refused.
//! - Identities come from option `identity` (one path or a list, relative to the config file,
//!   `~/` expanded), else from `KEYZERO_AGE_IDENTITY` (the identity text itself) and
//!   `KEYZERO_AGE_IDENTITY_FILE` (a path). A source may hold X25519 identities (the
//!   `age-keygen` format, comments allowed) or one SSH private key (ed25519 or RSA). A
//!   passphrase-protected source (an age file encrypted with `age -p`, or an encrypted SSH key)
//!   is only usable with a terminal, where the passphrase is asked once per run.
//! - `field` picks one member when the plaintext is a JSON object, or one key when it is dotenv.
//! - Writes need option `recipients` (`age1…` or SSH public keys). A write without `field`
//!   replaces the whole plaintext; with `field` it decrypts the existing JSON object, sets the
//!   member and keeps the others. Armour is kept when the existing file was armoured. Files are
//!   replaced atomically (temporary file in the same directory, mode 0600, fsync, rename).
//!
//! The file work (reads, decryption, scrypt, prompts) runs on tokio's blocking pool.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use age::armor::{ArmoredReader, ArmoredWriter, Format};
use age::secrecy::SecretString;
use age::{DecryptError, Decryptor, Encryptor};
use kz_config::ProviderInstance;
use kz_config::model::resolve_path;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError, json_field};
use kz_secret::{Resolved, SecretValue};
use zeroize::Zeroizing;

use crate::BuildContext;

/// Environment variable holding an identity's text.
const ENV_IDENTITY: &str = "KEYZERO_AGE_IDENTITY";
/// Environment variable holding the path of an identity file.
const ENV_IDENTITY_FILE: &str = "KEYZERO_AGE_IDENTITY_FILE";
/// The first line of an armoured age file.
const ARMOR_BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// The first bytes of a binary age file.
const BINARY_MAGIC: &[u8] = b"age-encryption.org/";

/// Identities, ready to decrypt.
type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// Where identities come from.
enum IdentitySource {
    /// A file (from option `identity` or `KEYZERO_AGE_IDENTITY_FILE`).
    File {
        /// The resolved path.
        path: PathBuf,
        /// `option` or the variable's name, for messages.
        origin: &'static str,
    },
    /// The text of `KEYZERO_AGE_IDENTITY`.
    Text(SecretValue),
}

impl IdentitySource {
    /// How the source is named in messages (never its content).
    fn label(&self) -> String {
        match self {
            IdentitySource::File { path, origin } => format!("{} ({origin})", path.display()),
            IdentitySource::Text(_) => format!("${ENV_IDENTITY}"),
        }
    }
}

/// Reads and writes age-encrypted files.
pub struct AgeProvider {
    inner: Arc<Inner>,
}

/// The provider's state, shared with blocking tasks.
struct Inner {
    instance: String,
    project_dir: PathBuf,
    sources: Vec<IdentitySource>,
    /// Recipient strings, validated at build time.
    recipients: Vec<String>,
    interactive: bool,
    /// Identities loaded on first use (a passphrase is asked at most once).
    cache: Mutex<Option<Arc<Identities>>>,
}

impl fmt::Debug for AgeProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgeProvider")
            .field("instance", &self.inner.instance)
            .field("project_dir", &self.inner.project_dir)
            .field("identities", &self.inner.identity_labels())
            .field("recipients", &self.inner.recipients.len())
            .finish_non_exhaustive()
    }
}

impl AgeProvider {
    /// Builds the provider: resolves where identities come from and validates `recipients`.
    /// No file is read until a value is resolved or written.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let home = ctx.home.as_deref();
        let mut sources = Vec::new();
        if let Some(opt) = inst.option("identity") {
            for p in inst.opt_list("identity") {
                sources.push(IdentitySource::File {
                    path: resolve_path(&p, &opt.node.pos.file, home),
                    origin: "option `identity`",
                });
            }
        } else {
            if let Some(text) = (ctx.getenv)(ENV_IDENTITY).filter(|t| !t.trim().is_empty()) {
                sources.push(IdentitySource::Text(SecretValue::from_string(text)));
            }
            if let Some(p) = (ctx.getenv)(ENV_IDENTITY_FILE).filter(|p| !p.trim().is_empty()) {
                let path = match (p.strip_prefix("~/"), home) {
                    (Some(rest), Some(home)) => home.join(rest),
                    _ => PathBuf::from(p),
                };
                sources.push(IdentitySource::File {
                    path,
                    origin: ENV_IDENTITY_FILE,
                });
            }
        }

        let recipients = inst.opt_list("recipients");
        for r in &recipients {
            parse_recipient(r).map_err(|why| {
                ProviderError::new(
                    ErrorKind::Config,
                    format!("provider `{}`: invalid recipient `{}`: {why}", inst.name, shorten(r)),
                )
                .help("a recipient is an age public key (`age1…`, from `age-keygen -y`) or an SSH public key (`ssh-ed25519 …`, `ssh-rsa …`)")
            })?;
        }

        Ok(Self {
            inner: Arc::new(Inner {
                instance: inst.name.clone(),
                project_dir: ctx.project_dir.clone(),
                sources,
                recipients,
                interactive: ctx.interactive,
                cache: Mutex::new(None),
            }),
        })
    }
}

impl Provider for AgeProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        let inner = Arc::clone(&self.inner);
        let owned: Vec<Item> = items.to_vec();
        let n = items.len();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || inner.resolve_all(&owned)).await {
                Ok(results) => results,
                Err(e) => {
                    let err = ProviderError::new(
                        ErrorKind::Backend,
                        format!("the age provider's worker failed: {e}"),
                    );
                    (0..n).map(|_| Err(err.clone())).collect()
                }
            }
        })
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        let inner = Arc::clone(&self.inner);
        let item = item.clone();
        let value = value.duplicate();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.write(&item, &value))
                .await
                .map_err(|e| {
                    ProviderError::new(
                        ErrorKind::Backend,
                        format!("the age provider's worker failed: {e}"),
                    )
                })?
        })
    }

    fn max_batch(&self) -> usize {
        64
    }

    fn handles_field(&self) -> bool {
        true
    }

    /// The identity files, and the encrypted files the items name (harmless without an
    /// identity, hidden all the same).
    fn sources(&self, items: &[Item]) -> Vec<PathBuf> {
        let identities = self.inner.sources.iter().filter_map(|s| match s {
            IdentitySource::File { path, .. } => Some(path.clone()),
            IdentitySource::Text(_) => None,
        });
        let files = items
            .iter()
            .filter_map(|i| self.inner.file_path(&i.reference).ok());
        identities.chain(files).collect()
    }

    fn describe(&self) -> Description {
        let inner = &self.inner;
        let identities = inner.identity_labels();
        Description {
            instance: inner.instance.clone(),
            type_name: "age",
            details: vec![
                (
                    "files relative to".into(),
                    inner.project_dir.display().to_string(),
                ),
                (
                    "identity".into(),
                    if identities.is_empty() {
                        "none configured".into()
                    } else {
                        identities.join(", ")
                    },
                ),
                (
                    "recipients".into(),
                    if inner.recipients.is_empty() {
                        "none (read-only)".into()
                    } else {
                        inner.recipients.len().to_string()
                    },
                ),
            ],
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || inner.identities().map(|_| ()))
                .await
                .map_err(|e| {
                    ProviderError::new(
                        ErrorKind::Backend,
                        format!("the age provider's worker failed: {e}"),
                    )
                })?
        })
    }
}

impl Inner {
    fn identity_labels(&self) -> Vec<String> {
        self.sources.iter().map(IdentitySource::label).collect()
    }

    fn resolve_all(&self, items: &[Item]) -> Vec<Result<Resolved, ProviderError>> {
        items.iter().map(|item| self.resolve_one(item)).collect()
    }

    fn resolve_one(&self, item: &Item) -> Result<Resolved, ProviderError> {
        let path = self.file_path(&item.reference)?;
        let identities = self.identities()?;
        let (plaintext, _) = decrypt_file(&path, &identities)?;
        let value = match &item.field {
            None => SecretValue::from_bytes(plaintext.to_vec()),
            Some(field) => pick_field(&plaintext, field, &path)?,
        };
        Ok(Resolved::Single(value))
    }

    /// The file a reference names: relative to the project directory unless absolute, and never
    /// above it through `..`.
    fn file_path(&self, reference: &str) -> Result<PathBuf, ProviderError> {
        if reference.trim().is_empty() {
            return Err(
                ProviderError::new(ErrorKind::BadReference, "the reference is empty").help(
                    "an age reference is the path of an encrypted file, such as `secrets/db.age`",
                ),
            );
        }
        let p = Path::new(reference);
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        // `..` is resolved lexically, so `a/../b.age` is `b.age` whether or not `a` exists.
        let mut inside = PathBuf::new();
        for c in p.components() {
            match c {
                Component::Normal(part) => inside.push(part),
                Component::ParentDir => {
                    if !inside.pop() {
                        return Err(ProviderError::new(
                            ErrorKind::BadReference,
                            format!(
                                "`{reference}` climbs out of the project directory through `..`"
                            ),
                        )
                        .help(
                            "keep encrypted files inside the project, or give an absolute path",
                        ));
                    }
                }
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        if inside.as_os_str().is_empty() {
            return Err(ProviderError::new(
                ErrorKind::BadReference,
                format!("`{reference}` names the project directory, not a file"),
            )
            .help("an age reference is the path of an encrypted file, such as `secrets/db.age`"));
        }
        Ok(self.project_dir.join(inside))
    }

    /// The identities, loaded once.
    fn identities(&self) -> Result<Arc<Identities>, ProviderError> {
        let mut cache = self.cache.lock().map_err(|_| {
            ProviderError::new(
                ErrorKind::Backend,
                "the age identity cache is unusable after a crash",
            )
        })?;
        if let Some(ids) = cache.as_ref() {
            return Ok(Arc::clone(ids));
        }
        if self.sources.is_empty() {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!("provider `{}` has no age identity to decrypt with", self.instance),
            )
            .help(format!(
                "set `identity = \"path/to/key.txt\"` on the provider, or set {ENV_IDENTITY} to the identity (`AGE-SECRET-KEY-1…`), or {ENV_IDENTITY_FILE} to its path"
            )));
        }
        let mut ids: Identities = Vec::new();
        for source in &self.sources {
            ids.extend(self.load_source(source)?);
        }
        let ids = Arc::new(ids);
        *cache = Some(Arc::clone(&ids));
        Ok(ids)
    }

    fn load_source(&self, source: &IdentitySource) -> Result<Identities, ProviderError> {
        let label = source.label();
        let bytes = match source {
            IdentitySource::Text(text) => Zeroizing::new(text.expose_bytes().to_vec()),
            IdentitySource::File { path, .. } => match std::fs::read(path) {
                Ok(b) => Zeroizing::new(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ProviderError::new(
                        ErrorKind::Config,
                        format!("the age identity file {} does not exist", path.display()),
                    )
                    .help(format!(
                        "create one with `age-keygen -o {}` (and add its public key to the files' recipients), or point `identity` at an existing key",
                        path.display()
                    )));
                }
                Err(e) => {
                    return Err(ProviderError::new(
                        ErrorKind::Config,
                        format!("cannot read the age identity file {}: {e}", path.display()),
                    )
                    .help("check the file's permissions"));
                }
            },
        };
        let trimmed = trim_start(&bytes);
        if trimmed.starts_with(BINARY_MAGIC) || trimmed.starts_with(ARMOR_BEGIN) {
            let plain = self.unlock_identity_file(&bytes, &label)?;
            parse_identities(&plain, &label, self.interactive)
        } else {
            parse_identities(&bytes, &label, self.interactive)
        }
    }

    /// Decrypts a passphrase-encrypted identity file (asks for the passphrase).
    fn unlock_identity_file(
        &self,
        bytes: &[u8],
        label: &str,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        if !self.interactive {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!("the age identity {label} is passphrase-encrypted, and a passphrase identity needs a terminal"),
            )
            .help("run kz in a terminal to type the passphrase, or use an unencrypted identity file (mode 0600) or KEYZERO_AGE_IDENTITY"));
        }
        let decryptor = Decryptor::new_buffered(ArmoredReader::new(bytes)).map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!("the age identity {label} is not a readable age file: {e}"),
            )
        })?;
        if !decryptor.is_scrypt() {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!("the age identity {label} is encrypted to recipients, not to a passphrase"),
            )
            .help("decrypt it once with `age -d` and point `identity` at the result"));
        }
        let passphrase = prompt(&format!("Passphrase for the age identity {label}"))?;
        let identity = age::scrypt::Identity::new(passphrase);
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| match e {
                DecryptError::NoMatchingKeys
                | DecryptError::DecryptionFailed
                | DecryptError::KeyDecryptionFailed => ProviderError::new(
                    ErrorKind::Auth,
                    format!("wrong passphrase for the age identity {label}"),
                )
                .help(
                    "run the command again and type the passphrase the identity was encrypted with",
                ),
                other => ProviderError::new(
                    ErrorKind::Config,
                    format!("cannot decrypt the age identity {label}: {other}"),
                ),
            })?;
        let mut plain = Zeroizing::new(Vec::new());
        reader.read_to_end(&mut plain).map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!("the age identity {label} is corrupt: {e}"),
            )
        })?;
        Ok(plain)
    }

    fn write(&self, item: &Item, value: &SecretValue) -> Result<(), ProviderError> {
        if self.recipients.is_empty() {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!(
                    "provider `{}` has no recipients, so it cannot write",
                    self.instance
                ),
            )
            .help("set `recipients` on the age provider to let kz write"));
        }
        let path = self.file_path(&item.reference)?;
        let recipients = self
            .recipients
            .iter()
            .map(|r| parse_recipient(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| {
                ProviderError::new(ErrorKind::Config, format!("invalid recipient: {why}"))
            })?;

        let (plaintext, armored) = match &item.field {
            None => (
                Zeroizing::new(value.expose_bytes().to_vec()),
                existing_is_armored(&path)?,
            ),
            Some(field) => self.merge_field(&path, field, value)?,
        };

        let ciphertext = encrypt(&recipients, &plaintext, armored).map_err(|e| {
            ProviderError::new(
                ErrorKind::Backend,
                format!("cannot encrypt {}: {e}", path.display()),
            )
        })?;
        write_atomically(&path, &ciphertext)
    }

    /// The new plaintext of a field write: the existing JSON object (if any) with `field` set.
    fn merge_field(
        &self,
        path: &Path,
        field: &str,
        value: &SecretValue,
    ) -> Result<(Zeroizing<Vec<u8>>, bool), ProviderError> {
        let Some(text) = value.expose_str() else {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!("cannot store field `{field}`: the value is not UTF-8 text, and JSON members are text"),
            )
            .help("write the whole file instead (no `field`), or use another provider for binary values"));
        };
        let (mut map, armored) = if path.exists() {
            let identities = self.identities()?;
            let (plain, armored) = decrypt_file(path, &identities)?;
            let parsed = std::str::from_utf8(&plain)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
            match parsed {
                Some(serde_json::Value::Object(map)) => (map, armored),
                _ => {
                    return Err(ProviderError::new(
                        ErrorKind::Field,
                        format!("cannot set field `{field}`: {} does not hold a JSON object", path.display()),
                    )
                    .help("write without `field` to replace the whole file, or convert its plaintext to a JSON object"));
                }
            }
        } else {
            (serde_json::Map::new(), false)
        };
        map.insert(
            field.to_string(),
            serde_json::Value::String(text.to_string()),
        );
        let out = serde_json::to_vec(&serde_json::Value::Object(map)).map_err(|e| {
            ProviderError::new(
                ErrorKind::Backend,
                format!("cannot encode the JSON object: {e}"),
            )
        })?;
        Ok((Zeroizing::new(out), armored))
    }
}

/// Parses the plaintext of an identity source: one SSH private key, or X25519 identity lines.
fn parse_identities(
    bytes: &[u8],
    label: &str,
    interactive: bool,
) -> Result<Identities, ProviderError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        ProviderError::new(
            ErrorKind::Config,
            format!("the age identity {label} is not text"),
        )
    })?;
    let text = text.trim();
    if text.starts_with("-----BEGIN ") && text.contains("PRIVATE KEY-----") {
        return parse_ssh_identity(text, label, interactive);
    }
    let file = age::IdentityFile::from_buffer(text.as_bytes()).map_err(|e| {
        ProviderError::new(ErrorKind::Config, format!("the age identity {label} is invalid: {e}"))
            .help("an identity file holds `AGE-SECRET-KEY-1…` lines (from `age-keygen`) and `#` comments, or one SSH private key")
    })?;
    let ids = file.into_identities().map_err(|e| {
        ProviderError::new(
            ErrorKind::Config,
            format!("the age identity {label} is unusable: {e}"),
        )
    })?;
    if ids.is_empty() {
        return Err(ProviderError::new(
            ErrorKind::Config,
            format!("the age identity {label} holds no identity"),
        )
        .help("generate one with `age-keygen`"));
    }
    Ok(ids)
}

/// Parses an SSH private key (ed25519 or RSA); an encrypted key asks for its passphrase.
fn parse_ssh_identity(
    text: &str,
    label: &str,
    interactive: bool,
) -> Result<Identities, ProviderError> {
    let identity = age::ssh::Identity::from_buffer(text.as_bytes(), Some(label.to_string()))
        .map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!("the SSH key {label} cannot be read: {e}"),
            )
            .help("use an OpenSSH ed25519 or RSA private key (`ssh-keygen -t ed25519`)")
        })?;
    match identity {
        age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(identity)]),
        age::ssh::Identity::Encrypted(key) => {
            if !interactive {
                return Err(ProviderError::new(
                    ErrorKind::Config,
                    format!("the SSH key {label} is passphrase-protected, and a passphrase identity needs a terminal"),
                )
                .help("run kz in a terminal to type the passphrase, or use an unencrypted key"));
            }
            let passphrase = prompt(&format!("Passphrase for the SSH key {label}"))?;
            let key = key.decrypt(passphrase).map_err(|_| {
                ProviderError::new(
                    ErrorKind::Auth,
                    format!("wrong passphrase for the SSH key {label}"),
                )
                .help("run the command again and type the key's passphrase")
            })?;
            Ok(vec![Box::new(age::ssh::Identity::Unencrypted(key))])
        }
        age::ssh::Identity::Unsupported(why) => Err(ProviderError::new(
            ErrorKind::Config,
            format!(
                "the SSH key {label} is not supported: {}",
                Unsupported(&why)
            ),
        )
        .help("use an OpenSSH ed25519 or RSA key, or an age identity from `age-keygen`")),
    }
}

/// Shows why an SSH key is unsupported (its type or cipher; never key material).
struct Unsupported<'a>(&'a age::ssh::UnsupportedKey);

impl fmt::Display for Unsupported<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display(f, None)
    }
}

/// Asks for a passphrase on the terminal.
fn prompt(text: &str) -> Result<SecretString, ProviderError> {
    dialoguer::Password::new()
        .with_prompt(text)
        .interact()
        .map(SecretString::from)
        .map_err(|e| {
            ProviderError::new(
                ErrorKind::Config,
                format!("cannot read the passphrase: {e}"),
            )
        })
}

/// Parses one recipient string.
fn parse_recipient(s: &str) -> Result<Box<dyn age::Recipient + Send>, String> {
    let s = s.trim();
    if s.starts_with("age1") {
        s.parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|e| e.to_string())
    } else if s.starts_with("ssh-") {
        s.parse::<age::ssh::Recipient>()
            .map(|r| Box::new(r) as Box<dyn age::Recipient + Send>)
            .map_err(|e| match e {
                age::ssh::ParseRecipientKeyError::Invalid(why) => why.to_string(),
                age::ssh::ParseRecipientKeyError::Unsupported(ty) => {
                    format!("unsupported SSH key type `{ty}`")
                }
                age::ssh::ParseRecipientKeyError::RsaModulusTooLarge => {
                    "the RSA key is too large".into()
                }
                age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => {
                    "the RSA key is too small (under 2048 bits)".into()
                }
                age::ssh::ParseRecipientKeyError::Ignore => {
                    "this SSH key type cannot be a recipient".into()
                }
                _ => "this SSH key cannot be a recipient".into(),
            })
    } else {
        Err("expected `age1…` or an SSH public key".into())
    }
}

/// A public value, cut short for messages.
fn shorten(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 24 {
        format!("{}…", s.chars().take(24).collect::<String>())
    } else {
        s.to_string()
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// Reads and decrypts an age file; also says whether it was armoured.
fn decrypt_file(
    path: &Path,
    identities: &Identities,
) -> Result<(Zeroizing<Vec<u8>>, bool), ProviderError> {
    let shown = path.display();
    let data = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ProviderError::not_found(format!("the encrypted file {shown} does not exist")).help(format!(
                "create it with `kz put` (the provider needs `recipients`) or `age -r RECIPIENT -o {shown}`"
            ))
        } else {
            ProviderError::new(ErrorKind::Backend, format!("cannot read {shown}: {e}"))
        }
    })?;
    let armored = trim_start(&data).starts_with(ARMOR_BEGIN);
    let corrupt = |e: &dyn fmt::Display| {
        ProviderError::new(
            ErrorKind::Backend,
            format!("{shown} is not a valid age file or is corrupt: {e}"),
        )
        .help("check that the file was written by age and not truncated or edited")
    };
    let decryptor =
        Decryptor::new_buffered(ArmoredReader::new(data.as_slice())).map_err(|e| corrupt(&e))?;
    if decryptor.is_scrypt() {
        return Err(ProviderError::new(
            ErrorKind::Config,
            format!("{shown} is encrypted with a passphrase; the age provider reads files encrypted to recipients"),
        )
        .help(format!("re-encrypt it to your identity's recipient: `age -d {shown} | age -r age1… -o {shown}.new`")));
    }
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            DecryptError::NoMatchingKeys => ProviderError::new(
                ErrorKind::Auth,
                format!("no identity matches the file's recipients ({shown})"),
            )
            .help(format!(
                "configure the identity {shown} was encrypted to (option `identity`, {ENV_IDENTITY} or {ENV_IDENTITY_FILE}), or re-encrypt the file to your recipient"
            )),
            DecryptError::KeyDecryptionFailed => {
                ProviderError::new(ErrorKind::Auth, format!("cannot unlock the identity for {shown}: {e}"))
            }
            other => corrupt(&other),
        })?;
    let mut plain = Zeroizing::new(Vec::new());
    reader.read_to_end(&mut plain).map_err(|e| corrupt(&e))?;
    Ok((plain, armored))
}

/// Picks `field` from a JSON object or dotenv plaintext.
fn pick_field(plain: &[u8], field: &str, path: &Path) -> Result<SecretValue, ProviderError> {
    let shown = path.display();
    let Ok(text) = std::str::from_utf8(plain) else {
        return Err(ProviderError::new(
            ErrorKind::Field,
            format!("cannot pick field `{field}`: {shown} does not hold text"),
        )
        .help("remove `field` to get the whole value"));
    };
    if matches!(
        serde_json::from_str::<serde_json::Value>(text),
        Ok(serde_json::Value::Object(_))
    ) {
        let value = SecretValue::from_str_copy(text);
        return json_field(&value, field).map_err(|mut e| {
            e.message = format!("{} in {shown}", e.message);
            e
        });
    }
    let entries = crate::dotenv::parse(text).map_err(|e| {
        ProviderError::new(
            ErrorKind::Field,
            format!("cannot pick field `{field}`: {shown} holds neither a JSON object nor dotenv text (line {}: {e})", e.line),
        )
        .help("remove `field` to get the whole value")
    })?;
    match entries.into_iter().find(|(k, _)| k == field) {
        Some((_, v)) => Ok(v),
        None => Err(ProviderError::new(
            ErrorKind::Field,
            format!("field `{field}` does not exist in {shown}"),
        )
        .help(format!("the fields are: {}", list_keys(text)))),
    }
}

/// The keys of dotenv text, for a "did you mean" list (never the values).
fn list_keys(text: &str) -> String {
    crate::dotenv::parse(text)
        .map(|entries| {
            entries
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Whether the file at `path` exists and is armoured (a new file is binary).
fn existing_is_armored(path: &Path) -> Result<bool, ProviderError> {
    let mut head = [0u8; 64];
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let n = f.read(&mut head).unwrap_or(0);
            Ok(trim_start(head.get(..n).unwrap_or_default()).starts_with(ARMOR_BEGIN))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ProviderError::new(
            ErrorKind::Backend,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// Encrypts `plaintext` to `recipients`, armoured or binary.
fn encrypt(
    recipients: &[Box<dyn age::Recipient + Send>],
    plaintext: &[u8],
    armored: bool,
) -> Result<Vec<u8>, String> {
    let encryptor =
        Encryptor::with_recipients(recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let io = |e: std::io::Error| e.to_string();
    if armored {
        let armor = ArmoredWriter::wrap_output(&mut out, Format::AsciiArmor).map_err(io)?;
        let mut w = encryptor.wrap_output(armor).map_err(io)?;
        w.write_all(plaintext).map_err(io)?;
        w.finish().and_then(ArmoredWriter::finish).map_err(io)?;
    } else {
        let mut w = encryptor.wrap_output(&mut out).map_err(io)?;
        w.write_all(plaintext).map_err(io)?;
        w.finish().map_err(io)?;
    }
    Ok(out)
}

/// Replaces `path` with `data`: parent directories created, a temporary file in the same
/// directory (mode 0600), fsync, rename, fsync of the directory.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), ProviderError> {
    let shown = path.display();
    let fail = |what: &str, e: &dyn fmt::Display| {
        ProviderError::new(
            ErrorKind::Backend,
            format!("cannot write {shown}: {what}: {e}"),
        )
        .help("check that the directory exists and is writable")
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail("creating its directory", &e))?;
    crate::fsio::write_atomic(path, data, 0o600).map_err(|e| fail("replacing it", &e))?;
    Ok(())
}
