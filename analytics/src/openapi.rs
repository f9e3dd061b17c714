//! The reading API's OpenAPI 3.1 document, served at `/openapi.json`; a test compares it
//! with [`crate::routes`].

use axum::Json;
use sendmill_platform::openapi::{
    document as build, json_response, operation, path_param, query_param, schema,
};
use serde_json::{json, Value};
use std::sync::LazyLock;

static DOCUMENT: LazyLock<Value> = LazyLock::new(build_document);

pub async fn serve() -> Json<Value> {
    Json(DOCUMENT.clone())
}

pub fn document() -> &'static Value {
    &DOCUMENT
}

fn build_document() -> Value {
    let text = json!({"type": "string"});
    let time = json!({"type": "string", "format": "date-time"});
    let paths = json!({
        "/v1/messages": {
            "get": operation("listMessages", "messages", "The account's messages, newest first, with their status",
                vec![
                    query_param("tag", "Only messages with this tag", text.clone()),
                    query_param("status", "Only messages in this status (an event type)", text.clone()),
                    query_param("to", "Only messages to this address", text.clone()),
                    query_param("campaign_id", "Only this campaign's messages", text.clone()),
                    query_param("since", "Events from (default: 7 days ago)", time.clone()),
                    query_param("until", "Events until (default: now)", time),
                    query_param("limit", "Page size (1-500)", json!({"type": "integer", "minimum": 1, "maximum": 500})),
                    query_param("cursor", "From a previous page's next_cursor", text.clone()),
                ],
                None,
                json!({"200": json_response("A page of messages", schema("MessagePage"))}),
                &[400, 401, 403, 503])
        },
        "/v1/messages/{id}": {
            "get": operation("getMessage", "messages", "A message's timeline",
                vec![path_param("id", "Message id", text)], None,
                json!({"200": json_response("The timeline", schema("Timeline"))}),
                &[400, 401, 403, 404, 503])
        }
    });
    let schemas = json!({
        "MessageSummary": {"type": "object", "required": ["message_id", "to", "status", "first_event_ms", "last_event_ms", "tags"],
            "properties": {"message_id": {"type": "string", "format": "uuid"}, "to": {"type": "string"},
                "status": {"type": "string"}, "first_event_ms": {"type": "integer"}, "last_event_ms": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}}, "campaign_id": {"type": "string"}}},
        "MessagePage": {"type": "object", "required": ["data"],
            "properties": {"data": {"type": "array", "items": schema("MessageSummary")}, "next_cursor": {"type": "string"}}},
        "TimelineEvent": {"type": "object", "required": ["event_id", "type", "at_ms", "recipient", "attempt", "tags"],
            "properties": {"event_id": {"type": "string", "format": "uuid"}, "type": {"type": "string"},
                "at_ms": {"type": "integer"}, "recipient": {"type": "string"}, "mx_host": {"type": "string"},
                "smtp_code": {"type": "integer"}, "smtp_enhanced": {"type": "string"}, "smtp_reply": {"type": "string"},
                "bounce_category": {"type": "string"}, "attempt": {"type": "integer"}, "reason": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}}},
        "Timeline": {"type": "object", "required": ["message_id", "status", "events"],
            "properties": {"message_id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
                "events": {"type": "array", "items": schema("TimelineEvent")}}}
    });
    build(
        "Sendmill analytics API",
        "Read what happened to messages. Sending is the send API's (`POST /v1/messages`).",
        paths,
        schemas.as_object().cloned().unwrap_or_default(),
    )
}
