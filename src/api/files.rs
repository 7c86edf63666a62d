//! `/vms/:name/files…` (live sandbox, through the agent),
//! `/vms/:name/snapshots/:snapshot/files…` (straight from the read-only
//! snapshot on the host) and `/vms/:name/snapshots/:snapshot/diff`. Thin
//! adapters over `sandbox::files`, `sandbox::snapshot_files` and
//! `sandbox::diff`: parse the query or body, call one operation, render.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::error::ErrorBody;
use super::{ApiError, AppResult, AppState, Auth};
use crate::sandbox::{
    parse_mode, Diff, FileChange, FileDownload, FileEntry, SandboxError, SandboxPath, WriteFile,
};

/// Query of every file route; which fields apply depends on the route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    path: Option<String>,
    mode: Option<String>,
    recursive: Option<String>,
    from: Option<String>,
    content: Option<String>,
}

fn query(q: Result<Query<FileQuery>, QueryRejection>) -> AppResult<FileQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))
}

impl FileQuery {
    /// `path`, required (absolute or relative to `/workspace`).
    fn path(&self) -> Result<SandboxPath, SandboxError> {
        SandboxPath::parse("path", self.path.as_deref().unwrap_or_default())
    }

    /// `path`, defaulting to `/workspace` (listings).
    fn dir(&self) -> Result<SandboxPath, SandboxError> {
        SandboxPath::parse("path", self.path.as_deref().unwrap_or("/workspace"))
    }

    fn flag(field: &'static str, raw: Option<&str>) -> Result<bool, SandboxError> {
        match raw {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1" | "") => Ok(true),
            Some(other) => Err(SandboxError::Invalid {
                field,
                message: format!("{other:?} is not true or false"),
            }),
        }
    }

    fn recursive(&self) -> Result<bool, SandboxError> {
        Self::flag("recursive", self.recursive.as_deref())
    }
}

/// `{"message", "path", "size_bytes"?, "snapshot"}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChangeBody {
    message: &'static str,
    #[serde(flatten)]
    change: FileChange,
}

fn written(change: FileChange) -> Json<ChangeBody> {
    Json(ChangeBody {
        message: "File uploaded",
        change,
    })
}

/// `PUT /vms/:name/files?path=&mode=`: the raw body becomes the file.
#[utoipa::path(put, path = "/vms/{name}/files", tag = "files",
    params(("name" = String, Path, description = "sandbox name"), ("path" = String, Query, description = "file path, absolute or relative to `/workspace`"), ("mode" = Option<String>, Query, description = "octal permissions, e.g. `0644`")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the file's bytes"),
    responses(
        (status = 200, description = "written; snapshot taken", body = ChangeBody),
        (status = 400, description = "bad query; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours), or no such directory", body = ErrorBody),
        (status = 409, description = "busy, or the sandbox is not running", body = ErrorBody),
        (status = 413, description = "over `files.max_upload_bytes`; nothing written", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<impl IntoResponse> {
    let q = query(q)?;
    let req = WriteFile {
        path: q.path()?,
        mode: q
            .mode
            .as_deref()
            .map(|m| parse_mode("mode", m))
            .transpose()?,
        content_length: headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    let stream = body.into_data_stream();
    let change = state
        .sandboxes
        .write_file(&caller, &name, req, stream)
        .await?;
    Ok(written(change))
}

/// `POST /vms/:name/files`, multipart: `path` and `permissions` (optional)
/// fields, then the `file` field (streamed; it must come last).
#[utoipa::path(post, path = "/vms/{name}/files", tag = "files",
    params(("name" = String, Path, description = "sandbox name")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "written; snapshot taken", body = ChangeBody),
        (status = 400, description = "bad form; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours), or no such directory", body = ErrorBody),
        (status = 409, description = "busy, or the sandbox is not running", body = ErrorBody),
        (status = 413, description = "over `files.max_upload_bytes`; nothing written", body = ErrorBody),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    mut form: Multipart,
) -> AppResult<impl IntoResponse> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::BadRequest(format!("invalid multipart body: {}", e.body_text()))
    };
    let (mut path, mut mode) = (None, None);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "path" => path = Some(field.text().await.map_err(bad)?),
            "permissions" => {
                mode = Some(parse_mode(
                    "permissions",
                    &field.text().await.map_err(bad)?,
                )?)
            }
            "file" => {
                let Some(path) = path.as_deref() else {
                    return Err(ApiError::BadRequest(
                        "path: missing (send the path field before the file field)".into(),
                    ));
                };
                let req = WriteFile {
                    path: SandboxPath::parse("path", path)?,
                    mode,
                    content_length: None,
                };
                let change = state
                    .sandboxes
                    .write_file(&caller, &name, req, field)
                    .await?;
                return Ok(written(change));
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown field (expected file, path, permissions)"
                )))
            }
        }
    }
    Err(ApiError::BadRequest("file: missing".into()))
}

/// A streamed download with `Content-Length` (also the v1 download).
pub(crate) fn download(file: FileDownload) -> Response {
    let mut response = Body::from_stream(file.body.map_err(|e| {
        tracing::error!(error = %crate::runtime::chain(&e), "download broke off");
        e
    }))
    .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, file.entry.size_bytes.into());
    response
}

/// `GET /vms/:name/files?path=`.
#[utoipa::path(get, path = "/vms/{name}/files", tag = "files",
    params(("name" = String, Path, description = "sandbox name"), ("path" = String, Query, description = "file path, absolute or relative to `/workspace`")),
    responses(
        (status = 200, description = "the file, streamed with `Content-Length`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "bad query; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours), or no such file", body = ErrorBody),
        (status = 409, description = "busy, or the sandbox is not running", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> AppResult<Response> {
    let path = query(q)?.path()?;
    let file = state.sandboxes.read_file(&caller, &name, &path).await?;
    Ok(download(file))
}

/// `DELETE /vms/:name/files?path=&recursive=`.
#[utoipa::path(delete, path = "/vms/{name}/files", tag = "files",
    params(("name" = String, Path, description = "sandbox name"), ("path" = String, Query, description = "file path, absolute or relative to `/workspace`"), ("recursive" = Option<bool>, Query, description = "descend into subdirectories")),
    responses(
        (status = 200, description = "removed; snapshot taken", body = ChangeBody),
        (status = 400, description = "bad query, or a non-empty directory without `recursive`", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours), or no such file", body = ErrorBody),
        (status = 409, description = "busy, or the sandbox is not running", body = ErrorBody),
    ))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> AppResult<impl IntoResponse> {
    let q = query(q)?;
    let (path, recursive) = (q.path()?, q.recursive()?);
    let change = state
        .sandboxes
        .remove_file(&caller, &name, &path, recursive)
        .await?;
    Ok(Json(ChangeBody {
        message: "File deleted",
        change,
    }))
}

/// `{"path", "files": [...]}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Listing {
    path: String,
    files: Vec<FileEntry>,
}

/// `GET /vms/:name/files/list?path=&recursive=`.
#[utoipa::path(get, path = "/vms/{name}/files/list", tag = "files",
    params(("name" = String, Path, description = "sandbox name"), ("path" = Option<String>, Query, description = "directory (default `/workspace`)"), ("recursive" = Option<bool>, Query, description = "descend into subdirectories")),
    responses(
        (status = 200, description = "the directory's entries", body = Listing),
        (status = 400, description = "bad query; the message names the field", body = ErrorBody),
        (status = 404, description = "no such sandbox (of yours), or no such directory", body = ErrorBody),
        (status = 409, description = "busy, or the sandbox is not running", body = ErrorBody),
        (status = 413, description = "more than `files.max_list_entries` entries", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> AppResult<Json<Listing>> {
    let q = query(q)?;
    let (path, recursive) = (q.dir()?, q.recursive()?);
    let files = state
        .sandboxes
        .list_files(&caller, &name, &path, recursive)
        .await?;
    Ok(Json(Listing {
        path: path.as_str().to_owned(),
        files,
    }))
}

/// `GET /vms/:name/snapshots/:snapshot/files?path=`.
#[utoipa::path(get, path = "/vms/{name}/snapshots/{snapshot}/files", tag = "files",
    params(("name" = String, Path, description = "sandbox name"), ("snapshot" = String, Path, description = "snapshot name"), ("path" = String, Query, description = "file path, absolute or relative to `/workspace`")),
    responses(
        (status = 200, description = "the file as it was in the snapshot, streamed", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "bad query, or not possible on this runtime", body = ErrorBody),
        (status = 404, description = "no such sandbox, snapshot or file", body = ErrorBody),
    ))]
pub async fn snapshot_get(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> AppResult<Response> {
    let path = query(q)?.path()?;
    let file = state
        .sandboxes
        .snapshot_read_file(&caller, &name, &snapshot, &path)
        .await?;
    Ok(download(file))
}

/// `GET /vms/:name/snapshots/:snapshot/files/list?path=&recursive=`.
#[utoipa::path(get, path = "/vms/{name}/snapshots/{snapshot}/files/list", tag = "files",
    params(("name" = String, Path, description = "sandbox name"), ("snapshot" = String, Path, description = "snapshot name"), ("path" = Option<String>, Query, description = "directory (default `/workspace`)"), ("recursive" = Option<bool>, Query, description = "descend into subdirectories")),
    responses(
        (status = 200, description = "the directory's entries in the snapshot", body = Listing),
        (status = 400, description = "bad query, or not possible on this runtime", body = ErrorBody),
        (status = 404, description = "no such sandbox, snapshot or directory", body = ErrorBody),
        (status = 413, description = "more than `files.max_list_entries` entries", body = ErrorBody),
    ))]
pub async fn snapshot_list(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> AppResult<Json<Listing>> {
    let q = query(q)?;
    let (path, recursive) = (q.dir()?, q.recursive()?);
    let files = state
        .sandboxes
        .snapshot_list_files(&caller, &name, &snapshot, &path, recursive)
        .await?;
    Ok(Json(Listing {
        path: path.as_str().to_owned(),
        files,
    }))
}

/// `GET /vms/:name/snapshots/:snapshot/diff?from=&content=`.
#[utoipa::path(get, path = "/vms/{name}/snapshots/{snapshot}/diff", tag = "files",
    params(("name" = String, Path, description = "sandbox name"), ("snapshot" = String, Path, description = "snapshot name"), ("from" = Option<String>, Query, description = "the earlier snapshot (default: the one before)"), ("content" = Option<bool>, Query, description = "include unified diffs of small text files")),
    responses(
        (status = 200, description = "what changed", body = Diff),
        (status = 400, description = "bad query, or not possible on this runtime", body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
    ))]
pub async fn diff(
    State(state): State<AppState>,
    caller: Auth,
    Path((name, snapshot)): Path<(String, String)>,
    q: Result<Query<FileQuery>, QueryRejection>,
) -> AppResult<Json<Diff>> {
    let q = query(q)?;
    let content = FileQuery::flag("content", q.content.as_deref())?;
    let diff = state
        .sandboxes
        .diff(&caller, &name, &snapshot, q.from.as_deref(), content)
        .await?;
    Ok(Json(diff))
}

/// The multipart form of `POST /vms/:name/files` (documentation only: the
/// handler reads the fields as a stream).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// Where to write, absolute or relative to `/workspace`; before `file`.
    path: String,
    /// Octal permissions, e.g. `0644`; before `file`.
    permissions: Option<String>,
    /// The content; the last field.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}
