//! Live changes to a running namespace sandbox: new CPU and memory limits
//! (cgroup writes) and a graceful stop (SIGTERM to every process of the
//! sandbox but its PID 1, a bounded wait, then the usual teardown).

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{NamespaceRuntime, NsState};
use crate::runtime::{Applied, Limits, Resized, RuntimeError, RuntimeState, SandboxContext};

/// How often a graceful stop looks whether the processes are gone.
const POLL: Duration = Duration::from_millis(20);

impl NamespaceRuntime {
    /// Write `limits` into the sandbox's cgroups (memory first; on error
    /// nothing changed). Both apply at once.
    pub(super) async fn resize_cgroups(
        &self,
        sb: &SandboxContext,
        limits: &Limits,
    ) -> Result<Resized, RuntimeError> {
        let (cgroups, name, limits) = (self.cgroups.clone(), sb.name.clone(), *limits);
        tokio::task::spawn_blocking(move || cgroups.set_limits(&name, &limits))
            .await
            .map_err(|e| RuntimeError::Io {
                op: "join the resize task".into(),
                source: e.into(),
            })?
            .map_err(|e| RuntimeError::Resize {
                sandbox: sb.name.clone(),
                source: e.into(),
            })?;
        Ok(Resized {
            cpu: Applied::Now,
            memory: Applied::Now,
        })
    }

    /// SIGTERM every process in the sandbox's cgroups except PID 1 (the
    /// agent), then wait up to `grace` until none but PID 1 is left. Returns
    /// whether they all ended in time; the caller tears down either way.
    pub(super) async fn terminate(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
        grace: Duration,
    ) -> Result<bool, RuntimeError> {
        let init = serde_json::from_value::<NsState>(state.clone())
            .ok()
            .filter(|s| super::proc_starttime(s.pid) == Some(s.starttime))
            .map(|s| s.pid);
        let (cgroups, name) = (self.cgroups.clone(), sb.name.clone());
        tokio::task::spawn_blocking(move || {
            let others = || -> Vec<i32> {
                let mut pids = cgroups.procs(&name);
                pids.retain(|p| Some(*p) != init);
                pids
            };
            for pid in others() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            loop {
                if others().is_empty() {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(POLL);
            }
        })
        .await
        .map_err(|e| RuntimeError::Io {
            op: "join the graceful stop task".into(),
            source: e.into(),
        })
    }
}
