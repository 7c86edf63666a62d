//! `GET /api/v1/vms/{vm_name}/metrics`: the kernel's counters for the
//! sandbox (cgroups, its network namespace), `null` where the runtime cannot
//! know, never estimated.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Serialize;

use super::error::V1Result;
use crate::api::AppState;
use crate::auth::Caller;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Cpu)]
pub struct Cpu {
    /// Mean over the time since the sandbox started: CPU time / (uptime ×
    /// vCPUs) × 100.
    usage_percent: Option<f64>,
    vcpus: u32,
    cpu_time_seconds: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Memory)]
pub struct Memory {
    allocated_mb: u64,
    used_mb: Option<f64>,
    usage_percent: Option<f64>,
    available_mb: Option<f64>,
}

/// The sandbox's disk limit and what counts against it (its workspace,
/// overlay upper dir and what its snapshots still hold: the qgroup), as of
/// the last committed Btrfs transaction; `null` without a disk limit.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Disk)]
pub struct Disk {
    allocated_gb: Option<f64>,
    used_gb: Option<f64>,
    usage_percent: Option<f64>,
    available_gb: Option<f64>,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

impl Disk {
    fn of(view: Option<crate::sandbox::DiskView>) -> Disk {
        let limit = view.map(|d| d.limit_mb as f64 * MIB);
        let used = view.map(|d| d.used_bytes as f64);
        Disk {
            allocated_gb: limit.map(|l| round2(l / GIB)),
            used_gb: used.map(|u| round2(u / GIB)),
            usage_percent: limit
                .zip(used)
                .filter(|(l, _)| *l > 0.0)
                .map(|(l, u)| round2(u / l * 100.0)),
            available_gb: limit.zip(used).map(|(l, u)| round2((l - u).max(0.0) / GIB)),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Network)]
pub struct Network {
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    packets_out: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::MetricsView)]
pub struct MetricsView {
    vm_name: String,
    timestamp: String,
    cpu: Cpu,
    memory: Memory,
    disk: Disk,
    network: Option<Network>,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[utoipa::path(get, path = "/vms/{vm_name}/metrics", tag = "v1 vms",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    responses(
        (status = 200, description = "cpu, memory, disk and network; null where the runtime cannot know", body = MetricsView),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<Json<MetricsView>> {
    let m = state.sandboxes.metrics(&caller, &name).await?;
    let disk = state.sandboxes.disk(&m.row.name).await?;
    let vm = super::vms::VmView::new(&state, &m.row);
    let vcpus = vm.vcpus();
    let uptime = vm.uptime_seconds().filter(|&s| s > 0);
    let cpu_time = m.usage.cpu_seconds;
    let usage_percent = cpu_time
        .zip(uptime)
        .map(|(t, up)| round2(t / (up as f64 * f64::from(vcpus)) * 100.0));
    let allocated_mb = m.limits.memory_bytes / (1024 * 1024);
    let used_mb = m.usage.memory_bytes.map(|b| round2(b as f64 / MIB));
    Ok(Json(MetricsView {
        vm_name: m.row.name.clone(),
        timestamp: super::now_utc(),
        cpu: Cpu {
            usage_percent,
            vcpus,
            cpu_time_seconds: cpu_time.map(round2),
        },
        memory: Memory {
            allocated_mb,
            used_mb,
            usage_percent: used_mb.map(|u| round2(u / allocated_mb as f64 * 100.0)),
            available_mb: used_mb.map(|u| round2(allocated_mb as f64 - u)),
        },
        disk: Disk::of(disk),
        network: m.usage.net.map(|n| Network {
            bytes_in: n.bytes_in,
            bytes_out: n.bytes_out,
            packets_in: n.packets_in,
            packets_out: n.packets_out,
        }),
    }))
}
