//! A sandbox's resource use, as its runtime counts it (cgroups, its network
//! namespace), next to the limits it was given. Takes no sandbox lock, so it
//! answers while a command runs.

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{SandboxRow, SandboxStatus};
use crate::runtime::{Limits, Usage};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub row: SandboxRow,
    pub limits: Limits,
    /// All `None` unless the sandbox is running.
    pub usage: Usage,
}

impl Sandboxes {
    pub async fn metrics(&self, caller: &Caller, name: &str) -> Result<Metrics, SandboxError> {
        let row = self.find(caller, name).await?;
        let sandbox = super::parse_sandbox_name(&row.name)?;
        let ctx = self.context_of(&row, &sandbox);
        let usage = if row.status == SandboxStatus::Running {
            let (runtime, state) = (self.runtime.clone(), row.runtime_state.clone());
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || runtime.usage(&ctx, &state)).await?
        } else {
            Usage::default()
        };
        Ok(Metrics {
            row,
            limits: ctx.limits,
            usage,
        })
    }
}
