//! `/vms/:name/port-forwards…` (extension): a host port that leads to a TCP
//! port inside the sandbox. Field names follow the MicroVM Sandbox
//! reference's "Configure port forwarding for a VM".

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::extract::Json as Body;
use super::{ApiError, AppResult, AppState, Auth};
use crate::db::ForwardRow;
use crate::sandbox::NewForward;

fn forward_json(vm: &str, bind: std::net::IpAddr, f: &ForwardRow) -> Value {
    json!({
        "vm_name": vm,
        "host_address": bind,
        "host_port": f.host_port,
        "guest_port": f.guest_port,
        "protocol": f.protocol,
        "description": f.description,
        "created_at": f.created_at,
    })
}

pub async fn list(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    let rows = state.sandboxes.list_forwards(&caller, &name).await?;
    let bind = state.sandboxes.config.network.forward_bind;
    let forwards: Vec<Value> = rows.iter().map(|f| forward_json(&name, bind, f)).collect();
    Ok(Json(json!({ "vm_name": name, "port_forwards": forwards })))
}

pub async fn create(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<NewForward>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let row = state.sandboxes.add_forward(&caller, &name, body).await?;
    let bind = state.sandboxes.config.network.forward_bind;
    let mut out = forward_json(&name, bind, &row);
    out["message"] = json!("Port forward configured");
    Ok((StatusCode::CREATED, Json(out)))
}

pub async fn destroy(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, port)): Path<(String, String)>,
) -> AppResult<Json<Value>> {
    let host_port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
        ApiError::BadRequest(format!("host_port: `{port}` is not a port (1-65535)"))
    })?;
    state
        .sandboxes
        .remove_forward(&caller, &name, host_port)
        .await?;
    Ok(Json(json!({
        "message": format!("Port forward from host port {host_port} removed")
    })))
}
