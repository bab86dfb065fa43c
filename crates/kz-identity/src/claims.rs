//! Registered claims: types first (a wrong type is an error, never an absent claim), then times
//! and audience.

use serde_json::{Map, Value};

use crate::error::{ErrorCode, IdentityError, show};

/// What the claim checks need of an issuer.
#[derive(Debug)]
pub(crate) struct Rules<'a> {
    pub name: &'a str,
    pub audience: Option<&'a str>,
    pub leeway: i64,
    pub max_lifetime: Option<i64>,
    pub kubernetes: bool,
}

fn type_error(name: &str, expected: &str) -> IdentityError {
    IdentityError::new(
        ErrorCode::BadClaimType,
        format!("claim `{name}` must be {expected}"),
    )
}

/// A NumericDate claim (seconds since the epoch; a JSON number, fractions allowed and cut).
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, IdentityError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let secs = if let Some(i) = n.as_i64() {
                i
            } else if n.as_u64().is_some() {
                i64::MAX
            } else {
                // `as` saturates; JSON has no NaN or infinity.
                n.as_f64().map(|f| f.floor() as i64).unwrap_or(i64::MAX)
            };
            Ok(Some(secs))
        }
        Some(_) => Err(type_error(name, "a number (seconds since the epoch)")),
    }
}

/// An optional string claim.
pub(crate) fn string_claim<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, IdentityError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(type_error(name, "a string")),
    }
}

/// The audiences of `aud` (a string or a list of strings).
fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, IdentityError> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| type_error("aud", "a string or a list of strings"))
            })
            .collect(),
        Some(_) => Err(type_error("aud", "a string or a list of strings")),
    }
}

/// Checks types, times and audience; returns `exp`.
pub(crate) fn check(
    claims: &Map<String, Value>,
    rules: &Rules<'_>,
    now: i64,
) -> Result<i64, IdentityError> {
    // Types of every registered claim first, so a wrong type is never read as "absent".
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    let auds = audiences(claims)?;
    string_claim(claims, "sub")?;
    string_claim(claims, "jti")?;

    let Some(exp) = exp else {
        let help = if rules.kubernetes
            || claims.get("iss").and_then(Value::as_str) == Some("kubernetes/serviceaccount")
        {
            "; legacy Kubernetes service-account tokens have none: use a projected (bound) service-account token"
        } else {
            ""
        };
        return Err(IdentityError::new(
            ErrorCode::MissingExp,
            format!("token of issuer `{}` has no `exp` claim{help}", rules.name),
        ));
    };
    let leeway = rules.leeway;
    if now >= exp.saturating_add(leeway) {
        return Err(IdentityError::new(
            ErrorCode::Expired,
            format!(
                "token of issuer `{}` expired {} s ago (exp {exp}, leeway {leeway} s)",
                rules.name,
                now.saturating_sub(exp)
            ),
        ));
    }
    if let Some(nbf) = nbf
        && nbf.saturating_sub(leeway) > now
    {
        return Err(IdentityError::new(
            ErrorCode::NotYetValid,
            format!(
                "token of issuer `{}` is not valid before {nbf}, {} s from now (leeway {leeway} s)",
                rules.name,
                nbf.saturating_sub(now)
            ),
        ));
    }
    if let Some(iat) = iat
        && iat.saturating_sub(leeway) > now
    {
        return Err(IdentityError::new(
            ErrorCode::IssuedInFuture,
            format!(
                "token of issuer `{}` claims to be issued {} s in the future (leeway {leeway} s)",
                rules.name,
                iat.saturating_sub(now)
            ),
        ));
    }
    if let Some(max) = rules.max_lifetime {
        let Some(iat) = iat else {
            return Err(IdentityError::new(
                ErrorCode::LifetimeTooLong,
                format!(
                    "token of issuer `{}` has no `iat`, so its lifetime cannot be checked against max_token_lifetime ({max} s)",
                    rules.name
                ),
            ));
        };
        let life = exp.saturating_sub(iat);
        if life > max {
            return Err(IdentityError::new(
                ErrorCode::LifetimeTooLong,
                format!(
                    "token of issuer `{}` lives {life} s (exp - iat), over max_token_lifetime ({max} s)",
                    rules.name
                ),
            ));
        }
    }
    if let Some(want) = rules.audience
        && !auds.contains(&want)
    {
        let got = if auds.is_empty() {
            "no `aud`".to_string()
        } else {
            format!(
                "`aud` {}",
                auds.iter()
                    .take(5)
                    .map(|a| format!("`{}`", show(a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(IdentityError::new(
            ErrorCode::BadAudience,
            format!(
                "token of issuer `{}` has {got}, which does not contain the audience `{want}`",
                rules.name
            ),
        ));
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules<'static> {
        Rules {
            name: "t",
            audience: Some("kz"),
            leeway: 60,
            max_lifetime: None,
            kubernetes: false,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn code(v: Value, now: i64) -> Option<ErrorCode> {
        check(&obj(v), &rules(), now).err().map(|e| e.code)
    }

    #[test]
    fn times_with_leeway() {
        let now = 1_000_000;
        assert_eq!(code(json!({"aud":"kz","exp": now + 10}), now), None);
        assert_eq!(code(json!({"aud":"kz","exp": now - 30}), now), None);
        assert_eq!(
            code(json!({"aud":"kz","exp": now - 60}), now),
            Some(ErrorCode::Expired)
        );
        assert_eq!(
            code(json!({"aud":"kz","exp": now + 99, "nbf": now + 30}), now),
            None
        );
        assert_eq!(
            code(json!({"aud":"kz","exp": now + 999, "nbf": now + 61}), now),
            Some(ErrorCode::NotYetValid)
        );
        assert_eq!(
            code(json!({"aud":"kz","exp": now + 999, "iat": now + 61}), now),
            Some(ErrorCode::IssuedInFuture)
        );
        assert_eq!(code(json!({"aud":"kz","exp": 1e300}), now), None);
        assert_eq!(
            code(json!({"aud":"kz","exp": -5}), now),
            Some(ErrorCode::Expired)
        );
        assert_eq!(code(json!({"aud":"kz"}), now), Some(ErrorCode::MissingExp));
    }

    #[test]
    fn wrong_types_are_errors() {
        let now = 1_000_000;
        for v in [
            json!({"aud":"kz","exp":"9999999999"}),
            json!({"aud":"kz","exp":9999999999i64,"nbf":"0"}),
            json!({"aud":"kz","exp":9999999999i64,"iat":null}),
            json!({"aud":5,"exp":9999999999i64}),
            json!({"aud":["kz",5],"exp":9999999999i64}),
            json!({"aud":"kz","exp":9999999999i64,"sub":1}),
            json!({"aud":"kz","exp":9999999999i64,"jti":{}}),
        ] {
            assert_eq!(code(v.clone(), now), Some(ErrorCode::BadClaimType), "{v}");
        }
    }

    #[test]
    fn audience() {
        let now = 1_000_000;
        assert_eq!(code(json!({"aud":["a","kz"],"exp":now+9}), now), None);
        assert_eq!(
            code(json!({"aud":["a"],"exp":now+9}), now),
            Some(ErrorCode::BadAudience)
        );
        assert_eq!(
            code(json!({"aud":[],"exp":now+9}), now),
            Some(ErrorCode::BadAudience)
        );
        assert_eq!(
            code(json!({"exp":now+9}), now),
            Some(ErrorCode::BadAudience)
        );
        assert_eq!(
            code(json!({"aud":"KZ","exp":now+9}), now),
            Some(ErrorCode::BadAudience)
        );
    }

    #[test]
    fn lifetime() {
        let now = 1_000_000;
        let r = Rules {
            max_lifetime: Some(3600),
            ..rules()
        };
        let c = |v: Value| check(&obj(v), &r, now).err().map(|e| e.code);
        assert_eq!(c(json!({"aud":"kz","iat":now,"exp":now+3600})), None);
        assert_eq!(
            c(json!({"aud":"kz","iat":now,"exp":now+3601})),
            Some(ErrorCode::LifetimeTooLong)
        );
        assert_eq!(
            c(json!({"aud":"kz","exp":now+10})),
            Some(ErrorCode::LifetimeTooLong)
        );
    }
}
