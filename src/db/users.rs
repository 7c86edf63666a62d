//! User rows (the MicroVM Sandbox API's accounts). Each user has an owner
//! row in `api_keys` (kind `user`, no usable key), so a user and an API key
//! are both owners of sandboxes through the same `owner_key_id`.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{now, query_err, Db, DbError};

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    pub admin: bool,
    /// The owner identity (an `api_keys` row of kind `user`).
    pub owner_id: i64,
    pub created_at: String,
}

const COLUMNS: &str = "u.id, u.username, u.password_hash, u.role, u.owner_id, u.created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<UserRow> {
    let role: String = r.get(3)?;
    Ok(UserRow {
        id: r.get(0)?,
        username: r.get(1)?,
        password_hash: r.get(2)?,
        admin: role == "admin",
        owner_id: r.get(4)?,
        created_at: r.get(5)?,
    })
}

impl Db {
    /// Whether any admin (key or user) exists: the first admin may bootstrap.
    pub fn any_admin(conn: &Connection) -> Result<bool, DbError> {
        conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM api_keys WHERE admin = 1 AND revoked_at IS NULL)",
            [],
            |r| r.get(0),
        )
        .map_err(query_err("any admin", String::new))
    }

    /// Insert a user and its owner row in one transaction. A taken username
    /// is a Conflict. When `needs_no_admin`, the insert happens only while no
    /// admin exists (checked in the same transaction), else `Ok(None)`.
    pub fn insert_user(
        conn: &Connection,
        username: &str,
        password_hash: &str,
        admin: bool,
        needs_no_admin: bool,
    ) -> Result<Option<UserRow>, DbError> {
        let err = || query_err("insert user", || format!("user \"{username}\""));
        let tx = conn.unchecked_transaction().map_err(err())?;
        if needs_no_admin && Db::any_admin(&tx)? {
            return Ok(None);
        }
        let (at, _) = now();
        tx.execute(
            "INSERT INTO api_keys (name, prefix, hash, admin, created_at, kind) \
             VALUES (?1, '', x'', ?2, ?3, 'user')",
            params![format!("user:{username}"), admin, at],
        )
        .map_err(err())?;
        let owner = tx.last_insert_rowid();
        let role = if admin { "admin" } else { "user" };
        tx.execute(
            "INSERT INTO users (username, password_hash, role, owner_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![username, password_hash, role, owner, at],
        )
        .map_err(err())?;
        let row = Db::user_by_name(&tx, username)?;
        tx.commit().map_err(err())?;
        Ok(row)
    }

    pub fn user_by_name(conn: &Connection, username: &str) -> Result<Option<UserRow>, DbError> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM users u WHERE u.username = ?1"),
            [username],
            from_row,
        )
        .optional()
        .map_err(query_err("user by name", String::new))
    }

    pub fn user_by_id(conn: &Connection, id: i64) -> Result<Option<UserRow>, DbError> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM users u WHERE u.id = ?1"),
            [id],
            from_row,
        )
        .optional()
        .map_err(query_err("user by id", String::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_user_bootstraps_one_admin_only() {
        let (_dir, db) = super::super::open_temp();
        let first = db
            .call_sync(|c| Db::insert_user(c, "a", "h", true, true))
            .unwrap();
        let second = db
            .call_sync(|c| Db::insert_user(c, "b", "h", true, true))
            .unwrap();
        assert_eq!(
            (first.map(|u| u.admin), second),
            (Some(true), None::<UserRow>)
        );
    }

    #[test]
    fn insert_user_owner_row_is_not_a_key() {
        let (_dir, db) = super::super::open_temp();
        db.call_sync(|c| Db::insert_user(c, "a", "h", false, false))
            .unwrap();
        let keys = db.call_sync(Db::list_keys).unwrap();
        let active = db.call_sync(Db::count_active_keys).unwrap();
        assert_eq!((keys.len(), active), (0, 0));
    }

    #[test]
    fn insert_user_duplicate_is_conflict() {
        let (_dir, db) = super::super::open_temp();
        db.call_sync(|c| Db::insert_user(c, "a", "h", false, false))
            .unwrap();
        let err = db
            .call_sync(|c| Db::insert_user(c, "a", "h", false, false))
            .unwrap_err();
        assert!(matches!(err, DbError::Conflict { .. }), "{err}");
    }
}
