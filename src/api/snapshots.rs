//! `/vms/:name/snapshots…`: list, create named, delete, restore, fork.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::Json as Body;
use super::vms::Vm;
use super::{AppResult, AppState, Auth};
use crate::sandbox::{CreateSnapshot, SnapshotView};
use rewind_storage::Tier;

/// Reference fields (`id`, `vm_name`, `snapshot_name`, `command`,
/// `created_at`) plus extensions. Sizes come from Btrfs quota groups and are
/// `null` where quotas are off.
#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    id: i64,
    vm_name: String,
    snapshot_name: String,
    command: Option<String>,
    created_at: String,
    exit_code: Option<i32>,
    /// `initial`, `command`, `wipe`, `named`, `file`, `recovered`, …
    kind: String,
    pinned: bool,
    /// Why history thinning keeps it (`null`: it may be thinned).
    retained_because: Option<&'static str>,
    /// `hot` or `cold` (see Snapshot history).
    #[schema(value_type = String)]
    tier: Tier,
    description: Option<String>,
    include_memory: bool,
    /// Size of the saved memory images (memory snapshots).
    memory_image_bytes: Option<u64>,
    /// CRIU that made the memory images (namespace runtime).
    criu_version: Option<String>,
    /// `sha256:…` of what was saved.
    checksum: Option<String>,
    missing: bool,
    exclusive_bytes: Option<u64>,
    referenced_bytes: Option<u64>,
}

impl Snapshot {
    fn new(vm: &str, v: &SnapshotView) -> Snapshot {
        Snapshot {
            id: v.row.id,
            vm_name: vm.to_owned(),
            snapshot_name: v.row.name.clone(),
            command: v.row.command.clone(),
            created_at: v.row.created_at.clone(),
            exit_code: v.row.exit_code,
            kind: v.row.kind.clone(),
            pinned: v.pinned,
            retained_because: v.retained_because(),
            tier: v.tier,
            description: v.row.description.clone(),
            include_memory: v.row.include_memory,
            memory_image_bytes: v.memory.as_ref().map(|m| m.image_bytes),
            criu_version: v.memory.as_ref().and_then(|m| m.criu_version.clone()),
            checksum: v.row.checksum.clone(),
            missing: v.row.missing,
            exclusive_bytes: v.sizes.map(|s| s.exclusive_bytes),
            referenced_bytes: v.sizes.map(|s| s.referenced_bytes),
        }
    }
}

/// `{"snapshots": [...]}`, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotList {
    snapshots: Vec<Snapshot>,
}

/// A new named snapshot, in the MicroVM Sandbox reference's fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotCreated {
    name: String,
    vm_name: String,
    created_at: String,
    size_bytes: Option<u64>,
    exclusive_bytes: Option<u64>,
    description: Option<String>,
    include_memory: bool,
    memory_image_bytes: Option<u64>,
    criu_version: Option<String>,
    /// `sha256:…` of what was saved.
    checksum: Option<String>,
}

#[utoipa::path(get, path = "/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 200, description = "snapshot history, oldest first", body = SnapshotList),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<SnapshotList>> {
    let views = state.sandboxes.list_snapshots(&caller, &name).await?;
    let snapshots = views.iter().map(|v| Snapshot::new(&name, v)).collect();
    Ok(Json(SnapshotList { snapshots }))
}

/// Answers with the MicroVM Sandbox reference's fields.
#[utoipa::path(post, path = "/vms/{name}/snapshots", tag = "snapshots",
    params(("name" = String, Path, description = "sandbox name")),
    request_body = CreateSnapshot,
    responses(
        (status = 201, description = "named snapshot taken", body = SnapshotCreated),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
        (status = 409, description = "busy, or the name is taken", body = ErrorBody),
        (status = 501, description = "memory snapshots are not possible on this host (the message says why)", body = ErrorBody),
        (status = 507, description = "the storage pool is full", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<CreateSnapshot>,
) -> AppResult<(StatusCode, Json<SnapshotCreated>)> {
    let v = state
        .sandboxes
        .create_snapshot(&caller, &name, body)
        .await?;
    let created = SnapshotCreated {
        name: v.row.name,
        vm_name: name,
        created_at: v.row.created_at,
        size_bytes: v.sizes.map(|s| s.referenced_bytes),
        exclusive_bytes: v.sizes.map(|s| s.exclusive_bytes),
        description: v.row.description,
        include_memory: v.row.include_memory,
        memory_image_bytes: v.memory.as_ref().map(|m| m.image_bytes),
        criu_version: v.memory.as_ref().and_then(|m| m.criu_version.clone()),
        checksum: v.row.checksum,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(delete, path = "/vms/{name}/snapshots/{snapshot}", tag = "snapshots",
    params(
        ("name" = String, Path, description = "sandbox name"),
        ("snapshot" = String, Path, description = "snapshot name"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "not a valid snapshot name", body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 409, description = "the sandbox is not running (stopped or failed), or a terminal session is open", body = ErrorBody),
    ))]
pub async fn destroy(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
) -> AppResult<StatusCode> {
    state
        .sandboxes
        .delete_snapshot(&caller, &name, &snapshot)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/vms/{name}/snapshots/{snapshot}/restore", tag = "snapshots",
    params(
        ("name" = String, Path, description = "sandbox name"),
        ("snapshot" = String, Path, description = "snapshot name"),
    ),
    responses(
        (status = 200, description = "restored; later snapshots stay", body = Restored),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 409, description = "busy, or a saved memory state is damaged (the message names the file)", body = ErrorBody),
        (status = 500, description = "the runtime failed (the message carries its error)", body = ErrorBody),
        (status = 501, description = "a memory snapshot cannot be restored on this host", body = ErrorBody),
        (status = 503, description = "the sandbox's agent did not answer", body = ErrorBody),
    ))]
pub async fn restore(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
) -> AppResult<Json<Restored>> {
    let tier = state.sandboxes.restore(&caller, &name, &snapshot).await?;
    Ok(Json(Restored {
        message: format!("Restored to snapshot \"{snapshot}\""),
        tier,
    }))
}

/// `{"message", "tier"}` of a restore.
#[derive(Debug, Serialize, ToSchema)]
pub struct Restored {
    message: String,
    /// Where the snapshot was restored from: `hot` or `cold`.
    #[schema(value_type = String)]
    tier: Tier,
}

/// Body of `POST /vms/:name/restore` (the original OpenSandbox service's
/// route).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    snapshot: String,
}

/// `POST /vms/:name/restore` with `{"snapshot"}`: the same operation,
/// answer and status codes as `POST /vms/:name/snapshots/:snapshot/restore`.
#[utoipa::path(post, path = "/vms/{name}/restore", tag = "snapshots",
    params(("name" = String, Path, description = "sandbox name")),
    request_body = RestoreBody,
    responses(
        (status = 200, description = "restored; later snapshots stay", body = Restored),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 409, description = "busy", body = ErrorBody),
    ))]
pub async fn restore_alias(
    state: State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<RestoreBody>,
) -> AppResult<Json<Restored>> {
    restore(state, caller, Path((name, body.snapshot))).await
}

/// Body of `POST /vms/:name/snapshots/:snapshot/fork`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkBody {
    name: String,
}

/// Where a forked sandbox came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForkedFrom {
    vm: String,
    snapshot: String,
}

/// A new sandbox made by a fork: the sandbox, plus `forked_from`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Forked {
    #[serde(flatten)]
    vm: Vm,
    forked_from: ForkedFrom,
}

/// Extension: a new sandbox, owned by the caller, whose workspace starts as
/// the given snapshot (and, for a memory snapshot on a VM runtime, whose VM
/// resumes from it). Answers like `POST /vms`, plus `forked_from`.
#[utoipa::path(post, path = "/vms/{name}/snapshots/{snapshot}/fork", tag = "snapshots",
    params(
        ("name" = String, Path, description = "sandbox name"),
        ("snapshot" = String, Path, description = "snapshot name"),
    ),
    request_body = ForkBody,
    responses(
        (status = 201, description = "the new sandbox", body = Forked),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 409, description = "the new name is taken", body = ErrorBody),
    ))]
pub async fn fork(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
    Body(body): Body<ForkBody>,
) -> AppResult<(StatusCode, Json<Forked>)> {
    let row = state
        .sandboxes
        .fork(&caller, &name, &snapshot, &body.name)
        .await?;
    let forked = Forked {
        vm: Vm::new(&row),
        forked_from: ForkedFrom { vm: name, snapshot },
    };
    Ok((StatusCode::CREATED, Json(forked)))
}
