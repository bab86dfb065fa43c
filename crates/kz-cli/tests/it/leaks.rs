//! The canary: seeded in every backend a test uses, it must appear only where a value
//! legitimately goes (the child's environment, `export` output, an explicit --output file).

use crate::util::{CANARY, Sandbox};

#[test]
fn a_full_tour_never_leaks_the_canary() {
    let mut s = Sandbox::with_config(
        "[providers.dotenv]\npath = \"vals.env\"\n[secrets]\nLOCAL = \"local://proj/LOCAL\"\nENVV = \"env://KZ_CANARY_SRC\"\nDOT = { provider = \"dotenv\", ref = \"DOT\" }\nJSONF = { provider = \"env\", ref = \"KZ_CANARY_JSON\", field = \"missing\" }\n",
    );
    s.set("KZ_CANARY_SRC", CANARY)
        .set("KZ_CANARY_JSON", &format!("{{\"secret\":\"{CANARY}\"}}"));
    let dotenv = s.write("vals.env", &format!("DOT={CANARY}\n"));
    s.kz_stdin(&["put", "LOCAL", "--stdin"], CANARY)
        .ok()
        .no_canary();
    // Every command that must not print values, in text and JSON, verbose.
    for args in [
        &["status"][..],
        &["status", "--format", "json"],
        &["-vv", "status"],
        &["--error-format", "json", "status"],
        &["list"],
        &["list", "--format", "json"],
        &["validate"],
        &["validate", "--format", "json"],
        &["doctor"],
        &["run", "--", "true"],
        &["-v", "run", "--only", "LOCAL,ENVV,DOT", "--", "true"],
        &["put", "--missing"],
    ] {
        s.kz(args).no_canary();
    }
    // The values do reach the child and export.
    let r = s
        .kz(&["run", "--only", "LOCAL", "--", "printenv", "LOCAL"])
        .ok();
    assert_eq!(r.stdout.trim(), CANARY);
    assert!(!r.stderr.contains(CANARY));
    let r = s
        .kz(&["export", "--only", "LOCAL,DOT", "--format", "json"])
        .ok();
    assert!(r.stdout.contains(CANARY) && !r.stderr.contains(CANARY));
    let out = s.path("explicit.env");
    s.kz(&["export", "--only", "LOCAL", "--output", "explicit.env"])
        .ok()
        .no_canary();
    // No file kz wrote holds the canary in plaintext, except the explicit --output (the store is
    // encrypted; vals.env is the test's own input).
    assert_eq!(
        s.files_with_canary(&[&dotenv, &out]),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn debug_output_of_errors_never_holds_values() {
    let mut s = Sandbox::with_config(
        "[secrets]\nX = { provider = \"env\", ref = \"KZ_V\", field = \"a\" }\n",
    );
    s.set("KZ_V", CANARY);
    let r = s
        .kz(&["-vvv", "--error-format", "json", "run", "--", "true"])
        .code(1)
        .no_canary();
    assert!(r.stderr.contains("not a JSON object"), "{}", r.stderr);
}

/// A stand-in for whatever a configured `address` points at: a loopback HTTP server that
/// records every request head and answers 403 with Vault's error shape, echoing the request's
/// `X-Vault-Token` in the message (as a hostile or careless server might).
pub struct EchoServer {
    pub port: u16,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl EchoServer {
    pub fn start() -> Self {
        Self::start_padded(0)
    }

    /// The echoed message starts with `pad` filler characters (so the token can straddle a
    /// provider's cut of long messages).
    pub fn start_padded(pad: usize) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&heads);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let token = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("x-vault-token")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                seen.lock().unwrap().push(head);
                let filler = "p".repeat(pad);
                let body = format!(
                    "{{\"errors\":[\"{filler}permission denied: token {token} may not read this path\"]}}"
                );
                let _ = write!(
                    conn,
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, heads }
    }

    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

#[test]
fn a_backend_echoing_the_token_in_its_error_does_not_get_it_printed() {
    let server = EchoServer::start();
    let mut s = Sandbox::with_config(
        "[secrets]\nV = { provider = \"vault\", ref = \"secret/data/app#key\" }\n",
    );
    // The address is in the user's own (trusted) global file; the token is ambient.
    let global = s.root.path().join("config/keyzero/config.toml");
    std::fs::create_dir_all(global.parent().unwrap()).unwrap();
    std::fs::write(
        &global,
        format!(
            "[providers.vault]\ntype = \"hashicorp\"\naddress = \"{}\"\ntimeout = \"3s\"\n",
            server.address()
        ),
    )
    .unwrap();
    s.set("VAULT_TOKEN", CANARY);
    // Vault spends the user's ambient token: only a trusted project reaches it.
    s.set("KEYZERO_TRUST", "1");
    for args in [
        &["run", "--", "true"][..],
        &["--error-format", "json", "run", "--", "true"],
        &["-vv", "status"],
        &["export"],
    ] {
        let r = s.kz(args).code(1).no_canary();
        // `status` reports the error in its table on stdout.
        let both = format!("{}{}", r.stdout, r.stderr);
        assert!(both.contains("<redacted>"), "{args:?}: {both}");
    }
    // The server really got the token (and echoed it): the redaction is what kept it out.
    assert!(server.requests().iter().any(|h| h.contains(CANARY)));
    // A long message is cut short after the token was removed: no prefix of it survives.
    let padded = EchoServer::start_padded(292 - "permission denied: token ".len());
    std::fs::write(
        &global,
        format!(
            "[providers.vault]\ntype = \"hashicorp\"\naddress = \"{}\"\ntimeout = \"3s\"\n",
            padded.address()
        ),
    )
    .unwrap();
    let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
    assert!(!r.stderr.contains(&CANARY[..8]), "{}", r.stderr);
    // A token read from a file is a credential too.
    s.env.remove("VAULT_TOKEN");
    std::fs::write(s.root.path().join("home/.vault-token"), CANARY).unwrap();
    let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
    assert!(!r.stderr.contains(&CANARY[..8]), "{}", r.stderr);
    assert!(r.stderr.contains("<redacte"), "{}", r.stderr);
    // Ambient variables that are not secrets (the address) stay readable in messages.
    std::fs::write(
        &global,
        "[providers.vault]\ntype = \"hashicorp\"\ntimeout = \"3s\"\n",
    )
    .unwrap();
    s.set("VAULT_ADDR", &server.address());
    let r = s.kz(&["run", "--", "true"]).code(1).no_canary();
    assert!(
        r.stderr.contains(&format!("Vault at {}", server.address())),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("<redacted>"), "{}", r.stderr);
}

#[test]
fn keep_env_cannot_pass_the_variable_an_env_secret_is_read_from() {
    let mut s = Sandbox::with_config(
        "[secrets]\nE = { provider = \"env\", ref = \"KZ_SRC\", hosts = [\"api.example.com\"] }\n",
    );
    s.set("KZ_SRC", CANARY).set("KEYZERO_TRUST", "1");
    let r = s
        .kz(&[
            "run",
            "--blind",
            "--keep-env",
            "KZ_SRC",
            "--",
            "sh",
            "-c",
            "printf '%s|%s' \"${KZ_SRC-unset}\" \"$E\"",
        ])
        .ok()
        .no_canary();
    assert!(r.stdout.starts_with("unset|kz_masked_"), "{}", r.stdout);
    assert!(r.stderr.contains("KZ_SRC"), "{}", r.stderr);
}
