//! `POST /vms/:name/run` and `POST /vms/:name/wipe`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::extract::{Json as Body, Query};
use super::{run_stream, AppResult, AppState, Auth};
use crate::sandbox::{ChangeSummary, RunOutput, RunRequest};

/// Query of `POST /vms/:name/run`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Stream server-sent events (same as `Accept: text/event-stream`).
    #[serde(default)]
    stream: bool,
}

/// Reference fields (`stdout`, `stderr`, `exitCode`, `snapshot`) plus
/// extensions: `timedOut`, `stdoutTruncated`, `stderrTruncated`, `execMs`,
/// `snapshotMs`, and `changes` when the request asked `"changes": true`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResponse {
    stdout: String,
    stderr: String,
    exit_code: i32,
    /// The snapshot taken after the command.
    snapshot: String,
    timed_out: bool,
    stdout_truncated: bool,
    stderr_truncated: bool,
    exec_ms: u64,
    snapshot_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<ChangeSummary>,
}

impl From<RunOutput> for RunResponse {
    fn from(out: RunOutput) -> Self {
        RunResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
            snapshot: out.snapshot,
            timed_out: out.timed_out,
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
            exec_ms: out.exec_ms,
            snapshot_ms: out.snapshot_ms,
            changes: out.changes,
        }
    }
}

/// Run a command, then snapshot. Streamed as server-sent events when asked
/// (see `run_stream.rs`).
#[utoipa::path(post, path = "/vms/{name}/run", tag = "run",
    params(("name" = String, Path, description = "sandbox name"), RunQuery),
    request_body = RunRequest,
    responses(
        (status = 200, description = "the command's output and the snapshot taken after it; \
            with `Accept: text/event-stream` or `?stream=true`, server-sent events \
            (`stdout`, `stderr`, then `exit` or `error`)",
            content(
                (RunResponse = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
        (status = 409, description = "another command is running, or the sandbox is not running", body = ErrorBody),
        (status = 503, description = "the sandbox's agent did not answer", body = ErrorBody),
    ))]
pub async fn run(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(query): Query<RunQuery>,
    headers: HeaderMap,
    Body(body): Body<RunRequest>,
) -> AppResult<Response> {
    if query.stream || accepts_event_stream(&headers) {
        return run_stream::sse(&state, &caller, &name, body).await;
    }
    let out = state.sandboxes.run(&caller, &name, body).await?;
    Ok(Json(RunResponse::from(out)).into_response())
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().starts_with("text/event-stream"))
}

/// `{"message", "snapshot"}` of a wipe.
#[derive(Debug, Serialize, ToSchema)]
pub struct Wiped {
    message: &'static str,
    /// The snapshot taken of the empty workspace.
    snapshot: String,
}

#[utoipa::path(post, path = "/vms/{name}/wipe", tag = "run",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 200, description = "the workspace is empty; snapshot taken", body = Wiped),
        (status = 400, description = "the runtime cannot swap this workspace (the message says why)", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours)", body = ErrorBody),
        (status = 409, description = "another command is running, or the sandbox is not running", body = ErrorBody),
        (status = 503, description = "the sandbox's agent did not answer", body = ErrorBody),
    ))]
pub async fn wipe(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Wiped>> {
    let snapshot = state.sandboxes.wipe(&caller, &name).await?;
    Ok(Json(Wiped {
        message: "Workspace wiped",
        snapshot,
    }))
}
