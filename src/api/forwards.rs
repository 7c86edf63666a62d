//! `/vms/:name/port-forwards…` (extension): a host port that leads to a TCP
//! port inside the sandbox. Field names follow the MicroVM Sandbox
//! reference's "Configure port forwarding for a VM".

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::extract::Json as Body;
use super::{ApiError, AppResult, AppState, Auth, Message};
use crate::db::ForwardRow;
use crate::sandbox::NewForward;

/// One port forward.
#[derive(Debug, Serialize, ToSchema)]
pub struct Forward {
    vm_name: String,
    #[schema(value_type = String)]
    host_address: std::net::IpAddr,
    host_port: u16,
    guest_port: u16,
    protocol: String,
    description: Option<String>,
    created_at: String,
}

impl Forward {
    fn new(vm: &str, bind: std::net::IpAddr, f: &ForwardRow) -> Forward {
        Forward {
            vm_name: vm.to_owned(),
            host_address: bind,
            host_port: f.host_port,
            guest_port: f.guest_port,
            protocol: f.protocol.clone(),
            description: f.description.clone(),
            created_at: f.created_at.clone(),
        }
    }
}

/// `{"vm_name", "port_forwards": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForwardList {
    vm_name: String,
    port_forwards: Vec<Forward>,
}

/// A new forward, plus `message`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForwardCreated {
    #[serde(flatten)]
    forward: Forward,
    message: &'static str,
}

#[utoipa::path(get, path = "/vms/{name}/port-forwards", tag = "port-forwards",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 200, description = "its port forwards", body = ForwardList),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<ForwardList>> {
    let rows = state.sandboxes.list_forwards(&caller, &name).await?;
    let bind = state.sandboxes.config.network.forward_bind;
    let port_forwards = rows.iter().map(|f| Forward::new(&name, bind, f)).collect();
    Ok(Json(ForwardList {
        vm_name: name,
        port_forwards,
    }))
}

#[utoipa::path(post, path = "/vms/{name}/port-forwards", tag = "port-forwards",
    params(("name" = String, Path, description = "sandbox name")),
    request_body = NewForward,
    responses(
        (status = 201, description = "forwarding", body = ForwardCreated),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
        (status = 409, description = "the host port is taken, or the sandbox is not running", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<NewForward>,
) -> AppResult<(StatusCode, Json<ForwardCreated>)> {
    let row = state.sandboxes.add_forward(&caller, &name, body).await?;
    let bind = state.sandboxes.config.network.forward_bind;
    let created = ForwardCreated {
        forward: Forward::new(&name, bind, &row),
        message: "Port forward configured",
    };
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(delete, path = "/vms/{name}/port-forwards/{host_port}", tag = "port-forwards",
    params(
        ("name" = String, Path, description = "sandbox name"),
        ("host_port" = u16, Path, description = "host port of the forward"),
    ),
    responses(
        (status = 200, description = "closed", body = Message),
        (status = 400, description = "not a port (1-65535)", body = ErrorBody),
        (status = 404, description = "no such sandbox or forward", body = ErrorBody),
    ))]
pub async fn destroy(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, port)): Path<(String, String)>,
) -> AppResult<Json<Message>> {
    let host_port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
        ApiError::BadRequest(format!("host_port: `{port}` is not a port (1-65535)"))
    })?;
    state
        .sandboxes
        .remove_forward(&caller, &name, host_port)
        .await?;
    Ok(Message::json(format!(
        "Port forward from host port {host_port} removed"
    )))
}
