//! The built-in MCP server at `/mcp` (Streamable HTTP transport, `rmcp`):
//! tools over `sandbox::` operations, authenticated with rewind API keys
//! (`Authorization: Bearer <key>` or `x-api-key`) on every HTTP request.
//! Tools act as the key of the request that called them.

mod audit;
mod tools;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::{ApiError, AppState};
use crate::auth;

pub use tools::Rewind;

/// The `/mcp` service: one [`Rewind`] handler per MCP session.
pub fn service(state: &AppState) -> StreamableHttpService<Rewind, LocalSessionManager> {
    let sandboxes = state.sandboxes.clone();
    StreamableHttpService::new(
        move || Ok(Rewind::new(sandboxes.clone())),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    )
}

/// Resolve the key (Bearer or `x-api-key`) into a `Caller` extension.
pub async fn require_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = presented_key(req.headers());
    let caller = auth::verify(&state.sandboxes.db, presented.as_deref()).await?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// `Authorization: Bearer <key>`, else `x-api-key`.
pub fn presented_key(headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| header("x-api-key")).map(str::to_owned)
}
