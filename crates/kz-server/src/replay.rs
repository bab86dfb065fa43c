//! `single_use` records shared by replicas: the bundle's `replay: { redis_url }`.
//!
//! Redeeming a `jti` is one `SET kz:replay:<scope>:<sha256(jti)> 1 NX EXAT <until>`: Redis
//! answers `OK` to exactly one caller, whichever replica it is, and forgets the record when
//! the token could no longer be used anyway. Any doubt (Redis unreachable, slow, or answering
//! something else) refuses the redemption: a single-use token is never honoured twice because
//! the store was down.

use std::time::Duration;

use kz_config::Diagnostic;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// How long one Redis call may take before the redemption is refused.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a redemption was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The token was redeemed before.
    Used,
    /// The store could not say (unreachable, slow, odd answer): refused, answered `503`.
    Unavailable(String),
}

/// A Redis-backed replay store.
pub struct RedisReplay {
    client: redis::Client,
    conn: OnceCell<redis::aio::ConnectionManager>,
    /// The URL, for messages (it holds no credential: the bundle check refuses one).
    url: String,
}

impl std::fmt::Debug for RedisReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplay")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RedisReplay {
    /// A store for `replay` (no connection yet: the first redemption connects). The password,
    /// when `password_env` names one, is read through `getenv`.
    pub fn new(
        replay: &kz_bundle::ReplayStore,
        getenv: &kz_providers::GetEnv,
        bundle: &std::path::Path,
    ) -> Result<Self, Diagnostic> {
        use redis::IntoConnectionInfo as _;
        let bad = |why: String| {
            Diagnostic::error("server::replay", format!("`replay.redis_url`: {why}"))
                .at(&replay.pos)
                .in_file(bundle)
                .help("write `redis://HOST:PORT/DB`; name the password with `password_env`")
        };
        let mut info = replay
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(e.to_string()))?;
        if let Some(var) = &replay.password_env {
            let password = getenv(var).ok_or_else(|| {
                bad(format!(
                    "`password_env` names {var}, which is not set in the server's environment"
                ))
            })?;
            let password = zeroize::Zeroizing::new(password);
            info = info.clone().set_redis_settings(
                info.redis_settings()
                    .clone()
                    .set_password(password.as_str()),
            );
        }
        let client = redis::Client::open(info).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            client,
            conn: OnceCell::new(),
            url: replay.redis_url.clone(),
        })
    }

    /// Records the one use of `jti` in `scope` until `until` (Unix seconds). `Err` refuses it:
    /// used before, or the store could not say.
    pub async fn redeem(&self, scope: &str, jti: &str, until: i64) -> Result<(), Refused> {
        let unavailable = |e: &dyn std::fmt::Display| {
            Refused::Unavailable(format!(
                "the replay store ({}) cannot confirm this single-use token is unused: {e}",
                self.url
            ))
        };
        let key = format!(
            "kz:replay:{scope}:{}",
            kz_config::discover::hex(&Sha256::digest(jti.as_bytes()))
        );
        let attempt = async {
            let conn = self
                .conn
                .get_or_try_init(|| async {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(REDIS_TIMEOUT))
                        .set_response_timeout(Some(REDIS_TIMEOUT))
                        .set_number_of_retries(1);
                    self.client.get_connection_manager_with_config(config).await
                })
                .await
                .map_err(|e| unavailable(&e))?;
            let mut conn = conn.clone();
            let answer: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("EXAT")
                .arg(until.max(1))
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable(&e))?;
            match answer.as_deref() {
                Some("OK") => Ok(()),
                None => Err(Refused::Used),
                Some(other) => Err(unavailable(&format!("unexpected answer `{other}`"))),
            }
        };
        tokio::time::timeout(REDIS_TIMEOUT * 2, attempt)
            .await
            .unwrap_or_else(|_| Err(unavailable(&"timed out")))
    }
}
