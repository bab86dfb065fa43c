//! The `keychain` provider against a real gnome-keyring on a private D-Bus session bus.
//!
//! The `keyring` crate connects to the bus named by the *process* environment
//! (`DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`), once per process, and setting the
//! environment of the test process needs `unsafe`. So every scenario has two halves:
//!
//! - an **outer** test (a normal `#[test]`) starts `dbus-daemon` (with a config that has no
//!   service directories, so nothing is ever auto-started) and `gnome-keyring-daemon
//!   --foreground` with its own temporary `HOME`/`XDG_*`, seeds or checks items with
//!   `secret-tool`, and re-runs this test binary as a child process with the bus in its
//!   environment and a filter selecting one inner test; it asserts that the child ran exactly
//!   that test and that it passed. Both daemons are killed by PID on drop.
//! - an **inner** test (in `mod inner`, `#[ignore]`d so a plain `cargo test` lists it as
//!   ignored rather than as a pass) holds the provider assertions. It does nothing unless
//!   `KZ_KEYCHAIN_INNER=1` is set, which only the outer test does, so it can never talk to a
//!   developer's real session bus.
//!
//! The user's own session bus is never used: every child gets the private bus's address.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/secret_service.rs"]
mod secret_service;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kz_config::{LoadRequest, ProviderInstance, load};
use kz_providers::BuildContext;
use kz_providers::keychain::KeychainProvider;
use kz_resolve::{ErrorKind, Item, Provider, ProviderError};
use kz_secret::{Resolved, SecretValue};
use secret_service::{Bus, current_exe, require, run_child};

const CANARY: &str = "kz-canary-4c81f0-keychain";
/// Set on the child process only; inner tests do nothing without it.
const INNER_VAR: &str = "KZ_KEYCHAIN_INNER";

// ---------------------------------------------------------------------------------------------
// Outer half: daemons and child processes (the bus itself is in `support/secret_service.rs`).

impl Bus {
    /// Runs `mod inner`'s test `name` in a child process on this bus and asserts it passed.
    fn run_inner(&self, name: &str) {
        run_inner_with(self.command(&current_exe()), name);
    }
}

/// Re-runs this test binary with a filter for exactly one inner test and checks that it ran
/// (not filtered away, not ignored) and passed.
fn run_inner_with(cmd: Command, name: &str) {
    run_child(
        cmd,
        &format!("inner::{name}"),
        INNER_VAR,
        &format!("kz-keychain-inner-done {name}"),
        CANARY,
    );
}

#[test]
fn write_then_read_round_trips_and_other_tools_see_it() {
    let bus = Bus::with_keyring();
    bus.run_inner("write_then_read");
    // kz stored it the way the keyring crate does: service + username, readable by secret-tool.
    assert_eq!(
        bus.lookup("keyzero", "alice").as_deref(),
        Some(format!("{CANARY}-alice").as_bytes())
    );
}

#[test]
fn reads_items_created_by_secret_tool() {
    let bus = Bus::with_keyring();
    bus.seed("keyzero", "username", "dave", CANARY.as_bytes());
    // Stored with secret-tool's other convention (`account`): found by the fallback search.
    bus.seed("keyzero", "account", "erin", b"erin-value");
    // Two `account` items for one name: ambiguous, an error rather than a guess.
    bus.seed("keyzero", "account", "twice", b"one");
    let out = bus.secret_tool(
        &[
            "store",
            "--label=second",
            "service",
            "keyzero",
            "account",
            "twice",
            "extra",
            "2",
        ],
        Some(b"two"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bus.run_inner("reads_seeded_items");
}

#[test]
fn custom_service_option_selects_the_items() {
    let bus = Bus::with_keyring();
    bus.seed("keyzero", "username", "shared", b"from-default-service");
    bus.run_inner("custom_service");
    assert_eq!(
        bus.lookup("myapp", "shared").as_deref(),
        Some(&b"from-myapp"[..])
    );
    assert_eq!(
        bus.lookup("keyzero", "shared").as_deref(),
        Some(&b"from-default-service"[..])
    );
}

#[test]
fn missing_items_are_not_found_and_delete_removes() {
    let bus = Bus::with_keyring();
    bus.seed("keyzero", "username", "doomed", CANARY.as_bytes());
    bus.run_inner("missing_and_delete");
    assert_eq!(bus.lookup("keyzero", "doomed"), None);
}

#[test]
fn multiline_unicode_and_binary_values_round_trip_in_one_batch() {
    let bus = Bus::with_keyring();
    bus.run_inner("values_and_batch");
    assert_eq!(
        bus.lookup("keyzero", "pem").as_deref(),
        Some(MULTILINE.as_bytes())
    );
}

#[test]
fn locked_keyring_is_an_auth_error() {
    let bus = Bus::with_keyring();
    bus.seed("keyzero", "username", "dave", CANARY.as_bytes());
    require("dbus-send");
    let out = bus
        .command("dbus-send")
        .args([
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot lock the keyring: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Locked: secret-tool cannot read it either.
    assert_eq!(bus.lookup("keyzero", "dave"), None);
    bus.run_inner("locked");
}

#[test]
fn no_bus_is_a_clear_error_suggesting_local() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let mut cmd = Command::new(current_exe());
    cmd.env(
        "DBUS_SESSION_BUS_ADDRESS",
        format!("unix:path={}", runtime.join("no-such-bus").display()),
    )
    .env("XDG_RUNTIME_DIR", &runtime)
    .env("HOME", dir.path())
    .env_remove("DISPLAY");
    run_inner_with(cmd, "no_bus");
    // And with no address at all and no $XDG_RUNTIME_DIR/bus.
    let mut cmd = Command::new(current_exe());
    cmd.env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", dir.path())
        .env_remove("DISPLAY");
    run_inner_with(cmd, "no_bus_address");
}

#[test]
fn bus_without_secret_service_is_a_clear_error_suggesting_local() {
    let bus = Bus::bare();
    bus.run_inner("bus_without_secret_service");
}

// ---------------------------------------------------------------------------------------------
// In-process tests: nothing here reaches a bus (references and options are checked first).

fn project(service: Option<&str>) -> (tempfile::TempDir, ProviderInstance) {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::from("[providers.kc]\ntype = \"keychain\"\n");
    if let Some(s) = service {
        toml.push_str(&format!("service = {s:?}\n"));
    }
    std::fs::write(dir.path().join(".keyzero.toml"), toml).unwrap();
    let loaded = load(&LoadRequest {
        start_dir: dir.path(),
        config_file: None,
        env_flag: None,
        global_file: None,
        getenv: &|_| None,
    });
    let config = loaded
        .config
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    let inst = config.provider("kc").unwrap().clone();
    (dir, inst)
}

fn ctx(
    dir: &Path,
    getenv: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> BuildContext {
    BuildContext {
        home: Some(dir.join("home")),
        config_home: dir.join("config"),
        data_home: dir.join("data"),
        runtime_dir: (getenv)("XDG_RUNTIME_DIR").map(PathBuf::from),
        project_dir: dir.to_path_buf(),
        getenv: Arc::new(getenv),
        verbose: false,
        interactive: false,
    }
}

fn item(reference: &str) -> Item {
    Item {
        name: "SECRET".into(),
        reference: reference.into(),
        field: None,
        params: Vec::new(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn assert_clean(e: &ProviderError) {
    let shown = format!("{e} | {e:?} | {:?}", e.help);
    assert!(!shown.contains(CANARY), "the canary leaked: {shown}");
    assert!(!e.message.is_empty());
}

#[test]
fn malformed_references_are_rejected_before_any_call() {
    let (dir, inst) = project(None);
    // No bus in this context at all: a call would fail with Network, not BadReference.
    let p = KeychainProvider::new(&inst, &ctx(dir.path(), |_| None)).unwrap();
    let rt = rt();
    let out = rt.block_on(p.resolve(&[item(""), item("a\0b")]));
    assert_eq!(out.len(), 2);
    for r in &out {
        let e = r.as_ref().err().unwrap();
        assert_eq!(e.kind, ErrorKind::BadReference, "{e}");
        assert!(e.help.as_deref().unwrap().contains("account name"));
        assert_clean(e);
    }
    let e = rt
        .block_on(p.write(&item(""), &SecretValue::from_str_copy(CANARY)))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadReference);
    assert_clean(&e);
    let e = rt.block_on(p.delete(&item(""))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadReference);
}

#[test]
fn writing_a_field_is_refused_before_any_call() {
    let (dir, inst) = project(None);
    let p = KeychainProvider::new(&inst, &ctx(dir.path(), |_| None)).unwrap();
    let mut it = item("acct");
    it.field = Some("password".into());
    let e = rt()
        .block_on(p.write(&it, &SecretValue::from_str_copy(CANARY)))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("password") && e.help.is_some());
    assert_clean(&e);
}

#[test]
fn options_describe_and_defaults() {
    let (dir, inst) = project(None);
    let p = KeychainProvider::new(&inst, &ctx(dir.path(), |_| None)).unwrap();
    let d = p.describe();
    assert_eq!(d.type_name, "keychain");
    assert_eq!(d.instance, "kc");
    assert!(d.details.contains(&("service".into(), "keyzero".into())));
    assert!(p.max_batch() > 100);
    assert!(!p.handles_field());

    let (dir, inst) = project(Some("myapp"));
    let p = KeychainProvider::new(
        &inst,
        &ctx(dir.path(), |k| {
            (k == "DBUS_SESSION_BUS_ADDRESS").then(|| "unix:path=/x/bus".to_owned())
        }),
    )
    .unwrap();
    let d = p.describe();
    assert!(d.details.contains(&("service".into(), "myapp".into())));
    assert!(
        d.details
            .iter()
            .any(|(_, v)| v.contains("unix:path=/x/bus"))
    );
    assert!(!format!("{p:?}").is_empty());

    let (dir, inst) = project(Some(""));
    let e = KeychainProvider::new(&inst, &ctx(dir.path(), |_| None)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(e.message.contains("service") && e.help.is_some());
}

// ---------------------------------------------------------------------------------------------
// Inner half: runs only in the child process the outer tests start.

const MULTILINE: &str = "-----BEGIN KEY-----\nline one\r\nline two\n\n-----END KEY-----\n";
const UNICODE: &str = "pässwörd ✓ 秘密 🔑 \u{200b}end";

mod inner {
    use super::*;

    /// The provider on the bus in this (child) process's environment, or None when this is not
    /// the child (then the test has nothing to do: the outer test is what asserts).
    fn provider(service: Option<&str>) -> Option<(tempfile::TempDir, KeychainProvider)> {
        if std::env::var(INNER_VAR).as_deref() != Ok("1") {
            eprintln!("run by an outer keychain test in a child process on a private bus");
            return None;
        }
        let (dir, inst) = project(service);
        // The child's environment was set by the outer test (never the user's session).
        let p = KeychainProvider::new(&inst, &ctx(dir.path(), |k| std::env::var(k).ok())).unwrap();
        Some((dir, p))
    }

    fn done(name: &str) {
        println!("kz-keychain-inner-done {name}");
    }

    fn value(r: &Result<Resolved, ProviderError>) -> Vec<u8> {
        match r {
            Ok(Resolved::Single(v)) => v.expose_bytes().to_vec(),
            Ok(_) => panic!("expected a single value"),
            Err(e) => panic!("expected a value, got {:?}: {e} ({:?})", e.kind, e.help),
        }
    }

    fn not_found(r: &Result<Resolved, ProviderError>, account: &str) {
        let e = r.as_ref().expect_err("expected NotFound");
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains(account), "{e}");
        let help = e.help.as_deref().unwrap();
        assert!(
            help.contains("kz put") && help.contains("username"),
            "{help}"
        );
        assert_clean(e);
    }

    #[test]
    #[ignore = "run in a child process by write_then_read_round_trips_and_other_tools_see_it"]
    fn write_then_read() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        let rt = rt();
        rt.block_on(p.check()).unwrap();
        let v = format!("{CANARY}-alice");
        rt.block_on(p.write(&item("alice"), &SecretValue::from_str_copy("first")))
            .unwrap();
        // A second write replaces the value (no duplicate item).
        rt.block_on(p.write(&item("alice"), &SecretValue::from_str_copy(&v)))
            .unwrap();
        let out = rt.block_on(p.resolve(&[item("alice")]));
        assert_eq!(value(&out[0]), v.as_bytes());
        done("write_then_read");
    }

    #[test]
    #[ignore = "run in a child process by reads_items_created_by_secret_tool"]
    fn reads_seeded_items() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        let out =
            rt().block_on(p.resolve(&[item("dave"), item("erin"), item("twice"), item("nobody")]));
        assert_eq!(value(&out[0]), CANARY.as_bytes());
        assert_eq!(
            value(&out[1]),
            b"erin-value",
            "the `account` fallback did not find the item"
        );
        let e = out[2].as_ref().unwrap_err();
        assert_ne!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(
            format!("{e} {:?}", e.help).contains("2 keychain items match"),
            "{e} {:?}",
            e.help
        );
        not_found(&out[3], "nobody");
        done("reads_seeded_items");
    }

    #[test]
    #[ignore = "run in a child process by custom_service_option_selects_the_items"]
    fn custom_service() {
        let Some((_d, mine)) = provider(Some("myapp")) else {
            return;
        };
        let Some((_d2, default)) = provider(None) else {
            return;
        };
        let rt = rt();
        // Not in `myapp` yet, although `keyzero` has an item for the same account.
        not_found(&rt.block_on(mine.resolve(&[item("shared")]))[0], "shared");
        rt.block_on(mine.write(&item("shared"), &SecretValue::from_str_copy("from-myapp")))
            .unwrap();
        assert_eq!(
            value(&rt.block_on(mine.resolve(&[item("shared")]))[0]),
            b"from-myapp"
        );
        assert_eq!(
            value(&rt.block_on(default.resolve(&[item("shared")]))[0]),
            b"from-default-service"
        );
        let e = rt
            .block_on(mine.resolve(&[item("nobody")]))
            .remove(0)
            .unwrap_err();
        assert!(e.message.contains("myapp"), "{e}");
        done("custom_service");
    }

    #[test]
    #[ignore = "run in a child process by missing_items_are_not_found_and_delete_removes"]
    fn missing_and_delete() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        let rt = rt();
        not_found(
            &rt.block_on(p.resolve(&[item("never-stored")]))[0],
            "never-stored",
        );
        assert_eq!(
            value(&rt.block_on(p.resolve(&[item("doomed")]))[0]),
            CANARY.as_bytes()
        );
        rt.block_on(p.delete(&item("doomed"))).unwrap();
        not_found(&rt.block_on(p.resolve(&[item("doomed")]))[0], "doomed");
        let e = rt.block_on(p.delete(&item("doomed"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert_clean(&e);
        done("missing_and_delete");
    }

    #[test]
    #[ignore = "run in a child process by multiline_unicode_and_binary_values_round_trip_in_one_batch"]
    fn values_and_batch() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        let rt = rt();
        let binary: Vec<u8> = vec![0, 1, 2, 0xff, 0xfe, b'\n', 0x80, b'k', b'z'];
        rt.block_on(p.write(&item("pem"), &SecretValue::from_str_copy(MULTILINE)))
            .unwrap();
        rt.block_on(p.write(&item("uni ✓"), &SecretValue::from_str_copy(UNICODE)))
            .unwrap();
        rt.block_on(p.write(&item("bin"), &SecretValue::from_bytes(binary.clone())))
            .unwrap();
        // One batch, in order, mixing found, missing and malformed references.
        let out = rt.block_on(p.resolve(&[
            item("pem"),
            item("missing-one"),
            item("uni ✓"),
            item(""),
            item("bin"),
        ]));
        assert_eq!(out.len(), 5);
        assert_eq!(value(&out[0]), MULTILINE.as_bytes());
        not_found(&out[1], "missing-one");
        assert_eq!(value(&out[2]), UNICODE.as_bytes());
        assert_eq!(out[3].as_ref().unwrap_err().kind, ErrorKind::BadReference);
        assert_eq!(value(&out[4]), binary);
        done("values_and_batch");
    }

    #[test]
    #[ignore = "run in a child process by locked_keyring_is_an_auth_error"]
    fn locked() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        let rt = rt();
        let out = rt.block_on(p.resolve(&[item("dave")]));
        let e = out[0].as_ref().unwrap_err();
        eprintln!("error shown to the user: {e}\nhelp: {:?}", e.help);
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(e.message.contains("dave"), "{e}");
        assert!(e.help.as_deref().unwrap().contains("unlock"));
        assert_clean(e);
        let e = rt
            .block_on(p.write(&item("dave"), &SecretValue::from_str_copy(CANARY)))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert_clean(&e);
        done("locked");
    }

    fn assert_unreachable(e: &ProviderError, needle: &str) {
        eprintln!("error shown to the user: {e}\nhelp: {:?}", e.help);
        assert_eq!(e.kind, ErrorKind::Network, "{e}");
        assert!(!e.transient, "a missing daemon is not worth retrying: {e}");
        assert!(e.message.contains("no Secret Service is reachable"), "{e}");
        assert!(e.message.contains(needle), "{e}");
        let help = e.help.as_deref().unwrap();
        assert!(help.contains("local") && help.contains("kc"), "{help}");
        assert_clean(e);
    }

    fn all_calls_unreachable(p: &KeychainProvider, needle: &str) {
        let rt = rt();
        assert_unreachable(&rt.block_on(p.check()).unwrap_err(), needle);
        let out = rt.block_on(p.resolve(&[item("a"), item("b")]));
        assert_eq!(out.len(), 2);
        for r in &out {
            assert_unreachable(r.as_ref().unwrap_err(), needle);
        }
        let e = rt
            .block_on(p.write(&item("a"), &SecretValue::from_str_copy(CANARY)))
            .unwrap_err();
        assert_unreachable(&e, needle);
        assert_unreachable(&rt.block_on(p.delete(&item("a"))).unwrap_err(), needle);
    }

    #[test]
    #[ignore = "run in a child process by no_bus_is_a_clear_error_suggesting_local"]
    fn no_bus() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        all_calls_unreachable(&p, "session bus");
        done("no_bus");
    }

    #[test]
    #[ignore = "run in a child process by no_bus_is_a_clear_error_suggesting_local"]
    fn no_bus_address() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        all_calls_unreachable(&p, "DBUS_SESSION_BUS_ADDRESS is not set");
        done("no_bus_address");
    }

    #[test]
    #[ignore = "run in a child process by bus_without_secret_service_is_a_clear_error_suggesting_local"]
    fn bus_without_secret_service() {
        let Some((_d, p)) = provider(None) else {
            return;
        };
        all_calls_unreachable(&p, "org.freedesktop.secrets");
        done("bus_without_secret_service");
    }
}
