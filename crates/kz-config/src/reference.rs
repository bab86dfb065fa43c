//! References: the short string form and its scheme inference, and each type's reference
//! syntax, checked before any backend is contacted.

/// A scheme of the short form and the provider type it selects.
#[derive(Debug, Clone, Copy)]
pub struct Scheme {
    /// The prefix, e.g. `sm://`.
    pub prefix: &'static str,
    /// The provider type it selects.
    pub provider: &'static str,
    /// kz's own scheme (stripped before the provider sees the ref) rather than the backend's
    /// native one (kept).
    pub own: bool,
}

/// The schemes of the short form.
pub const SCHEMES: &[Scheme] = &[
    Scheme {
        prefix: "sm://",
        provider: "aws",
        own: false,
    },
    Scheme {
        prefix: "ssm://",
        provider: "aws",
        own: false,
    },
    Scheme {
        prefix: "op://",
        provider: "1password",
        own: false,
    },
    Scheme {
        prefix: "vault://",
        provider: "hashicorp",
        own: true,
    },
    Scheme {
        prefix: "gcp://",
        provider: "gcp",
        own: true,
    },
    Scheme {
        prefix: "age://",
        provider: "age",
        own: true,
    },
    Scheme {
        prefix: "env://",
        provider: "env",
        own: true,
    },
    Scheme {
        prefix: "keychain://",
        provider: "keychain",
        own: true,
    },
    Scheme {
        prefix: "local://",
        provider: "local",
        own: true,
    },
    Scheme {
        prefix: "kz://",
        provider: "keyzero",
        own: true,
    },
];

/// Why a short-form reference could not pick a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InferError {
    /// `xyz://…` with an unknown scheme.
    UnknownScheme(String),
    /// No scheme at all.
    NoScheme,
}

/// The provider type and the ref (own scheme stripped) for a short-form string.
pub fn infer(short: &str) -> Result<(&'static str, String), InferError> {
    for s in SCHEMES {
        if let Some(rest) = short.strip_prefix(s.prefix) {
            let r = if s.own { rest } else { short };
            return Ok((s.provider, r.to_string()));
        }
    }
    if is_gcp_resource_name(short) {
        return Ok(("gcp", short.to_string()));
    }
    match short.find("://") {
        Some(i) => Err(InferError::UnknownScheme(
            short.get(..i + 3).unwrap_or(short).to_string(),
        )),
        None => Err(InferError::NoScheme),
    }
}

/// The list of known schemes, for errors.
pub fn known_schemes() -> String {
    let mut v: Vec<&str> = SCHEMES.iter().map(|s| s.prefix).collect();
    v.push("projects/…/secrets/…");
    v.join(" ")
}

/// Strips the type's own scheme from a long-form ref (`vault://secret/app` → `secret/app`).
/// A ref carrying another type's own scheme is returned as `Err` with that scheme.
pub fn strip_own_scheme(provider: &str, r: &str) -> Result<String, &'static str> {
    for s in SCHEMES.iter().filter(|s| s.own) {
        if let Some(rest) = r.strip_prefix(s.prefix) {
            return if s.provider == provider {
                Ok(rest.to_string())
            } else {
                Err(s.prefix)
            };
        }
    }
    Ok(r.to_string())
}

fn is_gcp_resource_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    matches!(parts.as_slice(), ["projects", p, "secrets", n, ..] if !p.is_empty() && !n.is_empty())
}

/// Whether `name` is a valid environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a ref against its provider type's syntax. `Err` says what is wrong.
pub fn validate(provider: &str, r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("the reference is empty".into());
    }
    if r.len() > 1024 {
        return Err("the reference is longer than 1024 bytes".into());
    }
    if r.chars().any(char::is_control) {
        return Err("the reference contains a control character".into());
    }
    match provider {
        "env" if !is_env_name(r) => Err(format!("`{r}` is not a valid environment variable name")),
        "dotenv" if r.contains('=') || r.chars().any(char::is_whitespace) => {
            Err(format!("`{r}` is not a valid dotenv key"))
        }
        "age" => validate_relative_path(r),
        "1password" => validate_op(r),
        "aws" => validate_aws(r),
        "aws_sts" if !r.starts_with("arn:") => Err(format!(
            "`{r}` is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        )),
        "hashicorp" => {
            let path = r.split('#').next().unwrap_or_default().trim_matches('/');
            if path.is_empty() || path.split('/').any(|s| s.is_empty() || s == "..") {
                Err(format!(
                    "`{r}` is not a Vault path (e.g. `secret/data/app` or `secret/app#field`)"
                ))
            } else {
                Ok(())
            }
        }
        "gcp" => validate_gcp(r),
        "keyzero" => {
            if r.len() > 512 || r.contains('%') || r.split('/').any(|s| s == "..") {
                Err(format!(
                    "`{r}` is not a valid keyzero ref (at most 512 bytes, no `%`, no `..`)"
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// A relative path that stays inside the project directory.
fn validate_relative_path(r: &str) -> Result<(), String> {
    let p = std::path::Path::new(r);
    if p.is_absolute() {
        return Ok(());
    }
    let mut depth: i64 = 0;
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(format!("`{r}` leaves the project directory (`..`)"));
        }
    }
    Ok(())
}

fn validate_op(r: &str) -> Result<(), String> {
    let bad = || format!("`{r}` is not a 1Password reference (op://VAULT/ITEM[/SECTION]/FIELD)");
    let rest = r.strip_prefix("op://").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if (3..=4).contains(&parts.len()) && parts.iter().all(|p| !p.is_empty()) {
        Ok(())
    } else {
        Err(bad())
    }
}

fn validate_aws(r: &str) -> Result<(), String> {
    if let Some(name) = r.strip_prefix("ssm://") {
        if name.is_empty() || name == "/" {
            return Err(format!(
                "`{r}` names no parameter (ssm://NAME or ssm:///path/name)"
            ));
        }
        return Ok(());
    }
    let id = r.strip_prefix("sm://").unwrap_or(r);
    let id = id.split('#').next().unwrap_or_default();
    if id.is_empty() {
        return Err(format!("`{r}` names no secret (sm://NAME-OR-ARN)"));
    }
    if r.contains("://") && !r.starts_with("sm://") {
        return Err(format!(
            "`{r}` has a scheme the aws provider does not know (sm:// or ssm://)"
        ));
    }
    Ok(())
}

fn validate_gcp(r: &str) -> Result<(), String> {
    if !r.contains('/') {
        return Ok(()); // a short name; needs the `project` option (checked when resolving)
    }
    let parts: Vec<&str> = r.split('/').collect();
    let ok = match parts.as_slice() {
        ["projects", p, "secrets", s] => !p.is_empty() && !s.is_empty(),
        ["projects", p, "secrets", s, "versions", v] => {
            !p.is_empty() && !s.is_empty() && !v.is_empty()
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{r}` is not a Secret Manager name (projects/P/secrets/S[/versions/V])"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_form_schemes() {
        assert_eq!(
            infer("sm://prod/db").unwrap(),
            ("aws", "sm://prod/db".into())
        );
        assert_eq!(
            infer("ssm:///app/db").unwrap(),
            ("aws", "ssm:///app/db".into())
        );
        assert_eq!(
            infer("op://Dev/x/y").unwrap(),
            ("1password", "op://Dev/x/y".into())
        );
        assert_eq!(
            infer("vault://secret/app").unwrap(),
            ("hashicorp", "secret/app".into())
        );
        assert_eq!(
            infer("local://proj/DB").unwrap(),
            ("local", "proj/DB".into())
        );
        assert_eq!(infer("env://HOME").unwrap(), ("env", "HOME".into()));
        assert_eq!(infer("kz://prod/x").unwrap(), ("keyzero", "prod/x".into()));
        assert_eq!(
            infer("projects/p/secrets/s").unwrap(),
            ("gcp", "projects/p/secrets/s".into())
        );
        assert_eq!(infer("gcp://s").unwrap(), ("gcp", "s".into()));
        assert_eq!(
            infer("http://x"),
            Err(InferError::UnknownScheme("http://".into()))
        );
        assert_eq!(infer("plain"), Err(InferError::NoScheme));
    }

    #[test]
    fn own_scheme_is_stripped_only_for_its_type() {
        assert_eq!(
            strip_own_scheme("hashicorp", "vault://a/b"),
            Ok("a/b".into())
        );
        assert_eq!(strip_own_scheme("hashicorp", "a/b"), Ok("a/b".into()));
        assert_eq!(strip_own_scheme("local", "vault://a"), Err("vault://"));
        assert_eq!(strip_own_scheme("aws", "sm://x"), Ok("sm://x".into()));
    }

    #[test]
    fn per_type_syntax() {
        assert!(validate("env", "HOME").is_ok());
        assert!(validate("env", "1X").is_err());
        assert!(validate("age", "a/../b.age").is_ok());
        assert!(validate("age", "../b.age").is_err());
        assert!(validate("age", "a/../../b.age").is_err());
        assert!(validate("1password", "op://v/i/f").is_ok());
        assert!(validate("1password", "op://v/i/s/f").is_ok());
        assert!(validate("1password", "op://v/f").is_err());
        assert!(validate("aws", "sm://x#f").is_ok());
        assert!(validate("aws", "sm://").is_err());
        assert!(validate("aws", "ssm://").is_err());
        assert!(validate("aws", "bare-name").is_ok());
        assert!(validate("aws", "s3://x").is_err());
        assert!(validate("hashicorp", "secret/app#k").is_ok());
        assert!(validate("hashicorp", "secret//app").is_err());
        assert!(validate("gcp", "projects/p/secrets/s/versions/3").is_ok());
        assert!(validate("gcp", "projects/p/secret/s").is_err());
        assert!(validate("keyzero", "a/../b").is_err());
        assert!(validate("local", "").is_err());
        assert!(validate("local", "a\nb").is_err());
        assert!(validate("aws_sts", "role").is_err());
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_a1", "DATABASE_URL"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }
}
