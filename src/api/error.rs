//! The one error type at the HTTP edge. Every variant has a status code;
//! bodies are `{"error": "..."}` like the reference API. 5xx bodies stay
//! generic and carry the request id, which the log line carries too.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// Every native error body: `{"error": "..."}`, plus `request_id` on a 500.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    #[error("API key required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A bounded route took longer than `server.request_timeout_secs` (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// Over a size cap; the message names the field and the cap.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The sandbox cannot do this in its current state (e.g. failed).
    #[error("{0}")]
    Unavailable(String),
    /// The caller's rate limit is spent (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// The storage pool is full (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// This host cannot do what was asked (e.g. memory snapshots without
    /// CRIU); the message says why.
    #[error("{0}")]
    NotImplemented(String),
    /// The sandbox's runtime (hypervisor, namespaces) failed. The client sees
    /// `message`, the first link of the error chain (e.g. Cloud Hypervisor's
    /// message), and the request id; the log line with that id has `chain`,
    /// the whole chain, which may name host paths. `server.expose_error_chain`
    /// sends the chain to the client too.
    #[error("{message}")]
    Runtime { message: String, chain: String },
    /// Anything else; the detail goes to the log only.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal { .. } | ApiError::Runtime { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The message a client may see on a channel without a status line (a
    /// stream's error event); internal details go to the log only.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal { detail } => {
                logged_request_id(detail, "internal error");
                "Internal server error".into()
            }
            ApiError::Runtime { message, chain } => {
                logged_request_id(chain, "runtime error");
                client_message(message, chain)
            }
            other => other.to_string(),
        }
    }

    /// A runtime failure: its first link for the client, the chain for the log.
    pub fn runtime(err: &(dyn std::error::Error + 'static)) -> ApiError {
        ApiError::Runtime {
            message: err.to_string(),
            chain: crate::runtime::chain(err),
        }
    }

    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        ApiError::Internal {
            detail: err.to_string(),
        }
    }

    /// Internal error with the whole `source()` chain in the detail.
    pub fn internal_chain(err: &(dyn std::error::Error + 'static)) -> ApiError {
        ApiError::Internal {
            detail: crate::runtime::chain(err),
        }
    }
}

tokio::task_local! {
    /// The id of the request being served (set by the request-id middleware).
    pub static REQUEST_ID: String;
    /// `server.expose_error_chain` of the service serving the request (set
    /// by the same middleware; false outside a request).
    pub static EXPOSE_ERROR_CHAIN: bool;
}

/// What the client sees of a runtime failure: the chain when the service
/// exposes it, else the first link.
fn client_message(message: &str, chain: &str) -> String {
    match EXPOSE_ERROR_CHAIN.try_with(|on| *on) {
        Ok(true) => chain.to_owned(),
        _ => message.to_owned(),
    }
}

/// The id of the request being served ("" outside a request).
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

/// Log a server-side error of another API shape with the request's id.
pub fn log_internal(error: &str) {
    logged_request_id(error, "internal error");
}

/// Log a server-side error with the request's id; returns the id.
fn logged_request_id(error: &str, what: &str) -> String {
    let request_id = REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default();
    tracing::error!(request_id = %request_id, error = %error, "{what}");
    request_id
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = match &self {
            ApiError::Internal { detail } => ErrorBody {
                error: "Internal server error".into(),
                request_id: Some(logged_request_id(detail, "internal error")),
            },
            ApiError::Runtime { message, chain } => ErrorBody {
                error: client_message(message, chain),
                request_id: Some(logged_request_id(chain, "runtime error")),
            },
            other => ErrorBody {
                error: other.to_string(),
                request_id: None,
            },
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(err: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = REQUEST_ID
            .scope("req_test".into(), async { err.into_response() })
            .await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn into_response_internal_is_generic_with_request_id() {
        let (status, body) = body_of(ApiError::internal("disk on fire at /secret/path")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"error": "Internal server error", "request_id": "req_test"})
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failed to start sandbox s1")]
    struct Outer(#[source] std::io::Error);

    fn start_failure() -> ApiError {
        let inner = std::io::Error::other("cannot mount /var/lib/rewind/pool/sandboxes/s1/live");
        ApiError::runtime(&Outer(inner))
    }

    /// Log lines written while `f` runs, as text.
    async fn logged<F: std::future::Future>(f: F) -> (F::Output, String) {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let out = f.await;
        drop(guard);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (out, text)
    }

    #[tokio::test]
    async fn into_response_runtime_error_gives_the_first_link_and_logs_the_chain() {
        let ((status, body), log) = logged(body_of(start_failure())).await;

        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            serde_json::json!({"error": "failed to start sandbox s1", "request_id": "req_test"})
        );
        assert!(log.contains("req_test"), "{log}");
        assert!(
            log.contains(
                "failed to start sandbox s1: cannot mount /var/lib/rewind/pool/sandboxes/s1/live"
            ),
            "{log}"
        );
    }

    #[tokio::test]
    async fn into_response_runtime_error_with_expose_error_chain_gives_the_chain() {
        let (status, body) = EXPOSE_ERROR_CHAIN
            .scope(true, body_of(start_failure()))
            .await;

        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body["error"],
            "failed to start sandbox s1: cannot mount /var/lib/rewind/pool/sandboxes/s1/live"
        );
    }

    #[tokio::test]
    async fn into_response_client_error_keeps_message() {
        let (status, body) = body_of(ApiError::BadRequest("name: too long".into())).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("name: too long"))
        );
    }
}
