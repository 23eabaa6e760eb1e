//! The API's one error type, rendered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with all four keys always present (OpenAI's OpenAPI `Error` schema marks them required).
//!
//! | cause                        | HTTP | `type`                  | `code`                               |
//! |------------------------------|------|-------------------------|--------------------------------------|
//! | bad JSON, failed validation  | 400  | `invalid_request_error` | null or a stable tag; `param` = field |
//! | missing or bad API key       | 401  | `authentication_error`  | `invalid_api_key`                    |
//! | unknown model/job/file/...   | 404  | `invalid_request_error` | `model_not_found`, `job_not_found`…  |
//! | known URL, wrong method      | 405  | `invalid_request_error` | `method_not_allowed`                 |
//! | body not received in time    | 408  | `invalid_request_error` | `request_timeout`                    |
//! | body or upload over its limit| 413  | `invalid_request_error` | `request_too_large`, `file_too_large`, `field_too_large` |
//! | no generation slot in time   | 429  | `rate_limit_error`      | `overloaded`, `too_many_streams`     |
//! | a per-user quota reached     | 429  | `insufficient_quota`    | `quota_exceeded`; the message names the limit |
//! | the server's disk is full    | 507  | `server_error`          | `disk_full`                          |
//! | internal (DB, I/O, worker)   | 500  | `server_error`          | null; the message is generic         |
//! | the server is shutting down  | 503  | `server_error`          | `server_shutting_down`               |
//!
//! A 500 never echoes its cause: the full error rides on the response as an [`InternalError`]
//! extension and [`log_internal_errors`] logs it (axum's error-handling example).
//!
//! Values a client sent are quoted through [`clip`], and every message and `param` is cut to a
//! bound in [`ApiError::body`], so no error answer grows with the request (issue 9: a 200 MB form
//! field was echoed back whole).

use std::borrow::Cow;

use axum::Json;
use axum::extract::Request;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, JsonRejection, QueryRejection};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: job settings that fail validation, every invalid field listed (`errors`).
    #[error("{}", .0.first().map(|e| e.message.as_str()).unwrap_or("invalid request"))]
    InvalidFields(Vec<FieldError>),
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
    /// 405: the URL exists, but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request body stopped arriving.
    #[error("{0}")]
    Timeout(String),
    /// 413: a body, an upload or a form field is larger than its limit; `param` names the field.
    #[error("{message}")]
    TooLarge {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    /// 429: every generation slot stayed busy, or the queue is full.
    #[error("{0}")]
    Overloaded(String),
    /// 429: the user has the most event streams open that they may.
    #[error("{0}")]
    TooManyStreams(String),
    /// 429: one of the user's quotas is used up; the message names the limit.
    #[error("{0}")]
    QuotaExceeded(String),
    /// 507: the disk the server writes to is full; nothing of the request was kept.
    #[error("{0}")]
    StorageFull(String),
    /// 500: logged in full, answered with a generic message.
    #[error("internal error: {0}")]
    Internal(String),
    /// 503: the server is shutting down (`server_shutting_down`) or has no room for another
    /// connection (`too_many_connections`); retry later.
    #[error("{message}")]
    Unavailable { message: String, code: &'static str },
}

/// Longest `message` in an error answer, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest client value quoted inside a message, in characters.
pub const MAX_QUOTED_CHARS: usize = 64;

/// `value` cut to `max` characters, with how much was left out: for quoting client input.
pub fn clip_to(value: &str, max: usize) -> Cow<'_, str> {
    match value.char_indices().nth(max) {
        None => Cow::Borrowed(value),
        Some((cut, _)) => Cow::Owned(format!("{}… ({} bytes in all)", &value[..cut], value.len())),
    }
}

/// A client value cut to [`MAX_QUOTED_CHARS`] for an error message.
pub fn clip(value: &str) -> Cow<'_, str> {
    clip_to(value, MAX_QUOTED_CHARS)
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

    pub fn overloaded(message: impl Into<String>) -> Self {
        ApiError::Overloaded(message.into())
    }

    pub fn file_too_large(limit: u64) -> Self {
        ApiError::TooLarge {
            message: format!("the file is larger than the limit of {limit} bytes"),
            param: Some("file".into()),
            code: "file_too_large",
        }
    }

    pub fn shutting_down() -> Self {
        ApiError::Unavailable {
            message: "the server is shutting down; retry once it is back".into(),
            code: "server_shutting_down",
        }
    }

    pub fn job_not_found(id: &str) -> Self {
        let id = clip(id);
        ApiError::NotFound {
            message: format!("fine-tuning job `{id}` not found"),
            code: "job_not_found",
            param: None,
        }
    }

    pub fn file_not_found(id: &str, param: Option<&str>) -> Self {
        let id = clip(id);
        ApiError::NotFound {
            message: format!("file `{id}` not found"),
            code: "file_not_found",
            param: param.map(str::to_string),
        }
    }

    pub fn model_not_found(id: &str) -> Self {
        let id = clip(id);
        ApiError::NotFound {
            message: format!("model `{id}` does not exist or you do not have access to it"),
            code: "model_not_found",
            param: Some("model".into()),
        }
    }

    pub fn checkpoint_not_found(id: &str) -> Self {
        let id = clip(id);
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
            ApiError::InvalidRequest { .. } | ApiError::InvalidFields(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) | ApiError::TooManyStreams(_) | ApiError::QuotaExceeded(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON body; also sent as the last SSE `data:` event when a stream fails midway.
    pub fn body(&self) -> ErrorBody {
        let (message, r#type, param, code) = match self {
            ApiError::InvalidFields(errors) => {
                let first = errors.first();
                let mut message = first.map(|e| e.message.clone()).unwrap_or_default();
                if errors.len() > 1 {
                    message.push_str(&format!(
                        " (and {} more invalid fields, listed in `errors`)",
                        errors.len() - 1
                    ));
                }
                (
                    message,
                    "invalid_request_error",
                    first.map(|e| e.param.clone()).filter(|p| !p.is_empty()),
                    None,
                )
            }
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
            ApiError::MethodNotAllowed(m) => (
                m.clone(),
                "invalid_request_error",
                None,
                Some("method_not_allowed".into()),
            ),
            ApiError::Timeout(m) => (
                m.clone(),
                "invalid_request_error",
                None,
                Some("request_timeout".into()),
            ),
            ApiError::TooLarge {
                message,
                param,
                code,
            } => (
                message.clone(),
                "invalid_request_error",
                param.clone(),
                Some(code.to_string()),
            ),
            ApiError::Overloaded(m) => (
                m.clone(),
                "rate_limit_error",
                None,
                Some("overloaded".into()),
            ),
            ApiError::TooManyStreams(m) => (
                m.clone(),
                "rate_limit_error",
                None,
                Some("too_many_streams".into()),
            ),
            ApiError::QuotaExceeded(m) => (
                m.clone(),
                "insufficient_quota",
                None,
                Some("quota_exceeded".into()),
            ),
            ApiError::StorageFull(m) => (m.clone(), "server_error", None, Some("disk_full".into())),
            ApiError::Internal(_) => (
                "the server had an error while processing your request".into(),
                "server_error",
                None,
                None,
            ),
            ApiError::Unavailable { message, code } => (
                message.clone(),
                "server_error",
                None,
                Some(code.to_string()),
            ),
        };
        ErrorBody {
            error: ErrorObject {
                message: clip_to(&message, MAX_MESSAGE_CHARS).into_owned(),
                r#type: r#type.to_string(),
                param: param.map(|p| clip_to(&p, 200).into_owned()),
                code,
                errors: match self {
                    ApiError::InvalidFields(errors) => Some(errors.clone()),
                    _ => None,
                },
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
    /// Validation errors of job settings: every invalid field (`param` as sent, and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FieldError {
    pub param: String,
    pub message: String,
}

impl FieldError {
    pub fn new(param: &str, message: String) -> Self {
        FieldError {
            param: param.to_string(),
            message,
        }
    }
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
        match e {
            StoreError::Full(_) => ApiError::StorageFull(
                "the server's disk is full, so nothing of this request was kept; try again once space is freed".into(),
            ),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        let remote = crate::blob::is_remote(&e);
        if crate::disk::is_disk_full(&e) {
            let what = if remote { "object store" } else { "disk" };
            return ApiError::StorageFull(format!(
                "the server's {what} is full, so nothing of this request was kept; try again once space is freed"
            ));
        }
        if remote && e.kind() == std::io::ErrorKind::Other {
            // The store could not be reached or failed: the details (its address) go to the log.
            tracing::error!(error = %e, "object store unavailable");
            return ApiError::Unavailable {
                message: "the server's file storage is unavailable, so nothing of this request \
                          was kept; try again later"
                    .into(),
                code: "storage_unavailable",
            };
        }
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
        match &rejection {
            JsonRejection::JsonDataError(e) => json_data_error(e),
            JsonRejection::JsonSyntaxError(e) => ApiError::InvalidRequest {
                message: format!(
                    "the body is not valid JSON: {}",
                    std::error::Error::source(e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.body_text())
                ),
                param: None,
                code: None,
            },
            JsonRejection::MissingJsonContentType(_) => ApiError::invalid(
                "expected a JSON body with `Content-Type: application/json`",
                None,
            ),
            JsonRejection::BytesRejection(BytesRejection::FailedToBufferBody(e)) => {
                body_read_error(e)
            }
            other => ApiError::invalid(other.body_text(), None),
        }
    }
}

/// A body that could not be read: over the size limit (413), stalled (408), or cut off (400).
pub fn body_read_error(e: &FailedToBufferBody) -> ApiError {
    match e {
        FailedToBufferBody::LengthLimitError(_) => ApiError::TooLarge {
            message: format!(
                "the request body is larger than the limit of {} bytes",
                crate::MAX_JSON_BODY_BYTES
            ),
            param: None,
            code: "request_too_large",
        },
        FailedToBufferBody::UnknownBodyError(e) if caused_by_timeout(e) => request_timeout(),
        other => ApiError::invalid(
            format!("the request body could not be read: {}", other.body_text()),
            None,
        ),
    }
}

/// 408 for a request body that stopped arriving (`Settings::body_read_timeout`).
pub fn request_timeout() -> ApiError {
    ApiError::Timeout("the request body stopped arriving before it was complete".into())
}

/// Whether `e` or one of its causes is the body-read timeout. Some wrappers (multer's) do not
/// expose their cause, so the timeout's message is looked for too.
pub fn caused_by_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    // `tower_http::timeout::TimeoutError`'s `Display`.
    let timeout_text = "data was not received within the designated timeout";
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tower_http::timeout::TimeoutError>() || err.to_string().contains(timeout_text) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A JSON value of the wrong type or shape: the message and `param` name the field by its path
/// (`hyperparameters.n_epochs`, `messages[0].content`), from `serde_path_to_error`, which axum's
/// `Json` runs the deserializer through.
fn json_data_error(e: &axum::extract::rejection::JsonDataError) -> ApiError {
    // axum boxes the error once more: walk the causes.
    let mut cause = std::error::Error::source(e);
    let found = loop {
        match cause {
            None => break None,
            Some(c) => match c.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
                Some(found) => break Some(found),
                None => cause = c.source(),
            },
        }
    };
    let Some(err) = found else {
        return ApiError::invalid(format!("invalid request body: {}", e.body_text()), None);
    };
    let inner = strip_position(&err.inner().to_string());
    let path = err.path().to_string();
    let mut param = (path != ".").then_some(path);
    // serde names a missing field in its message, at the path of the object that lacks it.
    if let Some(field) = inner
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        param = Some(match param {
            Some(p) => format!("{p}.{field}"),
            None => field.to_string(),
        });
    }
    let message = match &param {
        Some(p) => format!("invalid `{p}`: {inner}"),
        None => format!("invalid request body: {inner}"),
    };
    ApiError::InvalidRequest {
        message,
        param,
        code: None,
    }
}

/// serde_json's message without its ` at line 1 column 42` tail.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i)
            if message[i + 9..]
                .split(" column ")
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            message[..i].to_string()
        }
        _ => message.to_string(),
    }
}

/// The answer to a known URL asked with a method it does not take (axum's default is an empty 405).
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "invalid method for URL ({method} {})",
        clip_to(uri.path(), 200)
    ))
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
            ApiError::file_too_large(10),
            ApiError::overloaded("busy"),
            ApiError::Internal("disk on fire at /secret/path".into()),
            ApiError::MethodNotAllowed("no".into()),
            ApiError::shutting_down(),
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
            ApiError::overloaded("x").status(),
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

    #[test]
    fn quoted_values_and_messages_are_bounded() {
        let long = "x".repeat(10_000);
        let clipped = clip(&long);
        assert!(clipped.chars().count() < 100, "{clipped}");
        assert!(clipped.ends_with("(10000 bytes in all)"), "{clipped}");
        assert_eq!(clip("short"), "short");
        // Cut on a character boundary.
        assert_eq!(clip_to("ééé", 2), "éé… (6 bytes in all)");
        let body = ApiError::invalid(long.clone(), None).body();
        assert!(body.error.message.len() < MAX_MESSAGE_CHARS + 40);
        let nf = ApiError::job_not_found(&long).body();
        assert!(nf.error.message.len() < 200, "{}", nf.error.message);
    }

    #[test]
    fn positions_are_stripped_from_serde_messages() {
        assert_eq!(
            strip_position("invalid type: string \"a\", expected i64 at line 1 column 42"),
            "invalid type: string \"a\", expected i64"
        );
        assert_eq!(strip_position("no position here"), "no position here");
    }
}
