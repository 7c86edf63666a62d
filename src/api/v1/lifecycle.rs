//! `POST /api/v1/vms/{vm_name}/start|stop|restart`: real stop and start
//! ([`crate::sandbox`]'s `stop.rs` / `start.rs`).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{V1Error, V1Result};
use super::extract::JsonOrEmpty;
use crate::api::AppState;
use crate::auth::Caller;

/// Body of `stop` (optional). The namespace runtime ends a sandbox at once
/// (SIGKILL of its PID 1 and its cgroup), so `force` and `timeout_seconds`
/// are validated and accepted but do not change how it stops.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    #[serde(default)]
    #[allow(dead_code)]
    force: bool,
    timeout_seconds: Option<i64>,
}

#[derive(Serialize)]
pub struct Changed {
    message: &'static str,
    vm_name: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restarted_at: Option<String>,
}

fn changed(message: &'static str, vm_name: String, status: &'static str) -> Changed {
    Changed {
        message,
        vm_name,
        status,
        started_at: None,
        stopped_at: None,
        restarted_at: None,
    }
}

pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<Json<Changed>> {
    let row = state.sandboxes.start(&caller, &name).await?;
    Ok(Json(Changed {
        started_at: row.started_at.as_deref().map(super::utc),
        ..changed("VM started successfully", row.name, row.status.as_str())
    }))
}

pub async fn stop(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<StopBody>,
) -> V1Result<Json<Changed>> {
    if body
        .timeout_seconds
        .is_some_and(|t| !(1..=3600).contains(&t))
    {
        return Err(V1Error::invalid(
            "timeout_seconds",
            "must be between 1 and 3600",
        ));
    }
    let row = state.sandboxes.stop(&caller, &name).await?;
    Ok(Json(Changed {
        stopped_at: Some(super::utc(&row.updated_at)),
        ..changed("VM stopped successfully", row.name, row.status.as_str())
    }))
}

pub async fn restart(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<Json<Changed>> {
    let row = state.sandboxes.restart(&caller, &name).await?;
    Ok(Json(Changed {
        restarted_at: row.started_at.as_deref().map(super::utc),
        ..changed("VM restarted successfully", row.name, row.status.as_str())
    }))
}
