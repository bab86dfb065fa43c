//! What an untrusted project configuration may not set: environment variables that change which
//! code a program loads or runs.
//!
//! The principle: a variable is refused in an untrusted `.keyzero.toml` / `.keyzero.local.toml`
//! when setting it can make a program started by `kz run` load or run code other than its own:
//! the dynamic loader's variables, shell start-up files and hooks, interpreter search paths and
//! option variables (which can preload a module), the programs that tools such as git start
//! (editors, pagers, ssh, askpass helpers), and the variables that choose where programs read
//! their configuration (which in turn can name programs: `HOME`, `XDG_CONFIG_HOME`, `GIT_DIR`,
//! `KUBECONFIG`, …), kz's own `KEYZERO_*` switches, and (a second class) the variables that
//! change where programs send credentials or which TLS they trust: servers (`VAULT_ADDR`,
//! `AWS_ENDPOINT_URL*`), proxies (`*_PROXY`), CA bundles, TLS-off switches and which of the
//! user's credentials are used (`AWS_PROFILE`, …). Names are compared case-insensitively (npm and Windows read some of them in
//! any case). `kz allow` (or `--trust`) lifts the rule. The list is in `docs/configuration.md`.

/// Exact names (upper case) that change which code a program loads or runs.
pub const CODE_LOADING_VARS: &[&str] = &[
    // The dynamic loader and libc.
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    // Shells: start-up files, hooks, prompts (expanded, so they run `$(…)`), word splitting,
    // options and where commands are found.
    "BASH_ENV",
    "ENV",
    "PROMPT_COMMAND",
    "PS0",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "IFS",
    "SHELLOPTS",
    "BASHOPTS",
    "ZDOTDIR",
    "FPATH",
    "SHELL",
    "PATH",
    // Where programs read their configuration (which can name programs).
    "HOME",
    "XDG_CONFIG_HOME",
    "XDG_CONFIG_DIRS",
    "XDG_DATA_HOME",
    "XDG_DATA_DIRS",
    // Python.
    "PYTHONSTARTUP",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONBREAKPOINT",
    // Node.js.
    "NODE_OPTIONS",
    "NODE_PATH",
    // Perl.
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    // Ruby.
    "RUBYOPT",
    "RUBYLIB",
    "GEM_HOME",
    "GEM_PATH",
    "BUNDLE_GEMFILE",
    // Java.
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "JAVA_HOME",
    // Go and Rust toolchains.
    "GOFLAGS",
    "GOTOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    // git: its directories and configuration, and the programs it starts.
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_TEMPLATE_DIR",
    "GIT_EXEC_PATH",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_ASKPASS",
    "GIT_EDITOR",
    "GIT_SEQUENCE_EDITOR",
    "GIT_PAGER",
    "GIT_EXTERNAL_DIFF",
    "GIT_PROXY_COMMAND",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    // Programs other programs start.
    "EDITOR",
    "VISUAL",
    "PAGER",
    "MANPAGER",
    "LESSOPEN",
    "LESSCLOSE",
    "BROWSER",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    // Configuration files that can name programs or load modules.
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    "KUBECONFIG",
    "DOCKER_CONFIG",
    "AWS_CONFIG_FILE",
    // Editors and database shells: start-up files and commands.
    "VIMINIT",
    "GVIMINIT",
    "EXINIT",
    "MYVIMRC",
    "MYGVIMRC",
    "VIMRUNTIME",
    "PSQLRC",
    "MYSQL_HOME",
    "SQLITE_HISTORY",
    // .NET, Lua, build tools and their option variables (which can load agents or plugins).
    "DOTNET_STARTUP_HOOKS",
    "DOTNET_ADDITIONAL_DEPS",
    "MAVEN_OPTS",
    "MAVEN_ARGS",
    "GRADLE_OPTS",
    "GRADLE_USER_HOME",
    "ANT_OPTS",
    "SBT_OPTS",
    "JAVA_OPTS",
    "GNUPGHOME",
    "TF_CLI_CONFIG_FILE",
    "TERRAFORM_CONFIG",
    "TF_PLUGIN_CACHE_DIR",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "GOPATH",
    "GOROOT",
    "GOENV",
    "GOPROXY",
    "GOSUMDB",
    "GONOSUMDB",
    "GONOSUMCHECK",
    "GOINSECURE",
    "GOPRIVATE",
    "GONOPROXY",
    // Compilers, linkers and make, which build scripts run.
    "CC",
    "CXX",
    "CPP",
    "LD",
    "AR",
    "AS",
    "NM",
    "RANLIB",
    "STRIP",
    "OBJCOPY",
    "FC",
    "F77",
    "CFLAGS",
    "CXXFLAGS",
    "CPPFLAGS",
    "LDFLAGS",
    "MAKE",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKEFILES",
    "PKG_CONFIG",
    "PKG_CONFIG_PATH",
    "DOCKER_HOST",
];

/// Prefixes (upper case): every variable that starts with one is refused.
pub const CODE_LOADING_PREFIXES: &[&str] = &[
    // glibc's and macOS's dynamic loaders (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `DYLD_INSERT_LIBRARIES`).
    "LD_",
    "DYLD_",
    // Exported bash functions (`BASH_FUNC_name%%`).
    "BASH_FUNC_",
    // git configuration from the environment (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_0`,
    // `GIT_CONFIG_GLOBAL`, …), which can set `core.fsmonitor`, `core.sshCommand`, hooks.
    "GIT_CONFIG_",
    // npm configuration (`npm_config_script_shell`, `npm_config_node_options`, registries).
    "NPM_CONFIG_",
    // pip configuration (index URLs and config files decide which code is installed).
    "PIP_",
    // kz's own switches (`KEYZERO_TRUST`, `KEYZERO_CONFIG`): a child kz must not be made to
    // trust what its user did not.
    "KEYZERO_",
    // Cargo reads its whole configuration from `CARGO_*` (wrappers, linkers, runners, home).
    "CARGO_",
    // Lua start-up code and search paths (`LUA_INIT_5_4`, `LUA_PATH`, `LUA_CPATH`).
    "LUA_INIT",
    "LUA_PATH",
    "LUA_CPATH",
    // .NET profilers (`CORECLR_PROFILER_PATH`, `COR_ENABLE_PROFILING`).
    "CORECLR_",
    "COR_",
    // cgo compiler flags, CMake settings.
    "CGO_",
    "CMAKE_",
];

/// Exact names (upper case) that change where programs send credentials, which credentials
/// they pick up, or which TLS certificates they trust.
pub const CREDENTIAL_ROUTE_VARS: &[&str] = &[
    // Servers that receive the user's ambient credentials.
    "VAULT_ADDR",
    "VAULT_AGENT_ADDR",
    "BAO_ADDR",
    "BAO_AGENT_ADDR",
    "CONSUL_HTTP_ADDR",
    "NOMAD_ADDR",
    "OP_CONNECT_HOST",
    "GH_HOST",
    "GITHUB_API_URL",
    "GITLAB_URI",
    // Which of the user's credentials are used.
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "AZURE_CONFIG_DIR",
    "SSH_AUTH_SOCK",
    "GPG_AGENT_INFO",
    "NETRC",
    // CA bundles and TLS switches.
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "NODE_TLS_REJECT_UNAUTHORIZED",
    "GIT_SSL_NO_VERIFY",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "PYTHONHTTPSVERIFY",
    "VAULT_SKIP_VERIFY",
    "BAO_SKIP_VERIFY",
    "GODEBUG",
    "SSLKEYLOGFILE",
];

/// Prefixes (upper case) of the same class.
pub const CREDENTIAL_ROUTE_PREFIXES: &[&str] = &[
    // `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, ….
    "AWS_ENDPOINT_URL",
    // gcloud endpoint overrides.
    "CLOUDSDK_API_ENDPOINT_OVERRIDES_",
];

/// Suffixes (upper case) of the same class: proxies (`HTTPS_PROXY`, `https_proxy`,
/// `ALL_PROXY`, …), CA bundles and paths, and TLS verification switches in any program.
pub const CREDENTIAL_ROUTE_SUFFIXES: &[&str] = &[
    "_PROXY",
    "_CA_BUNDLE",
    "_CA_CERT",
    "_CA_CERTS",
    "_CACERT",
    "_CACERTS",
    "_CAINFO",
    "_CAPATH",
    "_CA_FILE",
    "_CAFILE",
    "_CERT_FILE",
    "_CERT_DIR",
    "_SKIP_VERIFY",
    "_NO_VERIFY",
    "_TLS_REJECT_UNAUTHORIZED",
    "_SSL_VERIFY",
    "_TLS_VERIFY",
    "_INSECURE",
    "_ENDPOINT",
    "_ENDPOINT_URL",
];

/// Whether the variable `name` changes where programs send credentials, which credentials
/// they use, or which TLS certificates they trust.
pub fn changes_credential_route(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    CREDENTIAL_ROUTE_VARS.contains(&upper.as_str())
        || CREDENTIAL_ROUTE_PREFIXES
            .iter()
            .any(|p| upper.starts_with(p))
        || CREDENTIAL_ROUTE_SUFFIXES.iter().any(|p| upper.ends_with(p))
}

/// Whether the variable `name` changes which code a program loads or runs (see the module docs).
pub fn changes_code_loading(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    CODE_LOADING_VARS.contains(&upper.as_str())
        || CODE_LOADING_PREFIXES.iter().any(|p| upper.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_shell_and_interpreter_variables_are_caught_in_any_case() {
        for n in [
            "LD_PRELOAD",
            "ld_preload",
            "LD_LIBRARY_PATH",
            "DYLD_INSERT_LIBRARIES",
            "BASH_ENV",
            "ENV",
            "PROMPT_COMMAND",
            "PYTHONSTARTUP",
            "PythonPath",
            "NODE_OPTIONS",
            "PERL5OPT",
            "RUBYOPT",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_KEY_0",
            "npm_config_script_shell",
            "PIP_INDEX_URL",
            "BASH_FUNC_ls%%",
            "PATH",
            "HOME",
            "KEYZERO_TRUST",
            "KEYZERO_CONFIG",
            "keyzero_trust",
            "VIMINIT",
            "EXINIT",
            "MYVIMRC",
            "PSQLRC",
            "LUA_INIT",
            "LUA_INIT_5_4",
            "DOTNET_STARTUP_HOOKS",
            "MAVEN_OPTS",
            "GRADLE_OPTS",
            "GNUPGHOME",
            "TF_CLI_CONFIG_FILE",
            "CARGO_HOME",
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
            "RUSTC_WRAPPER",
            "CC",
            "CXX",
            "cc",
        ] {
            assert!(changes_code_loading(n), "{n}");
        }
    }

    #[test]
    fn variables_that_route_credentials_or_tls_are_caught_in_any_case() {
        for n in [
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_STS",
            "VAULT_ADDR",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "NO_PROXY",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "CURL_CA_BUNDLE",
            "AWS_CA_BUNDLE",
            "NODE_TLS_REJECT_UNAUTHORIZED",
            "GIT_SSL_NO_VERIFY",
            "PYTHONHTTPSVERIFY",
            "VAULT_SKIP_VERIFY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "AWS_PROFILE",
        ] {
            assert!(changes_credential_route(n), "{n}");
        }
    }

    #[test]
    fn ordinary_secret_names_pass() {
        for n in [
            "DATABASE_URL",
            "STRIPE_KEY",
            "GITHUB_TOKEN",
            "GIT_TOKEN_X",
            "OPENAI_API_KEY",
            "LDAP_PASSWORD",
            "PATHWAY_KEY",
            "ENVIRONMENT",
            "AWS_SECRET_ACCESS_KEY",
            "CCACHE_KEY",
            "VAULT_TOKEN_FOR_APP",
        ] {
            assert!(!changes_code_loading(n), "{n}");
            assert!(!changes_credential_route(n), "{n}");
        }
    }
}
