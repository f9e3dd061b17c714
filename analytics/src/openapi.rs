//! The reading API's OpenAPI 3.1 document, served at `/openapi.json`; a test compares it
//! with [`crate::routes`].

use axum::Json;
use sendmill_platform::openapi::{
    document as build, json_body, json_response, operation, path_param, query_param, schema,
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
                    query_param("until", "Events until (default: now)", time.clone()),
                    query_param("limit", "Page size (1-500)", json!({"type": "integer", "minimum": 1, "maximum": 500})),
                    query_param("cursor", "From a previous page's next_cursor", text.clone()),
                ],
                None,
                json!({"200": json_response("A page of messages", schema("MessagePage"))}),
                &[400, 401, 403, 503])
        },
        "/v1/messages/{id}": {
            "get": operation("getMessage", "messages", "A message's timeline",
                vec![path_param("id", "Message id", text.clone())], None,
                json!({"200": json_response("The timeline", schema("Timeline"))}),
                &[400, 401, 403, 404, 503])
        },
        "/v1/stats": {
            "get": operation("getStats", "stats", "Counts and rates over time, grouped and filtered",
                vec![
                    query_param("from", "Window start (default: 24 h before `to`)", time.clone()),
                    query_param("to", "Window end (default: now)", time.clone()),
                    query_param("interval", "Series step", json!({"type": "string", "enum": ["minute", "hour", "day"]})),
                    query_param("group_by", "Dimension to group by", json!({"type": "string", "enum": ["provider", "domain", "pool", "ip", "campaign", "tag"]})),
                    query_param("provider", "Only this provider", text.clone()),
                    query_param("domain", "Only this recipient domain", text.clone()),
                    query_param("pool", "Only this IP pool", text.clone()),
                    query_param("ip", "Only this source IP", text.clone()),
                    query_param("campaign_id", "Only this campaign", text.clone()),
                    query_param("tag", "Only messages with this tag", text.clone()),
                    query_param("account_id", "Operators: one account (default: all)", json!({"type": "string", "format": "uuid"})),
                ],
                None,
                json!({"200": json_response("The report", schema("StatsReport"))}),
                &[400, 401, 403, 503])
        },
        "/v1/stats/pending": {
            "get": operation("getPending", "stats", "Accepted messages without an outcome yet: in flight, and overdue (silent past `overdue_after_secs`), by lane and the stage of their latest event",
                vec![
                    query_param("account_id", "Operators: one account (default: all)", json!({"type": "string", "format": "uuid"})),
                ],
                None,
                json!({"200": json_response("The counts", schema("PendingReport"))}),
                &[400, 401, 403, 503])
        },
        "/v1/webhooks": {
            "get": operation("listWebhooks", "webhooks", "The account's webhook endpoints", vec![], None,
                json!({"200": json_response("Endpoints", json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema("WebhookEndpoint")}}}))}),
                &[401, 403, 503]),
            "post": operation("createWebhook", "webhooks", "Adds an endpoint; the answer holds its signing secret", vec![],
                Some(json_body(schema("NewWebhook"))),
                json!({"201": json_response("The endpoint and its secret", schema("CreatedWebhook"))}),
                &[400, 401, 403, 413, 415, 503])
        },
        "/v1/webhooks/{id}": {
            "get": operation("getWebhook", "webhooks", "An endpoint with its delivery state",
                vec![path_param("id", "Endpoint id", text.clone())], None,
                json!({"200": json_response("The endpoint", schema("WebhookEndpoint"))}),
                &[401, 403, 404, 503]),
            "patch": operation("changeWebhook", "webhooks", "Changes an endpoint (enabling it closes its circuit)",
                vec![path_param("id", "Endpoint id", text.clone())],
                Some(json_body(schema("WebhookChange"))),
                json!({"200": json_response("The endpoint", schema("WebhookEndpoint"))}),
                &[400, 401, 403, 404, 413, 415, 503]),
            "delete": operation("deleteWebhook", "webhooks", "Deletes an endpoint and its queue",
                vec![path_param("id", "Endpoint id", text.clone())], None,
                json!({"204": {"description": "Deleted"}}),
                &[401, 403, 404, 503])
        },
        "/v1/webhooks/{id}/secret": {
            "get": operation("getWebhookSecret", "webhooks", "What verifies the endpoint's requests: its signing secret, or (sendgrid format) its ECDSA public key",
                vec![path_param("id", "Endpoint id", text.clone())], None,
                json!({"200": json_response("The secret or public key", json!({"type": "object",
                    "properties": {"secret": {"type": "string"}, "public_key": {"type": "string", "description": "Base64 DER SubjectPublicKeyInfo (SendGrid's verification key format)"}}}))}),
                &[401, 403, 404, 503])
        },
        "/v1/webhooks/{id}/attempts": {
            "get": operation("listWebhookAttempts", "webhooks", "Recent delivery attempts, newest first",
                vec![path_param("id", "Endpoint id", text.clone()),
                     query_param("limit", "At most (1-1000)", json!({"type": "integer", "minimum": 1, "maximum": 1000}))], None,
                json!({"200": json_response("Attempts", json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema("WebhookAttempt")}}}))}),
                &[400, 401, 403, 404, 503])
        },
        "/v1/webhooks/{id}/deliveries": {
            "get": operation("listWebhookDeliveries", "webhooks", "Events by delivery status (`dead` is the dead-letter queue)",
                vec![path_param("id", "Endpoint id", text.clone()),
                     query_param("status", "Status (default: dead)", json!({"type": "string", "enum": ["pending", "delivered", "dead"]})),
                     query_param("limit", "At most (1-1000)", json!({"type": "integer", "minimum": 1, "maximum": 1000}))], None,
                json!({"200": json_response("Deliveries", json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema("WebhookDelivery")}}}))}),
                &[400, 401, 403, 404, 503])
        },
        "/v1/webhooks/{id}/replay": {
            "post": operation("replayWebhook", "webhooks", "Queues the dead-lettered events since a time again",
                vec![path_param("id", "Endpoint id", text.clone()),
                     {let mut p = query_param("since", "Replay events that happened since (RFC 3339)", time.clone()); p["required"] = json!(true); p}], None,
                json!({"200": json_response("How many were queued", json!({"type": "object", "required": ["replayed"], "properties": {"replayed": {"type": "integer"}}}))}),
                &[400, 401, 403, 404, 503])
        },
        "/v1/returns": {
            "get": operation("listReturns", "returns", "Returned mail kept unclassified or unmatched, newest first",
                vec![query_param("limit", "At most (1-500, default 50)", json!({"type": "integer", "minimum": 1, "maximum": 500})),
                     query_param("before", "Only returns received before this instant (RFC 3339)", time.clone())], None,
                json!({"200": json_response("Kept returns", json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema("KeptReturn")}}}))}),
                &[400, 401, 403, 503])
        },
        "/v1/returns/{id}/raw": {
            "get": operation("getReturnRaw", "returns", "A kept return as received",
                vec![path_param("id", "Return id", text.clone())], None,
                json!({"200": {"description": "The message", "content": {"message/rfc822": {"schema": {"type": "string"}}}}}),
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
        "TimelineEvent": {"type": "object", "required": ["event_id", "type", "at_ms", "recipient", "stage", "attempt", "tags"],
            "properties": {"event_id": {"type": "string", "format": "uuid"}, "type": {"type": "string"},
                "at_ms": {"type": "integer"}, "recipient": {"type": "string"},
                "stage": {"type": "string", "description": "The stage that wrote the event; for accepted, the front door: ingest (API) or submission (SMTP)"},
                "mx_host": {"type": "string"},
                "smtp_code": {"type": "integer"}, "smtp_enhanced": {"type": "string"}, "smtp_reply": {"type": "string"},
                "bounce_category": {"type": "string"}, "attempt": {"type": "integer"}, "reason": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}}},
        "Counts": {"type": "object", "additionalProperties": {"type": "integer"},
            "description": "Events per type; unique_opened and unique_clicked count messages"},
        "Rates": {"type": "object", "additionalProperties": {"type": "number"},
            "description": "delivery, bounce (of sent = delivered + bounced + expired), deferral, complaint, open, click (of delivered)"},
        "StatsGroup": {"type": "object", "required": ["key", "counts", "rates", "series"],
            "properties": {"key": {"type": "string"}, "counts": schema("Counts"), "rates": schema("Rates"),
                "series": {"type": "array", "items": {"type": "object", "required": ["t", "counts", "rates"],
                    "properties": {"t": {"type": "string", "format": "date-time"}, "counts": schema("Counts"), "rates": schema("Rates")}}}}},
        "PendingReport": {"type": "object", "required": ["in_flight", "overdue", "overdue_after_secs", "by"],
            "properties": {"in_flight": {"type": "integer", "minimum": 0}, "overdue": {"type": "integer", "minimum": 0},
                "overdue_after_secs": {"type": "integer", "minimum": 0},
                "by": {"type": "array", "items": {"type": "object", "required": ["lane", "stage", "in_flight", "overdue"],
                    "properties": {"lane": {"type": "string", "enum": ["transactional", "bulk"]},
                        "stage": {"type": "string"},
                        "in_flight": {"type": "integer", "minimum": 0}, "overdue": {"type": "integer", "minimum": 0}}}}}},
        "StatsReport": {"type": "object", "required": ["from", "to", "interval", "groups", "totals", "rates"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}, "interval": {"type": "string"},
                "group_by": {"type": "string"}, "groups": {"type": "array", "items": schema("StatsGroup")},
                "totals": schema("Counts"), "rates": schema("Rates")}},
        "NewWebhook": {"type": "object", "required": ["url"], "additionalProperties": false,
            "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2048}, "description": {"type": "string", "maxLength": 256},
                "event_types": {"type": "array", "items": {"type": "string"}},
                "max_batch": {"type": "integer", "minimum": 1, "maximum": 1000},
                "format": {"enum": ["standard", "sendgrid"], "description": "standard: Standard Webhooks (HMAC); sendgrid: SendGrid's Event Webhook (a JSON array, ECDSA P-256)"}}},
        "WebhookChange": {"type": "object", "additionalProperties": false,
            "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2048}, "description": {"type": "string", "maxLength": 256},
                "event_types": {"type": "array", "items": {"type": "string"}}, "enabled": {"type": "boolean"},
                "max_batch": {"type": "integer", "minimum": 1, "maximum": 1000}}},
        "WebhookEndpoint": {"type": "object", "required": ["id", "url", "event_types", "enabled", "max_batch", "circuit", "failures", "pending", "dead"],
            "properties": {"id": {"type": "string", "format": "uuid"}, "url": {"type": "string"}, "description": {"type": "string"},
                "event_types": {"type": "array", "items": {"type": "string"}}, "enabled": {"type": "boolean"},
                "max_batch": {"type": "integer"}, "created_at": {"type": "string"}, "failures": {"type": "integer"},
                "circuit": {"type": "string", "enum": ["closed", "open", "half_open"]}, "retry_at": {"type": "string"},
                "last_success_at": {"type": ["string", "null"]}, "last_failure_at": {"type": ["string", "null"]},
                "last_error": {"type": ["string", "null"]}, "pending": {"type": "integer"}, "dead": {"type": "integer"},
                "format": {"enum": ["standard", "sendgrid"]}, "public_key": {"type": "string"}}},
        "CreatedWebhook": {"allOf": [schema("WebhookEndpoint"), {"type": "object", "properties": {"secret": {"type": "string"}, "public_key": {"type": "string"}}}]},
        "WebhookAttempt": {"type": "object", "required": ["webhook_id", "attempted_at", "events", "duration_ms"],
            "properties": {"webhook_id": {"type": "string"}, "attempted_at": {"type": "string"}, "events": {"type": "integer"},
                "status_code": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}, "duration_ms": {"type": "integer"}}},
        "WebhookDelivery": {"type": "object", "required": ["event_id", "message_id", "event_type", "status", "attempts"],
            "properties": {"event_id": {"type": "string", "format": "uuid"}, "message_id": {"type": "string", "format": "uuid"},
                "event_type": {"type": "string"}, "status": {"type": "string"}, "attempts": {"type": "integer"},
                "queued_at": {"type": "string"}, "delivered_at": {"type": ["string", "null"]}, "last_error": {"type": ["string", "null"]}}},
        "KeptReturn": {"type": "object", "required": ["id", "received_at", "mail_from", "rcpt_to", "subject", "reason", "size", "expires_at"],
            "properties": {"id": {"type": "string", "format": "uuid"}, "received_at": {"type": "string"},
                "mail_from": {"type": "string", "description": "Envelope sender; empty for the null sender"},
                "rcpt_to": {"type": "string"}, "subject": {"type": "string"},
                "reason": {"type": "string", "description": "Why it was kept"}, "size": {"type": "integer", "description": "Bytes"},
                "expires_at": {"type": "string"}}},
        "Timeline": {"type": "object", "required": ["message_id", "status", "events"],
            "properties": {"message_id": {"type": "string", "format": "uuid"}, "status": {"type": "string"},
                "events": {"type": "array", "items": schema("TimelineEvent")}}}
    });
    let mut paths = paths;
    if let Some(paths) = paths.as_object_mut() {
        paths.extend(sendmill_audiences::openapi::paths());
        paths.extend(sendmill_campaigns::openapi::paths());
    }
    let mut schemas = schemas.as_object().cloned().unwrap_or_default();
    schemas.extend(sendmill_audiences::openapi::schemas());
    schemas.extend(sendmill_campaigns::openapi::schemas());
    build(
        "Sendmill analytics API",
        "Read what happened to messages, and keep the audiences (contacts, lists, imports, \
         segments) campaigns go to. Sending is the send API's (`POST /v1/messages`).",
        paths,
        schemas,
    )
}
