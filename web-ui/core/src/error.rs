//! API errors: one JSON shape, `{"error": {"code", "message", "field"}}`,
//! with a fitting status code.

use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use keel_model::{ParseError, Refusal, ValidationErrors};
use serde::Serialize;

use crate::ControlError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Per-field problems (validation), each with its path.
    fields: Vec<(String, String)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<FieldDetail<'a>>,
}

#[derive(Serialize)]
struct FieldDetail<'a> {
    field: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with a status, a stable code and a message for people.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// 401: no or bad credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400: a request we cannot read.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422 with every field problem.
    pub fn invalid(errors: &ValidationErrors) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            errors.to_string(),
        );
        e.fields = errors
            .0
            .iter()
            .map(|f| (f.path.to_string(), f.message.clone()))
            .collect();
        e
    }

    /// 422 naming one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("{field}: {message}"),
        );
        e.fields = vec![(field.to_owned(), message)];
        e
    }

    /// 500 with a generic message; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error in the admin API");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the node's log)",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// 412: an `If-Match` write whose object changed since it was read.
    pub fn stale(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PRECONDITION_FAILED, "stale", message)
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Is it a 412: what the write was planned against changed first?
    pub fn is_stale(&self) -> bool {
        self.code == "stale"
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.fields.first().map(|(f, _)| f.as_str()),
                fields: self
                    .fields
                    .iter()
                    .map(|(field, message)| FieldDetail { field, message })
                    .collect(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Syntax(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
            ParseError::Invalid(v) => ApiError::invalid(&v),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "request body is too large",
                )
            }
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NoLeader(_) | ControlError::Unconfirmed(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", e.to_string())
            }
            ControlError::NotFound(m) => ApiError::not_found(m),
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ControlError::Refused(r) => match r {
                Refusal::NotFound(m) => ApiError::not_found(m),
                Refusal::Spec(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
                Refusal::Stale(m) => ApiError::stale(m),
                other => ApiError::new(StatusCode::CONFLICT, "conflict", other.to_string()),
            },
        }
    }
}

impl From<crate::NotChecked> for ApiError {
    /// A password that was not checked (too many attempts, or no hashing
    /// slot free) is a 429.
    fn from(refused: crate::NotChecked) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            refused.message(),
        )
    }
}
