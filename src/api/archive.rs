//! Snapshot archives: `GET /vms/:name/snapshots/:snapshot/export` streams
//! one, `POST /vms/import?name=<name>` makes a new sandbox from one.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ErrorBody;
use super::vms::Vm;
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
#[utoipa::path(get, path = "/vms/{name}/snapshots/{snapshot}/export", tag = "snapshots",
    params(
        ("name" = String, Path, description = "sandbox name"),
        ("snapshot" = String, Path, description = "snapshot name"),
        ("parent" = Option<String>, Query, description = "an earlier snapshot: export only what changed since it"),
    ),
    responses(
        (status = 200, description = "the archive (magic, zstd send stream, SHA-256 trailer), streamed",
            content_type = "application/vnd.rewind.snapshot-archive", body = Vec<u8>),
        (status = 400, description = "not a valid snapshot name, or not possible on this runtime", body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
    ))]
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
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// Name of the new sandbox.
    name: String,
}

/// The raw request body is the archive. Answers like `POST /vms`.
#[utoipa::path(post, path = "/vms/import", tag = "snapshots",
    params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/vnd.rewind.snapshot-archive",
        description = "an archive made by export"),
    responses(
        (status = 201, description = "the new sandbox; its `initial` is the archived state", body = Vm),
        (status = 400, description = "no `name`, or a damaged archive (the message says what)", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 413, description = "over the import size cap; nothing created", body = ErrorBody),
        (status = 507, description = "not enough free space in the pool; nothing created", body = ErrorBody),
    ))]
pub async fn import(
    State(state): State<AppState>,
    caller: Auth,
    Query(query): Query<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Vm>)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let row = state
        .sandboxes
        .import(&caller, &query.name, declared, Box::pin(stream))
        .await?;
    Ok((StatusCode::CREATED, Json(Vm::new(&row))))
}
