//! `POST /vms/:name/run` and `POST /vms/:name/wipe`.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::extract::Json as Body;
use super::{AppResult, AppState, Auth};
use crate::sandbox::RunRequest;

/// Reference fields (`stdout`, `stderr`, `exitCode`, `snapshot`) plus
/// extensions: `timedOut`, `stdoutTruncated`, `stderrTruncated`, `execMs`,
/// `snapshotMs`, and `changes` when the request asked `"changes": true`.
pub async fn run(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Body(body): Body<RunRequest>,
) -> AppResult<Json<Value>> {
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
    Ok(Json(response))
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
