//! The campaigns' part of the analytics API's OpenAPI document: [`paths`] and
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
    let id = || {
        path_param(
            "id",
            "The campaign's id",
            json!({"type": "string", "format": "uuid"}),
        )
    };
    let one = |what: &str| json!({"200": json_response(what, schema("Campaign"))});
    let action = |op: &str, summary: &str| {
        operation(
            op,
            "campaigns",
            summary,
            vec![id()],
            None,
            one("The campaign"),
            &[401, 403, 404, 409, 503],
        )
    };
    object(json!({
        "/v1/campaigns": {
            "get": operation("listCampaigns", "campaigns", "The account's campaigns, newest first",
                vec![
                    query_param("state", "Only campaigns in this state", schema("CampaignState")),
                    query_param("limit", "Page size (1-500, default 100)", json!({"type": "integer", "minimum": 1, "maximum": 500})),
                    query_param("cursor", "From a previous page's next_cursor", json!({"type": "string", "format": "uuid"})),
                ], None,
                json!({"200": json_response("A page of campaigns", schema("CampaignPage"))}),
                &[400, 401, 403, 503]),
            "post": operation("createCampaign", "campaigns", "Creates a draft campaign", vec![],
                Some(json_body(schema("CampaignInput"))),
                json!({"201": json_response("The campaign", schema("Campaign"))}),
                &[400, 401, 403, 415, 422, 503]),
        },
        "/v1/campaigns/{id}": {
            "get": operation("getCampaign", "campaigns", "A campaign with its progress", vec![id()], None,
                one("The campaign"), &[401, 403, 404, 503]),
            "patch": operation("updateCampaign", "campaigns",
                "Changes a draft (the keys given; null clears one); a campaign under way only its name and throttle",
                vec![id()], Some(json_body(json!({"type": "object", "description": "Keys of CampaignInput"}))),
                one("The campaign"), &[400, 401, 403, 404, 409, 415, 422, 503]),
            "delete": operation("deleteCampaign", "campaigns", "Deletes a draft, sent or cancelled campaign",
                vec![id()], None, json!({"204": {"description": "Deleted"}}), &[401, 403, 404, 409, 503]),
        },
        "/v1/campaigns/{id}/schedule": {"post": operation("scheduleCampaign", "campaigns",
            "draft → scheduled: starts at send_at (or now); 422 when the audience matches nobody",
            vec![id()], None, one("The campaign"), &[400, 401, 403, 404, 409, 422, 503])},
        "/v1/campaigns/{id}/unschedule": {"post": action("unscheduleCampaign", "scheduled → draft")},
        "/v1/campaigns/{id}/pause": {"post": action("pauseCampaign", "sending → paused: no further release")},
        "/v1/campaigns/{id}/resume": {"post": action("resumeCampaign", "paused → sending, from where it stopped")},
        "/v1/campaigns/{id}/cancel": {"post": action("cancelCampaign", "Ends the campaign; every unreleased contact counts as not sent")},
        "/v1/campaigns/{id}/winner": {"post": operation("chooseCampaignWinner", "campaigns",
            "Chooses the A/B test's winner while the campaign waits for one",
            vec![id()], Some(json_body(json!({"type": "object", "required": ["variant"], "additionalProperties": false,
                "properties": {"variant": {"type": "string", "enum": ["A", "B", "C", "D"]}}}))),
            one("The campaign"), &[400, 401, 403, 404, 409, 415, 503])},
        "/v1/campaigns/{id}/test": {"post": operation("testCampaign", "campaigns",
            "Sends the campaign to seed addresses as recipients will get it, and names the audience contacts a variable is missing for",
            vec![id()], Some(json_body(schema("TestSend"))),
            json!({"200": json_response("What was sent and checked", schema("TestResult"))}),
            &[400, 401, 403, 404, 415, 422, 503])},
        "/v1/campaigns/{id}/preview": {"get": operation("previewCampaign", "campaigns",
            "Subject, HTML and text rendered for a contact (default: the audience's first)",
            vec![id(),
                query_param("contact_id", "Render with this contact's data", json!({"type": "string", "format": "uuid"})),
                query_param("variant", "The A/B variant", json!({"type": "string", "enum": ["A", "B", "C", "D"]}))],
            None, json!({"200": json_response("The rendering", schema("CampaignPreview"))}),
            &[400, 401, 403, 404, 422, 503])},
        "/v1/campaigns/{id}/stats": {"get": operation("getCampaignStats", "campaigns",
            "The campaign's report, live: progress, funnel, bounces by category, variants, top links, timeline",
            vec![id()], None, json!({"200": json_response("The report", schema("CampaignStats"))}),
            &[401, 403, 404, 503])},
    }))
}

/// The component schemas [`paths`] refers to.
pub fn schemas() -> Map<String, Value> {
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": ["string", "null"], "format": "date-time"});
    let text = json!({"type": ["string", "null"]});
    let int = json!({"type": "integer"});
    let variant = json!({"type": "object", "additionalProperties": false, "properties": {
        "name": {"type": "string", "enum": ["A", "B", "C", "D"]}, "subject": {"type": "string"},
        "from_name": {"type": "string"}, "html": {"type": "string"}, "text": {"type": "string"}}});
    let input_properties = json!({
        "name": {"type": "string"},
        "from": {"type": "object", "required": ["email"], "additionalProperties": false,
            "properties": {"email": {"type": "string"}, "name": {"type": ["string", "null"]}}},
        "reply_to": text, "subject": text, "html": text, "text": text,
        "template_id": {"type": ["string", "null"], "format": "uuid"},
        "template_version": {"type": ["integer", "null"]},
        "audience": {"type": "object", "additionalProperties": false, "properties": {
            "lists": {"type": "array", "items": uuid}, "segment_id": {"type": ["string", "null"], "format": "uuid"},
            "exclude_lists": {"type": "array", "items": uuid}}},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
        "ip_pool": text,
        "tracking": {"type": "object", "additionalProperties": false, "properties": {
            "opens": {"type": "boolean"}, "clicks": {"type": "boolean"}}},
        "list_unsubscribe": {"type": "boolean"},
        "send_at": {"type": ["string", "null"], "description": "RFC 3339, or a local time (2026-12-24T09:00) in time_zone"},
        "time_zone": {"type": ["string", "null"], "description": "IANA zone, default UTC"},
        "throttle_per_hour": {"type": ["integer", "null"], "minimum": 1},
        "ab_test": {"type": ["object", "null"], "required": ["variants", "test_percent", "metric"], "additionalProperties": false,
            "properties": {"variants": {"type": "array", "items": variant, "minItems": 2, "maxItems": 4},
                "test_percent": {"type": "integer", "minimum": 1, "maximum": 100},
                "metric": {"type": "string", "enum": ["opens", "clicks", "manual"]},
                "wait_seconds": {"type": "integer", "minimum": 0}}},
    });
    let mut campaign_properties = input_properties.as_object().cloned().unwrap_or_default();
    for (k, v) in object(json!({
        "id": uuid, "state": schema("CampaignState"), "starts_at": time,
        "progress": {"type": "object", "required": ["released", "skipped", "not_sent"], "properties": {
            "audience_size": {"type": ["integer", "null"]}, "test_size": {"type": ["integer", "null"]},
            "released": int, "skipped": int, "not_sent": int}},
        "winner": {"type": "string"}, "winner_reason": {"type": "object"},
        "phase": {"type": "string", "enum": ["all", "test", "waiting", "rest"]},
        "test_ends_at": time, "started_at": time, "finished_at": time,
        "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
    })) {
        campaign_properties.insert(k, v);
    }
    let figures = json!({"type": "object", "properties": {
        "variant": {"type": "string"}, "released": int, "delivered": int, "unique_opens": int,
        "unique_clicks": int, "open_rate": {"type": "number"}, "click_rate": {"type": "number"}}});
    let unique = json!({"type": "object", "properties": {"unique": int, "machine": int}});
    object(json!({
        "CampaignState": {"type": "string", "enum": ["draft", "scheduled", "sending", "paused", "sent", "cancelled"]},
        "CampaignInput": {"type": "object", "required": ["name", "from"], "additionalProperties": false,
            "properties": input_properties},
        "Campaign": {"type": "object", "required": ["id", "state", "name", "from", "progress", "phase", "created_at", "updated_at"],
            "properties": campaign_properties},
        "CampaignPage": {"type": "object", "required": ["data"], "properties": {
            "data": {"type": "array", "items": schema("Campaign")}, "next_cursor": uuid}},
        "TestSend": {"type": "object", "required": ["to"], "additionalProperties": false, "properties": {
            "to": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "contact_id": uuid, "variant": {"type": "string", "enum": ["A", "B", "C", "D"]}}},
        "TestResult": {"type": "object", "required": ["sent", "checked", "strict_failures"], "properties": {
            "sent": {"type": "array", "items": {"type": "object", "properties": {
                "to": {"type": "string"}, "variant": text, "message_id": uuid}}},
            "checked": int,
            "strict_failures": {"type": "array", "items": {"type": "object", "properties": {
                "contact_id": uuid, "email": {"type": "string"}, "variant": {"type": "string"}, "reason": {"type": "string"}}}}}},
        "CampaignPreview": {"type": "object", "properties": {
            "contact_id": {"type": ["string", "null"], "format": "uuid"}, "email": text, "variant": text,
            "subject": {"type": "string"}, "html": text, "text": text, "error": {"type": "string"}}},
        "CampaignStats": {"type": "object", "required": ["campaign_id", "state", "released", "delivered"], "properties": {
            "campaign_id": uuid, "state": schema("CampaignState"),
            "audience_size": {"type": ["integer", "null"]}, "test_size": {"type": ["integer", "null"]},
            "released": int, "skipped": int, "not_sent": int, "delivered": int, "deferred": int,
            "bounced": {"type": "object", "properties": {"total": int, "by_category": {"type": "object"}}},
            "async_bounced": int, "dropped": int, "failed": int, "opened": unique, "clicked": unique,
            "unsubscribed": int, "complained": int,
            "variants": {"type": "array", "items": figures}, "winner": {"type": "string"},
            "links": {"type": "array", "items": {"type": "object", "properties": {
                "url": {"type": "string"}, "unique_clicks": int, "clicks": int}}},
            "timeline": {"type": "array", "items": {"type": "object", "properties": {
                "minute": int, "delivered": int, "opened": int, "clicked": int, "bounced": int}}}}},
    }))
}
