//! API keys: `ws_` + 48 hex characters from the OS RNG. Only the SHA-256
//! hash is stored; a key is shown once, at creation. Lookup narrows by a
//! short prefix, then compares hashes in constant time.

pub mod jwt;
pub mod users;

use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::{ApiKeyRow, Db, DbError};

/// Characters of the key (after `ws_`) stored in clear to find candidates.
const PREFIX_HEX: usize = 8;
const KEY_HEX: usize = 48;

/// Who made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub key_id: i64,
    pub admin: bool,
}

impl Caller {
    /// Owner filter for listing: admins see everything.
    pub fn owner_filter(&self) -> Option<i64> {
        (!self.admin).then_some(self.key_id)
    }

    /// Whether this caller may see a sandbox owned by `owner`.
    pub fn can_see(&self, owner: i64) -> bool {
        self.admin || self.key_id == owner
    }
}

/// A freshly generated key: the secret (shown once) and what is stored.
pub struct NewKey {
    pub secret: String,
    pub prefix: String,
    pub hash: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("API key required")]
    Missing,
    #[error("Invalid API key")]
    Invalid,
    #[error("cannot read the OS random number generator")]
    Rng(#[source] rand::rand_core::OsError),
    #[error("key lookup failed")]
    Db(#[from] DbError),
}

/// Generate a new key from the OS RNG.
pub fn generate() -> Result<NewKey, AuthError> {
    let mut bytes = [0u8; KEY_HEX / 2];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(AuthError::Rng)?;
    let secret = format!("ws_{}", hex::encode(bytes));
    Ok(NewKey {
        prefix: prefix_of(&secret).unwrap_or_default().to_owned(),
        hash: hash(&secret),
        secret,
    })
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// The stored lookup prefix (`ws_` + 8 hex), or `None` if `key` is not
/// shaped like one of ours.
fn prefix_of(key: &str) -> Option<&str> {
    let hex = key.strip_prefix("ws_")?;
    let well_formed = hex.len() == KEY_HEX && hex.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| &key[..3 + PREFIX_HEX])
}

/// How a key is shown in listings: `ws_a1b2c3d4...`.
pub fn display_prefix(row: &ApiKeyRow) -> String {
    format!("{}...", row.prefix)
}

/// Resolve a presented key to its caller. Malformed, unknown and revoked
/// keys are all [`AuthError::Invalid`].
pub async fn verify(db: &Db, presented: Option<&str>) -> Result<Caller, AuthError> {
    let key = presented.ok_or(AuthError::Missing)?.trim();
    if key.is_empty() {
        return Err(AuthError::Missing);
    }
    let prefix = prefix_of(key).ok_or(AuthError::Invalid)?.to_owned();
    let presented_hash = hash(key);
    let candidates = db.call(move |c| Db::keys_by_prefix(c, &prefix)).await?;
    candidates
        .iter()
        .find(|row| bool::from(row.hash.ct_eq(&presented_hash)))
        .map(|row| Caller {
            key_id: row.id,
            admin: row.admin,
        })
        .ok_or(AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_has_expected_shape() {
        let key = generate().unwrap();
        assert_eq!(key.secret.len(), 3 + KEY_HEX);
        assert_eq!(prefix_of(&key.secret), Some(key.prefix.as_str()));
        assert_eq!(key.hash, hash(&key.secret));
    }

    #[test]
    fn prefix_of_rejects_malformed() {
        assert_eq!(prefix_of("ws_short"), None);
        assert_eq!(prefix_of(&format!("xx_{}", "a".repeat(48))), None);
        assert_eq!(prefix_of(&format!("ws_{}", "g".repeat(48))), None);
    }

    #[tokio::test]
    async fn verify_accepts_stored_and_rejects_others() {
        let (_dir, db) = crate::db::open_temp();
        let key = generate().unwrap();
        let (p, h) = (key.prefix.clone(), key.hash.clone());
        db.call(move |c| Db::insert_key(c, None, &p, &h, false, false))
            .await
            .unwrap();
        let other = generate().unwrap();
        let ok = verify(&db, Some(&key.secret)).await.unwrap();
        let bad = verify(&db, Some(&other.secret)).await.unwrap_err();
        let missing = verify(&db, None).await.unwrap_err();
        assert!(!ok.admin);
        assert!(matches!(bad, AuthError::Invalid));
        assert!(matches!(missing, AuthError::Missing));
    }
}
