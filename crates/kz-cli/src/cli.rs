//! The command-line interface: every command and flag, with help texts and examples.
//! Help, completions and man pages are all generated from these definitions.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  kz init                         create .keyzero.toml here
  kz add DATABASE_URL             map a variable to a secret (local store by default)
  kz put DATABASE_URL             store its value (hidden prompt)
  kz run -- npm start             run with the secrets in the environment
  kz status                       check that every secret resolves

Docs: README.md and docs/ in the keyzero repository.";

/// keyzero: resolve secrets at run time from any vault, never from .env files.
#[derive(Debug, Parser)]
#[command(name = "kz", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
pub struct Global {
    /// Start configuration discovery in DIR instead of the working directory
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Use FILE as the project file (also KEYZERO_CONFIG)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The active environment (else KEYZERO_ENV, NODE_ENV, RAILS_ENV, APP_ENV, RACK_ENV, development)
    #[arg(long = "env", global = true, value_name = "NAME")]
    pub env: Option<String>,
    /// Trust the project files (.keyzero.toml, .keyzero.local.toml) for this invocation (also KEYZERO_TRUST=1)
    #[arg(long, global = true)]
    pub trust: bool,
    /// Print only errors
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More detail (repeatable)
    #[arg(long, short, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// No colours (also NO_COLOR)
    #[arg(long, global = true)]
    pub no_color: bool,
    /// How errors are printed
    #[arg(long, global = true, value_enum, default_value_t = ErrorFormat::Human, value_name = "FORMAT")]
    pub error_format: ErrorFormat,
}

/// Error output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ErrorFormat {
    /// A diagnostic per error, for people
    Human,
    /// One JSON object per line
    Json,
}

/// Output format of `status`, `list` and `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ReportFormat {
    /// A table for people
    #[default]
    Text,
    /// JSON with "version": 1
    Json,
}

/// Output format of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// export NAME='value' lines for a shell
    Shell,
    /// NAME="value" lines (dotenv, for env_file:)
    Env,
    /// {"NAME": "value"}
    Json,
}

/// Shells with an integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HookShell {
    /// GNU bash
    Bash,
    /// Z shell
    Zsh,
    /// fish
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a starter .keyzero.toml in this directory
    #[command(
        after_help = "Examples:\n  kz init\n  kz init --force      overwrite an existing .keyzero.toml"
    )]
    Init(InitArgs),
    /// Map an environment variable to a secret reference
    #[command(
        after_help = "Examples:\n  kz add DATABASE_URL                                  local store, ref <project>/DATABASE_URL\n  kz add STRIPE_KEY --provider aws --ref sm://prod/stripe --field secret_key\n  kz add OPENAI_API_KEY --ref op://Dev/openai/credential --hosts api.openai.com\n  kz add DATABASE_URL --env production --provider vault --ref secret/data/prod/db"
    )]
    Add(AddArgs),
    /// Store a secret's value in its provider (hidden prompt or --stdin, never argv)
    #[command(
        after_help = "Examples:\n  kz put DATABASE_URL                  hidden prompt\n  printf %s \"$TOKEN\" | kz put API_TOKEN --stdin\n  kz put --missing                     prompt for every secret that is not stored yet"
    )]
    Put(PutArgs),
    /// Remove a mapping (and with --purge, the stored value)
    #[command(after_help = "Examples:\n  kz rm OLD_TOKEN\n  kz rm OLD_TOKEN --purge --yes")]
    Rm(RmArgs),
    /// Move a .env file into the store and map every key
    #[command(
        after_help = "Examples:\n  kz import                 read .env, store each value in the local store\n  kz import .env.dev --dry-run\n  rm .env                   once `kz run -- env` shows the values"
    )]
    Import(ImportArgs),
    /// Resolve every secret, then run a command with them in its environment
    #[command(
        after_help = "Examples:\n  kz run -- npm start\n  kz run --only DATABASE_URL -- psql\n  kz run --clean-env --keep-env AWS_PROFILE -- ./deploy.sh\n  kz run --watch 1m -- ./server        restart when a secret changes\n  kz run --mask -- ./flaky-tests       values in the output become ****"
    )]
    Run(RunArgs),
    /// Print the resolved secrets (shell, dotenv or JSON)
    #[command(
        after_help = "Examples:\n  eval \"$(kz export)\"\n  kz export --shell fish | source\n  kz export --format env --output .env.runtime    (refused unless git ignores it)\n  kz export --format json --only API_KEY"
    )]
    Export(ExportArgs),
    /// Resolve every secret and report which work (never any part of a value)
    #[command(after_help = "Examples:\n  kz status\n  kz status --format json --only DATABASE_URL")]
    Status(StatusArgs),
    /// Check the configuration without contacting any backend
    #[command(after_help = "Examples:\n  kz validate\n  kz validate --format json")]
    Validate(ReportArgs),
    /// List the mappings of the active environment without resolving them
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  kz list\n  kz list --env production --format json"
    )]
    List(ReportArgs),
    /// Print the shell integration that loads secrets on entering a project
    #[command(
        after_help = "Examples:\n  eval \"$(kz hook --shell zsh)\"      in ~/.zshrc\n  eval \"$(kz hook --shell bash)\"     in ~/.bashrc\n  kz hook --shell fish | source       in ~/.config/fish/config.fish"
    )]
    Hook(HookArgs),
    /// Trust this project's configuration after review (shell hook, blind mode, backends, programs, servers)
    Allow,
    /// Revoke trust in this project's configuration
    Deny,
    /// Check the environment: config, providers, tools, blind mode and isolation support
    Doctor,
    /// Manage the encrypted value cache
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Work with tamper-evident audit logs
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Team mode: check a bundle (the server itself comes with `kz server start`)
    #[command(subcommand)]
    Server(ServerCommand),
    /// Team mode: see why a request is allowed or denied, and test policies
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Team mode: testing aids for workload identity tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a completion script
    #[command(
        after_help = "Examples:\n  kz completions bash > ~/.local/share/bash-completion/completions/kz\n  kz completions zsh > \"${fpath[1]}/_kz\"\n  kz completions fish > ~/.config/fish/completions/kz.fish"
    )]
    Completions(CompletionsArgs),
    /// (internal) the shell hook's per-prompt check
    #[command(name = "__hook-env", hide = true)]
    HookEnv(HookEnvArgs),
    /// (internal) write man pages into DIR
    #[command(name = "__man", hide = true)]
    Man(ManArgs),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check audit logs' hash chain; reports the first broken or missing record
    #[command(
        after_help = "Examples:\n  kz audit verify audit.jsonl\n  kz audit verify audit.jsonl.1 audit.jsonl     rotated files, oldest first"
    )]
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// The log files, oldest first (a rotated chain continues across files)
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Validate a bundle completely without serving: every problem with its YAML line
    #[command(
        after_help = "Checks the YAML and schema (unknown keys are errors), issuers and their keys, backends\nagainst the provider catalog, resolvers (globs, backends, parameters, hosts), duplicate\nnames, and compiles every policy (CEL, literal glob/regex arguments, unreachable rules).\nNo backend and no issuer is contacted. Exit 1 when the bundle has a problem.\n\nExamples:\n  kz server check --bundle bundle.yaml\n  kz server check -b bundle.yaml --format json"
    )]
    Check(ServerCheckArgs),
    /// Serve a bundle: verify workload identity, decide by policy, resolve, audit
    #[command(
        after_help = "Serves POST /v1/resolve and /v1/decide (Authorization: Bearer <workload JWT>), GET /healthz,
/readyz and /metrics. Every decision is appended to the audit log (the bundle's audit.path,
--audit, else standard output). Reloads the bundle on SIGHUP and when the file changes (an
invalid new bundle is reported and the old one keeps serving); reopens the audit log on
SIGUSR1; drains in-flight requests on SIGTERM/SIGINT. Logs go to standard error.

Examples:
  kz server start --bundle bundle.yaml
  kz server start -b bundle.yaml -l 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem
  kz server start -b bundle.yaml --audit /var/log/keyzero/audit.jsonl
  kz server start -b bundle.yaml --proxy --public-key public.pem   (the credential proxy)
  kz server start -b bundle.yaml --mcp --identity-token-file /var/run/agent.jwt   (MCP on stdio)"
    )]
    Start(Box<ServerStartArgs>),
}

#[derive(Debug, Args)]
pub struct ServerStartArgs {
    /// The bundle (YAML)
    #[arg(long, short = 'b', value_name = "PATH")]
    pub bundle: PathBuf,
    /// Address to listen on (loopback by default; 0.0.0.0:PORT to serve the network)
    #[arg(
        long,
        short = 'l',
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: std::net::SocketAddr,
    /// Serve TLS with this PEM certificate chain (reloaded with the bundle)
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Audit log path (`-` for standard output); overrides the bundle's audit.path
    #[arg(long, value_name = "PATH")]
    pub audit: Option<String>,
    /// Requests per second allowed per identity (issuer and subject), burst twice that; 0: no limit
    #[arg(long, value_name = "N", default_value_t = kz_server::DEFAULT_RATE)]
    pub rate_limit: u32,
    /// How long in-flight requests may take to finish on shutdown
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_interval)]
    pub drain: std::time::Duration,
    /// The private key (Ed25519, EC P-256 or RSA, PEM) that signs `short_lived` tokens
    #[arg(long, value_name = "PATH", env = "KEYZERO_SIGNING_KEY_PATH")]
    pub signing_key: Option<PathBuf>,
    /// The credential proxy that redeems `short_lived` tokens, put in each token and answer
    #[arg(long, value_name = "URL", env = "KEYZERO_PROXY_URL")]
    pub proxy_url: Option<String>,
    /// Serve as the credential proxy: redeem short-lived tokens instead of serving the API
    #[arg(long)]
    pub proxy: bool,
    /// With --proxy: the public key (PEM) that verifies short-lived tokens
    #[arg(long, value_name = "PATH", env = "KEYZERO_PUBLIC_KEY_PATH")]
    pub public_key: Option<PathBuf>,
    /// Serve MCP over stdin/stdout instead of the HTTP API (an agent starts `kz` itself)
    #[arg(long, conflicts_with = "proxy")]
    pub mcp: bool,
    /// With --mcp: the file holding the caller's identity token, read at each tool call
    /// (instead of a `jwt` argument, which puts the token into the model's context)
    #[arg(long, value_name = "PATH", requires = "mcp")]
    pub identity_token_file: Option<PathBuf>,
    /// Serve MCP over Streamable HTTP on this address instead of the HTTP API (each request's
    /// bearer token is its caller)
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["mcp", "proxy"])]
    pub mcp_listen: Option<std::net::SocketAddr>,
    /// With --mcp-listen: the endpoint's public URL (default http[s]://ADDR/mcp), the audience
    /// its tokens must carry
    #[arg(long, value_name = "URL", requires = "mcp_listen")]
    pub mcp_resource: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServerCheckArgs {
    /// The bundle (YAML)
    #[arg(long, short = 'b', value_name = "PATH")]
    pub bundle: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the decision for one request, the deciding policy and the evaluation trace
    #[command(
        after_help = "Nothing is fetched: no backend is contacted. With --token the token is verified exactly as\nthe server would (its issuer's keys may be fetched); with --claims the claims are taken as\nverified and mapped through the issuer's profile (--issuer, needed when the bundle has more\nthan one issuer and the claims have no matching `iss`).\n\nExamples:\n  kz policy eval -b bundle.yaml --claims ci-claims.json --ref prod/db\n  kz policy eval -b bundle.yaml --token \"$ACTIONS_ID_TOKEN\" --ref prod/db --context '{\"ticket\":\"INC-1\"}'\n  kz policy eval -b bundle.yaml --claims c.json --ref prod/db --format json"
    )]
    Eval(PolicyEvalArgs),
    /// Run table-driven policy tests (claims or identity, ref, context -> expected decision)
    #[command(
        after_help = "TESTS.yaml:\n  tests:\n    - name: main may read prod\n      issuer: gha                 # the bundle's issuer whose profile maps the claims\n      claims: { repository_owner: acme, ref: refs/heads/main }\n      ref: prod/db\n      context: { ticket: INC-1 }  # optional\n      expect: allow               # allow | deny\n      policy: ci-main             # optional: the deciding policy\n    - name: a set identity\n      identity: { issuer: gha, org: acme, branch: main }\n      ref: prod/db\n      expect: deny\n\nA failing case shows its trace. Exit 1 on any failure.\n\nExamples:\n  kz policy test -b bundle.yaml policy-tests.yaml\n  kz policy test -b bundle.yaml policy-tests.yaml --format json"
    )]
    Test(PolicyTestArgs),
}

#[derive(Debug, Args)]
pub struct PolicyEvalArgs {
    /// The bundle (YAML)
    #[arg(long, short = 'b', value_name = "PATH")]
    pub bundle: PathBuf,
    /// A workload identity token (JWT), verified as the server would
    #[arg(
        long,
        value_name = "JWT",
        conflicts_with = "claims",
        required_unless_present = "claims"
    )]
    pub token: Option<String>,
    /// A JSON file of claims, taken as verified (`-` for standard input)
    #[arg(long, value_name = "FILE")]
    pub claims: Option<PathBuf>,
    /// The issuer (by name) whose profile maps --claims
    #[arg(long, value_name = "NAME", requires = "claims")]
    pub issuer: Option<String>,
    /// The requested name
    #[arg(long = "ref", value_name = "REF")]
    pub reference: String,
    /// The caller's context (a JSON object; untrusted)
    #[arg(long, value_name = "JSON")]
    pub context: Option<String>,
    /// request.transport
    #[arg(long, value_enum, default_value_t = TransportArg::Http)]
    pub transport: TransportArg,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

/// How a request reaches the server (`request.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// The HTTP API
    Http,
    /// MCP
    Mcp,
    /// The credential proxy
    Proxy,
}

#[derive(Debug, Args)]
pub struct PolicyTestArgs {
    /// The bundle (YAML)
    #[arg(long, short = 'b', value_name = "PATH")]
    pub bundle: PathBuf,
    /// The test table (YAML)
    #[arg(value_name = "TESTS.yaml")]
    pub tests: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a JWT for local testing against a `static_keys` issuer
    #[command(
        after_help = "A testing aid: the token is signed with the private key in --key (PEM: RSA, EC P-256/P-384,\nEd25519) or, for HS256/384/512, with the secret in that file. `iat` and `exp` (one hour)\nare added when the claims lack them; --issuer sets `iss`. The token goes to standard output.\n\nExamples:\n  kz token sign --key es256.pem --issuer https://ci.example --claims '{\"sub\":\"ci\",\"aud\":\"keyzero\"}'\n  kz token sign --key hmac.key --alg HS256 --kid k1 --issuer https://ci.example --claims @claims.json"
    )]
    Sign(TokenSignArgs),
}

#[derive(Debug, Args)]
pub struct TokenSignArgs {
    /// The signing key (a PEM private key, or an HMAC secret file)
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The `iss` claim
    #[arg(long, value_name = "URL")]
    pub issuer: String,
    /// The claims: a JSON object, or @FILE
    #[arg(long, value_name = "JSON")]
    pub claims: String,
    /// The algorithm (default: from the key: RS256, ES256, ES384 or EdDSA)
    #[arg(long, value_name = "ALG")]
    pub alg: Option<String>,
    /// The `kid` header
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove every cached value
    Clear,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Overwrite an existing .keyzero.toml
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The environment variable (asked for when omitted on a terminal)
    pub name: Option<String>,
    /// Provider instance or type (default: local)
    #[arg(long, value_name = "PROVIDER")]
    pub provider: Option<String>,
    /// The reference in that provider
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// One field of a JSON / key-value secret
    #[arg(long)]
    pub field: Option<String>,
    /// Blind mode: hosts this secret may be sent to (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    pub hosts: Vec<String>,
    /// Write into .keyzero.local.toml instead of .keyzero.toml
    #[arg(long)]
    pub local: bool,
    /// Replace an existing mapping of the same name
    #[arg(long)]
    pub force: bool,
    #[arg(long = "name", hide = true, value_name = "NAME")]
    pub old_name: Option<String>,
    #[arg(long = "resolver", hide = true)]
    pub old_resolver: Option<String>,
    #[arg(long = "reference", hide = true)]
    pub old_reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The mapped secret to store
    #[arg(required_unless_present = "missing", conflicts_with = "missing")]
    pub name: Option<String>,
    /// Read the value from standard input (one trailing newline stripped)
    #[arg(long)]
    pub stdin: bool,
    /// Prompt for every secret that is not found and whose provider can store it
    #[arg(long)]
    pub missing: bool,
    /// Refused: a value on the command line is visible to every local user
    #[arg(long, hide = true, value_name = "VALUE")]
    pub value: Option<OsString>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The mapping to remove
    pub name: String,
    /// Also delete the stored value (asks first)
    #[arg(long)]
    pub purge: bool,
    /// Do not ask (required with --purge when there is no terminal)
    #[arg(long, short)]
    pub yes: bool,
    /// Remove from .keyzero.local.toml instead of .keyzero.toml
    #[arg(long)]
    pub local: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .env file to import
    #[arg(default_value = ".env", value_name = "FILE")]
    pub file: PathBuf,
    /// Writable provider to store the values in (default: local)
    #[arg(long)]
    pub provider: Option<String>,
    /// Prefix of the refs (default: "<project>/")
    #[arg(long)]
    pub prefix: Option<String>,
    /// Show what would be stored and mapped, change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long = "file", hide = true, value_name = "FILE")]
    pub old_file: Option<PathBuf>,
    #[arg(long = "resolver", hide = true)]
    pub old_resolver: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Only these secrets (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// Start the command with only PATH HOME USER SHELL TERM LANG LC_ALL TMPDIR TZ plus the secrets
    #[arg(long)]
    pub clean_env: bool,
    /// With --clean-env or --blind: also pass these variables (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub keep_env: Vec<String>,
    /// Give the command masked tokens; a local proxy swaps in the values only for each secret's hosts
    #[arg(long, conflicts_with_all = ["watch", "mask"])]
    pub blind: bool,
    /// With --blind: let every secret also go to this host (repeatable: api.example.com, *.example.com, localhost:8443)
    #[arg(long, value_name = "PATTERN", requires = "blind")]
    pub allow_host: Vec<String>,
    /// With --blind: append every swap, refusal and scrub to this hash-chained audit log
    #[arg(long, value_name = "PATH", requires = "blind")]
    pub audit: Option<PathBuf>,
    /// With --blind: run the command in its own network namespace (Linux) that can only reach the proxy
    #[arg(long, requires = "blind")]
    pub isolate: bool,
    /// With --blind: do not set the proxy variables (the proxy URL is in KZ_PROXY_URL); the CA bundle also holds the system roots
    #[arg(long, requires = "blind")]
    pub no_force_proxy: bool,
    /// Re-resolve every INTERVAL (default 5m) and on SIGHUP; restart the command when a value changed
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "5m", value_parser = parse_interval)]
    pub watch: Option<std::time::Duration>,
    /// With --watch: time between SIGTERM and SIGKILL when restarting
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_interval)]
    pub grace: std::time::Duration,
    /// Replace secret values (8 bytes or more) in the command's output with ****
    #[arg(long)]
    pub mask: bool,
    /// The command and its arguments (after `--`; options before it are kz's own, and a mistyped
    /// one is an error rather than the command)
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    kz_config::parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err("the interval must be more than zero".into())
        } else {
            Ok(d)
        }
    })
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only these secrets (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// Output format (default: shell)
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Quote for this shell (implies --format shell)
    #[arg(long, value_enum, conflicts_with = "format")]
    pub shell: Option<HookShell>,
    /// Write to FILE (atomically, mode 0600) instead of standard output
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Write FILE even inside a git work tree that does not ignore it
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only these secrets (comma-separated)
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub only: Vec<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

#[derive(Debug, Args)]
pub struct HookArgs {
    /// The shell
    #[arg(long, value_enum)]
    pub shell: HookShell,
}

#[derive(Debug, Args)]
pub struct HookEnvArgs {
    #[arg(long, value_enum)]
    pub shell: HookShell,
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub state: String,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages
    pub dir: PathBuf,
}
