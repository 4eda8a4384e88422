//! API errors: one enum for every route (jobs, adapters, the OpenAI API), one mapping to an
//! HTTP status, and one body in OpenAI's schema:
//! `{"error": {"message": …, "type": …, "param": …, "code": …}}` (`param` names the input
//! field at fault when one is). The engine's [`InferenceError`] and the coordinator's
//! [`CoordError`] convert into it here, so no handler picks a status itself.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tributary_coordinator::CoordError;
use tributary_ledger::datanet::DatanetError;
use tributary_protocol::{InferenceError, ProtocolError};

/// What an API call can fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; `field` names the input at fault when known.
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    /// No API key, or one that is not known: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// The key lacks the scope the route needs, or the caller does not own the object: 403.
    #[error("{0}")]
    Forbidden(String),
    /// A job, adapter or model that does not exist: 404. `code` is OpenAI's
    /// (`model_not_found`) or `not_found`.
    #[error("{message}")]
    NotFound {
        field: Option<String>,
        message: String,
        code: &'static str,
    },
    /// The object is in a state that does not allow the action: 409.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the route accepts: 413.
    #[error("the request body is over the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Too much in flight: 429 with `Retry-After` (whole seconds, at least 1).
    #[error("{message}")]
    Overloaded {
        retry_after_ms: u64,
        message: String,
    },
    /// etcd, the store, the coordinator or the engine is unavailable: try again (503).
    #[error("{0}")]
    Unavailable(String),
    /// A fault on the server's side: 500 (the server keeps serving).
    #[error("{0}")]
    Internal(String),
}

/// The spec field a validation message starts with (`lora.rank = 0 is out of range…`,
/// `train needs steps or epochs`), if it names one.
pub fn field_of(message: &str) -> Option<String> {
    // Serde messages: "unknown field `foo`", "missing field `data`".
    if let Some(rest) = message.split("field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    let first = message.split([' ', ':']).next()?;
    let plausible = !first.is_empty()
        && first
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
    const FIELDS: [&str; 7] = [
        "base_model",
        "data",
        "workers",
        "lora",
        "train",
        "spec",
        "name",
    ];
    let root = first.split('.').next().unwrap_or(first);
    (plausible && FIELDS.contains(&root)).then(|| first.to_string())
}

impl ApiError {
    /// A bad spec: the message, and the field it names.
    pub fn spec(message: String) -> Self {
        Self::BadRequest {
            field: field_of(&message).or_else(|| Some("spec".into())),
            message,
        }
    }

    /// A 400 naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A 404 for an object that is not there.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound {
            field: None,
            message: message.into(),
            code: "not_found",
        }
    }

    /// A 404 for a `model` that names nothing served here.
    pub fn unknown_model(model: &str) -> Self {
        Self::NotFound {
            field: Some("model".into()),
            message: format!(
                "The model `{model}` does not exist: it names no base model, adapter name or adapter digest served here (GET /v1/models lists them)"
            ),
            code: "model_not_found",
        }
    }

    /// The HTTP status: the one place statuses are chosen.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Self::BadRequest { .. } => ("invalid_request_error", None),
            Self::Unauthorized(_) => ("authentication_error", Some("invalid_api_key")),
            Self::Forbidden(_) => ("permission_error", Some("insufficient_scope")),
            Self::NotFound { code, .. } => ("invalid_request_error", Some(code)),
            Self::Conflict(_) => ("invalid_request_error", Some("conflict")),
            Self::PayloadTooLarge { .. } => ("invalid_request_error", Some("payload_too_large")),
            Self::Overloaded { .. } => ("rate_limit_error", Some("rate_limit_exceeded")),
            Self::Unavailable(_) => ("server_error", Some("unavailable")),
            Self::Internal(_) => ("server_error", None),
        }
    }

    /// The input field at fault, if any.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::BadRequest { field, .. } | Self::NotFound { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        let (kind, code) = self.kind();
        json!({ "error": {
            "message": self.to_string(),
            "type": kind,
            "param": self.param(),
            "code": code,
        }})
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Protocol(ProtocolError::Spec(m)) => Self::spec(m),
            CoordError::Protocol(p) => Self::BadRequest {
                field: None,
                message: p.to_string(),
            },
            CoordError::NoSuchJob(id) => Self::not_found(format!("no such job {id}")),
            e @ CoordError::BadState { .. } => Self::Conflict(e.to_string()),
            e => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<DatanetError> for ApiError {
    fn from(e: DatanetError) -> Self {
        let msg = e.to_string();
        let nf = |field: &str| Self::NotFound {
            field: Some(field.into()),
            message: msg.clone(),
            code: "not_found",
        };
        match e {
            DatanetError::Store(_) | DatanetError::Registry(_) => Self::Unavailable(msg),
            DatanetError::BadName(_) => Self::invalid("name", msg),
            DatanetError::Exists(_) | DatanetError::Contended { .. } => Self::Conflict(msg),
            DatanetError::NotFound(_) => nf("name"),
            DatanetError::NoVersion { .. } | DatanetError::Empty(_) => nf("version"),
            DatanetError::UnknownExample { .. } => nf("examples"),
            DatanetError::UnknownItem { .. } => nf("item"),
            DatanetError::EmptyUpload { .. } | DatanetError::Read(_) => Self::invalid("body", msg),
            DatanetError::BadLicense(_) => Self::invalid("license", msg),
            DatanetError::Auth(_) => Self::Forbidden(msg),
            DatanetError::Forbidden(_) => Self::Forbidden(msg),
            DatanetError::BadRequest(_) => Self::BadRequest {
                field: field_of(&msg),
                message: msg,
            },
            DatanetError::Write(_) | DatanetError::Corrupt { .. } => Self::Internal(msg),
        }
    }
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Overloaded { retry_after_ms } => Self::Overloaded {
                retry_after_ms,
                message: format!(
                    "the inference engine is at capacity; retry after {retry_after_ms} ms"
                ),
            },
            InferenceError::UnknownAdapter(a) => Self::NotFound {
                field: Some("model".into()),
                message: format!("The model `{a}` does not exist on the inference engine"),
                code: "model_not_found",
            },
            e @ InferenceError::ContextOverflow { .. } => Self::BadRequest {
                field: Some("max_tokens".into()),
                message: e.to_string(),
            },
            InferenceError::Invalid { field, message } => Self::BadRequest {
                message: format!("{field}: {message}"),
                field: Some(field),
            },
            InferenceError::Unavailable(m) => Self::Unavailable(m),
            InferenceError::Internal(m) => Self::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), Json(self.body())).into_response();
        if let Self::Overloaded { retry_after_ms, .. } = &self {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if matches!(self, Self::Unauthorized(_)) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_in_validation_messages() {
        assert_eq!(
            field_of("lora.rank = 0 is out of range: must be 1..=1024").as_deref(),
            Some("lora.rank")
        );
        assert_eq!(
            field_of("train needs steps or epochs").as_deref(),
            Some("train")
        );
        assert_eq!(
            field_of("unknown field `bogus`, expected one of …").as_deref(),
            Some("bogus")
        );
        assert_eq!(field_of("something else went wrong"), None);
    }

    #[test]
    fn every_error_has_openai_shape_and_its_own_status() {
        let cases = [
            (
                ApiError::invalid("top_p", "too big"),
                400,
                "invalid_request_error",
            ),
            (
                ApiError::Unauthorized("no key".into()),
                401,
                "authentication_error",
            ),
            (ApiError::Forbidden("scope".into()), 403, "permission_error"),
            (ApiError::unknown_model("m"), 404, "invalid_request_error"),
            (
                ApiError::Conflict("pinned".into()),
                409,
                "invalid_request_error",
            ),
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                "invalid_request_error",
            ),
            (
                ApiError::from(InferenceError::Overloaded {
                    retry_after_ms: 1500,
                }),
                429,
                "rate_limit_error",
            ),
            (ApiError::Unavailable("down".into()), 503, "server_error"),
            (ApiError::Internal("bug".into()), 500, "server_error"),
        ];
        for (e, status, kind) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            let b = e.body();
            assert_eq!(b["error"]["type"], kind, "{b}");
            assert!(
                b["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert!(b["error"].get("param").is_some() && b["error"].get("code").is_some());
        }
        assert_eq!(
            ApiError::unknown_model("m").body()["error"]["code"],
            "model_not_found"
        );
        assert_eq!(
            ApiError::invalid("top_p", "x").body()["error"]["param"],
            "top_p"
        );
        let resp = ApiError::from(InferenceError::Overloaded {
            retry_after_ms: 1500,
        })
        .into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        let overflow = ApiError::from(InferenceError::ContextOverflow {
            prompt_tokens: 100,
            max_tokens: 50,
            context: 128,
        });
        let m = overflow.to_string();
        assert!(
            m.contains("100") && m.contains("50") && m.contains("128"),
            "{m}"
        );
    }
}
