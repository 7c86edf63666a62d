//! SQLite metadata (rusqlite, WAL mode, versioned migrations).
//!
//! One connection behind a mutex: every statement here is sub-millisecond,
//! and callers run them on the blocking pool (`Db::call`). Times are stored
//! twice: `created_at` as the reference API's text form
//! (`YYYY-MM-DDTHH:MM:SS`, UTC) and `created_ms` for ordering.

mod audit;
mod forwards;
mod keys;
mod migrations;
mod sandboxes;
mod snapshots;
mod stats;
mod users;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use audit::{AuditFilter, AuditRow, NewAudit, Retention, PENDING as AUDIT_PENDING};
pub use forwards::ForwardRow;
pub use keys::ApiKeyRow;
pub use sandboxes::{SandboxRow, SandboxSpec, SandboxStatus};
pub use snapshots::{NewSnapshot, SnapshotRow};
pub use users::UserRow;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database migration to version {version} failed")]
    Migrate {
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("database query failed: {op}")]
    Query {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// A cloneable handle to the database.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let open_err = |source| DbError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrations::migrate(&mut conn)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&guard)
        })
        .await?
    }

    /// A trivial query: the database answers.
    pub fn ping(conn: &Connection) -> Result<(), DbError> {
        conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .map(drop)
            .map_err(query_err("ping", String::new))
    }

    /// Run `f` with the connection on the current thread (CLI, startup).
    pub fn call_sync<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }
}

/// Map a rusqlite error to [`DbError`], turning UNIQUE violations into
/// [`DbError::Conflict`].
/// Every row `sql` (a cached statement) selects with `params`, each mapped
/// by `row`; a failure is [`DbError::Query`] naming `op`.
fn select<T, P: rusqlite::Params>(
    conn: &Connection,
    op: &'static str,
    sql: &str,
    params: P,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, DbError> {
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(query_err(op, String::new))?;
    stmt.query_map(params, row)
        .and_then(|rows| rows.collect())
        .map_err(query_err(op, String::new))
}

fn query_err(
    op: &'static str,
    what: impl FnOnce() -> String,
) -> impl FnOnce(rusqlite::Error) -> DbError {
    move |source| match &source {
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            DbError::Conflict { what: what() }
        }
        _ => DbError::Query { op, source },
    }
}

/// Now as (`YYYY-MM-DDTHH:MM:SS` UTC, unix milliseconds).
pub fn now() -> (String, i64) {
    let now = time::OffsetDateTime::now_utc();
    let ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    (format_time(now), ms)
}

/// Format a time the way the reference API does (`2024-12-09T19:30:00`).
pub fn format_time(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) fn open_temp() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.db")).unwrap();
    (dir, db)
}
