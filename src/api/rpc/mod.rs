//! microsandbox-compatible JSON-RPC 2.0 at `POST /api/v1/rpc`: a thin
//! adapter over `sandbox::` operations.
//!
//! Compatibility target: the microsandbox Python SDK releases that used this
//! endpoint (checked: 0.1.8), where they differ from microsandbox's API
//! document — notably `output` of `sandbox.repl.run` / `sandbox.command.run`
//! is a list of `{"stream": "stdout"|"stderr", "text": <line>}` (the SDK
//! reads that), and `status` is `success` or `error`.
//!
//! Auth: `Authorization: Bearer <rewind API key>` (or `x-api-key`).
//! JSON-RPC answers always have HTTP status 200; the error code says what
//! went wrong (see [`RpcError`]). Batches are not supported (-32600).
//!
//! Namespaces: microsandbox sandbox `s` in namespace `ns` of key `k` is the
//! rewind sandbox `k<key id>.<ns>.<s>`, owned by that key. `ns` and `s` are
//! 1+ characters of `[A-Za-z0-9_-]` (no dot), so the mapping is one-to-one
//! and two keys can use the same names.

mod audit;
mod methods;
mod names;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Extensions, HeaderMap};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AppState;
use crate::auth::{self, AuthError, Caller};
use crate::sandbox::SandboxError;

/// One request envelope. `params` is decoded per method into its struct.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    /// `"2.0"`.
    jsonrpc: Option<String>,
    /// `sandbox.start`, `sandbox.stop`, `sandbox.metrics.get`,
    /// `sandbox.repl.run` or `sandbox.command.run`.
    #[schema(value_type = String)]
    method: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    id: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reply {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorObject>,
    #[schema(value_type = Object)]
    id: Value,
}

/// A JSON-RPC error: `code` -32700, -32600, -32601, -32602, -32603, or
/// -32000 to -32003 (see the README).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    code: i32,
    message: String,
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

/// Every error a call can answer, with its JSON-RPC code.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// -32700: the body is not JSON.
    #[error("Parse error: {0}")]
    Parse(String),
    /// -32600: JSON, but not a JSON-RPC 2.0 request object.
    #[error("Invalid Request: {0}")]
    InvalidRequest(String),
    /// -32601
    #[error("Method not found: {0}")]
    MethodNotFound(String),
    /// -32602: params missing or of the wrong shape.
    #[error("Invalid params: {0}")]
    InvalidParams(String),
    /// -32603: the operation failed inside rewind.
    #[error("{0}")]
    Internal(String),
    /// -32000: the server cannot do it now (name taken, sandbox not running).
    #[error("{0}")]
    Server(String),
    /// -32001: well-formed params with a value rewind does not accept.
    #[error("{0}")]
    Validation(String),
    /// -32002
    #[error("{0}")]
    Auth(String),
    /// -32003: no such sandbox (for this key).
    #[error("{0}")]
    NotFound(String),
}

impl RpcError {
    pub fn code(&self) -> i32 {
        match self {
            Self::Parse(_) => -32700,
            Self::InvalidRequest(_) => -32600,
            Self::MethodNotFound(_) => -32601,
            Self::InvalidParams(_) => -32602,
            Self::Internal(_) => -32603,
            Self::Server(_) => -32000,
            Self::Validation(_) => -32001,
            Self::Auth(_) => -32002,
            Self::NotFound(_) => -32003,
        }
    }
}

impl From<SandboxError> for RpcError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Invalid { .. } => Self::Validation(e.to_string()),
            SandboxError::NotFound(m) => Self::NotFound(m),
            SandboxError::Conflict(m) => Self::Server(m),
            SandboxError::NotRunning { .. } => Self::Server(e.to_string()),
            other => {
                let api = super::ApiError::from(other);
                tracing::error!(error = ?api, "rpc call failed");
                match api {
                    super::ApiError::Internal { .. } => {
                        Self::Internal("internal error; the detail is in the service log".into())
                    }
                    other => Self::Internal(other.to_string()),
                }
            }
        }
    }
}

impl From<AuthError> for RpcError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::Auth("Authentication required".into()),
            AuthError::Invalid => Self::Auth("Invalid API key".into()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// `POST /api/v1/rpc`.
#[utoipa::path(post, path = "/api/v1/rpc", tag = "json-rpc",
    request_body = Envelope,
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, description = "the JSON-RPC answer; errors are in its `error` \
        (authentication too: -32001)", body = Reply)))]
pub async fn handle(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Reply> {
    let envelope = match parse(&body) {
        Ok(envelope) => envelope,
        Err((err, id)) => return Json(failure(id, err)),
    };
    let id = envelope.id.clone().unwrap_or(Value::Null);
    let result = async {
        let method = method_name(&envelope)?;
        let caller = authenticate(&state, &headers).await;
        let params = envelope.params.unwrap_or(Value::Null);
        let known = caller.as_ref().ok();
        let pending = audit::begin(&state, &extensions, &method, &params, known).await;
        let result = match caller {
            Ok(caller) => methods::call(&state, &caller, &method, params).await,
            Err(err) => Err(err),
        };
        if let Some(pending) = pending {
            pending
                .finish(&state.sandboxes, audit::status_of(&result))
                .await;
        }
        result
    }
    .await;
    Json(match result {
        Ok(result) => Reply {
            jsonrpc: "2.0",
            result: Some(result),
            error: None,
            id,
        },
        Err(err) => failure(id, err),
    })
}

fn parse(body: &[u8]) -> Result<Envelope, (RpcError, Value)> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| (RpcError::Parse(e.to_string()), Value::Null))?;
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    if value.is_array() {
        let err = RpcError::InvalidRequest("batch requests are not supported".into());
        return Err((err, Value::Null));
    }
    let envelope: Envelope = serde_json::from_value(value)
        .map_err(|e| (RpcError::InvalidRequest(e.to_string()), id.clone()))?;
    if envelope.jsonrpc.as_deref() != Some("2.0") {
        let err = RpcError::InvalidRequest("jsonrpc must be \"2.0\"".into());
        return Err((err, id));
    }
    Ok(envelope)
}

fn method_name(envelope: &Envelope) -> Result<String, RpcError> {
    match &envelope.method {
        Some(Value::String(method)) => Ok(method.clone()),
        _ => Err(RpcError::InvalidRequest("method must be a string".into())),
    }
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, RpcError> {
    let key = super::mcp::presented_key(headers);
    Ok(auth::verify(&state.sandboxes.db, key.as_deref()).await?)
}

fn failure(id: Value, err: RpcError) -> Reply {
    Reply {
        jsonrpc: "2.0",
        result: None,
        error: Some(ErrorObject {
            code: err.code(),
            message: err.to_string(),
            data: None,
        }),
        id,
    }
}
