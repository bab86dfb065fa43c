//! Remote key sets against a real local server: JWKS URL, discovery, caching, refetch limits,
//! failures (down, slow, huge), rotation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use kz_identity::{ErrorCode, IssuerConfig, KeySource, Profile, Verifier};
use serde_json::{Value, json};
use support::*;

fn claims(iss: &str, now: i64) -> Value {
    json!({"iss": iss, "aud": "keyzero", "sub": "w", "iat": now, "exp": now + 3600})
}

fn jwks_issuer(server: &Server) -> IssuerConfig {
    let mut c = IssuerConfig::new("remote", Profile::Custom, server.url.clone());
    c.audience = Some("keyzero".into());
    c.keys = KeySource::JwksUrl(format!("{}/jwks", server.url));
    c
}

fn discovery_issuer(server: &Server) -> IssuerConfig {
    let mut c = IssuerConfig::new("disc", Profile::Custom, server.url.clone());
    c.audience = Some("keyzero".into());
    c
}

#[tokio::test]
async fn jwks_url_and_discovery_verify() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("a"), rsa().jwk("r")]);
    let now = unix_now();
    for cfg in [jwks_issuer(&server), discovery_issuer(&server)] {
        let v = Verifier::new(vec![cfg]).unwrap();
        let t = es256().sign(Some("a"), &claims(&server.url, now));
        v.verify(&t, at(now)).await.unwrap();
        let t = rsa().sign(Some("r"), &claims(&server.url, now));
        v.verify(&t, at(now)).await.unwrap();
        // No kid: every key that fits the alg.
        let t = rsa().sign(None, &claims(&server.url, now));
        v.verify(&t, at(now)).await.unwrap();
    }
    assert_eq!(server.discovery_hits(), 1);
    assert_eq!(server.jwks_hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kids_refetch_at_most_once_per_window() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("a")]);
    let v = Arc::new(Verifier::new(vec![jwks_issuer(&server)]).unwrap());
    let now = unix_now();
    let good = es256().sign(Some("a"), &claims(&server.url, now));
    v.verify(&good, at(now)).await.unwrap();
    assert_eq!(server.jwks_hits(), 1);
    // Within the window of the first fetch: no refetch at all.
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let v = Arc::clone(&v);
        let t = es256().sign(Some(&format!("random-{i}")), &claims(&server.url, now));
        tasks.push(tokio::spawn(async move { v.verify(&t, at(now + 5)).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().code, ErrorCode::UnknownKid);
    }
    assert_eq!(server.jwks_hits(), 1);
    // After the window: one refetch, however many tokens ask at once.
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let v = Arc::clone(&v);
        let t = es256().sign(Some(&format!("other-{i}")), &claims(&server.url, now));
        tasks.push(tokio::spawn(
            async move { v.verify(&t, at(now + 40)).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().code, ErrorCode::UnknownKid);
    }
    assert_eq!(server.jwks_hits(), 2);
}

#[tokio::test]
async fn a_new_kid_is_picked_up_after_the_window() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("a")]);
    let v = Verifier::new(vec![jwks_issuer(&server)]).unwrap();
    let now = unix_now();
    v.verify(&es256().sign(Some("a"), &claims(&server.url, now)), at(now))
        .await
        .unwrap();
    server.set_jwks(vec![es256().jwk("a"), es256b().jwk("b")]);
    let tb = es256b().sign(Some("b"), &claims(&server.url, now));
    assert_eq!(
        v.verify(&tb, at(now + 1)).await.unwrap_err().code,
        ErrorCode::UnknownKid
    );
    v.verify(&tb, at(now + 31)).await.unwrap();
}

#[tokio::test]
async fn cache_control_max_age_is_respected() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("a")]);
    server.set_cache_control("public, max-age=100");
    let v = Verifier::new(vec![jwks_issuer(&server)]).unwrap();
    let now = unix_now();
    let t = es256().sign(Some("a"), &claims(&server.url, now));
    v.verify(&t, at(now)).await.unwrap();
    v.verify(&t, at(now + 60)).await.unwrap();
    assert_eq!(server.jwks_hits(), 1);
    // Due at 100 s: a cached token is re-verified, which refreshes the set.
    v.verify(&t, at(now + 101)).await.unwrap();
    assert_eq!(server.jwks_hits(), 2);
    // Default without the header: 5 minutes.
    let server2 = Server::start().await;
    server2.set_jwks(vec![es256().jwk("a")]);
    let v2 = Verifier::new(vec![jwks_issuer(&server2)]).unwrap();
    let t2 = es256().sign(Some("a"), &claims(&server2.url, now));
    v2.verify(&t2, at(now)).await.unwrap();
    v2.verify(&t2, at(now + 290)).await.unwrap();
    assert_eq!(server2.jwks_hits(), 1);
    v2.verify(&t2, at(now + 310)).await.unwrap();
    assert_eq!(server2.jwks_hits(), 2);
}

#[tokio::test]
async fn stale_keys_serve_while_the_jwks_server_is_down() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("a")]);
    let v = Verifier::new(vec![jwks_issuer(&server)]).unwrap();
    let now = unix_now();
    let t = es256().sign(Some("a"), &claims(&server.url, now));
    v.verify(&t, at(now)).await.unwrap();
    server.set_mode(Mode::Fail(503));
    // Past max-age: the refresh fails, the old set keeps serving.
    let t2 = es256().sign(Some("a"), &claims(&server.url, now + 400));
    v.verify(&t2, at(now + 400)).await.unwrap();
    assert_eq!(server.jwks_hits(), 2);
    // Retried only after the interval.
    v.verify(&t2, at(now + 410)).await.unwrap();
    assert_eq!(server.jwks_hits(), 2);
    v.verify(&t2, at(now + 431)).await.unwrap();
    assert_eq!(server.jwks_hits(), 3);
    // The fetches are counted for the server's metrics: the first succeeded, two failed.
    assert_eq!(v.jwks_refreshes(), (1, 2));
    // A server that is down from the start: a clear error, no keys.
    let down = Server::start().await;
    down.set_mode(Mode::Fail(500));
    let v = Verifier::new(vec![jwks_issuer(&down)]).unwrap();
    let t = es256().sign(Some("a"), &claims(&down.url, now));
    let e = v.verify(&t, at(now)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::KeysUnavailable);
    assert!(e.message.contains("HTTP 500"), "{e}");
    // Connection refused.
    let port = down.addr.port();
    drop(down);
    let mut cfg = IssuerConfig::new("gone", Profile::Custom, format!("http://127.0.0.1:{port}"));
    cfg.audience = Some("keyzero".into());
    cfg.keys = KeySource::JwksUrl(format!("http://127.0.0.1:{port}/jwks"));
    let v = Verifier::new(vec![cfg]).unwrap();
    let t = es256().sign(Some("a"), &claims(&format!("http://127.0.0.1:{port}"), now));
    assert_eq!(
        v.verify(&t, at(now)).await.unwrap_err().code,
        ErrorCode::KeysUnavailable
    );
}

#[tokio::test]
async fn a_slow_jwks_server_times_out() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("a")]);
    server.set_mode(Mode::Slow(Duration::from_secs(5)));
    let v = Verifier::build_with_timeout(vec![jwks_issuer(&server)], Duration::from_millis(300))
        .unwrap();
    let now = unix_now();
    let t = es256().sign(Some("a"), &claims(&server.url, now));
    let e = v.verify(&t, at(now)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::KeysUnavailable);
    assert!(e.message.contains("did not answer in time"), "{e}");
}

#[tokio::test]
async fn a_huge_jwks_is_refused_without_reading_it_all() {
    let server = Server::start().await;
    server.set_mode(Mode::Huge(50 * 1024 * 1024));
    let v = Verifier::new(vec![jwks_issuer(&server)]).unwrap();
    let now = unix_now();
    let t = es256().sign(Some("a"), &claims(&server.url, now));
    let e = v.verify(&t, at(now)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::KeysUnavailable);
    assert!(e.message.contains("over the limit"), "{e}");
    let sent = server
        .state
        .bytes_sent
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 20 * 1024 * 1024, "server produced {sent} bytes");
}

#[tokio::test]
async fn a_key_rotated_under_the_same_kid_is_picked_up() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("k")]);
    let v = Verifier::new(vec![jwks_issuer(&server)]).unwrap();
    let now = unix_now();
    let old = es256().sign(Some("k"), &claims(&server.url, now));
    v.verify(&old, at(now)).await.unwrap();
    assert_eq!(v.cached_tokens(), 1);
    server.set_jwks(vec![es256b().jwk("k")]);
    let new = es256b().sign(Some("k"), &claims(&server.url, now));
    // Inside the window the old key answers (bad signature, no refetch).
    assert_eq!(
        v.verify(&new, at(now + 5)).await.unwrap_err().code,
        ErrorCode::BadSignature
    );
    assert_eq!(server.jwks_hits(), 1);
    // After it, the failing signature triggers a refresh that finds the new key.
    v.verify(&new, at(now + 35)).await.unwrap();
    assert_eq!(server.jwks_hits(), 2);
    // The token verified with the replaced key is no longer served from the cache.
    assert_eq!(
        v.verify(&old, at(now + 36)).await.unwrap_err().code,
        ErrorCode::BadSignature
    );
}

#[tokio::test]
async fn discovery_keeps_jwks_on_the_issuer_origin() {
    let server = Server::start().await;
    let other = Server::start().await;
    server.set_jwks(vec![es256().jwk("a")]);
    other.set_jwks(vec![es256().jwk("a")]);
    let now = unix_now();
    let t = es256().sign(Some("a"), &claims(&server.url, now));
    // jwks_uri on another port (another origin): refused unless allowed.
    server.set_discovery(json!({"issuer": server.url, "jwks_uri": format!("{}/jwks", other.url)}));
    let v = Verifier::new(vec![discovery_issuer(&server)]).unwrap();
    let e = v.verify(&t, at(now)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::KeysUnavailable);
    assert!(e.message.contains("allow_private_jwks"), "{e}");
    assert_eq!(other.total_hits(), 0);
    let mut cfg = discovery_issuer(&server);
    cfg.allow_private_jwks = true;
    let v = Verifier::new(vec![cfg]).unwrap();
    v.verify(&t, at(now)).await.unwrap();
    assert_eq!(other.jwks_hits(), 1);
    // A discovery document for another issuer is refused.
    server.set_discovery(
        json!({"issuer": "https://evil.example", "jwks_uri": format!("{}/jwks", server.url)}),
    );
    let v = Verifier::new(vec![discovery_issuer(&server)]).unwrap();
    assert_eq!(
        v.verify(&t, at(now)).await.unwrap_err().code,
        ErrorCode::KeysUnavailable
    );
    // A non-https jwks_uri to a remote host is refused even when other hosts are allowed.
    server.set_discovery(json!({"issuer": server.url, "jwks_uri": "http://example.com/jwks"}));
    let mut cfg = discovery_issuer(&server);
    cfg.allow_private_jwks = true;
    let v = Verifier::new(vec![cfg]).unwrap();
    let e = v.verify(&t, at(now)).await.unwrap_err();
    assert!(e.message.contains("https"), "{e}");
}

#[tokio::test]
async fn jwks_symmetric_keys_are_never_used() {
    let server = Server::start().await;
    let secret = b"0123456789abcdef0123456789abcdef";
    server.set_jwks(vec![
        json!({"kty": "oct", "kid": "h", "alg": "HS256", "k": b64(secret)}),
        es256().jwk("a"),
    ]);
    let v = Verifier::new(vec![jwks_issuer(&server)]).unwrap();
    let now = unix_now();
    let t = hs256_token(
        &json!({"alg": "HS256", "kid": "h"}),
        &claims(&server.url, now),
        secret,
    );
    assert_eq!(
        v.verify(&t, at(now)).await.unwrap_err().code,
        ErrorCode::UnsupportedAlg
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = Server::start().await;
    server.set_jwks(vec![es256().jwk("a")]);
    let mut cfg = jwks_issuer(&server);
    cfg.keys = KeySource::JwksUrl(format!("{}/redirect", server.url));
    let v = Verifier::new(vec![cfg]).unwrap();
    let now = unix_now();
    let t = es256().sign(Some("a"), &claims(&server.url, now));
    let e = v.verify(&t, at(now)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::KeysUnavailable);
    assert!(e.message.contains("HTTP 302"), "{e}");
    assert_eq!(server.jwks_hits(), 0);
}
