//! The API's one error type: an HTTP status and a `msg` that names the field and the reason, in the
//! seed's envelope (`{"data": null, "msg": …}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub msg: String,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError { status, msg: msg.into() }
    }

    /// 400: `field: reason`.
    pub fn bad(field: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {reason}"))
    }

    /// 403: `field: reason`.
    pub fn forbidden(field: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, format!("{field}: {reason}"))
    }

    pub fn not_found(name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("name: no service named {name:?}"))
    }

    pub fn no_task(name: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("name: no task named {name:?}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "data": null, "msg": self.msg }))).into_response()
    }
}
