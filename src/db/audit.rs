//! The audit log: one row per state-changing request. Rows name the owner
//! by key id, never by key; `details` is JSON without secrets or command
//! output. Retention (age and row count) is applied on every insert, in the
//! same transaction.

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, Row};
use serde::Serialize;

use super::{now, query_err, select, Db, DbError};

/// The status of a row written before its request was answered: the
/// service stopped in between, so the change may or may not have been
/// committed (see `api/audit.rs`).
pub const PENDING: u16 = 0;

/// A row to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAudit {
    pub action_type: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub key_id: Option<i64>,
    pub source_ip: Option<String>,
    pub status: u16,
    pub request_id: Option<String>,
    /// A JSON object (already serialised).
    pub details: String,
}

/// A stored row, as `GET /audit-logs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: i64,
    pub timestamp: String,
    pub action_type: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub user_id: Option<i64>,
    pub source_ip: Option<String>,
    pub status: u16,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// How long rows are kept: older than `days` or beyond the newest `rows`
/// are deleted (0 = no limit of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub days: u64,
    pub rows: u64,
}

/// Query filters; times are the stored text form, compared as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub action_type: Option<String>,
    pub resource_type: Option<String>,
    pub key_id: Option<i64>,
    pub limit: u32,
    pub offset: u32,
}

const COLUMNS: &str = "id, timestamp, action_type, resource_type, resource_id, key_id, \
                       source_ip, status, request_id, details";

fn from_row(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    let details: String = r.get(9)?;
    Ok(AuditRow {
        id: r.get(0)?,
        timestamp: r.get(1)?,
        action_type: r.get(2)?,
        resource_type: r.get(3)?,
        resource_id: r.get(4)?,
        user_id: r.get(5)?,
        source_ip: r.get(6)?,
        status: r.get(7)?,
        request_id: r.get(8)?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
    })
}

impl Db {
    /// Append `row` and apply `retention`, in one transaction.
    pub fn insert_audit(
        conn: &Connection,
        row: &NewAudit,
        retention: Retention,
    ) -> Result<i64, DbError> {
        let err = || query_err("insert audit row", String::new);
        let tx = conn.unchecked_transaction().map_err(err())?;
        let (timestamp, ms) = now();
        tx.execute(
            "INSERT INTO audit_log (timestamp, ts_ms, action_type, resource_type, resource_id, \
             key_id, source_ip, status, request_id, details) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                timestamp,
                ms,
                row.action_type,
                row.resource_type,
                row.resource_id,
                row.key_id,
                row.source_ip,
                row.status,
                row.request_id,
                row.details
            ],
        )
        .map_err(err())?;
        let id = tx.last_insert_rowid();
        prune(&tx, id, ms, retention)?;
        tx.commit().map_err(err())?;
        Ok(id)
    }

    /// Give a pending row (status [`PENDING`]) its outcome: the answer's
    /// status, and the owner and resource learnt while answering.
    pub fn finish_audit(conn: &Connection, id: i64, row: &NewAudit) -> Result<(), DbError> {
        conn.execute(
            "UPDATE audit_log SET action_type = ?2, resource_id = ?3, key_id = ?4, status = ?5 \
             WHERE id = ?1",
            params![id, row.action_type, row.resource_id, row.key_id, row.status],
        )
        .map_err(query_err("finish audit row", String::new))?;
        Ok(())
    }

    /// Rows matching `filter`, newest first, and the total that match.
    pub fn query_audit(
        conn: &Connection,
        filter: &AuditFilter,
    ) -> Result<(Vec<AuditRow>, i64), DbError> {
        let err = || query_err("query audit log", String::new);
        let (clause, mut args) = where_clause(filter);
        let total: i64 = conn
            .query_row(
                &format!("SELECT COUNT(*) FROM audit_log{clause}"),
                params_from_iter(args.iter()),
                |r| r.get(0),
            )
            .map_err(err())?;
        args.push(SqlValue::Integer(filter.limit.into()));
        args.push(SqlValue::Integer(filter.offset.into()));
        let sql =
            format!("SELECT {COLUMNS} FROM audit_log{clause} ORDER BY id DESC LIMIT ? OFFSET ?");
        let rows = select(
            conn,
            "query audit log",
            &sql,
            params_from_iter(args.iter()),
            from_row,
        )?;
        Ok((rows, total))
    }
}

impl Db {
    /// Active keys created before `cutoff` with no audit row since then
    /// (the audit log records state-changing requests only).
    pub fn keys_unused_since(conn: &Connection, cutoff: &str) -> Result<Vec<i64>, DbError> {
        let sql = "SELECT k.id FROM api_keys k WHERE k.kind = 'key' AND k.revoked_at IS NULL \
            AND k.created_at < ?1 AND NOT EXISTS (SELECT 1 FROM audit_log a \
            WHERE a.key_id = k.id AND a.timestamp >= ?1) ORDER BY k.id";
        select(conn, "unused keys", sql, [cutoff], |r| r.get(0))
    }
}

/// ` WHERE ...` (or nothing) and its positional arguments.
fn where_clause(f: &AuditFilter) -> (String, Vec<SqlValue>) {
    let text = |v: &Option<String>| v.clone().map(SqlValue::Text);
    let conditions = [
        ("timestamp >= ?", text(&f.start_time)),
        ("timestamp <= ?", text(&f.end_time)),
        ("action_type = ?", text(&f.action_type)),
        ("resource_type = ?", text(&f.resource_type)),
        ("key_id = ?", f.key_id.map(SqlValue::Integer)),
    ];
    let (sql, args): (Vec<&str>, Vec<SqlValue>) = conditions
        .into_iter()
        .filter_map(|(sql, arg)| arg.map(|a| (sql, a)))
        .unzip();
    if sql.is_empty() {
        return (String::new(), args);
    }
    (format!(" WHERE {}", sql.join(" AND ")), args)
}

fn prune(conn: &Connection, newest_id: i64, now_ms: i64, r: Retention) -> Result<(), DbError> {
    let err = || query_err("prune audit log", String::new);
    if r.days > 0 {
        let cutoff = now_ms.saturating_sub((r.days as i64).saturating_mul(86_400_000));
        conn.execute("DELETE FROM audit_log WHERE ts_ms < ?1", [cutoff])
            .map_err(err())?;
    }
    if r.rows > 0 {
        let keep_from = newest_id.saturating_sub(r.rows as i64);
        conn.execute("DELETE FROM audit_log WHERE id <= ?1", [keep_from])
            .map_err(err())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(action: &str, key_id: i64) -> NewAudit {
        NewAudit {
            action_type: action.into(),
            resource_type: "sandbox".into(),
            resource_id: Some("box".into()),
            key_id: Some(key_id),
            source_ip: None,
            status: 200,
            request_id: None,
            details: "{}".into(),
        }
    }

    const KEEP_ALL: Retention = Retention { days: 0, rows: 0 };

    #[test]
    fn query_audit_filters_by_owner_and_action() {
        let (_dir, db) = super::super::open_temp();
        for (action, key) in [("vm_create", 1), ("vm_run", 1), ("vm_run", 2)] {
            db.call_sync(|c| Db::insert_audit(c, &row(action, key), KEEP_ALL))
                .unwrap();
        }
        let filter = AuditFilter {
            action_type: Some("vm_run".into()),
            key_id: Some(1),
            limit: 10,
            ..Default::default()
        };

        let (rows, total) = db.call_sync(|c| Db::query_audit(c, &filter)).unwrap();

        assert_eq!((rows.len(), total, rows[0].user_id), (1, 1, Some(1)));
    }

    #[test]
    fn insert_audit_keeps_only_the_newest_rows() {
        let (_dir, db) = super::super::open_temp();
        let retention = Retention { days: 0, rows: 2 };
        for action in ["a", "b", "c"] {
            db.call_sync(|c| Db::insert_audit(c, &row(action, 1), retention))
                .unwrap();
        }
        let filter = AuditFilter {
            limit: 10,
            ..Default::default()
        };

        let (rows, total) = db.call_sync(|c| Db::query_audit(c, &filter)).unwrap();

        let actions: Vec<&str> = rows.iter().map(|r| r.action_type.as_str()).collect();
        assert_eq!((actions, total), (vec!["c", "b"], 2));
    }
}
