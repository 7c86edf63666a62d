//! `POST /vms/:name/repl`: one cell in the sandbox's stateful interpreter.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use super::error::ErrorBody;
use super::extract::Json as Body;
use super::{AppResult, AppState, Auth};
use crate::sandbox::{ReplRequest, ReplResult};

/// Response body; field names follow the run response (camelCase).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplResponse {
    pub language: &'static str,
    pub stdout: String,
    pub stderr: String,
    pub has_error: bool,
    pub timed_out: bool,
    pub interpreter_killed: bool,
    pub interpreter_started: bool,
    pub snapshot: String,
    pub exec_ms: u64,
    pub snapshot_ms: u64,
}

impl From<ReplResult> for ReplResponse {
    fn from(r: ReplResult) -> Self {
        Self {
            language: r.language,
            stdout: r.stdout,
            stderr: r.stderr,
            has_error: r.has_error,
            timed_out: r.timed_out,
            interpreter_killed: r.killed,
            interpreter_started: r.started,
            snapshot: r.snapshot,
            exec_ms: r.exec_ms,
            snapshot_ms: r.snapshot_ms,
        }
    }
}

/// One cell in the sandbox's stateful interpreter, then snapshot.
#[utoipa::path(post, path = "/vms/{name}/repl", tag = "run",
    params(("name" = String, Path, description = "sandbox name")),
    request_body = ReplRequest,
    responses(
        (status = 200, description = "the cell's output and the snapshot taken after it", body = ReplResponse),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
        (status = 409, description = "another command is running, or the sandbox is not running", body = ErrorBody),
        (status = 503, description = "the sandbox's agent did not answer", body = ErrorBody),
    ))]
pub async fn repl(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<ReplRequest>,
) -> AppResult<Json<ReplResponse>> {
    let out = state.sandboxes.repl(&caller, &name, body).await?;
    Ok(Json(out.into()))
}
