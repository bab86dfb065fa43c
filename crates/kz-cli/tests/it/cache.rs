//! The encrypted cache: `max_age` reuse, offline fallback, scope, encryption, `kz cache clear`.

use std::os::unix::fs::PermissionsExt;

use crate::util::{CANARY, Sandbox};

/// A plugin that counts its invocations, answers from `value.txt`, and sleeps when `slow` exists.
const PLUGIN: &str =
    "#!/bin/sh\necho x >> calls.log\n[ -e slow ] && sleep 5\ncat >/dev/null\ncat value.txt\n";

fn project(cache: &str, provider_opts: &str) -> Sandbox {
    let s = Sandbox::with_config(&format!(
        "{cache}\n[providers.plug]\ntype = \"exec\"\ncommand = [\"./plugin.sh\"]\ntimeout = \"400ms\"\n{provider_opts}\n[secrets]\nP = {{ provider = \"plug\", ref = \"x\" }}\nE = \"env://HOME\"\n"
    ));
    let p = s.write("plugin.sh", PLUGIN);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.write("value.txt", CANARY);
    s
}

fn calls(s: &Sandbox) -> usize {
    std::fs::read_to_string(s.path("calls.log"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn cache_file(s: &Sandbox) -> std::path::PathBuf {
    s.root.path().join("cache/keyzero/cache.age")
}

#[test]
fn max_age_reuses_values_without_calling_the_provider() {
    let s = project("[cache]\nmax_age = \"10m\"", "");
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .ok()
        .no_canary()
        .stdout_json();
    assert_eq!(v["secrets"][0]["cache"], "miss");
    assert_eq!(
        v["secrets"][1]["cache"], "off",
        "env is cached only when asked: {v}"
    );
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .ok()
        .stdout_json();
    assert_eq!(v["secrets"][0]["cache"], "hit");
    let r = s.kz(&["--trust", "run", "--", "printenv", "P"]).ok();
    assert_eq!(r.stdout.trim(), CANARY);
    assert_eq!(calls(&s), 1, "the provider was called again");
    // The file is encrypted to the local store's key and private.
    let bytes = std::fs::read(cache_file(&s)).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1"));
    assert!(!bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
    assert_eq!(
        std::fs::metadata(cache_file(&s))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A changed reference never reuses the old value.
    let text = s
        .read(".keyzero.toml")
        .replace("ref = \"x\"", "ref = \"y\"");
    s.write(".keyzero.toml", &text);
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .ok()
        .stdout_json();
    assert_eq!(v["secrets"][0]["cache"], "miss");
    assert_eq!(calls(&s), 2);
}

#[test]
fn clear_empties_the_cache() {
    let s = project("", "max_age = \"1h\"");
    s.kz(&["--trust", "status"]).ok();
    assert!(cache_file(&s).exists());
    s.kz(&["cache", "clear"]).ok();
    assert!(!cache_file(&s).exists());
    let r = s.kz(&["cache", "clear"]).ok();
    assert!(r.stderr.contains("already empty"), "{}", r.stderr);
    let v = s
        .kz(&["--trust", "status", "--format", "json"])
        .ok()
        .stdout_json();
    assert_eq!(v["secrets"][0]["cache"], "miss");
}

#[test]
fn offline_fallback_names_the_age_and_only_when_unreachable() {
    let s = project("", "offline = \"fallback\"");
    s.kz(&["--trust", "status"]).ok();
    // The backend now hangs past the timeout: the cached value is used, with a warning.
    s.write("slow", "");
    let r = s.kz(&["--trust", "run", "--", "printenv", "P"]).ok();
    assert_eq!(r.stdout.trim(), CANARY);
    assert!(
        r.stderr
            .contains("is unreachable (timed out); using the cached value from")
            && r.stderr.contains("s ago"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(CANARY));
    // Without a cached value, the failure stands.
    s.kz(&["cache", "clear"]).ok();
    let r = s.kz(&["--trust", "run", "--", "true"]).code(1);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
}

#[test]
fn providers_without_caching_are_never_cached() {
    let s = project("", "");
    s.kz(&["--trust", "status"]).ok();
    s.kz(&["--trust", "status"]).ok();
    assert_eq!(calls(&s), 2);
    assert!(!cache_file(&s).exists());
    assert!(s.files_with_canary(&[&s.path("value.txt")]).is_empty());
}
