//! `docs/docker.md`, without Docker: each pattern's kz commands run the way the Dockerfile or
//! compose file runs them (working directory `/app` with a read-only `.keyzero.toml`, trust from
//! `KEYZERO_TRUST=1`, a "volume" directory), against files in a temporary directory. The backend
//! is an `exec` plugin standing in for Vault (a program option, so the container needs trust).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::{CANARY, Run, Sandbox};

/// A value that breaks careless quoting: quotes, `$`, a command substitution, a newline.
const TRICKY: &str = "it's \"q\" $HOME $(touch PWNED) \\ end\nline two";

/// A stand-in for the vault: answers every ref from a fixed table.
const STUB: &str = r#"import json, sys
values = json.load(open(sys.argv[1]))
req = json.load(sys.stdin)
out = {}
for item in req["items"]:
    if item["ref"] in values:
        out[item["id"]] = {"value": values[item["ref"]]}
    else:
        out[item["id"]] = {"error": "no such secret", "not_found": True}
json.dump({"results": out}, sys.stdout)
"#;

/// The sandbox's project directory plays `/app`; the stub lives outside it.
fn container(secrets: &str) -> Sandbox {
    let s = Sandbox::new();
    let stub = s.root.path().join("vault-stub.py");
    std::fs::write(&stub, STUB).unwrap();
    let values = serde_json::json!({
        "prod/db-url": CANARY,
        "prod/redis-url": "redis://cache:6379/0",
        "prod/tricky": TRICKY,
        "worker/queue-key": "queue-key-value",
        "agent/openai": CANARY,
    });
    let table = s.root.path().join("vault.json");
    std::fs::write(&table, values.to_string()).unwrap();
    mount_config(&s.project, &stub, &table, secrets);
    s
}

/// Writes `dir/.keyzero.toml` as a read-only file (the `:ro` mount).
fn mount_config(dir: &Path, stub: &Path, table: &Path, secrets: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(".keyzero.toml");
    std::fs::write(
        &path,
        format!(
            "[providers.vault]\ntype = \"exec\"\ncommand = [\"python3\", \"{}\", \"{}\"]\n\n[secrets]\n{secrets}",
            stub.display(),
            table.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    path
}

/// `kz ARGS` in `dir` with the container's environment (`KEYZERO_TRUST=1` unless `trust` is
/// false).
fn kz_in(s: &Sandbox, dir: &Path, trust: bool, args: &[&str]) -> Run {
    let mut c = s.cmd(args);
    c.current_dir(dir).stdin(Stdio::null());
    if trust {
        c.env("KEYZERO_TRUST", "1");
    }
    Run::from(c.output().unwrap())
}

const APP_SECRETS: &str = "DATABASE_URL = { provider = \"vault\", ref = \"prod/db-url\" }\nREDIS_URL = { provider = \"vault\", ref = \"prod/redis-url\" }\n";

#[test]
fn docker_entrypoint_kz_run_resolves_into_the_command() {
    let s = container(APP_SECRETS);
    let config = s.path(".keyzero.toml");
    let before = std::fs::read(&config).unwrap();
    // ENTRYPOINT ["kz", "run", "--"] + CMD [...], with ENV KEYZERO_TRUST=1.
    let cmd = [
        "sh",
        "-c",
        "printf '%s|%s' \"$DATABASE_URL\" \"$REDIS_URL\"",
    ];
    let mut args = vec!["run", "--"];
    args.extend(cmd);
    let r = kz_in(&s, &s.project, true, &args).ok();
    assert_eq!(r.stdout, format!("{CANARY}|redis://cache:6379/0"));
    assert!(!r.stderr.contains(CANARY), "{}", r.stderr);
    // The variant with --trust in the entrypoint instead of the variable.
    let mut args = vec!["--trust", "run", "--"];
    args.extend(cmd);
    kz_in(&s, &s.project, false, &args).ok();
    // Without either: nothing runs, and the error says how to trust the file.
    let mut args = vec!["run", "--"];
    args.extend(cmd);
    let r = kz_in(&s, &s.project, false, &args).code(1).no_canary();
    assert!(r.stderr.contains("KEYZERO_TRUST=1"), "{}", r.stderr);
    // The read-only configuration is never written.
    assert_eq!(std::fs::read(&config).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o444
    );
    // A failed secret starts nothing (the container exits non-zero).
    let s = container("MISSING = { provider = \"vault\", ref = \"prod/nope\" }\n");
    let marker = s.root.path().join("started");
    let r = kz_in(
        &s,
        &s.project,
        true,
        &["run", "--", "touch", marker.to_str().unwrap()],
    )
    .code(1);
    assert!(!marker.exists());
    assert!(r.stderr.contains("MISSING: not found"), "{}", r.stderr);
}

#[test]
fn docker_compose_services_each_resolve_their_own_secrets() {
    let s = container(APP_SECRETS);
    let stub = s.root.path().join("vault-stub.py");
    let table = s.root.path().join("vault.json");
    // worker: build ./worker, its own config mounted read-only at /app/.keyzero.toml.
    let worker = s.root.path().join("worker-app");
    mount_config(
        &worker,
        &stub,
        &table,
        "QUEUE_KEY = { provider = \"vault\", ref = \"worker/queue-key\" }\n",
    );
    let show =
        "printf '%s|%s|%s' \"${DATABASE_URL-unset}\" \"${REDIS_URL-unset}\" \"${QUEUE_KEY-unset}\"";
    let api = kz_in(&s, &s.project, true, &["run", "--", "sh", "-c", show]).ok();
    assert_eq!(api.stdout, format!("{CANARY}|redis://cache:6379/0|unset"));
    let w = kz_in(&s, &worker, true, &["run", "--", "sh", "-c", show]).ok();
    assert_eq!(w.stdout, "unset|unset|queue-key-value");
    // `--only` limits a service to what it needs.
    let r = kz_in(
        &s,
        &s.project,
        true,
        &["run", "--only", "REDIS_URL", "--", "sh", "-c", show],
    )
    .ok();
    assert_eq!(r.stdout, "unset|redis://cache:6379/0|unset");
}

#[test]
fn docker_init_container_writes_files_into_the_volume() {
    let s = container(&format!(
        "{APP_SECRETS}TRICKY = {{ provider = \"vault\", ref = \"prod/tricky\" }}\n"
    ));
    let volume = s.root.path().join("secrets-vol");
    std::fs::create_dir_all(&volume).unwrap();
    let env_file = volume.join(".env");
    // command: ["kz", "export", "--format", "env", "--output", "/secrets/.env"]
    let r = kz_in(
        &s,
        &s.project,
        true,
        &[
            "export",
            "--format",
            "env",
            "--output",
            env_file.to_str().unwrap(),
        ],
    )
    .ok()
    .no_canary();
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_eq!(
        std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A program that reads dotenv files gets exactly the values (kz's own dotenv reader here,
    // trusted by the operator: the volume lies outside its project directory).
    let mut reader = Sandbox::with_config(&format!(
        "[providers.f]\ntype = \"dotenv\"\npath = \"{}\"\n[secrets]\nDATABASE_URL = {{ provider = \"f\", ref = \"DATABASE_URL\" }}\nTRICKY = {{ provider = \"f\", ref = \"TRICKY\" }}\n",
        env_file.display()
    ));
    reader.set("KEYZERO_TRUST", "1");
    let v = reader
        .kz(&["export", "--format", "json"])
        .ok()
        .stdout_json();
    assert_eq!(v["DATABASE_URL"], CANARY);
    assert_eq!(v["TRICKY"], TRICKY);

    // The variant for images that only read their environment: a file for sh to source.
    let sh_file = volume.join("env.sh");
    kz_in(
        &s,
        &s.project,
        true,
        &[
            "export",
            "--format",
            "shell",
            "--output",
            sh_file.to_str().unwrap(),
        ],
    )
    .ok()
    .no_canary();
    // entrypoint: ["sh", "-c", ". /secrets/env.sh && exec docker-entrypoint.sh postgres"]
    let consumer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". '{}' && exec sh -c 'printf \"%s|%s\" \"$DATABASE_URL\" \"$TRICKY\"'",
            sh_file.display()
        ))
        .current_dir(&volume)
        .output()
        .unwrap();
    assert!(consumer.status.success());
    assert_eq!(
        String::from_utf8_lossy(&consumer.stdout),
        format!("{CANARY}|{TRICKY}")
    );
    assert!(
        !volume.join("PWNED").exists(),
        "sourcing the file ran a value"
    );
}

#[test]
fn docker_blind_mode_in_a_container() {
    let s = container(
        "OPENAI_API_KEY = { provider = \"vault\", ref = \"agent/openai\", hosts = [\"api.openai.com\"] }\n",
    );
    // ENTRYPOINT ["kz", "run", "--blind", "--"], CMD ["python", "agent.py"]
    let agent = "printf %s \"$OPENAI_API_KEY\"";
    let r = kz_in(
        &s,
        &s.project,
        true,
        &["run", "--blind", "--", "sh", "-c", agent],
    )
    .ok()
    .no_canary();
    assert!(r.stdout.starts_with("kz_masked_"), "{}", r.stdout);
    // The --trust spelling of the entrypoint.
    let r = kz_in(
        &s,
        &s.project,
        false,
        &["--trust", "run", "--blind", "--", "sh", "-c", agent],
    )
    .ok()
    .no_canary();
    assert!(r.stdout.starts_with("kz_masked_"), "{}", r.stdout);
    // Nobody can `kz allow` in the container: without trust it starts nothing.
    let r = kz_in(
        &s,
        &s.project,
        false,
        &["run", "--blind", "--", "sh", "-c", agent],
    )
    .code(1)
    .no_canary();
    assert!(
        r.stdout.is_empty() && r.stderr.contains("KEYZERO_TRUST=1"),
        "{}",
        r.stderr
    );
}
