//! What every public HTTP API of Sendmill shares: one JSON error shape
//! (`{"error":{"code","message","field"}}`), a router that answers unknown paths in it,
//! and a request id on every response and log line. Who the caller is (API keys) is
//! tenant policy: `sendmill-tenancy`.

use crate::traces::TraceHeaders;
use axum::{
    extract::{MatchedPath, Request},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use tracing::Instrument;

/// An API error: HTTP status plus a stable machine code, a message for people and the
/// request field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429s).
    pub retry_after: Option<u64>,
    /// Where in the field's text the fault is: the 1-based character position (an
    /// expression's parse error).
    pub position: Option<usize>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            position: None,
        }
    }

    /// A 400 about one field of the request.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    /// A 403: the key lacks `scope`.
    pub fn forbidden(scope: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key lacks the `{scope}` scope"),
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// A 409: what the request would create exists already.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// A dependency is down: the client should retry later. Never a 500 for that.
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is unavailable, retry later"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                position: self.position,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let retry_after = match self.retry_after {
            Some(secs) => Some(secs),
            None if self.status == StatusCode::SERVICE_UNAVAILABLE => Some(5),
            None => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A router from a `(path, methods)` table, answering unknown paths and wrong methods in
/// the one error shape. The table is what the OpenAPI tests probe.
pub fn router<S: Clone + Send + Sync + 'static>(
    routes: Vec<(&'static str, axum::routing::MethodRouter<S>)>,
) -> axum::Router<S> {
    routes
        .into_iter()
        .fold(axum::Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
}

/// Router fallback: an unknown path, in the one error shape.
pub async fn no_route() -> ApiError {
    ApiError::not_found("route")
}

/// Router fallback: a known path with a method it does not take.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept that method",
    )
}

/// The request id header: taken from the caller when it sends a sane one, made up
/// otherwise, echoed on the response and attached to every log line of the request.
pub const REQUEST_ID: &str = "x-request-id";

/// Gives every request its id and its span; the span continues the caller's W3C
/// `traceparent`, when it sends one, and records the response status.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let value = HeaderValue::from_str(&id).expect("request ids are visible ASCII");
    request.headers_mut().insert(REQUEST_ID, value.clone());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| request.uri().path(), MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    TraceHeaders::from_http(request.headers()).continue_in(&span);
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

/// Tags, metadata keys, categories and IP pool names: 1–64 of `A-Z a-z 0-9 - _ . : /`,
/// nothing that breaks a CSV export or a metric label. Errors: what is wrong, for the
/// caller's 400.
pub fn check_label(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err("may contain only letters, digits and - _ . : /");
    }
    Ok(())
}
