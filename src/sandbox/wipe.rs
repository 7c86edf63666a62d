//! Wipe: the workspace becomes empty (the sandbox's template, which is empty
//! for API-created sandboxes), and a `wipe_<ms>` snapshot records it so a
//! wipe is undone like any other step: restore an earlier snapshot.

use rewind_storage::SnapshotKind;

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, NewSnapshot};

impl Sandboxes {
    /// Returns the name of the snapshot taken after the wipe.
    pub async fn wipe(&self, caller: &Caller, name: &str) -> Result<String, SandboxError> {
        let (row, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        let sandbox = super::parse_sandbox_name(&row.name)?;
        self.swap_workspace(&mut live, &sandbox, |s, n| s.wipe(n))
            .await?;
        let ms = super::now_ms().max(live.last_cmd_ms + 1);
        live.last_cmd_ms = ms;
        let snap = format!("wipe_{ms}");
        live.restored_to = None;
        self.take_snapshot(&live, &snap, SnapshotKind::Auto).await?;
        let new = NewSnapshot {
            name: snap.clone(),
            kind: "wipe",
            created_ms: Some(ms),
            ..Default::default()
        };
        let id = row.id;
        self.db
            .call(move |c| {
                Db::insert_snapshot(c, id, &new)?;
                Db::touch_sandbox(c, id)
            })
            .await?;
        tracing::info!(sandbox = %row.name, snapshot = %snap, "workspace wiped");
        let wiped = crate::events::EventKind::WorkspaceWiped {
            snapshot: snap.clone(),
        };
        self.publish_snapshot(row.owner_key_id, &row.name, wiped);
        Ok(snap)
    }
}
