//! `POST /vms/:name/run` and `POST /vms/:name/wipe`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{Json as Body, Query};
use super::{run_stream, AppResult, AppState, Auth};
use crate::sandbox::RunRequest;

/// Query of `POST /vms/:name/run`.
#[derive(Debug, Default, Deserialize)]
pub struct RunQuery {
    /// Stream server-sent events (same as `Accept: text/event-stream`).
    #[serde(default)]
    stream: bool,
}

/// Reference fields (`stdout`, `stderr`, `exitCode`, `snapshot`) plus
/// extensions: `timedOut`, `stdoutTruncated`, `stderrTruncated`, `execMs`,
/// `snapshotMs`, and `changes` when the request asked `"changes": true`.
/// Streamed as server-sent events when asked (see `run_stream.rs`).
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
    let mut response = json!({
        "stdout": out.stdout,
        "stderr": out.stderr,
        "exitCode": out.exit_code,
        "snapshot": out.snapshot,
        "timedOut": out.timed_out,
        "stdoutTruncated": out.stdout_truncated,
        "stderrTruncated": out.stderr_truncated,
        "execMs": out.exec_ms,
        "snapshotMs": out.snapshot_ms,
    });
    if let Some(changes) = out.changes {
        response["changes"] = json!(changes);
    }
    Ok(Json(response).into_response())
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().starts_with("text/event-stream"))
}

pub async fn wipe(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
) -> AppResult<Json<Value>> {
    let snapshot = state.sandboxes.wipe(&caller, &name).await?;
    Ok(Json(
        json!({ "message": "Workspace wiped", "snapshot": snapshot }),
    ))
}
