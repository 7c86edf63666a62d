//! `/vms` and `/vms/:name`: list, create, inspect, destroy.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Json as Body;
use super::{AppResult, AppState, Auth};
use crate::db::SandboxRow;

/// Body of `POST /vms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    name: String,
    /// Disk limit in MiB (default and maximum: `limits.disk_mb`).
    disk_mb: Option<i64>,
}

/// What the reference calls `base_vm`: the image sandboxes start from.
pub const BASE_VM: &str = "base";

/// A sandbox as the reference API shows it. `agent_port` and `ssh_port` have
/// no meaning here (the agent is reached over a Unix or vsock socket, and
/// there is no SSH): they are always `null`.
pub fn vm_json(row: &SandboxRow) -> Value {
    json!({
        "id": row.id,
        "name": row.name,
        "base_vm": BASE_VM,
        "status": row.status.as_str(),
        "agent_port": null,
        "ssh_port": null,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "runtime": row.runtime,
        "status_reason": row.status_reason,
    })
}

pub async fn list(State(state): State<AppState>, caller: Auth) -> AppResult<Json<Value>> {
    let rows = state.sandboxes.list(&caller).await?;
    let vms: Vec<Value> = rows.iter().map(vm_json).collect();
    Ok(Json(json!({ "vms": vms })))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Auth,
    Body(body): Body<CreateVm>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let row = state
        .sandboxes
        .create_with_disk(&caller, &body.name, body.disk_mb)
        .await?;
    Ok((StatusCode::CREATED, Json(vm_json(&row))))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    let row = state.sandboxes.find(&caller, &name).await?;
    let healthy = state.sandboxes.agent_healthy(&row.name).await;
    let mut vm = vm_json(&row);
    vm["agentHealthy"] = json!(healthy);
    vm["network_config"] = json!(state.sandboxes.network(&row.name));
    let disk = state.sandboxes.disk(&row.name).await.unwrap_or_else(|e| {
        tracing::warn!(sandbox = %row.name, error = %crate::runtime::chain(&e), "reading disk usage");
        None
    });
    vm["disk"] = json!(disk);
    Ok(Json(vm))
}

pub async fn destroy(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    state.sandboxes.delete(&caller, &name).await?;
    Ok(Json(
        json!({ "message": format!("VM \"{name}\" destroyed") }),
    ))
}

/// Stop: every process of the sandbox ends; workspace and snapshots stay.
pub async fn stop(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    let row = state.sandboxes.stop(&caller, &name).await?;
    Ok(Json(vm_json(&row)))
}

/// Start a stopped sandbox again on its current workspace.
pub async fn start(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    let row = state.sandboxes.start(&caller, &name).await?;
    Ok(Json(vm_json(&row)))
}
