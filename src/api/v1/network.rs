//! `GET /api/v1/networks`, `GET /api/v1/vms/{vm_name}/network`,
//! `POST /api/v1/vms/{vm_name}/network/port-forward`. Every sandbox has a
//! network namespace of its own (no shared bridge): `networks` lists one
//! entry per visible VM. A port forward is the native one
//! ([`crate::sandbox`]'s `forward.rs`): a host port on
//! `network.forward_bind` that leads to a TCP port inside the sandbox.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;

use super::error::V1Result;
use super::extract::Json as Body;
use crate::api::AppState;
use crate::auth::Caller;
use crate::db::{ForwardRow, SandboxRow, SandboxStatus};
use crate::runtime::network::NetworkInfo;
use crate::sandbox::NewForward;

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::NetworkView)]
pub struct NetworkView {
    name: String,
    /// `isolated` (its own namespace with a TAP and an address) or
    /// `loopback` (its own namespace with loopback only).
    #[serde(rename = "type")]
    kind: &'static str,
    subnet: Option<String>,
    gateway: Option<String>,
    dhcp_enabled: bool,
    vms_connected: usize,
    vm_name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Networks)]
pub struct Networks {
    networks: Vec<NetworkView>,
}

fn network_view(row: &SandboxRow, net: Option<NetworkInfo>) -> NetworkView {
    let name = net
        .as_ref()
        .and_then(|n| n.netns.file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{}-loopback", row.name));
    let subnet = net.as_ref().map(|n| {
        let mask = u32::MAX.checked_shl(32 - u32::from(n.prefix)).unwrap_or(0);
        let base = std::net::Ipv4Addr::from(u32::from(n.ip) & mask);
        format!("{base}/{}", n.prefix)
    });
    NetworkView {
        name,
        kind: if net.is_some() {
            "isolated"
        } else {
            "loopback"
        },
        subnet,
        gateway: net.as_ref().map(|n| n.gateway.to_string()),
        dhcp_enabled: false,
        vms_connected: usize::from(row.status == SandboxStatus::Running),
        vm_name: row.name.clone(),
    }
}

#[utoipa::path(get, path = "/networks", tag = "v1 network",
    responses(
        (status = 200, description = "one network per visible VM", body = Networks),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> V1Result<Json<Networks>> {
    let rows = state.sandboxes.list(&caller).await?;
    let networks = rows
        .iter()
        .filter(|r| {
            matches!(
                r.status,
                SandboxStatus::Running | SandboxStatus::Stopped | SandboxStatus::Failed
            )
        })
        .map(|r| network_view(r, state.sandboxes.network(&r.name)))
        .collect();
    Ok(Json(Networks { networks }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Forward)]
pub struct Forward {
    host_port: u16,
    guest_port: u16,
    protocol: String,
    description: Option<String>,
    host_address: String,
}

fn forward(state: &AppState, f: &ForwardRow) -> Forward {
    Forward {
        host_port: f.host_port,
        guest_port: f.guest_port,
        protocol: f.protocol.clone(),
        description: f.description.clone(),
        host_address: state.sandboxes.config.network.forward_bind.to_string(),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::VmNetwork)]
pub struct VmNetwork {
    vm_name: String,
    ip_address: Option<String>,
    mac_address: Option<String>,
    bridge_name: Option<String>,
    network_interface: Option<String>,
    /// `connected` (running, with an address), `loopback_only` (running,
    /// reachable through port forwards only) or `disconnected` (not running).
    connectivity_status: &'static str,
    port_forwards: Vec<Forward>,
}

#[utoipa::path(get, path = "/vms/{vm_name}/network", tag = "v1 network",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    responses(
        (status = 200, description = "its address, interface and port forwards", body = VmNetwork),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<Json<VmNetwork>> {
    let row = state.sandboxes.find(&caller, &name).await?;
    let forwards = state.sandboxes.list_forwards(&caller, &name).await?;
    let net = state.sandboxes.network(&row.name);
    let connectivity_status = match (row.status == SandboxStatus::Running, &net) {
        (false, _) => "disconnected",
        (true, Some(_)) => "connected",
        (true, None) => "loopback_only",
    };
    Ok(Json(VmNetwork {
        vm_name: row.name.clone(),
        ip_address: net.as_ref().map(|n| n.ip.to_string()),
        mac_address: net.as_ref().map(|n| n.mac_address.clone()),
        bridge_name: None,
        network_interface: net.as_ref().map(|n| n.network_interface.clone()),
        connectivity_status,
        port_forwards: forwards.iter().map(|f| forward(&state, f)).collect(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::PortForwardCreated)]
pub struct Created {
    message: &'static str,
    vm_name: String,
    #[serde(flatten)]
    forward: Forward,
}

/// Body: `host_port` (absent or 0: a free one), `guest_port`, `protocol`
/// (`tcp` only), `description`.
#[utoipa::path(post, path = "/vms/{vm_name}/network/port-forward", tag = "v1 network",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body = crate::sandbox::NewForward,
    responses(
        (status = 201, description = "forwarding", body = Created),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "the host port is taken, or not running", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn port_forward(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<NewForward>,
) -> V1Result<(StatusCode, Json<Created>)> {
    let row = state.sandboxes.add_forward(&caller, &name, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            message: "Port forward configured",
            vm_name: name,
            forward: forward(&state, &row),
        }),
    ))
}
