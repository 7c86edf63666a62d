//! `POST /api/v1/vms/{vm_name}/start|stop|restart`: real stop and start
//! ([`crate::sandbox`]'s `stop.rs` / `start.rs`).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{V1Error, V1Result};
use super::extract::JsonOrEmpty;
use crate::api::AppState;
use crate::auth::Caller;
use crate::sandbox::StopMode;

/// Body of `stop` (optional). `force`: SIGKILL at once. Otherwise the
/// sandbox's processes get SIGTERM and up to `timeout_seconds` (default
/// [`DEFAULT_STOP_TIMEOUT`]) to exit before SIGKILL.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[schema(as = v1::StopBody)]
#[serde(deny_unknown_fields)]
pub struct StopBody {
    #[serde(default)]
    force: bool,
    timeout_seconds: Option<i64>,
}

/// Grace period of a non-forced stop without `timeout_seconds`.
pub const DEFAULT_STOP_TIMEOUT: u64 = 10;

impl StopBody {
    fn mode(&self) -> V1Result<StopMode> {
        let timeout = self.timeout_seconds.unwrap_or(DEFAULT_STOP_TIMEOUT as i64);
        if !(1..=3600).contains(&timeout) {
            return Err(V1Error::invalid(
                "timeout_seconds",
                "must be between 1 and 3600",
            ));
        }
        Ok(match self.force {
            true => StopMode::Force,
            false => StopMode::Graceful(Duration::from_secs(timeout as u64)),
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Changed)]
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

#[utoipa::path(post, path = "/vms/{vm_name}/start", tag = "v1 vms",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    responses(
        (status = 200, description = "running again on its current workspace", body = Changed),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "busy, or not stopped", body = super::error::Body),
    ))]
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

#[utoipa::path(post, path = "/vms/{vm_name}/stop", tag = "v1 vms",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body(content = Option<StopBody>, description = "optional"),
    responses(
        (status = 200, description = "every process of the sandbox has ended; workspace and snapshots stay", body = Changed),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn stop(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<StopBody>,
) -> V1Result<Json<Changed>> {
    let mode = body.mode()?;
    let row = state.sandboxes.stop_with(&caller, &name, mode).await?;
    Ok(Json(Changed {
        stopped_at: Some(super::utc(&row.updated_at)),
        ..changed("VM stopped successfully", row.name, row.status.as_str())
    }))
}

#[utoipa::path(post, path = "/vms/{vm_name}/restart", tag = "v1 vms",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    responses(
        (status = 200, description = "stopped and started again", body = Changed),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
    ))]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(json: &str) -> V1Result<StopMode> {
        serde_json::from_str::<StopBody>(json).unwrap().mode()
    }

    #[test]
    fn mode_is_graceful_with_the_default_timeout() {
        assert_eq!(
            mode("{}").unwrap(),
            StopMode::Graceful(Duration::from_secs(DEFAULT_STOP_TIMEOUT))
        );
    }

    #[test]
    fn mode_force_kills_at_once() {
        assert_eq!(
            mode(r#"{"force": true, "timeout_seconds": 5}"#).unwrap(),
            StopMode::Force
        );
    }

    #[test]
    fn mode_refuses_a_timeout_out_of_range_even_with_force() {
        let err = mode(r#"{"force": true, "timeout_seconds": 0}"#).unwrap_err();
        assert!(matches!(err, V1Error::Validation(d) if d[0].field == "timeout_seconds"));
    }
}
