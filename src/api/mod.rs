//! The HTTP API (axum), compatible with the OpenSandbox reference: same
//! paths, fields, status codes and `{"error": "..."}` shape. One file per
//! resource; [`app`] builds the router so tests can drive it without a socket.

mod archive;
pub mod audit;
pub mod error;
pub mod extract;
mod files;
mod forwards;
mod health;
mod keys;
pub mod limits;
mod mcp;
pub mod metrics;
pub mod openapi;
mod pty;
pub mod ratelimit;
mod repl;
mod rpc;
mod run;
mod run_stream;
mod snapshots;
pub mod stats;
pub mod v1;
mod vms;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Json, Router};
use rand::Rng;
use serde::Serialize;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::auth::{self, AuthError, Caller};
use crate::sandbox::{SandboxError, Sandboxes};
pub use error::ApiError;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub sandboxes: Sandboxes,
    pub started: Instant,
    pub v1: v1::V1State,
    pub stats: std::sync::Arc<stats::RequestStats>,
    pub metrics: metrics::Metrics,
    pub limits: ratelimit::Limits,
}

impl AppState {
    pub fn new(sandboxes: Sandboxes) -> Self {
        AppState {
            v1: v1::V1State::new(&sandboxes.config),
            limits: ratelimit::Limits::new(&sandboxes.config.rate_limit),
            sandboxes,
            started: Instant::now(),
            stats: Default::default(),
            // Only fails on a duplicate or malformed metric name: a bug.
            metrics: metrics::Metrics::new().expect("metric definitions are valid"),
        }
    }
}

/// The whole API, with its OpenAPI document at `/openapi.json` and the docs
/// page at `/docs`.
pub fn app(state: AppState) -> Router {
    let max_body = state.sandboxes.config.server.max_body_bytes;
    let (router, mut doc) = routes(&state).split_for_parts();
    openapi::finish(&mut doc);
    router
        .merge(openapi::serve(doc))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::error_shape,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
        .layer(middleware::map_request(drop_client_request_id))
        .with_state(state)
}

/// Every route with its OpenAPI operation: `routes!` takes each path and
/// method from the handler's `#[utoipa::path]`, so the router and the
/// document come from one source. Add routes here only through `routes!`
/// (`tests/openapi.rs` checks this file for plain `.route(` calls).
fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    // Reads and bookkeeping answer within `server.request_timeout_secs`;
    // runs, streams, terminals, snapshots, files and archives take as long
    // as their own limits allow.
    let bounded = OpenApiRouter::default()
        .routes(routes!(vms::list))
        .routes(routes!(vms::get))
        .routes(routes!(files::list))
        .routes(routes!(files::snapshot_list))
        .routes(routes!(snapshots::list))
        .routes(routes!(forwards::list, forwards::create))
        .routes(routes!(forwards::destroy))
        .routes(routes!(keys::list))
        .routes(routes!(keys::revoke))
        .routes(routes!(audit::list));
    let authed = with_metrics_route(bounded, state)
        .layer(limits::timeout(&state.sandboxes.config.server))
        .routes(routes!(vms::create))
        .routes(routes!(vms::destroy))
        .routes(routes!(run::run))
        .routes(routes!(vms::stop))
        .routes(routes!(vms::start))
        .routes(routes!(run_stream::ws))
        .routes(routes!(pty::pty))
        .routes(routes!(run::wipe))
        .routes(routes!(repl::repl))
        .routes(routes!(snapshots::restore_alias))
        .routes(
            routes!(files::get, files::put, files::upload, files::remove)
                .layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(files::snapshot_get))
        .routes(routes!(files::diff))
        .routes(routes!(snapshots::create))
        .routes(routes!(snapshots::destroy))
        .routes(routes!(archive::import))
        .routes(routes!(archive::export))
        .routes(routes!(snapshots::fork))
        .routes(routes!(snapshots::restore));
    let authed = authed
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let mcp = OpenApiRouter::default()
        .nest_service("/mcp", mcp::service(state))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            mcp::require_key,
        ));
    let per_ip = || middleware::from_fn_with_state(state.clone(), ratelimit::limit_ip);
    let timeout = || limits::timeout(&state.sandboxes.config.server);
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health::health).map(|r| r.route_layer(per_ip()).layer(timeout())))
        .routes(routes!(keys::create).map(|r| r.route_layer(per_ip()).layer(timeout())))
        .routes(routes!(rpc::handle))
        .merge(authed)
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .route_layer(middleware::from_fn(metrics::label_route))
        .nest("/api/v1", v1::router(state.clone()))
        .merge(mcp)
}

fn with_metrics_route(
    router: OpenApiRouter<AppState>,
    state: &AppState,
) -> OpenApiRouter<AppState> {
    if state.sandboxes.config.metrics.enabled {
        router.routes(routes!(metrics::scrape))
    } else {
        router
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Every request gets an id of ours (`SetRequestIdLayer`; one a client
/// sent is dropped first, so ids in logs and audit rows are unique), in the
/// `x-request-id` response header (`PropagateRequestIdLayer`) and in the
/// `request` span of every log line (`TraceLayer`).
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = format!("req_{:016x}", rand::rng().random::<u64>());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

async fn drop_client_request_id(mut req: Request) -> Request {
    req.headers_mut().remove(X_REQUEST_ID);
    req
}

fn id_of<B>(req: &axum::http::Request<B>) -> String {
    req.headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    tracing::info_span!("request", request_id = %id_of(req), method = %req.method(), path = %req.uri().path())
}

/// The request id and `server.expose_error_chain` in the task-locals that
/// 5xx bodies read; the one timer of every request, feeding the `/api/v1`
/// status counters and, for a native route ([`metrics::RouteLabel`]), the
/// Prometheus request metrics.
async fn request_context(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = id_of(&req);
    let expose = state.sandboxes.config.server.expose_error_chain;
    let method = req.method().clone();
    let started = Instant::now();
    let response = error::REQUEST_ID
        .scope(id, error::EXPOSE_ERROR_CHAIN.scope(expose, next.run(req)))
        .await;
    let elapsed = started.elapsed();
    state.stats.record(elapsed);
    if let Some(metrics::RouteLabel(route)) = response.extensions().get() {
        let status = response.status().as_u16();
        let seconds = elapsed.as_secs_f64();
        state
            .metrics
            .observe(route, method.as_str(), status, seconds);
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
    let mut response = next.run(req).await;
    // For the audit layer, which runs outside this one.
    response.extensions_mut().insert(caller);
    Ok(response)
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
            SandboxError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            SandboxError::Upload(_) => ApiError::BadRequest(e.to_string()),
            SandboxError::Conflict(m) => ApiError::Conflict(m),
            SandboxError::OverQuota(m) => ApiError::TooManyRequests(m),
            SandboxError::NotRunning { .. } => ApiError::Conflict(e.to_string()),
            SandboxError::Storage(S::NotFound { .. }) => ApiError::NotFound(storage_message(&e)),
            SandboxError::Storage(S::AlreadyExists { .. }) => {
                ApiError::Conflict(storage_message(&e))
            }
            SandboxError::Storage(S::InvalidName(_) | S::BadArchive { .. }) => {
                ApiError::BadRequest(storage_message(&e))
            }
            SandboxError::WorkspaceMismatch { .. } => ApiError::Unavailable(e.to_string()),
            SandboxError::Agent(ref a)
                if a.remote_code()
                    == Some(rewind_agent::protocol::ErrorCode::WorkspaceUnavailable) =>
            {
                ApiError::Unavailable(a.to_string())
            }
            SandboxError::Storage(ref s) if s.is_no_space() => pool_full(),
            SandboxError::Runtime(crate::runtime::RuntimeError::Io { ref source, .. })
                if source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                pool_full()
            }
            SandboxError::Agent(ref a) => {
                ApiError::Unavailable(format!("the sandbox did not answer: {a}"))
            }
            SandboxError::NotImplemented(m) => ApiError::NotImplemented(m),
            SandboxError::Runtime(crate::runtime::RuntimeError::Unsupported { .. }) => {
                ApiError::BadRequest(storage_message(&e))
            }
            SandboxError::Runtime(ref r @ crate::runtime::RuntimeError::Unavailable { .. }) => {
                ApiError::NotImplemented(r.to_string())
            }
            SandboxError::Runtime(ref r @ crate::runtime::RuntimeError::Checkpoint { .. }) => {
                ApiError::Conflict(r.to_string())
            }
            SandboxError::Runtime(crate::runtime::RuntimeError::SavedStateDamaged { .. }) => {
                ApiError::Conflict(storage_message(&e))
            }
            SandboxError::Runtime(ref r) => ApiError::runtime(r),
            other => ApiError::internal_chain(&other),
        }
    }
}

/// 507: the pool (or the sandbox's disk limit) has no room; the operation
/// was rolled back.
fn pool_full() -> ApiError {
    ApiError::InsufficientStorage(
        "the storage pool is full: nothing was changed; delete sandboxes or snapshots, \
         or grow storage.pool_size_gb"
            .into(),
    )
}

/// A WebSocket upgrade, or our 400 when the request is not one.
fn ws_upgrade(
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<axum::extract::ws::WebSocketUpgrade, ApiError> {
    upgrade.map_err(|e| {
        ApiError::BadRequest(format!("expected a WebSocket upgrade: {}", e.body_text()))
    })
}

/// The innermost useful message of a wrapped error.
fn storage_message(e: &SandboxError) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// `{"message": "..."}`: the answer of an operation with nothing else to say.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    message: String,
}

impl Message {
    pub fn json(message: String) -> Json<Message> {
        Json(Message { message })
    }
}

/// The authenticated caller, inserted by [`require_key`].
pub type Auth = axum::Extension<Caller>;

pub type AppResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;
    use axum::http::StatusCode;

    #[test]
    fn from_sandbox_error_no_space_is_507() {
        let storage = SandboxError::Storage(rewind_storage::StorageError::Io {
            op: "write",
            path: "/pool/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });
        let runtime = SandboxError::Runtime(RuntimeError::Io {
            op: "write launch.json".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        });

        let statuses = [storage, runtime].map(|e| ApiError::from(e).status_code());

        assert_eq!(statuses, [StatusCode::INSUFFICIENT_STORAGE; 2]);
    }

    #[test]
    fn from_sandbox_error_runtime_failure_keeps_the_hypervisor_message() {
        let e = SandboxError::Runtime(RuntimeError::Hypervisor {
            op: "vm.snapshot".into(),
            message: "Error from API: GetNestedState(Invalid argument)".into(),
        });

        let api = ApiError::from(e);

        let ApiError::Runtime { message, .. } = api else {
            panic!("expected a runtime error, got {api:?}");
        };
        assert!(message.contains("vm.snapshot"), "{message}");
        assert!(
            message.contains("GetNestedState(Invalid argument)"),
            "{message}"
        );
    }

    #[test]
    fn from_sandbox_error_workspace_unavailable_is_503_with_the_reason() {
        let e = SandboxError::Agent(rewind_agent::client::AgentError::Remote {
            op: "exec",
            code: rewind_agent::protocol::ErrorCode::WorkspaceUnavailable,
            message: "/workspace is not mounted (a restore did not finish)".into(),
        });

        let api = ApiError::from(e);

        assert_eq!(
            api.status_code(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(api.to_string().contains("is not mounted"), "{api}");
    }

    #[test]
    fn from_sandbox_error_storage_not_found_is_404() {
        let e = SandboxError::Storage(rewind_storage::StorageError::NotFound {
            what: "snapshot",
            name: "gone".into(),
        });

        let api = ApiError::from(e);

        assert_eq!(api.status_code(), axum::http::StatusCode::NOT_FOUND);
    }
}
