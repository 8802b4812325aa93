//! The HTTP error: every refusal is `application/problem+json` (RFC 9457) with a stable `code`
//! and, where one field is at fault, its name. Mapped to a status here and nowhere else.

use allo_common::auth::AuthError;
use allo_common::error::ErrorCode;
use allo_common::ops::RequestError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A header or query parameter is invalid (the body's fields go through `Request`).
    #[error("{field}: {message}")]
    BadParameter { field: String, message: String },
    #[error("body too large")]
    PayloadTooLarge { max: usize },
    #[error("not found")]
    NotFound(String),
    /// A rule found by a worker (or checked by a read against Postgres).
    #[error("{message}")]
    Domain {
        code: ErrorCode,
        message: String,
        command_id: Option<String>,
    },
    /// The `Idempotency-Key` was first sent with another body.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// The user's command budget for this window is spent (across all replicas), or their
    /// read budget on this replica.
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// NATS or Postgres cannot take the request now; nothing was accepted.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This replica is serving `limits.api_max_in_flight` requests already.
    #[error("overloaded")]
    Overloaded,
    /// The request ran past `limits.request_timeout_secs`.
    #[error("timed out")]
    TimedOut,
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::Unavailable("the database is unavailable".into())
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl ApiError {
    pub fn bad_parameter(field: &str, message: impl Into<String>) -> Self {
        Self::BadParameter {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn domain(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Domain {
            code,
            message: message.into(),
            command_id: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, detail, field) = match &self {
            Self::Unauthorized(e) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                e.to_string(),
                None,
            ),
            Self::Request(RequestError::UnknownOperation(op)) => (
                StatusCode::NOT_FOUND,
                "unknown_operation",
                "Unknown operation",
                format!("there is no operation `{op}`"),
                None,
            ),
            Self::Request(RequestError::Malformed(m)) => (
                StatusCode::BAD_REQUEST,
                "malformed",
                "Malformed request body",
                m.clone(),
                Some("body".to_string()),
            ),
            Self::Request(RequestError::Invalid { field, message }) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Invalid field",
                format!("{field}: {message}"),
                Some(field.clone()),
            ),
            Self::Request(RequestError::NotCaller { field, message }) => (
                StatusCode::FORBIDDEN,
                "not_caller",
                "Field names another user",
                format!("{field}: {message}"),
                Some(field.clone()),
            ),
            Self::Request(RequestError::Forbidden(message)) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                message.clone(),
                None,
            ),
            Self::BadParameter { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "Invalid parameter",
                format!("{field}: {message}"),
                Some(field.clone()),
            ),
            Self::PayloadTooLarge { max } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "Body too large",
                format!("the body must be at most {max} bytes"),
                Some("body".to_string()),
            ),
            Self::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                what.clone(),
                None,
            ),
            Self::Domain { code, message, .. } => (
                StatusCode::from_u16(code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                code.as_str(),
                "Command rejected",
                message.clone(),
                None,
            ),
            Self::IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
                "this Idempotency-Key was used with another body; use a new key for a new request"
                    .to_string(),
                Some("Idempotency-Key".to_string()),
            ),
            Self::RateLimited { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                format!("too many requests; retry in {retry_after_secs} s"),
                None,
            ),
            Self::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                m.clone(),
                None,
            ),
            Self::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Service overloaded",
                "this server is at its limit of requests in flight; retry shortly".to_string(),
                None,
            ),
            Self::TimedOut => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
                "the request took too long and was ended".to_string(),
                None,
            ),
            Self::Internal(e) => {
                // Logged once here with its chain; the client gets no internals.
                tracing::error!(error = format!("{e:#}"), "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal error",
                    "an internal error occurred".to_string(),
                    None,
                )
            }
        };
        metrics::counter!("allo_http_refusals_total", "code" => code).increment(1);
        let mut body = json!({
            "type": format!("https://allo.chat/problems/{code}"),
            "title": title,
            "status": status.as_u16(),
            "code": code,
            "detail": detail,
        });
        if let Some(field) = field {
            body["field"] = field.into();
        }
        if let Self::Domain {
            command_id: Some(id),
            ..
        } = &self
        {
            body["commandId"] = id.clone().into();
        }
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::RateLimited { retry_after_secs } = &self
            && let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
