//! `/vms` and `/vms/:name`: list, create, inspect, destroy, stop, start.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::Json as Body;
use super::{AppResult, AppState, Auth, Message};
use crate::db::SandboxRow;
use crate::runtime::network::NetworkInfo;
use crate::sandbox::DiskView;

/// Body of `POST /vms`.
#[derive(Debug, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct Vm {
    id: i64,
    name: String,
    base_vm: &'static str,
    /// `running`, `stopped`, `failed`, …
    status: &'static str,
    #[schema(value_type = Option<u16>)]
    agent_port: Option<()>,
    #[schema(value_type = Option<u16>)]
    ssh_port: Option<()>,
    created_at: String,
    updated_at: String,
    runtime: String,
    status_reason: Option<String>,
}

impl Vm {
    pub fn new(row: &SandboxRow) -> Vm {
        Vm {
            id: row.id,
            name: row.name.clone(),
            base_vm: BASE_VM,
            status: row.status.as_str(),
            agent_port: None,
            ssh_port: None,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
            runtime: row.runtime.clone(),
            status_reason: row.status_reason.clone(),
        }
    }
}

/// `GET /vms/:name`: the sandbox plus what only a lookup of one shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmDetail {
    #[serde(flatten)]
    vm: Vm,
    #[serde(rename = "agentHealthy")]
    agent_healthy: bool,
    network_config: Option<NetworkInfo>,
    disk: Option<DiskView>,
}

/// `{"vms": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmList {
    vms: Vec<Vm>,
}

#[utoipa::path(get, path = "/vms", tag = "sandboxes",
    responses(
        (status = 200, description = "your sandboxes (admin: all)", body = VmList),
        (status = 401, description = "no API key", body = ErrorBody),
        (status = 403, description = "unknown API key", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, caller: Auth) -> AppResult<Json<VmList>> {
    let rows = state.sandboxes.list(&caller).await?;
    Ok(Json(VmList {
        vms: rows.iter().map(Vm::new).collect(),
    }))
}

#[utoipa::path(post, path = "/vms", tag = "sandboxes", request_body = CreateVm,
    responses(
        (status = 201, description = "created; snapshot `initial` taken", body = Vm),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 507, description = "the storage pool is full", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Auth,
    Body(body): Body<CreateVm>,
) -> AppResult<(StatusCode, Json<Vm>)> {
    let row = state
        .sandboxes
        .create_with_disk(&caller, &body.name, body.disk_mb)
        .await?;
    Ok((StatusCode::CREATED, Json(Vm::new(&row))))
}

#[utoipa::path(get, path = "/vms/{name}", tag = "sandboxes",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 200, description = "the sandbox, its agent's health and disk use", body = VmDetail),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<VmDetail>> {
    let row = state.sandboxes.find(&caller, &name).await?;
    let agent_healthy = state.sandboxes.agent_healthy(&row.name).await;
    let disk = state.sandboxes.disk(&row.name).await.unwrap_or_else(|e| {
        tracing::warn!(sandbox = %row.name, error = %crate::runtime::chain(&e), "reading disk usage");
        None
    });
    Ok(Json(VmDetail {
        vm: Vm::new(&row),
        agent_healthy,
        network_config: state.sandboxes.network(&row.name),
        disk,
    }))
}

#[utoipa::path(delete, path = "/vms/{name}", tag = "sandboxes",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 200, description = "destroyed with all its snapshots", body = Message),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
    ))]
pub async fn destroy(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Message>> {
    state.sandboxes.delete(&caller, &name).await?;
    Ok(Message::json(format!("VM \"{name}\" destroyed")))
}

/// Stop: every process of the sandbox ends; workspace and snapshots stay.
#[utoipa::path(post, path = "/vms/{name}/stop", tag = "sandboxes",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 200, description = "stopped (`status: stopped`)", body = Vm),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
        (status = 409, description = "busy, or not in a state that can stop", body = ErrorBody),
    ))]
pub async fn stop(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Vm>> {
    let row = state.sandboxes.stop(&caller, &name).await?;
    Ok(Json(Vm::new(&row)))
}

/// Start a stopped sandbox again on its current workspace.
#[utoipa::path(post, path = "/vms/{name}/start", tag = "sandboxes",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 200, description = "running again on its current workspace", body = Vm),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
        (status = 409, description = "busy, or not stopped", body = ErrorBody),
    ))]
pub async fn start(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Vm>> {
    let row = state.sandboxes.start(&caller, &name).await?;
    Ok(Json(Vm::new(&row)))
}
