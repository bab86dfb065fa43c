//! `docs/server.md` is executable: its quick start (the files, then the shell steps between
//! `<!-- quickstart:begin -->` and `<!-- quickstart:end -->`) runs in a sandbox with the built
//! `kz` first on `PATH`, and prints what the doc says (`#>` lines). The production files under
//! `deploy/` parse and say what the guide says they do.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::{Background, Sandbox, kz_bin};

/// Whether this build of kz has the `keyzero` provider, which the quick start's `kz run` step
/// needs (it came from another branch). Asked without a network: with its token variable unset,
/// `kz run` fails at once, on the missing token when the provider is there, else on the
/// provider. Anything else fails the test.
fn keyzero_provider_built() -> bool {
    let s = Sandbox::with_config(
        "[providers.team]\ntype = \"keyzero\"\nendpoint = \"http://127.0.0.1:9\"\n\
         token_source = \"env:KZ_DOCS_NO_SUCH_TOKEN\"\n\n[secrets]\n\
         X = { provider = \"team\", ref = \"app/x\" }\n",
    );
    let r = s.kz(&["run", "--trust", "--", "true"]);
    assert_ne!(r.code, Some(0), "{}", r.stderr);
    if r.stderr
        .contains("the `keyzero` provider is not available in this build")
    {
        return false;
    }
    assert!(
        r.stderr.contains("KZ_DOCS_NO_SUCH_TOKEN"),
        "kz run failed for another reason than the missing token:\n{}",
        r.stderr
    );
    true
}

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The quick start of `docs/server.md`.
struct QuickStart {
    /// (file name, content) of the ```yaml / ```toml blocks starting with `# file: NAME`.
    files: Vec<(String, String)>,
    /// The shell blocks before `<!-- quickstart:client -->` and after the client block.
    steps: Vec<String>,
    /// The shell block after `<!-- quickstart:client -->`.
    client: String,
}

fn quick_start() -> QuickStart {
    let doc = std::fs::read_to_string(repo().join("docs/server.md")).unwrap();
    let begin = doc
        .find("<!-- quickstart:begin -->")
        .expect("docs/server.md has no <!-- quickstart:begin --> marker");
    let end = doc
        .find("<!-- quickstart:end -->")
        .expect("docs/server.md has no <!-- quickstart:end --> marker");
    let part = &doc[begin..end];
    let mut q = QuickStart {
        files: Vec::new(),
        steps: Vec::new(),
        client: String::new(),
    };
    let mut lines = part.lines();
    let mut client_next = false;
    while let Some(line) = lines.next() {
        if line.trim() == "<!-- quickstart:client -->" {
            client_next = true;
            continue;
        }
        let Some(lang) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        match lang {
            "sh" if client_next => {
                q.client = body.join("\n") + "\n";
                client_next = false;
            }
            "sh" => q.steps.push(body.join("\n") + "\n"),
            "yaml" | "toml" => {
                let name = body
                    .first()
                    .and_then(|l| l.strip_prefix("# file: "))
                    .unwrap_or_else(|| panic!("a ```{lang} block without `# file: NAME`"));
                q.files
                    .push((name.trim().to_owned(), body[1..].join("\n") + "\n"));
            }
            other => panic!("unexpected ```{other} block in the quick start"),
        }
    }
    assert!(
        !q.steps.is_empty() && !q.client.is_empty(),
        "quick start blocks missing"
    );
    q
}

/// The `#>` lines of a shell block: the output it shows.
fn expected(script: &str) -> Vec<String> {
    script
        .lines()
        .filter_map(|l| l.strip_prefix("#> "))
        .map(str::to_owned)
        .collect()
}

/// Whether `line` matches `pattern`, where `…` stands for any text.
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line.ends_with(last) || line.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Asserts every expected line appears in `output`, in order.
#[track_caller]
fn assert_shows(output: &str, want: &[String]) {
    let mut lines = output.lines();
    for w in want {
        assert!(
            lines.by_ref().any(|l| matches(w, l)),
            "the quick start did not print {w:?} (in this order)\noutput:\n{output}"
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn server_docs_quick_start_runs_as_written() {
    let q = quick_start();
    let client_step = keyzero_provider_built();
    let mut s = Sandbox::new();
    let bin_dir = kz_bin().parent().unwrap().display().to_string();
    let path = format!("{bin_dir}:{}", s.env["PATH"]);
    s.set("PATH", &path);
    // A free port instead of the doc's 8080 (tests run in parallel), in the files too.
    let addr = format!("127.0.0.1:{}", free_port());
    for (name, text) in &q.files {
        s.write(name, &text.replace("127.0.0.1:8080", &addr));
    }
    let mut blocks = vec![q.steps[0].clone()];
    if client_step {
        blocks.push(q.client.clone());
    }
    blocks.extend(q.steps[1..].iter().cloned());
    let script = blocks.concat().replace("127.0.0.1:8080", &addr);
    assert!(
        script.contains(&addr),
        "the quick start no longer serves on 127.0.0.1:8080"
    );
    s.write("quickstart.sh", &format!("set -euo pipefail\n{script}"));
    // Output to a file, not a pipe: the server started in the background must not hold up
    // the wait for the script.
    let out_path = s.root.path().join("quickstart.out");
    let out = File::create(&out_path).unwrap();
    let mut bg = Background::default();
    let status = Command::new("bash")
        .arg(s.path("quickstart.sh"))
        .current_dir(&s.project)
        .env_clear()
        .envs(&s.env)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    // The server the script started in the background, stopped by its PID whatever happened.
    if let Ok(pid) = std::fs::read_to_string(s.path("server.pid")) {
        bg.pids.push(pid.trim().parse().unwrap());
    }
    let output = std::fs::read_to_string(&out_path).unwrap();
    let log = std::fs::read_to_string(s.path("server.log")).unwrap_or_default();
    assert!(
        status.success(),
        "the quick start failed ({status}):\n{output}\nserver log:\n{log}"
    );
    let mut want = expected(&q.steps[0]);
    if client_step {
        want.extend(expected(&q.client));
    }
    for step in &q.steps[1..] {
        want.extend(expected(step));
    }
    assert!(
        want.len() >= 6,
        "the quick start shows too little: {want:?}"
    );
    assert_shows(&output, &want);
    // The server stopped on SIGTERM (the script waited for it) and logged no value or token.
    assert!(log.contains("drained"), "{log}");
    let audit = std::fs::read_to_string(s.path("audit.jsonl")).unwrap();
    for text in [&log, &audit] {
        assert!(!text.contains("s3cr3t-from-the-server"), "{text}");
    }

    if !client_step {
        // A build without the `keyzero` provider: the client step's configuration is valid,
        // `kz run` names the missing provider, and the step shows what the doc says.
        eprintln!("this build has no keyzero provider: the quick start ran without `kz run`");
        s.kz(&["validate"]).ok();
        let r = s.kz(&["run", "--trust", "--", "true"]);
        assert!(
            r.code != Some(0) && r.stderr.contains("not available in this build"),
            "{}",
            r.stderr
        );
        assert_eq!(
            expected(&q.client),
            ["DB_PASSWORD has 22 characters"],
            "the client step's output"
        );
    }
}

#[test]
fn server_docs_quick_start_extraction_finds_every_part() {
    let q = quick_start();
    let names: Vec<&str> = q.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bundle.yaml", ".keyzero.toml"]);
    assert!(q.steps[0].contains("kz server start"));
    assert!(q.client.contains("kz run"));
    assert!(matches(
        "ok: … record(s), last …",
        "ok: 3 record(s), last ab"
    ));
    assert!(!matches("ok: … record(s)", "ok: 3 records"));
    assert!(!matches("a…b…c", "abc-x"));
}

/// Every YAML document under `deploy/`, parsed by PyYAML (the venv's python3 when there, which
/// scripts/test installs with moto's server extra, else the system's) into JSON: (file, docs).
fn deploy_yaml() -> Vec<(String, Vec<Value>)> {
    let python = std::env::var("KZ_TOOLS_VENV")
        .map(|v| Path::new(&v).join("bin/python3"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let out = Command::new(&python)
        .arg("-c")
        .arg(
            r#"
import json, pathlib, sys, yaml
root = pathlib.Path(sys.argv[1])
files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
print(json.dumps([[str(p.relative_to(root)), list(yaml.safe_load_all(p.read_text()))] for p in files]))
"#,
        )
        .arg(repo().join("deploy"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (python3 with PyYAML is needed)", python.display()));
    assert!(
        out.status.success(),
        "parsing deploy/ failed (python3 with PyYAML is needed):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, Vec<Value>)> = serde_json::from_slice(&out.stdout).unwrap();
    v
}

fn kind<'a>(docs: &'a [(String, Vec<Value>)], file: &str, kind: &str) -> &'a Value {
    docs.iter()
        .filter(|(f, _)| f == file)
        .flat_map(|(_, d)| d)
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{file}: no {kind}"))
}

#[test]
fn deploy_kubernetes_files_parse_and_match_the_guide() {
    let docs = deploy_yaml();
    let files: Vec<&str> = docs.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        ["kubernetes/client-job.yaml", "kubernetes/server.yaml"]
    );
    for (f, d) in &docs {
        assert!(!d.is_empty(), "{f}: empty");
        for doc in d {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{f}: a document without apiVersion/kind: {doc}"
            );
        }
    }

    // The server: 2 replicas, probes, the bundle mounted as a directory, drain < grace period.
    let dep = kind(&docs, "kubernetes/server.yaml", "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["server", "start"]);
    assert!(args.contains(&"--drain=30s"), "{args:?}");
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);
    let mounts = c["volumeMounts"].as_array().unwrap();
    let bundle_mount = mounts.iter().find(|m| m["name"] == "bundle").unwrap();
    assert!(
        bundle_mount.get("subPath").is_none(),
        "a subPath mount is never updated, so the server would not see a new bundle"
    );
    assert!(
        args.contains(
            &format!(
                "--bundle={}/bundle.yaml",
                bundle_mount["mountPath"].as_str().unwrap()
            )
            .as_str()
        )
    );
    let svc = kind(&docs, "kubernetes/server.yaml", "Service");
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["template"]["metadata"]["labels"]
    );

    // The bundle in the ConfigMap is valid for `kz server check`, which names what is per
    // replica.
    let s = Sandbox::new();
    let cm = kind(&docs, "kubernetes/server.yaml", "ConfigMap");
    s.write("bundle.yaml", cm["data"]["bundle.yaml"].as_str().unwrap());
    let r = s.kz(&["server", "check", "--bundle", "bundle.yaml"]).ok();
    assert!(r.stdout.contains("per replica"), "{}", r.stdout);

    // The client: a projected token for audience keyzero where token_source = "kubernetes"
    // reads it, and a valid .keyzero.toml with a keyzero provider.
    let job = kind(&docs, "kubernetes/client-job.yaml", "Job");
    let pod = &job["spec"]["template"]["spec"];
    let projected = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0].get("serviceAccountToken"))
        .expect("no projected service-account token");
    assert_eq!(projected["audience"], "keyzero");
    assert_eq!(projected["path"], "keyzero");
    let token_mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "keyzero-token")
        .unwrap();
    assert_eq!(token_mount["mountPath"], "/var/run/secrets/tokens");
    let cm = kind(&docs, "kubernetes/client-job.yaml", "ConfigMap");
    let toml = cm["data"][".keyzero.toml"].as_str().unwrap();
    assert!(toml.contains("type = \"keyzero\"") && toml.contains("token_source = \"kubernetes\""));
    let s = Sandbox::with_config(toml);
    s.kz(&["validate"]).ok();
}

#[test]
fn deploy_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/keyzero.service")).unwrap();
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("ReadWritePaths", "/var/log/keyzero"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(value(key), [want], "{key}");
    }
    let exec = value("ExecStart").concat();
    assert!(exec.contains("--audit /var/log/keyzero/"), "{exec}");
    let drain: u64 = exec
        .split("--drain ")
        .nth(1)
        .and_then(|d| d.split('s').next())
        .and_then(|d| d.parse().ok())
        .expect("ExecStart sets --drain Ns");
    let stop: u64 = value("TimeoutStopSec")
        .concat()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        stop > drain,
        "TimeoutStopSec {stop}s must exceed --drain {drain}s"
    );

    // systemd's own check, when systemd is there (with the built kz as the binary, since
    // it checks that the program exists).
    let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit was checked as text only");
        return;
    };
    assert!(analyze.status.success());
    let s = Sandbox::new();
    let copy = s.write(
        "keyzero.service",
        &unit.replace("/usr/local/bin/kz", &kz_bin().display().to_string()),
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        // kz's man pages are not installed here (they come with a package of kz).
        .arg("--man=no")
        .arg(&copy)
        .current_dir(&s.project)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("keyzero.service"),
        "systemd-analyze verify:\n{text}"
    );
}

/// Starts `kz` with `args` in the sandbox and waits for its "listening on" line; the child is
/// in `bg`, its stderr returned.
fn start_server(s: &Sandbox, bg: &mut Background, name: &str, args: &[String]) -> String {
    let stderr = s.root.path().join(format!("{name}.stderr"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = s
        .cmd(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    bg.children.push(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        if text.contains("listening on ") {
            return text;
        }
        if let Some(Ok(Some(status))) = bg.children.last_mut().map(std::process::Child::try_wait) {
            panic!("{name}: kz {args:?} exited ({status}):\n{text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not start:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn deploy_command_lines_start_the_server() {
    // The command lines of the systemd unit and the Kubernetes Deployment, with their paths
    // moved into a sandbox and the address onto loopback, start kz and stop cleanly on SIGTERM.
    let docs = deploy_yaml();
    let s = Sandbox::new();
    let cm = kind(&docs, "kubernetes/server.yaml", "ConfigMap");
    let bundle = s.write("bundle.yaml", cm["data"]["bundle.yaml"].as_str().unwrap());
    let ca = rcgen::generate_simple_self_signed(vec!["keyzero.keyzero.svc".to_owned()]).unwrap();
    let cert = s.write("tls.crt", &ca.cert.pem());
    let key = s.write("tls.key", &ca.signing_key.serialize_pem());
    let audit = s.path("audit.jsonl");
    let moved = |arg: &str| -> String {
        arg.replace(
            "/etc/keyzero/bundle/bundle.yaml",
            &bundle.display().to_string(),
        )
        .replace("/etc/keyzero/bundle.yaml", &bundle.display().to_string())
        .replace("/etc/keyzero/tls/tls.crt", &cert.display().to_string())
        .replace("/etc/keyzero/tls/tls.key", &key.display().to_string())
        .replace("/var/log/keyzero/audit.jsonl", &audit.display().to_string())
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:8443", "127.0.0.1:0")
    };

    let unit = std::fs::read_to_string(repo().join("deploy/systemd/keyzero.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/kz"));
    let systemd_args: Vec<String> = words.map(moved).collect();

    let dep = kind(&docs, "kubernetes/server.yaml", "Deployment");
    let k8s_args: Vec<String> = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| moved(a.as_str().unwrap()))
        .collect();

    for (name, args) in [("systemd", systemd_args), ("kubernetes", k8s_args)] {
        assert!(
            args.iter()
                .all(|a| !a.contains("/etc/") && !a.contains("0.0.0.0")),
            "{name}: an argument was not moved into the sandbox: {args:?}"
        );
        let mut bg = Background::default();
        let log = start_server(&s, &mut bg, name, &args);
        if name == "kubernetes" {
            assert!(log.contains("tls=true"), "{log}");
        }
        let status = Background::stop(&mut bg.children[0]);
        assert!(
            status.is_some_and(|st| st.success()),
            "{name}: no clean stop on SIGTERM: {status:?}"
        );
    }
    assert!(
        audit.exists(),
        "the systemd command line did not write its audit file"
    );
}
