//! The audiences' part of the analytics API's OpenAPI document: [`paths`] and
//! [`schemas`], merged by the host; its OpenAPI test compares them with
//! [`crate::routes`].

use sendmill_platform::openapi::{
    json_body, json_response, operation, path_param, query_param, schema,
};
use serde_json::{json, Map, Value};

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

/// The paths of [`crate::routes`].
pub fn paths() -> Map<String, Value> {
    let id = |what: &str| {
        path_param(
            "id",
            &format!("The {what}'s id"),
            json!({"type": "string", "format": "uuid"}),
        )
    };
    let limit = query_param(
        "limit",
        "Page size (1-500, default 100)",
        json!({"type": "integer", "minimum": 1, "maximum": 500}),
    );
    let cursor = query_param(
        "cursor",
        "From a previous page's next_cursor",
        json!({"type": "string"}),
    );
    let none = json!({"204": {"description": "Done"}});
    let csv = json!({"200": {"description": "CSV, streamed: email, name, one column per attribute, status (and state for a list)", "content": {"text/csv": {"schema": {"type": "string"}}}}});
    object(json!({
        "/v1/contacts": {
            "get": operation("listContacts", "contacts", "The account's contacts by address, filtered",
                vec![
                    query_param("email_prefix", "Only addresses starting with this", json!({"type": "string"})),
                    query_param("attribute", "name:value: only contacts whose attribute is this value", json!({"type": "string"})),
                    query_param("list_id", "Only members of this list", json!({"type": "string", "format": "uuid"})),
                    query_param("status", "Only contacts in this status", json!({"type": "string", "enum": ["active", "bounced", "complained", "unsubscribed"]})),
                    limit.clone(), cursor.clone(),
                ], None,
                json!({"200": json_response("A page of contacts", schema("ContactPage"))}),
                &[400, 401, 403, 503]),
            "post": operation("createContact", "contacts", "Adds a contact (and subscribes it to `lists`)", vec![],
                Some(json_body(schema("NewContact"))),
                json!({"201": json_response("The contact", schema("Contact"))}),
                &[400, 401, 403, 404, 409, 415, 503]),
        },
        "/v1/contacts/{id}": {
            "get": operation("getContact", "contacts", "A contact with its lists, engagement and preferences link",
                vec![id("contact")], None,
                json!({"200": json_response("The contact", schema("Contact"))}),
                &[401, 403, 404, 503]),
            "patch": operation("updateContact", "contacts", "Changes a contact (attributes merge; null removes one)",
                vec![id("contact")], Some(json_body(schema("ContactChange"))),
                json!({"200": json_response("The contact", schema("Contact"))}),
                &[400, 401, 403, 404, 415, 503]),
            "delete": operation("deleteContact", "contacts", "Deletes a contact (its suppressions stay)",
                vec![id("contact")], None, none.clone(), &[401, 403, 404, 503]),
        },
        "/v1/contacts/{id}/events": {
            "get": operation("listContactEvents", "contacts", "Every subscription change of a contact",
                vec![id("contact")], None,
                json!({"200": json_response("The events", schema("ContactEvents"))}),
                &[401, 403, 404, 503]),
        },
        "/v1/lists": {
            "get": operation("listLists", "lists", "The account's lists with their counts", vec![], None,
                json!({"200": json_response("Lists", json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema("List")}}}))}),
                &[401, 403, 503]),
            "post": operation("createList", "lists", "Adds a list", vec![],
                Some(json_body(schema("NewList"))),
                json!({"201": json_response("The list", schema("List"))}),
                &[400, 401, 403, 409, 415, 422, 503]),
        },
        "/v1/lists/{id}": {
            "get": operation("getList", "lists", "A list with its counts", vec![id("list")], None,
                json!({"200": json_response("The list", schema("List"))}), &[401, 403, 404, 503]),
            "patch": operation("updateList", "lists", "Changes a list", vec![id("list")],
                Some(json_body(schema("ListChange"))),
                json!({"200": json_response("The list", schema("List"))}), &[400, 401, 403, 404, 409, 415, 422, 503]),
            "delete": operation("deleteList", "lists", "Deletes a list and its memberships (contacts stay)",
                vec![id("list")], None, none.clone(), &[401, 403, 404, 503]),
        },
        "/v1/lists/{id}/members": {
            "get": operation("listMembers", "lists", "A list's members by address", vec![
                    id("list"),
                    query_param("state", "Only this membership state", json!({"type": "string", "enum": ["subscribed", "unconfirmed", "unsubscribed"]})),
                    limit.clone(), cursor.clone(),
                ], None,
                json!({"200": json_response("A page of members", schema("MemberPage"))}), &[400, 401, 403, 404, 503]),
            "post": operation("addMember", "lists", "Subscribes a contact (a double opt-in list sends a confirmation)",
                vec![id("list")], Some(json_body(schema("NewMember"))),
                json!({"200": json_response("The membership", schema("Member"))}), &[400, 401, 403, 404, 409, 415, 503]),
        },
        "/v1/lists/{id}/members/{contact_id}": {
            "delete": operation("removeMember", "lists", "Unsubscribes a contact from the list", vec![
                    id("list"),
                    path_param("contact_id", "The contact's id", json!({"type": "string", "format": "uuid"})),
                ], None, none.clone(), &[401, 403, 404, 503]),
        },
        "/v1/lists/{id}/imports": {
            "post": operation("importContacts", "imports", "Imports a CSV (header row with email) or NDJSON file into the list as a job",
                vec![id("list")],
                Some(json!({"required": true, "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/x-ndjson": {"schema": {"type": "string"}}
                }})),
                json!({"202": json_response("The queued job", schema("ImportJob"))}),
                &[400, 401, 403, 404, 413, 415, 503]),
        },
        "/v1/lists/{id}/export": {
            "get": operation("exportList", "lists", "The list's members as CSV", vec![id("list")], None,
                csv.clone(), &[401, 403, 404, 503]),
        },
        "/v1/imports": {
            "get": operation("listImports", "imports", "The latest import jobs", vec![
                    query_param("list_id", "Only this list's", json!({"type": "string", "format": "uuid"})),
                ], None,
                json!({"200": json_response("Jobs", json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema("ImportJob")}}}))}),
                &[400, 401, 403, 503]),
        },
        "/v1/imports/{id}": {
            "get": operation("getImport", "imports", "An import job's progress and skipped lines", vec![id("import")], None,
                json!({"200": json_response("The job", schema("ImportJob"))}), &[401, 403, 404, 503]),
        },
        "/v1/segments": {
            "get": operation("listSegments", "segments", "The account's segments", vec![], None,
                json!({"200": json_response("Segments", json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema("Segment")}}}))}),
                &[401, 403, 503]),
            "post": operation("createSegment", "segments", "Saves a segment (a parse error answers 400 with its position)", vec![],
                Some(json_body(schema("NewSegment"))),
                json!({"201": json_response("The segment", schema("Segment"))}), &[400, 401, 403, 409, 415, 503]),
        },
        "/v1/segments/check": {
            "post": operation("checkSegment", "segments", "Counts an unsaved expression's matches, or says where it is wrong", vec![],
                Some(json_body(json!({"type": "object", "required": ["expression"], "additionalProperties": false, "properties": {"expression": {"type": "string"}}}))),
                json!({"200": json_response("The count", schema("Count"))}), &[400, 401, 403, 415, 503]),
        },
        "/v1/segments/{id}": {
            "get": operation("getSegment", "segments", "A segment", vec![id("segment")], None,
                json!({"200": json_response("The segment", schema("Segment"))}), &[401, 403, 404, 503]),
            "patch": operation("updateSegment", "segments", "Changes a segment", vec![id("segment")],
                Some(json_body(json!({"type": "object", "additionalProperties": false, "properties": {"name": {"type": "string"}, "expression": {"type": "string"}}}))),
                json!({"200": json_response("The segment", schema("Segment"))}), &[400, 401, 403, 404, 409, 415, 503]),
            "delete": operation("deleteSegment", "segments", "Deletes a segment", vec![id("segment")], None,
                none, &[401, 403, 404, 503]),
        },
        "/v1/segments/{id}/count": {
            "get": operation("countSegment", "segments", "How many contacts match now", vec![id("segment")], None,
                json!({"200": json_response("The count", schema("Count"))}), &[400, 401, 403, 404, 503]),
        },
        "/v1/segments/{id}/contacts": {
            "get": operation("previewSegment", "segments", "A page of the contacts it matches now", vec![id("segment"), limit, cursor], None,
                json!({"200": json_response("A page of contacts", schema("ContactPage"))}), &[400, 401, 403, 404, 503]),
        },
        "/v1/segments/{id}/export": {
            "get": operation("exportSegment", "segments", "The contacts it matches now, as CSV", vec![id("segment")], None,
                csv, &[400, 401, 403, 404, 503]),
        },
    }))
}

/// The component schemas [`paths`] refers to.
pub fn schemas() -> Map<String, Value> {
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": "string", "format": "date-time"});
    let maybe_time = json!({"type": ["string", "null"], "format": "date-time"});
    let status =
        json!({"type": "string", "enum": ["active", "bounced", "complained", "unsubscribed"]});
    let attributes = json!({"type": "object", "description": "Typed values by attribute name (1-64 of A-Z a-z 0-9 _ -); at most 100, 16 KiB", "maxProperties": 100});
    let opt_in = json!({"type": "string", "enum": ["single", "double"]});
    let state = json!({"type": "string", "enum": ["subscribed", "unconfirmed", "unsubscribed"]});
    object(json!({
        "Contact": {"type": "object", "required": ["id", "email", "name", "attributes", "status", "created_at", "updated_at"],
            "properties": {
                "id": uuid, "email": {"type": "string"}, "name": {"type": "string"}, "attributes": {"type": "object"},
                "status": status, "status_changed_at": maybe_time, "created_at": time, "updated_at": time,
                "engagement": {"type": "object", "properties": {
                    "last_delivered_at": time, "last_opened_at": time, "last_clicked_at": time}},
                "lists": {"type": "array", "items": {"type": "object", "required": ["list_id", "list_name", "state", "updated_at"],
                    "properties": {"list_id": uuid, "list_name": {"type": "string"}, "state": state, "updated_at": time}}},
                "preferences_url": {"type": "string", "description": "The contact's signed preferences page"}
            }},
        "ContactPage": {"type": "object", "required": ["data"], "properties": {
            "data": {"type": "array", "items": schema("Contact")}, "next_cursor": {"type": "string"}}},
        "NewContact": {"type": "object", "required": ["email"], "additionalProperties": false, "properties": {
            "email": {"type": "string"}, "name": {"type": "string", "maxLength": 256},
            "attributes": attributes, "lists": {"type": "array", "items": uuid}}},
        "ContactChange": {"type": "object", "additionalProperties": false, "properties": {
            "name": {"type": "string", "maxLength": 256}, "attributes": {"type": "object"},
            "status": {"type": "string", "enum": ["active", "unsubscribed"]}}},
        "ContactEvents": {"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": {
            "type": "object", "required": ["kind", "source", "at"], "properties": {
                "kind": {"type": "string"}, "list_id": {"type": ["string", "null"], "format": "uuid"},
                "source": {"type": "string"}, "ip": {"type": ["string", "null"]}, "at": time}}}}},
        "List": {"type": "object", "required": ["id", "name", "description", "opt_in", "tags", "public_subscribe", "counts", "created_at", "updated_at"],
            "properties": {
                "id": uuid, "name": {"type": "string"}, "description": {"type": "string"}, "opt_in": opt_in,
                "tags": {"type": "array", "items": {"type": "string"}},
                "confirm_from": {"type": ["string", "null"]}, "confirm_subject": {"type": ["string", "null"]},
                "confirmed_url": {"type": ["string", "null"]}, "public_subscribe": {"type": "boolean"},
                "subscribe_url": {"type": "string"},
                "counts": {"type": "object", "required": ["subscribed", "unconfirmed", "unsubscribed"], "properties": {
                    "subscribed": {"type": "integer"}, "unconfirmed": {"type": "integer"}, "unsubscribed": {"type": "integer"}}},
                "created_at": time, "updated_at": time
            }},
        "NewList": {"type": "object", "required": ["name", "opt_in"], "additionalProperties": false, "properties": {
            "name": {"type": "string"}, "description": {"type": "string"}, "opt_in": opt_in,
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
            "confirm_from": {"type": "string", "description": "Double opt-in: the confirmation's sender, on a verified sending domain"},
            "confirm_subject": {"type": "string"}, "confirmed_url": {"type": "string", "format": "uri"},
            "public_subscribe": {"type": "boolean"}}},
        "ListChange": {"type": "object", "additionalProperties": false, "properties": {
            "name": {"type": "string"}, "description": {"type": "string"}, "opt_in": opt_in,
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
            "confirm_from": {"type": "string"}, "confirm_subject": {"type": "string"},
            "confirmed_url": {"type": "string", "format": "uri"}, "public_subscribe": {"type": "boolean"}}},
        "NewMember": {"type": "object", "additionalProperties": false, "description": "contact_id or email",
            "properties": {"contact_id": uuid, "email": {"type": "string"}}},
        "Member": {"type": "object", "required": ["contact_id", "email", "state"], "properties": {
            "contact_id": uuid, "email": {"type": "string"}, "state": state,
            "subscribed_at": maybe_time, "unsubscribed_at": maybe_time, "confirmed_at": maybe_time,
            "confirmed_ip": {"type": ["string", "null"]}}},
        "MemberPage": {"type": "object", "required": ["data"], "properties": {
            "data": {"type": "array", "items": schema("Member")}, "next_cursor": {"type": "string"}}},
        "ImportJob": {"type": "object", "required": ["id", "list_id", "format", "state", "upload_bytes", "rows_read", "created", "updated", "skipped", "created_at", "updated_at"],
            "properties": {
                "id": uuid, "list_id": uuid, "format": {"type": "string", "enum": ["csv", "ndjson"]},
                "state": {"type": "string", "enum": ["queued", "running", "completed", "failed"]},
                "upload_bytes": {"type": "integer"}, "rows_read": {"type": "integer"},
                "created": {"type": "integer"}, "updated": {"type": "integer"}, "skipped": {"type": "integer"},
                "skipped_lines": {"type": "array", "items": {"type": "object", "required": ["line", "reason"],
                    "properties": {"line": {"type": "integer"}, "reason": {"type": "string"}}}},
                "error": {"type": "string"}, "created_at": time, "updated_at": time, "finished_at": maybe_time
            }},
        "Segment": {"type": "object", "required": ["id", "name", "expression", "created_at", "updated_at"], "properties": {
            "id": uuid, "name": {"type": "string"}, "expression": {"type": "string"}, "created_at": time, "updated_at": time}},
        "NewSegment": {"type": "object", "required": ["name", "expression"], "additionalProperties": false, "properties": {
            "name": {"type": "string"}, "expression": {"type": "string", "description": "The segment language: attributes.plan = \"pro\" and opened_within(30d) and not in_list(\"vip\")"}}},
        "Count": {"type": "object", "required": ["count"], "properties": {"count": {"type": "integer"}}},
    }))
}
