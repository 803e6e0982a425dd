//! The closed set of error codes the HTTP API answers with. Every error body
//! is `{"error": {"code": ..., "message": ...}}`; a 5xx says nothing internal.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidSignature,
    UnusablePayload,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    Unauthorized,
    Forbidden,
    NotFound,
    BadRequest,
    Conflict,
    /// Well formed, but asks for what cannot be done (422).
    Unprocessable,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidSignature => "invalid_signature",
            Code::UnusablePayload => "unusable_payload",
            Code::PayloadTooLarge => "payload_too_large",
            Code::RequestTimeout => "request_timeout",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::BadRequest => "bad_request",
            Code::Conflict => "conflict",
            Code::Unprocessable => "unprocessable",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidSignature | Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::UnusablePayload | Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::Conflict => StatusCode::CONFLICT,
            Code::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer. Messages must never carry personal data.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A 5xx whose cause is logged here and not told to the client.
    pub fn internal(code: Code, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, code = code.as_str(), "request failed");
        let message = match code {
            Code::Unavailable => "temporarily unavailable, retry later",
            _ => "internal error",
        };
        Self::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut resp = (self.code.status(), Json(body)).into_response();
        if self.code == Code::Unauthorized {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
