//! The `1password` provider: 1Password through its CLI, `op`.
//!
//! **References** are 1Password secret references, `op://VAULT/ITEM[/SECTION]/FIELD` (names or
//! IDs; a `?attribute=…` query on the field is passed through to `op` for reads). A malformed
//! reference, or one holding characters that would break an `op inject` template (control
//! characters, `{`, `}`), is rejected before `op` is run.
//!
//! **Options:** `op_path` (default `op` on PATH; a relative path containing `/` is taken from the
//! project directory, `~/` is expanded), `account` (passed to every call as `--account`), and
//! `vault` (shown by `kz doctor`; `check()` also verifies that this vault is reachable).
//!
//! **Reads** cost one `op` invocation per batch, because each `op` call takes about a second: a
//! single reference is read with `op read REF` (one trailing newline removed); several go through
//! one `op inject` whose template, on stdin, holds for each reference a line with a fresh random
//! boundary (128 bits from `/dev/urandom`) and its index, the `{{ REF }}` placeholder on its own
//! line, then the boundary line again. The output is split back by those boundaries, so values may
//! hold newlines, braces or anything else. `op inject` fails the whole template when one
//! reference is bad; kz then resolves every reference on its own with `op read` (at most
//! [`FALLBACK_CONCURRENCY`] at once), so each item gets its precise result. Sign-in and
//! missing-`op` failures are not retried that way: they apply to every item. kz applies `field`
//! itself (JSON picking on the field's value).
//!
//! **Auth** is whatever `op` has (the desktop app integration, `op signin` sessions,
//! `OP_SERVICE_ACCOUNT_TOKEN`): `op` runs with kz's own environment. `op` saying the account is
//! not signed in is an `Auth` error; "isn't an item/vault/field" is `NotFound`.
//!
//! **Writes** (`kz put`) never put the value in argv. kz reads the item with
//! `op item get ITEM --vault VAULT --format json --reveal`, sets the field's `value` in that JSON
//! (adding the field, and its section, when missing) and pipes the edited JSON to
//! `op item edit ITEM_ID --vault VAULT`. When the item does not exist it pipes a JSON item
//! template (category `PASSWORD`, the field as `CONCEALED`) to
//! `op item create - --vault VAULT`. Both forms of piped input are documented for `op` 2.x, so
//! no temporary file is ever written. Buffers that held values are zeroed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError, join_all};
use kz_secret::{Resolved, SecretValue};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use zeroize::{Zeroize, Zeroizing};

use crate::BuildContext;

/// References per `resolve` call (one `op inject` each).
const MAX_BATCH: usize = 100;
/// `op read` calls at once when a failed batch is resolved item by item.
pub const FALLBACK_CONCURRENCY: usize = 8;
/// Longest piece of `op` output quoted in an error.
const MAX_QUOTED: usize = 300;
/// How to get `op` signed in.
const SIGN_IN_HELP: &str = "sign in with `op signin` (or `eval $(op signin)`), turn on the 1Password desktop app integration (Settings > Developer > Integrate with 1Password CLI), or set OP_SERVICE_ACCOUNT_TOKEN";

/// 1Password through the `op` CLI.
#[derive(Debug)]
pub struct OpProvider {
    instance: String,
    /// `op_path` as written (for messages).
    op_name: String,
    /// The program to start.
    program: PathBuf,
    account: Option<String>,
    vault: Option<String>,
    /// Safety net around each `op` run (the engine enforces its own timeout too).
    timeout: Duration,
    /// Where `op` keeps its sessions and accounts (see [`Provider::sources`]).
    config_dirs: Vec<PathBuf>,
}

impl OpProvider {
    /// Builds the provider from options `op_path`, `account` and `vault`; `op` is started only
    /// when used.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let op_name = inst.opt_str("op_path").unwrap_or("op").to_string();
        if op_name.trim().is_empty() {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!("provider `{}`: `op_path` is empty", inst.name),
            )
            .help(
                "remove `op_path` to use `op` from PATH, or give the path of the 1Password CLI",
            ));
        }
        let program = program_path(&op_name, ctx);
        let non_empty = |name: &str| {
            inst.opt_str(name)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        Ok(Self {
            instance: inst.name.clone(),
            op_name,
            program,
            account: non_empty("account"),
            vault: non_empty("vault"),
            timeout: inst.timeout(),
            config_dirs: op_config_dirs(ctx),
        })
    }

    /// Runs `op ARGS [--account A]`, feeding `input` on stdin (stdin is `/dev/null` without it).
    async fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<OpOutput, ProviderError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args);
        if let Some(account) = &self.account {
            cmd.arg("--account").arg(account);
        }
        let mut child = cmd
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.spawn_error(&e))?;
        let stdin = child.stdin.take();
        let feed = async move {
            if let (Some(mut stdin), Some(input)) = (stdin, input) {
                // `op` exiting early is reported by its status and stderr.
                let _ = stdin.write_all(input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let done = async { tokio::join!(feed, child.wait_with_output()).1 };
        let output = tokio::time::timeout(self.timeout, done)
            .await
            .map_err(|_| {
                ProviderError::new(
                    ErrorKind::Timeout,
                    format!(
                        "`op {}` did not finish within {} (provider `{}`)",
                        args.iter().take(2).copied().collect::<Vec<_>>().join(" "),
                        humantime::format_duration(self.timeout),
                        self.instance
                    ),
                )
                .help("check that 1Password is unlocked and reachable, or raise `timeout` on the provider")
            })?
            .map_err(|e| {
                ProviderError::new(
                    ErrorKind::Backend,
                    format!("cannot read the output of `{}`: {e}", self.op_name),
                )
            })?;
        Ok(OpOutput {
            status: output.status,
            stdout: Zeroizing::new(output.stdout),
            stderr: Zeroizing::new(output.stderr),
        })
    }

    fn spawn_error(&self, e: &std::io::Error) -> ProviderError {
        let shown = self.program.display();
        match e.kind() {
            std::io::ErrorKind::NotFound => {
                let message = if self.op_name.contains('/') {
                    format!(
                        "cannot run the 1Password CLI: {shown} does not exist (provider `{}`)",
                        self.instance
                    )
                } else {
                    format!(
                        "cannot run the 1Password CLI: `{}` is not on PATH (provider `{}`)",
                        self.op_name, self.instance
                    )
                };
                ProviderError::new(ErrorKind::Config, message).help(
                    "install the 1Password CLI (https://developer.1password.com/docs/cli/get-started/: `brew install 1password-cli`, the 1Password apt/dnf repository, or the zip from 1password.com/downloads/command-line), or set `op_path` on the provider to where `op` is",
                )
            }
            std::io::ErrorKind::PermissionDenied => ProviderError::new(
                ErrorKind::Config,
                format!(
                    "cannot run {shown}: permission denied (provider `{}`)",
                    self.instance
                ),
            )
            .help(format!("make it executable: chmod +x {shown}")),
            _ => ProviderError::new(
                ErrorKind::Config,
                format!("cannot run {shown}: {e} (provider `{}`)", self.instance),
            ),
        }
    }

    /// The error for a failed `op` run: the kind from what `op` said, `secret` masked.
    fn failure(
        &self,
        subject: &str,
        what: &str,
        out: &OpOutput,
        secret: Option<&[u8]>,
    ) -> ProviderError {
        let said = op_message(&out.stderr, secret);
        let said = if said.is_empty() {
            describe_status(out.status)
        } else {
            said
        };
        let kind = classify(&said);
        let message = format!(
            "{subject}: {said} (`op {what}`, provider `{}`)",
            self.instance
        );
        let help = match kind {
            ErrorKind::NotFound => "check the vault, item, section and field names (or use IDs) with `op item get ITEM --vault VAULT`; a reference is op://VAULT/ITEM[/SECTION]/FIELD".to_string(),
            ErrorKind::Auth => match &self.account {
                Some(a) => format!("{SIGN_IN_HELP} (account `{a}`)"),
                None => SIGN_IN_HELP.to_string(),
            },
            _ => format!("run `{} {what}` by hand to see what it says", self.op_name),
        };
        ProviderError::new(kind, message).help(help)
    }

    /// Reads one reference with `op read`.
    async fn read_one(&self, reference: &str) -> Result<SecretValue, ProviderError> {
        let out = self.run(&["read", reference], None).await?;
        if !out.status.success() {
            return Err(self.failure(&format!("`{reference}`"), "read", &out, None));
        }
        let value = out.stdout.strip_suffix(b"\n").unwrap_or(&out.stdout);
        Ok(SecretValue::from_bytes(value.to_vec()))
    }

    /// Reads several references with one `op inject`.
    async fn inject(&self, refs: &[&str]) -> Result<Vec<SecretValue>, ProviderError> {
        let marker = boundary();
        let template = inject_template(&marker, refs);
        let out = self.run(&["inject"], Some(template.as_bytes())).await?;
        if !out.status.success() {
            let subject = format!("{} references", refs.len());
            return Err(self.failure(&subject, "inject", &out, None));
        }
        split_injected(&out.stdout, &marker, refs.len()).ok_or_else(|| {
            ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "`op inject` printed output kz cannot split back into {} values (provider `{}`)",
                    refs.len(),
                    self.instance
                ),
            )
            .help("check that `op_path` is the 1Password CLI (`op --version`)")
        })
    }

    /// Reads each reference on its own, a few at a time.
    async fn read_each(&self, refs: &[&str]) -> Vec<Result<SecretValue, ProviderError>> {
        let limit = tokio::sync::Semaphore::new(FALLBACK_CONCURRENCY);
        let limit = &limit;
        join_all(refs.iter().map(|r| async move {
            let _permit = limit.acquire().await.ok();
            self.read_one(r).await
        }))
        .await
    }

    async fn resolve_all(&self, items: &[Item]) -> Vec<Result<Resolved, ProviderError>> {
        let mut results: Vec<Option<Result<Resolved, ProviderError>>> =
            Vec::with_capacity(items.len());
        let mut wanted: Vec<(usize, &str)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match OpRef::parse(&item.reference) {
                Ok(_) => {
                    results.push(None);
                    wanted.push((i, item.reference.as_str()));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let refs: Vec<&str> = wanted.iter().map(|(_, r)| *r).collect();
        let values: Vec<Result<SecretValue, ProviderError>> = match refs.as_slice() {
            [] => Vec::new(),
            [one] => vec![self.read_one(one).await],
            _ => match self.inject(&refs).await {
                Ok(values) => values.into_iter().map(Ok).collect(),
                // One bad reference fails the whole template: find out which, item by item.
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Backend) => {
                    self.read_each(&refs).await
                }
                Err(e) => refs.iter().map(|_| Err(e.clone())).collect(),
            },
        };
        for ((i, _), value) in wanted.iter().zip(values) {
            if let Some(slot) = results.get_mut(*i) {
                *slot = Some(value.map(Resolved::Single));
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ProviderError::new(
                        ErrorKind::Backend,
                        "no result from `op`",
                    ))
                })
            })
            .collect()
    }

    async fn write_value(&self, item: &Item, value: &SecretValue) -> Result<(), ProviderError> {
        let subject = format!("`{}`", item.reference);
        if item.field.is_some() {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!("{subject}: the 1password provider cannot store one `field` of a JSON value"),
            )
            .help("name the 1Password field in the reference (op://VAULT/ITEM[/SECTION]/FIELD) and remove `field`"));
        }
        let r = OpRef::parse(&item.reference)?;
        if r.field.contains('?') {
            return Err(ProviderError::new(
                ErrorKind::BadReference,
                format!("{subject}: a reference with a `?` query cannot be written"),
            )
            .help("write to the plain field reference, without `?attribute=…`"));
        }
        let Some(text) = value.expose_str() else {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!("{subject}: 1Password fields hold text and this value is not UTF-8"),
            )
            .help(
                "store binary values with another provider (local, age), or base64-encode them",
            ));
        };
        let secret = Some(value.expose_bytes());

        let got = self
            .run(
                &[
                    "item", "get", r.item, "--vault", r.vault, "--format", "json", "--reveal",
                ],
                None,
            )
            .await?;
        if got.status.success() {
            let mut current: Value = serde_json::from_slice(&got.stdout).map_err(|e| {
                ProviderError::new(
                    ErrorKind::Backend,
                    format!("{subject}: `op item get` printed JSON kz cannot read: line {}, column {} (provider `{}`)", e.line(), e.column(), self.instance),
                )
            })?;
            let marker = boundary();
            let staged =
                set_field(&mut current, &r, &marker).and_then(|()| splice(&current, &marker, text));
            let id = current
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .unwrap_or(r.item)
                .to_string();
            wipe(&mut current);
            let input = staged.map_err(|what| self.template_error(&subject, what))?;
            let out = self
                .run(&["item", "edit", &id, "--vault", r.vault], Some(&input))
                .await?;
            if !out.status.success() {
                return Err(self.failure(&subject, "item edit", &out, secret));
            }
            return Ok(());
        }
        let e = self.failure(&subject, "item get", &got, secret);
        if e.kind != ErrorKind::NotFound {
            return Err(e);
        }

        let marker = boundary();
        let input = splice(&new_item(&r, &marker), &marker, text)
            .map_err(|what| self.template_error(&subject, what))?;
        let out = self
            .run(&["item", "create", "-", "--vault", r.vault], Some(&input))
            .await?;
        if !out.status.success() {
            return Err(self.failure(&subject, "item create", &out, secret));
        }
        Ok(())
    }

    fn template_error(&self, subject: &str, what: &str) -> ProviderError {
        ProviderError::new(
            ErrorKind::Backend,
            format!(
                "{subject}: cannot build the item JSON for `op`: {what} (provider `{}`)",
                self.instance
            ),
        )
        .help("check the item with `op item get ITEM --vault VAULT --format json`")
    }

    async fn check_op(&self) -> Result<(), ProviderError> {
        let out = self.run(&["whoami"], None).await?;
        if !out.status.success() {
            let mut e = self.failure("signed-in check", "whoami", &out, None);
            if e.kind == ErrorKind::NotFound {
                e.kind = ErrorKind::Auth;
            }
            return Err(e);
        }
        if let Some(vault) = &self.vault {
            let out = self
                .run(&["vault", "get", vault, "--format", "json"], None)
                .await?;
            if !out.status.success() {
                let mut e = self.failure(&format!("vault `{vault}`"), "vault get", &out, None);
                if e.kind == ErrorKind::NotFound {
                    e.kind = ErrorKind::Config;
                    e.help = Some(format!(
                        "check the `vault` option of provider `{}` (`op vault list` shows the vaults this account can reach)",
                        self.instance
                    ));
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Provider for OpProvider {
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

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn handles_field(&self) -> bool {
        false
    }

    /// `op`'s configuration directories (accounts, session state), and the desktop app's
    /// (`~/.config/1Password`, `~/.1password`, whose sockets sign `op` in).
    fn sources(&self, _items: &[Item]) -> Vec<PathBuf> {
        self.config_dirs.clone()
    }

    fn describe(&self) -> Description {
        let mut details = vec![("op path".to_string(), self.program.display().to_string())];
        details.push((
            "account".into(),
            self.account
                .clone()
                .unwrap_or_else(|| "(op's default)".into()),
        ));
        details.push((
            "vault".into(),
            self.vault
                .clone()
                .unwrap_or_else(|| "(named in each reference)".into()),
        ));
        Description {
            instance: self.instance.clone(),
            type_name: "1password",
            details,
        }
    }

    fn check<'a>(&'a self) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.check_op())
    }
}

/// What an `op` run produced.
struct OpOutput {
    status: ExitStatus,
    stdout: Zeroizing<Vec<u8>>,
    stderr: Zeroizing<Vec<u8>>,
}

/// A parsed `op://VAULT/ITEM[/SECTION]/FIELD`.
#[derive(Debug, Clone, Copy)]
struct OpRef<'a> {
    vault: &'a str,
    item: &'a str,
    section: Option<&'a str>,
    field: &'a str,
}

impl<'a> OpRef<'a> {
    fn parse(reference: &'a str) -> Result<Self, ProviderError> {
        let bad = |why: &str| {
            ProviderError::new(
                ErrorKind::BadReference,
                format!("`{reference}` is not a 1Password reference: {why}"),
            )
            .help("a 1Password reference looks like op://VAULT/ITEM/FIELD or op://VAULT/ITEM/SECTION/FIELD (copy it with \"Copy Secret Reference\" in 1Password)")
        };
        let Some(rest) = reference.strip_prefix("op://") else {
            return Err(bad("it does not start with op://"));
        };
        if reference
            .chars()
            .any(|c| c.is_control() || c == '{' || c == '}')
        {
            return Err(bad("it holds a control character or a brace"));
        }
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(bad("a part is empty"));
        }
        match parts.as_slice() {
            [vault, item, field] => Ok(Self {
                vault,
                item,
                section: None,
                field,
            }),
            [vault, item, section, field] => Ok(Self {
                vault,
                item,
                section: Some(section),
                field,
            }),
            _ => Err(bad("it needs 3 or 4 parts after op://")),
        }
    }
}

/// `op_path` as a program: a bare name is looked up on PATH, `~/` is expanded, and a relative
/// path with a `/` is taken from the project directory.
/// `OP_CONFIG_DIR`, `$XDG_CONFIG_HOME/op`, `~/.config/op`, `~/.op`, and the desktop app's
/// `~/.config/1Password` and `~/.1password`.
fn op_config_dirs(ctx: &BuildContext) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (ctx.getenv)("OP_CONFIG_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .collect();
    out.push(ctx.config_home.join("op"));
    out.push(ctx.config_home.join("1Password"));
    if let Some(home) = &ctx.home {
        for rel in [".config/op", ".op", ".config/1Password", ".1password"] {
            let p = home.join(rel);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn program_path(op_path: &str, ctx: &BuildContext) -> PathBuf {
    if let (Some(rest), Some(home)) = (op_path.strip_prefix("~/"), &ctx.home) {
        return home.join(rest);
    }
    let path = Path::new(op_path);
    if op_path.contains('/') && path.is_relative() {
        ctx.project_dir.join(path)
    } else {
        path.to_path_buf()
    }
}

/// A fresh 32-hex-digit boundary: 16 bytes from `/dev/urandom`, or (where that cannot be read)
/// from `RandomState`, which the standard library seeds from the OS's randomness.
fn boundary() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (n, chunk) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_usize(n);
            for (b, r) in chunk.iter_mut().zip(h.finish().to_le_bytes()) {
                *b = r;
            }
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `op inject` template: per reference, `B-i`, `{{ REF }}` and `B-i` on lines of their own.
fn inject_template(marker: &str, refs: &[&str]) -> String {
    let mut t = String::new();
    for (i, r) in refs.iter().enumerate() {
        let line = format!("{marker}-{i}\n");
        t.push_str(&line);
        t.push_str("{{ ");
        t.push_str(r);
        t.push_str(" }}\n");
        t.push_str(&line);
    }
    t
}

/// Splits `op inject` output made from [`inject_template`] back into values.
fn split_injected(out: &[u8], marker: &str, n: usize) -> Option<Vec<SecretValue>> {
    let mut rest = out;
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        let open = format!("{marker}-{i}\n");
        let close = format!("\n{marker}-{i}\n");
        rest = rest.strip_prefix(open.as_bytes())?;
        let end = rest
            .windows(close.len())
            .position(|w| w == close.as_bytes())?;
        values.push(SecretValue::from_bytes(rest.get(..end)?.to_vec()));
        rest = rest.get(end + close.len()..)?;
    }
    Some(values)
}

/// Sets the referenced field of an item's JSON to `marker`, adding the field (and its section)
/// when missing.
fn set_field(item: &mut Value, r: &OpRef<'_>, marker: &str) -> Result<(), &'static str> {
    let obj = item
        .as_object_mut()
        .ok_or("the item is not a JSON object")?;
    let section_id = match r.section {
        None => None,
        Some(s) => {
            let sections = obj
                .entry("sections")
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .ok_or("`sections` is not a list")?;
            let found = sections.iter().find_map(|sec| {
                let id = sec.get("id").and_then(Value::as_str)?;
                let label = sec.get("label").and_then(Value::as_str);
                (id == s || label == Some(s)).then(|| id.to_string())
            });
            Some(found.unwrap_or_else(|| {
                sections.push(json!({"id": s, "label": s}));
                s.to_string()
            }))
        }
    };
    let fields = obj
        .entry("fields")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("`fields` is not a list")?;
    let named = |f: &Value| {
        [f.get("label"), f.get("id")]
            .iter()
            .any(|v| v.and_then(Value::as_str) == Some(r.field))
    };
    let section_of = |f: &Value| {
        f.get("section")
            .and_then(|s| s.get("id"))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let index = match &section_id {
        Some(sid) => fields
            .iter()
            .position(|f| named(f) && section_of(f).as_deref() == Some(sid.as_str())),
        // Without a section, a field outside any section wins over one inside a section.
        None => fields
            .iter()
            .position(|f| named(f) && section_of(f).is_none())
            .or_else(|| fields.iter().position(named)),
    };
    match index
        .and_then(|i| fields.get_mut(i))
        .and_then(Value::as_object_mut)
    {
        Some(field) => {
            field.insert("value".into(), Value::String(marker.into()));
        }
        None => fields.push(new_field(r.field, section_id.as_deref(), marker)),
    }
    Ok(())
}

/// A concealed field (in section `section`, when given).
fn new_field(label: &str, section: Option<&str>, value: &str) -> Value {
    let mut f = Map::new();
    if label == "password" && section.is_none() {
        f.insert("id".into(), json!("password"));
        f.insert("purpose".into(), json!("PASSWORD"));
    }
    f.insert("type".into(), json!("CONCEALED"));
    f.insert("label".into(), json!(label));
    f.insert("value".into(), json!(value));
    if let Some(s) = section {
        f.insert("section".into(), json!({"id": s}));
    }
    Value::Object(f)
}

/// The JSON item template for a new item holding the referenced field (value `marker`).
fn new_item(r: &OpRef<'_>, marker: &str) -> Value {
    let mut item = json!({
        "title": r.item,
        "category": "PASSWORD",
        "fields": [new_field(r.field, r.section, marker)],
    });
    if let (Some(s), Some(obj)) = (r.section, item.as_object_mut()) {
        obj.insert("sections".into(), json!([{"id": s, "label": s}]));
    }
    item
}

/// Serialises `item` with the string `marker` replaced by `value`, in a zeroizing buffer that
/// never reallocates (so no copy of the value is left behind).
fn splice(item: &Value, marker: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let json = Zeroizing::new(serde_json::to_vec(item).map_err(|_| "cannot encode JSON")?);
    let quoted = format!("\"{marker}\"");
    let at = json
        .windows(quoted.len())
        .position(|w| w == quoted.as_bytes())
        .ok_or("the field was not placed")?;
    let (head, tail) = json.split_at(at);
    let tail = tail.get(quoted.len()..).unwrap_or_default();
    // JSON escaping at most sextuples a byte (`\u00XX`).
    let mut buf = Zeroizing::new(Vec::with_capacity(json.len() + value.len() * 6 + 2));
    buf.extend_from_slice(head);
    serde_json::to_writer(&mut *buf, value).map_err(|_| "cannot encode the value")?;
    buf.extend_from_slice(tail);
    Ok(buf)
}

/// Zeroes every string in a JSON value (an item from `op item get` holds its other secrets).
fn wipe(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe),
        Value::Object(o) => o.values_mut().for_each(wipe),
        _ => {}
    }
}

/// What kind of failure `op`'s message describes.
fn classify(said: &str) -> ErrorKind {
    let s = said.to_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if any(&[
        "not currently signed in",
        "not signed in",
        "authorization",
        "unauthorized",
        "session expired",
        "invalid session",
        "sign in",
        "signin",
        "service account token",
    ]) {
        ErrorKind::Auth
    } else if any(&[
        "isn't an item",
        "isn't a vault",
        "isn't a field",
        "could not find item",
        "could not find field",
        "could not find vault",
        "no item found",
        "does not have a field",
    ]) {
        ErrorKind::NotFound
    } else {
        ErrorKind::Backend
    }
}

/// `op`'s first message line, without its `[ERROR] DATE TIME` prefix, `secret` masked.
fn op_message(stderr: &[u8], secret: Option<&[u8]>) -> String {
    let masked = Zeroizing::new(match secret.filter(|s| !s.is_empty()) {
        Some(s) => mask(stderr, s),
        None => stderr.to_vec(),
    });
    let text = String::from_utf8_lossy(&masked);
    let line = text
        .lines()
        .map(strip_log_prefix)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if line.chars().count() > MAX_QUOTED {
        format!("{}…", line.chars().take(MAX_QUOTED).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `[ERROR] 2024/01/01 00:00:00 message` → `message`.
fn strip_log_prefix(line: &str) -> &str {
    let line = line.trim();
    let Some(rest) = line
        .strip_prefix("[ERROR]")
        .or_else(|| line.strip_prefix("[WARN]"))
    else {
        return line;
    };
    let mut rest = rest.trim_start();
    for _ in 0..2 {
        let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
        if word
            .chars()
            .all(|c| c.is_ascii_digit() || c == '/' || c == ':')
            && !word.is_empty()
        {
            rest = after.trim_start();
        }
    }
    rest
}

/// `text` with every occurrence of `secret` replaced by `****`.
fn mask(text: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(rest) = text.get(i..).filter(|r| !r.is_empty()) {
        if rest.starts_with(secret) {
            out.extend_from_slice(b"****");
            i += secret.len();
        } else {
            out.extend(rest.first());
            i += 1;
        }
    }
    out
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("op exited with status {code}"),
        None => "op was killed by a signal".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_output_splits_back_by_boundaries() {
        let marker = boundary();
        assert_eq!(marker.len(), 32);
        assert_ne!(marker, boundary());
        let refs = ["op://v/a/f", "op://v/b/f", "op://v/c/f"];
        let template = inject_template(&marker, &refs);
        let values = ["multi\nline\n", "", "{{ op://v/x/y }} \"q\" é"];
        let mut out = template.clone();
        for (r, v) in refs.iter().zip(values) {
            out = out.replacen(&format!("{{{{ {r} }}}}"), v, 1);
        }
        let split = split_injected(out.as_bytes(), &marker, 3).unwrap();
        let got: Vec<&str> = split.iter().map(|v| v.expose_str().unwrap()).collect();
        assert_eq!(got, values);
        // A value holding another call's boundary is still split right.
        let other = boundary();
        let out = format!("{marker}-0\n{other}-0\nx\n{marker}-0\n");
        let split = split_injected(out.as_bytes(), &marker, 1).unwrap();
        assert_eq!(
            split[0].expose_str(),
            Some(format!("{other}-0\nx").as_str())
        );
        assert!(split_injected(b"garbage", &marker, 1).is_none());
    }

    #[test]
    fn messages_lose_the_log_prefix_and_are_classified() {
        let m = op_message(
            b"[ERROR] 2024/01/01 00:00:00 \"db\" isn't an item in the \"Dev\" vault\n",
            None,
        );
        assert_eq!(m, "\"db\" isn't an item in the \"Dev\" vault");
        assert_eq!(classify(&m), ErrorKind::NotFound);
        assert_eq!(
            classify("You are not currently signed in. Please run `op signin --help`"),
            ErrorKind::Auth
        );
        assert_eq!(classify("account is not signed in"), ErrorKind::Auth);
        assert_eq!(classify("could not find field pw"), ErrorKind::NotFound);
        assert_eq!(classify("something else"), ErrorKind::Backend);
        assert_eq!(
            op_message(b"leak kz-canary-x here", Some(b"kz-canary-x")),
            "leak **** here"
        );
    }

    #[test]
    fn refs_are_parsed_strictly() {
        let r = OpRef::parse("op://Dev/db/Prod/password").unwrap();
        assert_eq!(
            (r.vault, r.item, r.section, r.field),
            ("Dev", "db", Some("Prod"), "password")
        );
        for bad in [
            "Dev/db/pw",
            "op://Dev/db",
            "op://a/b/c/d/e",
            "op://Dev//pw",
            "op://D/{{x}}/f",
            "op://D/i/f\n",
        ] {
            assert_eq!(
                OpRef::parse(bad).unwrap_err().kind,
                ErrorKind::BadReference,
                "{bad}"
            );
        }
    }

    #[test]
    fn set_field_edits_or_adds_and_splice_escapes() {
        let mut item = json!({"id": "x1", "fields": [
            {"id": "username", "label": "username", "value": "u"},
            {"id": "p2", "label": "password", "value": "old", "section": {"id": "s1", "label": "Prod"}},
        ], "sections": [{"id": "s1", "label": "Prod"}]});
        let r = OpRef::parse("op://Dev/x/Prod/password").unwrap();
        set_field(&mut item, &r, "MARK").unwrap();
        let buf = splice(&item, "MARK", "new\"\nvalue").unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["fields"][1]["value"], "new\"\nvalue");
        assert_eq!(v["fields"][0]["value"], "u");

        let r = OpRef::parse("op://Dev/x/Other/token").unwrap();
        set_field(&mut item, &r, "MARK2").unwrap();
        assert_eq!(item["sections"][1]["label"], "Other");
        assert_eq!(item["fields"][2]["section"]["id"], "Other");
        wipe(&mut item);
        assert_eq!(item["fields"][0]["value"], "");
    }
}
