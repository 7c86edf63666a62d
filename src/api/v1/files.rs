//! `/api/v1/vms/{vm_name}/files…`: upload (multipart), download, list — the
//! native file operations ([`crate::sandbox`]'s `files.rs`) in the
//! reference's shapes. `guest/upload` (py-microvm's name, with its
//! `remote_path` field) is the same upload.

use axum::body::Body as AxumBody;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::{Extension, Json};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{V1Error, V1Result};
use super::extract::Query;
use crate::api::AppState;
use crate::auth::Caller;
use crate::sandbox::{parse_mode, FileEntry, SandboxError, SandboxPath, WriteFile};

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Uploaded)]
pub struct Uploaded {
    message: &'static str,
    /// py-microvm's `FileTransferResult` needs it.
    success: bool,
    vm_name: String,
    remote_path: String,
    size_bytes: u64,
    /// SHA-256 of the bytes received.
    checksum: String,
    uploaded_at: String,
    /// The snapshot the write was recorded in.
    snapshot: String,
}

/// The form so far: `path` (or `remote_path`), `permissions`, and the
/// `file` held in memory when it came before the path.
#[derive(Default)]
struct Form {
    path: Option<String>,
    mode: Option<u32>,
    early_file: Option<Vec<Bytes>>,
}

fn bad(e: axum::extract::multipart::MultipartError) -> V1Error {
    V1Error::BadRequest(format!("invalid multipart body: {}", e.body_text()))
}

/// `POST .../files/upload` and `.../guest/upload`: multipart `file`, `path`
/// (or `remote_path`), `permissions` (octal, default 644). The file is
/// streamed into the sandbox when the path comes first, else held in memory
/// (up to `files.max_upload_bytes`) until the path arrives.
#[utoipa::path(post, path = "/vms/{vm_name}/files/upload", tag = "v1 files",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body(content = crate::api::files::UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "written and snapshotted", body = Uploaded),
        (status = 400, description = "not a multipart body", body = super::error::Body),
        (status = 404, description = "no such VM (of yours), or no such directory", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
        (status = 413, description = "over `files.max_upload_bytes`; nothing written", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    req: Request,
) -> V1Result<Json<Uploaded>> {
    let mut multipart = multipart_of(req, &state).await?;
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        match field.name().unwrap_or_default() {
            "path" | "remote_path" => form.path = Some(field.text().await.map_err(bad)?),
            "permissions" => {
                let text = field.text().await.map_err(bad)?;
                form.mode = Some(parse_mode("permissions", &text)?);
            }
            "file" if form.path.is_some() => {
                let target = target(&form)?;
                return land(&state, &caller, &name, target, field).await;
            }
            "file" => form.early_file = Some(hold(&state, field).await?),
            other => {
                return Err(V1Error::invalid(
                    other.to_owned(),
                    "unknown field (expected file, path, permissions)",
                ))
            }
        }
    }
    let Some(chunks) = form.early_file.take() else {
        return Err(V1Error::invalid("file", "is required"));
    };
    let target = target(&form)?;
    let body = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    land(&state, &caller, &name, target, body).await
}

/// The request as multipart. py-microvm 1.0.1 sends its upload under its
/// client-wide `Content-Type: application/json` (httpx keeps a default
/// header over the multipart one), so a body that is not declared as
/// multipart is recognised by its first line, `--<boundary>`.
async fn multipart_of(req: Request, state: &AppState) -> V1Result<Multipart> {
    let declared = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let req = if declared { req } else { sniffed(req).await? };
    Multipart::from_request(req, state)
        .await
        .map_err(|e| V1Error::BadRequest(format!("expected a multipart body: {}", e.body_text())))
}

/// Longest first line taken for a multipart boundary (RFC 2046: 70 + `--`).
const MAX_BOUNDARY_LINE: usize = 80;

async fn sniffed(req: Request) -> V1Result<Request> {
    let (mut parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut head = bytes::BytesMut::new();
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() <= MAX_BOUNDARY_LINE {
        match stream.next().await {
            Some(chunk) => head
                .extend_from_slice(&chunk.map_err(|e| {
                    V1Error::BadRequest(format!("the body could not be read: {e}"))
                })?),
            None => break,
        }
    }
    let line = head[..].split(|b| *b == b'\r').next().unwrap_or_default();
    let boundary = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.strip_prefix("--"))
        .filter(|b| !b.is_empty() && b.len() <= 70 && !b.contains(char::is_whitespace))
        .ok_or_else(|| {
            V1Error::BadRequest("expected a multipart/form-data body (file, path)".into())
        })?;
    let content_type = format!("multipart/form-data; boundary={boundary}");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type).map_err(|e| V1Error::BadRequest(e.to_string()))?,
    );
    let first = futures_util::stream::once(async move { Ok::<_, axum::Error>(head.freeze()) });
    Ok(Request::from_parts(
        parts,
        AxumBody::from_stream(first.chain(stream)),
    ))
}

fn target(form: &Form) -> V1Result<WriteFile> {
    let path = form
        .path
        .as_deref()
        .ok_or_else(|| V1Error::invalid("path", "is required"))?;
    Ok(WriteFile {
        path: SandboxPath::parse("path", path)?,
        mode: form.mode,
        content_length: None,
    })
}

/// Read a `file` part that came before the path, within the upload cap.
async fn hold(
    state: &AppState,
    mut field: axum::extract::multipart::Field<'_>,
) -> V1Result<Vec<Bytes>> {
    let cap = state.sandboxes.config.files.max_upload_bytes;
    let (mut chunks, mut total) = (Vec::new(), 0u64);
    while let Some(chunk) = field.chunk().await.map_err(bad)? {
        total += chunk.len() as u64;
        if total > cap {
            return Err(SandboxError::TooLarge {
                field: "file",
                message: format!("larger than files.max_upload_bytes ({cap} bytes)"),
            }
            .into());
        }
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// Write the file (hashing what passes) and render the reference's answer.
async fn land<S, E>(
    state: &AppState,
    caller: &Caller,
    name: &str,
    target: WriteFile,
    body: S,
) -> V1Result<Json<Uploaded>>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut hasher = Sha256::new();
    let hashed = body.inspect_ok(|chunk| hasher.update(chunk));
    let change = state
        .sandboxes
        .write_file(caller, name, target, hashed)
        .await?;
    Ok(Json(Uploaded {
        message: "File uploaded successfully",
        success: true,
        vm_name: name.to_owned(),
        remote_path: change.path,
        size_bytes: change.size_bytes.unwrap_or_default(),
        checksum: format!("sha256:{}", hex(&hasher.finalize())),
        uploaded_at: super::now_utc(),
        snapshot: change.snapshot,
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// A path in the sandbox (download: required; list: default `/`).
    path: Option<String>,
    /// List subdirectories too (list only).
    recursive: Option<bool>,
}

/// `GET .../files/download?path=`: the bytes, streamed.
#[utoipa::path(get, path = "/vms/{vm_name}/files/download", tag = "v1 files",
    params(("vm_name" = String, Path, description = "VM (sandbox) name"), PathQuery),
    responses(
        (status = 200, description = "the bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "no such VM (of yours), or no such file", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn download(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> V1Result<Response> {
    let raw = q
        .path
        .ok_or_else(|| V1Error::invalid("path", "is required"))?;
    let path = SandboxPath::parse("path", &raw)?;
    let file = state.sandboxes.read_file(&caller, &name, &path).await?;
    Ok(crate::api::files::download(file))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Listing)]
pub struct Listing {
    files: Vec<FileEntry>,
    directory: String,
}

/// `GET .../files?path=&recursive=` (path default `/`, as the reference).
#[utoipa::path(get, path = "/vms/{vm_name}/files", tag = "v1 files",
    params(("vm_name" = String, Path, description = "VM (sandbox) name"), PathQuery),
    responses(
        (status = 200, description = "the directory's entries", body = Listing),
        (status = 404, description = "no such VM (of yours), or no such directory", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
        (status = 413, description = "more than `files.max_list_entries` entries", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<PathQuery>,
) -> V1Result<Json<Listing>> {
    let path = SandboxPath::parse("path", q.path.as_deref().unwrap_or("/"))?;
    let recursive = q.recursive.unwrap_or(false);
    let files = state
        .sandboxes
        .list_files(&caller, &name, &path, recursive)
        .await?;
    Ok(Json(Listing {
        files,
        directory: path.as_str().to_owned(),
    }))
}

/// py-microvm's name for [`upload`] (its form field is `remote_path`).
#[utoipa::path(post, path = "/vms/{vm_name}/guest/upload", tag = "v1 files",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body(content = crate::api::files::UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "written and snapshotted", body = Uploaded),
        (status = 400, description = "not a multipart body", body = super::error::Body),
        (status = 404, description = "no such VM (of yours), or no such directory", body = super::error::Body),
        (status = 409, description = "busy, or not running", body = super::error::Body),
        (status = 413, description = "over `files.max_upload_bytes`; nothing written", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn guest_upload(
    state: State<AppState>,
    caller: Extension<Caller>,
    name: Path<String>,
    req: Request,
) -> V1Result<Json<Uploaded>> {
    upload(state, caller, name, req).await
}
