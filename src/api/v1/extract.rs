//! Body and query extractors whose rejections use the v1 error shape:
//! malformed JSON is 400 `bad_request`; a missing, mistyped or unknown field
//! is 422 `validation_error` naming the field in `details`. A body over
//! `server.max_body_bytes` keeps axum's 413, which
//! [`crate::api::limits::error_shape`] words in the v1 shape.

use axum::response::{IntoResponse, Response};

use super::error::{FieldError, V1Error};
use crate::api::extract::{extractors, BodyProblem};

/// A v1 refusal: the 413 as it is, a wrong field 422, anything else 400.
fn refused(problem: BodyProblem) -> Response {
    match problem {
        BodyProblem::TooLarge(response) => response,
        BodyProblem::Data(m) => V1Error::Validation(vec![field_error(&m)]).into_response(),
        BodyProblem::Malformed(m) => V1Error::BadRequest(m).into_response(),
    }
}

/// A v1 query-string refusal: 422 naming the field.
fn query_refused(message: String) -> Response {
    V1Error::Validation(vec![field_error(&message)]).into_response()
}

extractors!(refused, query_refused);

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
