//! Issuer profiles: verified claims to the normalised identity policies see.

use std::collections::BTreeMap;

use kz_policy::Identity;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, IdentityError, show};

/// Which claims fill the identity's fields (`server.md`, "Identity").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    GithubActions,
    Gitlab,
    Kubernetes,
    Spiffe,
    Gcp,
    Custom,
}

impl Profile {
    /// The bundle's spelling (`type:`).
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::GithubActions => "github-actions",
            Profile::Gitlab => "gitlab",
            Profile::Kubernetes => "kubernetes",
            Profile::Spiffe => "spiffe",
            Profile::Gcp => "gcp",
            Profile::Custom => "custom",
        }
    }

    /// Parses the bundle's spelling.
    pub fn parse(s: &str) -> Option<Profile> {
        [
            Profile::GithubActions,
            Profile::Gitlab,
            Profile::Kubernetes,
            Profile::Spiffe,
            Profile::Gcp,
            Profile::Custom,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Identity fields `map` may set.
pub const MAP_FIELDS: [&str; 8] = [
    "sub", "org", "service", "env", "action", "branch", "actor", "groups",
];

/// Walks `path` in `claims`: the path's dots split it into keys of nested objects, and a key may
/// itself hold dots (`kubernetes.io.namespace` is `namespace` inside the key `kubernetes.io`).
/// A path must resolve in exactly one way: when two splits both reach a value (a flat key
/// `kubernetes.io.namespace` next to the nested one, or `kubernetes` → `io` → `namespace`), the
/// token could choose which one kz reads, so it is `None` here and an error for the identity
/// fields. A leading `claims.` names the claims root, as the policy variable does
/// (`claims.teams` is the claim `teams`).
pub fn claim_path<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    match resolve(claims, path) {
        Resolved::One(v) => Some(v),
        Resolved::None | Resolved::Ambiguous => None,
    }
}

enum Resolved<'a> {
    None,
    One(&'a Value),
    Ambiguous,
}

fn resolve<'a>(claims: &'a Map<String, Value>, path: &str) -> Resolved<'a> {
    let path = path.strip_prefix("claims.").unwrap_or(path);
    let mut found = Vec::new();
    walk(claims, path, &mut found);
    match found.as_slice() {
        [] => Resolved::None,
        [v] => Resolved::One(v),
        _ => Resolved::Ambiguous,
    }
}

/// Every value `path` reaches in `map`, stopping at two (enough to call it ambiguous).
fn walk<'a>(map: &'a Map<String, Value>, path: &str, found: &mut Vec<&'a Value>) {
    if let Some(v) = map.get(path) {
        found.push(v);
    }
    for (i, _) in path.char_indices().filter(|(_, c)| *c == '.') {
        if found.len() >= 2 {
            return;
        }
        let (Some(head), Some(rest)) = (path.get(..i), path.get(i + 1..)) else {
            continue;
        };
        if let Some(Value::Object(inner)) = map.get(head) {
            walk(inner, rest, found);
        }
    }
}

fn ambiguous(path: &str) -> IdentityError {
    IdentityError::new(
        ErrorCode::BadIdentityClaim,
        format!(
            "claim `{}` can be read two ways (a key with dots and nested keys both match)",
            show(path)
        ),
    )
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn string_at(claims: &Map<String, Value>, path: &str) -> Result<String, IdentityError> {
    let value = match resolve(claims, path) {
        Resolved::Ambiguous => return Err(ambiguous(path)),
        Resolved::One(v) => Some(v),
        Resolved::None => None,
    };
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(IdentityError::new(
            ErrorCode::BadIdentityClaim,
            format!(
                "claim `{}` is {}, expected a string",
                show(path),
                json_type(other)
            ),
        )),
    }
}

fn list_at(claims: &Map<String, Value>, path: &str) -> Result<Vec<String>, IdentityError> {
    let bad = |what: &str| {
        IdentityError::new(
            ErrorCode::BadIdentityClaim,
            format!(
                "claim `{}` is {what}, expected a list of strings",
                show(path)
            ),
        )
    };
    let value = match resolve(claims, path) {
        Resolved::Ambiguous => return Err(ambiguous(path)),
        Resolved::One(v) => Some(v),
        Resolved::None => None,
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(bad(&format!("a list holding {}", json_type(other)))),
            })
            .collect(),
        Some(other) => Err(bad(json_type(other))),
    }
}

/// A SPIFFE ID's trust domain and path (`spiffe://example.org/ns/prod/sa/api` →
/// `example.org`, `/ns/prod/sa/api`), checked as the SPIFFE ID specification says.
pub fn spiffe_parts(id: &str) -> Result<(String, String), IdentityError> {
    let bad = |why: &str| {
        IdentityError::new(
            ErrorCode::BadIdentityClaim,
            format!("`sub` `{}` is not a SPIFFE ID: {why}", show(id)),
        )
    };
    if id.len() > 2048 {
        return Err(bad("longer than 2048 bytes"));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("it must start with `spiffe://` (lowercase)"))?;
    let (domain, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
        None => (rest, ""),
    };
    if domain.is_empty() {
        return Err(bad("the trust domain is empty"));
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(bad(
            "the trust domain may hold only lowercase letters, digits, `-`, `.` and `_`",
        ));
    }
    if !path.is_empty() {
        for seg in path.split('/').skip(1) {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(bad("a path segment is empty, `.` or `..`"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(bad(
                    "path segments may hold only letters, digits, `-`, `.` and `_`",
                ));
            }
        }
    }
    Ok((domain.to_string(), path.to_string()))
}

/// The normalised identity of verified `claims` under `profile`, with `map` (identity field →
/// claim path) overriding profile fields. `issuer` is left empty (the verifier sets the issuer's
/// name). A field nothing fills is `""` (`groups`: empty); a claim of the wrong type is an error.
pub fn normalise(
    profile: Profile,
    map: &BTreeMap<String, String>,
    claims: &Map<String, Value>,
) -> Result<Identity, IdentityError> {
    let mut id = Identity {
        sub: string_at_top(claims, "sub")?,
        claims: claims.clone(),
        ..Identity::default()
    };
    let s = |path: &str| string_at(claims, path);
    match profile {
        Profile::GithubActions => {
            id.org = s("repository_owner")?;
            id.service = s("repository")?;
            id.env = s("environment")?;
            id.action = s("workflow")?;
            id.branch = s("ref")?
                .strip_prefix("refs/heads/")
                .map(str::to_string)
                .unwrap_or_default();
            id.actor = s("actor")?;
        }
        Profile::Gitlab => {
            id.org = s("namespace_path")?;
            id.service = s("project_path")?;
            id.env = s("environment")?;
            id.action = s("pipeline_source")?;
            if s("ref_type")? == "branch" {
                id.branch = s("ref")?;
            }
            id.actor = s("user_login")?;
        }
        Profile::Kubernetes => {
            id.org = s("kubernetes.io.namespace")?;
            id.service = s("kubernetes.io.serviceaccount.name")?;
            id.actor = id.sub.clone();
        }
        Profile::Spiffe => {
            let (domain, path) = spiffe_parts(&id.sub)?;
            id.org = domain;
            id.service = path;
            id.actor = id.sub.clone();
        }
        Profile::Gcp => {
            id.org = s("google.compute_engine.project_id")?;
            id.service = s("email")?;
            id.actor = id.service.clone();
        }
        Profile::Custom => {}
    }
    for (field, path) in map {
        match field.as_str() {
            "sub" => id.sub = s(path)?,
            "org" => id.org = s(path)?,
            "service" => id.service = s(path)?,
            "env" => id.env = s(path)?,
            "action" => id.action = s(path)?,
            "branch" => id.branch = s(path)?,
            "actor" => id.actor = s(path)?,
            "groups" => id.groups = list_at(claims, path)?,
            other => {
                return Err(IdentityError::new(
                    ErrorCode::BadIdentityClaim,
                    format!(
                        "`map` names `{}`, which is no identity field ({})",
                        show(other),
                        MAP_FIELDS.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(id)
}

/// `sub` is read as a plain key (never walked as a path).
fn string_at_top(claims: &Map<String, Value>, key: &str) -> Result<String, IdentityError> {
    match claims.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(IdentityError::new(
            ErrorCode::BadClaimType,
            format!("claim `{key}` is {}, expected a string", json_type(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn a_claim_path_resolves_one_way_or_not_at_all() {
        let c = obj(json!({
            "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "api"}},
            "x.y": "whole",
            "claims": {"x": "claim named claims"},
            "deep": {"a.b": {"c": "mixed"}},
        }));
        assert_eq!(
            claim_path(&c, "kubernetes.io.namespace"),
            Some(&json!("prod"))
        );
        assert_eq!(
            claim_path(&c, "kubernetes.io.serviceaccount.name"),
            Some(&json!("api"))
        );
        assert_eq!(claim_path(&c, "x.y"), Some(&json!("whole")));
        assert_eq!(claim_path(&c, "claims.x.y"), Some(&json!("whole")));
        assert_eq!(claim_path(&c, "deep.a.b.c"), Some(&json!("mixed")));
        assert_eq!(
            claim_path(&c, "claims.claims.x"),
            Some(&json!("claim named claims"))
        );
        assert_eq!(claim_path(&c, "nope.x"), None);
        assert_eq!(claim_path(&c, "x.y.z"), None);
        // Two readings of one path: the token could choose which kz reads.
        for decoy in [
            json!({"kubernetes.io": {"namespace": "prod"}, "kubernetes": {"io": {"namespace": "kube-system"}}}),
            json!({"kubernetes.io": {"namespace": "prod"}, "kubernetes.io.namespace": "kube-system"}),
        ] {
            let c = obj(decoy);
            assert_eq!(claim_path(&c, "kubernetes.io.namespace"), None);
            let e = normalise(Profile::Kubernetes, &BTreeMap::new(), &c).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadIdentityClaim);
            assert!(e.message.contains("two ways"), "{}", e.message);
        }
    }

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            spiffe_parts("spiffe://example.org/ns/prod/sa/api").unwrap(),
            ("example.org".into(), "/ns/prod/sa/api".into())
        );
        assert_eq!(
            spiffe_parts("spiffe://example.org").unwrap(),
            ("example.org".into(), String::new())
        );
        for bad in [
            "SPIFFE://example.org/x",
            "spiffe:///x",
            "spiffe://Example.org/x",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/a/../b",
            "spiffe://example.org:8080/x",
            "spiffe://user@example.org/x",
            "spiffe://example.org/x?y",
            "https://example.org/x",
            "",
        ] {
            assert!(spiffe_parts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wrong_types_are_errors_not_empty() {
        let c = obj(json!({"sub": "x", "repository_owner": 5}));
        let e = normalise(Profile::GithubActions, &BTreeMap::new(), &c).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadIdentityClaim);
        let c = obj(json!({"sub": ["x"]}));
        assert!(normalise(Profile::Custom, &BTreeMap::new(), &c).is_err());
        let c = obj(json!({"teams": ["a", 1]}));
        let m = BTreeMap::from([("groups".to_string(), "claims.teams".to_string())]);
        assert!(normalise(Profile::Custom, &m, &c).is_err());
        let c = obj(json!({"teams": "a"}));
        assert!(normalise(Profile::Custom, &m, &c).is_err());
    }

    #[test]
    fn missing_fields_are_empty() {
        let id = normalise(Profile::GithubActions, &BTreeMap::new(), &Map::new()).unwrap();
        assert_eq!(id, Identity::default());
    }
}
