//! API errors: one enum, one mapping to HTTP status and a JSON body
//! `{"error": "...", "field": "..."}` (`field` present when one input field is at fault).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tributary_coordinator::CoordError;
use tributary_protocol::ProtocolError;

/// What an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; `field` names the input at fault when known.
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("no such job {0}")]
    NotFound(String),
    /// The job is in a state that does not allow the action.
    #[error("{0}")]
    Conflict(String),
    /// etcd, the store or the coordinator is unavailable: try again.
    #[error("{0}")]
    Unavailable(String),
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
    const FIELDS: [&str; 6] = ["base_model", "data", "workers", "lora", "train", "spec"];
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

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
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
            CoordError::NoSuchJob(id) => Self::NotFound(id),
            e @ CoordError::BadState { .. } => Self::Conflict(e.to_string()),
            e => Self::Unavailable(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Self::BadRequest { field: Some(f), .. } = &self {
            body["field"] = serde_json::Value::String(f.clone());
        }
        (self.status(), Json(body)).into_response()
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
}
