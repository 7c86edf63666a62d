//! Snapshot archives: `GET /vms/:name/snapshots/:snapshot/export` streams
//! one, `POST /vms/import?name=<name>` makes a new sandbox from one.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::Value;

use super::{AppResult, AppState, Auth};

/// Media type of an archive (magic, zstd send stream, SHA-256 trailer).
pub const ARCHIVE_TYPE: &str = "application/vnd.rewind.snapshot-archive";

/// Query of `GET .../export`: `parent` makes the archive incremental.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    parent: Option<String>,
}

/// Answers 200 only once the first chunk is ready; a failure after that
/// aborts the response (the client sees an incomplete body, and the
/// archive's checksum trailer is missing), never a clean truncated end.
pub async fn export(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
    Query(query): Query<ExportQuery>,
) -> AppResult<Response> {
    let (first, rest) = state
        .sandboxes
        .export_snapshot(&caller, &name, &snapshot, query.parent.as_deref())
        .await?;
    let rest = stream::unfold(rest, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = stream::once(async move { Ok(first) }).chain(rest);
    let disposition = format!("attachment; filename=\"{name}-{snapshot}.rewind\"");
    Ok((
        [
            (header::CONTENT_TYPE, ARCHIVE_TYPE.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Query of `POST /vms/import`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    name: String,
}

/// The raw request body is the archive. Answers like `POST /vms`.
pub async fn import(
    State(state): State<AppState>,
    caller: Auth,
    Query(query): Query<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Value>)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let row = state
        .sandboxes
        .import(&caller, &query.name, declared, Box::pin(stream))
        .await?;
    Ok((StatusCode::CREATED, Json(super::vms::vm_json(&row))))
}
