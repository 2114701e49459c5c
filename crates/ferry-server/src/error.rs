//! The API's one error type: `{ "error": { "code": "...", "message": "..." } }` with a status
//! that fits the kind. Internal errors are logged in full and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_core::Error;

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError(pub Error);

pub type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status for an error kind.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::InvalidInput(_) | Error::Unsupported(_) => StatusCode::BAD_REQUEST,
        Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Connection(_) => StatusCode::BAD_GATEWAY,
        Error::Engine(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::Cancelled(_) | Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error body; internal details stay in the log.
pub fn body_of(e: &Error) -> serde_json::Value {
    let message = match e {
        Error::Internal(detail) => {
            tracing::error!(error = %detail, "internal error");
            "internal error in Ferry; the server log has the details".to_string()
        }
        other => other.message().to_string(),
    };
    serde_json::json!({ "error": { "code": e.code(), "message": message } })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (status_of(&self.0), Json(body_of(&self.0))).into_response()
    }
}

/// Rejections of malformed JSON bodies or query strings, in the same error shape.
pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(Error::InvalidInput(message.into()))
}
