//! Create a sandbox: database row → workspace subvolume → runtime → the
//! `initial` snapshot. Any failure rolls every earlier step back.
//!
//! A fork is the same with a different start: the workspace (and state) is a
//! writable Btrfs snapshot of another sandbox's snapshot, and when that
//! snapshot holds saved VM memory the runtime resumes from it (with a fresh
//! RNG seed) instead of booting.

use rewind_storage::{
    CreateOptions, Received, SandboxName, SnapshotKind, SnapshotName, StorageError,
};

use super::{parse_sandbox_name, system_ms, SandboxError, Sandboxes, INITIAL};
use crate::auth::Caller;
use crate::db::{Db, NewSnapshot, SandboxRow, SandboxSpec, SandboxStatus};

/// Not a sandbox name: `/vms/import` is the import route.
pub const RESERVED_IMPORT: &str = "import";

/// Where a forked sandbox starts from.
#[derive(Debug, Clone)]
pub struct ForkSource {
    pub sandbox: SandboxName,
    pub snapshot: SnapshotName,
    /// The snapshot holds saved VM state to resume from.
    pub with_memory: bool,
}

impl Sandboxes {
    pub async fn create(&self, caller: &Caller, name: &str) -> Result<SandboxRow, SandboxError> {
        self.create_with_disk(caller, name, None).await
    }

    /// Create with a disk limit of `disk_mb` MiB (default and maximum:
    /// `limits.disk_mb`).
    pub async fn create_with_disk(
        &self,
        caller: &Caller,
        name: &str,
        disk_mb: Option<i64>,
    ) -> Result<SandboxRow, SandboxError> {
        let disk = self.disk_limit_bytes(disk_mb)?;
        self.create_from(caller, name, None, linux_spec(), disk)
            .await
    }

    /// Create with a size and OS (MicroVM Sandbox API). `spec` is validated
    /// by the caller; it is recorded and applied as the sandbox's limits,
    /// `disk_gb` as its disk limit (capped like `disk_mb`).
    pub async fn create_sized(
        &self,
        caller: &Caller,
        name: &str,
        spec: SandboxSpec,
    ) -> Result<SandboxRow, SandboxError> {
        let disk_mb = spec.disk_gb.map(|gb| gb.saturating_mul(1024) as i64);
        let disk = self.disk_limit_bytes(disk_mb)?;
        self.create_from(caller, name, None, spec, disk).await
    }

    /// Fork: a new sandbox `new_name` (owned by the caller) starting from
    /// snapshot `snapshot` of sandbox `name`.
    pub async fn fork(
        &self,
        caller: &Caller,
        name: &str,
        snapshot: &str,
        new_name: &str,
    ) -> Result<SandboxRow, SandboxError> {
        let snap = super::parse_snapshot_name("snapshot", snapshot)?;
        let source = self.find(caller, name).await?;
        let row = self.snapshot_row(source.id, &snap, false).await?;
        let from = ForkSource {
            sandbox: parse_sandbox_name(&source.name)?,
            snapshot: snap,
            with_memory: row.include_memory && self.runtime.supports_memory_snapshots(),
        };
        let disk = self.disk_limit_bytes(None)?;
        self.create_from(caller, new_name, Some(from), source.spec, disk)
            .await
    }

    /// Like `create`, with the workspace made from a received archive.
    pub(super) async fn create_imported(
        &self,
        caller: &Caller,
        name: &str,
        received: Received,
    ) -> Result<SandboxRow, SandboxError> {
        let disk = self.disk_limit_bytes(None)?;
        self.create_with(caller, name, None, linux_spec(), disk, Some(received))
            .await
    }

    async fn create_from(
        &self,
        caller: &Caller,
        name: &str,
        from: Option<ForkSource>,
        spec: SandboxSpec,
        disk_limit_bytes: Option<u64>,
    ) -> Result<SandboxRow, SandboxError> {
        self.create_with(caller, name, from, spec, disk_limit_bytes, None)
            .await
    }

    async fn create_with(
        &self,
        caller: &Caller,
        name: &str,
        from: Option<ForkSource>,
        spec: SandboxSpec,
        disk_limit_bytes: Option<u64>,
        import: Option<Received>,
    ) -> Result<SandboxRow, SandboxError> {
        if name == RESERVED_IMPORT {
            return Err(SandboxError::Invalid {
                field: "name",
                message: "`import` is reserved (POST /vms/import)".into(),
            });
        }
        let name = parse_sandbox_name(name)?;
        let (key, who, runtime) = (name.to_string(), *caller, self.runtime.kind().as_str());
        let cap = self.config.limits.max_sandboxes_per_owner;
        let inserted = self
            .db
            .call(move |c| {
                if let Some(refusal) = super::quota::sandbox_cap_refusal(c, &who, cap)? {
                    return Ok(Err(refusal));
                }
                let row = Db::insert_sandbox(c, &key, who.key_id, runtime)?;
                Db::set_sandbox_spec(c, row.id, &spec)?;
                Ok(Ok(SandboxRow { spec, ..row }))
            })
            .await
            .map_err(|e| match e {
                crate::db::DbError::Conflict { .. } => {
                    SandboxError::Conflict(format!("VM \"{name}\" already exists"))
                }
                other => other.into(),
            })?;
        let row = inserted.map_err(SandboxError::OverQuota)?;
        // Storage first: a failed create leaves nothing, so the rollback only
        // removes the row (never storage this request did not make, e.g. a
        // sandbox startup recovery left in place for lack of a row).
        if let Err(e) = self
            .create_storage(&name, from.as_ref(), disk_limit_bytes, import)
            .await
        {
            self.rollback_row(&row, &name).await;
            return Err(match e {
                SandboxError::Storage(StorageError::AlreadyExists { .. }) => {
                    SandboxError::Conflict(format!(
                        "the storage pool already holds a sandbox \"{name}\" that the database does not know; \
                         delete it from the pool or pick another name"
                    ))
                }
                other => other,
            });
        }
        match self.provision(&row, &name, from).await {
            Ok(row) => {
                self.publish_created(&row);
                Ok(row)
            }
            Err(e) => {
                self.rollback_create(&row, &name).await;
                Err(e)
            }
        }
    }

    async fn create_storage(
        &self,
        name: &SandboxName,
        from: Option<&ForkSource>,
        disk_limit_bytes: Option<u64>,
        import: Option<Received>,
    ) -> Result<(), SandboxError> {
        let opts = CreateOptions {
            owner: self.runtime.workspace_owner(),
            fork_from: from.map(|f| (f.sandbox.clone(), f.snapshot.clone())),
            disk_limit_bytes,
            import,
            ..Default::default()
        };
        let n = name.clone();
        self.blocking(move |s| s.create_workspace(&n, &opts))
            .await
            .map(drop)
    }

    /// Start the runtime on the created storage and record the sandbox.
    async fn provision(
        &self,
        row: &SandboxRow,
        name: &SandboxName,
        from: Option<ForkSource>,
    ) -> Result<SandboxRow, SandboxError> {
        let ctx = self.context_of(row, name);
        let state = match &from {
            Some(f) if f.with_memory => self.start_forked_vm(&ctx, f).await?,
            _ => self.runtime.start(&ctx).await?,
        };
        match self.finish_create(row, name, state.clone()).await {
            Ok(row) => Ok(row),
            Err(e) => {
                if let Err(stop) = self.runtime.stop(&ctx, &state).await {
                    tracing::error!(sandbox = %name, error = %stop, "rollback: runtime stop failed");
                }
                Err(e)
            }
        }
    }

    /// Resume a fork from the source snapshot's saved VM state, then give
    /// the guest fresh entropy so the two VMs' RNGs diverge.
    async fn start_forked_vm(
        &self,
        ctx: &crate::runtime::SandboxContext,
        from: &ForkSource,
    ) -> Result<crate::runtime::RuntimeState, SandboxError> {
        use rand::TryRngCore;
        let dir = self
            .storage
            .snapshot_aux_path(&from.sandbox, &from.snapshot)
            .join(super::VM_STATE_DIR);
        self.runtime.verify_state(&dir).await?;
        let state = self.runtime.start_from_state(ctx, &dir).await?;
        let mut seed = vec![0u8; 64];
        let reseeded = match rand::rngs::OsRng.try_fill_bytes(&mut seed) {
            Ok(()) => {
                let agent = self.agent_for(ctx, &state);
                agent.reseed(seed).await.map_err(SandboxError::from)
            }
            Err(e) => Err(SandboxError::Io {
                op: "read OS entropy for the fork",
                source: std::io::Error::other(e.to_string()),
            }),
        };
        if let Err(e) = reseeded {
            let _ = self.runtime.stop(ctx, &state).await;
            return Err(e);
        }
        Ok(state)
    }

    async fn finish_create(
        &self,
        row: &SandboxRow,
        name: &SandboxName,
        state: crate::runtime::RuntimeState,
    ) -> Result<SandboxRow, SandboxError> {
        let live = self.new_live(row, name, state.clone());
        self.snapshot_initial(&live).await?;
        let id = row.id;
        let row = self
            .db
            .call(move |c| {
                Db::set_runtime_state(c, id, &state)?;
                Db::set_sandbox_status(c, id, SandboxStatus::Running, None)?;
                Db::sandbox_by_id(c, id)
            })
            .await?
            .ok_or_else(|| SandboxError::NotFound(format!("VM \"{name}\" vanished")))?;
        self.open_egress(&live.ctx, &live.state).await;
        self.insert_entry(&row.name, live);
        tracing::info!(sandbox = %name, runtime = self.runtime.kind().as_str(), "sandbox created");
        Ok(row)
    }

    async fn snapshot_initial(&self, live: &super::Live) -> Result<(), SandboxError> {
        let info = self
            .take_snapshot(live, INITIAL, SnapshotKind::Kept)
            .await?;
        let id = live.id;
        let new = NewSnapshot {
            name: INITIAL.into(),
            kind: "initial",
            created_ms: Some(system_ms(info.created)),
            ..Default::default()
        };
        self.db
            .call(move |c| Db::insert_snapshot(c, id, &new))
            .await?;
        Ok(())
    }

    pub(super) async fn rollback_create(&self, row: &SandboxRow, name: &SandboxName) {
        tracing::warn!(sandbox = %name, "sandbox creation failed; rolling back");
        let n = name.clone();
        if let Err(e) = self.blocking(move |s| s.delete_sandbox(&n)).await {
            tracing::warn!(sandbox = %name, error = %e, "rollback: storage delete");
        }
        self.rollback_row(row, name).await;
    }

    async fn rollback_row(&self, row: &SandboxRow, name: &SandboxName) {
        let id = row.id;
        if let Err(e) = self.db.call(move |c| Db::delete_sandbox(c, id)).await {
            tracing::error!(sandbox = %name, error = %e, "rollback: row delete failed");
        }
    }
}

/// The spec of a sandbox made by the native API: Linux, configured sizes.
fn linux_spec() -> SandboxSpec {
    SandboxSpec {
        os_type: "linux".into(),
        ..Default::default()
    }
}
