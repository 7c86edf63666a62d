//! Wipe: the workspace becomes empty (the sandbox's template, which is empty
//! for API-created sandboxes), and a `wipe_<ms>` snapshot records it so a
//! wipe is undone like any other step: restore an earlier snapshot.

use super::auto_snapshot::Step;
use super::{SandboxError, Sandboxes};
use crate::auth::Caller;

impl Sandboxes {
    /// Returns the name of the snapshot taken after the wipe.
    pub async fn wipe(&self, caller: &Caller, name: &str) -> Result<String, SandboxError> {
        let (row, entry) = self.find_live(caller, name).await?;
        let mut live = entry.lock().await;
        let sandbox = super::parse_sandbox_name(&row.name)?;
        self.swap_workspace(&mut live, &sandbox, |s, n| s.wipe(n))
            .await?;
        let snap = self.record_auto_snapshot(&mut live, Step::Wipe).await?;
        tracing::info!(sandbox = %row.name, snapshot = %snap, "workspace wiped");
        let wiped = crate::events::EventKind::WorkspaceWiped {
            snapshot: snap.clone(),
        };
        self.publish_snapshot(row.owner_key_id, &row.name, wiped);
        Ok(snap)
    }
}
