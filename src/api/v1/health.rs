//! `GET /api/v1/health` (no auth; each component really probed; 503 when
//! one fails) and `GET /api/v1/status` (counts and request statistics).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::error::V1Result;
use crate::api::AppState;
use crate::sandbox::health::Probe;

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::HealthView)]
pub struct HealthView {
    status: &'static str,
    timestamp: String,
    version: &'static str,
    /// `healthy`, or `unhealthy: <why>`.
    #[schema(value_type = BTreeMap<String, String>)]
    components: BTreeMap<&'static str, String>,
    uptime_seconds: u64,
}

fn word(p: &Probe) -> String {
    match p {
        Ok(()) => "healthy".into(),
        Err(why) => format!("unhealthy: {why}"),
    }
}

#[utoipa::path(get, path = "/health", tag = "v1 system",
    security(()),
    responses(
        (status = 200, description = "every component answered", body = HealthView),
        (status = 503, description = "a component failed (its entry says why)", body = HealthView),
    ))]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthView>) {
    let h = state.sandboxes.probe().await;
    let all_ok = h.database.is_ok() && h.storage.is_ok() && h.runtime.is_ok();
    let components = BTreeMap::from([
        ("api", "healthy".to_owned()),
        ("database", word(&h.database)),
        ("storage", word(&h.storage)),
        ("runtime", word(&h.runtime)),
    ]);
    let view = HealthView {
        status: if all_ok { "healthy" } else { "unhealthy" },
        timestamp: super::now_utc(),
        version: env!("CARGO_PKG_VERSION"),
        components,
        uptime_seconds: state.started.elapsed().as_secs(),
    };
    let code = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(view))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::SystemView)]
pub struct SystemView {
    host_os: Option<String>,
    runtime: &'static str,
    /// Not reported yet: always `null`.
    cloud_hypervisor_version: Option<String>,
    rewind_version: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Statistics)]
pub struct Statistics {
    total_vms: u64,
    running_vms: u64,
    total_snapshots: u64,
    api_requests_today: u64,
    average_response_time_ms: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::StatusView)]
pub struct StatusView {
    api_version: &'static str,
    timestamp: String,
    system: SystemView,
    statistics: Statistics,
}

/// `PRETTY_NAME` of `/etc/os-release`.
fn host_os() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let line = text.lines().find(|l| l.starts_with("PRETTY_NAME="))?;
    Some(line["PRETTY_NAME=".len()..].trim_matches('"').to_owned())
}

#[utoipa::path(get, path = "/status", tag = "v1 system",
    responses(
        (status = 200, description = "system and request statistics", body = StatusView),
    ))]
pub async fn status(State(state): State<AppState>) -> V1Result<Json<StatusView>> {
    let counts = state.sandboxes.counts().await?;
    let (requests, mean_ms) = state.stats.today();
    Ok(Json(StatusView {
        api_version: env!("CARGO_PKG_VERSION"),
        timestamp: super::now_utc(),
        system: SystemView {
            host_os: tokio::task::spawn_blocking(host_os).await.ok().flatten(),
            runtime: state.sandboxes.runtime.kind().as_str(),
            cloud_hypervisor_version: None,
            rewind_version: env!("CARGO_PKG_VERSION"),
        },
        statistics: Statistics {
            total_vms: counts.sandboxes,
            running_vms: counts.running,
            total_snapshots: counts.snapshots,
            api_requests_today: requests,
            average_response_time_ms: mean_ms.map(|ms| (ms * 100.0).round() / 100.0),
        },
    }))
}
