//! Probes behind the health endpoints: each part of the service is asked,
//! not assumed — the database answers a query, the storage pool is listed,
//! and the agent of every attached sandbox answers a ping.

use super::Sandboxes;
use crate::db::{Db, SandboxStatus};

/// One probe's outcome: `Err` carries why it failed.
pub type Probe = Result<(), String>;

/// What each probe found.
#[derive(Debug, Clone)]
pub struct Health {
    pub database: Probe,
    pub storage: Probe,
    pub runtime: Probe,
}

/// Counts for the status endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub sandboxes: u64,
    pub running: u64,
    pub snapshots: u64,
}

impl Sandboxes {
    pub async fn probe(&self) -> Health {
        let database = self
            .db
            .call(Db::ping)
            .await
            .map_err(|e| crate::runtime::chain(&e));
        let storage = self
            .blocking(|s| s.list_sandboxes())
            .await
            .map(drop)
            .map_err(|e| crate::runtime::chain(&e));
        Health {
            database,
            storage,
            runtime: self.probe_runtime().await,
        }
    }

    /// Every attached sandbox's runtime is alive: its agent answers a ping
    /// (a sandbox busy with a command counts as alive) and the runtime
    /// reports no failure. Sandboxes being created, stopped or deleted are
    /// either not attached yet or hold their lock, so they never flap this.
    async fn probe_runtime(&self) -> Probe {
        let names: Vec<String> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for name in names {
            if !self.agent_healthy(&name).await && self.entry(&name).is_some() {
                return Err(format!("the agent of sandbox {name} does not answer"));
            }
        }
        Ok(())
    }

    pub async fn counts(&self) -> Result<Counts, super::SandboxError> {
        let rows = self.db.call(|c| Db::list_sandboxes(c, None)).await?;
        let snapshots = self.db.call(Db::count_snapshots).await?;
        Ok(Counts {
            sandboxes: rows.len() as u64,
            running: rows
                .iter()
                .filter(|r| r.status == SandboxStatus::Running)
                .count() as u64,
            snapshots,
        })
    }
}
