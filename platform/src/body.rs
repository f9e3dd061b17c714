//! Request bodies of the JSON endpoints: `Content-Type: application/json`, within the
//! size limit, parsed with the path of the first thing wrong (unknown fields included).
//! Every failure is a 4xx in the one error shape, never a 500. Strings holding NUL are
//! refused (no text column can store them). Shared by every API.

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
        let query = parts.uri.query().unwrap_or_default();
        // A URI cannot carry a raw NUL, so only a `%00` decodes to one: the query is
        // decoded a second time (to name the parameter) only when that is there.
        let nul = query.contains("%00").then(|| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        });
        if let Some(Some((name, _))) = nul {
            return Err(ApiError {
                field: Some(name.replace('\0', "%00")),
                ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", NUL_MESSAGE)
            });
        }
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
        if has_nul_escape(body) {
            return Err(ParseError {
                field: nul_path(body).unwrap_or_default(),
                message: NUL_MESSAGE.into(),
            });
        }
        Ok(request)
    }
}

const NUL_MESSAGE: &str = "text may not contain NUL characters (\\u0000)";

/// Whether a JSON text that parsed holds a `\u0000` escape in a string. NUL is the one
/// character JSON can carry that no text column (PostgreSQL's, a MIME header's) can
/// hold, so it is refused at the door rather than half-way through a write. In valid
/// JSON a backslash only ever starts an escape, so stepping over escapes finds exactly
/// the real ones (`\\u0000` is a backslash and the text "u0000").
fn has_nul_escape(body: &[u8]) -> bool {
    let mut rest = body;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        match rest.get(at + 1) {
            Some(b'u') if rest.get(at + 2..at + 6) == Some(b"0000") => return true,
            Some(_) => rest = &rest[at + 2..],
            None => return false,
        }
    }
    false
}

/// The path (`to[2].name`, `metadata.note`) of the first string or key holding NUL.
fn nul_path(body: &[u8]) -> Option<String> {
    fn find(value: &serde_json::Value, path: &str) -> Option<String> {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            serde_json::Value::String(s) => s.contains('\0').then(|| path.to_owned()),
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| find(item, &format!("{path}[{i}]"))),
            serde_json::Value::Object(fields) => fields.iter().find_map(|(key, item)| {
                if key.contains('\0') {
                    Some(join(&key.replace('\0', "\\u0000")))
                } else {
                    find(item, &join(key))
                }
            }),
            _ => None,
        }
    }
    find(&serde_json::from_slice(body).ok()?, "")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        metadata: HashMap<String, String>,
    }

    #[test]
    fn nul_in_a_string_is_refused_naming_its_path() {
        let e = parse::<Doc>(br#"{"name":"a","tags":["ok","b\u0000d"]}"#).unwrap_err();
        assert_eq!(e.field, "tags[1]");
        assert!(e.message.contains("NUL"), "{}", e.message);
        let e = parse::<Doc>(br#"{"name":"a\u0000"}"#).unwrap_err();
        assert_eq!(e.field, "name");
        let e = parse::<Doc>(br#"{"name":"a","metadata":{"k\u0000":"v"}}"#).unwrap_err();
        assert_eq!(e.field, "metadata.k\\u0000");
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_plain_text() {
        let doc = parse::<Doc>(br#"{"name":"C:\\u0000\\"}"#).unwrap();
        assert_eq!(doc.name, "C:\\u0000\\");
        assert!(!has_nul_escape(br#"{"name":"\\\\u0000"}"#));
        assert!(has_nul_escape(br#"{"name":"\\\u0000"}"#));
    }
}
