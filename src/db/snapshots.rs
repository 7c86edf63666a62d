//! Snapshot rows: one per Btrfs snapshot of a sandbox's workspace.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{now, query_err, select, Db, DbError};

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    pub id: i64,
    pub sandbox_id: i64,
    pub name: String,
    /// `initial`, `command`, `wipe`, `named` or `recovered`.
    pub kind: String,
    pub command: Option<String>,
    pub exit_code: Option<i32>,
    pub description: Option<String>,
    pub include_memory: bool,
    pub checksum: Option<String>,
    /// The row survived but its subvolume was not found at startup.
    pub missing: bool,
    pub created_at: String,
    pub created_ms: i64,
}

/// Fields of a snapshot row to insert.
#[derive(Debug, Clone, Default)]
pub struct NewSnapshot {
    pub name: String,
    pub kind: &'static str,
    pub command: Option<String>,
    pub exit_code: Option<i32>,
    pub description: Option<String>,
    pub include_memory: bool,
    pub checksum: Option<String>,
    /// Creation time in unix ms; `None` = now.
    pub created_ms: Option<i64>,
}

const COLUMNS: &str = "id, sandbox_id, name, kind, command, exit_code, description, \
                       include_memory, checksum, missing, created_at, created_ms";

fn from_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
    Ok(SnapshotRow {
        id: r.get(0)?,
        sandbox_id: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        command: r.get(4)?,
        exit_code: r.get(5)?,
        description: r.get(6)?,
        include_memory: r.get(7)?,
        checksum: r.get(8)?,
        missing: r.get(9)?,
        created_at: r.get(10)?,
        created_ms: r.get(11)?,
    })
}

impl Db {
    pub fn insert_snapshot(
        conn: &Connection,
        sandbox_id: i64,
        s: &NewSnapshot,
    ) -> Result<SnapshotRow, DbError> {
        let (now_text, now_ms) = now();
        let (created_at, created_ms) = match s.created_ms {
            Some(ms) => (ms_to_text(ms), ms),
            None => (now_text, now_ms),
        };
        conn.prepare_cached(
            "INSERT INTO snapshots (sandbox_id, name, kind, command, exit_code, description, \
             include_memory, checksum, created_at, created_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut st| {
            st.execute(params![
                sandbox_id,
                s.name,
                s.kind,
                s.command,
                s.exit_code,
                s.description,
                s.include_memory,
                s.checksum,
                created_at,
                created_ms
            ])
        })
        .map_err(query_err("insert snapshot", || {
            format!("snapshot \"{}\"", s.name)
        }))?;
        let id = conn.last_insert_rowid();
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM snapshots WHERE id = ?1"),
            [id],
            from_row,
        )
        .map_err(query_err("insert snapshot", String::new))
    }

    /// Snapshots of a sandbox, oldest first.
    pub fn list_snapshots(conn: &Connection, sandbox_id: i64) -> Result<Vec<SnapshotRow>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM snapshots WHERE sandbox_id = ?1 ORDER BY created_ms, id"
        );
        select(conn, "list snapshots", &sql, [sandbox_id], from_row)
    }

    pub fn snapshot_by_name(
        conn: &Connection,
        sandbox_id: i64,
        name: &str,
    ) -> Result<Option<SnapshotRow>, DbError> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM snapshots WHERE sandbox_id = ?1 AND name = ?2"),
            params![sandbox_id, name],
            from_row,
        )
        .optional()
        .map_err(query_err("snapshot by name", String::new))
    }

    /// Largest `cmd_<ms>` timestamp used by this sandbox, to keep names unique
    /// across restarts.
    /// Snapshot rows of all sandboxes.
    pub fn count_snapshots(conn: &Connection) -> Result<u64, DbError> {
        conn.query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0))
            .map_err(query_err("count snapshots", String::new))
    }

    pub fn last_command_ms(conn: &Connection, sandbox_id: i64) -> Result<i64, DbError> {
        conn.query_row(
            "SELECT COALESCE(MAX(CAST(substr(name, 5) AS INTEGER)), 0) FROM snapshots \
             WHERE sandbox_id = ?1 AND name GLOB 'cmd_[0-9]*'",
            [sandbox_id],
            |r| r.get(0),
        )
        .map_err(query_err("last command ms", String::new))
    }

    pub fn delete_snapshot_row(conn: &Connection, id: i64) -> Result<(), DbError> {
        conn.execute("DELETE FROM snapshots WHERE id = ?1", [id])
            .map_err(query_err("delete snapshot", String::new))?;
        Ok(())
    }

    pub fn mark_snapshot_missing(conn: &Connection, id: i64) -> Result<(), DbError> {
        conn.execute("UPDATE snapshots SET missing = 1 WHERE id = ?1", [id])
            .map_err(query_err("mark snapshot missing", String::new))?;
        Ok(())
    }
}

fn ms_to_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .map(super::format_time)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(db: &Db) -> i64 {
        db.call_sync(|c| {
            let k = Db::insert_key(c, None, "ws_x", b"h", false, false)?.unwrap();
            Db::insert_sandbox(c, "sb", k.id, "namespace")
        })
        .unwrap()
        .id
    }

    #[test]
    fn last_command_ms_picks_largest() {
        let (_dir, db) = super::super::open_temp();
        let sb = sandbox(&db);
        for name in ["initial", "cmd_1700000000001", "cmd_1700000000009", "mine"] {
            let s = NewSnapshot {
                name: name.into(),
                kind: "command",
                ..Default::default()
            };
            db.call_sync(|c| Db::insert_snapshot(c, sb, &s)).unwrap();
        }
        let last = db.call_sync(|c| Db::last_command_ms(c, sb)).unwrap();
        assert_eq!(last, 1_700_000_000_009);
    }

    #[test]
    fn insert_snapshot_duplicate_is_conflict() {
        let (_dir, db) = super::super::open_temp();
        let sb = sandbox(&db);
        let s = NewSnapshot {
            name: "x".into(),
            kind: "named",
            ..Default::default()
        };
        db.call_sync(|c| Db::insert_snapshot(c, sb, &s)).unwrap();
        let err = db
            .call_sync(|c| Db::insert_snapshot(c, sb, &s))
            .unwrap_err();
        assert!(matches!(err, DbError::Conflict { .. }), "{err}");
    }
}
