//! The provider catalog: every provider type kz knows, with its aliases, declared options,
//! per-secret parameters, reference syntax and credential variables.
//!
//! This is data, not behaviour: config validation (`kz validate`), `kz add` and `kz doctor`
//! read it, and each implementation in `kz-providers` is registered under one of these names.
//! The same registry serves solo configs and (later) bundle `backends:`.

/// The shape an option's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// A positive integer.
    Int,
    /// A duration (`"500ms"`, `"10s"`, `"5m"`, `"1h"` or a number of seconds).
    Duration,
    /// A list of strings.
    StrList,
    /// A string or a list of strings.
    StrOrList,
    /// A string or a table (Vault `auth`).
    StrOrTable,
    /// Any scalar (a parameter: string, integer, float or boolean).
    Scalar,
}

/// One declared option of a provider type.
#[derive(Debug, Clone, Copy)]
pub struct OptSpec {
    /// The option's name.
    pub name: &'static str,
    /// Its shape.
    pub kind: Kind,
    /// Holds a credential: refused in the committed project file.
    pub credential: bool,
    /// Runs a program, sends kz's ambient credentials somewhere, or names which credential,
    /// key, recipient, CA or server is used (every `*_env`, `*_file`, `auth`, `credentials`,
    /// `ca_cert`, `service`, `recipients`, `identity` option): honoured from the project files
    /// only once they are trusted (`kz allow`).
    pub needs_trust: bool,
}

const fn opt(name: &'static str, kind: Kind) -> OptSpec {
    OptSpec {
        name,
        kind,
        credential: false,
        needs_trust: false,
    }
}

const fn cred(name: &'static str) -> OptSpec {
    OptSpec {
        name,
        kind: Kind::Str,
        credential: true,
        needs_trust: false,
    }
}

const fn trusted(name: &'static str, kind: Kind) -> OptSpec {
    OptSpec {
        name,
        kind,
        credential: false,
        needs_trust: true,
    }
}

/// Options every provider type accepts.
pub const COMMON_OPTIONS: &[OptSpec] = &[
    opt("type", Kind::Str),
    opt("timeout", Kind::Duration),
    opt("concurrency", Kind::Int),
    opt("max_age", Kind::Duration),
    opt("offline", Kind::Str),
];

/// Keys every secret entry accepts (besides the type's parameters).
pub const ENTRY_KEYS: &[&str] = &[
    "provider",
    "resolver",
    "ref",
    "field",
    "allow_empty",
    "optional",
    "hosts",
    "methods",
    "paths",
    "swap",
    "description",
];

/// When a provider type can store values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writable {
    /// Always.
    Yes,
    /// Never.
    No,
    /// Only when the named option is set (`age` with `recipients`).
    WhenOption(&'static str),
    /// When the plugin supports it (`exec`).
    Plugin,
}

/// One provider type.
#[derive(Debug)]
pub struct ProviderType {
    /// Canonical name.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// One line for `kz add` and `kz doctor`.
    pub summary: &'static str,
    /// Type-specific options (the common ones are in [`COMMON_OPTIONS`]).
    pub options: &'static [OptSpec],
    /// Per-secret parameters.
    pub params: &'static [&'static str],
    /// Accepts any parameter (the `exec` plugin protocol passes them on).
    pub any_params: bool,
    /// Whether `kz put` can store values.
    pub writable: Writable,
    /// Reference syntax, for help texts.
    pub ref_syntax: &'static str,
    /// An example reference.
    pub example: &'static str,
    /// Environment variables its SDK or CLI reads for credentials (never passed to a blind
    /// child).
    pub credential_env: &'static [&'static str],
    /// Whether this build of kz implements the type (the others validate but cannot resolve).
    pub implemented: bool,
}

impl ProviderType {
    /// The declared option called `name` (type-specific or common).
    pub fn option(&self, name: &str) -> Option<&'static OptSpec> {
        self.options
            .iter()
            .chain(COMMON_OPTIONS)
            .find(|o| o.name == name)
    }

    /// All option names, for "did you mean".
    pub fn option_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.options.iter().chain(COMMON_OPTIONS).map(|o| o.name)
    }

    /// Whether this type can ever write (decided by the type, not the instance name).
    pub fn can_write(&self, options_set: &dyn Fn(&str) -> bool) -> bool {
        match self.writable {
            Writable::Yes | Writable::Plugin => true,
            Writable::No => false,
            Writable::WhenOption(o) => options_set(o),
        }
    }
}

/// The catalog, in the order `kz add` offers it.
pub static TYPES: &[ProviderType] = &[
    ProviderType {
        name: "local",
        aliases: &[],
        summary: "kz's own age-encrypted store on this machine (no account, no daemon)",
        options: &[opt("path", Kind::Str), trusted("identity", Kind::Str)],
        params: &[],
        any_params: false,
        writable: Writable::Yes,
        ref_syntax: "NAME (by convention <project>/<VARIABLE>)",
        example: "myapp/DATABASE_URL",
        credential_env: &[],
        implemented: true,
    },
    ProviderType {
        name: "env",
        aliases: &[],
        summary: "a variable of kz's own environment",
        options: &[],
        params: &[],
        any_params: false,
        writable: Writable::No,
        ref_syntax: "VARIABLE",
        example: "CI_DATABASE_URL",
        credential_env: &[],
        implemented: true,
    },
    ProviderType {
        name: "dotenv",
        aliases: &["env_file"],
        summary: "a KEY=VALUE file",
        options: &[opt("path", Kind::Str)],
        params: &[],
        any_params: false,
        writable: Writable::No,
        ref_syntax: "KEY",
        example: "DATABASE_URL",
        credential_env: &[],
        implemented: true,
    },
    ProviderType {
        name: "age",
        aliases: &[],
        summary: "age-encrypted files",
        options: &[
            trusted("identity", Kind::StrOrList),
            trusted("recipients", Kind::StrList),
        ],
        params: &[],
        any_params: false,
        writable: Writable::WhenOption("recipients"),
        ref_syntax: "PATH of an encrypted file, relative to the config file",
        example: "secrets/db.age",
        credential_env: &["KEYZERO_AGE_IDENTITY", "KEYZERO_AGE_IDENTITY_FILE"],
        implemented: true,
    },
    ProviderType {
        name: "keychain",
        aliases: &[],
        summary: "macOS Keychain / Linux Secret Service",
        options: &[trusted("service", Kind::Str)],
        params: &[],
        any_params: false,
        writable: Writable::Yes,
        ref_syntax: "ACCOUNT (service from the `service` option, default `keyzero`)",
        example: "myapp-db-url",
        credential_env: &["DBUS_SESSION_BUS_ADDRESS"],
        implemented: true,
    },
    ProviderType {
        name: "1password",
        aliases: &["op", "onepassword", "1password_cli", "onepassword_cli"],
        summary: "1Password through the `op` CLI",
        options: &[
            trusted("op_path", Kind::Str),
            opt("account", Kind::Str),
            opt("vault", Kind::Str),
        ],
        params: &[],
        any_params: false,
        writable: Writable::Yes,
        ref_syntax: "op://VAULT/ITEM[/SECTION]/FIELD",
        example: "op://Dev/openai/credential",
        credential_env: &[
            "OP_SERVICE_ACCOUNT_TOKEN",
            "OP_CONNECT_TOKEN",
            "OP_CONNECT_HOST",
            "OP_SESSION_*",
        ],
        implemented: true,
    },
    ProviderType {
        name: "aws",
        aliases: &["aws-sm", "aws_secrets_manager"],
        summary: "AWS Secrets Manager (sm://) and SSM Parameter Store (ssm://)",
        options: &[
            opt("region", Kind::Str),
            opt("profile", Kind::Str),
            trusted("endpoint_url", Kind::Str),
        ],
        params: &["version_stage", "version_id"],
        any_params: false,
        writable: Writable::Yes,
        ref_syntax: "sm://NAME-OR-ARN[#field] or ssm://NAME",
        example: "sm://prod/stripe",
        credential_env: &["AWS_*"],
        implemented: true,
    },
    ProviderType {
        name: "aws_sts",
        aliases: &[],
        summary: "temporary AWS credentials from STS AssumeRole",
        options: &[
            opt("region", Kind::Str),
            opt("profile", Kind::Str),
            trusted("endpoint_url", Kind::Str),
        ],
        params: &[
            "role_arn",
            "duration_seconds",
            "session_name",
            "external_id",
            "format",
            "prefix",
        ],
        any_params: false,
        writable: Writable::No,
        ref_syntax: "ROLE-ARN (or the `role_arn` parameter)",
        example: "arn:aws:iam::123456789012:role/deploy",
        credential_env: &["AWS_*"],
        implemented: true,
    },
    ProviderType {
        name: "hashicorp",
        aliases: &["vault", "hashicorp_vault", "openbao"],
        summary: "HashiCorp Vault / OpenBao",
        options: &[
            trusted("address", Kind::Str),
            opt("namespace", Kind::Str),
            trusted("ca_cert", Kind::Str),
            trusted("auth", Kind::StrOrTable),
            cred("token"),
            trusted("token_env", Kind::Str),
            trusted("token_file", Kind::Str),
        ],
        params: &["version"],
        any_params: false,
        writable: Writable::Yes,
        ref_syntax: "PATH[#field] (logical `secret/app` or API `secret/data/app`)",
        example: "secret/data/prod/stripe",
        credential_env: &["VAULT_*", "BAO_*"],
        implemented: true,
    },
    ProviderType {
        name: "gcp",
        aliases: &["gcp_secret_manager"],
        summary: "Google Cloud Secret Manager",
        options: &[
            opt("project", Kind::Str),
            trusted("endpoint_url", Kind::Str),
            trusted("credentials", Kind::Str),
        ],
        params: &["version"],
        any_params: false,
        writable: Writable::Yes,
        ref_syntax: "projects/P/secrets/S[/versions/V] or S with the `project` option",
        example: "projects/acme/secrets/stripe",
        credential_env: &["GOOGLE_*", "CLOUDSDK_*"],
        implemented: true,
    },
    ProviderType {
        name: "keyzero",
        aliases: &["kz"],
        summary: "a keyzero team server",
        options: &[
            trusted("endpoint", Kind::Str),
            opt("audience", Kind::Str),
            trusted("ca_cert", Kind::Str),
            trusted("token_source", Kind::Str),
            cred("token"),
            trusted("token_env", Kind::Str),
            trusted("token_file", Kind::Str),
        ],
        params: &[],
        any_params: false,
        writable: Writable::No,
        ref_syntax: "NAME as the server's resolvers know it",
        example: "prod/api-key",
        credential_env: &["ACTIONS_ID_TOKEN_*", "KEYZERO_TOKEN"],
        implemented: true,
    },
    ProviderType {
        name: "exec",
        aliases: &["command"],
        summary: "any program that speaks kz's plugin protocol",
        options: &[trusted("command", Kind::StrList)],
        params: &[],
        any_params: true,
        writable: Writable::Plugin,
        ref_syntax: "anything the plugin understands",
        example: "item/password",
        credential_env: &[],
        implemented: true,
    },
];

/// The forms of the `keyzero` provider's `token_source`, for help texts.
pub const KEYZERO_TOKEN_SOURCES: &str =
    "github-actions, gitlab, kubernetes, env:VARIABLE, file:PATH, token";

/// Checks the form of a `keyzero` provider's `token_source` (config validation and the provider
/// share it); the error says what is wrong.
pub fn check_keyzero_token_source(v: &str) -> Result<(), String> {
    let v = v.trim();
    if ["github-actions", "gitlab", "kubernetes", "token"].contains(&v) {
        return Ok(());
    }
    if let Some(var) = v.strip_prefix("env:") {
        let var = var.trim();
        return if var.is_empty() || var.contains('=') || var.contains('\0') {
            Err(format!("token_source = \"{v}\" does not name a variable"))
        } else {
            Ok(())
        };
    }
    if let Some(path) = v.strip_prefix("file:") {
        return if path.trim().is_empty() {
            Err(format!("token_source = \"{v}\" does not name a file"))
        } else {
            Ok(())
        };
    }
    Err(format!("unknown token_source `{v}`"))
}

/// Looks a type up by name or alias (exact, case-sensitive as published).
pub fn find(name: &str) -> Option<&'static ProviderType> {
    TYPES
        .iter()
        .find(|t| t.name == name || t.aliases.contains(&name))
}

/// All names and aliases, for "did you mean" and help texts.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    TYPES
        .iter()
        .flat_map(|t| std::iter::once(t.name).chain(t.aliases.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_their_type() {
        for (alias, name) in [
            ("vault", "hashicorp"),
            ("hashicorp_vault", "hashicorp"),
            ("openbao", "hashicorp"),
            ("aws-sm", "aws"),
            ("aws_secrets_manager", "aws"),
            ("op", "1password"),
            ("onepassword_cli", "1password"),
            ("env_file", "dotenv"),
            ("gcp_secret_manager", "gcp"),
            ("kz", "keyzero"),
            ("command", "exec"),
        ] {
            assert_eq!(find(alias).map(|t| t.name), Some(name), "{alias}");
        }
        assert!(find("nope").is_none());
    }

    #[test]
    fn names_are_unique() {
        let mut all: Vec<_> = all_names().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn credential_options_are_marked() {
        let vault = find("vault").unwrap();
        assert!(vault.option("token").unwrap().credential);
        assert!(vault.option("address").unwrap().needs_trust);
        assert!(find("exec").unwrap().option("command").unwrap().needs_trust);
        assert!(find("local").unwrap().option("timeout").is_some());
    }

    /// Every option that names which credential, key, recipient, CA or server is used needs
    /// trust, in every type (a repository must not point kz at the user's other secrets).
    #[test]
    fn options_that_choose_credentials_need_trust() {
        for ty in TYPES {
            for o in ty.options {
                let chooses = o.name.ends_with("_env")
                    || o.name.ends_with("_file")
                    || o.name.ends_with("_path")
                    || o.name.ends_with("_source")
                    || [
                        "auth",
                        "credentials",
                        "ca_cert",
                        "service",
                        "recipients",
                        "identity",
                        "address",
                        "endpoint",
                        "endpoint_url",
                        "command",
                    ]
                    .contains(&o.name);
                if chooses {
                    assert!(o.needs_trust, "{}.{}", ty.name, o.name);
                }
            }
        }
    }
}
