//! What an untrusted project configuration may not set: environment variables that change which
//! code a program loads or runs.
//!
//! The principle: a variable is refused in an untrusted `.keyzero.toml` / `.keyzero.local.toml`
//! when setting it can make a program started by `kz run` load or run code other than its own:
//! the dynamic loader's variables, shell start-up files and hooks, interpreter search paths and
//! option variables (which can preload a module), the programs that tools such as git start
//! (editors, pagers, ssh, askpass helpers), and the variables that choose where programs read
//! their configuration (which in turn can name programs: `HOME`, `XDG_CONFIG_HOME`, `GIT_DIR`,
//! `KUBECONFIG`, …). Names are compared case-insensitively (npm and Windows read some of them in
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
];

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
        ] {
            assert!(changes_code_loading(n), "{n}");
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
        ] {
            assert!(!changes_code_loading(n), "{n}");
        }
    }
}
