//! JWT parsing and verification: any token text, and any claims object signed with the
//! issuers' shared secret, yields an identity or an error, never a panic; an error never
//! carries the secret.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use kz_identity::{IssuerConfig, KeyMaterial, KeySource, Profile, StaticKey, Verifier};
use kz_secret::SecretValue;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-canary-secret-0123456789abcdef0123456789";
const ES256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEJ+J/9ZF2NaV71HX5h4jq8zQ9Oywy
KoOdJVd7LNWZIM4pUIIgPfaomeVY2kSYH0zkjzl2zCtQuTJj6ny3z55GSA==
-----END PUBLIC KEY-----
";
const PROFILES: [Profile; 6] = [
    Profile::GithubActions,
    Profile::Gitlab,
    Profile::Kubernetes,
    Profile::Spiffe,
    Profile::Gcp,
    Profile::Custom,
];

fn url(p: Profile) -> String {
    format!("https://fuzz.example/{}", p.as_str())
}

fn setup() -> &'static (Verifier, tokio::runtime::Runtime) {
    static V: OnceLock<(Verifier, tokio::runtime::Runtime)> = OnceLock::new();
    V.get_or_init(|| {
        let issuers = PROFILES
            .iter()
            .map(|&p| {
                let mut c = IssuerConfig::new(p.as_str(), p, url(p));
                c.audience = Some("keyzero".into());
                c.single_use = p == Profile::Gcp;
                c.max_token_lifetime = (p == Profile::Gitlab).then(|| Duration::from_secs(3600));
                if p == Profile::Custom {
                    c.map.insert("groups".into(), "claims.teams".into());
                    c.map.insert("org".into(), "a.b.c".into());
                }
                c.keys = KeySource::Static(vec![
                    StaticKey {
                        kid: Some("hs".into()),
                        alg: Some("HS256".into()),
                        pem_or_secret: KeyMaterial::Secret(SecretValue::from_str_copy(SECRET)),
                    },
                    StaticKey {
                        kid: Some("es".into()),
                        alg: None,
                        pem_or_secret: KeyMaterial::Pem(ES256_PUBLIC.into()),
                    },
                ]);
                c
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        (Verifier::new(issuers).unwrap(), rt)
    })
}

fn check(r: Result<kz_policy::Identity, kz_identity::IdentityError>) {
    if let Err(e) = r {
        assert!(!e.to_string().contains(SECRET));
    }
}

fuzz_target!(|data: &[u8]| {
    let (v, rt) = setup();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    // As a token.
    if let Ok(token) = std::str::from_utf8(data) {
        check(rt.block_on(v.verify(token, now)));
    }
    // As claims, validly signed for every issuer.
    if let Ok(serde_json::Value::Object(mut claims)) = serde_json::from_slice(data) {
        for p in PROFILES {
            claims.insert("iss".into(), url(p).into());
            let value = serde_json::Value::Object(claims.clone());
            if let Ok(t) = kz_identity::sign(SECRET, Some("HS256"), Some("hs"), &value) {
                check(rt.block_on(v.verify(&t, now)));
            }
        }
    }
});
