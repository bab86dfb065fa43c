//! Token verification end to end: static keys, attacks (quality.md "Identity attacks"), claims.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kz_identity::{
    ErrorCode, IdentityError, IssuerConfig, KeyMaterial, KeySource, Profile, StaticKey, Verifier,
};
use kz_secret::SecretValue;
use serde_json::{Value, json};
use support::*;

const ISS: &str = "https://issuer.example";
/// An HMAC secret that must never appear in any message.
const CANARY: &str = "kz-canary-hmac-secret-7f3a9c1e5b2d4f60a8e1c3b5d7f9";

fn pem_key(k: &TestKey, kid: Option<&str>) -> StaticKey {
    StaticKey {
        kid: kid.map(str::to_string),
        alg: None,
        pem_or_secret: KeyMaterial::Pem(k.public_pem.clone()),
    }
}

fn issuer(keys: Vec<StaticKey>) -> IssuerConfig {
    let mut c = IssuerConfig::new("test", Profile::Custom, ISS);
    c.audience = Some("keyzero".into());
    c.keys = KeySource::Static(keys);
    c
}

fn verifier(keys: Vec<StaticKey>) -> Verifier {
    Verifier::new(vec![issuer(keys)]).unwrap()
}

fn claims() -> Value {
    let now = unix_now();
    json!({"iss": ISS, "aud": "keyzero", "sub": "workload", "iat": now, "exp": now + 600})
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

async fn code(v: &Verifier, token: &str) -> ErrorCode {
    let e = v
        .verify(token, std::time::SystemTime::now())
        .await
        .expect_err("token must be refused");
    assert_no_leak(&e, token);
    e.code
}

/// The error never carries the token, its signature or the canary secret.
fn assert_no_leak(e: &IdentityError, token: &str) {
    for text in [e.to_string(), format!("{e:?}")] {
        assert!(!text.contains(CANARY), "canary in {text}");
        if token.len() > 20 {
            assert!(!text.contains(token), "token in {text}");
            if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() > 8) {
                assert!(!text.contains(sig), "signature in {text}");
            }
        }
    }
}

fn hmac_key(secret: &str, alg: &str) -> StaticKey {
    StaticKey {
        kid: Some("hs".into()),
        alg: Some(alg.into()),
        pem_or_secret: KeyMaterial::Secret(SecretValue::from_str_copy(secret)),
    }
}

#[tokio::test]
async fn every_algorithm_verifies_with_a_static_key() {
    for k in [rsa(), es256(), es384(), ed25519()] {
        let v = verifier(vec![pem_key(k, Some("k1"))]);
        let t = k.sign(Some("k1"), &claims());
        let id = v.verify(&t, std::time::SystemTime::now()).await.unwrap();
        assert_eq!(id.issuer, "test");
        assert_eq!(id.sub, "workload");
        assert_eq!(id.claims["aud"], "keyzero");
    }
    // PS256 with the RSA key.
    let v = verifier(vec![pem_key(rsa(), None)]);
    for alg in ["PS256", "PS384", "PS512", "RS384", "RS512"] {
        let t = kz_identity::sign(&rsa().private_pem, Some(alg), None, &claims()).unwrap();
        v.verify(&t, std::time::SystemTime::now())
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
    }
    // HS256/384/512 with a shared secret.
    for (alg, len) in [("HS256", 32), ("HS384", 48), ("HS512", 64)] {
        let secret: String = CANARY.chars().cycle().take(len).collect();
        let v = verifier(vec![hmac_key(&secret, alg)]);
        let t = kz_identity::sign(&secret, Some(alg), Some("hs"), &claims()).unwrap();
        v.verify(&t, std::time::SystemTime::now()).await.unwrap();
    }
}

#[tokio::test]
async fn alg_none_is_refused_in_every_spelling() {
    let v = verifier(vec![pem_key(rsa(), None)]);
    for alg in ["none", "None", "NONE", "nOnE"] {
        for sig in [&b""[..], b"x"] {
            let mut t = raw_token(&json!({"alg": alg, "typ": "JWT"}), &claims(), sig);
            if sig.is_empty() {
                t = t.trim_end_matches('.').to_string() + ".";
            }
            let c = code(&v, &t).await;
            assert!(
                c == ErrorCode::AlgNone || c == ErrorCode::Malformed,
                "{alg}: {c:?}"
            );
        }
    }
    // Two-part form.
    let t = format!(
        "{}.{}",
        b64(br#"{"alg":"none"}"#),
        b64(claims().to_string().as_bytes())
    );
    assert_eq!(code(&v, &t).await, ErrorCode::Malformed);
}

#[tokio::test]
async fn rs256_resigned_as_hs256_with_the_public_key_is_refused() {
    let k = rsa();
    let jwk = k.jwk("k1").to_string();
    let forms: Vec<Vec<u8>> = vec![
        k.public_pem.clone().into_bytes(),
        format!("\n  \t{}", k.public_pem).into_bytes(),
        k.public_pem.trim_end().to_string().into_bytes(),
        k.public_der.clone(),
        jwk.clone().into_bytes(),
    ];
    // Static RSA key; the same key via a JWKS; and an issuer that also has an HMAC secret.
    let server = Server::start().await;
    server.set_jwks(vec![k.jwk("k1")]);
    let mut jwks_issuer = IssuerConfig::new("jwks", Profile::Custom, ISS);
    jwks_issuer.audience = Some("keyzero".into());
    jwks_issuer.keys = KeySource::JwksUrl(format!("{}/jwks", server.url));
    let verifiers = [
        verifier(vec![pem_key(k, Some("k1"))]),
        Verifier::new(vec![jwks_issuer]).unwrap(),
        verifier(vec![pem_key(k, Some("k1")), hmac_key(CANARY, "HS256")]),
    ];
    for (i, v) in verifiers.iter().enumerate() {
        for form in &forms {
            for kid in [Some("k1"), None, Some("hs")] {
                let mut h = json!({"alg": "HS256", "typ": "JWT"});
                if let Some(kid) = kid {
                    h["kid"] = json!(kid);
                }
                let t = hs256_token(&h, &claims(), form);
                let c = code(v, &t).await;
                let want = if i == 2 {
                    ErrorCode::BadSignature
                } else {
                    ErrorCode::UnsupportedAlg
                };
                // With an HMAC secret configured, the RSA key's kid names a key of another
                // type: no key.
                assert!(
                    c == want || (i == 2 && c == ErrorCode::NoKey),
                    "verifier {i}, kid {kid:?}: {c:?}"
                );
            }
        }
    }
    // Configuration never lets public key material act as an HMAC secret.
    for form in &forms {
        let s = StaticKey {
            kid: None,
            alg: Some("HS256".into()),
            pem_or_secret: KeyMaterial::Secret(SecretValue::from_bytes(form.clone())),
        };
        let e = Verifier::new(vec![issuer(vec![s])]).unwrap_err();
        assert_eq!(e.code, "identity::bad_key", "{e}");
    }
    let s = StaticKey {
        kid: None,
        alg: Some("HS256".into()),
        pem_or_secret: KeyMaterial::Pem(k.public_pem.clone()),
    };
    assert!(Verifier::new(vec![issuer(vec![s])]).is_err());
    assert_eq!(server.other_hits(), 0);
}

#[tokio::test]
async fn wrong_or_missing_kid() {
    let v = verifier(vec![
        pem_key(es256(), Some("a")),
        pem_key(es256b(), Some("b")),
    ]);
    let now = std::time::SystemTime::now();
    // Right kid.
    v.verify(&es256().sign(Some("a"), &claims()), now)
        .await
        .unwrap();
    v.verify(&es256b().sign(Some("b"), &claims()), now)
        .await
        .unwrap();
    // Unknown kid.
    assert_eq!(
        code(&v, &es256().sign(Some("zzz"), &claims())).await,
        ErrorCode::UnknownKid
    );
    // Wrong kid: key a's token claiming kid b.
    assert_eq!(
        code(&v, &es256().sign(Some("b"), &claims())).await,
        ErrorCode::BadSignature
    );
    // No kid: every fitting key is tried.
    v.verify(&es256b().sign(None, &claims()), now)
        .await
        .unwrap();
    // No kid and no fitting key.
    assert_eq!(
        code(&v, &rsa().sign(None, &claims())).await,
        ErrorCode::NoKey
    );
    // Path-like kids are plain strings.
    for kid in [
        "../../etc/passwd",
        "/dev/null",
        "file:///etc/passwd",
        "a\u{0}b",
        "http://127.0.0.1:1/x",
    ] {
        assert_eq!(
            code(&v, &es256().sign(Some(kid), &claims())).await,
            ErrorCode::UnknownKid
        );
    }
}

#[tokio::test]
async fn injected_key_headers_are_ignored() {
    let jku = Server::start().await;
    let attacker = es256b();
    jku.set_jwks(vec![attacker.jwk("evil")]);
    let v = verifier(vec![pem_key(es256(), Some("good"))]);
    let c = claims();
    for extra in [
        json!({"jwk": attacker.jwk("evil")}),
        json!({"jku": format!("{}/jwks", jku.url)}),
        json!({"x5u": format!("{}/cert.pem", jku.url)}),
        json!({"x5c": [b64(&attacker.public_der)]}),
        json!({"jku": format!("{}/jwks", jku.url), "kid": "good"}),
        json!({"jwk": attacker.jwk("good"), "kid": "good"}),
    ] {
        let mut h = json!({"alg": "ES256", "typ": "JWT"});
        for (k, val) in extra.as_object().unwrap() {
            h[k] = val.clone();
        }
        // Signed by the attacker's key, which the header points at.
        let input = format!(
            "{}.{}",
            b64(h.to_string().as_bytes()),
            b64(c.to_string().as_bytes())
        );
        let signed = attacker.sign(None, &c);
        let sig = signed.rsplit('.').next().unwrap();
        let t = format!("{input}.{sig}");
        let got = code(&v, &t).await;
        assert!(
            matches!(got, ErrorCode::BadSignature | ErrorCode::UnknownKid),
            "{extra}: {got:?}"
        );
    }
    assert_eq!(
        jku.total_hits(),
        0,
        "the jku/x5u server must never be contacted"
    );
}

#[tokio::test]
async fn time_issuer_and_audience_claims() {
    let k = es256();
    let v = verifier(vec![pem_key(k, None)]);
    let now = unix_now();
    for (patch, want) in [
        (json!({"exp": now - 120}), ErrorCode::Expired),
        (json!({"nbf": now + 600}), ErrorCode::NotYetValid),
        (
            json!({"iat": now + 86_400 * 365}),
            ErrorCode::IssuedInFuture,
        ),
        (
            json!({"iss": "https://evil.example"}),
            ErrorCode::UnknownIssuer,
        ),
        (
            json!({"iss": "https://issuer.example/"}),
            ErrorCode::UnknownIssuer,
        ),
        (json!({"iss": null}), ErrorCode::UnknownIssuer),
        (json!({"iss": 5}), ErrorCode::BadClaimType),
        (json!({"aud": "other"}), ErrorCode::BadAudience),
        (json!({"aud": ["other", "another"]}), ErrorCode::BadAudience),
        (json!({"aud": null}), ErrorCode::BadAudience),
        (json!({"aud": 5}), ErrorCode::BadClaimType),
        (json!({"exp": "9999999999"}), ErrorCode::BadClaimType),
        (json!({"nbf": "0"}), ErrorCode::BadClaimType),
        (json!({"iat": "0"}), ErrorCode::BadClaimType),
        (json!({"exp": null}), ErrorCode::MissingExp),
    ] {
        let t = k.sign(None, &with(claims(), patch.clone()));
        // `sign` fills a missing exp: craft that one by hand.
        let t = if patch.get("exp") == Some(&Value::Null) {
            let c = with(claims(), json!({"exp": null}));
            sign_raw_es256(k, &c)
        } else {
            t
        };
        assert_eq!(code(&v, &t).await, want, "{patch}");
    }
    // Leeway: 30 s past exp still passes with the default 60 s.
    let t = k.sign(None, &with(claims(), json!({"exp": now - 30})));
    v.verify(&t, std::time::SystemTime::now()).await.unwrap();
    // max_token_lifetime.
    let mut cfg = issuer(vec![pem_key(k, None)]);
    cfg.max_token_lifetime = Some(Duration::from_secs(300));
    let v = Verifier::new(vec![cfg]).unwrap();
    assert_eq!(
        code(&v, &k.sign(None, &claims())).await,
        ErrorCode::LifetimeTooLong
    );
}

/// ES256-signs exactly these claims (no iat/exp filled in).
fn sign_raw_es256(k: &TestKey, c: &Value) -> String {
    let h = json!({"alg": "ES256"});
    let input = format!(
        "{}.{}",
        b64(h.to_string().as_bytes()),
        b64(c.to_string().as_bytes())
    );
    let ek = jsonwebtoken::EncodingKey::from_ec_pem(k.private_pem.as_bytes()).unwrap();
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &ek, jsonwebtoken::Algorithm::ES256).unwrap();
    format!("{input}.{sig}")
}

#[tokio::test]
async fn unknown_issuer_with_one_issuer_configured() {
    let v = verifier(vec![pem_key(es256(), None)]);
    // Signed by the configured key, but for another issuer: still refused.
    let t = es256().sign(
        None,
        &with(claims(), json!({"iss": "https://other.example"})),
    );
    assert_eq!(code(&v, &t).await, ErrorCode::UnknownIssuer);
}

#[tokio::test]
async fn tampered_truncated_and_oversized_tokens() {
    let k = rsa();
    let v = verifier(vec![pem_key(k, None)]);
    let good = k.sign(None, &claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    // Tampered payload with the original signature.
    let evil = b64(with(claims(), json!({"sub": "admin"}))
        .to_string()
        .as_bytes());
    parts[1] = &evil;
    assert_eq!(code(&v, &parts.join(".")).await, ErrorCode::BadSignature);
    // Tampered header (kid added) with the original signature.
    let h = b64(br#"{"alg":"RS256","kid":"x"}"#);
    let t = format!("{h}.{}", good.split_once('.').unwrap().1);
    assert!(matches!(code(&v, &t).await, ErrorCode::BadSignature));
    // Flipped signature bit.
    let mut sig = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        good.rsplit('.').next().unwrap(),
    )
    .unwrap();
    sig[10] ^= 1;
    let t = format!("{}.{}", good.rsplit_once('.').unwrap().0, b64(&sig));
    assert_eq!(code(&v, &t).await, ErrorCode::BadSignature);
    // Every truncation is refused.
    for cut in (0..good.len()).step_by(7) {
        let t = &good[..cut];
        let e = v.verify(t, std::time::SystemTime::now()).await.unwrap_err();
        assert!(
            matches!(e.code, ErrorCode::Malformed | ErrorCode::BadSignature),
            "cut {cut}: {e}"
        );
    }
    // Extra data after the signature.
    assert_eq!(code(&v, &format!("{good}.")).await, ErrorCode::Malformed);
    // Oversized: refused before parsing, even when otherwise valid.
    let big = k.sign(None, &with(claims(), json!({"pad": "x".repeat(17_000)})));
    assert_eq!(code(&v, &big).await, ErrorCode::TooLarge);
    let garbage = "A".repeat(kz_identity::MAX_TOKEN_BYTES + 1);
    assert_eq!(code(&v, &garbage).await, ErrorCode::TooLarge);
    // Duplicate claims are malformed, not "last wins".
    let dup = r#"{"iss":"https://issuer.example","sub":"a","sub":"admin","aud":"keyzero","exp":9999999999}"#;
    let t = format!(
        "{}.{}.AAAA",
        b64(br#"{"alg":"RS256"}"#),
        b64(dup.as_bytes())
    );
    assert_eq!(code(&v, &t).await, ErrorCode::Malformed);
}

#[tokio::test]
async fn es256_zero_signature_is_refused() {
    let v = verifier(vec![pem_key(es256(), None)]);
    let h = json!({"alg": "ES256"});
    for sig in [vec![0u8; 64], vec![0u8; 1], vec![0u8; 65], {
        // r = s = n (the group order) is as invalid as zero.
        let n = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        [n.clone(), n].concat()
    }] {
        let t = raw_token(&h, &claims(), &sig);
        assert_eq!(code(&v, &t).await, ErrorCode::BadSignature);
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn legacy_kubernetes_tokens_are_refused() {
    let k = rsa();
    let mut cfg = IssuerConfig::new("k8s", Profile::Kubernetes, "https://kubernetes.default.svc");
    cfg.audience = Some("keyzero".into());
    cfg.keys = KeySource::Static(vec![pem_key(k, None)]);
    let v = Verifier::new(vec![cfg]).unwrap();
    // A legacy secret-based token: no exp, no aud, flat claims.
    let legacy = json!({
        "iss": "https://kubernetes.default.svc",
        "kubernetes.io/serviceaccount/namespace": "prod",
        "kubernetes.io/serviceaccount/secret.name": "api-token-x7x2p",
        "kubernetes.io/serviceaccount/service-account.name": "api",
        "sub": "system:serviceaccount:prod:api",
    });
    let h = json!({"alg": "RS256"});
    let input = format!(
        "{}.{}",
        b64(h.to_string().as_bytes()),
        b64(legacy.to_string().as_bytes())
    );
    let ek = jsonwebtoken::EncodingKey::from_rsa_pem(k.private_pem.as_bytes()).unwrap();
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &ek, jsonwebtoken::Algorithm::RS256).unwrap();
    let t = format!("{input}.{sig}");
    let e = v
        .verify(&t, std::time::SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::MissingExp);
    assert!(e.message.contains("legacy Kubernetes"), "{e}");
    // The legacy issuer string itself is not a configurable issuer URL.
    let t2 = kz_identity::sign(
        &k.private_pem,
        None,
        None,
        &with(legacy, json!({"iss": "kubernetes/serviceaccount"})),
    )
    .unwrap();
    assert_eq!(code(&v, &t2).await, ErrorCode::UnknownIssuer);
}

#[tokio::test]
async fn single_use_issuers_refuse_replays_and_are_never_cached() {
    let k = es256();
    let mut cfg = issuer(vec![pem_key(k, None)]);
    cfg.single_use = true;
    let v = Verifier::new(vec![cfg]).unwrap();
    let t = k.sign(None, &with(claims(), json!({"jti": "one"})));
    v.verify(&t, std::time::SystemTime::now()).await.unwrap();
    assert_eq!(v.cached_tokens(), 0);
    assert_eq!(code(&v, &t).await, ErrorCode::Replayed);
    // Another token with the same jti is a replay too.
    let t2 = k.sign(None, &with(claims(), json!({"jti": "one", "sub": "x"})));
    assert_eq!(code(&v, &t2).await, ErrorCode::Replayed);
    let t3 = k.sign(None, &claims());
    assert_eq!(code(&v, &t3).await, ErrorCode::MissingJti);
}

#[tokio::test]
async fn single_use_records_outlive_a_rebuilt_verifier_when_shared() {
    let k = es256();
    let cfg = || {
        let mut cfg = issuer(vec![pem_key(k, None)]);
        cfg.single_use = true;
        cfg
    };
    let records = kz_identity::ReplayRecords::default();
    let before = Verifier::build_sharing(vec![cfg()], &records).unwrap();
    let t = k.sign(None, &with(claims(), json!({"jti": "reload-1"})));
    before
        .verify(&t, std::time::SystemTime::now())
        .await
        .unwrap();
    // A server reloading its bundle builds a new verifier with the same records.
    let after = Verifier::build_sharing(vec![cfg()], &records).unwrap();
    assert_eq!(code(&after, &t).await, ErrorCode::Replayed);
    // Without sharing, a new verifier starts empty (what a reload must not do).
    let fresh = Verifier::new(vec![cfg()]).unwrap();
    fresh
        .verify(&t, std::time::SystemTime::now())
        .await
        .unwrap();
}

#[tokio::test]
async fn verified_tokens_are_cached_until_exp() {
    let k = es256();
    let v = verifier(vec![pem_key(k, None)]);
    let now = unix_now();
    let t = k.sign(None, &with(claims(), json!({"exp": now + 100})));
    let a = v.verify_shared(&t, at(now)).await.unwrap();
    assert_eq!(v.cached_tokens(), 1);
    let b = v.verify_shared(&t, at(now + 50)).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "second verification must come from the cache"
    );
    // At exp the cache no longer serves it; the leeway still lets the full check pass.
    let c = v.verify_shared(&t, at(now + 100)).await.unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
    // Past exp + leeway: refused, cache or not.
    assert_eq!(
        v.verify(&t, at(now + 200)).await.unwrap_err().code,
        ErrorCode::Expired
    );
}

#[tokio::test]
async fn config_errors_name_issuer_and_field() {
    let mut a = issuer(vec![pem_key(es256(), None)]);
    a.audience = None;
    let mut b = IssuerConfig::new("b", Profile::Custom, "http://example.com");
    b.audience = Some("x".into());
    let mut c = IssuerConfig::new("c", Profile::Custom, "https://c.example");
    c.audience = Some("x".into());
    c.map = BTreeMap::from([("nope".to_string(), "x".to_string())]);
    c.keys = KeySource::Static(vec![StaticKey {
        kid: None,
        alg: Some("HS256".into()),
        pem_or_secret: KeyMaterial::Secret(SecretValue::from_str_copy("short-canary-secret")),
    }]);
    let errs = Verifier::build(vec![a, b, c]).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let joined = text.join("\n");
    assert!(joined.contains("identity") || !errs.is_empty());
    assert!(
        errs.iter()
            .any(|e| e.issuer == "test" && e.field == "audience"),
        "{joined}"
    );
    assert!(
        errs.iter()
            .any(|e| e.issuer == "b" && e.field == "issuer_url"),
        "{joined}"
    );
    assert!(
        errs.iter()
            .any(|e| e.issuer == "c" && e.field == "map.nope"),
        "{joined}"
    );
    assert!(
        errs.iter()
            .any(|e| e.issuer == "c" && e.field == "static_keys[0]"),
        "{joined}"
    );
    assert!(!joined.contains("short-canary-secret"));
    // Duplicate names and issuer URLs.
    let errs = Verifier::build(vec![
        issuer(vec![pem_key(es256(), None)]),
        issuer(vec![pem_key(es256(), None)]),
    ])
    .unwrap_err();
    assert_eq!(errs[0].code, "identity::duplicate_issuer");
    let mut other = issuer(vec![pem_key(es256(), None)]);
    other.name = "other".into();
    let errs = Verifier::build(vec![issuer(vec![pem_key(es256(), None)]), other]).unwrap_err();
    assert_eq!(errs[0].code, "identity::duplicate_issuer_url");
    // A private key is refused as a static key.
    let s = StaticKey {
        kid: None,
        alg: None,
        pem_or_secret: KeyMaterial::Pem(es256().private_pem.clone()),
    };
    let e = Verifier::new(vec![issuer(vec![s])]).unwrap_err();
    assert!(e.message.contains("private key"), "{e}");
    // alg that does not fit the key.
    let s = StaticKey {
        kid: None,
        alg: Some("RS256".into()),
        pem_or_secret: KeyMaterial::Pem(es256().public_pem.clone()),
    };
    assert!(Verifier::new(vec![issuer(vec![s])]).is_err());
}

#[tokio::test]
async fn a_static_alg_restricts_the_key() {
    // An RSA key pinned to PS256 refuses RS256 tokens.
    let s = StaticKey {
        kid: None,
        alg: Some("PS256".into()),
        pem_or_secret: KeyMaterial::Pem(rsa().public_pem.clone()),
    };
    let v = verifier(vec![s]);
    assert_eq!(
        code(&v, &rsa().sign(None, &claims())).await,
        ErrorCode::NoKey
    );
    let t = kz_identity::sign(&rsa().private_pem, Some("PS256"), None, &claims()).unwrap();
    v.verify(&t, std::time::SystemTime::now()).await.unwrap();
}

#[tokio::test]
async fn canary_secret_never_in_errors() {
    let secret = format!("{CANARY}{CANARY}");
    let v = verifier(vec![hmac_key(&secret, "HS256")]);
    let good = kz_identity::sign(&secret, Some("HS256"), Some("hs"), &claims()).unwrap();
    v.verify(&good, std::time::SystemTime::now()).await.unwrap();
    let now = unix_now();
    let cases = [
        with(claims(), json!({"exp": now - 999})),
        with(claims(), json!({"aud": CANARY})),
        with(claims(), json!({"iss": CANARY})),
        with(claims(), json!({"exp": CANARY})),
    ];
    for c in cases {
        let t = kz_identity::sign(&secret, Some("HS256"), Some(CANARY), &c).unwrap();
        let e = v
            .verify(&t, std::time::SystemTime::now())
            .await
            .unwrap_err();
        // The canary may only appear where the token itself put it (aud/iss/kid); the
        // configured secret (canary twice) never.
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains(&t));
    }
    let wrong = kz_identity::sign(
        "x".repeat(40).as_str(),
        Some("HS256"),
        Some("hs"),
        &claims(),
    )
    .unwrap();
    let e = v
        .verify(&wrong, std::time::SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadSignature);
    assert!(!format!("{e} {e:?}").contains(CANARY));
    // Debug of the configuration is redacted too.
    let dbg = format!("{:?}", hmac_key(&secret, "HS256"));
    assert!(!dbg.contains(CANARY), "{dbg}");
}

#[test]
fn the_verifier_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let v = verifier(vec![pem_key(es256(), None)]);
    send_sync(&v);
    send(v.verify("x", std::time::SystemTime::now()));
    send(v.verify_shared("x", std::time::SystemTime::now()));
}

#[tokio::test]
async fn only_the_named_issuers_keys_verify() {
    // Two issuers, each with its own key: a token naming A signed with B's key is refused.
    let a = issuer(vec![pem_key(es256(), None)]);
    let mut b = IssuerConfig::new("b", Profile::Custom, "https://b.example");
    b.audience = Some("keyzero".into());
    b.keys = KeySource::Static(vec![pem_key(es256b(), None)]);
    let v = Verifier::new(vec![a, b]).unwrap();
    let now = std::time::SystemTime::now();
    let for_a_by_b = es256b().sign(None, &claims());
    assert_eq!(code(&v, &for_a_by_b).await, ErrorCode::BadSignature);
    let for_b = es256b().sign(None, &with(claims(), json!({"iss": "https://b.example"})));
    assert_eq!(v.verify(&for_b, now).await.unwrap().issuer, "b");
    assert_eq!(
        v.verify(&es256().sign(None, &claims()), now)
            .await
            .unwrap()
            .issuer,
        "test"
    );
}

const RSA_1024_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCkadBIHlZ/4CmKCESRfKcT1+f3\n4WU1xGidJ4ZdOlEwHO5uDculLipPysKewiYECZz70eloX1k7kNOjCgJv33fvg6ML\nfQl1YcDMKOTJPvxF82Nhm+6nQb/WLLocPx8an4EODWfXtzl4ZEFo1FXJXeYEmgw6\nND7zLtK/deiDYq87kwIDAQAB\n-----END PUBLIC KEY-----\n";

#[test]
fn short_rsa_keys_are_refused_at_load() {
    let s = StaticKey {
        kid: None,
        alg: None,
        pem_or_secret: KeyMaterial::Pem(RSA_1024_PUBLIC.into()),
    };
    let e = Verifier::new(vec![issuer(vec![s])]).unwrap_err();
    assert!(e.message.contains("1024-bit"), "{e}");
    assert_eq!(e.field, "static_keys[0]");
}

#[tokio::test]
async fn sign_infers_the_algorithm_and_fills_times() {
    for (k, want) in [
        (rsa(), "RS256"),
        (es256(), "ES256"),
        (es384(), "ES384"),
        (ed25519(), "EdDSA"),
    ] {
        let c = json!({"iss": ISS, "aud": "keyzero", "sub": "s"});
        let t = kz_identity::sign(&k.private_pem, None, Some("kid-1"), &c).unwrap();
        let header: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                t.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], want);
        assert_eq!(header["kid"], "kid-1");
        let v = verifier(vec![pem_key(k, Some("kid-1"))]);
        let id = v.verify(&t, std::time::SystemTime::now()).await.unwrap();
        let exp = id.claims["exp"].as_i64().unwrap();
        let iat = id.claims["iat"].as_i64().unwrap();
        assert_eq!(exp - iat, 3600);
    }
    // Errors never echo the key.
    let e = kz_identity::sign(CANARY, None, None, &json!({})).unwrap_err();
    assert!(!e.to_string().contains(CANARY));
    assert_eq!(e.code(), "sign_failed");
    assert!(kz_identity::sign(&es256().private_pem, Some("RS256"), None, &json!({})).is_err());
    assert!(kz_identity::sign(&es256().private_pem, None, None, &json!([1])).is_err());
}
