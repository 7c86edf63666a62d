//! Per-owner caps (`limits.max_sandboxes_per_owner`,
//! `limits.max_runs_per_owner`; 0 = no cap; admins are never capped):
//! over a cap the operation is refused with [`SandboxError::OverQuota`]
//! (429) before anything is changed.
//!
//! Sandboxes are counted in the database, in the same call that inserts
//! the new row (one connection, so two creates cannot both pass the check).
//! Runs are counted in memory: a [`RunSlot`] is held for the whole run,
//! streamed or not, and given back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;
use crate::db::{Db, DbError};

/// Runs in progress, per owner.
#[derive(Clone, Default)]
pub(super) struct RunCounts(Arc<Mutex<HashMap<i64, u32>>>);

/// One run of one owner; dropping it ends the run's claim.
pub struct RunSlot {
    counts: Option<RunCounts>,
    owner: i64,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let Some(counts) = self.counts.take() else {
            return;
        };
        let mut map = counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.owner);
            }
        }
    }
}

impl Sandboxes {
    /// Claim a run slot for `caller`, or 429 when it has
    /// `limits.max_runs_per_owner` runs going already.
    pub(super) fn claim_run(&self, caller: &Caller) -> Result<RunSlot, SandboxError> {
        let cap = self.config.limits.max_runs_per_owner;
        if cap == 0 || caller.admin {
            return Ok(RunSlot {
                counts: None,
                owner: caller.key_id,
            });
        }
        let mut map = self.runs.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(caller.key_id).or_default();
        if *n >= cap {
            return Err(SandboxError::OverQuota(format!(
                "too many concurrent runs: this owner already has {n} running \
                 (limits.max_runs_per_owner = {cap}); wait for one to finish"
            )));
        }
        *n += 1;
        Ok(RunSlot {
            counts: Some(self.runs.clone()),
            owner: caller.key_id,
        })
    }
}

/// Inside the insert's database call: the refusal message when `caller`
/// already has `cap` sandboxes.
pub(super) fn sandbox_cap_refusal(
    conn: &rusqlite::Connection,
    caller: &Caller,
    cap: u64,
) -> Result<Option<String>, DbError> {
    if cap == 0 || caller.admin {
        return Ok(None);
    }
    let n = Db::count_sandboxes_of(conn, caller.key_id)?;
    Ok((n >= cap).then(|| {
        format!(
            "too many sandboxes: this owner has {n} (limits.max_sandboxes_per_owner = {cap}); \
             delete one first"
        )
    }))
}
