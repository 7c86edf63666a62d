//! Live events: what happened to sandboxes, as it happens. The
//! [`crate::sandbox`] operations publish (one place, so native, `/api/v1`,
//! JSON-RPC and MCP callers all produce them); the WebSocket routes
//! `/api/v1/vms/{vm}/events` and `/api/v1/system/events` subscribe.
//!
//! The bus is a bounded `tokio::sync::broadcast` channel: publishing never
//! waits for a subscriber. A subscriber that falls more than
//! `events.buffer` events behind is dropped with a close frame (see
//! [`crate::api::v1`]'s `events.rs`). The buffer is shared: a subscriber
//! must keep up with every event published, not only those it may see
//! (it skips the others without sending them).
//!
//! Messages have the reference's shape: `{"event_type", "vm_name",
//! "timestamp", "data"}`; the owner is kept out of the message and used
//! only to decide who may see it.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::auth::Caller;

/// What happened (`event_type` and its `data`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event_type", content = "data", rename_all = "snake_case")]
pub enum EventKind {
    StatusChange {
        old_status: String,
        new_status: String,
    },
    VmCreated {
        vm_name: String,
        user_id: String,
    },
    VmDeleted {
        vm_name: String,
        user_id: String,
    },
    CommandStarted {
        command: String,
    },
    CommandFinished {
        command: String,
        exit_code: i32,
        snapshot: String,
        timed_out: bool,
        exec_ms: u64,
    },
    CommandFailed {
        command: String,
        error: String,
    },
    SnapshotCreated {
        snapshot: String,
    },
    SnapshotDeleted {
        snapshot: String,
    },
    SnapshotRestored {
        snapshot: String,
    },
    WorkspaceWiped {
        snapshot: String,
    },
}

/// One message: `{"event_type", "vm_name", "timestamp", "data"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    #[serde(flatten)]
    pub kind: EventKind,
    pub vm_name: String,
    /// UTC, `2025-10-01T14:00:00Z`.
    pub timestamp: String,
    /// The owner of the sandbox (key or user id): who may see the event.
    #[serde(skip)]
    pub owner: i64,
}

impl Event {
    /// Whether `caller` may see this event (admins see all).
    pub fn visible_to(&self, caller: &Caller) -> bool {
        caller.can_see(self.owner)
    }
}

/// Longest command kept in an event (characters), as in the audit log.
pub const MAX_COMMAND_CHARS: usize = 256;

/// The publishing side; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Bus {
    /// A bus keeping at most `buffer` events for a subscriber that lags.
    pub fn new(buffer: usize) -> Bus {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Bus { tx }
    }

    /// Publish `kind` about sandbox `vm_name` of `owner`. Never waits; with
    /// no subscriber the event is simply dropped.
    pub fn publish(&self, owner: i64, vm_name: &str, kind: EventKind) {
        let event = Event {
            kind,
            vm_name: vm_name.to_owned(),
            timestamp: format!("{}Z", crate::db::now().0),
            owner,
        };
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Subscribers connected right now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// `command` capped at [`MAX_COMMAND_CHARS`].
pub fn capped(command: &str) -> String {
    command.chars().take(MAX_COMMAND_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serialises_in_the_reference_shape() {
        let event = Event {
            kind: EventKind::StatusChange {
                old_status: "stopped".into(),
                new_status: "running".into(),
            },
            vm_name: "box".into(),
            timestamp: "2025-10-01T14:00:00Z".into(),
            owner: 7,
        };

        let json = serde_json::to_value(&event).unwrap();

        assert_eq!(
            json,
            serde_json::json!({
                "event_type": "status_change",
                "vm_name": "box",
                "timestamp": "2025-10-01T14:00:00Z",
                "data": {"old_status": "stopped", "new_status": "running"}
            })
        );
    }

    #[test]
    fn a_lagging_subscriber_is_told_it_lagged() {
        let bus = Bus::new(2);
        let mut rx = bus.subscribe();
        for i in 0..5 {
            bus.publish(
                1,
                "box",
                EventKind::CommandStarted {
                    command: i.to_string(),
                },
            );
        }

        let first = rx.try_recv();

        assert!(
            matches!(first, Err(broadcast::error::TryRecvError::Lagged(3))),
            "{first:?}"
        );
    }
}
