//! Request bodies of the JSON endpoints: `Content-Type: application/json`, within the
//! size limit, parsed with the path of the first thing wrong (unknown fields included).
//! Every failure is a 4xx in the one error shape, never a 500. Shared by every API.

use crate::api::ApiError;
use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{header, HeaderMap, StatusCode},
};
use serde::de::DeserializeOwned;

/// A parsed JSON body, with the bytes it came from.
pub struct JsonBody<T> {
    pub value: T,
    pub bytes: Bytes,
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_content_type(req.headers(), "application/json")?;
        let bytes = read(req, state).await?;
        let value = parse(&bytes).map_err(invalid)?;
        Ok(Self { value, bytes })
    }
}

/// The raw body of a request of `content_type` (CSV imports).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_content_type(req.headers(), "text/csv")?;
        Ok(Self(read(req, state).await?))
    }
}

async fn read<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this API accepts",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                rejection.body_text(),
            )
        }
    })
}

fn require_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let matches = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(expected));
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send the request as Content-Type: {expected}"),
        ))
    }
}

pub fn invalid(e: ParseError) -> ApiError {
    ApiError {
        field: (!e.field.is_empty()).then_some(e.field),
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.message)
    }
}

/// Query parameters: unknown ones and bad values are 400s in the one error shape.
pub struct QueryParams<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|rejection| ApiError {
                field: Some("query".into()),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    rejection.body_text(),
                )
            })
    }
}

/// A JSON body that does not parse into a request: the message and the path at fault.
#[derive(Debug)]
pub struct ParseError {
    pub field: String,
    pub message: String,
}

/// Parses a JSON body into `T`, naming the path of the first thing wrong.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ParseError> {
    {
        let mut de = serde_json::Deserializer::from_slice(body);
        let request: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ParseError {
                field: if path == "." { String::new() } else { path },
                message: clean_serde_message(&inner),
            }
        })?;
        de.end().map_err(|e| ParseError {
            field: String::new(),
            message: clean_serde_message(&e),
        })?;
        Ok(request)
    }
}

/// serde_json's message without its " at line L column C" tail, which means nothing to
/// a caller who sent compact JSON.
fn clean_serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}
