//! `/api/v1/vms/{vm_name}/snapshots…`: list, create, restore, delete — the
//! same snapshots the native API and every command make.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::V1Result;
use super::extract::Json as Body;
use crate::api::AppState;
use crate::auth::Caller;
use crate::sandbox::{CreateSnapshot, SnapshotView};

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Metadata)]
pub struct Metadata {
    vm_status: &'static str,
    vcpus: u32,
    memory_mb: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::SnapshotItem)]
pub struct SnapshotItem {
    name: String,
    vm_name: String,
    created_at: String,
    /// Referenced bytes from Btrfs quota groups; `null` with quotas off.
    size_bytes: Option<u64>,
    description: Option<String>,
    metadata: Metadata,
    kind: String,
    command: Option<String>,
    include_memory: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::SnapshotList)]
pub struct SnapshotList {
    snapshots: Vec<SnapshotItem>,
}

#[utoipa::path(get, path = "/vms/{vm_name}/snapshots", tag = "v1 snapshots",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    responses(
        (status = 200, description = "its snapshots", body = SnapshotList),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<Json<SnapshotList>> {
    let row = state.sandboxes.find(&caller, &name).await?;
    let views = state.sandboxes.list_snapshots(&caller, &name).await?;
    let vm = super::vms::VmView::new(&state, &row);
    let (vcpus, memory_mb) = (vm.vcpus(), vm.memory_mb());
    let snapshots = views
        .into_iter()
        .map(|v| SnapshotItem {
            name: v.row.name,
            vm_name: row.name.clone(),
            created_at: super::utc(&v.row.created_at),
            size_bytes: v.sizes.map(|s| s.referenced_bytes),
            description: v.row.description,
            metadata: Metadata {
                vm_status: row.status.as_str(),
                vcpus,
                memory_mb,
            },
            kind: v.row.kind,
            command: v.row.command,
            include_memory: v.row.include_memory,
        })
        .collect();
    Ok(Json(SnapshotList { snapshots }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = v1::Create)]
#[serde(deny_unknown_fields)]
pub struct Create {
    name: String,
    description: Option<String>,
    #[serde(default)]
    include_memory: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Created)]
pub struct Created {
    name: String,
    vm_name: String,
    created_at: String,
    size_bytes: Option<u64>,
    description: Option<String>,
    /// `sha256:` of what was saved (see README: what the checksum covers).
    checksum: Option<String>,
    include_memory: bool,
    /// Memory snapshots: size of the saved memory image and, on the
    /// namespace runtime, the CRIU version that wrote it.
    memory_image_bytes: Option<u64>,
    criu_version: Option<String>,
}

fn created(vm_name: String, v: SnapshotView) -> Created {
    Created {
        name: v.row.name,
        vm_name,
        created_at: super::utc(&v.row.created_at),
        size_bytes: v.sizes.map(|s| s.referenced_bytes),
        description: v.row.description,
        checksum: v.row.checksum,
        include_memory: v.row.include_memory,
        memory_image_bytes: v.memory.as_ref().map(|m| m.image_bytes),
        criu_version: v.memory.and_then(|m| m.criu_version),
    }
}

#[utoipa::path(post, path = "/vms/{vm_name}/snapshots", tag = "v1 snapshots",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body = Create,
    responses(
        (status = 201, description = "taken, with the checksum of what was saved", body = Created),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "busy, or the name is taken", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<Create>,
) -> V1Result<(StatusCode, Json<Created>)> {
    let req = CreateSnapshot {
        name: body.name,
        description: body.description,
        include_memory: body.include_memory,
    };
    let view = state.sandboxes.create_snapshot(&caller, &name, req).await?;
    Ok((StatusCode::CREATED, Json(created(name, view))))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Restored)]
pub struct Restored {
    message: &'static str,
    vm_name: String,
    snapshot_name: String,
    restored_at: String,
}

#[utoipa::path(post, path = "/vms/{vm_name}/snapshots/{snapshot_name}/restore", tag = "v1 snapshots",
    params(("vm_name" = String, Path, description = "VM (sandbox) name"), ("snapshot_name" = String, Path, description = "snapshot name")),
    responses(
        (status = 200, description = "restored", body = Restored),
        (status = 404, description = "no such VM or snapshot", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
    ))]
pub async fn restore(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, snapshot)): Path<(String, String)>,
) -> V1Result<Json<Restored>> {
    state.sandboxes.restore(&caller, &name, &snapshot).await?;
    Ok(Json(Restored {
        message: "VM restored successfully",
        vm_name: name,
        snapshot_name: snapshot,
        restored_at: super::now_utc(),
    }))
}

#[utoipa::path(delete, path = "/vms/{vm_name}/snapshots/{snapshot_name}", tag = "v1 snapshots",
    params(("vm_name" = String, Path, description = "VM (sandbox) name"), ("snapshot_name" = String, Path, description = "snapshot name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such VM or snapshot", body = super::error::Body),
        (status = 409, description = "not running", body = super::error::Body),
        (status = 422, description = "not a valid snapshot name", body = super::error::Body),
    ))]
pub async fn destroy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, snapshot)): Path<(String, String)>,
) -> V1Result<StatusCode> {
    state
        .sandboxes
        .delete_snapshot(&caller, &name, &snapshot)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
