//! SendGrid v3 Mail Send, `POST /v3/mail/send`: the body SendGrid documents, translated
//! into a native [`SendRequest`] and accepted like `POST /v1/messages`. Answers 202 with
//! an empty body and `X-Message-Id` (the native batch id: `DELETE /v1/batches/{id}`
//! cancels it while held), 200 in sandbox mode, and SendGrid's error shape
//! `{"errors": [{"message", "field", "help"}]}` with its status codes (400, 401, 403,
//! 413, 429). Authentication is the `Authorization: Bearer <key>` SendGrid clients send,
//! with a Sendmill API key (scope `send`).
//!
//! How the models meet:
//! - Each personalization's `to` addresses become native recipients, each with its own
//!   copy and message id (SendGrid events are per recipient too), every copy showing the
//!   personalization's whole `To` field; its `cc` and `bcc` ride with its first `to`, so
//!   each of them gets one copy.
//! - `subject`, `headers`, `custom_args` (→ metadata), `send_at` (→ that recipient's
//!   `send_at`) and `dynamic_template_data` (→ template data) of a personalization
//!   override the request's.
//! - `content` is sent as it is: it is made a Handlebars template that renders to exactly
//!   itself ([`super::literal_template`]), with each `substitutions` key replaced by that
//!   personalization's value (a personalization without the key keeps its text, as
//!   SendGrid does).
//! - `template_id` names a stored template: `d-` and the template's id without dashes
//!   (`d-0192…`); its Handlebars gets `dynamic_template_data`, as SendGrid's dynamic
//!   templates do. Legacy (non-`d-`) templates are refused.
//! - `categories` → tags, `custom_args` → metadata, `ip_pool_name` → `ip_pool`,
//!   `mail_settings.sandbox_mode` → sandbox, `tracking_settings.click_tracking` /
//!   `open_tracking` → click and open tracking, `subscription_tracking.enable` → the
//!   one-click `List-Unsubscribe` headers.
//!
//! - `batch_id` names a batch from `POST /v3/mail/batch`; `POST /v3/user/scheduled_sends`
//!   with `status: "cancel"` cancels its held messages (each ends `dropped`, reason
//!   `cancelled`) and refuses later sends with it. `pause` is refused: a held message is
//!   sent or cancelled, never parked.
//!
//! Refused, naming the field, because Sendmill cannot honour them: `asm` (unsubscribe
//! groups need audiences' lists), `sections`, a personalization's own `from`, more than one `reply_to_list`
//! entry, the `bypass_*` settings (suppressions always apply), `footer`, `ganalytics`,
//! text-link click tracking, open-tracking substitution tags and subscription-tracking
//! text, content other than `text/plain` and `text/html`.

use super::literal_template;
use crate::{
    request::{AttachmentInput, Mailbox, Recipient, SendRequest, TemplateRef},
    send::send_once,
    validate, AppState,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use sendmill_platform::api::ApiError;
use sendmill_store::{
    schedule::{CancelTarget, SendgridBatchStatus},
    Principal, Scope,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use time::OffsetDateTime;

/// The v3 Mail Send body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mail {
    pub personalizations: Vec<Personalization>,
    pub from: Address,
    #[serde(default)]
    pub reply_to: Option<Address>,
    #[serde(default)]
    pub reply_to_list: Vec<Address>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub content: Vec<Content>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub custom_args: BTreeMap<String, String>,
    /// Unix seconds.
    #[serde(default)]
    pub send_at: Option<i64>,
    #[serde(default)]
    pub batch_id: Option<String>,
    #[serde(default)]
    pub asm: Option<Value>,
    #[serde(default)]
    pub ip_pool_name: Option<String>,
    #[serde(default)]
    pub mail_settings: Option<MailSettings>,
    #[serde(default)]
    pub tracking_settings: Option<TrackingSettings>,
    #[serde(default)]
    pub sections: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Personalization {
    pub to: Vec<Address>,
    #[serde(default)]
    pub cc: Vec<Address>,
    #[serde(default)]
    pub bcc: Vec<Address>,
    #[serde(default)]
    pub from: Option<Address>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub substitutions: BTreeMap<String, String>,
    #[serde(default)]
    pub dynamic_template_data: Map<String, Value>,
    #[serde(default)]
    pub custom_args: BTreeMap<String, String>,
    /// Unix seconds.
    #[serde(default)]
    pub send_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Base64.
    pub content: String,
    pub filename: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub disposition: Option<String>,
    #[serde(default)]
    pub content_id: Option<String>,
}

/// `{"enable": …}` and the settings that come with it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    #[serde(default)]
    pub enable: Option<bool>,
    #[serde(default)]
    pub enable_text: Option<bool>,
    #[serde(default)]
    pub substitution_tag: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    #[serde(default)]
    pub utm_source: Option<String>,
    #[serde(default)]
    pub utm_medium: Option<String>,
    #[serde(default)]
    pub utm_term: Option<String>,
    #[serde(default)]
    pub utm_content: Option<String>,
    #[serde(default)]
    pub utm_campaign: Option<String>,
}

impl Setting {
    fn on(&self) -> bool {
        self.enable == Some(true)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    #[serde(default)]
    pub bypass_list_management: Option<Setting>,
    #[serde(default)]
    pub bypass_spam_management: Option<Setting>,
    #[serde(default)]
    pub bypass_bounce_management: Option<Setting>,
    #[serde(default)]
    pub bypass_unsubscribe_management: Option<Setting>,
    #[serde(default)]
    pub footer: Option<Setting>,
    #[serde(default)]
    pub sandbox_mode: Option<Setting>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
    #[serde(default)]
    pub click_tracking: Option<Setting>,
    #[serde(default)]
    pub open_tracking: Option<Setting>,
    #[serde(default)]
    pub subscription_tracking: Option<Setting>,
    #[serde(default)]
    pub ganalytics: Option<Setting>,
}

/// One entry of SendGrid's error body.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ErrorItem {
    pub message: String,
    pub field: Option<String>,
    pub help: Option<String>,
}

/// A refusal in SendGrid's shape.
#[derive(Debug)]
pub struct SgError {
    pub status: StatusCode,
    pub item: ErrorItem,
    pub retry_after: Option<u64>,
}

impl SgError {
    /// A 400 naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SgError {
            status: StatusCode::BAD_REQUEST,
            item: ErrorItem {
                message: message.into(),
                field: Some(field.into()),
                help: None,
            },
            retry_after: None,
        }
    }
}

/// A native recipient's field (`to[3].metadata.k`) in SendGrid's terms
/// (`personalizations[1].custom_args.k`); other fields as they are.
fn personalization_field(field: &str, origins: &[(usize, usize)]) -> String {
    let parsed = field.strip_prefix("to[").and_then(|rest| {
        let (n, rest) = rest.split_once(']')?;
        Some((origins.get(n.parse::<usize>().ok()?)?, rest))
    });
    let Some((&(i, j), rest)) = parsed else {
        return field.to_owned();
    };
    let p = format!("personalizations[{i}]");
    match rest {
        ".email" | ".name" | "" => format!("{p}.to[{j}]{rest}"),
        _ => match rest.strip_prefix(".metadata") {
            Some(key) => format!("{p}.custom_args{key}"),
            None => format!("{p}{rest}"),
        },
    }
}

/// Native field names that differ from SendGrid's.
fn sendgrid_field(native: &str) -> String {
    match native {
        "to" => "personalizations".into(),
        "html" | "text" => "content".into(),
        "tags" => "categories".into(),
        "metadata" => "custom_args".into(),
        "ip_pool" => "ip_pool_name".into(),
        other => other.to_owned(),
    }
}

impl From<ApiError> for SgError {
    fn from(error: ApiError) -> Self {
        // SendGrid answers a sender it does not know as a verified identity with 403.
        if matches!(
            error.code,
            "unknown_sending_domain" | "unverified_sending_domain"
        ) {
            return SgError {
                status: StatusCode::FORBIDDEN,
                item: ErrorItem {
                    message: error.message,
                    field: Some("from".into()),
                    help: None,
                },
                retry_after: None,
            };
        }
        let message = match error.status {
            StatusCode::UNAUTHORIZED => {
                "The provided authorization grant is invalid, expired, or revoked".to_owned()
            }
            _ => error.message,
        };
        SgError {
            // SendGrid answers every validation failure with 400.
            status: match error.status {
                StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT => StatusCode::BAD_REQUEST,
                status => status,
            },
            item: ErrorItem {
                message,
                field: error.field.as_deref().map(sendgrid_field),
                help: None,
            },
            retry_after: error.retry_after,
        }
    }
}

/// An unreadable body (too large: 413), in SendGrid's shape.
impl From<BytesRejection> for SgError {
    fn from(rejection: BytesRejection) -> Self {
        SgError {
            status: rejection.status(),
            item: ErrorItem {
                message: rejection.body_text(),
                field: None,
                help: None,
            },
            retry_after: None,
        }
    }
}

impl IntoResponse for SgError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "errors": [self.item] })),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `POST /v3/mail/send`.
pub async fn mail_send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&state, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SgError> {
    let principal = sender(state, headers).await?;
    let bytes = body?;
    let mail: Mail =
        sendmill_platform::body::parse(&bytes).map_err(|e| SgError::invalid(e.field, e.message))?;
    let (request, origins) = translate(mail)?;
    if let Some(batch) = &request.sendgrid_batch {
        match state
            .store
            .sendgrid_batch(principal.account_id, batch)
            .await
            .map_err(ApiError::from)?
        {
            Some(SendgridBatchStatus::Active) => {}
            Some(SendgridBatchStatus::Cancel) => {
                return Err(SgError::invalid("batch_id", "this batch was cancelled"))
            }
            None => {
                return Err(SgError::invalid(
                    "batch_id",
                    "unknown batch id: create one with POST /v3/mail/batch",
                ))
            }
        }
    }
    let answer = send_once(state, &principal, headers, &bytes, request)
        .await
        .map_err(|mut error| {
            error.field = error.field.map(|f| personalization_field(&f, &origins));
            SgError::from(error)
        })?;
    let mut response = match answer.status {
        StatusCode::OK => StatusCode::OK.into_response(),
        _ => StatusCode::ACCEPTED.into_response(),
    };
    if let Some(batch) = answer.batch_id() {
        if let Ok(value) = HeaderValue::from_str(&batch) {
            response.headers_mut().insert("x-message-id", value);
        }
    }
    Ok(response)
}

/// The principal of the request's Bearer key, which must have the `send` scope.
async fn sender(state: &AppState, headers: &HeaderMap) -> Result<Principal, SgError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    let principal = state.auth.authenticate(key).await?;
    if !principal.has(Scope::Send) {
        return Err(SgError {
            status: StatusCode::FORBIDDEN,
            item: ErrorItem {
                message: "access forbidden: this key has no send scope".into(),
                field: None,
                help: None,
            },
            retry_after: None,
        });
    }
    Ok(principal)
}

/// `POST /v3/mail/batch`: a new batch id (201 `{"batch_id"}`).
pub async fn create_batch(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        let principal = sender(&state, &headers).await?;
        let id = state
            .store
            .create_sendgrid_batch(principal.account_id)
            .await
            .map_err(ApiError::from)?;
        Ok::<_, SgError>((
            StatusCode::CREATED,
            Json(serde_json::json!({ "batch_id": id })),
        ))
    };
    result.await.into_response()
}

/// `GET /v3/mail/batch/{batch_id}`: 200 `{"batch_id"}` when the account has it, else 400.
pub async fn get_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let principal = sender(&state, &headers).await?;
        state
            .store
            .sendgrid_batch(principal.account_id, &id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| SgError::invalid("batch_id", "invalid batch id"))?;
        Ok::<_, SgError>(Json(serde_json::json!({ "batch_id": id })))
    };
    result.await.into_response()
}

/// The body of `POST /v3/user/scheduled_sends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledSend {
    pub batch_id: String,
    pub status: String,
}

/// `POST /v3/user/scheduled_sends` with `status: "cancel"`: cancels the batch's held
/// messages (each ends `dropped`, reason `cancelled`) and refuses later sends with it;
/// 201 `{"batch_id", "status"}`. `pause` is refused: a held message is either sent or
/// cancelled.
pub async fn scheduled_send(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let principal = sender(&state, &headers).await?;
        let bytes = body?;
        let input: ScheduledSend = sendmill_platform::body::parse(&bytes)
            .map_err(|e| SgError::invalid(e.field, e.message))?;
        if input.status != "cancel" {
            return Err(SgError::invalid(
                "status",
                "only cancel is supported: Sendmill holds a scheduled message until it is sent or cancelled",
            ));
        }
        let account = principal.account_id;
        if !state
            .store
            .cancel_sendgrid_batch(account, &input.batch_id)
            .await
            .map_err(ApiError::from)?
        {
            return Err(SgError::invalid("batch_id", "invalid batch id"));
        }
        let target = CancelTarget::SendgridBatch(input.batch_id.clone());
        match crate::schedule::cancel(&state, account, target).await {
            // No held message (none scheduled yet, or all released): the batch is
            // cancelled all the same, and later sends with it are refused.
            Ok(_) => {}
            Err(e) if e.status == StatusCode::NOT_FOUND || e.status == StatusCode::CONFLICT => {}
            Err(e) => return Err(e.into()),
        }
        Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({"batch_id": input.batch_id, "status": "cancel"})),
        ))
    };
    result.await.into_response()
}

/// `GET /v3/user/scheduled_sends`: the cancelled batches, `[{"batch_id", "status"}]`.
pub async fn scheduled_sends(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        let principal = sender(&state, &headers).await?;
        let ids = state
            .store
            .cancelled_sendgrid_batches(principal.account_id)
            .await
            .map_err(ApiError::from)?;
        let list: Vec<Value> = ids
            .into_iter()
            .map(|id| serde_json::json!({"batch_id": id, "status": "cancel"}))
            .collect();
        Ok::<_, SgError>(Json(list))
    };
    result.await.into_response()
}

fn check_mailbox(address: &Address, field: &str) -> Result<Mailbox, SgError> {
    let email = validate::email(&address.email)
        .map_err(|m| SgError::invalid(format!("{field}.email"), m))?;
    if let Some(name) = &address.name {
        validate::header_text(name, validate::MAX_NAME)
            .map_err(|m| SgError::invalid(format!("{field}.name"), m))?;
    }
    Ok(Mailbox {
        email,
        name: address.name.clone().filter(|n| !n.is_empty()),
    })
}

fn check_headers(headers: &BTreeMap<String, String>, field: &str) -> Result<(), SgError> {
    for (name, value) in headers {
        validate::header_name(name)
            .and_then(|()| validate::header_value(value))
            .map_err(|m| SgError::invalid(format!("{field}.{name}"), m))?;
    }
    Ok(())
}

fn unix_time(seconds: i64, field: &str) -> Result<OffsetDateTime, SgError> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|_| SgError::invalid(field, "not a Unix time in seconds"))
}

/// What the request's settings ask of render: (sandbox, track_clicks, track_opens,
/// list_unsubscribe), each `None` when not given.
type Switches = (bool, Option<bool>, Option<bool>, Option<bool>);

fn settings(mail: &Mail) -> Result<Switches, SgError> {
    let refuse = |field: &str, why: &str| Err(SgError::invalid(field, why));
    let mut sandbox = false;
    if let Some(m) = &mail.mail_settings {
        for (name, setting) in [
            ("bypass_list_management", &m.bypass_list_management),
            ("bypass_spam_management", &m.bypass_spam_management),
            ("bypass_bounce_management", &m.bypass_bounce_management),
            (
                "bypass_unsubscribe_management",
                &m.bypass_unsubscribe_management,
            ),
        ] {
            if setting.as_ref().is_some_and(Setting::on) {
                return refuse(
                    &format!("mail_settings.{name}.enable"),
                    "Sendmill always applies its suppression lists; this cannot be bypassed",
                );
            }
        }
        if m.footer.as_ref().is_some_and(Setting::on) {
            return refuse(
                "mail_settings.footer.enable",
                "footers are not supported: put the footer in the content",
            );
        }
        sandbox = m.sandbox_mode.as_ref().is_some_and(Setting::on);
    }
    let (mut clicks, mut opens, mut unsubscribe) = (None, None, None);
    if let Some(t) = &mail.tracking_settings {
        if let Some(c) = &t.click_tracking {
            if c.enable_text == Some(true) {
                return refuse(
                    "tracking_settings.click_tracking.enable_text",
                    "Sendmill tracks clicks in the HTML part only",
                );
            }
            clicks = c.enable;
        }
        if let Some(o) = &t.open_tracking {
            if o.substitution_tag.is_some() {
                return refuse(
                    "tracking_settings.open_tracking.substitution_tag",
                    "the open-tracking pixel goes at the end of the HTML part; a substitution tag is not supported",
                );
            }
            opens = o.enable;
        }
        if let Some(s) = &t.subscription_tracking {
            if s.text.is_some() || s.html.is_some() || s.substitution_tag.is_some() {
                return refuse(
                    "tracking_settings.subscription_tracking",
                    "Sendmill offers unsubscribing through List-Unsubscribe headers (RFC 8058), not a link inserted into the content; give only enable",
                );
            }
            unsubscribe = s.enable;
        }
        if t.ganalytics.as_ref().is_some_and(Setting::on) {
            return refuse(
                "tracking_settings.ganalytics.enable",
                "Google Analytics link tagging is not supported: tag the links in the content",
            );
        }
    }
    Ok((sandbox, clicks, opens, unsubscribe))
}

/// A stored template's id from a dynamic template id (`d-` and 32 hex digits).
fn template_id(id: &str) -> Result<uuid::Uuid, SgError> {
    id.strip_prefix("d-")
        .filter(|hex| hex.len() == 32)
        .and_then(|hex| uuid::Uuid::try_parse(hex).ok())
        .ok_or_else(|| {
            SgError::invalid(
                "template_id",
                "give a dynamic template id: d- and a stored template's id without dashes (legacy templates are not supported)",
            )
        })
}

/// Where each native recipient came from: (personalization, index in its `to`).
pub type Origins = Vec<(usize, usize)>;

/// The native request for `mail` (see the module doc) and where each of its recipients
/// came from, to name fields in SendGrid's terms. Pure.
pub fn translate(mail: Mail) -> Result<(SendRequest, Origins), SgError> {
    if mail.asm.is_some() {
        return Err(SgError::invalid(
            "asm",
            "unsubscribe groups are not supported: Sendmill has no subscription lists yet",
        ));
    }
    if mail.sections.is_some() {
        return Err(SgError::invalid(
            "sections",
            "sections (legacy templates) are not supported",
        ));
    }
    let (sandbox, track_clicks, track_opens, list_unsubscribe) = settings(&mail)?;
    if mail.personalizations.is_empty() {
        return Err(SgError::invalid(
            "personalizations",
            "at least one personalization is required",
        ));
    }
    let from = check_mailbox(&mail.from, "from")?;
    let reply_to = match (&mail.reply_to, mail.reply_to_list.as_slice()) {
        (Some(_), [_, ..]) => {
            return Err(SgError::invalid(
                "reply_to_list",
                "give reply_to or reply_to_list, not both",
            ))
        }
        (Some(r), []) => Some(check_mailbox(r, "reply_to")?),
        (None, [r]) => Some(check_mailbox(r, "reply_to_list[0]")?),
        (None, []) => None,
        (None, [_, _, ..]) => {
            return Err(SgError::invalid(
                "reply_to_list",
                "Sendmill sends one Reply-To address",
            ))
        }
    };
    check_headers(&mail.headers, "headers")?;

    // Substitution keys, each a template variable `sg_sub_<n>` inserted as it is.
    let keys: BTreeSet<&String> = mail
        .personalizations
        .iter()
        .flat_map(|p| p.substitutions.keys())
        .collect();
    let keys: Vec<String> = keys.into_iter().cloned().collect();
    let placeholders: Vec<(String, String)> = keys
        .iter()
        .enumerate()
        .map(|(n, key)| (key.clone(), format!("{{{{{{sg_sub_{n}}}}}}}")))
        .collect();
    let literal = |text: &str, field: &str| {
        literal_template(text, &placeholders).map_err(|m| SgError::invalid(field, m))
    };

    if mail.template_id.is_none() {
        if let Some(i) = mail
            .personalizations
            .iter()
            .position(|p| !p.dynamic_template_data.is_empty())
        {
            return Err(SgError::invalid(
                format!("personalizations[{i}].dynamic_template_data"),
                "dynamic_template_data needs a template_id",
            ));
        }
    }
    let (mut html, mut text, template) = match &mail.template_id {
        Some(id) => {
            if !mail.content.is_empty() {
                return Err(SgError::invalid(
                    "content",
                    "give template_id or content, not both",
                ));
            }
            if !keys.is_empty() {
                return Err(SgError::invalid(
                    "personalizations[0].substitutions",
                    "dynamic templates take dynamic_template_data, not substitutions",
                ));
            }
            (
                None,
                None,
                Some(TemplateRef {
                    id: template_id(id)?,
                    version: None,
                }),
            )
        }
        None => (None, None, None),
    };
    for (i, content) in mail.content.iter().enumerate() {
        let field = format!("content[{i}].type");
        let slot = match content.kind.to_ascii_lowercase().as_str() {
            "text/plain" => &mut text,
            "text/html" => &mut html,
            _ => {
                return Err(SgError::invalid(
                    field,
                    "Sendmill sends text/plain and text/html content only",
                ))
            }
        };
        if slot.is_some() {
            return Err(SgError::invalid(
                field,
                "each content type may be given once",
            ));
        }
        if content.value.is_empty() {
            return Err(SgError::invalid(
                format!("content[{i}].value"),
                "the content value must be at least one character",
            ));
        }
        *slot = Some(literal(&content.value, &format!("content[{i}].value"))?);
    }
    if template.is_none() && html.is_none() && text.is_none() {
        return Err(SgError::invalid(
            "content",
            "give content (text/plain, text/html or both) or a template_id",
        ));
    }
    let subject = match &mail.subject {
        Some(s) => Some(literal(s, "subject")?),
        None => None,
    };

    let mut to = Vec::new();
    let mut origins = Origins::new();
    for (i, p) in mail.personalizations.iter().enumerate() {
        let field = |name: &str| format!("personalizations[{i}].{name}");
        if p.from.is_some() {
            return Err(SgError::invalid(
                field("from"),
                "one sender per request: give from at the top level only",
            ));
        }
        if p.to.is_empty() {
            return Err(SgError::invalid(
                field("to"),
                "each personalization needs at least one to address",
            ));
        }
        check_headers(&p.headers, &field("headers"))?;
        let own_subject = match &p.subject {
            Some(s) => Some(literal(s, &field("subject"))?),
            // With a template, the request's subject overrides the template's.
            None if template.is_some() => subject.clone(),
            None => None,
        };
        let send_at = p
            .send_at
            .map(|at| unix_time(at, &field("send_at")))
            .transpose()?;
        let mut data = p.dynamic_template_data.clone();
        for (n, key) in keys.iter().enumerate() {
            // Without the key, the tag stays as written (SendGrid's behaviour).
            let value = p.substitutions.get(key).unwrap_or(key);
            data.insert(format!("sg_sub_{n}"), Value::String(value.clone()));
        }
        let cc =
            p.cc.iter()
                .enumerate()
                .map(|(j, a)| check_mailbox(a, &field(&format!("cc[{j}]"))))
                .collect::<Result<Vec<_>, _>>()?;
        let bcc = p
            .bcc
            .iter()
            .enumerate()
            .map(|(j, a)| check_mailbox(a, &field(&format!("bcc[{j}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut cc, mut bcc) = (Some(cc), Some(bcc));
        let shown =
            p.to.iter()
                .enumerate()
                .map(|(j, a)| check_mailbox(a, &field(&format!("to[{j}]"))))
                .collect::<Result<Vec<_>, _>>()?;
        // One `To` field for the personalization, as SendGrid writes it.
        let to_list = if shown.len() > 1 {
            shown.clone()
        } else {
            Vec::new()
        };
        for (j, mailbox) in shown.into_iter().enumerate() {
            origins.push((i, j));
            to.push(Recipient {
                email: mailbox.email,
                name: mailbox.name,
                data: data.clone(),
                metadata: p.custom_args.clone(),
                // Copies of cc and bcc once per personalization, with its first `to`.
                cc: cc.take().unwrap_or_default(),
                bcc: bcc.take().unwrap_or_default(),
                headers: p.headers.clone(),
                subject: own_subject.clone(),
                send_at,
                to_list: to_list.clone(),
            });
        }
    }

    let mut attachments = Vec::with_capacity(mail.attachments.len());
    for (i, a) in mail.attachments.into_iter().enumerate() {
        let inline = match a.disposition.as_deref() {
            None | Some("attachment") => false,
            Some("inline") => true,
            Some(_) => {
                return Err(SgError::invalid(
                    format!("attachments[{i}].disposition"),
                    "must be inline or attachment",
                ))
            }
        };
        match (inline, &a.content_id) {
            (true, None) => {
                return Err(SgError::invalid(
                    format!("attachments[{i}].content_id"),
                    "an inline attachment needs a content_id",
                ))
            }
            (false, Some(_)) => {
                return Err(SgError::invalid(
                    format!("attachments[{i}].content_id"),
                    "a content_id is for inline attachments (disposition inline)",
                ))
            }
            _ => {}
        }
        attachments.push(AttachmentInput {
            filename: a.filename,
            content_type: a.kind.unwrap_or_else(|| "application/octet-stream".into()),
            content: a.content,
            content_id: a.content_id,
        });
    }
    for (i, category) in mail.categories.iter().enumerate() {
        validate::label(category).map_err(|m| SgError::invalid(format!("categories[{i}]"), m))?;
    }

    let request = SendRequest {
        from,
        to,
        reply_to,
        subject: if template.is_some() { None } else { subject },
        template,
        html,
        text,
        headers: mail.headers,
        tags: mail.categories,
        metadata: mail.custom_args,
        data: Map::new(),
        campaign_id: None,
        ip_pool: mail.ip_pool_name,
        strict_templates: false,
        track_opens,
        track_clicks,
        list_unsubscribe,
        attachments,
        send_at: mail
            .send_at
            .map(|at| unix_time(at, "send_at"))
            .transpose()?,
        sandbox,
        sendgrid_batch: mail.batch_id,
        all_or_nothing: true,
    };
    Ok((request, origins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: Value) -> Result<SendRequest, SgError> {
        let mail: Mail = serde_json::from_value(json).expect("parses");
        translate(mail).map(|(request, _)| request)
    }

    #[test]
    fn native_fields_are_named_in_sendgrids_terms() {
        let origins = vec![(0, 0), (0, 1), (1, 0)];
        for (native, sendgrid) in [
            ("to[1].email", "personalizations[0].to[1].email"),
            ("to[2].subject", "personalizations[1].subject"),
            ("to[2].metadata.k", "personalizations[1].custom_args.k"),
            ("to[0].cc[1].email", "personalizations[0].cc[1].email"),
            ("to[9].email", "to[9].email"),
            ("from", "from"),
        ] {
            assert_eq!(personalization_field(native, &origins), sendgrid);
        }
    }

    fn field(result: Result<SendRequest, SgError>) -> String {
        result.unwrap_err().item.field.unwrap_or_default()
    }

    #[test]
    fn personalizations_become_recipients() {
        let r = parse(serde_json::json!({
            "from": {"email": "news@example.test", "name": "News"},
            "subject": "Hi -name-",
            "content": [{"type": "text/plain", "value": "Hello -name- {{x}}"},
                        {"type": "text/html", "value": "<p>Hello -name-</p>"}],
            "personalizations": [
                {"to": [{"email": "a@ok.test"}, {"email": "b@ok.test"}], "cc": [{"email": "c@ok.test"}],
                 "substitutions": {"-name-": "Ada"}, "custom_args": {"k": "v"}, "send_at": 4102444800u64},
                {"to": [{"email": "d@ok.test"}], "subject": "Own"}
            ],
            "categories": ["welcome"], "custom_args": {"top": "1"}, "ip_pool_name": "warm",
            "tracking_settings": {"click_tracking": {"enable": true}, "open_tracking": {"enable": false}}
        }))
        .unwrap();
        let emails: Vec<&str> = r.to.iter().map(|t| t.email.as_str()).collect();
        assert_eq!(emails, ["a@ok.test", "b@ok.test", "d@ok.test"]);
        assert_eq!(r.to[0].cc.len(), 1);
        assert!(r.to[1].cc.is_empty(), "cc rides with the first to only");
        let shown: Vec<&str> = r.to[1].to_list.iter().map(|m| m.email.as_str()).collect();
        assert_eq!(
            shown,
            ["a@ok.test", "b@ok.test"],
            "one To field per personalization"
        );
        assert!(r.to[2].to_list.is_empty(), "a single to shows itself");
        assert_eq!(r.to[0].data["sg_sub_0"], "Ada");
        assert_eq!(
            r.to[2].data["sg_sub_0"], "-name-",
            "no value: the tag stays"
        );
        assert_eq!(r.to[0].metadata["k"], "v");
        assert_eq!(r.metadata["top"], "1");
        assert!(r.to[0].send_at.is_some() && r.to[2].send_at.is_none());
        assert_eq!(r.to[2].subject.as_deref(), Some("Own"));
        assert_eq!(r.subject.as_deref(), Some("Hi {{{sg_sub_0}}}"));
        assert_eq!(r.text.as_deref(), Some("Hello {{{sg_sub_0}}} \\{{x}}"));
        assert_eq!(r.tags, ["welcome"]);
        assert_eq!(r.ip_pool.as_deref(), Some("warm"));
        assert_eq!((r.track_clicks, r.track_opens), (Some(true), Some(false)));
    }

    #[test]
    fn dynamic_templates_name_stored_templates() {
        let r = parse(serde_json::json!({
            "from": {"email": "news@example.test"},
            "template_id": "d-0192d5a0c0de7000800000000000abcd",
            "personalizations": [{"to": [{"email": "a@ok.test"}], "dynamic_template_data": {"n": 1}}]
        }))
        .unwrap();
        assert_eq!(
            r.template.unwrap().id.to_string(),
            "0192d5a0-c0de-7000-8000-00000000abcd"
        );
        assert_eq!(r.to[0].data["n"], 1);
        assert!(r.subject.is_none());
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let base = || {
            serde_json::json!({
                "from": {"email": "news@example.test"},
                "content": [{"type": "text/plain", "value": "x"}],
                "personalizations": [{"to": [{"email": "a@ok.test"}]}]
            })
        };
        let with = |path: &[&str], value: Value| {
            let mut json = base();
            let mut at = &mut json;
            for (n, key) in path.iter().enumerate() {
                if n + 1 == path.len() {
                    at[*key] = value.clone();
                } else {
                    if at.get(*key).is_none() {
                        at[*key] = serde_json::json!({});
                    }
                    at = &mut at[*key];
                }
            }
            json
        };
        assert_eq!(
            field(parse(with(&["asm"], serde_json::json!({"group_id": 1})))),
            "asm"
        );
        assert_eq!(
            field(parse(with(
                &["mail_settings", "bypass_list_management"],
                serde_json::json!({"enable": true})
            ))),
            "mail_settings.bypass_list_management.enable"
        );
        assert_eq!(
            field(parse(with(&["template_id"], "legacy-id".into()))),
            "content"
        );
        assert_eq!(
            field(parse(with(
                &["content"],
                serde_json::json!([{"type": "text/calendar", "value": "x"}])
            ))),
            "content[0].type"
        );
        assert_eq!(
            field(parse(with(
                &["personalizations"],
                serde_json::json!([{"to": [{"email": "not an address"}]}])
            ))),
            "personalizations[0].to[0].email"
        );
        assert_eq!(
            field(parse(with(
                &["personalizations"],
                serde_json::json!([{"to": [{"email": "a@ok.test"}], "headers": {"Bad Name": "x"}}])
            ))),
            "personalizations[0].headers.Bad Name"
        );
        assert_eq!(
            field(parse(with(&["personalizations"], serde_json::json!([])))),
            "personalizations"
        );
        let mut json = base();
        json["content"] = serde_json::json!([]);
        json["template_id"] = "nope".into();
        assert_eq!(field(parse(json)), "template_id");
    }
}
