//! `GET /health` — no key needed.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// Liveness of the service.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: &'static str,
    /// RFC 3339, UTC, milliseconds.
    timestamp: String,
    version: &'static str,
    /// `namespace` or `cloud-hypervisor`.
    runtime: &'static str,
    uptime_seconds: u64,
}

#[utoipa::path(get, path = "/health", tag = "service", security(()),
    responses((status = 200, description = "the service is up", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    Json(Health {
        status: "ok",
        timestamp: now.format(&fmt).unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION"),
        runtime: state.sandboxes.runtime.kind().as_str(),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
}
