//! The API's one error type, rendered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with all four keys always present (OpenAI's OpenAPI `Error` schema marks them required).
//!
//! | cause                        | HTTP | `type`                  | `code`                               |
//! |------------------------------|------|-------------------------|--------------------------------------|
//! | bad JSON, failed validation  | 400  | `invalid_request_error` | null or a stable tag; `param` = field |
//! | missing or bad API key       | 401  | `authentication_error`  | `invalid_api_key`                    |
//! | unknown model/job/file/...   | 404  | `invalid_request_error` | `model_not_found`, `job_not_found`…  |
//! | upload over the size limit   | 413  | `invalid_request_error` | `file_too_large`                     |
//! | queue full, semaphore busy   | 429  | `rate_limit_error`      | `overloaded`                         |
//! | internal (DB, I/O, worker)   | 500  | `server_error`          | null; the message is generic         |
//!
//! A 500 never echoes its cause: the full error rides on the response as an [`InternalError`]
//! extension and [`log_internal_errors`] logs it (axum's error-handling example).

use axum::Json;
use axum::extract::Request;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or fails validation; `param` names the field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// 401: no key, or a key that is not known.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: the object does not exist *for this user* (another user's objects are 404 too, never 403).
    #[error("{message}")]
    NotFound {
        message: String,
        code: &'static str,
        param: Option<String>,
    },
    /// 413: an upload is larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// 429: every generation slot is busy, or the queue is full.
    #[error("{0}")]
    Overloaded(String),
    /// 500: logged in full, answered with a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: impl Into<Option<&'static str>>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.into().map(str::to_string),
            code: None,
        }
    }

    pub fn invalid_param(message: impl Into<String>, param: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn invalid_coded(
        message: impl Into<String>,
        param: Option<&str>,
        code: &'static str,
    ) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_string),
            code: Some(code),
        }
    }

    pub fn job_not_found(id: &str) -> Self {
        ApiError::NotFound {
            message: format!("fine-tuning job `{id}` not found"),
            code: "job_not_found",
            param: None,
        }
    }

    pub fn file_not_found(id: &str, param: Option<&str>) -> Self {
        ApiError::NotFound {
            message: format!("file `{id}` not found"),
            code: "file_not_found",
            param: param.map(str::to_string),
        }
    }

    pub fn model_not_found(id: &str) -> Self {
        ApiError::NotFound {
            message: format!("model `{id}` does not exist or you do not have access to it"),
            code: "model_not_found",
            param: Some("model".into()),
        }
    }

    pub fn checkpoint_not_found(id: &str) -> Self {
        ApiError::NotFound {
            message: format!("checkpoint `{id}` not found"),
            code: "checkpoint_not_found",
            param: None,
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body; also sent as the last SSE `data:` event when a stream fails midway.
    pub fn body(&self) -> ErrorBody {
        let (message, r#type, param, code) = match self {
            ApiError::InvalidRequest {
                message,
                param,
                code,
            } => (
                message.clone(),
                "invalid_request_error",
                param.clone(),
                code.map(str::to_string),
            ),
            ApiError::Unauthorized(m) => (
                m.clone(),
                "authentication_error",
                None,
                Some("invalid_api_key".into()),
            ),
            ApiError::NotFound {
                message,
                code,
                param,
            } => (
                message.clone(),
                "invalid_request_error",
                param.clone(),
                Some(code.to_string()),
            ),
            ApiError::TooLarge(m) => (
                m.clone(),
                "invalid_request_error",
                Some("file".into()),
                Some("file_too_large".into()),
            ),
            ApiError::Overloaded(m) => (
                m.clone(),
                "rate_limit_error",
                None,
                Some("overloaded".into()),
            ),
            ApiError::Internal(_) => (
                "the server had an error while processing your request".into(),
                "server_error",
                None,
                None,
            ),
        };
        ErrorBody {
            error: ErrorObject {
                message,
                r#type: r#type.to_string(),
                param,
                code,
            },
        }
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// OpenAI's error object: all four keys serialised, `null` when unused.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ErrorObject {
    pub message: String,
    pub r#type: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// The hidden cause of a 500, carried to [`log_internal_errors`].
#[derive(Debug, Clone)]
pub struct InternalError(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(self.body())).into_response();
        if let ApiError::Internal(detail) = self {
            resp.extensions_mut().insert(InternalError(detail));
        }
        resp
    }
}

/// Logs the cause of every 500 answer (the client only sees a generic message).
pub async fn log_internal_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().path().to_string();
    let resp = next.run(req).await;
    if let Some(InternalError(detail)) = resp.extensions().get::<InternalError>() {
        tracing::error!(%method, %uri, error = %detail, "request failed");
    }
    resp
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("a blocking task failed: {e}"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // serde's message names the field path and position (`missing field `model` at line 1 column 2`).
        let message = match &rejection {
            JsonRejection::JsonDataError(e) => format!(
                "invalid request body: {}",
                std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text())
            ),
            JsonRejection::JsonSyntaxError(e) => format!(
                "the body is not valid JSON: {}",
                std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text())
            ),
            JsonRejection::MissingJsonContentType(_) => {
                "expected a JSON body with `Content-Type: application/json`".to_string()
            }
            other => other.body_text(),
        };
        ApiError::InvalidRequest {
            message,
            param: None,
            code: None,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidRequest {
            message: format!("invalid query string: {}", rejection.body_text()),
            param: None,
            code: None,
        }
    }
}

/// `Json<T>` whose rejection is an [`ApiError`], so malformed bodies get OpenAI's error shape
/// (plain `Json` answers in text).
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `Query<T>` whose rejection is an [`ApiError`].
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_all_four_keys() {
        let errors = [
            ApiError::invalid("bad", "model"),
            ApiError::Unauthorized("no key".into()),
            ApiError::job_not_found("ftjob-x"),
            ApiError::TooLarge("big".into()),
            ApiError::Overloaded("busy".into()),
            ApiError::Internal("disk on fire at /secret/path".into()),
        ];
        for e in errors {
            let v = serde_json::to_value(e.body()).unwrap();
            let obj = v["error"].as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
        }
        let internal = ApiError::Internal("disk on fire at /secret/path".into()).body();
        assert!(
            !internal.error.message.contains("secret"),
            "internal details must not leak"
        );
        assert_eq!(
            ApiError::Overloaded("x".into()).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            ApiError::Unauthorized("x".into())
                .body()
                .error
                .code
                .as_deref(),
            Some("invalid_api_key")
        );
    }
}
