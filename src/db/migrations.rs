//! Versioned schema migrations, tracked in `PRAGMA user_version`. Each step
//! runs in its own transaction; never edit a released step, add a new one.

use rusqlite::Connection;

use super::DbError;

const MIGRATIONS: &[&str] = &[
    // 1: keys, sandboxes, snapshots
    r#"
    CREATE TABLE api_keys (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        name        TEXT,
        prefix      TEXT NOT NULL,
        hash        BLOB NOT NULL,
        admin       INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL,
        revoked_at  TEXT
    );
    CREATE INDEX api_keys_prefix ON api_keys(prefix);
    CREATE TABLE sandboxes (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT NOT NULL UNIQUE,
        owner_key_id  INTEGER NOT NULL REFERENCES api_keys(id),
        runtime       TEXT NOT NULL,
        status        TEXT NOT NULL,
        status_reason TEXT,
        runtime_state TEXT NOT NULL DEFAULT 'null',
        created_at    TEXT NOT NULL,
        updated_at    TEXT NOT NULL
    );
    CREATE TABLE snapshots (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        sandbox_id    INTEGER NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        kind          TEXT NOT NULL,
        command       TEXT,
        exit_code     INTEGER,
        description   TEXT,
        include_memory INTEGER NOT NULL DEFAULT 0,
        checksum      TEXT,
        missing       INTEGER NOT NULL DEFAULT 0,
        created_at    TEXT NOT NULL,
        created_ms    INTEGER NOT NULL,
        UNIQUE(sandbox_id, name)
    );
    "#,
    // 2: port forwards (host port -> a port inside a sandbox)
    r#"
    CREATE TABLE port_forwards (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        sandbox_id  INTEGER NOT NULL REFERENCES sandboxes(id) ON DELETE CASCADE,
        host_port   INTEGER NOT NULL UNIQUE,
        guest_port  INTEGER NOT NULL,
        protocol    TEXT NOT NULL,
        description TEXT,
        created_at  TEXT NOT NULL
    );
    "#,
    // 3: users (MicroVM Sandbox API). A user owns sandboxes through an owner
    // row in api_keys (kind 'user', never matchable as a key), so ownership
    // stays one column; sandboxes gain the /api/v1 lifecycle and size fields.
    r#"
    ALTER TABLE api_keys ADD COLUMN kind TEXT NOT NULL DEFAULT 'key';
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        username      TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL,
        owner_id      INTEGER NOT NULL UNIQUE REFERENCES api_keys(id),
        created_at    TEXT NOT NULL
    );
    ALTER TABLE sandboxes ADD COLUMN started_at TEXT;
    ALTER TABLE sandboxes ADD COLUMN os_type TEXT NOT NULL DEFAULT 'linux';
    ALTER TABLE sandboxes ADD COLUMN template TEXT;
    ALTER TABLE sandboxes ADD COLUMN vcpus INTEGER;
    ALTER TABLE sandboxes ADD COLUMN memory_mb INTEGER;
    ALTER TABLE sandboxes ADD COLUMN disk_gb INTEGER;
    "#,
    // 4: audit log of state-changing requests (never a key or a secret)
    r#"
    CREATE TABLE audit_log (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp     TEXT NOT NULL,
        ts_ms         INTEGER NOT NULL,
        action_type   TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        resource_id   TEXT,
        key_id        INTEGER,
        source_ip     TEXT,
        status        INTEGER NOT NULL,
        request_id    TEXT,
        details       TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_log_ts ON audit_log(ts_ms);
    CREATE INDEX audit_log_key ON audit_log(key_id, ts_ms);
    "#,
    // 5: the memory snapshot a sandbox is being restored to, while the
    // restore runs: one cut off by a crash is completed at startup
    r#"
    ALTER TABLE sandboxes ADD COLUMN restoring_memory TEXT;
    "#,
];

/// Bring the schema up to the newest version.
pub fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let current: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|source| DbError::Migrate { version: 0, source })?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as u32 + 1;
        let err = |source| DbError::Migrate { version, source };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_twice_is_idempotent() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as u32);
    }
}
