//! Errors of the MicroVM Sandbox API: `{"error": code, "message": ...,
//! "details"?: ...}` with the reference's codes, `request_id` on 500 and
//! `retry_after_seconds` on 429. Native routes keep their own shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::api::ApiError;
use crate::auth::users::UserError;
use crate::sandbox::SandboxError;

/// One entry of a `validation_error`'s `details`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[schema(as = v1::FieldError)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, error: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            error: error.into(),
        }
    }
}

#[derive(Debug)]
pub enum V1Error {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Validation(Vec<FieldError>),
    RateLimited {
        retry_after_seconds: u64,
    },
    /// A feature this host or runtime does not have (e.g. Windows guests).
    NotImplemented(String),
    Unavailable(String),
    /// Anything else: the reference's `internal_error` with the request id.
    Api(ApiError),
}

/// Every `/api/v1` error body: `{"error": code, "message", "details"?,
/// "retry_after_seconds"?, "request_id"?}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Error)]
pub struct Body {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `validation_error`, `rate_limit_exceeded`, `payload_too_large`,
    /// `request_timeout`, `insufficient_storage`, `not_implemented`,
    /// `service_unavailable` or `internal_error`.
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Vec<FieldError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

impl V1Error {
    pub fn invalid(field: impl Into<String>, error: impl Into<String>) -> V1Error {
        V1Error::Validation(vec![FieldError::new(field, error)])
    }

    fn status_code(&self) -> StatusCode {
        match self {
            V1Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            V1Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            V1Error::Forbidden(_) => StatusCode::FORBIDDEN,
            V1Error::NotFound(_) => StatusCode::NOT_FOUND,
            V1Error::Conflict(_) => StatusCode::CONFLICT,
            V1Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            V1Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            V1Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            V1Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            V1Error::Api(e) => e.status_code(),
        }
    }

    fn body(self) -> Body {
        let plain = |error, message| Body {
            error,
            message,
            details: None,
            retry_after_seconds: None,
            request_id: None,
        };
        match self {
            V1Error::BadRequest(m) => plain("bad_request", m),
            V1Error::Unauthorized(m) => plain("unauthorized", m),
            V1Error::Forbidden(m) => plain("forbidden", m),
            V1Error::NotFound(m) => plain("not_found", m),
            V1Error::Conflict(m) => plain("conflict", m),
            V1Error::NotImplemented(m) => plain("not_implemented", m),
            V1Error::Unavailable(m) => plain("service_unavailable", m),
            V1Error::Validation(details) => Body {
                details: Some(details),
                ..plain("validation_error", "Request validation failed".into())
            },
            V1Error::RateLimited {
                retry_after_seconds,
            } => Body {
                retry_after_seconds: Some(retry_after_seconds),
                ..plain("rate_limit_exceeded", "Too many requests".into())
            },
            V1Error::Api(e) => api_body(e),
        }
    }
}

/// An [`ApiError`] in the reference's shape (5xx: generic, with request id).
fn api_body(e: ApiError) -> Body {
    let message = match &e {
        ApiError::Internal { detail } => {
            crate::api::error::log_internal(detail);
            "An unexpected error occurred".to_owned()
        }
        ApiError::Runtime { .. } => e.public_message(),
        other => other.to_string(),
    };
    let code = match e.status_code() {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::NOT_IMPLEMENTED => "not_implemented",
        StatusCode::INSUFFICIENT_STORAGE => "insufficient_storage",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
        _ => "internal_error",
    };
    let request_id = (code == "internal_error").then(crate::api::error::current_request_id);
    Body {
        error: code,
        message,
        details: None,
        retry_after_seconds: None,
        request_id,
    }
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry = match &self {
            V1Error::RateLimited {
                retry_after_seconds,
            } => Some(*retry_after_seconds),
            _ => None,
        };
        let mut response = (status, Json(self.body())).into_response();
        if let Some(secs) = retry {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        response
    }
}

impl From<ApiError> for V1Error {
    fn from(e: ApiError) -> Self {
        V1Error::Api(e)
    }
}

impl From<SandboxError> for V1Error {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Invalid { field, message } => V1Error::invalid(field, message),
            other => V1Error::Api(ApiError::from(other)),
        }
    }
}

impl From<UserError> for V1Error {
    fn from(e: UserError) -> Self {
        use crate::auth::jwt::JwtError;
        match e {
            UserError::Exists(_) => V1Error::Conflict(e.to_string()),
            UserError::AdminNeeded => V1Error::Forbidden(e.to_string()),
            UserError::BadCredentials => V1Error::Unauthorized(e.to_string()),
            UserError::Throttled { retry_after_secs } => V1Error::RateLimited {
                retry_after_seconds: retry_after_secs,
            },
            UserError::Gone | UserError::Token(JwtError::Invalid(_)) => {
                V1Error::Unauthorized("Invalid token".into())
            }
            UserError::Token(JwtError::Expired) => V1Error::Unauthorized("Token expired".into()),
            other => V1Error::Api(ApiError::internal_chain(&other)),
        }
    }
}

pub type V1Result<T> = Result<T, V1Error>;
