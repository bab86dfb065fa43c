//! Any text as `.keyzero.toml` (and as `.keyzero.local.toml` over a fixed project file): the
//! loader returns a configuration or diagnostics, never panics, and a loaded configuration
//! has no error diagnostics.
#![no_main]

use std::path::PathBuf;

use kz_config::{Discovered, LoadRequest, Role, Source, load_sources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let dir = PathBuf::from("/fuzz");
    let discovered = Discovered { dir: dir.clone(), project: Some(dir.join(".keyzero.toml")), local: None };
    let getenv = |k: &str| (k == "NODE_ENV").then(|| "production".to_string());
    let req = LoadRequest { start_dir: &dir, config_file: None, env_flag: None, global_file: None, getenv: &getenv };
    for sources in [
        vec![Source { role: Role::Project, path: dir.join(".keyzero.toml"), text: text.to_string() }],
        vec![
            Source { role: Role::Project, path: dir.join(".keyzero.toml"), text: "[secrets]\nA = \"env://A\"\n".into() },
            Source { role: Role::Local, path: dir.join(".keyzero.local.toml"), text: text.to_string() },
        ],
    ] {
        let loaded = load_sources(discovered.clone(), &sources, &req, Vec::new());
        if loaded.config.is_some() {
            assert!(loaded.diagnostics.iter().all(|d| !d.is_error()));
        }
    }
});
