//! Helpers for the OpenAPI 3.1 documents each API serves at `/openapi.json`: the shared
//! error schema and responses, operations and parameters, so the documents stay short
//! and consistent. Each API writes its own paths and schemas.

use serde_json::{json, Map, Value};

/// A document with `paths` and `schemas`; the error schema and the document's own
/// `/openapi.json` path are added.
pub fn document(
    title: &str,
    description: &str,
    mut paths: Value,
    mut schemas: Map<String, Value>,
) -> Value {
    schemas.insert("Error".into(), error_schema());
    if let Some(paths) = paths.as_object_mut() {
        paths.insert(
            "/openapi.json".into(),
            json!({
                "get": {
                    "operationId": "openapi", "tags": ["meta"], "summary": "This document",
                    "security": [],
                    "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}
                }
            }),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer sm_…`"}
            }
        },
        "security": [{"apiKey": []}],
        "paths": paths
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "additionalProperties": false,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": false,
                "properties": {
                    "code": {"type": "string", "description": "Stable machine-readable code"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The request field at fault"},
                    "position": {"type": "integer", "minimum": 1, "description": "Where in the field's text the fault is (1-based character position): a segment expression's parse error"}
                }
            }
        }
    })
}

/// `$ref` to a component schema.
pub fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A JSON response with `schema`.
pub fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// A JSON request body with `schema`.
pub fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

/// A path parameter.
pub fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema})
}

/// An optional query parameter.
pub fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// An operation: `responses` holds the successes; the error statuses every endpoint can
/// answer with are added in the one error shape.
pub fn operation(
    id: &str,
    tag: &str,
    summary: &str,
    parameters: Vec<Value>,
    body: Option<Value>,
    responses: Value,
    errors: &[u16],
) -> Value {
    let errors: Vec<(u16, &str)> = errors
        .iter()
        .map(|&status| {
            let description = match status {
                400 => "Invalid request: `field` names what is wrong",
                401 => "Missing or unknown API key",
                403 => "The key lacks the scope (or operator role) this needs",
                404 => "Not found in this account",
                405 => "Method not allowed",
                409 => "Conflicts with the current state",
                413 => "Body too large",
                415 => "Wrong content type",
                422 => "Valid JSON that cannot be acted on",
                429 => "Rate limit or daily quota reached: see Retry-After",
                _ => "A dependency is unavailable: retry after Retry-After",
            };
            (status, description)
        })
        .collect();
    operation_with_errors(
        id, tag, summary, parameters, body, responses, &errors, "Error",
    )
}

/// An operation whose errors have their own shape (the hosted APIs' drop-ins):
/// `responses` holds the successes; each of `errors` (status, description) answers with
/// the schema named `error_schema`.
#[allow(clippy::too_many_arguments)]
pub fn operation_with_errors(
    id: &str,
    tag: &str,
    summary: &str,
    parameters: Vec<Value>,
    body: Option<Value>,
    responses: Value,
    errors: &[(u16, &str)],
    error_schema: &str,
) -> Value {
    let mut responses = responses.as_object().cloned().unwrap_or_default();
    for (status, description) in errors {
        responses.insert(
            status.to_string(),
            json_response(description, schema(error_schema)),
        );
    }
    let mut op = json!({
        "operationId": id,
        "tags": [tag],
        "summary": summary,
        "responses": responses
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

/// The `(method, path)` pairs a document describes, upper-case methods.
pub fn operations(document: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(paths) = document["paths"].as_object() {
        for (path, item) in paths {
            if let Some(item) = item.as_object() {
                for method in item.keys() {
                    out.push((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
    }
    out.sort();
    out
}
