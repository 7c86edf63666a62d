//! Body and query extractors whose rejections use the v1 error shape:
//! malformed JSON is 400 `bad_request`; a missing, mistyped or unknown field
//! is 422 `validation_error` naming the field in `details`. A body over
//! `server.max_body_bytes` keeps axum's 413, which
//! [`crate::api::limits::error_shape`] words in the v1 shape.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::{FieldError, V1Error};

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
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(r.into_response()),
            Err(r) => Err(rejected(r).into_response()),
        }
    }
}

fn rejected(rejection: JsonRejection) -> V1Error {
    match rejection {
        JsonRejection::JsonDataError(e) => V1Error::Validation(vec![field_error(
            e.body_text()
                .trim_start_matches("Failed to deserialize the JSON body into the target type: "),
        )]),
        JsonRejection::JsonSyntaxError(e) => V1Error::BadRequest(format!(
            "malformed JSON: {}",
            e.body_text()
                .trim_start_matches("Failed to parse the request body as JSON: ")
        )),
        other => V1Error::BadRequest(other.body_text()),
    }
}

/// Like [`Json`], but an empty body means `T::default()` (e.g. `stop`).
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
                _ => V1Error::BadRequest(e.body_text()).into_response(),
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrEmpty(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(JsonOrEmpty)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    V1Error::Validation(vec![field_error(&e.to_string())]).into_response()
                }
                _ => V1Error::BadRequest(format!("malformed JSON: {e}")).into_response(),
            })
    }
}

pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = V1Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| {
                V1Error::Validation(vec![field_error(
                    e.body_text()
                        .trim_start_matches("Failed to deserialize query string: "),
                )])
            })
    }
}

/// `vcpus: invalid type ...` → field `vcpus`; `missing field `name``,
/// `unknown field `x`, expected ...` → that field; else `body`.
fn field_error(text: &str) -> FieldError {
    let quoted = |marker: &str| {
        let rest = text.split(marker).nth(1)?;
        Some(rest.split('`').next()?.to_owned())
    };
    if let Some(f) = quoted("missing field `").or_else(|| quoted("unknown field `")) {
        return FieldError::new(f, first_clause(text));
    }
    match text.split_once(": ") {
        Some((path, msg)) if !path.contains(' ') => FieldError::new(path, first_clause(msg)),
        _ => FieldError::new("body", first_clause(text)),
    }
}

/// The message without serde's trailing position (`at line 1 column 9`).
fn first_clause(text: &str) -> String {
    text.split(" at line ").next().unwrap_or(text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_error_names_the_path_of_a_type_error() {
        let e = field_error("vcpus: invalid type: string \"x\", expected u32 at line 1 column 9");
        assert_eq!(
            e,
            FieldError::new("vcpus", "invalid type: string \"x\", expected u32")
        );
    }

    #[test]
    fn field_error_names_a_missing_field() {
        assert_eq!(field_error("missing field `name`").field, "name");
    }
}
