//! A real third-party issuer: OpenBao's identity tokens, verified through OIDC discovery.
//! Needs `bao` on PATH (scripts/test installs it into ~/.cache/keyzero-venv).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "../../kz-providers/tests/support/openbao.rs"]
mod openbao;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kz_identity::{ErrorCode, IssuerConfig, Profile, Verifier};
use openbao::Bao;
use serde_json::json;

/// Sets up an OIDC key and role, a userpass user with an entity, and returns
/// (issuer URL, audience, a function-free login token).
async fn setup(bao: &Bao) -> (String, String, String) {
    bao.api(
        "POST",
        "identity/oidc/config",
        Some(json!({"issuer": bao.addr})),
    )
    .await;
    bao.api(
        "POST",
        "identity/oidc/key/kz",
        Some(json!({"allowed_client_ids": "*", "algorithm": "ES256", "rotation_period": "24h"})),
    )
    .await;
    bao.api(
        "POST",
        "identity/oidc/role/kz",
        Some(json!({
            "key": "kz", "ttl": "1h",
            "template": r#"{"groups": ["eng", "ops"], "team": {"name": "platform"} }"#
        })),
    )
    .await;
    let role = bao.api("GET", "identity/oidc/role/kz", None).await;
    let audience = role["data"]["client_id"].as_str().unwrap().to_string();
    bao.api(
        "POST",
        "sys/auth/userpass",
        Some(json!({"type": "userpass"})),
    )
    .await;
    bao.api(
        "PUT",
        "sys/policies/acl/oidc",
        Some(json!({"policy": "path \"identity/oidc/token/kz\" { capabilities = [\"read\"] }"})),
    )
    .await;
    bao.api(
        "POST",
        "auth/userpass/users/alice",
        Some(json!({"password": "pw", "policies": "oidc"})),
    )
    .await;
    let login = bao
        .api(
            "POST",
            "auth/userpass/login/alice",
            Some(json!({"password": "pw"})),
        )
        .await;
    let user_token = login["auth"]["client_token"].as_str().unwrap().to_string();
    (
        format!("{}/v1/identity/oidc", bao.addr),
        audience,
        user_token,
    )
}

async fn mint(bao: &Bao, user_token: &str) -> String {
    let (status, json) = bao
        .api_as(user_token, None, "GET", "identity/oidc/token/kz", None)
        .await;
    assert_eq!(status, 200, "{json}");
    json["data"]["token"].as_str().unwrap().to_string()
}

#[test]
fn openbao_identity_tokens_verify_through_discovery() {
    let bao = Bao::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (issuer_url, audience, user) = setup(&bao).await;
        let mut cfg = IssuerConfig::new("bao", Profile::Custom, issuer_url.clone());
        cfg.audience = Some(audience.clone());
        cfg.map = BTreeMap::from([
            ("groups".to_string(), "groups".to_string()),
            ("org".to_string(), "claims.team.name".to_string()),
        ]);
        let v = Verifier::new(vec![cfg]).unwrap();
        let token = mint(&bao, &user).await;
        let id = v
            .verify(&token, SystemTime::now())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", bao.log_text()));
        assert_eq!(id.issuer, "bao");
        assert!(!id.sub.is_empty());
        assert_eq!(id.groups, vec!["eng", "ops"]);
        assert_eq!(id.org, "platform");
        assert_eq!(id.claims["iss"], issuer_url.as_str());

        // A token for another audience is refused.
        let mut other = IssuerConfig::new("bao", Profile::Custom, issuer_url.clone());
        other.audience = Some("not-keyzero".into());
        let v2 = Verifier::new(vec![other]).unwrap();
        assert_eq!(
            v2.verify(&token, SystemTime::now()).await.unwrap_err().code,
            ErrorCode::BadAudience
        );

        // Key rotation: a token signed with the new key (new kid) is accepted once the
        // refetch window has passed.
        bao.api("POST", "identity/oidc/key/kz/rotate", Some(json!({})))
            .await;
        let rotated = mint(&bao, &user).await;
        let later = SystemTime::now() + Duration::from_secs(31);
        v.verify(&rotated, later)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
}
