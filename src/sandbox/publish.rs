//! The events the operations publish (see [`crate::events`]): one helper
//! per kind of change, so each operation adds one line where its change is
//! recorded.

use super::Sandboxes;
use crate::db::{SandboxRow, SandboxStatus};
use crate::events::EventKind;

impl Sandboxes {
    pub(super) fn publish_created(&self, row: &SandboxRow) {
        let kind = EventKind::VmCreated {
            vm_name: row.name.clone(),
            user_id: row.owner_key_id.to_string(),
        };
        self.events.publish(row.owner_key_id, &row.name, kind);
        self.publish_status(row, SandboxStatus::Creating, row.status);
    }

    pub(super) fn publish_deleted(&self, row: &SandboxRow) {
        let kind = EventKind::VmDeleted {
            vm_name: row.name.clone(),
            user_id: row.owner_key_id.to_string(),
        };
        self.events.publish(row.owner_key_id, &row.name, kind);
    }

    pub(super) fn publish_status(&self, row: &SandboxRow, old: SandboxStatus, new: SandboxStatus) {
        let kind = EventKind::StatusChange {
            old_status: old.as_str().into(),
            new_status: new.as_str().into(),
        };
        self.events.publish(row.owner_key_id, &row.name, kind);
    }

    /// A snapshot event (`snapshot_created`, `_deleted`, `_restored`, or
    /// `workspace_wiped`) about sandbox `name` of `owner`.
    pub(super) fn publish_snapshot(&self, owner: i64, name: &str, kind: EventKind) {
        self.events.publish(owner, name, kind);
    }
}
