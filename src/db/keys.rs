//! API key rows. Only the SHA-256 hash of a key is stored, plus a short
//! prefix to find candidate rows quickly.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{now, query_err, select, Db, DbError};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub id: i64,
    pub name: Option<String>,
    pub prefix: String,
    pub hash: Vec<u8>,
    pub admin: bool,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

const COLUMNS: &str = "id, name, prefix, hash, admin, created_at, revoked_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRow> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        name: r.get(1)?,
        prefix: r.get(2)?,
        hash: r.get(3)?,
        admin: r.get(4)?,
        created_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

impl Db {
    pub fn count_active_keys(conn: &Connection) -> Result<i64, DbError> {
        conn.query_row(
            "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL AND kind = 'key'",
            [],
            |r| r.get(0),
        )
        .map_err(query_err("count keys", String::new))
    }

    /// Insert a key. When `only_if_none_exist`, the insert happens only if
    /// no active key exists (checked in the same transaction) and returns
    /// `Ok(None)` otherwise — the bootstrap rule of `POST /api-keys`.
    pub fn insert_key(
        conn: &Connection,
        name: Option<&str>,
        prefix: &str,
        hash: &[u8],
        admin: bool,
        only_if_none_exist: bool,
    ) -> Result<Option<ApiKeyRow>, DbError> {
        let err = || query_err("insert key", || "api key".into());
        let tx = conn.unchecked_transaction().map_err(err())?;
        if only_if_none_exist && Db::count_active_keys(&tx)? > 0 {
            return Ok(None);
        }
        let (created_at, _) = now();
        tx.execute(
            "INSERT INTO api_keys (name, prefix, hash, admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, prefix, hash, admin, created_at],
        )
        .map_err(err())?;
        let id = tx.last_insert_rowid();
        let row = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"),
                [id],
                from_row,
            )
            .map_err(err())?;
        tx.commit().map_err(err())?;
        Ok(Some(row))
    }

    /// Active keys whose prefix matches.
    pub fn keys_by_prefix(conn: &Connection, prefix: &str) -> Result<Vec<ApiKeyRow>, DbError> {
        let sql = format!(
                "SELECT {COLUMNS} FROM api_keys WHERE prefix = ?1 AND revoked_at IS NULL AND kind = 'key'"
        );
        select(conn, "keys by prefix", &sql, [prefix], from_row)
    }

    pub fn list_keys(conn: &Connection) -> Result<Vec<ApiKeyRow>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE kind = 'key' ORDER BY id");
        select(conn, "list keys", &sql, [], from_row)
    }

    /// Revoke a key; `Ok(false)` when no active key has that id.
    pub fn revoke_key(conn: &Connection, id: i64) -> Result<bool, DbError> {
        let (at, _) = now();
        let n = conn
            .execute(
                "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL AND kind = 'key'",
                params![at, id],
            )
            .map_err(query_err("revoke key", String::new))?;
        Ok(n == 1)
    }

    pub fn key_by_id(conn: &Connection, id: i64) -> Result<Option<ApiKeyRow>, DbError> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()
        .map_err(query_err("key by id", String::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_key_bootstrap_only_once() {
        let (_dir, db) = super::super::open_temp();
        let first = db
            .call_sync(|c| Db::insert_key(c, Some("a"), "ws_1", b"h1", true, true))
            .unwrap();
        let second = db
            .call_sync(|c| Db::insert_key(c, Some("b"), "ws_2", b"h2", true, true))
            .unwrap();
        assert_eq!(first.map(|k| k.name), Some(Some("a".to_string())));
        assert_eq!(second, None);
    }

    #[test]
    fn revoke_key_hides_it_from_prefix_lookup() {
        let (_dir, db) = super::super::open_temp();
        let key = db
            .call_sync(|c| Db::insert_key(c, None, "ws_p", b"h", false, false))
            .unwrap()
            .unwrap();
        let revoked = db.call_sync(|c| Db::revoke_key(c, key.id)).unwrap();
        let found = db.call_sync(|c| Db::keys_by_prefix(c, "ws_p")).unwrap();
        assert_eq!((revoked, found.len()), (true, 0));
    }
}
