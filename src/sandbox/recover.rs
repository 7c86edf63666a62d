//! Startup reconciliation of the database with Btrfs and the runtime.
//!
//! - `deleting` rows: the deletion is finished.
//! - `creating` rows: the half-made sandbox is rolled back.
//! - A snapshot row without its subvolume is kept, flagged `missing`, and
//!   logged; a restore to it answers 409. A snapshot subvolume without its
//!   row gets a row of kind `recovered` (its command is unknown), logged —
//!   except a memory snapshot cut off before its row was written, which is
//!   deleted (never acknowledged; its image may be partial).
//! - A sandbox directory in storage without any row is reported, not deleted.
//! - Each live sandbox is re-attached (or restarted, and logged as such);
//!   one that cannot be brought back is marked `failed` with the reason.
//! - The runtime cleans up host resources of sandboxes it doesn't know.

use std::collections::HashSet;

use rewind_storage::SandboxName;

use super::{SandboxError, Sandboxes};
use crate::db::{Db, NewSnapshot, SandboxRow, SandboxStatus};
use crate::runtime::Attached;

/// What recovery did, for the log and for tests.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub actions: Vec<String>,
}

impl Sandboxes {
    pub async fn recover(&self) -> Result<RecoveryReport, SandboxError> {
        let mut report = RecoveryReport::default();
        for line in self.storage.recovery_report() {
            report.actions.push(format!("storage: {line}"));
        }
        let rows = self.db.call(|c| Db::list_sandboxes(c, None)).await?;
        let mut known = Vec::new();
        for row in rows {
            match row.status {
                SandboxStatus::Deleting => {
                    self.finish_delete(&row).await?;
                    report
                        .actions
                        .push(format!("finished deleting sandbox {}", row.name));
                }
                SandboxStatus::Creating => {
                    let name = super::parse_sandbox_name(&row.name)?;
                    let _ = self
                        .runtime
                        .stop(&self.context(&name), &row.runtime_state)
                        .await;
                    self.rollback_create(&row, &name).await;
                    report
                        .actions
                        .push(format!("rolled back half-created sandbox {}", row.name));
                }
                SandboxStatus::Stopped => {
                    known.push(row.name.clone());
                    self.reconcile_snapshots(&row, &mut report).await?;
                }
                SandboxStatus::Running | SandboxStatus::Failed => {
                    known.push(row.name.clone());
                    self.reconcile_snapshots(&row, &mut report).await?;
                    self.reattach(&row, &mut report).await?;
                }
            }
        }
        self.report_storage_orphans(&known, &mut report)?;
        for cleaned in self.runtime.cleanup_orphans(&known).await {
            report.actions.push(format!("runtime: {cleaned}"));
        }
        for action in &report.actions {
            tracing::warn!(action = %action, "startup recovery");
        }
        Ok(report)
    }

    async fn reconcile_snapshots(
        &self,
        row: &SandboxRow,
        report: &mut RecoveryReport,
    ) -> Result<(), SandboxError> {
        let name = super::parse_sandbox_name(&row.name)?;
        let on_disk = self.blocking(move |s| s.list_snapshots(&name)).await?;
        let id = row.id;
        let rows = self.db.call(move |c| Db::list_snapshots(c, id)).await?;
        let disk_names: HashSet<&str> = on_disk.iter().map(|i| i.name.as_str()).collect();
        let row_names: HashSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        for r in rows
            .iter()
            .filter(|r| !r.missing && !disk_names.contains(r.name.as_str()))
        {
            // Retention prunes automatic snapshots on purpose; only kept ones are "missing".
            if r.kind == "command" || r.kind == "wipe" {
                let rid = r.id;
                self.db
                    .call(move |c| Db::delete_snapshot_row(c, rid))
                    .await?;
                continue;
            }
            let rid = r.id;
            self.db
                .call(move |c| Db::mark_snapshot_missing(c, rid))
                .await?;
            report.actions.push(format!(
                "{}: snapshot {} has no subvolume; marked missing",
                row.name, r.name
            ));
        }
        for info in on_disk
            .iter()
            .filter(|i| !row_names.contains(i.name.as_str()))
        {
            if self
                .drop_unrecorded_memory_snapshot(row, &info.name)
                .await?
            {
                report.actions.push(format!(
                    "{}: memory snapshot {} was cut off before it was recorded; deleted it",
                    row.name, info.name
                ));
                continue;
            }
            let new = NewSnapshot {
                name: info.name.clone(),
                kind: "recovered",
                created_ms: Some(super::system_ms(info.created)),
                ..Default::default()
            };
            self.db
                .call(move |c| Db::insert_snapshot(c, id, &new))
                .await?;
            report.actions.push(format!(
                "{}: snapshot {} had no row; recorded as recovered",
                row.name, info.name
            ));
        }
        Ok(())
    }

    /// A snapshot with an aux dir but no row is a memory (full) snapshot
    /// whose service died before its row — the commit point — was written
    /// (only full snapshots have aux dirs): it was never acknowledged, and
    /// its memory image may be partial. Deletes it; `false` for others.
    async fn drop_unrecorded_memory_snapshot(
        &self,
        row: &SandboxRow,
        snap: &str,
    ) -> Result<bool, SandboxError> {
        let name = super::parse_sandbox_name(&row.name)?;
        let snap = super::parse_snapshot_name("snapshot", snap)?;
        if !self.storage.snapshot_aux_path(&name, &snap).exists() {
            return Ok(false);
        }
        self.blocking(move |s| s.delete_snapshot(&name, &snap))
            .await?;
        Ok(true)
    }

    async fn reattach(
        &self,
        row: &SandboxRow,
        report: &mut RecoveryReport,
    ) -> Result<(), SandboxError> {
        let name = super::parse_sandbox_name(&row.name)?;
        let ctx = self.context_of(row, &name);
        let id = row.id;
        // Cleared first: a crash while it is completed records it again
        // (`restore_full`); one before leaves a whole sandbox anyway.
        let cut_off = row.restoring_memory.clone();
        if cut_off.is_some() {
            self.db
                .call(move |c| Db::set_restoring_memory(c, id, None))
                .await?;
        }
        let mut restarted = false;
        let state = match self.runtime.attach(&ctx, &row.runtime_state).await {
            Ok(Attached::Reattached(state)) => state,
            Ok(Attached::Restarted(state)) => {
                restarted = true;
                report.actions.push(format!(
                    "{}: sandbox was not running; restarted it (processes lost, workspace intact)",
                    row.name
                ));
                state
            }
            Err(e) => {
                let reason = format!("could not re-attach after restart: {e}");
                report.actions.push(format!("{}: {reason}", row.name));
                self.mark_failed(id, reason).await;
                return Ok(());
            }
        };
        let saved = state.clone();
        let last = self
            .db
            .call(move |c| {
                Db::set_runtime_state(c, id, &saved)?;
                Db::set_sandbox_status(c, id, SandboxStatus::Running, None)?;
                Db::last_command_ms(c, id)
            })
            .await?;
        let mut live = self.new_live(row, &name, state);
        live.last_cmd_ms = last;
        // Only where the runtime can tell which mount is in place (a VM's
        // disk is re-attached with the VM; hot-swapping it at every restart
        // would be pointless).
        let checkable = self.runtime.workspace_dev(&live.ctx).is_some();
        let put_back = match checkable {
            true => self.put_workspace_back(&mut live).await,
            false => Ok(false),
        };
        match put_back {
            Ok(false) => {}
            Ok(true) => report.actions.push(format!(
                "{}: /workspace was not the live workspace (a restore was cut off); put it back",
                row.name
            )),
            Err(e) => {
                let reason = format!(
                    "/workspace could not be put back after restart: {}",
                    crate::runtime::chain(&e)
                );
                report.actions.push(format!("{}: {reason}", row.name));
                self.mark_failed(id, reason).await;
                return Ok(());
            }
        }
        self.open_egress(&live.ctx, &live.state).await;
        self.insert_entry(&row.name, live);
        if let Some(snap) = cut_off {
            self.finish_memory_restore(row, &snap, restarted, report)
                .await;
        }
        Ok(())
    }

    /// A memory restore of `snap` was cut off by the service's end. If the
    /// sandbox's processes were already stopped (it had to be restarted),
    /// their memory is gone either way: complete the restore, as asked.
    /// Otherwise the restore had not begun to change anything.
    async fn finish_memory_restore(
        &self,
        row: &SandboxRow,
        snap: &str,
        restarted: bool,
        report: &mut RecoveryReport,
    ) {
        if !restarted {
            report.actions.push(format!(
                "{}: a memory restore of {snap} was cut off before its processes stopped; runs on unchanged",
                row.name
            ));
            return;
        }
        let completed = async {
            let name = super::parse_sandbox_name(&row.name)?;
            let snap = super::parse_snapshot_name("snapshot", snap)?;
            let found = self.snapshot_row(row.id, &snap, false).await?;
            if !self.restores_memory(&found, &snap)? {
                return Err(SandboxError::Conflict(format!(
                    "snapshot {snap} holds no memory"
                )));
            }
            let entry = self.entry(&row.name).ok_or_else(|| {
                SandboxError::Conflict(format!("sandbox {} is not running", row.name))
            })?;
            let mut live = entry.lock().await;
            self.restore_full(&mut live, &name, &snap).await?;
            live.restored_to = Some(snap.to_string());
            Ok::<_, SandboxError>(())
        };
        let line = match completed.await {
            Ok(()) => format!(
                "{}: a memory restore of {snap} was cut off after its processes stopped; completed it",
                row.name
            ),
            Err(e) => format!(
                "{}: a memory restore of {snap} was cut off after its processes stopped; completing it failed: {}",
                row.name,
                crate::runtime::chain(&e)
            ),
        };
        report.actions.push(line);
    }

    fn report_storage_orphans(
        &self,
        known: &[String],
        report: &mut RecoveryReport,
    ) -> Result<(), SandboxError> {
        let on_disk: Vec<SandboxName> = self.storage.list_sandboxes()?;
        for name in on_disk
            .iter()
            .filter(|n| !known.iter().any(|k| k == n.as_ref()))
        {
            report.actions.push(format!(
                "storage has sandbox {name} with no database row; left in place (delete it with the storage tools or re-create the row)"
            ));
        }
        Ok(())
    }
}
