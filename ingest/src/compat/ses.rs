//! Amazon SES v2 `SendEmail`, `POST /v2/email/outbound-emails`: the JSON body SES
//! documents, authenticated with AWS Signature V4 ([`super::sigv4`]: the access key id is
//! a Sendmill API key's id, the secret access key the API key itself; the key must have
//! been created with `aws_sigv4` and the `send` scope), accepted like `POST /v1/messages`.
//! Answers 200 `{"MessageId": …}` (the native batch id) and SES's errors: the status, an
//! `x-amzn-ErrorType` header and `{"__type", "message"}` (AWS SDKs read either), the
//! message naming the field.
//!
//! How the models meet:
//! - `Content.Simple` (subject, text, HTML, headers) and `Content.Template`
//!   (`TemplateName`: a stored template by name; `TemplateData`: its JSON data) become a
//!   native request; SES content is not a template, so Simple content is made one that
//!   renders to exactly itself ([`super::literal_template`]).
//! - `Content.Raw` is queued like SMTP submission: the MIME as it is, DKIM-signed, with
//!   the recipients of `Destination` (which Sendmill requires for raw messages; it does
//!   not read recipients from the raw header section).
//! - Each `ToAddresses` address gets its own copy and message id, every copy showing
//!   the whole `To` field; `CcAddresses` and `BccAddresses` ride with the first one, so
//!   each gets one copy.
//! - `EmailTags` → tags `Name:Value`; `ConfigurationSetName` → the IP pool of that
//!   name; `ReplyToAddresses` → Reply-To (one address).
//!
//! Refused, naming the field: ARNs (`FromEmailAddressIdentityArn`, `TemplateArn`, …),
//! `FeedbackForwardingEmailAddress` (returns go to Sendmill's inbound stage),
//! `ListManagementOptions` (no contact lists yet), `EndpointId`, a `Charset` other than
//! UTF-8 or US-ASCII, and more than one reply-to address.

use super::{literal_template, sigv4};
use crate::{
    request::{Mailbox, Recipient, SendRequest, TemplateRef},
    send::{self, send_once, Planned, RecipientStatus},
    submission, validate, AppState,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use sendmill_platform::api::ApiError;
use sendmill_store::{Principal, Scope};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// The `SendEmail` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct SendEmail {
    #[serde(default)]
    pub from_email_address: Option<String>,
    #[serde(default)]
    pub from_email_address_identity_arn: Option<String>,
    #[serde(default)]
    pub destination: Option<Destination>,
    #[serde(default)]
    pub reply_to_addresses: Vec<String>,
    #[serde(default)]
    pub feedback_forwarding_email_address: Option<String>,
    #[serde(default)]
    pub feedback_forwarding_email_address_identity_arn: Option<String>,
    pub content: EmailContent,
    #[serde(default)]
    pub email_tags: Vec<Tag>,
    #[serde(default)]
    pub configuration_set_name: Option<String>,
    #[serde(default)]
    pub list_management_options: Option<Value>,
    #[serde(default)]
    pub endpoint_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Destination {
    #[serde(default)]
    pub to_addresses: Vec<String>,
    #[serde(default)]
    pub cc_addresses: Vec<String>,
    #[serde(default)]
    pub bcc_addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct EmailContent {
    #[serde(default)]
    pub simple: Option<Simple>,
    #[serde(default)]
    pub raw: Option<Raw>,
    #[serde(default)]
    pub template: Option<Template>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Simple {
    pub subject: Text,
    pub body: Body,
    #[serde(default)]
    pub headers: Vec<MessageHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Body {
    #[serde(default)]
    pub text: Option<Text>,
    #[serde(default)]
    pub html: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Text {
    pub data: String,
    #[serde(default)]
    pub charset: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Raw {
    /// Base64 (the SDKs encode the blob).
    pub data: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Template {
    #[serde(default)]
    pub template_name: Option<String>,
    #[serde(default)]
    pub template_arn: Option<String>,
    #[serde(default)]
    pub template_data: Option<String>,
    #[serde(default)]
    pub headers: Vec<MessageHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MessageHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct Tag {
    pub name: String,
    pub value: String,
}

/// A refusal in SES's shape: status, error type and message.
#[derive(Debug)]
pub struct SesError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl SesError {
    /// A 400 `BadRequestException` naming `field`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        SesError {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestException",
            message: format!("{field}: {message}"),
        }
    }

    fn denied(message: impl Into<String>) -> Self {
        SesError {
            status: StatusCode::FORBIDDEN,
            kind: "AccessDeniedException",
            message: message.into(),
        }
    }
}

/// Native field names in SES's terms.
fn ses_field(native: &str) -> String {
    match native {
        "from" => "FromEmailAddress".into(),
        "to" => "Destination".into(),
        "subject" => "Content.Simple.Subject".into(),
        "html" | "text" => "Content.Simple.Body".into(),
        "tags" => "EmailTags".into(),
        "ip_pool" => "ConfigurationSetName".into(),
        "template" => "Content.Template.TemplateName".into(),
        other if other.starts_with("to[") => "Destination".into(),
        other => other.to_owned(),
    }
}

impl From<ApiError> for SesError {
    fn from(error: ApiError) -> Self {
        let message = match &error.field {
            Some(field) => format!("{}: {}", ses_field(field), error.message),
            None => error.message.clone(),
        };
        let (status, kind) = match (error.status, error.code) {
            (_, "unknown_sending_domain" | "unverified_sending_domain") => {
                (StatusCode::BAD_REQUEST, "MessageRejected")
            }
            (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded") => {
                (StatusCode::BAD_REQUEST, "LimitExceededException")
            }
            (StatusCode::TOO_MANY_REQUESTS, _) => {
                (StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException")
            }
            (StatusCode::UNAUTHORIZED, _) => (StatusCode::FORBIDDEN, "UnrecognizedClientException"),
            (StatusCode::FORBIDDEN, _) => (StatusCode::FORBIDDEN, "AccessDeniedException"),
            (StatusCode::PAYLOAD_TOO_LARGE, _) => (StatusCode::BAD_REQUEST, "MessageRejected"),
            (status, _) if status.is_server_error() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
            ),
            _ => (StatusCode::BAD_REQUEST, "BadRequestException"),
        };
        SesError {
            status,
            kind,
            message,
        }
    }
}

impl IntoResponse for SesError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"__type": self.kind, "message": self.message})),
        )
            .into_response();
        response
            .headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        response
    }
}

/// `POST /v2/email/outbound-emails`.
pub async fn send_email(
    State(state): State<AppState>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let bytes = body.map_err(|rejection| SesError {
            status: StatusCode::BAD_REQUEST,
            kind: if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "MessageRejected"
            } else {
                "BadRequestException"
            },
            message: rejection.body_text(),
        })?;
        let principal = authenticate(&state, &method, &uri, &headers, &bytes).await?;
        accept(&state, &principal, &headers, &bytes).await
    };
    match result.await {
        Ok(message_id) => Json(serde_json::json!({ "MessageId": message_id })).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The principal whose key signed the request (SigV4), with the `send` scope.
async fn authenticate(
    state: &AppState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Principal, SesError> {
    let signed = sigv4::Signed::parse(
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or(""),
        headers,
        body,
    )
    .and_then(|signed| signed.require_service("ses").map(|()| signed))
    .map_err(|e| SesError {
        status: StatusCode::FORBIDDEN,
        kind: match e {
            sigv4::Sigv4Error::Missing => "MissingAuthenticationTokenException",
            _ => "IncompleteSignatureException",
        },
        message: e.to_string(),
    })?;
    let unknown = || {
        SesError {
        status: StatusCode::FORBIDDEN,
        kind: "UnrecognizedClientException",
        message: "The security token included in the request is invalid (no SigV4 key with this access key id)".into(),
    }
    };
    let key_id = uuid::Uuid::try_parse(&signed.access_key_id).map_err(|_| unknown())?;
    let (principal, secret) = state
        .store
        .sigv4_key(key_id)
        .await
        .map_err(|error| SesError::from(ApiError::from(error)))?
        .ok_or_else(unknown)?;
    signed
        .verify(&secret, OffsetDateTime::now_utc())
        .map_err(|e| SesError {
            status: StatusCode::FORBIDDEN,
            kind: if e == sigv4::Sigv4Error::Expired {
                "InvalidSignatureException"
            } else {
                "SignatureDoesNotMatch"
            },
            message: e.to_string(),
        })?;
    if !principal.has(Scope::Send) {
        return Err(SesError::denied("this key has no send scope"));
    }
    Ok(principal)
}

/// Accepts the request: the `MessageId` to answer.
async fn accept(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<String, SesError> {
    let email: SendEmail = sendmill_platform::body::parse(bytes)
        .map_err(|e| SesError::invalid(&e.field, e.message))?;
    match translate(email)? {
        Translated::Request {
            mut request,
            template,
        } => {
            if let Some(name) = template {
                request.template = Some(template_named(state, principal, &name).await?);
            }
            // A suppressed recipient is accepted and ends `dropped`, as SES accepts mail
            // to its suppression list and reports it as an event.
            let answer = send_once(state, principal, headers, bytes, *request).await?;
            Ok(answer.batch_id().unwrap_or_default())
        }
        Translated::Raw { mime, recipients } => raw(state, principal, &mime, &recipients).await,
    }
}

/// What a `SendEmail` is in native terms.
pub enum Translated {
    /// A native request, and the name of the stored template it uses.
    Request {
        request: Box<SendRequest>,
        template: Option<String>,
    },
    /// Raw MIME (decoded) and its envelope recipients.
    Raw {
        mime: Vec<u8>,
        recipients: Vec<String>,
    },
}

fn check_charset(text: &Text, field: &str) -> Result<(), SesError> {
    match text
        .charset
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("utf-8" | "utf8" | "us-ascii") => Ok(()),
        Some(_) => Err(SesError::invalid(
            &format!("{field}.Charset"),
            "Sendmill sends UTF-8; give UTF-8 or US-ASCII",
        )),
    }
}

/// An SES address (`a@b.c` or `Name <a@b.c>`, the name possibly RFC 2047-encoded, as SES
/// requires for non-ASCII names), checked as the native API checks addresses.
fn mailbox(text: &str, field: &str) -> Result<Mailbox, SesError> {
    if text.chars().any(char::is_control) {
        return Err(SesError::invalid(
            field,
            "an address has no control characters",
        ));
    }
    // As a header field, so that encoded words in the name are decoded.
    let field_text = format!("To: {text}");
    let parsed = mailparse::parse_header(field_text.as_bytes())
        .ok()
        .and_then(|(header, _)| mailparse::addrparse_header(&header).ok());
    let (email, name) = match parsed.as_ref().map(|list| list.as_slice()) {
        Some([mailparse::MailAddr::Single(single)]) => {
            (single.addr.clone(), single.display_name.clone())
        }
        _ => crate::request::split_address(text),
    };
    let email = validate::email(&email).map_err(|m| SesError::invalid(field, m))?;
    if let Some(name) = &name {
        validate::header_text(name, validate::MAX_NAME).map_err(|m| SesError::invalid(field, m))?;
    }
    Ok(Mailbox { email, name })
}

fn headers_of(
    list: &[MessageHeader],
    field: &str,
) -> Result<std::collections::BTreeMap<String, String>, SesError> {
    let mut out = std::collections::BTreeMap::new();
    for (i, h) in list.iter().enumerate() {
        validate::header_name(&h.name)
            .and_then(|()| validate::header_value(&h.value))
            .map_err(|m| SesError::invalid(&format!("{field}[{i}]"), m))?;
        out.insert(h.name.clone(), h.value.clone());
    }
    Ok(out)
}

/// The native form of `email` (see the module doc). Pure.
pub fn translate(email: SendEmail) -> Result<Translated, SesError> {
    for (field, given) in [
        (
            "FromEmailAddressIdentityArn",
            email.from_email_address_identity_arn.is_some(),
        ),
        (
            "FeedbackForwardingEmailAddress",
            email.feedback_forwarding_email_address.is_some(),
        ),
        (
            "FeedbackForwardingEmailAddressIdentityArn",
            email
                .feedback_forwarding_email_address_identity_arn
                .is_some(),
        ),
        (
            "ListManagementOptions",
            email.list_management_options.is_some(),
        ),
        ("EndpointId", email.endpoint_id.is_some()),
    ] {
        if given {
            return Err(SesError::invalid(field, "not supported by Sendmill"));
        }
    }
    let destination = email.destination.unwrap_or_default();
    let content = email.content;
    let kinds = [
        content.simple.is_some(),
        content.raw.is_some(),
        content.template.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(SesError::invalid(
            "Content",
            "give exactly one of Simple, Raw and Template",
        ));
    }
    let mut recipients: Vec<String> = Vec::new();
    for (list, field) in [
        (&destination.to_addresses, "ToAddresses"),
        (&destination.cc_addresses, "CcAddresses"),
        (&destination.bcc_addresses, "BccAddresses"),
    ] {
        for (i, address) in list.iter().enumerate() {
            let m = mailbox(address, &format!("Destination.{field}[{i}]"))?;
            recipients.push(m.email);
        }
    }
    if recipients.is_empty() {
        return Err(SesError::invalid(
            "Destination",
            "give at least one address (Sendmill needs Destination, also for raw messages)",
        ));
    }
    if let Some(raw) = content.raw {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let compact: String = raw.data.split_ascii_whitespace().collect();
        let mime = STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| SesError::invalid("Content.Raw.Data", "not base64"))?;
        for (field, given) in [
            ("FromEmailAddress", email.from_email_address.is_some()),
            ("ReplyToAddresses", !email.reply_to_addresses.is_empty()),
            ("EmailTags", !email.email_tags.is_empty()),
            (
                "ConfigurationSetName",
                email.configuration_set_name.is_some(),
            ),
        ] {
            if given {
                return Err(SesError::invalid(
                    field,
                    "a raw message carries its own header section; put it there (X-Sendmill-Tags, X-Sendmill-Ip-Pool)",
                ));
            }
        }
        return Ok(Translated::Raw { mime, recipients });
    }

    let from = mailbox(
        email
            .from_email_address
            .as_deref()
            .ok_or_else(|| SesError::invalid("FromEmailAddress", "required"))?,
        "FromEmailAddress",
    )?;
    let reply_to = match email.reply_to_addresses.as_slice() {
        [] => None,
        [one] => Some(mailbox(one, "ReplyToAddresses[0]")?),
        _ => {
            return Err(SesError::invalid(
                "ReplyToAddresses",
                "Sendmill sends one Reply-To address",
            ))
        }
    };
    let mut tags = Vec::with_capacity(email.email_tags.len());
    for (i, tag) in email.email_tags.iter().enumerate() {
        let label = format!("{}:{}", tag.name, tag.value);
        validate::label(&label)
            .map_err(|m| SesError::invalid(&format!("EmailTags[{i}]"), format!("{label}: {m}")))?;
        tags.push(label);
    }
    if let Some(set) = &email.configuration_set_name {
        validate::label(set).map_err(|m| SesError::invalid("ConfigurationSetName", m))?;
    }

    let (mut subject, mut html, mut text, mut template, mut data) =
        (None, None, None, None, Map::new());
    let headers;
    if let Some(simple) = content.simple {
        check_charset(&simple.subject, "Content.Simple.Subject")?;
        let literal = |text: &str, field: &str| {
            literal_template(text, &[]).map_err(|m| SesError::invalid(field, m))
        };
        subject = Some(literal(
            &simple.subject.data,
            "Content.Simple.Subject.Data",
        )?);
        if let Some(t) = &simple.body.text {
            check_charset(t, "Content.Simple.Body.Text")?;
            text = Some(literal(&t.data, "Content.Simple.Body.Text.Data")?);
        }
        if let Some(h) = &simple.body.html {
            check_charset(h, "Content.Simple.Body.Html")?;
            html = Some(literal(&h.data, "Content.Simple.Body.Html.Data")?);
        }
        headers = headers_of(&simple.headers, "Content.Simple.Headers")?;
    } else {
        let t = content.template.expect("one kind is given");
        if t.template_arn.is_some() {
            return Err(SesError::invalid(
                "Content.Template.TemplateArn",
                "not supported by Sendmill; give TemplateName",
            ));
        }
        let name = t
            .template_name
            .ok_or_else(|| SesError::invalid("Content.Template.TemplateName", "required"))?;
        template = Some(name);
        if let Some(json) = &t.template_data {
            data = match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(SesError::invalid(
                        "Content.Template.TemplateData",
                        "must be a JSON object",
                    ))
                }
            };
        }
        headers = headers_of(&t.headers, "Content.Template.Headers")?;
    }

    let mut to: Vec<Recipient> = Vec::new();
    let list = |addresses: &[String], field: &str| {
        addresses
            .iter()
            .enumerate()
            .map(|(i, a)| mailbox(a, &format!("Destination.{field}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    let (mut cc, mut bcc) = (
        Some(list(&destination.cc_addresses, "CcAddresses")?),
        Some(list(&destination.bcc_addresses, "BccAddresses")?),
    );
    if destination.to_addresses.is_empty() {
        return Err(SesError::invalid(
            "Destination.ToAddresses",
            "Sendmill needs at least one To address (Cc and Bcc copies ride with it)",
        ));
    }
    let shown = list(&destination.to_addresses, "ToAddresses")?;
    // One `To` field with every address, as SES writes it.
    let to_list: Vec<Mailbox> = if shown.len() > 1 {
        shown.clone()
    } else {
        Vec::new()
    };
    for Mailbox { email, name } in shown {
        to.push(Recipient {
            email,
            name,
            data: Map::new(),
            metadata: Default::default(),
            cc: cc.take().unwrap_or_default(),
            bcc: bcc.take().unwrap_or_default(),
            headers: Default::default(),
            subject: None,
            send_at: None,
            to_list: to_list.clone(),
        });
    }
    let request = SendRequest {
        from,
        to,
        reply_to,
        subject,
        template: None,
        html,
        text,
        headers,
        tags,
        metadata: Default::default(),
        data,
        campaign_id: None,
        ip_pool: email.configuration_set_name,
        strict_templates: false,
        track_opens: None,
        track_clicks: None,
        list_unsubscribe: None,
        attachments: vec![],
        send_at: None,
        sandbox: false,
        sendgrid_batch: None,
        all_or_nothing: true,
    };
    Ok(Translated::Request {
        request: Box::new(request),
        template,
    })
}

/// Queues a raw message like SMTP submission does.
async fn raw(
    state: &AppState,
    principal: &Principal,
    mime: &[u8],
    recipients: &[String],
) -> Result<String, SesError> {
    let mut submitted = submission::message::read(mime)
        .map_err(|refusal| SesError::invalid("Content.Raw.Data", refusal.text))?;
    let max = state.config.max_body_bytes;
    if submitted.mime.len() > max {
        return Err(SesError {
            status: StatusCode::BAD_REQUEST,
            kind: "MessageRejected",
            message: format!("Content.Raw.Data: the message exceeds {max} bytes"),
        });
    }
    send::check_sender(state, principal, &submitted.from.email).await?;
    let mime = bytes::Bytes::from(std::mem::take(&mut submitted.mime));
    let batch_id = sendmill_wire::BatchId::generate();
    let mut planned: Planned =
        submission::planned(principal, &submitted, &mime, recipients, batch_id);
    planned.source = "ingest";
    send::mark_suppressed(state, principal, &mut planned).await?;
    let sendable = planned.sendable().count();
    if sendable > 0 {
        send::admit(state, principal, sendable as u32).await?;
    }
    crate::queue::write(state, &planned)
        .await
        .map_err(|refused| SesError::from(refused.error))?;
    let accepted = planned
        .results()
        .filter(|r| r.status == RecipientStatus::Queued)
        .count();
    metrics::counter!(crate::metric::INGEST_ACCEPTED_TOTAL).increment(accepted as u64);
    Ok(batch_id.to_string())
}

/// The stored template named `name`: a 404 `NotFoundException` when the account has
/// none of that name.
async fn template_named(
    state: &AppState,
    principal: &Principal,
    name: &str,
) -> Result<TemplateRef, SesError> {
    let template = state
        .store
        .template_by_name(principal.account_id, name)
        .await
        .map_err(|e| SesError::from(ApiError::from(e)))?
        .ok_or_else(|| SesError {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundException",
            message: format!("Content.Template.TemplateName: no template named {name:?}"),
        })?;
    Ok(TemplateRef {
        id: template.id,
        version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_rfc_2047_names_and_are_checked() {
        let m = mailbox("=?UTF-8?B?TcO8bGxlcg==?= <m@ok.test>", "ToAddresses[0]").unwrap();
        assert_eq!(
            (m.email.as_str(), m.name.as_deref()),
            ("m@ok.test", Some("Müller"))
        );
        let m = mailbox("plain@ok.test", "x").unwrap();
        assert_eq!((m.email.as_str(), m.name), ("plain@ok.test", None));
        assert!(mailbox("a@ok.test\r\nBcc: b@ok.test", "x").is_err());
        let e = mailbox("not an address", "Destination.ToAddresses[1]").unwrap_err();
        assert!(
            e.message.starts_with("Destination.ToAddresses[1]"),
            "{}",
            e.message
        );
    }
}
