//! Counts for `/metrics`.

use rusqlite::Connection;

use super::{select, Db, DbError};

impl Db {
    /// `(status, count)` of every status some sandbox has.
    pub fn count_sandboxes_by_status(conn: &Connection) -> Result<Vec<(String, i64)>, DbError> {
        pairs(
            conn,
            "count sandboxes",
            "SELECT status, COUNT(*) FROM sandboxes GROUP BY status",
        )
    }

    /// `(sandbox name, snapshot count)` of every sandbox.
    pub fn count_snapshots_per_sandbox(conn: &Connection) -> Result<Vec<(String, i64)>, DbError> {
        pairs(
            conn,
            "count snapshots",
            "SELECT s.name, COUNT(n.id) FROM sandboxes s \
             LEFT JOIN snapshots n ON n.sandbox_id = s.id GROUP BY s.id",
        )
    }
}

fn pairs(conn: &Connection, op: &'static str, sql: &str) -> Result<Vec<(String, i64)>, DbError> {
    select(conn, op, sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
}
