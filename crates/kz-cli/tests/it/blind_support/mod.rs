//! Test support for blind mode: HTTPS echo servers with a test CA ([`echo`]) and the clients
//! of the compatibility matrix ([`clients`]), plus running a client directly (no proxy) with
//! a clean environment in which only the test CA is trusted, or through a plain `CONNECT`
//! proxy ([`tunnel`]) set the way `kz run --blind` sets it.

pub mod clients;
pub mod echo;
pub mod tunnel;

use std::path::Path;
use std::process::{Command, Stdio};

pub use clients::{Answer, Client, ClientOutput, Shape, echo_header};
pub use echo::{EchoServer, TestCa};
pub use tunnel::TunnelProxy;

/// The variables that name a CA bundle for the clients of the matrix (the machine presets
/// them to the system bundle, so every test sets them explicitly).
pub const CA_VARS: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

/// A finished client run.
#[derive(Debug)]
pub struct ClientRun {
    /// Exit code.
    pub code: Option<i32>,
    /// Raw stdout.
    pub stdout: String,
    /// Raw stderr.
    pub stderr: String,
    /// Parsed stdout.
    pub out: ClientOutput,
}

impl ClientRun {
    /// From a finished process.
    pub fn from_output(o: std::process::Output) -> Self {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        Self {
            code: o.status.code(),
            out: ClientOutput::parse(&stdout),
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `client` against `base` straight (no proxy), with `API_TOKEN=token` and every CA
/// variable set to `ca`, in an environment holding nothing else but PATH, HOME (`home`) and
/// LANG.
pub fn run_direct(client: Client, base: &str, ca: &Path, token: &str, home: &Path) -> ClientRun {
    run_client(client, base, ca, token, home, &[])
}

/// The proxy variables as `kz run --blind` sets them (`NO_PROXY` given).
pub fn proxy_env(proxy_url: &str, no_proxy: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .map(|k| ((*k).to_string(), proxy_url.to_string()))
    .collect();
    env.push(("NO_PROXY".into(), no_proxy.into()));
    env.push(("no_proxy".into(), no_proxy.into()));
    env.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    env
}

/// [`run_direct`] with `extra` variables added (the proxy ones, say).
pub fn run_client(
    client: Client,
    base: &str,
    ca: &Path,
    token: &str,
    home: &Path,
    extra: &[(String, String)],
) -> ClientRun {
    let (argv, env) = client.command(base);
    let (prog, args) = argv.split_first().unwrap();
    let mut c = Command::new(prog);
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LANG", "C")
        .env("API_TOKEN", token)
        .envs(env)
        .envs(extra.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    for v in CA_VARS {
        c.env(v, ca);
    }
    ClientRun::from_output(c.output().unwrap())
}
