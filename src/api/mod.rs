//! The HTTP API (axum), compatible with the OpenSandbox reference: same
//! paths, fields, status codes and `{"error": "..."}` shape. One file per
//! resource; [`app`] builds the router so tests can drive it without a socket.

pub mod error;
pub mod extract;
mod forwards;
mod health;
mod keys;
mod run;
mod snapshots;
mod vms;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use rand::Rng;
use tracing::Instrument;

use crate::auth::{self, AuthError, Caller};
use crate::sandbox::{SandboxError, Sandboxes};
pub use error::ApiError;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub sandboxes: Sandboxes,
    pub started: Instant,
}

impl AppState {
    pub fn new(sandboxes: Sandboxes) -> Self {
        AppState {
            sandboxes,
            started: Instant::now(),
        }
    }
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    let max_body = state.sandboxes.config.server.max_body_bytes;
    let authed = Router::new()
        .route("/vms", get(vms::list).post(vms::create))
        .route("/vms/{name}", get(vms::get).delete(vms::destroy))
        .route("/vms/{name}/run", post(run::run))
        .route("/vms/{name}/wipe", post(run::wipe))
        .route(
            "/vms/{name}/snapshots",
            get(snapshots::list).post(snapshots::create),
        )
        .route(
            "/vms/{name}/snapshots/{snapshot}",
            delete(snapshots::destroy),
        )
        .route(
            "/vms/{name}/snapshots/{snapshot}/fork",
            post(snapshots::fork),
        )
        .route(
            "/vms/{name}/snapshots/{snapshot}/restore",
            post(snapshots::restore),
        )
        .route(
            "/vms/{name}/port-forwards",
            get(forwards::list).post(forwards::create),
        )
        .route(
            "/vms/{name}/port-forwards/{host_port}",
            delete(forwards::destroy),
        )
        .route("/api-keys", get(keys::list))
        .route("/api-keys/{id}", delete(keys::revoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health::health))
        .route("/api-keys", post(keys::create))
        .merge(authed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Give every request an id: in a tracing span, in the task-local used by
/// 5xx bodies, and in the `x-request-id` response header.
async fn request_id(req: Request, next: Next) -> Response {
    let id = format!("req_{:016x}", rand::rng().random::<u64>());
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let started = Instant::now();
    let mut response = error::REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "done"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Resolve `x-api-key` into a [`Caller`] extension: 401 without, 403 wrong.
async fn require_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let caller = auth::verify(&state.sandboxes.db, presented.as_deref()).await?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::Unauthorized,
            AuthError::Invalid => ApiError::Forbidden("Invalid API key".into()),
            other => ApiError::internal_chain(&other),
        }
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        use rewind_storage::StorageError as S;
        match e {
            SandboxError::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            SandboxError::NotFound(m) => ApiError::NotFound(m),
            SandboxError::Conflict(m) => ApiError::Conflict(m),
            SandboxError::NotRunning { .. } => ApiError::Conflict(e.to_string()),
            SandboxError::Storage(S::NotFound { .. }) => ApiError::NotFound(storage_message(&e)),
            SandboxError::Storage(S::AlreadyExists { .. }) => {
                ApiError::Conflict(storage_message(&e))
            }
            SandboxError::Storage(S::InvalidName(_)) => ApiError::BadRequest(storage_message(&e)),
            SandboxError::Agent(ref a) => {
                ApiError::Unavailable(format!("the sandbox did not answer: {a}"))
            }
            SandboxError::Runtime(crate::runtime::RuntimeError::Unsupported { .. }) => {
                ApiError::BadRequest(storage_message(&e))
            }
            SandboxError::Runtime(crate::runtime::RuntimeError::SavedStateDamaged { .. }) => {
                ApiError::Conflict(storage_message(&e))
            }
            SandboxError::Runtime(ref r) => ApiError::Runtime(crate::runtime::chain(r)),
            other => ApiError::internal_chain(&other),
        }
    }
}

/// The innermost useful message of a wrapped error.
fn storage_message(e: &SandboxError) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// The authenticated caller, inserted by [`require_key`].
pub type Auth = axum::Extension<Caller>;

pub type AppResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;

    #[test]
    fn from_sandbox_error_runtime_failure_keeps_the_hypervisor_message() {
        let e = SandboxError::Runtime(RuntimeError::Hypervisor {
            op: "vm.snapshot".into(),
            message: "Error from API: GetNestedState(Invalid argument)".into(),
        });

        let api = ApiError::from(e);

        let ApiError::Runtime(message) = api else {
            panic!("expected a runtime error, got {api:?}");
        };
        assert!(message.contains("vm.snapshot"), "{message}");
        assert!(
            message.contains("GetNestedState(Invalid argument)"),
            "{message}"
        );
    }
}
