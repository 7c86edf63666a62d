//! Sandbox rows.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{now, query_err, select, Db, DbError};

/// Lifecycle state of a sandbox as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxStatus {
    /// Row written, storage/runtime not ready yet.
    Creating,
    Running,
    /// Stopped on request: no process runs; workspace and snapshots are kept.
    Stopped,
    /// The runtime died or could not be re-attached; see `status_reason`.
    Failed,
    /// Deletion started; startup recovery finishes it.
    Deleting,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Creating => "creating",
            SandboxStatus::Running => "running",
            SandboxStatus::Stopped => "stopped",
            SandboxStatus::Failed => "failed",
            SandboxStatus::Deleting => "deleting",
        }
    }

    fn parse(s: &str) -> SandboxStatus {
        match s {
            "creating" => SandboxStatus::Creating,
            "running" => SandboxStatus::Running,
            "stopped" => SandboxStatus::Stopped,
            "deleting" => SandboxStatus::Deleting,
            _ => SandboxStatus::Failed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SandboxRow {
    pub id: i64,
    pub name: String,
    pub owner_key_id: i64,
    pub runtime: String,
    pub status: SandboxStatus,
    pub status_reason: Option<String>,
    pub runtime_state: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
    /// When the sandbox last became `running`.
    pub started_at: Option<String>,
    pub spec: SandboxSpec,
    /// The memory snapshot a restore in progress is bringing back; still
    /// set at startup when a crash cut that restore off.
    pub restoring_memory: Option<String>,
}

/// What the sandbox was asked to be (MicroVM Sandbox API fields); `None`
/// sizes mean the configured defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxSpec {
    pub os_type: String,
    pub template: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
}

const COLUMNS: &str = "id, name, owner_key_id, runtime, status, status_reason, runtime_state, \
     created_at, updated_at, started_at, os_type, template, vcpus, memory_mb, disk_gb, \
     restoring_memory";

fn from_row(r: &Row<'_>) -> rusqlite::Result<SandboxRow> {
    let status: String = r.get(4)?;
    let state: String = r.get(6)?;
    Ok(SandboxRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner_key_id: r.get(2)?,
        runtime: r.get(3)?,
        status: SandboxStatus::parse(&status),
        status_reason: r.get(5)?,
        runtime_state: serde_json::from_str(&state).unwrap_or(serde_json::Value::Null),
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        started_at: r.get(9)?,
        spec: SandboxSpec {
            os_type: r.get(10)?,
            template: r.get(11)?,
            vcpus: r.get(12)?,
            memory_mb: r.get(13)?,
            disk_gb: r.get(14)?,
        },
        restoring_memory: r.get(15)?,
    })
}

impl Db {
    /// Insert a sandbox in `creating` state. A taken name is a Conflict.
    pub fn insert_sandbox(
        conn: &Connection,
        name: &str,
        owner_key_id: i64,
        runtime: &str,
    ) -> Result<SandboxRow, DbError> {
        let (at, _) = now();
        conn.execute(
            "INSERT INTO sandboxes (name, owner_key_id, runtime, status, created_at, updated_at) \
             VALUES (?1, ?2, ?3, 'creating', ?4, ?4)",
            params![name, owner_key_id, runtime, at],
        )
        .map_err(query_err("insert sandbox", || {
            format!("sandbox \"{name}\"")
        }))?;
        let id = conn.last_insert_rowid();
        Db::sandbox_by_id(conn, id)?.ok_or(DbError::Query {
            op: "insert sandbox",
            source: rusqlite::Error::QueryReturnedNoRows,
        })
    }

    /// Sandboxes `owner` has (in any state but `deleting`).
    pub fn count_sandboxes_of(conn: &Connection, owner: i64) -> Result<u64, DbError> {
        conn.query_row(
            "SELECT COUNT(*) FROM sandboxes WHERE owner_key_id = ?1 AND status != 'deleting'",
            [owner],
            |r| r.get(0),
        )
        .map_err(query_err("count sandboxes", String::new))
    }

    pub fn sandbox_by_id(conn: &Connection, id: i64) -> Result<Option<SandboxRow>, DbError> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()
        .map_err(query_err("sandbox by id", String::new))
    }

    pub fn sandbox_by_name(conn: &Connection, name: &str) -> Result<Option<SandboxRow>, DbError> {
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sandboxes WHERE name = ?1"))
            .and_then(|mut s| s.query_row([name], from_row).optional())
            .map_err(query_err("sandbox by name", String::new))
    }

    /// All sandboxes, or only those owned by `owner`.
    pub fn list_sandboxes(
        conn: &Connection,
        owner: Option<i64>,
    ) -> Result<Vec<SandboxRow>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM sandboxes WHERE ?1 IS NULL OR owner_key_id = ?1 ORDER BY id"
        );
        select(conn, "list sandboxes", &sql, [owner], from_row)
    }

    pub fn set_sandbox_status(
        conn: &Connection,
        id: i64,
        status: SandboxStatus,
        reason: Option<&str>,
    ) -> Result<(), DbError> {
        let (at, _) = now();
        conn.execute(
            "UPDATE sandboxes SET status = ?1, status_reason = ?2, updated_at = ?3, \
             started_at = CASE WHEN ?1 = 'running' AND status != 'running' THEN ?3 ELSE started_at END \
             WHERE id = ?4",
            params![status.as_str(), reason, at, id],
        )
        .map_err(query_err("set sandbox status", String::new))?;
        Ok(())
    }

    /// Record (`Some`) or clear (`None`) the memory snapshot sandbox `id` is
    /// being restored to ([`SandboxRow::restoring_memory`]).
    pub fn set_restoring_memory(
        conn: &Connection,
        id: i64,
        snapshot: Option<&str>,
    ) -> Result<(), DbError> {
        conn.execute(
            "UPDATE sandboxes SET restoring_memory = ?1 WHERE id = ?2",
            params![snapshot, id],
        )
        .map_err(query_err("set restoring memory", String::new))?;
        Ok(())
    }

    pub fn set_runtime_state(
        conn: &Connection,
        id: i64,
        state: &serde_json::Value,
    ) -> Result<(), DbError> {
        let (at, _) = now();
        conn.execute(
            "UPDATE sandboxes SET runtime_state = ?1, updated_at = ?2 WHERE id = ?3",
            params![state.to_string(), at, id],
        )
        .map_err(query_err("set runtime state", String::new))?;
        Ok(())
    }

    /// Record what the sandbox was asked to be (at creation, or a resize).
    pub fn set_sandbox_spec(conn: &Connection, id: i64, spec: &SandboxSpec) -> Result<(), DbError> {
        conn.execute(
            "UPDATE sandboxes SET os_type = ?1, template = ?2, vcpus = ?3, memory_mb = ?4, \
             disk_gb = ?5 WHERE id = ?6",
            params![
                spec.os_type,
                spec.template,
                spec.vcpus,
                spec.memory_mb,
                spec.disk_gb,
                id
            ],
        )
        .map_err(query_err("set sandbox spec", String::new))?;
        Ok(())
    }

    /// Bump `updated_at` (after a run, restore or wipe).
    pub fn touch_sandbox(conn: &Connection, id: i64) -> Result<(), DbError> {
        let (at, _) = now();
        conn.execute(
            "UPDATE sandboxes SET updated_at = ?1 WHERE id = ?2",
            params![at, id],
        )
        .map_err(query_err("touch sandbox", String::new))?;
        Ok(())
    }

    /// Delete a sandbox row and (by cascade) its snapshot rows.
    pub fn delete_sandbox(conn: &Connection, id: i64) -> Result<(), DbError> {
        conn.execute("DELETE FROM sandboxes WHERE id = ?1", [id])
            .map_err(query_err("delete sandbox", String::new))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(db: &Db) -> i64 {
        db.call_sync(|c| Db::insert_key(c, None, "ws_x", b"h", false, false))
            .unwrap()
            .unwrap()
            .id
    }

    #[test]
    fn insert_sandbox_duplicate_name_is_conflict() {
        let (_dir, db) = super::super::open_temp();
        let owner = key(&db);
        db.call_sync(|c| Db::insert_sandbox(c, "a", owner, "namespace"))
            .unwrap();
        let err = db
            .call_sync(|c| Db::insert_sandbox(c, "a", owner, "namespace"))
            .unwrap_err();
        assert!(matches!(err, DbError::Conflict { .. }), "{err}");
    }

    #[test]
    fn list_sandboxes_filters_by_owner() {
        let (_dir, db) = super::super::open_temp();
        let (a, b) = (key(&db), key(&db));
        db.call_sync(|c| Db::insert_sandbox(c, "one", a, "namespace"))
            .unwrap();
        db.call_sync(|c| Db::insert_sandbox(c, "two", b, "namespace"))
            .unwrap();
        let mine = db.call_sync(|c| Db::list_sandboxes(c, Some(a))).unwrap();
        let all = db.call_sync(|c| Db::list_sandboxes(c, None)).unwrap();
        assert_eq!(
            (mine.len(), mine[0].name.as_str(), all.len()),
            (1, "one", 2)
        );
    }
}
