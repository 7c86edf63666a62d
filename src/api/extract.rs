//! Body and query extractors whose rejections use our error shape: every
//! malformed, mistyped, unknown-field or missing-field body is a 400 that
//! says what is wrong. A body over `server.max_body_bytes` keeps axum's 413,
//! which [`super::limits::error_shape`] words in our shape naming the key.
//! The reading is shared with the `/api/v1` extractors ([`json_body`],
//! [`json_or_empty_body`], [`query_of`]); only the wording differs.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Why a JSON body was refused, before an API words it in its shape.
pub enum BodyProblem {
    /// Over `server.max_body_bytes`: axum's plain 413, kept as it is.
    TooLarge(Response),
    /// Well-formed JSON of the wrong shape: serde's `field: problem`.
    Data(String),
    /// Not JSON, not declared as JSON, or unreadable: the whole message.
    Malformed(String),
}

/// The JSON body as `T` (`Content-Type: application/json` required).
pub async fn json_body<T, S>(req: Request, state: &S) -> Result<T, BodyProblem>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    match axum::Json::<T>::from_request(req, state).await {
        Ok(axum::Json(value)) => Ok(value),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(BodyProblem::TooLarge(r.into_response()))
        }
        Err(JsonRejection::JsonDataError(e)) => Err(BodyProblem::Data(
            e.body_text()
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
                .to_owned(),
        )),
        Err(JsonRejection::JsonSyntaxError(e)) => Err(BodyProblem::Malformed(format!(
            "malformed JSON: {}",
            e.body_text()
                .trim_start_matches("Failed to parse the request body as JSON: ")
        ))),
        Err(JsonRejection::MissingJsonContentType(_)) => Err(BodyProblem::Malformed(
            "expected a JSON body with `Content-Type: application/json`".into(),
        )),
        Err(other) => Err(BodyProblem::Malformed(format!(
            "cannot read request body: {}",
            other.body_text()
        ))),
    }
}

/// Like [`json_body`], but an empty body means `T::default()` and no
/// content type is required.
pub async fn json_or_empty_body<T, S>(req: Request, state: &S) -> Result<T, BodyProblem>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => BodyProblem::TooLarge(e.into_response()),
            _ => BodyProblem::Malformed(format!("cannot read request body: {}", e.body_text())),
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => BodyProblem::Data(e.to_string()),
        _ => BodyProblem::Malformed(format!("malformed JSON: {e}")),
    })
}

/// The query string as `T`, or serde's `field: problem`.
pub async fn query_of<T, S>(parts: &mut Parts, state: &S) -> Result<T, String>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    axum::extract::Query::<T>::from_request_parts(parts, state)
        .await
        .map(|q| q.0)
        .map_err(|e| {
            e.body_text()
                .trim_start_matches("Failed to deserialize query string: ")
                .to_owned()
        })
}

/// A native API refusal: the 413 as it is, anything else a 400.
fn refused(problem: BodyProblem) -> Response {
    let message = match problem {
        BodyProblem::TooLarge(response) => return response,
        BodyProblem::Data(m) => format!("invalid request body: {m}"),
        BodyProblem::Malformed(m) => m,
    };
    ApiError::BadRequest(message).into_response()
}

/// A native query-string refusal: a 400 naming the problem.
fn query_refused(message: String) -> Response {
    ApiError::BadRequest(format!("invalid query string: {message}")).into_response()
}

extractors!(refused, query_refused);

/// Defines `Json<T>`, `JsonOrEmpty<T>` (an empty body is `T::default()`)
/// and `Query<T>` in the calling module, reading with [`json_body`],
/// [`json_or_empty_body`] and [`query_of`] and wording refusals with
/// `$refused(BodyProblem) -> Response` and `$query(String) -> Response`:
/// one definition for the native API and `/api/v1`.
macro_rules! extractors {
    ($refused:path, $query:path) => {
        $crate::api::extract::body_extractor!(Json, json_body, $refused);
        $crate::api::extract::body_extractor!(JsonOrEmpty, json_or_empty_body, $refused, Default);

        pub struct Query<T>(pub T);

        impl<T, S> ::axum::extract::FromRequestParts<S> for Query<T>
        where
            T: ::serde::de::DeserializeOwned,
            S: Send + Sync,
        {
            type Rejection = ::axum::response::Response;

            async fn from_request_parts(
                parts: &mut ::axum::http::request::Parts,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                $crate::api::extract::query_of(parts, state)
                    .await
                    .map(Query)
                    .map_err($query)
            }
        }
    };
}
pub(crate) use extractors;

/// One body extractor of [`extractors!`]: `$name<T>` read with
/// `$crate::api::extract::$read`, `T` also bound by `$bound` when given.
macro_rules! body_extractor {
    ($name:ident, $read:ident, $refused:path $(, $bound:path)?) => {
        pub struct $name<T>(pub T);

        impl<T, S> ::axum::extract::FromRequest<S> for $name<T>
        where
            T: ::serde::de::DeserializeOwned $(+ $bound)?,
            S: Send + Sync,
        {
            type Rejection = ::axum::response::Response;

            async fn from_request(
                req: ::axum::extract::Request,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                $crate::api::extract::$read(req, state)
                    .await
                    .map($name)
                    .map_err($refused)
            }
        }
    };
}
pub(crate) use body_extractor;
