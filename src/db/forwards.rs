//! Port-forward rows: a host port that leads to a port inside a sandbox.

use rusqlite::{params, Connection, Row};

use super::{now, query_err, select, Db, DbError};

#[derive(Debug, Clone, PartialEq)]
pub struct ForwardRow {
    pub id: i64,
    pub sandbox_id: i64,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: String,
    pub description: Option<String>,
    pub created_at: String,
}

const COLUMNS: &str = "id, sandbox_id, host_port, guest_port, protocol, description, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ForwardRow> {
    Ok(ForwardRow {
        id: r.get(0)?,
        sandbox_id: r.get(1)?,
        host_port: r.get(2)?,
        guest_port: r.get(3)?,
        protocol: r.get(4)?,
        description: r.get(5)?,
        created_at: r.get(6)?,
    })
}

impl Db {
    /// Record a forward; `Conflict` when the host port is already recorded.
    pub fn insert_forward(
        conn: &Connection,
        sandbox_id: i64,
        host_port: u16,
        guest_port: u16,
        description: Option<&str>,
    ) -> Result<ForwardRow, DbError> {
        let (created_at, _) = now();
        conn.execute(
            "INSERT INTO port_forwards (sandbox_id, host_port, guest_port, protocol, \
             description, created_at) VALUES (?1, ?2, ?3, 'tcp', ?4, ?5)",
            params![sandbox_id, host_port, guest_port, description, created_at],
        )
        .map_err(query_err("insert port forward", || {
            format!("a port forward from host port {host_port}")
        }))?;
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM port_forwards WHERE id = ?1"),
            [conn.last_insert_rowid()],
            from_row,
        )
        .map_err(query_err("insert port forward", String::new))
    }

    /// Forwards of one sandbox, or of all sandboxes (`None`), by host port.
    pub fn list_forwards(
        conn: &Connection,
        sandbox_id: Option<i64>,
    ) -> Result<Vec<ForwardRow>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM port_forwards WHERE ?1 IS NULL OR sandbox_id = ?1 \
                 ORDER BY host_port"
        );
        select(conn, "list port forwards", &sql, [sandbox_id], from_row)
    }

    /// Delete a sandbox's forward; whether there was one.
    pub fn delete_forward(
        conn: &Connection,
        sandbox_id: i64,
        host_port: u16,
    ) -> Result<bool, DbError> {
        conn.execute(
            "DELETE FROM port_forwards WHERE sandbox_id = ?1 AND host_port = ?2",
            params![sandbox_id, host_port],
        )
        .map(|n| n > 0)
        .map_err(query_err("delete port forward", String::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with_sandbox() -> (tempfile::TempDir, Db, i64) {
        let (dir, db) = super::super::open_temp();
        let key = db
            .call_sync(|c| Db::insert_key(c, None, "ws_x", b"h", false, false))
            .unwrap()
            .unwrap()
            .id;
        let sb = db
            .call_sync(|c| Db::insert_sandbox(c, "a", key, "namespace"))
            .unwrap()
            .id;
        (dir, db, sb)
    }

    #[test]
    fn insert_forward_twice_on_one_host_port_is_conflict() {
        let (_dir, db, sb) = db_with_sandbox();
        db.call_sync(|c| Db::insert_forward(c, sb, 8080, 80, Some("web")))
            .unwrap();

        let err = db
            .call_sync(|c| Db::insert_forward(c, sb, 8080, 81, None))
            .unwrap_err();

        assert!(matches!(err, DbError::Conflict { .. }), "{err:?}");
    }

    #[test]
    fn list_forwards_filters_by_sandbox_and_delete_removes() {
        let (_dir, db, sb) = db_with_sandbox();
        db.call_sync(|c| Db::insert_forward(c, sb, 9001, 1, None))
            .unwrap();
        db.call_sync(|c| Db::insert_forward(c, sb, 9000, 2, None))
            .unwrap();

        let ports: Vec<u16> = db
            .call_sync(|c| Db::list_forwards(c, Some(sb)))
            .unwrap()
            .iter()
            .map(|f| f.host_port)
            .collect();
        assert_eq!(ports, vec![9000, 9001]);
        assert!(db.call_sync(|c| Db::delete_forward(c, sb, 9000)).unwrap());
        assert!(!db.call_sync(|c| Db::delete_forward(c, sb, 9000)).unwrap());
        assert!(db
            .call_sync(|c| Db::list_forwards(c, Some(sb + 1)))
            .unwrap()
            .is_empty());
    }
}
