//! `POST /api/v1/vms/{vm_name}/execute` (and py-microvm's `guest/command`):
//! one command through the same `run` operation as the native API, so it
//! leaves a snapshot too (`snapshot` in the answer).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{V1Error, V1Result};
use super::extract::Json as Body;
use crate::api::AppState;
use crate::auth::Caller;
use crate::sandbox::RunRequest;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = v1::Execute)]
#[serde(deny_unknown_fields)]
pub struct Execute {
    command: String,
    timeout_seconds: Option<f64>,
    /// py-microvm's name for `timeout_seconds`.
    timeout: Option<f64>,
    working_directory: Option<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Executed)]
pub struct Executed {
    exit_code: i32,
    stdout: String,
    stderr: String,
    execution_time_seconds: f64,
    /// py-microvm's fields.
    execution_time_ms: u64,
    success: bool,
    command: String,
    executed_at: String,
    /// The snapshot this command left (rewind).
    snapshot: String,
    timed_out: bool,
}

#[utoipa::path(post, path = "/vms/{vm_name}/execute", tag = "v1 exec",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body = Execute,
    responses(
        (status = 200, description = "the command's result and the snapshot it left", body = Executed),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn execute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<Execute>,
) -> V1Result<Json<Executed>> {
    if body.timeout_seconds.is_some() && body.timeout.is_some() {
        return Err(V1Error::invalid(
            "timeout",
            "give timeout_seconds or timeout, not both",
        ));
    }
    let executed_at = super::now_utc();
    let req = RunRequest {
        command: body.command.clone(),
        timeout: body.timeout_seconds.or(body.timeout),
        env: body.environment,
        cwd: body.working_directory,
        ..Default::default()
    };
    let out = state
        .sandboxes
        .run(&caller, &name, req)
        .await
        .map_err(|e| match e {
            crate::sandbox::SandboxError::Invalid {
                field: "timeout",
                message,
            } => V1Error::invalid("timeout_seconds", message),
            crate::sandbox::SandboxError::Invalid {
                field: "cwd",
                message,
            } => V1Error::invalid("working_directory", message),
            crate::sandbox::SandboxError::Invalid {
                field: "env",
                message,
            } => V1Error::invalid("environment", message),
            other => other.into(),
        })?;
    Ok(Json(Executed {
        exit_code: out.exit_code,
        execution_time_seconds: out.exec_ms as f64 / 1000.0,
        execution_time_ms: out.exec_ms,
        success: out.exit_code == 0,
        stdout: out.stdout,
        stderr: out.stderr,
        command: body.command,
        executed_at,
        snapshot: out.snapshot,
        timed_out: out.timed_out,
    }))
}

/// py-microvm's name for [`execute`]: the same body, answer and codes.
#[utoipa::path(post, path = "/vms/{vm_name}/guest/command", tag = "v1 exec",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body = Execute,
    responses(
        (status = 200, description = "the command's result and the snapshot it left", body = Executed),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn guest_command(
    state: State<AppState>,
    caller: Extension<Caller>,
    name: Path<String>,
    body: Body<Execute>,
) -> V1Result<Json<Executed>> {
    execute(state, caller, name, body).await
}
