//! Sandbox orchestration: the operations behind the API, one file each
//! (`create.rs`, `run.rs`, `restore.rs`, `wipe.rs`, `delete.rs`,
//! `snapshots.rs`, `pty.rs`, `files.rs` + `snapshot_files.rs`, `diff.rs`),
//! plus `recover.rs` for startup reconciliation.
//!
//! Every operation on one sandbox holds that sandbox's async lock, so each
//! snapshot belongs to exactly one command; different sandboxes proceed in
//! parallel. A terminal session is one long command: it holds the lock for
//! its whole life, and while it is open other operations on the sandbox are
//! refused with a conflict instead of queueing behind it. The lock order is always: registry map (never across an await)
//! → sandbox lock → database/storage calls.

mod archive;
mod auto_snapshot;
mod create;
mod delete;
mod diff;
mod disk;
mod egress;
mod file_io;
mod files;
mod forward;
pub mod health;
mod metrics;
mod pty;
mod publish;
mod quota;
mod recover;
mod repl;
mod resize;
mod restore;
mod run;
mod snapshot_files;
mod snapshots;
mod start;
mod stop;
mod system;
mod wipe;
mod workspace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rewind_agent::client::AgentClient;
use rewind_storage::{SandboxName, SnapshotName, Storage, StorageError};
use tokio::sync::Mutex as AsyncMutex;

use crate::auth::Caller;
use crate::config::Config;
use crate::db::{Db, DbError, SandboxRow, SandboxStatus};
use crate::runtime::{Limits, Runtime, RuntimeError, RuntimeState, SandboxContext};

pub use archive::ExportStream;
pub use diff::{Change, ChangeKind, ChangeSummary, Diff};
pub use disk::DiskView;
pub use files::{parse_mode, FileChange, FileDownload, FileEntry, SandboxPath, WriteFile};
pub use forward::NewForward;
pub use metrics::Metrics;
pub use pty::{PtyEnd, PtyEndReason, PtyInput, PtyOptions, PtySession, MAX_TERMINAL_SIDE};
pub use quota::RunSlot;
pub use repl::{parse_language, ReplRequest, ReplResult};
pub use resize::{Resize, ResizeOutcome};
pub use run::{RunEvent, RunOutput, RunRequest, RunStream, RunSummary};
pub use snapshots::{tree_sha256, CreateSnapshot, SnapshotView};
pub use stop::StopMode;
pub use system::{HostMetrics, VmTotals};

/// Failure of a sandbox operation; the API maps each variant to a status.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// Over a configured size cap (413); nothing was changed.
    #[error("{field}: {message}")]
    TooLarge {
        field: &'static str,
        message: String,
    },
    /// The request body broke off while it was being read.
    #[error("body: the upload could not be read")]
    Upload(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0}")]
    Conflict(String),
    /// The operation exists but this host cannot do it (e.g. no CRIU).
    #[error("{0}")]
    NotImplemented(String),
    #[error("sandbox \"{name}\" is {status}: {reason}")]
    NotRunning {
        name: String,
        status: &'static str,
        reason: String,
    },
    #[error("storage operation failed")]
    Storage(#[from] StorageError),
    #[error("runtime operation failed")]
    Runtime(#[from] RuntimeError),
    #[error("agent request failed")]
    Agent(#[from] rewind_agent::client::AgentError),
    #[error("database operation failed")]
    Db(#[from] DbError),
    #[error("I/O error during {op}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error(
        "/workspace of sandbox {sandbox} is not its live workspace (live st_dev {expected}, found {found:?})"
    )]
    WorkspaceMismatch {
        sandbox: String,
        expected: u64,
        found: rewind_agent::client::WorkspaceInfo,
    },
    #[error("injected failure")]
    Failpoint(#[from] crate::failpoint::Injected),
    /// A per-owner cap (`limits.max_*_per_owner`) is reached (429).
    #[error("{0}")]
    OverQuota(String),
}

/// In-memory state of one sandbox, behind its lock.
pub struct Live {
    pub id: i64,
    /// The owner (key or user id): who may see its events.
    pub owner: i64,
    pub ctx: SandboxContext,
    pub state: RuntimeState,
    pub agent: AgentClient,
    /// Last `cmd_<ms>` used, so names stay unique within a millisecond.
    pub last_cmd_ms: i64,
    /// The snapshot the workspace was restored to, until the next snapshot
    /// that changes it: what a run's `changes` are measured from (else the
    /// newest snapshot).
    pub restored_to: Option<String>,
}

type Entry = Arc<AsyncMutex<Live>>;

/// The sandbox service: database + storage + runtime + per-sandbox locks.
#[derive(Clone)]
pub struct Sandboxes {
    pub config: Arc<Config>,
    pub db: Db,
    pub storage: Storage,
    pub runtime: Arc<dyn Runtime>,
    live: Arc<Mutex<HashMap<String, Entry>>>,
    forwards: forward::Listeners,
    egress: egress::Proxies,
    egress_allow: Option<Arc<crate::runtime::egress::AllowList>>,
    /// Serialises stop and start (a stopped sandbox has no live entry to lock).
    lifecycle: Arc<AsyncMutex<()>>,
    /// Sandboxes with an open terminal session.
    terminals: pty::Terminals,
    /// Live events of every operation (see [`crate::events`]).
    pub events: crate::events::Bus,
    runs: quota::RunCounts,
}

impl Sandboxes {
    pub fn new(config: Arc<Config>, db: Db, storage: Storage, runtime: Arc<dyn Runtime>) -> Self {
        let egress_allow = egress::allow_list(&config.network.egress_allow);
        let events = crate::events::Bus::new(config.events.buffer);
        Sandboxes {
            config,
            db,
            storage,
            runtime,
            live: Arc::new(Mutex::new(HashMap::new())),
            forwards: Default::default(),
            egress: Default::default(),
            egress_allow,
            lifecycle: Default::default(),
            terminals: Default::default(),
            events,
            runs: Default::default(),
        }
    }

    fn limits(&self) -> Limits {
        let l = &self.config.limits;
        Limits {
            memory_bytes: l.memory_mb * 1024 * 1024,
            cpu_millis: l.cpu_millis,
            pids: l.pids,
            vcpus: l.vcpus,
        }
    }

    fn context(&self, name: &SandboxName) -> SandboxContext {
        SandboxContext {
            name: name.to_string(),
            workspace: self.storage.workspace_path(name),
            state_dir: self.storage.state_dir(name),
            limits: self.limits(),
            network: self.config.network.enabled,
        }
    }

    /// [`Sandboxes::context`] with the sizes the sandbox was created with
    /// (`vcpus` → vCPUs and a CPU quota of that many cores, `memory_mb`).
    fn context_of(&self, row: &SandboxRow, name: &SandboxName) -> SandboxContext {
        let mut ctx = self.context(name);
        if let Some(vcpus) = row.spec.vcpus {
            ctx.limits.vcpus = vcpus.min(u8::MAX as u32) as u8;
            ctx.limits.cpu_millis = u64::from(vcpus) * 1000;
        }
        if let Some(mb) = row.spec.memory_mb {
            ctx.limits.memory_bytes = mb * 1024 * 1024;
        }
        ctx
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn insert_entry(&self, name: &str, live: Live) -> Entry {
        let entry = Arc::new(AsyncMutex::new(live));
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), entry.clone());
        entry
    }

    fn remove_entry(&self, name: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// A client for the agent of a sandbox in runtime state `state`.
    fn agent_for(&self, ctx: &SandboxContext, state: &RuntimeState) -> AgentClient {
        AgentClient::new(self.runtime.transport(ctx, state))
    }

    fn new_live(&self, row: &SandboxRow, name: &SandboxName, state: RuntimeState) -> Live {
        let ctx = self.context(name);
        let agent = self.agent_for(&ctx, &state);
        Live {
            id: row.id,
            owner: row.owner_key_id,
            ctx,
            state,
            agent,
            last_cmd_ms: 0,
            restored_to: None,
        }
    }

    /// The caller's view of a sandbox row: 404 when absent or not theirs.
    pub async fn find(&self, caller: &Caller, name: &str) -> Result<SandboxRow, SandboxError> {
        let name = parse_sandbox_name(name)?;
        let key = name.to_string();
        let row = self.db.call(move |c| Db::sandbox_by_name(c, &key)).await?;
        match row {
            Some(row)
                if caller.can_see(row.owner_key_id) && row.status != SandboxStatus::Deleting =>
            {
                Ok(row)
            }
            _ => Err(SandboxError::NotFound(format!("VM \"{name}\" not found"))),
        }
    }

    /// 404 / 409 exactly as a run would get them, without running anything
    /// (checked before upgrading a connection to a WebSocket).
    pub async fn check_live(&self, caller: &Caller, name: &str) -> Result<(), SandboxError> {
        self.find_live(caller, name).await.map(|_| ())
    }

    /// Find a sandbox and return its live entry, refusing failed sandboxes.
    async fn find_live(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(SandboxRow, Entry), SandboxError> {
        let row = self.find(caller, name).await?;
        if row.status != SandboxStatus::Running {
            return Err(SandboxError::NotRunning {
                name: row.name.clone(),
                status: row.status.as_str(),
                reason: row
                    .status_reason
                    .clone()
                    .unwrap_or_else(|| "not ready".into()),
            });
        }
        self.terminals.refuse_if_open(&row.name)?;
        let entry = self
            .entry(&row.name)
            .ok_or_else(|| SandboxError::NotRunning {
                name: row.name.clone(),
                status: "failed",
                reason: "the sandbox is not attached".into(),
            })?;
        Ok((row, entry))
    }

    /// The row of snapshot `snap` of sandbox `sandbox_id`: 404 when absent;
    /// 409 when its subvolume is missing, unless `allow_missing` (deletion).
    async fn snapshot_row(
        &self,
        sandbox_id: i64,
        snap: &SnapshotName,
        allow_missing: bool,
    ) -> Result<crate::db::SnapshotRow, SandboxError> {
        let key = snap.to_string();
        let found = self
            .db
            .call(move |c| Db::snapshot_by_name(c, sandbox_id, &key))
            .await?;
        match found {
            None => Err(SandboxError::NotFound(format!(
                "snapshot \"{snap}\" not found"
            ))),
            Some(r) if r.missing && !allow_missing => Err(SandboxError::Conflict(format!(
                "snapshot \"{snap}\" is recorded but its data is missing on disk"
            ))),
            Some(r) => Ok(r),
        }
    }

    pub async fn list(&self, caller: &Caller) -> Result<Vec<SandboxRow>, SandboxError> {
        let owner = caller.owner_filter();
        Ok(self.db.call(move |c| Db::list_sandboxes(c, owner)).await?)
    }

    /// The sandbox's network (guest address, MAC, namespace), if it has one.
    pub fn network(&self, name: &str) -> Option<crate::runtime::network::NetworkInfo> {
        let name: SandboxName = name.parse().ok()?;
        self.runtime.network(&self.context(&name))
    }

    /// Whether the sandbox's agent answers a ping right now. Never holds the
    /// sandbox's lock across the ping (a restore polled by its own client
    /// would see a false "busy"): the transport is copied out, then the
    /// ping goes over a connection of its own.
    pub async fn agent_healthy(&self, name: &str) -> bool {
        let Some(entry) = self.entry(name) else {
            return false;
        };
        // A held lock means a command or restore is running: busy, i.e. alive.
        let transport = match entry.try_lock() {
            Ok(live) => live.agent.transport().clone(),
            Err(_) => return true,
        };
        let agent = AgentClient::new(transport);
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), agent.ping()).await,
            Ok(Ok(_))
        )
    }

    /// Mark a sandbox failed (its runtime died or could not be reached).
    async fn mark_failed(&self, id: i64, reason: String) {
        tracing::error!(sandbox_id = id, reason = %reason, "sandbox failed");
        let result = self
            .db
            .call(move |c| Db::set_sandbox_status(c, id, SandboxStatus::Failed, Some(&reason)))
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot record sandbox failure");
        }
    }

    /// Run a blocking storage operation off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let storage = self.storage.clone();
        Ok(tokio::task::spawn_blocking(move || f(&storage)).await??)
    }
}

pub fn parse_sandbox_name(name: &str) -> Result<SandboxName, SandboxError> {
    name.parse()
        .map_err(|e: rewind_storage::NameError| SandboxError::Invalid {
            field: "name",
            message: e.to_string(),
        })
}

pub fn parse_snapshot_name(field: &'static str, name: &str) -> Result<SnapshotName, SandboxError> {
    name.parse()
        .map_err(|e: rewind_storage::NameError| SandboxError::Invalid {
            field,
            message: e.to_string(),
        })
}

/// Current unix time in milliseconds.
pub fn now_ms() -> i64 {
    crate::db::now().1
}

/// Name of the snapshot every sandbox starts with.
pub const INITIAL: &str = "initial";

/// Sub-directory of a snapshot's aux dir holding the VM's saved state.
pub const VM_STATE_DIR: &str = "vm";

/// A `SystemTime` as unix milliseconds.
pub fn system_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
