//! Users of the MicroVM Sandbox API: register (argon2id password hashes,
//! never logged), log in (a JWT), and a per-username+address backoff on
//! failed logins. A user resolves to the same [`Caller`] an API key does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use super::jwt::{JwtError, Tokens};
use super::Caller;
use crate::db::{Db, DbError, UserRow};

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user \"{0}\" already exists")]
    Exists(String),
    #[error("registering an admin needs an admin caller")]
    AdminNeeded,
    #[error("invalid username or password")]
    BadCredentials,
    #[error("too many failed logins; retry in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error("the user of this token no longer exists")]
    Gone,
    #[error("token rejected")]
    Token(#[from] JwtError),
    #[error("cannot read the OS random number generator")]
    Rng(#[source] rand::rand_core::OsError),
    #[error("password hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("user lookup failed")]
    Db(#[from] DbError),
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// Hash a password with argon2id (default parameters) on the blocking pool.
async fn hash_password(password: String) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || {
        use rand::TryRngCore;
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(UserError::Rng)?;
        let salt = SaltString::encode_b64(&bytes).map_err(UserError::Hash)?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(UserError::Hash)
    })
    .await?
}

async fn password_matches(password: String, phc: String) -> Result<bool, UserError> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&phc).map_err(UserError::Hash)?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

/// Register a user. An admin needs an admin caller, except the very first
/// admin of the service (no admin key or user yet), as with API keys.
pub async fn register(
    db: &Db,
    caller: Option<&Caller>,
    username: &str,
    password: &str,
    admin: bool,
) -> Result<UserRow, UserError> {
    let bootstrap = admin && !caller.is_some_and(|c| c.admin);
    let hash = hash_password(password.to_owned()).await?;
    let name = username.to_owned();
    let row = db
        .call(move |c| Db::insert_user(c, &name, &hash, admin, bootstrap))
        .await
        .map_err(|e| match e {
            DbError::Conflict { .. } => UserError::Exists(username.to_owned()),
            other => other.into(),
        })?;
    let row = row.ok_or(UserError::AdminNeeded)?;
    tracing::info!(user = %row.username, admin, "user registered");
    Ok(row)
}

/// Check a username and password; a JWT for the user on success.
pub async fn login(
    db: &Db,
    tokens: &Tokens,
    limiter: &LoginLimiter,
    who: (&str, IpAddr),
    password: &str,
    ttl_secs: u64,
) -> Result<String, UserError> {
    let (username, addr) = who;
    limiter.check(username, addr)?;
    let name = username.to_owned();
    let row = db.call(move |c| Db::user_by_name(c, &name)).await?;
    let ok = match &row {
        Some(r) => password_matches(password.to_owned(), r.password_hash.clone()).await?,
        None => false,
    };
    match row.filter(|_| ok) {
        Some(r) => {
            limiter.succeeded(username, addr);
            Ok(tokens.issue(r.id, &r.username, ttl_secs)?)
        }
        None => {
            limiter.failed(username, addr);
            tracing::info!(user = %username, addr = %addr, "failed login");
            Err(UserError::BadCredentials)
        }
    }
}

/// The caller a valid token stands for.
pub async fn caller_of_token(db: &Db, tokens: &Tokens, token: &str) -> Result<Caller, UserError> {
    let claims = tokens.verify(token)?;
    let id: i64 = claims.sub.parse().map_err(|_| UserError::Gone)?;
    let row = db.call(move |c| Db::user_by_id(c, id)).await?;
    let row = row.ok_or(UserError::Gone)?;
    Ok(Caller {
        key_id: row.owner_id,
        admin: row.admin,
    })
}

/// (failures, time of the last) per (username, client address).
type Failures = HashMap<(String, IpAddr), (u32, Instant)>;

/// Failed logins per (username, address): after `free` failures each
/// further attempt waits 1 s, doubling, at most [`MAX_BACKOFF`].
#[derive(Clone)]
pub struct LoginLimiter {
    free: u32,
    failures: Arc<Mutex<Failures>>,
}

impl LoginLimiter {
    pub fn new(free: u32) -> Self {
        LoginLimiter {
            free,
            failures: Default::default(),
        }
    }

    fn check(&self, username: &str, addr: IpAddr) -> Result<(), UserError> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&(count, last)) = map.get(&(username.to_owned(), addr)) else {
            return Ok(());
        };
        let wait = self.backoff(count).saturating_sub(last.elapsed());
        if wait.is_zero() {
            Ok(())
        } else {
            Err(UserError::Throttled {
                retry_after_secs: wait.as_secs().max(1),
            })
        }
    }

    fn backoff(&self, count: u32) -> Duration {
        match count.checked_sub(self.free) {
            None => Duration::ZERO,
            Some(over) => Duration::from_secs(1u64 << over.min(9)).min(MAX_BACKOFF),
        }
    }

    fn failed(&self, username: &str, addr: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry((username.to_owned(), addr))
            .or_insert((0, Instant::now()));
        *entry = (entry.0 + 1, Instant::now());
    }

    fn succeeded(&self, username: &str, addr: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(username.to_owned(), addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn check_after_free_failures_is_throttled() {
        let limiter = LoginLimiter::new(2);
        for _ in 0..3 {
            limiter.failed("ann", ADDR);
        }
        let err = limiter.check("ann", ADDR).unwrap_err();
        assert!(matches!(err, UserError::Throttled { .. }), "{err}");
    }

    #[test]
    fn check_other_user_is_not_throttled() {
        let limiter = LoginLimiter::new(0);
        limiter.failed("ann", ADDR);
        assert_eq!(limiter.check("bob", ADDR).ok(), Some(()));
    }

    #[tokio::test]
    async fn login_wrong_password_is_bad_credentials() {
        let (_dir, db) = crate::db::open_temp();
        let tokens = Tokens::from_secret(&[1u8; 32]);
        register(&db, None, "ann", "correct-horse", false)
            .await
            .unwrap();
        let limiter = LoginLimiter::new(5);
        let err = login(&db, &tokens, &limiter, ("ann", ADDR), "wrong-pass", 60)
            .await
            .unwrap_err();
        let token = login(&db, &tokens, &limiter, ("ann", ADDR), "correct-horse", 60)
            .await
            .unwrap();
        let caller = caller_of_token(&db, &tokens, &token).await.unwrap();
        assert!(matches!(err, UserError::BadCredentials), "{err}");
        assert!(!caller.admin);
    }
}
