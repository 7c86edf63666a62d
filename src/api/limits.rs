//! Request limits from the libraries, answered in our error shapes: bodies
//! are capped by axum's `DefaultBodyLimit` (`server.max_body_bytes`; routes
//! that stream uploads and imports disable it and apply their own caps), and
//! bounded routes by tower-http's `TimeoutLayer`
//! (`server.request_timeout_secs`). Both answer in plain text (an empty 408,
//! axum's "length limit exceeded" 413); [`error_shape`] is the one place
//! that turns those answers into `{"error": ...}`, or the v1 body under
//! `/api/v1`, naming the config key.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::timeout::TimeoutLayer;

use super::v1::error::V1Error;
use super::{ApiError, AppState};
use crate::config::ServerConfig;

/// The timeout of the bounded routes: 408 after `server.request_timeout_secs`.
pub fn timeout(server: &ServerConfig) -> TimeoutLayer {
    TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(server.request_timeout_secs),
    )
}

/// A plain-text 408 or 413 from the libraries becomes our error naming the
/// limit (keeping the answer's extensions, e.g. the route label of the
/// request metrics); every other answer (our own 413s, which name their
/// cap, included) passes unchanged.
pub async fn error_shape(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let v1 = req.uri().path().starts_with("/api/v1/");
    let response = next.run(req).await;
    let Some(error) = limit_error(&response, &state.sandboxes.config.server) else {
        return response;
    };
    let mut shaped = match v1 {
        true => V1Error::from(error).into_response(),
        false => error.into_response(),
    };
    let (parts, _) = response.into_parts();
    shaped.extensions_mut().extend(parts.extensions);
    shaped
}

fn limit_error(response: &Response, server: &ServerConfig) -> Option<ApiError> {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    match response.status() {
        _ if json => None,
        StatusCode::REQUEST_TIMEOUT => Some(ApiError::RequestTimeout(format!(
            "no answer within server.request_timeout_secs ({} s)",
            server.request_timeout_secs
        ))),
        StatusCode::PAYLOAD_TOO_LARGE => Some(ApiError::PayloadTooLarge(format!(
            "request body over server.max_body_bytes ({} bytes)",
            server.max_body_bytes
        ))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(status: StatusCode) -> Response {
        (status, "length limit exceeded").into_response()
    }

    #[test]
    fn limit_error_names_the_key_of_a_plain_413_and_408() {
        let server = ServerConfig::default();

        let errors = [StatusCode::PAYLOAD_TOO_LARGE, StatusCode::REQUEST_TIMEOUT]
            .map(|s| limit_error(&plain(s), &server).unwrap().to_string());

        assert!(errors[0].contains("server.max_body_bytes (1048576 bytes)"));
        assert!(errors[1].contains("server.request_timeout_secs (30 s)"));
    }

    #[test]
    fn limit_error_leaves_our_json_413_and_other_statuses() {
        let ours = ApiError::PayloadTooLarge("files.max_upload_bytes".into()).into_response();

        let left = [ours, plain(StatusCode::BAD_REQUEST)]
            .map(|r| limit_error(&r, &ServerConfig::default()).is_none());

        assert_eq!(left, [true, true]);
    }
}
