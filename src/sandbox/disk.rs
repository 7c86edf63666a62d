//! Disk limits: the per-create `disk_mb` (checked against
//! `limits.disk_mb`) and the usage `GET /vms/:name` shows. The limit itself
//! is a Btrfs qgroup over every subvolume of the sandbox (see the
//! `rewind-storage` docs, "Disk limits"): what the sandbox wrote into its
//! workspace, its overlay upper dir (in its `state` subvolume) and what its
//! snapshots still hold.

use serde::Serialize;

use super::{parse_sandbox_name, SandboxError, Sandboxes};

const MIB: u64 = 1024 * 1024;

/// `disk` in `GET /vms/:name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DiskView {
    pub limit_mb: u64,
    /// As of the last committed Btrfs transaction (at most ~30 s old).
    pub used_bytes: u64,
}

impl Sandboxes {
    /// The limit in bytes for a new sandbox: `requested` MiB (1 ..=
    /// `limits.disk_mb`), else the configured default; `None` when disk
    /// limits are off (`limits.disk_mb = 0`).
    pub(super) fn disk_limit_bytes(
        &self,
        requested: Option<i64>,
    ) -> Result<Option<u64>, SandboxError> {
        let max = self.config.limits.disk_mb;
        let invalid = |message: String| SandboxError::Invalid {
            field: "disk_mb",
            message,
        };
        match requested {
            None if max == 0 => Ok(None),
            None => Ok(Some(max * MIB)),
            Some(_) if max == 0 => Err(invalid(
                "disk limits are off on this server (limits.disk_mb = 0)".into(),
            )),
            Some(mb) if mb < 1 => Err(invalid(format!("must be positive, got {mb}"))),
            Some(mb) if mb as u64 > max => Err(invalid(format!(
                "{mb} exceeds this server's maximum of {max} (limits.disk_mb)"
            ))),
            Some(mb) => Ok(Some(mb as u64 * MIB)),
        }
    }

    /// The sandbox's disk limit and use; `None` when it has no limit (disk
    /// limits off, a kernel without simple quotas, or a sandbox created
    /// before limits were on).
    pub async fn disk(&self, name: &str) -> Result<Option<DiskView>, SandboxError> {
        let sb = parse_sandbox_name(name)?;
        let usage = self.blocking(move |s| s.disk_usage(&sb)).await?;
        Ok(usage.map(|u| DiskView {
            limit_mb: u.limit_bytes / MIB,
            used_bytes: u.used_bytes,
        }))
    }
}
