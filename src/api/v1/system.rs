//! `GET /api/v1/system/metrics`: the host (CPU over a short sample, memory,
//! the storage pool's file system) and totals over the caller's VMs.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;

use super::error::V1Result;
use crate::api::AppState;
use crate::auth::Caller;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn gb(bytes: u64) -> f64 {
    round2(bytes as f64 / GIB)
}

fn percent(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| round2(part / whole * 100.0))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Host)]
pub struct Host {
    cpu_usage_percent: Option<f64>,
    cpu_cores: usize,
    memory_total_gb: Option<f64>,
    memory_used_gb: Option<f64>,
    memory_usage_percent: Option<f64>,
    /// The file system of the storage pool (where every sandbox lives).
    disk_total_gb: f64,
    disk_used_gb: f64,
    disk_usage_percent: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Vms)]
pub struct Vms {
    total_count: usize,
    running_count: usize,
    stopped_count: usize,
    failed_count: usize,
    /// Of the running VMs.
    total_vcpus_allocated: u64,
    total_memory_allocated_gb: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::SystemMetrics)]
pub struct SystemMetrics {
    timestamp: String,
    host: Host,
    vms: Vms,
}

#[utoipa::path(get, path = "/system/metrics", tag = "v1 system",
    responses(
        (status = 200, description = "host CPU, memory and disk, and VM totals", body = SystemMetrics),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> V1Result<Json<SystemMetrics>> {
    let h = state.sandboxes.host_metrics().await?;
    let t = state.sandboxes.vm_totals(&caller).await?;
    let mem_pct = h
        .memory_used_bytes
        .zip(h.memory_total_bytes)
        .and_then(|(u, t)| percent(u as f64, t as f64));
    Ok(Json(SystemMetrics {
        timestamp: super::now_utc(),
        host: Host {
            cpu_usage_percent: h.cpu_usage_percent.map(round2),
            cpu_cores: h.cpu_cores,
            memory_total_gb: h.memory_total_bytes.map(gb),
            memory_used_gb: h.memory_used_bytes.map(gb),
            memory_usage_percent: mem_pct,
            disk_total_gb: gb(h.disk_total_bytes),
            disk_used_gb: gb(h.disk_used_bytes),
            disk_usage_percent: percent(h.disk_used_bytes as f64, h.disk_total_bytes as f64),
        },
        vms: Vms {
            total_count: t.total,
            running_count: t.running,
            stopped_count: t.stopped,
            failed_count: t.failed,
            total_vcpus_allocated: t.vcpus_allocated,
            total_memory_allocated_gb: round2(t.memory_allocated_mb as f64 / 1024.0),
        },
    }))
}
