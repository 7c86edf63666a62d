//! `/vms/:name/snapshots…`: list, create named, delete, restore.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::extract::Json as Body;
use super::{AppResult, AppState, Auth};
use crate::sandbox::{CreateSnapshot, SnapshotView};

/// Reference fields (`id`, `vm_name`, `snapshot_name`, `command`,
/// `created_at`) plus extensions. Sizes come from Btrfs quota groups and are
/// `null` where quotas are off.
fn snapshot_json(vm: &str, v: &SnapshotView) -> Value {
    json!({
        "id": v.row.id,
        "vm_name": vm,
        "snapshot_name": v.row.name,
        "command": v.row.command,
        "created_at": v.row.created_at,
        "exit_code": v.row.exit_code,
        "kind": v.row.kind,
        "pinned": v.pinned,
        "retained_because": v.retained_because(),
        "tier": v.tier,
        "description": v.row.description,
        "include_memory": v.row.include_memory,
        "memory_image_bytes": v.memory.as_ref().map(|m| m.image_bytes),
        "criu_version": v.memory.as_ref().and_then(|m| m.criu_version.clone()),
        "checksum": v.row.checksum,
        "missing": v.row.missing,
        "exclusive_bytes": v.sizes.map(|s| s.exclusive_bytes),
        "referenced_bytes": v.sizes.map(|s| s.referenced_bytes),
    })
}

pub async fn list(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    let views = state.sandboxes.list_snapshots(&caller, &name).await?;
    let snapshots: Vec<Value> = views.iter().map(|v| snapshot_json(&name, v)).collect();
    Ok(Json(json!({ "snapshots": snapshots })))
}

/// Answers with the MicroVM Sandbox reference's fields.
pub async fn create(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<CreateSnapshot>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let v = state
        .sandboxes
        .create_snapshot(&caller, &name, body)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": v.row.name,
            "vm_name": name,
            "created_at": v.row.created_at,
            "size_bytes": v.sizes.map(|s| s.referenced_bytes),
            "exclusive_bytes": v.sizes.map(|s| s.exclusive_bytes),
            "description": v.row.description,
            "include_memory": v.row.include_memory,
            "memory_image_bytes": v.memory.as_ref().map(|m| m.image_bytes),
            "criu_version": v.memory.as_ref().and_then(|m| m.criu_version.clone()),
            "checksum": v.row.checksum,
        })),
    ))
}

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

pub async fn restore(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
) -> AppResult<Json<Value>> {
    let tier = state.sandboxes.restore(&caller, &name, &snapshot).await?;
    Ok(Json(json!({
        "message": format!("Restored to snapshot \"{snapshot}\""),
        "tier": tier,
    })))
}

/// Body of `POST /vms/:name/restore` (the original OpenSandbox service's
/// route).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    snapshot: String,
}

/// `POST /vms/:name/restore` with `{"snapshot"}`: the same operation,
/// answer and status codes as `POST /vms/:name/snapshots/:snapshot/restore`.
pub async fn restore_alias(
    state: State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<RestoreBody>,
) -> AppResult<Json<Value>> {
    restore(state, caller, Path((name, body.snapshot))).await
}

/// Body of `POST /vms/:name/snapshots/:snapshot/fork`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkBody {
    name: String,
}

/// Extension: a new sandbox, owned by the caller, whose workspace starts as
/// the given snapshot (and, for a memory snapshot on a VM runtime, whose VM
/// resumes from it). Answers like `POST /vms`, plus `forked_from`.
pub async fn fork(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
    Body(body): Body<ForkBody>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let row = state
        .sandboxes
        .fork(&caller, &name, &snapshot, &body.name)
        .await?;
    let mut vm = super::vms::vm_json(&row);
    vm["forked_from"] = json!({ "vm": name, "snapshot": snapshot });
    Ok((StatusCode::CREATED, Json(vm)))
}
