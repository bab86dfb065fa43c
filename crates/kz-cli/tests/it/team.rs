//! Team-mode commands on a bundle: `kz server check`, `kz policy eval`, `kz policy test` and
//! `kz token sign`, with real keys (made by `openssl`) and real tokens (made by `kz token sign`).

use crate::util::{CANARY, Sandbox, es256_key, indent, scrub};

/// A bundle with a GitHub Actions issuer (static ES256 key), a custom HMAC issuer, two
/// backends and three policies.
fn bundle(public_pem: &str) -> String {
    format!(
        r#"version: "1"
issuers:
  - name: gha
    type: github-actions
    issuer_url: https://token.actions.githubusercontent.com
    audience: keyzero
    static_keys:
      - kid: k1
        alg: ES256
        pem: |
{pem}  - name: tests
    type: custom
    issuer_url: https://ci.example
    audience: keyzero
    map: {{ org: team, groups: "claims.groups" }}
    static_keys:
      - {{ kid: h1, alg: HS256, secret_env: KZ_TEST_HMAC }}
backends:
  vault: {{ type: hashicorp_vault, address: "http://127.0.0.1:8200", auth: {{ method: approle, role_id: r, secret_id_env: VAULT_SECRET_ID }} }}
  aws: {{ type: aws_secrets_manager, region: us-east-1 }}
resolvers:
  - {{ name: "prod/**", backend: vault, path: "secret/data/${{ref}}" }}
  - {{ name: api-key, backend: aws, secret_id: prod/api-key, cache_ttl: 60s }}
policies:
  - name: deny-forks
    rule: 'issuer == "gha" && claims.repository_owner != org'
    effect: deny
  - name: ticket
    rule: 'has(context.ticket) && context.ticket.startsWith("INC-") && "oncall" in groups'
    effect: allow
  - name: ci-main
    rule: 'org == "acme" && branch == "main" && ref.glob("prod/**")'
    effect: allow
"#,
        pem = indent(public_pem, 10)
    )
}

/// A sandbox with `bundle.yaml` (a fresh GitHub Actions key) and the HMAC issuer's secret in
/// the environment; also the path of the GitHub key's private half.
fn team_sandbox() -> (Sandbox, String) {
    let mut s = Sandbox::new();
    let (private, public) = es256_key(&s, "gha");
    s.write("bundle.yaml", &bundle(&public));
    s.set("KZ_TEST_HMAC", &"k".repeat(32));
    (s, private)
}

const GHA_CLAIMS: &str = r#"{"iss":"https://token.actions.githubusercontent.com","aud":"keyzero",
"sub":"repo:acme/app:ref:refs/heads/main","repository_owner":"acme","repository":"acme/app",
"ref":"refs/heads/main","workflow":"ci","actor":"octocat"}"#;

#[test]
fn server_check_accepts_a_good_bundle_and_names_per_replica_settings() {
    let (s, _) = team_sandbox();
    let r = s.kz(&["server", "check", "-b", "bundle.yaml"]).ok();
    assert!(
        r.stdout
            .contains("bundle.yaml: valid (2 issuers, 2 backends, 2 resolvers, 3 policies)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("api-key.cache_ttl"), "{}", r.stdout);
    let j = s
        .kz(&["server", "check", "-b", "bundle.yaml", "--format", "json"])
        .ok()
        .stdout_json();
    assert_eq!(j["valid"], true);
    assert_eq!(j["counts"]["policies"], 3);
    assert_eq!(j["per_replica"].as_array().unwrap().len(), 3, "{j}");
}

#[test]
fn server_check_reports_every_problem_with_its_line_and_never_a_credential() {
    let s = Sandbox::new();
    s.write(
        "bundle.yaml",
        &format!(
            r#"version: "1"
issuers:
  - name: ci
    type: custom
    issuer_url: https://ci.example
    audience: keyzero
    static_keys:
      - {{ alg: ES256, pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----" }}
      - {{ alg: HS256, secret: "{CANARY}" }}
backends:
  vault: {{ type: vault, address: "http://127.0.0.1:8200", token: "{CANARY}" }}
resolvers:
  - {{ name: "prod/**", backend: vualt }}
policies:
  - {{ name: p1, rule: 'org == ', effect: allow }}
  - {{ name: p2, rule: 'ref.matches(context.re)', effect: allow }}
"#
        ),
    );
    let r = s
        .kz(&["server", "check", "-b", "bundle.yaml"])
        .code(1)
        .no_canary();
    insta::assert_snapshot!("team_server_check_errors", scrub(&s, &r.stderr));
    let r = s
        .kz(&["server", "check", "-b", "bundle.yaml", "--format", "json"])
        .code(1)
        .no_canary();
    let j = r.stdout_json();
    assert_eq!(j["valid"], false);
    let lines: Vec<u64> = j["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap_or(0))
        .collect();
    for line in [8, 9, 11, 13, 15, 16] {
        assert!(lines.contains(&line), "no error at line {line}: {j}");
    }
}

#[test]
fn the_pem_of_a_static_key_is_checked() {
    let s = Sandbox::new();
    s.write(
        "bundle.yaml",
        r#"version: "1"
issuers:
  - name: ci
    type: custom
    issuer_url: https://ci.example
    audience: keyzero
    static_keys:
      - { alg: ES256, pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----" }
"#,
    );
    let r = s
        .kz(&[
            "server",
            "check",
            "-b",
            "bundle.yaml",
            "--error-format",
            "json",
        ])
        .code(1);
    let errors = r.stderr_json();
    assert!(
        errors
            .iter()
            .any(|e| e["line"] == 8 && e["key"] == "issuers.ci.static_keys[0]"),
        "{errors:?}"
    );
}

#[test]
fn policy_eval_shows_the_decision_the_resolver_and_the_trace() {
    let (s, _) = team_sandbox();
    s.write("ci.json", GHA_CLAIMS);
    let r = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--claims",
            "ci.json",
            "--ref",
            "prod/db",
        ])
        .ok();
    insta::assert_snapshot!("team_policy_eval", r.stdout);
    let j = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--claims",
            "ci.json",
            "--ref",
            "dev/db",
            "--format",
            "json",
        ])
        .ok()
        .stdout_json();
    assert_eq!(j["allowed"], false);
    assert_eq!(j["policy"], "implicit-deny");
    assert_eq!(j["resolver"], "");
    // The guard index skipped `ci-main` (its `ref.glob("prod/**")` is false for dev/db) and
    // `deny-forks` was evaluated.
    let trace = j["trace"].as_array().unwrap();
    assert!(
        trace
            .iter()
            .any(|t| t["policy"] == "ci-main" && t["outcome"] == "skipped_by_guard"),
        "{trace:?}"
    );
    assert!(
        trace
            .iter()
            .any(|t| t["policy"] == "deny-forks" && t["outcome"] == "evaluated"),
        "{trace:?}"
    );
    // A fork: the repository owner differs from the mapped org.
    s.write(
        "fork.json",
        &GHA_CLAIMS.replace(
            r#""repository_owner":"acme""#,
            r#""repository_owner":"evil""#,
        ),
    );
    let j = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--claims",
            "fork.json",
            "--ref",
            "prod/db",
            "--format",
            "json",
        ])
        .ok()
        .stdout_json();
    assert_eq!(j["allowed"], false, "{j}");
    // Context is untrusted: it cannot set `org`.
    let j = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--claims",
            "fork.json",
            "--ref",
            "prod/db",
            "--context",
            r#"{"org":"acme","branch":"main"}"#,
            "--format",
            "json",
        ])
        .ok()
        .stdout_json();
    assert_eq!(j["allowed"], false, "{j}");
}

#[test]
fn policy_eval_verifies_tokens_as_the_server_would() {
    let (mut s, private) = team_sandbox();
    let claims = GHA_CLAIMS.replace('\n', "");
    let token = s
        .kz(&[
            "token",
            "sign",
            "--key",
            &private,
            "--kid",
            "k1",
            "--issuer",
            "https://token.actions.githubusercontent.com",
            "--claims",
            &claims,
        ])
        .ok()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3);
    let j = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--token",
            &token,
            "--ref",
            "prod/db",
            "--format",
            "json",
        ])
        .ok()
        .stdout_json();
    assert_eq!(j["allowed"], true, "{j}");
    assert_eq!(j["identity"]["branch"], "main");

    // Another key with the same kid: the signature does not verify.
    let (other, _) = es256_key(&s, "other");
    let forged = s
        .kz(&[
            "token",
            "sign",
            "--key",
            &other,
            "--kid",
            "k1",
            "--issuer",
            "https://token.actions.githubusercontent.com",
            "--claims",
            &claims,
        ])
        .ok()
        .stdout;
    let r = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--token",
            forged.trim(),
            "--ref",
            "prod/db",
        ])
        .code(1);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    assert!(!r.stderr.contains(forged.trim()), "the token was printed");

    // HS256 through the custom issuer's `secret_env`, mapped with `map`.
    let secret = s.write("hmac.key", &format!("{}\n", "k".repeat(32)));
    let token = s
        .kz(&[
            "token",
            "sign",
            "--key",
            &secret.display().to_string(),
            "--alg",
            "HS256",
            "--kid",
            "h1",
            "--issuer",
            "https://ci.example",
            "--claims",
            r#"{"sub":"job-1","aud":"keyzero","team":"acme","groups":["oncall"]}"#,
        ])
        .ok()
        .stdout;
    let j = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--token",
            token.trim(),
            "--ref",
            "other/x",
            "--context",
            r#"{"ticket":"INC-7"}"#,
            "--format",
            "json",
        ])
        .ok()
        .stdout_json();
    assert_eq!(j["allowed"], true, "{j}");
    assert_eq!(j["policy"], "ticket");
    assert_eq!(j["identity"]["org"], "acme");
    // Without the secret in the environment the issuer cannot verify anything.
    s.env.remove("KZ_TEST_HMAC");
    let r = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--token",
            token.trim(),
            "--ref",
            "other/x",
        ])
        .code(1);
    assert!(r.stderr.contains("KZ_TEST_HMAC"), "{}", r.stderr);
}

#[test]
fn policy_eval_refuses_bad_input_clearly() {
    let (s, _) = team_sandbox();
    s.write("ci.json", GHA_CLAIMS);
    let base = ["policy", "eval", "-b", "bundle.yaml", "--claims", "ci.json"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let r = s.kz(&with(&base, &["--ref", "prod/../x"])).code(2);
    assert!(r.stderr.contains("`..`"), "{}", r.stderr);
    let r = s
        .kz(&with(&base, &["--ref", "a", "--context", "[1]"]))
        .code(2);
    assert!(r.stderr.contains("JSON object"), "{}", r.stderr);
    s.write("bad.json", "[1, 2]");
    let r = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--claims",
            "bad.json",
            "--ref",
            "a",
        ])
        .code(1);
    assert!(r.stderr.contains("not a JSON object"), "{}", r.stderr);
    // Claims whose `iss` matches no issuer, in a bundle of two: which profile is ambiguous.
    s.write("anon.json", r#"{"sub":"x"}"#);
    let r = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--claims",
            "anon.json",
            "--ref",
            "a",
        ])
        .code(2);
    assert!(r.stderr.contains("--issuer"), "{}", r.stderr);
    // A claim of the wrong type is an error, not an absent claim.
    s.write("typed.json", r#"{"sub":"x","repository_owner":5}"#);
    let r = s
        .kz(&[
            "policy",
            "eval",
            "-b",
            "bundle.yaml",
            "--claims",
            "typed.json",
            "--issuer",
            "gha",
            "--ref",
            "a",
        ])
        .code(1);
    assert!(r.stderr.contains("repository_owner"), "{}", r.stderr);
}

#[test]
fn policy_test_runs_a_table_and_fails_with_the_trace() {
    let (s, _) = team_sandbox();
    s.write(
        "tests.yaml",
        r#"tests:
  - name: main may read prod
    issuer: gha
    claims: { sub: "repo:acme/app:ref:refs/heads/main", repository_owner: acme, repository: acme/app, ref: refs/heads/main }
    ref: prod/db
    expect: allow
    policy: ci-main
  - name: a tag may not
    issuer: gha
    claims: { sub: "repo:acme/app:ref:refs/tags/v1", repository_owner: acme, ref: refs/tags/v1 }
    ref: prod/db
    expect: deny
  - name: oncall with a ticket
    identity: { issuer: tests, org: other, groups: [oncall] }
    ref: anything
    context: { ticket: INC-42 }
    expect: allow
    policy: ticket
"#,
    );
    let r = s
        .kz(&["policy", "test", "-b", "bundle.yaml", "tests.yaml"])
        .ok();
    assert!(r.stdout.contains("3 passed, 0 failed"), "{}", r.stdout);
    s.write(
        "failing.yaml",
        r#"tests:
  - name: forks may read prod (wrong on purpose)
    issuer: gha
    claims: { sub: x, repository_owner: evil, ref: refs/heads/main }
    ref: prod/db
    expect: allow
"#,
    );
    let r = s
        .kz(&["policy", "test", "-b", "bundle.yaml", "failing.yaml"])
        .code(1);
    insta::assert_snapshot!("team_policy_test_failure", r.stdout);
    let j = s
        .kz(&[
            "policy",
            "test",
            "-b",
            "bundle.yaml",
            "failing.yaml",
            "--format",
            "json",
        ])
        .code(1)
        .stdout_json();
    assert_eq!(j["failed"], 1);
    assert_eq!(j["tests"][0]["line"], 2);
    // A ref the server would refuse is a mistake in the test file, not a decision.
    s.write(
        "badref.yaml",
        "tests:\n  - name: hash\n    identity: { org: acme }\n    ref: \"prod/admin#token\"\n    expect: deny\n",
    );
    let r = s
        .kz(&["policy", "test", "-b", "bundle.yaml", "badref.yaml"])
        .code(1);
    assert!(
        r.stderr.contains("`#`") && r.stderr.contains(":4:"),
        "{}",
        r.stderr
    );
    // A malformed test file: every problem with its line.
    s.write(
        "broken.yaml",
        "tests:\n  - name: a\n    ref: x\n    expect: maybe\n    identity: {}\n  - name: b\n    expect: deny\n    claims: {}\n    identity: {}\n    colour: red\n",
    );
    let r = s
        .kz(&[
            "policy",
            "test",
            "-b",
            "bundle.yaml",
            "broken.yaml",
            "--error-format",
            "json",
        ])
        .code(1);
    let lines: Vec<u64> = r
        .stderr_json()
        .iter()
        .filter_map(|e| e["line"].as_u64())
        .collect();
    assert!(
        lines.contains(&2) && lines.contains(&6) && lines.contains(&10),
        "{}",
        r.stderr
    );
}

#[test]
fn team_help_texts() {
    let s = Sandbox::new();
    for (name, args) in [
        ("help_server_check", &["server", "check", "--help"][..]),
        ("help_server_start", &["server", "start", "--help"][..]),
        ("help_policy_eval", &["policy", "eval", "--help"][..]),
        ("help_policy_test", &["policy", "test", "--help"][..]),
        ("help_token_sign", &["token", "sign", "--help"][..]),
    ] {
        let r = s.kz(args).ok();
        insta::assert_snapshot!(name, r.stdout);
    }
}
