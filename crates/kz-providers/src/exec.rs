//! The `exec` provider: any program that speaks kz's plugin protocol.
//!
//! Option `command` is the program's argv. One invocation per batch:
//!
//! - resolve: kz writes `{"v":1,"op":"resolve","items":[{"id":"…","ref":"…","params":{…}}]}`
//!   to the program's stdin, closes it, and reads
//!   `{"results":{"<id>":{"value":"…"}|{"error":"…","not_found":true}}}` from its stdout. For a
//!   single item a plain value is accepted instead (one trailing newline is removed).
//! - write: kz sends `{"v":1,"op":"write","id":"…","ref":"…","params":{…},"value":"…"}` and
//!   expects `{"ok":true}`; `{"error":"unsupported"}` means the plugin cannot write.
//!
//! A non-zero exit or malformed output is an error naming the program. The program's stderr is
//! shown on kz's stderr only with `-v`, and every value seen on its stdout (or written to it) is
//! replaced by `****` there and in error messages. kz applies `field` itself.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use kz_config::ProviderInstance;
use kz_resolve::{BoxFuture, Description, ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use zeroize::{Zeroize, Zeroizing};

use crate::BuildContext;

/// The protocol version kz speaks.
const PROTOCOL_VERSION: u32 = 1;
/// What replaces a value in stderr and messages.
const MASK: &[u8] = b"****";
/// Longest piece of plugin text quoted in an error.
const MAX_QUOTED: usize = 300;

/// Runs a plugin program.
pub struct ExecProvider {
    instance: String,
    /// argv as configured (`argv[0]` is the program as written).
    argv: Vec<String>,
    /// The program to start (relative paths with a `/` resolved against the project).
    program: PathBuf,
    project_dir: PathBuf,
    verbose: bool,
}

impl fmt::Debug for ExecProvider {
    // Arguments are left out: they may carry tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecProvider")
            .field("instance", &self.instance)
            .field("program", &self.program)
            .field("verbose", &self.verbose)
            .finish_non_exhaustive()
    }
}

impl ExecProvider {
    /// Builds the provider from option `command`; the program is started only when used.
    pub fn new(inst: &ProviderInstance, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let argv = inst.opt_list("command");
        let Some(first) = argv.first().filter(|p| !p.is_empty()) else {
            return Err(ProviderError::new(
                ErrorKind::Config,
                format!("provider `{}` has no `command` to run", inst.name),
            )
            .help("set `command = [\"path/to/plugin\", \"arg\"]` on the provider (a program that speaks kz's plugin protocol)"));
        };
        let as_path = PathBuf::from(first);
        let program = if first.contains('/') && as_path.is_relative() {
            ctx.project_dir.join(as_path)
        } else {
            as_path
        };
        Ok(Self {
            instance: inst.name.clone(),
            argv,
            program,
            project_dir: ctx.project_dir.clone(),
            verbose: ctx.verbose,
        })
    }

    /// The program as written in `command`, for messages.
    fn name(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// Starts the program, feeds it `input` and collects its output.
    async fn run(&self, input: Zeroizing<Vec<u8>>) -> Result<RunOutput, ProviderError> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(self.argv.iter().skip(1))
            .current_dir(&self.project_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.spawn_error(&e))?;
        let stdin = child.stdin.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A plugin may exit without reading its input: that is its right, and its exit
                // status and output tell the rest.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
        };
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        let output = output.map_err(|e| {
            ProviderError::new(
                ErrorKind::Backend,
                format!("{}: cannot read the plugin's output: {e}", self.who()),
            )
        })?;
        Ok(RunOutput {
            status: output.status,
            stdout: Zeroizing::new(output.stdout),
            stderr: Zeroizing::new(output.stderr),
        })
    }

    /// "plugin `prog` (provider `name`)".
    fn who(&self) -> String {
        format!("plugin `{}` (provider `{}`)", self.name(), self.instance)
    }

    fn spawn_error(&self, e: &std::io::Error) -> ProviderError {
        let shown = self.program.display();
        match e.kind() {
            std::io::ErrorKind::NotFound => {
                let help = if self.name().contains('/') {
                    format!(
                        "check that {shown} exists (relative paths are taken from the project directory)"
                    )
                } else {
                    format!(
                        "install `{}` or put it on PATH, or give its path in `command`",
                        self.name()
                    )
                };
                ProviderError::new(
                    ErrorKind::Config,
                    format!("cannot run {}: program not found", self.who()),
                )
                .help(help)
            }
            std::io::ErrorKind::PermissionDenied => ProviderError::new(
                ErrorKind::Config,
                format!("cannot run {}: permission denied", self.who()),
            )
            .help(format!("make it executable: chmod +x {shown}")),
            _ => ProviderError::new(ErrorKind::Config, format!("cannot run {}: {e}", self.who())),
        }
    }

    /// Shows the plugin's stderr (with `-v` only), values masked.
    fn show_stderr(&self, stderr: &[u8], secrets: &[&[u8]]) {
        if !self.verbose || stderr.is_empty() {
            return;
        }
        for line in stderr_lines(&self.instance, stderr, secrets) {
            kz_resolve::notes::note(&line);
        }
    }

    /// The error for a non-zero exit, quoting the first line of stderr (values masked).
    fn exit_error(&self, status: ExitStatus, stderr: &[u8], secrets: &[&[u8]]) -> ProviderError {
        let how = describe_status(status);
        let first = first_line(stderr, secrets);
        let message = if first.is_empty() {
            format!("{} {how}", self.who())
        } else {
            format!("{} {how}: {first}", self.who())
        };
        ProviderError::new(ErrorKind::Backend, message).help(if self.verbose {
            "the plugin's stderr is shown above".to_string()
        } else {
            "run kz with -v to see the plugin's stderr (values are masked)".to_string()
        })
    }

    fn malformed(&self, what: &str) -> ProviderError {
        ProviderError::new(ErrorKind::Backend, format!("{} answered malformed output: {what}", self.who())).help(
            "a plugin prints `{\"results\":{\"<id>\":{\"value\":\"…\"}}}` on stdout (or, for one item, the plain value)",
        )
    }

    async fn resolve_batch(
        &self,
        items: &[Item],
    ) -> Result<Vec<Result<Resolved, ProviderError>>, ProviderError> {
        let request = serde_json::json!({
            "v": PROTOCOL_VERSION,
            "op": "resolve",
            "items": items.iter().map(|i| serde_json::json!({
                "id": i.name,
                "ref": i.reference,
                "params": params_object(&i.params),
            })).collect::<Vec<_>>(),
        });
        let input = serde_json::to_vec(&request).map_err(|e| {
            ProviderError::new(
                ErrorKind::Backend,
                format!("cannot encode the request: {e}"),
            )
        })?;
        let out = self.run(Zeroizing::new(input)).await?;
        let answer = parse_resolve(&out.stdout, items.len());

        let mut secrets = stdout_candidates(&out.stdout);
        if let Ok(Answer::Results(results)) = &answer {
            secrets.extend(
                results
                    .values()
                    .filter_map(|r| r.value.as_ref())
                    .map(|v| v.0.as_bytes()),
            );
        }
        self.show_stderr(&out.stderr, &secrets);
        if !out.status.success() {
            return Err(self.exit_error(out.status, &out.stderr, &secrets));
        }

        match &answer {
            Err(what) => Err(self.malformed(what)),
            Ok(Answer::Plain(value)) => Ok(vec![Ok(Resolved::Single(value.duplicate()))]),
            Ok(Answer::BatchError { error, not_found }) => {
                let err = self.plugin_error(error, *not_found, None, &secrets);
                Ok(items.iter().map(|_| Err(err.clone())).collect())
            }
            Ok(Answer::Results(results)) => Ok(items
                .iter()
                .map(|item| match results.get(&item.name) {
                    None => Err(ProviderError::new(
                        ErrorKind::Backend,
                        format!("{} returned no result for `{}`", self.who(), item.name),
                    )
                    .help("the plugin must answer every item's `id` in `results`")),
                    Some(r) => self.item_result(item, r, &secrets),
                })
                .collect()),
        }
    }

    fn item_result(
        &self,
        item: &Item,
        r: &ItemAnswer,
        secrets: &[&[u8]],
    ) -> Result<Resolved, ProviderError> {
        if r.error.is_some() || r.not_found {
            return Err(self.plugin_error(
                r.error.as_deref().unwrap_or(""),
                r.not_found,
                Some(item),
                secrets,
            ));
        }
        match &r.value {
            Some(v) => Ok(Resolved::Single(SecretValue::from_str_copy(&v.0))),
            None => Err(self.malformed(&format!(
                "the result for `{}` has neither `value` nor `error`",
                item.name
            ))),
        }
    }

    /// An error the plugin reported (masked; `not_found` decides the kind).
    fn plugin_error(
        &self,
        error: &str,
        not_found: bool,
        item: Option<&Item>,
        secrets: &[&[u8]],
    ) -> ProviderError {
        let said = quote(error.as_bytes(), secrets);
        let subject = match item {
            Some(i) => format!("`{}`", i.reference),
            None => "the batch".to_string(),
        };
        if not_found {
            let message = if said.is_empty() {
                format!("{} says {subject} does not exist", self.who())
            } else {
                format!("{} says {subject} does not exist: {said}", self.who())
            };
            ProviderError::not_found(message)
                .help("check the reference, or create the secret in the plugin's backend")
        } else {
            ProviderError::new(
                ErrorKind::Backend,
                format!("{} failed for {subject}: {said}", self.who()),
            )
        }
    }

    async fn write_value(&self, item: &Item, value: &SecretValue) -> Result<(), ProviderError> {
        let Some(text) = value.expose_str() else {
            return Err(ProviderError::new(
                ErrorKind::Unsupported,
                format!("{} cannot store this value: it is not UTF-8 text", self.who()),
            )
            .help("the plugin protocol carries text; binary values need another provider (local, age)"));
        };
        let input = write_request(item, text)?;
        let out = self.run(input).await?;
        let mut secrets = stdout_candidates(&out.stdout);
        secrets.push(value.expose_bytes());
        self.show_stderr(&out.stderr, &secrets);

        let answer = serde_json::from_slice::<WriteAnswer>(&out.stdout).ok();
        if let Some(WriteAnswer {
            error: Some(error), ..
        }) = &answer
        {
            if error == "unsupported" {
                return Err(ProviderError::new(
                    ErrorKind::Unsupported,
                    format!("{} does not support writes", self.who()),
                )
                .help(
                    "store this secret with another provider, or teach the plugin the `write` op",
                ));
            }
            return Err(ProviderError::new(
                ErrorKind::Backend,
                format!(
                    "{} could not store `{}`: {}",
                    self.who(),
                    item.reference,
                    quote(error.as_bytes(), &secrets)
                ),
            ));
        }
        if !out.status.success() {
            return Err(self.exit_error(out.status, &out.stderr, &secrets));
        }
        match answer {
            Some(WriteAnswer { ok: Some(true), .. }) => Ok(()),
            _ => Err(self.malformed("a write expects `{\"ok\":true}` or `{\"error\":\"…\"}`")),
        }
    }
}

impl Provider for ExecProvider {
    fn resolve<'a>(
        &'a self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Vec<Result<Resolved, ProviderError>>> {
        Box::pin(async move {
            match self.resolve_batch(items).await {
                Ok(results) => results,
                Err(e) => items.iter().map(|_| Err(e.clone())).collect(),
            }
        })
    }

    fn write<'a>(
        &'a self,
        item: &'a Item,
        value: &'a SecretValue,
    ) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(self.write_value(item, value))
    }

    fn max_batch(&self) -> usize {
        256
    }

    fn describe(&self) -> Description {
        Description {
            instance: self.instance.clone(),
            type_name: "exec",
            details: vec![
                ("program".into(), self.program.display().to_string()),
                (
                    "arguments".into(),
                    self.argv.len().saturating_sub(1).to_string(),
                ),
            ],
        }
    }
}

/// What a plugin run produced.
struct RunOutput {
    status: ExitStatus,
    stdout: Zeroizing<Vec<u8>>,
    stderr: Zeroizing<Vec<u8>>,
}

/// A string from the plugin's answer that is zeroed when dropped.
#[derive(Deserialize)]
#[serde(transparent)]
struct WipedString(String);

impl Drop for WipedString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// `{"results": {...}}`.
#[derive(Deserialize)]
struct ResolveAnswer {
    results: HashMap<String, ItemAnswer>,
}

/// One entry of `results`.
#[derive(Deserialize)]
struct ItemAnswer {
    value: Option<WipedString>,
    error: Option<String>,
    #[serde(default)]
    not_found: bool,
}

/// `{"error": "...", "not_found": bool}` for the whole batch.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchErrorAnswer {
    error: String,
    #[serde(default)]
    not_found: bool,
}

/// Any object with a `results` member (to tell a broken protocol answer from a plain value).
#[derive(Deserialize)]
struct HasResults {
    #[allow(dead_code)]
    results: serde::de::IgnoredAny,
}

/// The answer to a write.
#[derive(Deserialize)]
struct WriteAnswer {
    ok: Option<bool>,
    error: Option<String>,
}

/// A resolve answer, understood.
enum Answer {
    Results(HashMap<String, ItemAnswer>),
    Plain(SecretValue),
    BatchError { error: String, not_found: bool },
}

/// Reads the resolve answer: protocol JSON, a batch-wide error, or (one item only) a plain value.
fn parse_resolve(stdout: &[u8], items: usize) -> Result<Answer, &'static str> {
    if let Ok(a) = serde_json::from_slice::<ResolveAnswer>(stdout) {
        return Ok(Answer::Results(a.results));
    }
    if let Ok(a) = serde_json::from_slice::<BatchErrorAnswer>(stdout) {
        return Ok(Answer::BatchError {
            error: a.error,
            not_found: a.not_found,
        });
    }
    if serde_json::from_slice::<HasResults>(stdout).is_ok() {
        return Err("`results` must map each id to {\"value\":\"…\"} or {\"error\":\"…\"}");
    }
    if items == 1 {
        let value = stdout
            .strip_suffix(b"\r\n")
            .or_else(|| stdout.strip_suffix(b"\n"))
            .unwrap_or(stdout);
        return Ok(Answer::Plain(SecretValue::from_bytes(value.to_vec())));
    }
    Err("expected a JSON object with `results` (a plain value is only accepted for a single item)")
}

/// The write request, built in one pre-sized zeroizing buffer (it holds the value).
fn write_request(item: &Item, value: &str) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
    let encode = |e: serde_json::Error| {
        ProviderError::new(
            ErrorKind::Backend,
            format!("cannot encode the request: {e}"),
        )
    };
    let head = serde_json::to_vec(&serde_json::json!({
        "v": PROTOCOL_VERSION,
        "op": "write",
        "id": item.name,
        "ref": item.reference,
        "params": params_object(&item.params),
    }))
    .map_err(encode)?;
    let Some(head) = head.strip_suffix(b"}") else {
        return Err(ProviderError::new(
            ErrorKind::Backend,
            "cannot encode the request",
        ));
    };
    // JSON escaping at most sextuples a byte (`\u00XX`): reserve enough that the buffer never
    // reallocates and leaves a copy of the value behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(head.len() + value.len() * 6 + 16));
    buf.extend_from_slice(head);
    buf.extend_from_slice(b",\"value\":");
    serde_json::to_writer(&mut *buf, value).map_err(encode)?;
    buf.extend_from_slice(b"}\n");
    Ok(buf)
}

/// `params` as a JSON object of strings.
fn params_object(params: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

/// Everything on stdout that might be a value: the whole output and each line, trimmed.
fn stdout_candidates(stdout: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let whole = trim(stdout);
    if !whole.is_empty() {
        out.push(whole);
    }
    for line in stdout.split(|&b| b == b'\n') {
        let line = trim(line);
        if !line.is_empty() && line != whole {
            out.push(line);
        }
    }
    out
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// Replaces every occurrence of any of `secrets`, or of a secret without its surrounding
/// whitespace, with `****` (longest first).
fn mask(text: &[u8], secrets: &[&[u8]]) -> Vec<u8> {
    let mut secrets: Vec<&[u8]> = secrets
        .iter()
        .flat_map(|s| [*s, trim(s)])
        .filter(|s| !s.is_empty())
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(rest) = text.get(i..).filter(|r| !r.is_empty()) {
        match secrets.iter().find(|s| rest.starts_with(s)) {
            Some(s) => {
                out.extend_from_slice(MASK);
                i += s.len();
            }
            None => {
                out.extend(rest.first());
                i += 1;
            }
        }
    }
    out
}

/// The plugin's stderr as kz shows it: values masked, each line prefixed.
fn stderr_lines(instance: &str, stderr: &[u8], secrets: &[&[u8]]) -> Vec<String> {
    let masked = Zeroizing::new(mask(stderr, secrets));
    String::from_utf8_lossy(&masked)
        .lines()
        .map(|line| format!("kz: exec {instance}: {line}"))
        .collect()
}

/// The first non-empty line of `stderr`, masked and shortened.
fn first_line(stderr: &[u8], secrets: &[&[u8]]) -> String {
    let line = stderr
        .split(|&b| b == b'\n')
        .map(trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    quote(line, secrets)
}

/// Plugin text for a message: masked, lossily decoded, shortened.
fn quote(text: &[u8], secrets: &[&[u8]]) -> String {
    let masked = Zeroizing::new(mask(text, secrets));
    let shown = String::from_utf8_lossy(trim(&masked));
    if shown.chars().count() > MAX_QUOTED {
        format!("{}…", shown.chars().take(MAX_QUOTED).collect::<String>())
    } else {
        shown.into_owned()
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    "failed".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_replaces_longest_first() {
        let out = mask(
            b"a secret and secret-long here",
            &[b"secret", b"secret-long"],
        );
        assert_eq!(String::from_utf8(out).unwrap(), "a **** and **** here");
        assert_eq!(mask(b"abc", &[b""]), b"abc");
        assert_eq!(mask(b"", &[b"x"]), b"");
        assert_eq!(
            mask("é secret é".as_bytes(), &[b"secret"]),
            "é **** é".as_bytes()
        );
    }

    #[test]
    fn stderr_is_prefixed_and_masked() {
        let lines = stderr_lines(
            "bw",
            b"debug: got kz-canary-5d1e7b\nok\n",
            &[b"kz-canary-5d1e7b"],
        );
        assert_eq!(
            lines,
            vec!["kz: exec bw: debug: got ****", "kz: exec bw: ok"]
        );
        let lines = stderr_lines(
            "bw",
            b"x kz-canary-5d1e7b\n",
            &stdout_candidates(b"kz-canary-5d1e7b\n"),
        );
        assert_eq!(lines, vec!["kz: exec bw: x ****"]);
    }

    #[test]
    fn plain_answers_strip_one_newline() {
        let Ok(Answer::Plain(v)) = parse_resolve(b"value\n\n", 1) else {
            panic!()
        };
        assert_eq!(v.expose_str(), Some("value\n"));
        let Ok(Answer::Plain(v)) = parse_resolve(b"v\r\n", 1) else {
            panic!()
        };
        assert_eq!(v.expose_str(), Some("v"));
        let Ok(Answer::Plain(v)) = parse_resolve(br#"{"user":"u"}"#, 1) else {
            panic!()
        };
        assert_eq!(v.expose_str(), Some(r#"{"user":"u"}"#));
        assert!(parse_resolve(b"value", 2).is_err());
        assert!(parse_resolve(br#"{"results":[]}"#, 1).is_err());
        assert!(matches!(
            parse_resolve(br#"{"error":"x"}"#, 2),
            Ok(Answer::BatchError { .. })
        ));
    }

    #[test]
    fn write_request_is_valid_json() {
        let item = Item {
            name: "A".into(),
            reference: "r/1".into(),
            field: None,
            params: vec![("p".into(), "q".into())],
        };
        let buf = write_request(&item, "va\"l\u{1}ue\n").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["value"], "va\"l\u{1}ue\n");
        assert_eq!(v["op"], "write");
        assert_eq!(v["params"]["p"], "q");
        assert_eq!(v["v"], 1);
    }
}
