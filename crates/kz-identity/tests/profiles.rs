//! Realistic claim sets through each profile, signed and verified end to end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;

use kz_identity::{IssuerConfig, KeyMaterial, KeySource, Profile, StaticKey, Verifier, normalise};
use kz_policy::Identity;
use serde_json::{Map, Value, json};
use support::*;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

async fn through(
    profile: Profile,
    iss: &str,
    aud: &str,
    map: BTreeMap<String, String>,
    claims: Value,
) -> Identity {
    let mut cfg = IssuerConfig::new("iss", profile, iss);
    cfg.audience = Some(aud.into());
    cfg.map = map.clone();
    cfg.keys = KeySource::Static(vec![StaticKey {
        kid: None,
        alg: None,
        pem_or_secret: KeyMaterial::Pem(rsa().public_pem.clone()),
    }]);
    let v = Verifier::new(vec![cfg]).unwrap();
    let t = rsa().sign(Some("1F2AB83404C08EC9EA0BB99DAED02186B091DBF4"), &claims);
    let id = v.verify(&t, std::time::SystemTime::now()).await.unwrap();
    assert_eq!(id.issuer, "iss");
    // normalise on the same claims gives the same fields (issuer aside).
    let mut plain = normalise(profile, &map, &id.claims).unwrap();
    plain.issuer = id.issuer.clone();
    assert_eq!(plain, id);
    id
}

fn github(sub: &str, git_ref: &str) -> Value {
    let now = unix_now();
    json!({
        "jti": "example-id", "sub": sub, "aud": "keyzero",
        "ref": git_ref, "sha": "example-sha", "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org", "repository_owner_id": "123", "repository_id": "456",
        "actor_id": "12", "actor": "octocat", "workflow": "deploy", "head_ref": "", "base_ref": "",
        "event_name": "push", "ref_type": "branch", "environment": "production",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main",
        "iss": "https://token.actions.githubusercontent.com",
        "nbf": now - 5, "exp": now + 300, "iat": now - 5, "run_id": "42", "run_attempt": "1",
        "runner_environment": "github-hosted", "repository_visibility": "private",
    })
}

#[tokio::test]
async fn github_actions_both_sub_forms() {
    let iss = "https://token.actions.githubusercontent.com";
    for sub in [
        "repo:octo-org/octo-repo:environment:production",
        "repo:octo-org@123/octo-repo@456:environment:production",
        "repo:octo-org/octo-repo:ref:refs/heads/main",
    ] {
        let id = through(
            Profile::GithubActions,
            iss,
            "keyzero",
            BTreeMap::new(),
            github(sub, "refs/heads/main"),
        )
        .await;
        assert_eq!(id.sub, sub);
        assert_eq!(id.org, "octo-org");
        assert_eq!(id.service, "octo-org/octo-repo");
        assert_eq!(id.env, "production");
        assert_eq!(id.action, "deploy");
        assert_eq!(id.branch, "main");
        assert_eq!(id.actor, "octocat");
        assert!(id.groups.is_empty());
        assert_eq!(id.claims["run_id"], "42");
    }
    // Pull requests and tags: no branch.
    for r in ["refs/pull/7/merge", "refs/tags/v1.0", "main", "refs/heads"] {
        let c = github("repo:octo-org/octo-repo:pull_request", r);
        let id = normalise(Profile::GithubActions, &BTreeMap::new(), &obj(c)).unwrap();
        assert_eq!(id.branch, "", "{r}");
    }
    // A branch with slashes keeps them.
    let c = github("repo:o/r:ref:refs/heads/feature/x", "refs/heads/feature/x");
    let id = normalise(Profile::GithubActions, &BTreeMap::new(), &obj(c)).unwrap();
    assert_eq!(id.branch, "feature/x");
}

#[tokio::test]
async fn gitlab() {
    let now = unix_now();
    let iss = "https://gitlab.example.com";
    let claims = json!({
        "namespace_id": "72", "namespace_path": "my-group", "project_id": "20",
        "project_path": "my-group/my-project", "user_id": "1", "user_login": "sample-user",
        "user_email": "sample-user@example.com", "user_identities": [],
        "pipeline_id": "574", "pipeline_source": "push", "job_id": "302", "ref": "feature-branch-1",
        "ref_type": "branch", "ref_path": "refs/heads/feature-branch-1", "ref_protected": "false",
        "environment": "test-environment2", "environment_protected": "false",
        "deployment_tier": "testing", "runner_id": 1, "runner_environment": "self-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "project_visibility": "public", "ci_config_ref_uri": "gitlab.example.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main",
        "jti": "235b3a54-b797-45c7-ae9a-f72d7bc6ef5b", "iss": iss, "iat": now, "nbf": now - 5,
        "exp": now + 3600, "sub": "project_path:my-group/my-project:ref_type:branch:ref:feature-branch-1",
        "aud": "https://vault.example.com",
    });
    let id = through(
        Profile::Gitlab,
        iss,
        "https://vault.example.com",
        BTreeMap::new(),
        claims.clone(),
    )
    .await;
    assert_eq!(id.org, "my-group");
    assert_eq!(id.service, "my-group/my-project");
    assert_eq!(id.env, "test-environment2");
    assert_eq!(id.action, "push");
    assert_eq!(id.branch, "feature-branch-1");
    assert_eq!(id.actor, "sample-user");
    let mut tag = claims;
    tag["ref_type"] = json!("tag");
    tag["ref"] = json!("v1.0");
    let id = normalise(Profile::Gitlab, &BTreeMap::new(), &obj(tag)).unwrap();
    assert_eq!(id.branch, "");
}

#[tokio::test]
async fn kubernetes_projected_token() {
    let now = unix_now();
    let iss = "https://kubernetes.default.svc.cluster.local";
    let claims = json!({
        "aud": ["keyzero"], "exp": now + 3600, "iat": now, "nbf": now, "iss": iss,
        "jti": "8d2b0e9c-…",
        "kubernetes.io": {
            "namespace": "prod",
            "node": {"name": "node-1", "uid": "646e7c5e-32d6-4d42-9dbd-e504e6cbe6b1"},
            "pod": {"name": "api-7c9f", "uid": "5e0bd49b-f040-43b0-99b7-22765a53f7f3"},
            "serviceaccount": {"name": "api", "uid": "14ee3fa4-a7e2-420f-9f9a-dbc4507c3798"},
            "warnafter": now + 3000
        },
        "sub": "system:serviceaccount:prod:api",
    });
    let id = through(Profile::Kubernetes, iss, "keyzero", BTreeMap::new(), claims).await;
    assert_eq!(id.org, "prod");
    assert_eq!(id.service, "api");
    assert_eq!(id.actor, "system:serviceaccount:prod:api");
    assert_eq!(id.env, "");
    assert_eq!(id.claims["kubernetes.io"]["pod"]["name"], "api-7c9f");
}

#[tokio::test]
async fn spiffe_jwt_svid() {
    let now = unix_now();
    let iss = "https://spire.example.org";
    let claims = json!({
        "aud": ["keyzero"], "exp": now + 300, "iat": now, "iss": iss,
        "sub": "spiffe://example.org/ns/prod/sa/api",
    });
    let id = through(
        Profile::Spiffe,
        iss,
        "keyzero",
        BTreeMap::new(),
        claims.clone(),
    )
    .await;
    assert_eq!(id.org, "example.org");
    assert_eq!(id.service, "/ns/prod/sa/api");
    assert_eq!(id.actor, "spiffe://example.org/ns/prod/sa/api");
    // A sub that is not a SPIFFE ID is refused, not read as empty fields.
    let mut bad = claims;
    bad["sub"] = json!("spiffe://example.org/../admin");
    let e = normalise(Profile::Spiffe, &BTreeMap::new(), &obj(bad)).unwrap_err();
    assert_eq!(e.code(), "bad_identity_claim");
}

#[tokio::test]
async fn gcp_identity_token() {
    let now = unix_now();
    let iss = "https://accounts.google.com";
    let claims = json!({
        "aud": "keyzero", "azp": "1086…", "email": "api@my-project.iam.gserviceaccount.com",
        "email_verified": true, "exp": now + 3600, "iat": now, "iss": iss, "sub": "1086…",
        "google": {"compute_engine": {
            "instance_creation_timestamp": 1_700_000_000, "instance_id": "4938",
            "instance_name": "vm-1", "project_id": "my-project", "project_number": 1234,
            "zone": "us-central1-a"
        }},
    });
    let id = through(Profile::Gcp, iss, "keyzero", BTreeMap::new(), claims).await;
    assert_eq!(id.org, "my-project");
    assert_eq!(id.service, "api@my-project.iam.gserviceaccount.com");
    assert_eq!(id.actor, "api@my-project.iam.gserviceaccount.com");
}

#[tokio::test]
async fn custom_map_with_dotted_paths() {
    let now = unix_now();
    let iss = "https://idp.example";
    let claims = json!({
        "aud": "keyzero", "exp": now + 60, "iat": now, "iss": iss, "sub": "u1",
        "org.name": "acme", "teams": ["eng", "ops"],
        "ext": {"svc": {"name": "billing"}, "deploy.env": "prod"},
    });
    let map = BTreeMap::from([
        ("org".to_string(), "org.name".to_string()),
        ("groups".to_string(), "claims.teams".to_string()),
        ("service".to_string(), "ext.svc.name".to_string()),
        ("env".to_string(), "ext.deploy.env".to_string()),
        ("actor".to_string(), "sub".to_string()),
    ]);
    let id = through(Profile::Custom, iss, "keyzero", map.clone(), claims.clone()).await;
    assert_eq!(id.org, "acme");
    assert_eq!(id.groups, vec!["eng", "ops"]);
    assert_eq!(id.service, "billing");
    assert_eq!(id.env, "prod");
    assert_eq!(id.actor, "u1");
    // Custom without a map fills only sub and claims.
    let id = normalise(Profile::Custom, &BTreeMap::new(), &obj(claims)).unwrap();
    assert_eq!((id.org.as_str(), id.service.as_str()), ("", ""));
    // map overrides a profile field.
    let c = github("repo:o/r:ref:refs/heads/main", "refs/heads/main");
    let m = BTreeMap::from([("service".to_string(), "job_workflow_ref".to_string())]);
    let id = normalise(Profile::GithubActions, &m, &obj(c)).unwrap();
    assert!(id.service.starts_with("octo-org/octo-automation/"));
}
