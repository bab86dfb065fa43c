//! Loading whole configurations: merging, environments, errors with positions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::path::Path;

use kz_config::{Config, Diagnostic, EnvSource, LoadRequest, Loaded, load};

struct Project {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
    global: Option<std::path::PathBuf>,
}

impl Project {
    fn new(project: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".keyzero.toml"), project).unwrap();
        Self {
            dir,
            env: HashMap::new(),
            global: None,
        }
    }
    fn local(self, text: &str) -> Self {
        std::fs::write(self.dir.path().join(".keyzero.local.toml"), text).unwrap();
        self
    }
    fn global(mut self, text: &str) -> Self {
        let p = self.dir.path().join("global.toml");
        std::fs::write(&p, text).unwrap();
        self.global = Some(p);
        self
    }
    fn var(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    fn load_env(&self, flag: Option<&str>) -> Loaded {
        let getenv = |k: &str| self.env.get(k).cloned();
        load(&LoadRequest {
            start_dir: self.dir.path(),
            config_file: None,
            env_flag: flag,
            global_file: self.global.as_deref(),
            getenv: &getenv,
        })
    }
    fn ok(&self) -> Config {
        let l = self.load_env(None);
        let errs: Vec<_> = l.errors().collect();
        assert!(errs.is_empty(), "{errs:#?}");
        l.config.unwrap()
    }
    fn errors(&self) -> Vec<Diagnostic> {
        let l = self.load_env(None);
        assert!(l.config.is_none());
        l.errors().cloned().collect()
    }
}

fn names(c: &Config) -> Vec<&str> {
    c.secrets.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn both_published_spellings_load() {
    let new = Project::new(
        "[providers.vault]\ntype = \"hashicorp\"\naddress = \"http://127.0.0.1:8200\"\n\
         [secrets]\nA = { provider = \"vault\", ref = \"secret/data/a\", field = \"k\" }\n",
    )
    .ok();
    let old = Project::new(
        "[resolvers.vault]\ntype = \"hashicorp_vault\"\naddress = \"http://127.0.0.1:8200\"\n\
         [secrets]\nA = { resolver = \"vault\", ref = \"secret/data/a\", field = \"k\" }\n",
    )
    .ok();
    for c in [new, old] {
        let a = c.secret("A").unwrap();
        assert_eq!(a.provider, "vault");
        assert_eq!(a.ty.name, "hashicorp");
        assert_eq!(a.field.as_deref(), Some("k"));
    }
}

#[test]
fn short_form_infers_provider_and_strips_own_scheme() {
    let c = Project::new(
        "[secrets]\nA = \"local://p/A\"\nB = \"sm://prod/b\"\nC = \"env://HOME\"\nD = \"op://V/i/f\"\n",
    )
    .ok();
    let get = |n: &str| c.secret(n).unwrap();
    assert_eq!(
        (get("A").ty.name, get("A").reference.as_str()),
        ("local", "p/A")
    );
    assert_eq!(
        (get("B").ty.name, get("B").reference.as_str()),
        ("aws", "sm://prod/b")
    );
    assert_eq!(
        (get("C").ty.name, get("C").reference.as_str()),
        ("env", "HOME")
    );
    assert_eq!(
        (get("D").ty.name, get("D").reference.as_str()),
        ("1password", "op://V/i/f")
    );
    assert!(c.provider("local").is_some_and(|p| !p.declared));
}

#[test]
fn short_form_uses_the_single_declared_instance_and_refuses_two() {
    let c = Project::new(
        "[providers.mine]\ntype = \"local\"\npath = \"s.age\"\n[secrets]\nA = \"local://x\"\n",
    )
    .ok();
    assert_eq!(c.secret("A").unwrap().provider, "mine");
    let e = Project::new(
        "[providers.a]\ntype = \"local\"\n[providers.b]\ntype = \"local\"\n[secrets]\nA = \"local://x\"\n",
    )
    .errors();
    assert_eq!(e[0].code, "config::ambiguous_provider");
    assert!(e[0].help.as_deref().unwrap().contains("long form"));
}

#[test]
fn unknown_keys_have_line_and_suggestion() {
    let e = Project::new(
        "[secrets]\nA = { provider = \"env\", ref = \"HOME\", feild = \"x\" }\n[bliind]\nx = 1\n",
    )
    .errors();
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!(e[0].line, Some(2));
    assert_eq!(e[0].help.as_deref(), Some("did you mean `field`?"));
    assert_eq!(e[0].secret.as_deref(), Some("A"));
    assert!(e[0].file.as_ref().unwrap().ends_with(".keyzero.toml"));
    assert_eq!(e[1].line, Some(3));
    assert_eq!(e[1].help.as_deref(), Some("did you mean `blind`?"));
}

#[test]
fn misspelt_provider_option_is_an_error() {
    let e = Project::new("[providers.local]\npaht = \"x\"\n").errors();
    assert_eq!(e[0].code, "config::unknown_option");
    assert_eq!(e[0].key.as_deref(), Some("providers.local.paht"));
    assert_eq!(e[0].help.as_deref(), Some("did you mean `path`?"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let e = Project::new(
        "[secrets]\n1BAD = \"env://X\"\nB = \"zz://x\"\nC = { provider = \"nope\", ref = \"x\" }\nD = { provider = \"env\" }\nE = 3\n",
    )
    .errors();
    let codes: Vec<_> = e.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [
            "config::secret_name",
            "config::reference_scheme",
            "config::unknown_provider",
            "config::missing_ref",
            "config::type"
        ],
        "{e:#?}"
    );
    assert!(e[1].help.as_deref().unwrap().contains("sm://"));
}

#[test]
fn credentials_are_refused_in_the_project_file_only() {
    let e = Project::new("[providers.vault]\ntoken = \"s.abc\"\n").errors();
    assert_eq!(e[0].code, "config::credential_in_project_file");
    assert!(e[0].help.as_deref().unwrap().contains("token_env"));
    assert!(!e[0].message.contains("s.abc"));
    let e = Project::new(
        "[providers.vault]\nauth = { method = \"approle\", role_id = \"r\", secret_id = \"x\" }\n",
    )
    .errors();
    assert_eq!(e[0].code, "config::credential_in_project_file");
    Project::new("[providers.vault]\naddress = \"http://127.0.0.1:1\"\n")
        .local("[providers.vault]\ntoken = \"s.abc\"\n")
        .ok();
    Project::new("")
        .global("[providers.vault]\ntoken = \"s.abc\"\n")
        .ok();
}

#[test]
fn local_file_overrides_per_key_and_removes_with_false() {
    let c = Project::new(
        "[providers.dotenv]\npath = \"a.env\"\ntimeout = \"5s\"\n[secrets]\nA = \"env://A\"\nB = \"env://B\"\nC = \"env://C\"\n",
    )
    .local("[providers.dotenv]\npath = \"b.env\"\n[secrets]\nB = \"env://OTHER\"\nC = false\n")
    .ok();
    assert_eq!(names(&c), ["A", "B"]);
    assert_eq!(c.secret("B").unwrap().reference, "OTHER");
    let p = c.provider("dotenv").unwrap();
    assert_eq!(p.opt_str("path"), Some("b.env"));
    assert_eq!(p.timeout(), std::time::Duration::from_secs(5));
}

#[test]
fn global_file_holds_providers_only() {
    let c = Project::new("[secrets]\nA = { provider = \"dotenv\", ref = \"A\" }\n")
        .global("[providers.dotenv]\npath = \"/x.env\"\n")
        .ok();
    assert_eq!(
        c.provider("dotenv").unwrap().opt_str("path"),
        Some("/x.env")
    );
    let e = Project::new("")
        .global("[secrets]\nA = \"env://A\"\n")
        .errors();
    assert_eq!(e[0].code, "config::global_scope");
}

#[test]
fn environment_selection() {
    let text = "[secrets]\nA = \"env://DEV\"\n[production.secrets]\nA = \"env://PROD\"\n";
    assert_eq!(
        Project::new(text).ok().secret("A").unwrap().reference,
        "DEV"
    );
    let p = Project::new(text).var("KEYZERO_ENV", "production");
    let c = p.load_env(None).config.unwrap();
    assert_eq!(
        (
            c.environment.as_str(),
            c.secret("A").unwrap().reference.as_str()
        ),
        ("production", "PROD")
    );
    assert_eq!(c.env_source, EnvSource::KeyzeroEnv);
    // The flag wins over the variable.
    let c = p.load_env(Some("development")).config.unwrap();
    assert_eq!(c.secret("A").unwrap().reference, "DEV");
    // NODE_ENV with no section falls back, with a note.
    let c = Project::new(text)
        .var("NODE_ENV", "test")
        .load_env(None)
        .config
        .unwrap();
    assert_eq!(c.secret("A").unwrap().reference, "DEV");
    assert!(
        c.warnings.iter().any(
            |w| w.code == "config::environment_fallback" && w.message.contains("NODE_ENV=test")
        )
    );
    // NODE_ENV with a section uses it.
    let c = Project::new(text)
        .var("NODE_ENV", "production")
        .load_env(None)
        .config
        .unwrap();
    assert_eq!(c.secret("A").unwrap().reference, "PROD");
    // An explicit unknown environment is an error listing the available ones.
    let l = Project::new(text).load_env(Some("staging"));
    let e: Vec<_> = l.errors().collect();
    assert_eq!(e[0].code, "config::unknown_environment");
    assert!(e[0].help.as_deref().unwrap().contains("production"));
}

#[test]
fn production_does_not_inherit_development() {
    let c = Project::new(
        "[secrets]\nA = \"env://A\"\nB = \"env://B\"\n[production.secrets]\nA = \"env://PA\"\n",
    )
    .var("KEYZERO_ENV", "production")
    .load_env(None)
    .config
    .unwrap();
    assert_eq!(names(&c), ["A"]);
}

#[test]
fn development_section_alone_is_the_default() {
    let c = Project::new("[development.secrets]\nA = \"env://A\"\n").ok();
    assert_eq!(names(&c), ["A"]);
    let e = Project::new("[secrets]\nA = \"env://A\"\n[development.secrets]\nA = \"env://B\"\n")
        .errors();
    assert_eq!(e[0].code, "config::ambiguous_development");
}

#[test]
fn inactive_sections_are_validated_too() {
    let e = Project::new("[secrets]\nA = \"env://A\"\n[production.secrets]\nA = { provider = \"env\", ref = \"A\", fild = \"x\" }\n").errors();
    assert_eq!(e[0].key.as_deref(), Some("production.secrets.A.fild"));
}

#[test]
fn provider_params_are_declared_per_type() {
    Project::new("[secrets]\nA = { provider = \"aws\", ref = \"sm://a\", version_stage = \"AWSPREVIOUS\" }\n").ok();
    let e = Project::new("[secrets]\nA = { provider = \"aws\", ref = \"sm://a\", version = 3 }\n")
        .errors();
    assert_eq!(e[0].code, "config::unknown_key");
    // exec accepts anything scalar.
    Project::new("[providers.exec]\ncommand = [\"x\"]\n[secrets]\nA = { provider = \"exec\", ref = \"a\", anything = 3 }\n").ok();
}

#[test]
fn sts_env_format_collisions() {
    let e = Project::new(
        "[secrets]\nAWS_ACCESS_KEY_ID = \"env://X\"\nCREDS = { provider = \"aws_sts\", ref = \"arn:aws:iam::1:role/r\", format = \"env\" }\n",
    )
    .errors();
    assert_eq!(e[0].code, "config::variable_collision");
    Project::new(
        "[secrets]\nAWS_ACCESS_KEY_ID = \"env://X\"\nCREDS = { provider = \"aws_sts\", role_arn = \"arn:aws:iam::1:role/r\", format = \"env\", prefix = \"DEPLOY_\" }\n",
    )
    .ok();
}

#[test]
fn blind_and_cache_are_validated() {
    let c = Project::new(
        "[blind]\nallow = [\"api.openai.com\", \"*.stripe.com\"]\negress = \"allowlist\"\nconnections = [{ allow = true, host = \"x.com\" }, { allow = false, regex = \"^evil\\\\.com$\" }]\n[cache]\nmax_age = \"10m\"\noffline = \"fallback\"\n",
    )
    .ok();
    assert_eq!(c.blind.allow.as_ref().unwrap().len(), 2);
    assert_eq!(c.blind.connections.len(), 2);
    assert_eq!(c.cache.max_age, Some(std::time::Duration::from_secs(600)));
    let e = Project::new(
        "[blind]\nallow = [\"ftp://x.com\"]\negress = \"closed\"\nconnections = [{ allow = true }]\nscrub = true\n[cache]\nmax_age = \"soon\"\n",
    )
    .errors();
    let codes: Vec<_> = e.iter().map(|d| d.code).collect();
    assert_eq!(
        codes,
        [
            "config::host_pattern",
            "config::value",
            "config::value",
            "config::unknown_key",
            "config::value"
        ],
        "{e:#?}"
    );
    let w =
        Project::new("[blind]\nconnections = [{ allow = true, regex = \"api\\\\.x\\\\.com\" }]\n")
            .ok()
            .warnings;
    assert_eq!(w[0].code, "config::unanchored_regex");
}

#[test]
fn untrusted_options_are_reported_per_instance() {
    let c = Project::new(
        "[providers.exec]\ncommand = [\"./plugin\"]\n[providers.vault]\naddress = \"http://x\"\n",
    )
    .local("[providers.vault]\naddress = \"http://y\"\n")
    .ok();
    assert_eq!(c.provider("exec").unwrap().untrusted_options().len(), 1);
    // A repository can commit .keyzero.local.toml too: its options need trust as well.
    let v = c.provider("vault").unwrap().untrusted_options();
    assert_eq!(v.len(), 1);
    assert!(v[0].1.file.ends_with(".keyzero.local.toml"), "{v:?}");
    // Only the user's global file is trusted as it is.
    let c = Project::new("[secrets]\nA = { provider = \"vault\", ref = \"secret/a\" }\n")
        .global("[providers.vault]\ntype = \"hashicorp\"\naddress = \"http://y\"\n")
        .ok();
    assert!(c.provider("vault").unwrap().untrusted_options().is_empty());
}

#[test]
fn syntax_errors_point_at_the_line() {
    let e = Project::new("[secrets]\nA = \"unterminated\n").errors();
    assert_eq!(e[0].code, "config::syntax");
    assert_eq!(e[0].line, Some(2));
}

#[test]
fn not_found_suggests_init() {
    let dir = tempfile::tempdir().unwrap();
    let getenv = |_: &str| None;
    let l = load(&LoadRequest {
        start_dir: dir.path(),
        config_file: None,
        env_flag: None,
        global_file: None,
        getenv: &getenv,
    });
    let e: Vec<_> = l.errors().collect();
    if e.is_empty() {
        return; // a parent of the temp dir has a config: nothing to check here
    }
    assert_eq!(e[0].code, "config::not_found");
    assert!(e[0].help.as_deref().unwrap().contains("kz init"));
    assert!(e[0].message.contains(&dir.path().display().to_string()));
    let _ = Path::new("");
}

#[test]
fn blind_hide_expands_home_and_resolves_relative_paths() {
    let p = Project::new(
        "[blind]\nhide = [\"~/.ssh\", \"~\", \"/etc/app/creds\", \"secrets/key.pem\"]\n",
    )
    .var("HOME", "/home/u");
    let c = p.ok();
    let dir = p.dir.path();
    assert_eq!(
        c.blind.hide,
        [
            std::path::PathBuf::from("/home/u/.ssh"),
            std::path::PathBuf::from("/home/u"),
            std::path::PathBuf::from("/etc/app/creds"),
            dir.join("secrets/key.pem"),
        ]
    );
}

#[test]
fn blind_hide_errors_name_the_item_and_line() {
    let e = Project::new(
        "[blind]\nhide = [\n  \"/ok\",\n  3,\n  \"\",\n  \"~bob/.netrc\",\n  \"/\",\n  \"~/x\",\n]\n",
    )
    .errors();
    let got: Vec<_> = e
        .iter()
        .map(|d| (d.code, d.key.clone().unwrap_or_default(), d.line))
        .collect();
    assert_eq!(
        got,
        [
            ("config::value", "blind.hide[1]".to_string(), Some(4)),
            ("config::value", "blind.hide[2]".to_string(), Some(5)),
            ("config::value", "blind.hide[3]".to_string(), Some(6)),
            ("config::value", "blind.hide[4]".to_string(), Some(7)),
            ("config::value", "blind.hide[5]".to_string(), Some(8)),
        ],
        "{e:#?}"
    );
    assert!(e.iter().all(|d| d.help.is_some()), "{e:#?}");
    assert!(e[4].message.contains("HOME is not set"), "{e:#?}");
    let e = Project::new("[blind]\nhide = \"/x\"\n").errors();
    assert_eq!(e[0].code, "config::type", "{e:#?}");
}

#[test]
fn swap_defaults_to_headers_and_query_and_lists_known_locations() {
    let c = Project::new(
        "[secrets]\n\
         A = { provider = \"env\", ref = \"A\", hosts = [\"api.x.com\"] }\n\
         B = { provider = \"env\", ref = \"B\", hosts = [\"http://localhost:8080\"], swap = [\"headers\", \"query\", \"body\"] }\n\
         C = { provider = \"env\", ref = \"C\", hosts = [\"api.x.com\"], swap = [\"path\"] }\n\
         D = \"env://D\"\n",
    )
    .ok();
    let swap = |n: &str| c.secret(n).unwrap().swap;
    assert_eq!(swap("A"), kz_config::SwapIn::default());
    assert_eq!(swap("A").words(), ["headers", "query"]);
    assert_eq!(swap("B").words(), ["headers", "query", "body"]);
    assert_eq!(swap("C").words(), ["path"]);
    assert_eq!(swap("D"), kz_config::SwapIn::default());
    let b = &c.secret("B").unwrap().hosts[0];
    assert!(b.cleartext);
    assert_eq!(b.to_string(), "http://localhost:8080");
}

#[test]
fn bad_swap_lists_are_errors_with_line_and_help() {
    let e = Project::new(
        "[secrets]\n\
         A = { provider = \"env\", ref = \"A\", swap = [\"headers\", \"bdy\"] }\n\
         B = { provider = \"env\", ref = \"B\", swap = \"body\" }\n\
         C = { provider = \"env\", ref = \"C\", swap = [] }\n\
         D = { provider = \"env\", ref = \"D\", swap = [\"cookies\", 3] }\n\
         E = { provider = \"env\", ref = \"E\", hosts = [\"gopher://x.com\", \"http://x.com/p\"] }\n",
    )
    .errors();
    let got: Vec<_> = e
        .iter()
        .map(|d| {
            (
                d.code,
                d.secret.as_deref().unwrap_or_default(),
                d.line.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("config::swap", "A", 2),
            ("config::type", "B", 3),
            ("config::swap", "C", 4),
            ("config::swap", "D", 5),
            ("config::swap", "D", 5),
            ("config::host_pattern", "E", 6),
            ("config::host_pattern", "E", 6),
        ],
        "{e:#?}"
    );
    let a = &e[0];
    assert!(a.message.contains("`bdy` is not a location"), "{a:#?}");
    let help = a.help.as_deref().unwrap();
    assert!(help.contains("did you mean \"body\"?"), "{help}");
    assert!(
        help.contains("\"headers\", \"query\", \"path\", \"body\""),
        "{help}"
    );
    assert_eq!(a.key.as_deref(), Some("secrets.A.swap"));
    assert!(
        e[2].message.contains("would never be swapped"),
        "{:#?}",
        e[2]
    );
    assert!(e[4].message.contains("found an integer"), "{:#?}", e[4]);
    assert!(e[5].message.contains("`gopher://`"), "{:#?}", e[5]);
    assert!(
        e[5].help
            .as_deref()
            .unwrap()
            .contains("http://localhost:8080"),
        "{:#?}",
        e[5]
    );
}

#[test]
fn methods_and_paths_bind_a_secret_and_bad_ones_are_errors_with_line_and_help() {
    let c = Project::new(
        "[secrets]\n\
         A = { provider = \"env\", ref = \"A\", hosts = [\"api.example.com\"], methods = [\"get\", \"POST\"], paths = [\"/v1/charges\", \"/v1/customers/**\"] }\n\
         B = { provider = \"env\", ref = \"B\" }\n",
    )
    .ok();
    let a = &c.secret("A").unwrap().binding;
    assert_eq!(a.methods.as_slice(), ["GET", "POST"]);
    assert_eq!(a.paths_text(), "/v1/charges, /v1/customers/**");
    assert!(a.check("POST", "/v1/customers/cu_1/sources").is_ok());
    assert!(a.check("DELETE", "/v1/charges").is_err());
    assert!(c.secret("B").unwrap().binding.is_open());

    let e = Project::new(
        "[secrets]\n\
         A = { provider = \"env\", ref = \"A\", methods = [\"GET POST\"] }\n\
         B = { provider = \"env\", ref = \"B\", paths = [\"v1/x\", \"/a/../b\"] }\n\
         C = { provider = \"env\", ref = \"C\", methods = [] }\n\
         D = { provider = \"env\", ref = \"D\", paths = \"/x\" }\n\
         E = { provider = \"env\", ref = \"E\", methods = [1] }\n",
    )
    .errors();
    let got: Vec<_> = e
        .iter()
        .map(|d| {
            (
                d.code,
                d.secret.as_deref().unwrap_or_default(),
                d.line.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("config::binding", "A", 2),
            ("config::binding", "B", 3),
            ("config::binding", "B", 3),
            ("config::binding", "C", 4),
            ("config::type", "D", 5),
            ("config::binding", "E", 6),
        ],
        "{e:#?}"
    );
    assert!(
        e[0].message.contains("`GET POST` is not an HTTP method"),
        "{:#?}",
        e[0]
    );
    assert_eq!(e[0].key.as_deref(), Some("secrets.A.methods"));
    assert!(e[1].message.contains("must start with `/`"), "{:#?}", e[1]);
    assert!(
        e[1].help.as_deref().unwrap().contains("`**`"),
        "{:#?}",
        e[1]
    );
    assert!(e[2].message.contains("`..`"), "{:#?}", e[2]);
    assert!(e[3].message.contains("could never be used"), "{:#?}", e[3]);
}
