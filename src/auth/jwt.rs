//! JWTs for users of the MicroVM Sandbox API: HS256, signed with a secret
//! generated at first use and kept in `<data_dir>/jwt.secret` (mode 0600).
//! A token names the user; every request re-reads the user row, so a token
//! of a deleted user (or one whose role changed) does not outlive the row.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};

/// Bytes of the signing secret.
const SECRET_BYTES: usize = 32;
const SECRET_FILE: &str = "jwt.secret";

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("cannot read or create the JWT secret {path}")]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the JWT secret {path} is too short")]
    ShortSecret { path: PathBuf },
    #[error("cannot read the OS random number generator")]
    Rng(#[source] rand::rand_core::OsError),
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("cannot sign a token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    pub username: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signing and verifying keys from one secret.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Tokens {
    /// Load `<data_dir>/jwt.secret`, creating it (0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Tokens, JwtError> {
        let path = data_dir.join(SECRET_FILE);
        let secret = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_secret(&path)?,
            Err(source) => return Err(JwtError::Secret { path, source }),
        };
        if secret.len() < SECRET_BYTES {
            return Err(JwtError::ShortSecret { path });
        }
        Ok(Tokens::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for user `id` valid for `ttl_secs` from now.
    pub fn issue(&self, id: i64, username: &str, ttl_secs: u64) -> Result<String, JwtError> {
        let iat = unix_now();
        self.sign(&Claims {
            sub: id.to_string(),
            username: username.to_owned(),
            iat,
            exp: iat + ttl_secs,
        })
    }

    /// Sign any claims (tests make expired tokens with it).
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(JwtError::Sign)
    }

    /// Check signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                _ => JwtError::Invalid(e),
            })
    }
}

/// Whether `token` is shaped like a JWT (three dot-separated parts) rather
/// than one of our API keys.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

fn create_secret(path: &Path) -> Result<Vec<u8>, JwtError> {
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut secret)
        .map_err(JwtError::Rng)?;
    let err = |source| JwtError::Secret {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(&secret).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(secret)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_own_token() {
        let tokens = Tokens::from_secret(&[7u8; 32]);
        let token = tokens.issue(3, "ann", 60).unwrap();
        assert_eq!(tokens.verify(&token).unwrap().sub, "3");
    }

    #[test]
    fn verify_rejects_other_secret() {
        let token = Tokens::from_secret(&[7u8; 32]).issue(3, "ann", 60).unwrap();
        let err = Tokens::from_secret(&[8u8; 32]).verify(&token).unwrap_err();
        assert!(matches!(err, JwtError::Invalid(_)), "{err}");
    }

    #[test]
    fn load_or_create_makes_a_private_secret_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = Tokens::load_or_create(dir.path())
            .unwrap()
            .issue(1, "a", 60)
            .unwrap();
        let again = Tokens::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!((again.verify(&token).is_ok(), mode & 0o777), (true, 0o600));
    }
}
