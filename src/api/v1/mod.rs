//! The MicroVM Sandbox API under `/api/v1`: the same sandboxes as the native
//! API, in that API's shapes (see `docs`/README for every choice where the
//! reference is vague). One file per resource; each handler parses, calls one
//! operation of [`crate::sandbox`] or [`crate::auth`], and renders.
//!
//! Authentication: `Authorization: Bearer <jwt>` (a user), `Authorization:
//! Bearer <rewind API key>` or `x-api-key` (a key). Both resolve to the same
//! owner identity as the native API: a caller sees its own sandboxes; an
//! admin (key or user) sees all.

mod auth;
pub mod error;
mod events;
mod execute;
mod extract;
mod files;
mod health;
mod lifecycle;
mod metrics;
mod network;
mod resources;
mod security;
mod snapshots;
mod system;
mod vms;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::Response;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::{audit, ratelimit, AppState};
use crate::auth::jwt::{looks_like_jwt, Tokens};
use crate::auth::users::{self, LoginLimiter};
use crate::auth::{self as keys, AuthError, Caller};
use error::{V1Error, V1Result};

/// What the v1 handlers need beyond the sandboxes.
#[derive(Clone)]
pub struct V1State {
    /// Loaded (or created) at first use: `<data_dir>/jwt.secret`.
    tokens: Arc<tokio::sync::OnceCell<Tokens>>,
    logins: LoginLimiter,
    /// Security scans of this process (see [`crate::security`]).
    scans: crate::security::Scans,
}

impl V1State {
    pub fn new(config: &crate::config::Config) -> Self {
        V1State {
            tokens: Default::default(),
            logins: LoginLimiter::new(config.auth.login_failures_free),
            scans: Default::default(),
        }
    }
}

impl AppState {
    async fn tokens(&self) -> V1Result<&Tokens> {
        let dir = self.sandboxes.config.data_dir.clone();
        self.v1
            .tokens
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || Tokens::load_or_create(&dir))
                    .await
                    .map_err(|e| crate::api::ApiError::internal_chain(&e))?
                    .map_err(|e| crate::api::ApiError::internal_chain(&e))
            })
            .await
            .map_err(V1Error::from)
    }
}

/// Every `/api/v1` route (nested by [`crate::api::app`]), each with its
/// OpenAPI operation. Extend here, only through `routes!`.
pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    let authed = bounded()
        .layer(crate::api::limits::timeout(&state.sandboxes.config.server))
        .routes(routes!(vms::create))
        .routes(routes!(vms::destroy))
        .routes(routes!(lifecycle::start))
        .routes(routes!(lifecycle::stop))
        .routes(routes!(lifecycle::restart))
        .routes(routes!(execute::execute))
        // py-microvm's name for execute.
        .routes(routes!(execute::guest_command))
        .routes(routes!(snapshots::create))
        .routes(routes!(snapshots::destroy))
        .routes(routes!(snapshots::restore))
        .merge(transfer_routes())
        .routes(routes!(resources::update))
        .routes(routes!(security::scan))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit_v1,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_caller,
        ));
    let per_ip = || middleware::from_fn_with_state(state.clone(), ratelimit::limit_ip_v1);
    let timeout = || crate::api::limits::timeout(&state.sandboxes.config.server);
    OpenApiRouter::default()
        .routes(routes!(auth::register).map(|r| r.route_layer(per_ip()).layer(timeout())))
        .routes(routes!(auth::login).map(|r| r.route_layer(per_ip()).layer(timeout())))
        .routes(routes!(health::health).map(|r| r.route_layer(per_ip()).layer(timeout())))
        .merge(authed)
        // Authenticated on the upgrade, by header or `?token=` (events.rs).
        .routes(routes!(events::vm_events))
        .routes(routes!(events::system_events))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            audit::record_v1,
        ))
        .fallback(not_found)
}

/// Reads and bookkeeping, answered within `server.request_timeout_secs`.
fn bounded() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(vms::list))
        .routes(routes!(vms::get))
        .routes(routes!(snapshots::list))
        .routes(routes!(metrics::metrics))
        .routes(routes!(health::status))
        .routes(routes!(files::list))
        .routes(routes!(network::get))
        .routes(routes!(network::port_forward))
        .routes(routes!(network::list))
        .routes(routes!(system::metrics))
        .routes(routes!(security::audit_logs))
        .routes(routes!(security::scan_result))
}

/// File transfers: uploads stream under their own cap
/// (`files.max_upload_bytes`), not `server.max_body_bytes`.
fn transfer_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(files::upload).layer(DefaultBodyLimit::disable()))
        // py-microvm's name for upload (its form field is `remote_path`).
        .routes(routes!(files::guest_upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::download))
}

async fn not_found() -> V1Error {
    V1Error::NotFound("no such route".into())
}

/// The bearer token or `x-api-key` of a request, if any.
fn presented(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Resolve a JWT or an API key to a [`Caller`]; `None` when none was sent.
pub(crate) async fn caller_of(state: &AppState, headers: &HeaderMap) -> V1Result<Option<Caller>> {
    caller_of_token(state, presented(headers)).await
}

/// [`caller_of`] for a token from anywhere (header or query parameter).
async fn caller_of_token(state: &AppState, token: Option<String>) -> V1Result<Option<Caller>> {
    let Some(token) = token else {
        return Ok(None);
    };
    if looks_like_jwt(&token) {
        let tokens = state.tokens().await?;
        let caller = users::caller_of_token(&state.sandboxes.db, tokens, &token).await?;
        return Ok(Some(caller));
    }
    match keys::verify(&state.sandboxes.db, Some(&token)).await {
        Ok(caller) => Ok(Some(caller)),
        Err(AuthError::Missing) => Ok(None),
        Err(AuthError::Invalid) => Err(V1Error::Unauthorized("Invalid API key".into())),
        Err(other) => Err(crate::api::ApiError::from(other).into()),
    }
}

/// 401 `unauthorized` without a valid token or key.
async fn require_caller(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, V1Error> {
    let caller = caller_of(&state, req.headers())
        .await?
        .ok_or_else(|| V1Error::Unauthorized("Authentication required".into()))?;
    req.extensions_mut().insert(caller);
    let mut response = next.run(req).await;
    // For the audit layer, which runs outside this one.
    response.extensions_mut().insert(caller);
    Ok(response)
}

/// `2024-12-09T19:30:00` (as stored, UTC) → `2024-12-09T19:30:00Z`.
fn utc(stored: &str) -> String {
    format!("{stored}Z")
}

fn now_utc() -> String {
    utc(&crate::db::now().0)
}
