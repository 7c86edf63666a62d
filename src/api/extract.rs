//! A `Json` extractor whose rejections use our error shape: every malformed,
//! mistyped, unknown-field or missing-field body is a 400 that says what is
//! wrong. A body over `server.max_body_bytes` keeps axum's 413, which
//! [`super::limits::error_shape`] words in our shape naming the key.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;

pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(rejection.into_response())
            }
            Err(rejection) => Err(ApiError::BadRequest(describe(rejection)).into_response()),
        }
    }
}

fn describe(rejection: JsonRejection) -> String {
    match rejection {
        JsonRejection::JsonDataError(e) => format!(
            "invalid request body: {}",
            e.body_text()
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        ),
        JsonRejection::JsonSyntaxError(e) => format!(
            "malformed JSON: {}",
            e.body_text()
                .trim_start_matches("Failed to parse the request body as JSON: ")
        ),
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with `Content-Type: application/json`".into()
        }
        JsonRejection::BytesRejection(e) => {
            format!("cannot read request body: {}", e.body_text())
        }
        other => other.body_text(),
    }
}

/// Like [`Json`], but an empty body means `T::default()` (for endpoints
/// whose every field is optional, e.g. `POST /api-keys`).
pub struct JsonOrEmpty<T>(pub T);

impl<T, S> FromRequest<S> for JsonOrEmpty<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => e.into_response(),
                _ => ApiError::BadRequest(format!("cannot read request body: {}", e.body_text()))
                    .into_response(),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrEmpty(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(JsonOrEmpty)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")).into_response())
    }
}

/// A query-string extractor whose rejections are our 400 naming the problem.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::BadRequest(format!(
                "invalid query string: {}",
                rejection
                    .body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}
