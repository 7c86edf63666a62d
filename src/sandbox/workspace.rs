//! Keep `/workspace` inside a sandbox the sandbox's current live subvolume:
//! check what the agent reports against the host's live subvolume and put
//! the live one in place when it is not (after a restore's swap, or after a
//! restart that found a restore cut off between unmount and mount). The
//! agent refuses commands meanwhile, so no command ever runs against — and
//! no snapshot ever misses — the wrong workspace.

use rewind_agent::client::WorkspaceInfo;

use super::{Live, SandboxError, Sandboxes};
use crate::failpoint;

impl Sandboxes {
    /// Whether `/workspace` in the sandbox is its live subvolume and the
    /// agent runs commands against it; `None` when the runtime cannot tell.
    pub(super) async fn workspace_in_place(
        &self,
        live: &Live,
    ) -> Result<Option<(u64, WorkspaceInfo)>, SandboxError> {
        let Some(expected) = self.runtime.workspace_dev(&live.ctx) else {
            return Ok(None);
        };
        Ok(Some((expected, live.agent.workspace_id().await?)))
    }

    /// Put the live workspace in place unless it already is: unmount a stale
    /// mount, let the runtime place the live subvolume (`mount-into`), ask the
    /// agent to mount it, and check the result. For runtimes that cannot tell
    /// which mount is in place, the runtime's replace + the agent's mount
    /// always run. Returns whether it had to place the workspace.
    pub(super) async fn put_workspace_back(&self, live: &mut Live) -> Result<bool, SandboxError> {
        let found = self.workspace_in_place(live).await?;
        if let Some((dev, info)) = found {
            if info.mounted && info.dev == dev {
                // In place; only the agent's record may be missing.
                live.agent.mount_workspace().await?;
                return self.check_workspace(live).await.map(|()| false);
            }
            tracing::debug!(sandbox = %live.ctx.name, live_dev = dev, ?info, "/workspace is not the live workspace; putting it back");
            if info.mounted {
                live.agent.unmount_workspace(true).await?;
            }
        }
        failpoint::hit("restore:before_replace")?;
        live.state = self
            .runtime
            .replace_workspace(&live.ctx, &live.state)
            .await?;
        failpoint::hit("restore:before_mount")?;
        live.agent.mount_workspace().await?;
        self.check_workspace(live).await.map(|()| true)
    }

    /// `WorkspaceMismatch` unless `/workspace` is the live subvolume.
    async fn check_workspace(&self, live: &Live) -> Result<(), SandboxError> {
        match self.workspace_in_place(live).await? {
            Some((expected, found)) if !found.is(expected) => {
                Err(SandboxError::WorkspaceMismatch {
                    sandbox: live.ctx.name.clone(),
                    expected,
                    found,
                })
            }
            _ => Ok(()),
        }
    }
}
