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

#[derive(Serialize)]
pub struct Cpu {
    /// Mean over the time since the sandbox started: CPU time / (uptime ×
    /// vCPUs) × 100.
    usage_percent: Option<f64>,
    vcpus: u32,
    cpu_time_seconds: Option<f64>,
}

#[derive(Serialize)]
pub struct Memory {
    allocated_mb: u64,
    used_mb: Option<f64>,
    usage_percent: Option<f64>,
    available_mb: Option<f64>,
}

#[derive(Serialize)]
pub struct Disk {
    /// `storage_config.disk_size_gb` as asked (not enforced yet).
    allocated_gb: Option<u64>,
    /// Not measured yet: `null`.
    used_gb: Option<f64>,
    usage_percent: Option<f64>,
    available_gb: Option<f64>,
}

#[derive(Serialize)]
pub struct Network {
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    packets_out: u64,
}

#[derive(Serialize)]
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

pub async fn metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<Json<MetricsView>> {
    let m = state.sandboxes.metrics(&caller, &name).await?;
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
        disk: Disk {
            allocated_gb: m.row.spec.disk_gb,
            used_gb: None,
            usage_percent: None,
            available_gb: None,
        },
        network: m.usage.net.map(|n| Network {
            bytes_in: n.bytes_in,
            bytes_out: n.bytes_out,
            packets_in: n.packets_in,
            packets_out: n.packets_out,
        }),
    }))
}
