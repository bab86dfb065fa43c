//! The bundle schema: the spec's example loads; every mistake is reported at once with its line;
//! resolver matching and ref validation; no credential in a bundle, and never in an error.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use kz_bundle::{
    CredentialLocation, KeyMaterial, KeySource, Mode, Profile, RefError, check, validate_ref,
};

const CANARY: &str = "kz-canary-7f3a9c1e5b2d4f60";

/// The spec's example; the ES256 key is the public key of RFC 7515, appendix A.3.
const SPEC_EXAMPLE: &str = r#"
version: "1"
issuers:
  - name: gha
    type: github-actions
    issuer_url: https://token.actions.githubusercontent.com
    audience: keyzero
    map: { groups: "claims.teams", service: "repository" }
  - name: local
    type: custom
    issuer_url: http://127.0.0.1:8200/v1/identity/oidc
    allow_any_audience: true
    single_use: true
    max_token_lifetime: 1h
    static_keys:
      - kid: k1
        alg: ES256
        pem: |
          -----BEGIN PUBLIC KEY-----
          MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV7
          6e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==
          -----END PUBLIC KEY-----
      - alg: HS256
        secret_env: KZ_TEST_HMAC
backends:
  vault: { type: hashicorp_vault, address: "http://127.0.0.1:8200", auth: { method: approle, role_id: r, secret_id_env: VAULT_SECRET_ID } }
  aws:   { type: aws_secrets_manager, region: us-east-1 }
  sts:   { type: aws_sts, region: us-east-1 }
resolvers:
  - name: api-key
    backend: aws
    mode: direct
    secret_id: prod/api-key
    field: api_key
    cache_ttl: 60s
    hosts: [api.openai.com]
    credential_location: "header:Authorization:Bearer"
  - name: "prod/**"
    backend: vault
    path: "secret/data/${ref}"
  - name: "prod/db/*"
    backend: vault
  - name: deploy
    backend: sts
    mode: short_lived
    ttl: 300
    role_arn: arn:aws:iam::123456789012:role/deploy
    hosts: ["*.amazonaws.com"]
    credential_location: "query:X-Amz-Security-Token"
policies:
  - name: deny-forks
    rule: 'claims.repository_owner != org'
    effect: deny
  - name: ci-main
    rule: 'org == "acme" && branch == "main" && ref.glob("prod/**")'
    effect: allow
audit:
  path: /var/log/keyzero/audit.jsonl
  claims: [sub, repository, run_id]
"#;

fn errors(text: &str) -> Vec<(String, usize, String)> {
    match check(Path::new("bundle.yaml"), text) {
        Ok(_) => panic!("the bundle should not load"),
        Err(d) => d
            .iter()
            .map(|d| {
                (
                    d.code.to_string(),
                    d.line.unwrap_or(0),
                    format!("{d} {}", d.help.as_deref().unwrap_or_default()),
                )
            })
            .collect(),
    }
}

#[test]
fn the_spec_example_loads() {
    let b = check(Path::new("bundle.yaml"), SPEC_EXAMPLE).unwrap();
    assert_eq!(b.version, "1");
    assert_eq!(b.issuers.len(), 2);
    let gha = b
        .issuer_for("https://token.actions.githubusercontent.com")
        .unwrap();
    assert_eq!(gha.name, "gha");
    assert_eq!(gha.profile, Profile::GithubActions);
    assert_eq!(gha.audience.as_deref(), Some("keyzero"));
    assert_eq!(gha.keys, KeySource::Discovery);
    assert_eq!(gha.map.len(), 2);
    let local = b.issuer("local").unwrap();
    assert!(local.single_use && local.allow_any_audience);
    match &local.keys {
        KeySource::Static(keys) => {
            assert_eq!(keys.len(), 2);
            assert!(matches!(keys[0].material, KeyMaterial::Pem(_)));
            assert_eq!(
                keys[1].material,
                KeyMaterial::SecretEnv("KZ_TEST_HMAC".into())
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.backends.len(), 3);
    assert_eq!(b.backend("vault").unwrap().ty.name, "hashicorp");
    assert_eq!(b.backend("aws").unwrap().ty.name, "aws");
    assert_eq!(b.resolvers.len(), 4);
    assert_eq!(b.policies.len(), 2);
    assert_eq!(b.audit.claims, ["sub", "repository", "run_id"]);
    let api = b.resolver_for("api-key").unwrap();
    assert_eq!(api.reference("api-key"), "prod/api-key");
    let asked = api.backend_request("api-key");
    assert_eq!(asked.reference, "prod/api-key");
    assert_eq!(asked.field.as_deref(), Some("api_key"));
    assert!(
        asked
            .params
            .iter()
            .all(|(k, _)| k != "secret_id" && k != "field"),
        "{:?}",
        asked.params
    );
    assert_eq!(
        api.credential_location,
        Some(CredentialLocation::Header {
            name: "Authorization".into(),
            prefix: "Bearer".into()
        })
    );
    let deploy = b.resolver_for("deploy").unwrap();
    assert_eq!(deploy.mode, Mode::ShortLived);
    assert_eq!(deploy.ttl.map(|d| d.as_secs()), Some(300));
    let notes = b.per_replica_settings();
    assert!(
        notes.iter().any(|n| n.contains("issuers.local.single_use")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("api-key.cache_ttl")),
        "{notes:?}"
    );
}

#[test]
fn resolver_matching_is_exact_then_longest_prefix_then_fewest_wildcards_then_first() {
    let b = check(Path::new("bundle.yaml"), SPEC_EXAMPLE).unwrap();
    // `prod/db/*` has the longer literal prefix than `prod/**`.
    assert_eq!(b.resolver_for("prod/db/main").unwrap().name, "prod/db/*");
    // `*` stays within a segment: `prod/db/a/b` only matches `prod/**`.
    assert_eq!(b.resolver_for("prod/db/a/b").unwrap().name, "prod/**");
    assert_eq!(b.resolver_for("prod/x").unwrap().name, "prod/**");
    assert!(b.resolver_for("dev/x").is_none());
    // `${ref}` expands to the requested name; no parameter: the name is the reference.
    let r = b.resolver_for("prod/x").unwrap();
    assert_eq!(r.reference("prod/x"), "secret/data/prod/x");
    assert_eq!(
        b.resolver_for("prod/db/main")
            .unwrap()
            .reference("prod/db/main"),
        "prod/db/main"
    );

    let text = r#"
version: 1
backends: { v: { type: vault, address: "http://127.0.0.1:8200" } }
resolvers:
  - { name: "a/*", backend: v }
  - { name: "a/?", backend: v }
  - { name: "a/[xy]", backend: v }
  - { name: "a/x", backend: v }
  - { name: "*", backend: v }
  - { name: "a/**", backend: v }
"#;
    let b = check(Path::new("b.yaml"), text).unwrap();
    assert_eq!(b.resolver_for("a/x").unwrap().name, "a/x", "exact wins");
    // Same prefix `a/`, one wildcard each: the first defined wins.
    assert_eq!(b.resolver_for("a/y").unwrap().name, "a/*");
    assert_eq!(b.resolver_for("top").unwrap().name, "*");
    assert_eq!(b.resolver_for("a/b/c").unwrap().name, "a/**");
}

#[test]
fn the_older_form_loads() {
    let text = r#"
version: "1"
issuers:
  - { name: k8s, type: kubernetes, issuer_url: "https://kubernetes.default.svc", audience: kz }
backends:
  aws: { type: aws_secrets_manager, region: eu-west-1 }
resources:
  - ref: "team/*"
    resolver: aws
    secret_id: "team/${ref}"
policies:
  - { name: all, rule: "true", effect: allow }
"#;
    let b = check(Path::new("old.yaml"), text).unwrap();
    let r = b.resolver_for("team/x").unwrap();
    assert_eq!(r.backend, "aws");
    assert_eq!(r.reference("team/x"), "team/team/x");
}

#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let text = r#"version: "2"
issuerz: []
issuers:
  - name: gha
    type: github-action
    issuer_url: ftp://example.com
  - name: gha
    type: gitlab
    issuer_url: https://gitlab.com
    audience: kz
    jwks_url: https://gitlab.com/oauth/discovery/keys
    static_keys: []
backends:
  vault: { type: hashicorp_vault, adress: "http://127.0.0.1:8200" }
  bad: { type: no-such-backend }
resolvers:
  - name: "prod/[x"
    backend: vault
  - name: api
    backend: vaul
    secret_id: "${env}"
    mode: fast
  - name: api2
    backend: vault
    ttl: 60
    colour: blue
policies:
  - name: p1
    rule: 'org == '
    effect: allow
  - name: p2
    rule: '"a string"'
    effect: allow
  - name: p3
    rule: 'true'
    effect: permit
  - name: p1
    rule: 'true'
    effect: deny
audit:
  path: 5
"#;
    let got = errors(text);
    let has = |code: &str, line: usize| got.iter().any(|(c, l, _)| c == code && *l == line);
    let show = || {
        got.iter()
            .map(|(c, l, m)| format!("{l}: {c}: {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (code, line) in [
        ("bundle::version", 1),
        ("config::unknown_key", 2),
        ("bundle::unknown_profile", 5),
        ("bundle::bad_url", 6),
        ("bundle::missing", 4),         // gha has no audience
        ("bundle::conflict", 11),       // jwks_url and static_keys
        ("config::unknown_option", 14), // adress
        ("config::unknown_provider_type", 15),
        ("bundle::bad_glob", 17),
        ("bundle::dangling", 20),
        ("bundle::placeholder", 21),
        ("config::value", 22),       // mode: fast
        ("bundle::conflict", 25),    // ttl without short_lived
        ("config::unknown_key", 26), // colour
        ("bundle::policy", 29),      // `org == ` does not parse
        ("bundle::policy", 32),      // a string is not a decision
        ("config::value", 36),       // effect: permit
        ("bundle::duplicate", 37),   // p1 twice
        ("config::type", 41),        // audit.path
    ] {
        assert!(
            has(code, line),
            "missing {code} at line {line}; got:\n{}",
            show()
        );
    }
    // Did-you-mean for the misspelt profile and option.
    assert!(
        got.iter().any(|(_, _, m)| m.contains("github-actions")),
        "{}",
        show()
    );
    assert!(
        got.iter().any(|(_, _, m)| m.contains("address")),
        "{}",
        show()
    );
    assert!(
        got.iter()
            .any(|(_, _, m)| m.contains("did you mean `vault`")),
        "{}",
        show()
    );
}

#[test]
fn policy_compile_errors_carry_the_rule_line() {
    let text = r#"version: "1"
policies:
  - name: broken
    rule: 'org == '
    effect: allow
  - name: not-boolean
    rule: '"a string"'
    effect: allow
  - name: non-literal-regex
    rule: 'ref.matches(context.pattern)'
    effect: allow
  - name: everyone
    rule: 'true'
    effect: allow
  - name: unreachable
    rule: 'org == "acme"'
    effect: deny
"#;
    let got = errors(text);
    for (name, line) in [
        ("broken", 4),
        ("not-boolean", 7),
        ("non-literal-regex", 10),
        ("unreachable", 16),
    ] {
        assert!(
            got.iter()
                .any(|(c, l, m)| c == "bundle::policy" && *l == line && m.contains(name)),
            "{name} at line {line}: {got:?}"
        );
    }
}

#[test]
fn credentials_are_refused_and_never_printed() {
    let text = format!(
        r#"version: "1"
issuers:
  - name: local
    type: custom
    issuer_url: https://issuer.example
    audience: kz
    static_keys:
      - {{ alg: HS256, secret: "{CANARY}" }}
      - {{ alg: HS256, pem: "{CANARY}" }}
      - alg: RS256
        pem: |
          -----BEGIN PRIVATE KEY-----
          {CANARY}
          -----END PRIVATE KEY-----
      - {{ alg: none, pem: "x" }}
backends:
  vault: {{ type: vault, address: "http://127.0.0.1:8200", token: "{CANARY}" }}
  v2: {{ type: vault, address: "http://127.0.0.1:8200", auth: {{ method: approle, role_id: r, secret_id: "{CANARY}" }} }}
"#
    );
    let got = errors(&text);
    let all = format!("{got:?}");
    assert!(!all.contains(CANARY), "a credential was printed: {all}");
    let creds = got
        .iter()
        .filter(|(c, _, _)| c == "config::credential_in_project_file")
        .count();
    // secret, the private key, the backend token, the approle secret_id.
    assert_eq!(creds, 4, "{all}");
    assert!(
        got.iter()
            .any(|(c, l, _)| c == "bundle::key_material" && *l == 9),
        "{all}"
    );
    assert!(
        got.iter()
            .any(|(c, _, m)| c == "bundle::bad_alg" && m.contains("none")),
        "{all}"
    );
}

#[test]
fn credentials_hidden_in_params_urls_and_key_formats_are_refused() {
    let text = format!(
        r#"version: "1"
backends:
  vault: {{ type: vault, address: "https://admin:{CANARY}@vault.example:8200" }}
  plugin: {{ type: exec, command: ["kz-plugin"] }}
  age: {{ type: age, identity: "AGE-SECRET-KEY-1{CANARY}" }}
resolvers:
  - {{ name: a, backend: plugin, api_token: "{CANARY}", region: eu }}
  - {{ name: b, backend: vault, path: "secret/data/x?token={CANARY}" }}
  - {{ name: c, backend: plugin, password_env: PW, team_id: t1 }}
"#
    );
    let got = errors(&text);
    let all = format!("{got:?}");
    assert!(!all.contains(CANARY), "a credential was printed: {all}");
    let creds: Vec<usize> = got
        .iter()
        .filter(|(c, _, _)| c == "config::credential_in_project_file")
        .map(|(_, l, _)| *l)
        .collect();
    assert_eq!(creds, vec![3, 5, 7, 8], "{all}");
}

#[test]
fn urls_are_https_or_loopback_http_without_userinfo() {
    for (url, ok) in [
        ("https://issuer.example", true),
        ("http://127.0.0.1:8200/v1/identity/oidc", true),
        ("http://localhost:9400", true),
        ("http://[::1]:9400", true),
        ("http://issuer.example", false),
        ("http://127.0.0.1@evil.example", false),
        ("http://127.evil", false),
        ("https://user:pw@issuer.example", false),
        ("ftp://issuer.example", false),
        ("https://", false),
    ] {
        let text = format!(
            "version: \"1\"\nissuers:\n  - {{ name: i, type: custom, issuer_url: \"{url}\", audience: kz, jwks_url: \"https://keys.example/jwks\" }}\n"
        );
        let r = check(Path::new("b.yaml"), &text);
        assert_eq!(r.is_ok(), ok, "{url}: {:?}", r.err());
    }
}

#[test]
fn rules_that_do_not_name_the_issuer_are_flagged_when_there_are_several() {
    let b = check(Path::new("bundle.yaml"), SPEC_EXAMPLE).unwrap();
    let w: Vec<String> = b.warnings().iter().map(|d| d.message.clone()).collect();
    // `deny-forks` and `ci-main` compare `org` (and `branch`) without `issuer ==`.
    assert_eq!(w.len(), 2, "{w:?}");
    let text = SPEC_EXAMPLE
        .replace(
            "rule: 'claims.repository_owner != org'",
            "rule: 'issuer == \"gha\" && claims.repository_owner != org'",
        )
        .replace(
            "rule: 'org == \"acme\"",
            "rule: 'issuer == \"gha\" && org == \"acme\"",
        );
    let b = check(Path::new("bundle.yaml"), &text).unwrap();
    assert!(b.warnings().is_empty(), "{:?}", b.warnings());
    // A field read through `claims.` or `context.`, or inside a string, is not the identity's.
    let one = "version: \"1\"\nissuers:\n  - { name: a, type: custom, issuer_url: \"https://a.example\", audience: kz }\n  - { name: b, type: custom, issuer_url: \"https://b.example\", audience: kz }\npolicies:\n  - { name: p, rule: 'context.org == \"org\" && claims.branch == \"x\"', effect: allow }\n";
    assert!(
        check(Path::new("b.yaml"), one)
            .unwrap()
            .warnings()
            .is_empty()
    );
}

#[test]
fn single_use_needs_a_bounded_token_lifetime() {
    let text = "version: \"1\"\nissuers:\n  - { name: a, type: custom, issuer_url: \"https://a.example\", audience: kz, single_use: true }\n";
    let got = errors(text);
    assert!(
        got.iter().any(|(c, l, m)| c == "bundle::conflict"
            && *l == 3
            && m.contains("max_token_lifetime")),
        "{got:?}"
    );
}

#[test]
fn a_special_file_is_not_read_without_bound() {
    let err = kz_bundle::load(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(err[0].code, "config::too_large", "{err:?}");
}

#[test]
fn refs_have_one_canonical_form() {
    assert_eq!(validate_ref("prod/api-key"), Ok(()));
    assert_eq!(validate_ref("team_1/db.main/user@host:5432,x=y+z~"), Ok(()));
    assert_eq!(validate_ref(""), Err(RefError::Empty));
    assert_eq!(validate_ref(&"a".repeat(513)), Err(RefError::TooLong));
    assert_eq!(validate_ref(&"a".repeat(512)), Ok(()));
    assert_eq!(validate_ref("a\0b"), Err(RefError::Nul));
    assert_eq!(validate_ref("prod%2fx"), Err(RefError::Percent));
    assert_eq!(validate_ref("prod/../x"), Err(RefError::DotDot));
    assert_eq!(validate_ref(".."), Err(RefError::DotDot));
    assert_eq!(validate_ref("prod/./admin"), Err(RefError::DotDot));
    assert_eq!(validate_ref("prod//admin"), Err(RefError::EmptySegment));
    assert_eq!(validate_ref("/prod/admin"), Err(RefError::EmptySegment));
    assert_eq!(validate_ref("prod/admin/"), Err(RefError::EmptySegment));
    // `#` selects a field in a Vault ref: `prod/admin#token` would reach `prod/admin`.
    assert_eq!(
        validate_ref("prod/admin#token"),
        Err(RefError::Character('#'))
    );
    assert_eq!(validate_ref("a?b"), Err(RefError::Character('?')));
    assert_eq!(validate_ref("a b"), Err(RefError::Character(' ')));
    assert_eq!(validate_ref("a\nb"), Err(RefError::Character('\n')));
    assert_eq!(
        validate_ref("prod/\u{202e}nimda"),
        Err(RefError::Character('\u{202e}'))
    );
    assert_eq!(
        validate_ref("caf\u{e9}"),
        Err(RefError::Character('\u{e9}'))
    );
    assert_eq!(validate_ref("prod/..x"), Ok(()));
    assert!(RefError::Character('#').to_string().contains("`#`"));
}

#[test]
fn size_nesting_and_count_limits_hold() {
    // Nesting deeper than the YAML limit.
    let deep = format!(
        "version: \"1\"\naudit: {}1{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let got = errors(&deep);
    assert!(
        got.iter().any(|(c, _, _)| c == "config::too_deep"),
        "{got:?}"
    );
    // More policies than accepted.
    let mut text = String::from("version: \"1\"\npolicies:\n");
    for i in 0..=kz_bundle::MAX_POLICIES {
        text.push_str(&format!(
            "  - {{ name: p{i}, rule: 'org == \"o{i}\"', effect: allow }}\n"
        ));
    }
    let got = errors(&text);
    assert!(
        got.iter()
            .any(|(c, l, _)| c == "bundle::too_many" && *l == 2),
        "{:?}",
        got.first()
    );
    // An alias bomb is refused by the parser, not expanded.
    let bomb = "version: \"1\"\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    let got = errors(bomb);
    assert!(
        got.iter().any(|(c, _, _)| c != "config::unknown_key"),
        "the aliases were expanded: {:?}",
        got.iter().map(|(c, l, _)| (c, l)).collect::<Vec<_>>()
    );
}

#[test]
fn a_loaded_bundle_decides() {
    use kz_policy::{Identity, Request, Transport};
    let b = check(Path::new("bundle.yaml"), SPEC_EXAMPLE).unwrap();
    let mut claims = serde_json::Map::new();
    claims.insert("repository_owner".into(), "acme".into());
    let id = Identity {
        issuer: "gha".into(),
        org: "acme".into(),
        branch: "main".into(),
        claims,
        ..Identity::default()
    };
    let ctx = serde_json::Value::Null;
    let req = |r: &'static str| Request {
        identity: &id,
        reference: r,
        resolver: "",
        mode: "direct",
        context: &ctx,
        time: chrono::Utc::now(),
        ip: "",
        transport: Transport::Http,
    };
    assert!(b.policies.decide(&req("prod/x")).allowed());
    assert!(!b.policies.decide(&req("dev/x")).allowed());
}

#[test]
fn hmac_secrets_are_read_only_when_configs_are_built_and_their_failures_named() {
    let text = r#"version: "1"
issuers:
  - name: a
    type: custom
    issuer_url: https://a.example
    audience: kz
    static_keys:
      - { kid: e, alg: HS256, secret_env: KZ_BUNDLE_TEST_UNSET_VARIABLE }
      - { kid: f, alg: HS256, secret_file: /dev/zero }
      - { kid: g, alg: HS256, secret_file: /nonexistent/kz-secret }
"#;
    // Loading reads no secret: the bundle is valid.
    let b = check(Path::new("b.yaml"), text).unwrap();
    let errs = b.issuer_configs().unwrap_err();
    let all: Vec<String> = errs.iter().map(|d| d.message.clone()).collect();
    assert_eq!(errs.len(), 3, "{all:?}");
    assert!(all[0].contains("KZ_BUNDLE_TEST_UNSET_VARIABLE"), "{all:?}");
    assert!(
        all[1].contains("/dev/zero") && all[1].contains("over"),
        "{all:?}"
    );
    assert!(all[2].contains("/nonexistent/kz-secret"), "{all:?}");
    // The same, as warnings, for `server check` run away from the server's environment.
    let warnings = b.unavailable_secrets();
    assert_eq!(warnings.len(), 3);
    assert!(warnings.iter().all(|d| !d.is_error()));
}

#[test]
fn resolvers_bind_methods_and_paths_next_to_hosts() {
    let text = r#"
version: "1"
issuers:
  - { name: k8s, type: kubernetes, issuer_url: "https://kubernetes.default.svc", audience: kz }
backends:
  aws: { type: aws_secrets_manager, region: eu-west-1 }
resolvers:
  - name: stripe
    backend: aws
    hosts: [api.stripe.com]
    methods: [get, POST]
    paths: ["/v1/charges", "/v1/customers/**"]
  - name: open
    backend: aws
policies:
  - { name: all, rule: "true", effect: allow }
"#;
    let b = check(Path::new("b.yaml"), text).unwrap();
    let r = b.resolver_for("stripe").unwrap();
    assert_eq!(r.binding.methods.as_slice(), ["GET", "POST"]);
    assert!(r.binding.check("POST", "/v1/customers/cu_1").is_ok());
    assert!(r.binding.check("DELETE", "/v1/charges").is_err());
    assert!(r.binding.check("GET", "/v1/refunds").is_err());
    // Neither key is taken for a backend parameter.
    assert!(
        r.params
            .iter()
            .all(|p| p.name != "methods" && p.name != "paths")
    );
    assert!(b.resolver_for("open").unwrap().binding.is_open());

    let bad = text
        .replace("methods: [get, POST]", "methods: [\"GET POST\"]")
        .replace("\"/v1/charges\", ", "\"v1/charges\", \"/a/%2e%2e/b\", ")
        .replace(
            "  - name: open\n    backend: aws\n",
            "  - name: open\n    backend: aws\n    methods: []\n",
        );
    let e = errors(&bad);
    assert_eq!(
        e.iter()
            .map(|(c, l, _)| (c.as_str(), *l))
            .collect::<Vec<_>>(),
        [
            ("config::value", 11),
            ("config::value", 12),
            ("config::value", 12),
            ("config::value", 15)
        ],
        "{e:#?}"
    );
    assert!(
        e[0].2.contains("`GET POST` is not an HTTP method"),
        "{e:#?}"
    );
    assert!(e[1].2.contains("must start with `/`"), "{e:#?}");
    assert!(e[2].2.contains("escapes `.`"), "{e:#?}");
    assert!(e[3].2.contains("could never be used"), "{e:#?}");
}

#[test]
fn replay_names_a_redis_without_credentials() {
    let base = r#"
version: "1"
issuers:
  - { name: k8s, type: kubernetes, issuer_url: "https://kubernetes.default.svc", audience: kz }
policies:
  - { name: all, rule: "true", effect: allow }
"#;
    let b = check(
        Path::new("b.yaml"),
        &format!("{base}replay: {{ redis_url: \"redis://10.0.0.5:6379/2\", password_env: REDIS_PASSWORD }}\n"),
    )
    .unwrap();
    let r = b.replay.unwrap();
    assert_eq!(r.redis_url, "redis://10.0.0.5:6379/2");
    assert_eq!(r.password_env.as_deref(), Some("REDIS_PASSWORD"));
    assert!(check(Path::new("b.yaml"), base).unwrap().replay.is_none());
    for (replay, says) in [
        (
            "{ redis_url: \"redis://:hunter2@10.0.0.5:6379\" }",
            "never holds a credential",
        ),
        ("{ redis_url: \"rediss://10.0.0.5:6379\" }", "TLS"),
        ("{ redis_url: \"http://10.0.0.5\" }", "not a `redis://` URL"),
        ("{ password_env: X }", "redis_url"),
        ("{ redis_url: \"redis://h\", pool: 3 }", "pool"),
    ] {
        let e = errors(&format!("{base}replay: {replay}\n"));
        assert!(
            e.iter().any(|(_, l, m)| *l == 7 && m.contains(says)),
            "{replay}: {e:#?}"
        );
        assert!(e.iter().all(|(_, _, m)| !m.contains("hunter2")), "{e:#?}");
    }
}

#[test]
fn mcp_tools_default_to_fetch_and_resolve_is_opt_in() {
    let base = r#"
version: "1"
issuers:
  - { name: k8s, type: kubernetes, issuer_url: "https://kubernetes.default.svc", audience: kz }
policies:
  - { name: all, rule: "true", effect: allow }
"#;
    let default = check(Path::new("b.yaml"), base).unwrap().mcp;
    assert!(default.fetch && !default.resolve, "{default:?}");
    let both = check(
        Path::new("b.yaml"),
        &format!("{base}mcp: {{ tools: [fetch, resolve, list_resources] }}\n"),
    )
    .unwrap()
    .mcp;
    assert!(both.fetch && both.resolve, "{both:?}");
    let none = check(
        Path::new("b.yaml"),
        &format!("{base}mcp: {{ tools: [] }}\n"),
    )
    .unwrap()
    .mcp;
    assert!(!none.fetch && !none.resolve, "{none:?}");
    for (mcp, says) in [
        ("{ tools: [fetch, exec] }", "unknown tool `exec`"),
        ("{ tools: fetch }", "a list"),
        ("{ tool: [fetch] }", "tool"),
    ] {
        let e = errors(&format!("{base}mcp: {mcp}\n"));
        assert!(
            e.iter().any(|(_, l, m)| *l == 7 && m.contains(says)),
            "{mcp}: {e:#?}"
        );
    }
}

#[test]
fn single_use_resolvers_say_where_their_records_live() {
    let text = r#"
version: "1"
issuers:
  - { name: k8s, type: kubernetes, issuer_url: "https://kubernetes.default.svc", audience: kz }
backends:
  aws: { type: aws_secrets_manager, region: eu-west-1 }
resolvers:
  - { name: deploy, backend: aws, mode: short_lived, single_use: true, hosts: [api.example.com] }
policies:
  - { name: all, rule: "true", effect: allow }
"#;
    let own = check(Path::new("b.yaml"), text)
        .unwrap()
        .per_replica_settings();
    assert!(
        own.iter()
            .any(|s| s.contains("resolvers.deploy.single_use: each proxy replica keeps its own")),
        "{own:#?}"
    );
    let shared = check(
        Path::new("b.yaml"),
        &format!("{text}replay: {{ redis_url: \"redis://10.0.0.5:6379/0\" }}\n"),
    )
    .unwrap()
    .per_replica_settings();
    assert!(
        shared
            .iter()
            .any(|s| s.contains("shared through replay.redis_url")),
        "{shared:#?}"
    );
    // single_use is for short-lived tokens only.
    let e = errors(&text.replace("mode: short_lived, single_use: true", "single_use: true"));
    assert!(
        e.iter()
            .any(|(_, _, m)| m.contains("applies only to `mode: short_lived`")),
        "{e:#?}"
    );
}
