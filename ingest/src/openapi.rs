//! The send and management API's OpenAPI 3.1 document, served at `/openapi.json`. A test
//! probes every route of [`crate::routes`] and compares the methods found with this
//! document, so the two cannot drift apart.

use axum::Json;
use sendmill_platform::openapi::{
    document as build, json_body, json_response, operation, operation_with_errors, path_param,
    query_param, schema,
};
use serde_json::{json, Map, Value};
use std::sync::LazyLock;

static DOCUMENT: LazyLock<Value> = LazyLock::new(build_document);

pub async fn serve() -> Json<Value> {
    Json(DOCUMENT.clone())
}

pub fn document() -> &'static Value {
    &DOCUMENT
}

const E_READ: &[u16] = &[400, 401, 403, 404, 503];
const E_WRITE: &[u16] = &[400, 401, 403, 404, 413, 415, 503];

fn id_param(name: &str, what: &str) -> Value {
    path_param(name, what, json!({"type": "string"}))
}

fn page_of(item: &str) -> Value {
    json!({
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "array", "items": schema(item)},
            "next_cursor": {"type": "string", "description": "Pass as `cursor` for the next page"}
        }
    })
}

fn list_of(item: &str) -> Value {
    json!({"type": "object", "required": ["data"], "properties": {"data": {"type": "array", "items": schema(item)}}})
}

fn no_content() -> Value {
    json!({"description": "Done"})
}

fn paging() -> Vec<Value> {
    vec![
        query_param(
            "limit",
            "Page size",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
        query_param(
            "cursor",
            "From a previous page's next_cursor",
            json!({"type": "string"}),
        ),
    ]
}

/// An operation of the SendGrid drop-in: the `success` responses, and each of `errors`
/// in SendGrid's error shape.
fn sendgrid_operation(
    id: &str,
    summary: &str,
    parameters: Vec<Value>,
    body: Option<Value>,
    success: Value,
    errors: &[u16],
) -> Value {
    let errors: Vec<(u16, &str)> = errors
        .iter()
        .map(|&status| {
            let description = match status {
                400 => "Invalid: SendGrid's error shape naming the field",
                401 => "Missing or unknown API key",
                403 => {
                    "The key lacks the send scope, or the sender is not a verified sending domain"
                }
                413 => "Body too large",
                429 => "Rate limit or daily quota reached: see Retry-After",
                _ => "A dependency is unavailable",
            };
            (status, description)
        })
        .collect();
    operation_with_errors(
        id,
        "compatibility",
        summary,
        parameters,
        body,
        success,
        &errors,
        "SendGridErrors",
    )
}

fn build_document() -> Value {
    let batch_id = json!({"type": "object", "required": ["batch_id"], "properties": {"batch_id": {"type": "string"}}});
    let paths = json!({
        "/v1/messages": {
            "post": operation("sendMessages", "messages",
                "Send (or schedule, or sandbox) a message to up to 1,000 recipients",
                vec![json!({"name": "Idempotency-Key", "in": "header", "required": false,
                    "description": "A repeat within 24 h answers as the first request did and sends nothing",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}})],
                Some(json_body(schema("SendRequest"))),
                json!({
                    "202": json_response("Accepted: each recipient with its message id or reason", schema("SendResponse")),
                    "200": json_response("Sandbox: validated and rendered, nothing sent", schema("SendResponse"))
                }),
                &[400, 401, 403, 409, 413, 415, 422, 429, 503])
        },
        "/v3/mail/send": {
            "post": sendgrid_operation("sendgridMailSend",
                "SendGrid v3 Mail Send, for SendGrid's client libraries (Bearer: a Sendmill API key with the send scope)",
                vec![json!({"name": "Idempotency-Key", "in": "header", "required": false,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255}})],
                Some(json_body(schema("SendGridMail"))),
                json!({
                    "202": {"description": "Accepted; X-Message-Id is the batch id",
                        "headers": {"X-Message-Id": {"schema": {"type": "string"}}}},
                    "200": {"description": "Sandbox mode: validated, nothing sent"}
                }),
                &[400, 401, 403, 413, 429, 503])
        },
        "/v3/mail/batch": {
            "post": sendgrid_operation("sendgridCreateBatch",
                "SendGrid: a new batch id, for cancelling scheduled sends together", vec![], None,
                json!({"201": json_response("The batch id", batch_id.clone())}), &[401, 403, 503])
        },
        "/v3/mail/batch/{batch_id}": {
            "get": sendgrid_operation("sendgridGetBatch", "SendGrid: whether a batch id is valid (400 if not)",
                vec![path_param("batch_id", "Batch id", json!({"type": "string"}))], None,
                json!({"200": json_response("Valid", batch_id)}), &[400, 401, 403, 503])
        },
        "/v3/user/scheduled_sends": {
            "get": sendgrid_operation("sendgridListScheduledSends", "SendGrid: the cancelled batches", vec![], None,
                json!({"200": json_response("Cancelled batches", json!({"type": "array", "items": schema("SendGridScheduledSend")}))}),
                &[401, 403, 503]),
            "post": sendgrid_operation("sendgridCancelScheduledSend",
                "SendGrid: cancel a batch's scheduled sends (status cancel; pause is refused)", vec![],
                Some(json_body(schema("SendGridScheduledSend"))),
                json!({"201": json_response("Cancelled", schema("SendGridScheduledSend"))}),
                &[400, 401, 403, 413, 503])
        },
        "/v2/email/outbound-emails": {
            "post": operation_with_errors("sesSendEmail", "compatibility",
                "Amazon SES v2 SendEmail, for AWS SDKs (AWS Signature V4: access key id = a SigV4 API key's id, secret = the key)",
                vec![], Some(json_body(schema("SesSendEmail"))),
                json!({"200": json_response("Accepted", json!({"type": "object", "required": ["MessageId"],
                    "properties": {"MessageId": {"type": "string"}}}))}),
                &[
                    (400, "Invalid (BadRequestException, MessageRejected, LimitExceededException)"),
                    (403, "Not authenticated or not allowed"),
                    (404, "No template of that name (NotFoundException)"),
                    (429, "Rate limit reached (TooManyRequestsException)"),
                    (503, "A dependency is unavailable"),
                ],
                "SesError")
        },
        "/v1/messages/{id}": {
            "delete": operation("cancelMessage", "messages", "Cancel a scheduled message before its send_at",
                vec![id_param("id", "Message id")], None,
                json!({"200": json_response("Cancelled", schema("Cancelled"))}), &[401, 403, 404, 409, 503])
        },
        "/v1/batches/{id}": {
            "delete": operation("cancelBatch", "messages", "Cancel every pending message of a scheduled request",
                vec![id_param("id", "Batch id from the send answer")], None,
                json!({"200": json_response("Cancelled", schema("Cancelled"))}), &[401, 403, 404, 409, 503])
        },
        "/v1/account": {
            "get": operation("getAccount", "tenants", "The caller's account", vec![], None,
                json!({"200": json_response("The account", schema("Account"))}), &[401, 404, 503])
        },
        "/v1/accounts": {
            "get": operation("listAccounts", "tenants", "Every account (operators)", vec![], None,
                json!({"200": json_response("Accounts", list_of("Account"))}), &[401, 403, 503]),
            "post": operation("createAccount", "tenants", "Create a tenant and its first admin key (operators)", vec![],
                Some(json_body(schema("CreateAccount"))),
                json!({"201": json_response("Created; the key is shown only here", schema("CreatedAccount"))}), E_WRITE)
        },
        "/v1/accounts/{id}": {
            "patch": operation("updateAccount", "tenants", "Set an account's send limits (operators)",
                vec![id_param("id", "Account id")], Some(json_body(schema("UpdateAccount"))),
                json!({"200": json_response("The account", schema("Account"))}), E_WRITE)
        },
        "/v1/keys": {
            "get": operation("listKeys", "tenants", "The account's API keys (no secrets)", vec![], None,
                json!({"200": json_response("Keys", list_of("ApiKey"))}), &[401, 403, 503]),
            "post": operation("createKey", "tenants", "Create an API key with scopes", vec![],
                Some(json_body(schema("CreateKey"))),
                json!({"201": json_response("Created; the key is shown only here", schema("CreatedKey"))}), E_WRITE)
        },
        "/v1/keys/{id}": {
            "delete": operation("revokeKey", "tenants", "Revoke an API key", vec![id_param("id", "Key id")], None,
                json!({"204": no_content()}), &[401, 403, 404, 503])
        },
        "/v1/domains": {
            "get": operation("listDomains", "domains", "The account's sending domains", vec![], None,
                json!({"200": json_response("Domains", list_of("Domain"))}), &[401, 403, 503]),
            "post": operation("addDomain", "domains", "Add a sending domain: generates DKIM keys, answers the DNS records to publish", vec![],
                Some(json_body(schema("AddDomain"))),
                json!({"201": json_response("The domain and its records", schema("Domain"))}), &[400, 401, 403, 409, 413, 415, 503])
        },
        "/v1/domains/{domain}": {
            "get": operation("getDomain", "domains", "A sending domain", vec![id_param("domain", "Domain name")], None,
                json!({"200": json_response("The domain", schema("Domain"))}), E_READ),
            "delete": operation("deleteDomain", "domains", "Remove a sending domain and its keys", vec![id_param("domain", "Domain name")], None,
                json!({"204": no_content()}), E_READ)
        },
        "/v1/domains/{domain}/verify": {
            "post": operation("verifyDomain", "domains", "Look up the domain's DNS records and verify them", vec![id_param("domain", "Domain name")], None,
                json!({"200": json_response("The domain with what DNS answered", schema("Domain"))}), E_READ)
        },
        "/v1/templates": {
            "get": operation("listTemplates", "templates", "The account's templates by name", paging(), None,
                json!({"200": json_response("A page of templates", page_of("Template"))}), E_READ),
            "post": operation("createTemplate", "templates", "Create a template (version 1); syntax is checked", vec![],
                Some(json_body(schema("CreateTemplate"))),
                json!({"201": json_response("The template", schema("TemplateDetail"))}), &[400, 401, 403, 409, 413, 415, 503])
        },
        "/v1/templates/{id}": {
            "get": operation("getTemplate", "templates", "A template with its latest version", vec![id_param("id", "Template id")], None,
                json!({"200": json_response("The template", schema("TemplateDetail"))}), E_READ),
            "delete": operation("deleteTemplate", "templates", "Delete a template and its versions", vec![id_param("id", "Template id")], None,
                json!({"204": no_content()}), E_READ)
        },
        "/v1/templates/{id}/versions": {
            "post": operation("addTemplateVersion", "templates", "Save a new version", vec![id_param("id", "Template id")],
                Some(json_body(schema("TemplateContent"))),
                json!({"201": json_response("The version", schema("TemplateVersion"))}), E_WRITE)
        },
        "/v1/templates/{id}/versions/{version}": {
            "get": operation("getTemplateVersion", "templates", "One version", vec![id_param("id", "Template id"), id_param("version", "Version number")], None,
                json!({"200": json_response("The version", schema("TemplateVersion"))}), E_READ)
        },
        "/v1/templates/{id}/preview": {
            "post": operation("previewTemplate", "templates", "Render a version with sample data", vec![id_param("id", "Template id")],
                Some(json_body(schema("PreviewRequest"))),
                json!({"200": json_response("Rendered parts", schema("Preview"))}), &[400, 401, 403, 404, 413, 415, 422, 503])
        },
        "/v1/suppressions": {
            "get": operation("listSuppressions", "suppressions", "The account's suppression list",
                [vec![query_param("reason", "Only this reason", schema("SuppressionReason"))], paging()].concat(), None,
                json!({"200": json_response("A page of suppressions", page_of("Suppression"))}), E_READ),
            "post": operation("addSuppressions", "suppressions", "Add or update up to 1,000 suppressions", vec![],
                Some(json_body(schema("AddSuppressions"))),
                json!({"200": json_response("Written", schema("Written"))}), E_WRITE)
        },
        "/v1/suppressions/import": {
            "post": operation("importSuppressions", "suppressions", "Import a CSV (header: email[,reason][,expires_at]); one bad line refuses the file", vec![],
                Some(json!({"required": true, "content": {"text/csv": {"schema": {"type": "string"}}}})),
                json!({"200": json_response("Written", schema("Written"))}), E_WRITE)
        },
        "/v1/suppressions/export": {
            "get": operation("exportSuppressions", "suppressions", "The whole list as CSV", vec![], None,
                json!({"200": {"description": "CSV: email,reason,created_at,expires_at", "content": {"text/csv": {"schema": {"type": "string"}}}}}), &[401, 403, 503])
        },
        "/v1/suppressions/{email}": {
            "get": operation("getSuppression", "suppressions", "One suppression", vec![id_param("email", "Address")], None,
                json!({"200": json_response("The suppression", schema("Suppression"))}), E_READ),
            "delete": operation("deleteSuppression", "suppressions", "Remove a suppression", vec![id_param("email", "Address")], None,
                json!({"204": no_content()}), E_READ)
        },
        "/v1/global-suppressions": {
            "get": operation("listGlobalSuppressions", "suppressions", "The global list (operators)",
                [vec![query_param("reason", "Only this reason", schema("SuppressionReason"))], paging()].concat(), None,
                json!({"200": json_response("A page of suppressions", page_of("Suppression"))}), E_READ),
            "post": operation("addGlobalSuppressions", "suppressions", "Add to the global list (operators)", vec![],
                Some(json_body(schema("AddSuppressions"))),
                json!({"200": json_response("Written", schema("Written"))}), E_WRITE)
        },
        "/v1/global-suppressions/{email}": {
            "get": operation("getGlobalSuppression", "suppressions", "One global suppression (operators)", vec![id_param("email", "Address")], None,
                json!({"200": json_response("The suppression", schema("Suppression"))}), E_READ),
            "delete": operation("deleteGlobalSuppression", "suppressions", "Remove a global suppression (operators)", vec![id_param("email", "Address")], None,
                json!({"204": no_content()}), E_READ)
        }
    });
    build(
        "Sendmill send and management API",
        "Send mail, manage keys, domains, templates and suppressions. Reading events is the analytics API's (`GET /v1/messages`).",
        paths,
        schemas(),
    )
}

fn schemas() -> Map<String, Value> {
    let text_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let mailbox_object = json!({
        "type": "object", "required": ["email"], "additionalProperties": false,
        "properties": {"email": {"type": "string", "format": "email"}, "name": {"type": "string"}}
    });
    let json_schemas = json!({
        "Mailbox": {"description": "\"Name <a@b.c>\", \"a@b.c\" or an object",
            "oneOf": [{"type": "string"}, mailbox_object]},
        "Recipient": {"oneOf": [{"type": "string"}, {
            "type": "object", "required": ["email"], "additionalProperties": false,
            "properties": {
                "email": {"type": "string", "format": "email"},
                "name": {"type": "string"},
                "data": {"type": "object", "description": "Template data, merged over the request's"},
                "metadata": text_map,
                "cc": {"type": "array", "items": schema("Mailbox")},
                "bcc": {"type": "array", "items": schema("Mailbox")},
                "headers": text_map,
                "subject": {"type": "string", "description": "This recipient's subject instead of the request's"},
                "send_at": {"type": "string", "format": "date-time", "description": "This recipient's send_at instead of the request's"}
            }}]},
        "Attachment": {"type": "object", "required": ["filename", "content_type", "content"], "additionalProperties": false,
            "properties": {
                "filename": {"type": "string"},
                "content_type": {"type": "string", "examples": ["application/pdf"]},
                "content": {"type": "string", "contentEncoding": "base64"},
                "content_id": {"type": "string", "description": "Makes it inline: <img src=\"cid:…\">"}
            }},
        "SendRequest": {"type": "object", "required": ["from", "to"], "additionalProperties": false,
            "properties": {
                "from": schema("Mailbox"),
                "to": {"type": "array", "items": schema("Recipient"), "minItems": 1, "maxItems": 1000},
                "reply_to": schema("Mailbox"),
                "subject": {"type": "string", "description": "Handlebars; required unless template is given"},
                "html": {"type": "string"},
                "text": {"type": "string"},
                "template": {"type": "object", "required": ["id"], "additionalProperties": false,
                    "properties": {"id": {"type": "string", "format": "uuid"}, "version": {"type": "integer"}}},
                "headers": text_map,
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                "metadata": text_map,
                "data": {"type": "object"},
                "campaign_id": {"type": "string"},
                "ip_pool": {"type": "string"},
                "strict_templates": {"type": "boolean"},
                "track_opens": {"type": "boolean"},
                "track_clicks": {"type": "boolean"},
                "list_unsubscribe": {"type": "boolean"},
                "attachments": {"type": "array", "items": schema("Attachment")},
                "send_at": {"type": "string", "format": "date-time", "description": "At most 72 h ahead"},
                "sandbox": {"type": "boolean"}
            }},
        "RecipientResult": {"type": "object", "required": ["to", "kind", "status"],
            "properties": {
                "to": {"type": "string"},
                "kind": {"enum": ["to", "cc", "bcc"]},
                "status": {"enum": ["queued", "scheduled", "sandbox", "suppressed", "invalid", "render_failed"]},
                "message_id": {"type": "string", "format": "uuid"},
                "reason": {"type": "string"},
                "field": {"type": "string"},
                "send_at": {"type": "string", "format": "date-time"}
            }},
        "SendResponse": {"type": "object", "required": ["batch_id", "accepted", "rejected", "messages"],
            "properties": {
                "batch_id": {"type": "string", "format": "uuid"},
                "accepted": {"type": "integer"},
                "rejected": {"type": "integer"},
                "send_at": {"type": "string", "format": "date-time"},
                "sandbox": {"type": "boolean"},
                "messages": {"type": "array", "items": schema("RecipientResult")}
            }},
        "Cancelled": {"type": "object", "required": ["cancelled", "already_released"],
            "properties": {"cancelled": {"type": "integer"}, "already_released": {"type": "integer"}}},
        "Limits": {"type": "object", "additionalProperties": false,
            "properties": {
                "send_rate_per_sec": {"type": ["integer", "null"], "minimum": 0},
                "daily_quota": {"type": ["integer", "null"], "minimum": 0}
            }},
        "Account": {"type": "object", "required": ["id", "name", "operator", "limits", "created_at"],
            "properties": {
                "id": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                "operator": {"type": "boolean"}, "limits": schema("Limits"),
                "created_at": {"type": "string", "format": "date-time"}
            }},
        "CreateAccount": {"type": "object", "required": ["name"], "additionalProperties": false,
            "properties": {"name": {"type": "string"}, "limits": schema("Limits")}},
        "CreatedAccount": {"type": "object", "required": ["account", "key"],
            "properties": {"account": schema("Account"), "key": {"type": "string"}}},
        "UpdateAccount": {"type": "object", "required": ["limits"], "additionalProperties": false,
            "properties": {"limits": schema("Limits")}},
        "Scope": {"enum": ["send", "templates", "domains", "suppressions", "stats", "webhooks", "contacts", "campaigns", "admin"]},
        "CreateKey": {"type": "object", "required": ["name", "scopes"], "additionalProperties": false,
            "properties": {"name": {"type": "string"}, "scopes": {"type": "array", "items": schema("Scope"), "minItems": 1},
                "aws_sigv4": {"type": "boolean", "description": "The key may also sign AWS Signature V4 requests (SES v2 drop-in); needs a KEK"}}},
        "CreatedKey": {"type": "object", "required": ["id", "name", "prefix", "scopes", "key"],
            "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                "prefix": {"type": "string"}, "scopes": {"type": "array", "items": schema("Scope")},
                "key": {"type": "string", "description": "The secret, shown only here"},
                "aws_access_key_id": {"type": "string", "description": "With aws_sigv4: the access key id for AWS SDKs (the secret access key is key)"}}},
        "ApiKey": {"type": "object", "required": ["id", "name", "prefix", "scopes", "created_at"],
            "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                "prefix": {"type": "string"}, "scopes": {"type": "array", "items": {"type": "string"}},
                "created_at": {"type": "string", "format": "date-time"},
                "revoked_at": {"type": ["string", "null"], "format": "date-time"}}},
        "AddDomain": {"type": "object", "required": ["domain"], "additionalProperties": false,
            "properties": {"domain": {"type": "string"}}},
        "DnsRecord": {"type": "object", "required": ["purpose", "type", "name", "value", "required"],
            "properties": {"purpose": {"enum": ["dkim", "dkim_ed25519", "dkim_next", "return_path", "spf", "dmarc"]},
                "type": {"enum": ["TXT", "MX"]}, "name": {"type": "string"}, "value": {"type": "string"},
                "required": {"type": "boolean"}}},
        "Check": {"type": "object", "required": ["purpose", "ok", "found"],
            "properties": {"purpose": {"type": "string"}, "ok": {"type": "boolean"},
                "found": {"type": "array", "items": {"type": "string"}}}},
        "Domain": {"type": "object", "required": ["domain", "domain_unicode", "verified", "dual_sign", "return_path_domain", "records"],
            "properties": {"domain": {"type": "string", "description": "A-labels (IDNA2008), as in DNS and DKIM d="},
                "domain_unicode": {"type": "string", "description": "The same domain in U-labels, for people"},
                "verified": {"type": "boolean"},
                "verified_at": {"type": "string", "format": "date-time"}, "dual_sign": {"type": "boolean"},
                "return_path_domain": {"type": "string"},
                "records": {"type": "array", "items": schema("DnsRecord")},
                "checks": {"type": "array", "items": schema("Check")}}},
        "TemplateContent": {"type": "object", "required": ["subject"], "additionalProperties": false,
            "properties": {"subject": {"type": "string"}, "html": {"type": "string"}, "text": {"type": "string"}}},
        "CreateTemplate": {"type": "object", "required": ["name", "subject"], "additionalProperties": false,
            "properties": {"name": {"type": "string"}, "subject": {"type": "string"}, "html": {"type": "string"}, "text": {"type": "string"}}},
        "Template": {"type": "object", "required": ["id", "name", "latest_version", "created_at", "updated_at"],
            "properties": {"id": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                "latest_version": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"}}},
        "TemplateVersion": {"type": "object", "required": ["version", "subject", "created_at"],
            "properties": {"version": {"type": "integer"}, "subject": {"type": "string"},
                "html": {"type": "string"}, "text": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"}}},
        "TemplateDetail": {"allOf": [schema("Template"), {"type": "object", "required": ["latest", "versions"],
            "properties": {"latest": schema("TemplateVersion"), "versions": {"type": "array", "items": {"type": "integer"}}}}]},
        "PreviewRequest": {"type": "object", "additionalProperties": false,
            "properties": {"data": {"type": "object"}, "version": {"type": "integer"}, "strict": {"type": "boolean"}}},
        "Preview": {"type": "object", "required": ["version", "subject"],
            "properties": {"version": {"type": "integer"}, "subject": {"type": "string"}, "html": {"type": "string"}, "text": {"type": "string"}}},
        "SuppressionReason": {"enum": ["bounce", "complaint", "unsubscribe", "manual"]},
        "SuppressionEntry": {"type": "object", "required": ["email"], "additionalProperties": false,
            "properties": {"email": {"type": "string", "format": "email"}, "reason": schema("SuppressionReason"),
                "expires_at": {"type": "string", "format": "date-time"}}},
        "AddSuppressions": {"type": "object", "required": ["suppressions"], "additionalProperties": false,
            "properties": {"suppressions": {"type": "array", "items": schema("SuppressionEntry"), "minItems": 1, "maxItems": 1000}}},
        "Suppression": {"type": "object", "required": ["email", "reason", "created_at"],
            "properties": {"email": {"type": "string"}, "reason": schema("SuppressionReason"), "source": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "expires_at": {"type": ["string", "null"], "format": "date-time"}}},
        "Written": {"type": "object", "required": ["written"], "properties": {"written": {"type": "integer"}}},
        "SendGridAddress": {"type": "object", "required": ["email"], "additionalProperties": false,
            "properties": {"email": {"type": "string"}, "name": {"type": ["string", "null"]}}},
        "SendGridMail": {"type": "object", "required": ["personalizations", "from"],
            "description": "SendGrid's v3 Mail Send body; see the ingest crate's compat::sendgrid for what is refused",
            "properties": {
                "personalizations": {"type": "array", "items": {"type": "object", "required": ["to"],
                    "properties": {"to": {"type": "array", "items": schema("SendGridAddress")},
                        "cc": {"type": "array", "items": schema("SendGridAddress")},
                        "bcc": {"type": "array", "items": schema("SendGridAddress")},
                        "subject": {"type": "string"}, "headers": text_map.clone(),
                        "substitutions": text_map.clone(), "dynamic_template_data": {"type": "object"},
                        "custom_args": text_map.clone(), "send_at": {"type": "integer"}}}},
                "from": schema("SendGridAddress"), "reply_to": schema("SendGridAddress"),
                "reply_to_list": {"type": "array", "items": schema("SendGridAddress")},
                "subject": {"type": "string"},
                "content": {"type": "array", "items": {"type": "object", "required": ["type", "value"],
                    "properties": {"type": {"type": "string"}, "value": {"type": "string"}}}},
                "attachments": {"type": "array", "items": {"type": "object", "required": ["content", "filename"],
                    "properties": {"content": {"type": "string"}, "filename": {"type": "string"}, "type": {"type": "string"},
                        "disposition": {"enum": ["inline", "attachment"]}, "content_id": {"type": "string"}}}},
                "template_id": {"type": "string"}, "headers": text_map.clone(),
                "categories": {"type": "array", "items": {"type": "string"}}, "custom_args": text_map.clone(),
                "send_at": {"type": "integer"}, "batch_id": {"type": "string"}, "ip_pool_name": {"type": "string"},
                "mail_settings": {"type": "object"}, "tracking_settings": {"type": "object"}
            }},
        "SendGridErrors": {"type": "object", "required": ["errors"],
            "properties": {"errors": {"type": "array", "items": {"type": "object", "required": ["message"],
                "properties": {"message": {"type": "string"}, "field": {"type": ["string", "null"]},
                    "help": {"type": ["string", "null"]}}}}}},
        "SendGridScheduledSend": {"type": "object", "required": ["batch_id", "status"], "additionalProperties": false,
            "properties": {"batch_id": {"type": "string"}, "status": {"enum": ["cancel", "pause"]}}},
        "SesSendEmail": {"type": "object", "required": ["Content"],
            "description": "SES v2 SendEmail; see the ingest crate's compat::ses for what is refused",
            "properties": {
                "FromEmailAddress": {"type": "string"},
                "Destination": {"type": "object", "properties": {
                    "ToAddresses": {"type": "array", "items": {"type": "string"}},
                    "CcAddresses": {"type": "array", "items": {"type": "string"}},
                    "BccAddresses": {"type": "array", "items": {"type": "string"}}}},
                "ReplyToAddresses": {"type": "array", "items": {"type": "string"}},
                "Content": {"type": "object", "properties": {
                    "Simple": {"type": "object"}, "Raw": {"type": "object"}, "Template": {"type": "object"}}},
                "EmailTags": {"type": "array", "items": {"type": "object", "required": ["Name", "Value"],
                    "properties": {"Name": {"type": "string"}, "Value": {"type": "string"}}}},
                "ConfigurationSetName": {"type": "string"}
            }},
        "SesError": {"type": "object", "required": ["__type", "message"],
            "properties": {"__type": {"type": "string"}, "message": {"type": "string"}}}
    });
    json_schemas.as_object().cloned().unwrap_or_default()
}
