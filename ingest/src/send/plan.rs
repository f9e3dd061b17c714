//! Validating a send request and turning it into one `requested` record per recipient
//! copy. Pure: no I/O, the clock and batch id passed in, so every refusal is testable
//! and a refused request has changed nothing.

use super::{CopyKind, RecipientResult, RecipientStatus};
use crate::{
    request::{self, SendRequest},
    validate, Config,
};
use axum::http::StatusCode;
use sendmill_platform::api::ApiError;
use sendmill_store::Principal;
use sendmill_wire::{
    Attachment, BatchId, EmailAddress, Header, Lane, MessageContext, MessageId, RenderOptions,
    RequestedV1,
};
use std::collections::BTreeMap;
use time::OffsetDateTime;

const MAX_TAGS: usize = 10;
const MAX_METADATA: usize = 32;
const MAX_METADATA_VALUE: usize = 1000;

/// A validated request: per recipient copy, its result and (unless refused) its record.
pub struct Planned {
    pub from: EmailAddress,
    pub copies: Vec<(RecipientResult, Option<RequestedV1>)>,
    /// The front door it came through, the `stage` of its events: `ingest` (the API) or
    /// `submission` (SMTP).
    pub source: &'static str,
    /// The request's `send_at` when it is still ahead (each copy's own is in its result).
    pub send_at: Option<OffsetDateTime>,
    /// The SendGrid batch id its held copies are kept under.
    pub sendgrid_batch: Option<String>,
}

impl Planned {
    pub(crate) fn sendable(&self) -> impl Iterator<Item = (&RecipientResult, &RequestedV1)> {
        self.copies
            .iter()
            .filter(|(r, _)| r.status == RecipientStatus::Queued)
            .filter_map(|(r, record)| record.as_ref().map(|record| (r, record)))
    }

    pub(crate) fn results(&self) -> impl Iterator<Item = &RecipientResult> {
        self.copies.iter().map(|(r, _)| r)
    }

    pub(crate) fn into_results(self) -> Vec<RecipientResult> {
        self.copies.into_iter().map(|(r, _)| r).collect()
    }

    /// The records that would be queued (tests, benchmarks).
    pub fn records(&self) -> Vec<&RequestedV1> {
        self.copies.iter().filter_map(|(_, r)| r.as_ref()).collect()
    }
}

/// Validates a parsed request and turns it into one record per recipient copy. Pure.
/// Request-wide errors refuse the request; an error inside one recipient refuses only
/// that recipient, unless every recipient is refused.
pub fn plan(
    principal: &Principal,
    request: SendRequest,
    config: &Config,
    now: OffsetDateTime,
    batch_id: BatchId,
) -> Result<Planned, ApiError> {
    use validate::*;

    let mut request = request;
    request.from.email = email(&request.from.email).map_err(|m| ApiError::invalid("from", m))?;
    if let Some(name) = &request.from.name {
        header_text(name, MAX_NAME).map_err(|m| ApiError::invalid("from.name", m))?;
    }
    if let Some(reply_to) = &mut request.reply_to {
        reply_to.email = email(&reply_to.email).map_err(|m| ApiError::invalid("reply_to", m))?;
        if let Some(name) = &reply_to.name {
            header_text(name, MAX_NAME).map_err(|m| ApiError::invalid("reply_to.name", m))?;
        }
    }
    if request.to.is_empty() {
        return Err(ApiError::invalid(
            "to",
            "at least one recipient is required",
        ));
    }
    let copies: usize = request
        .to
        .iter()
        .map(|r| 1 + r.cc.len() + r.bcc.len())
        .sum();
    if copies > config.max_recipients {
        return Err(ApiError::invalid(
            "to",
            format!(
                "at most {} recipients (to, cc and bcc together) per request",
                config.max_recipients
            ),
        ));
    }
    let subject = request.subject.clone().unwrap_or_default();
    // Required unless every recipient has its own.
    if !subject.is_empty() || request.to.iter().any(|r| r.subject.is_none()) {
        check_subject(&subject, "subject")?;
    }
    let send_at = schedule_time(request.send_at, now, config, "send_at")?;
    let html = request.html.filter(|h| !h.is_empty());
    let text = request.text.filter(|t| !t.is_empty());
    if html.is_none() && text.is_none() {
        return Err(ApiError::invalid("html", "give html, text or both"));
    }
    check_headers(&request.headers, "headers")?;
    if request.tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    for (i, tag) in request.tags.iter().enumerate() {
        label(tag).map_err(|m| ApiError::invalid(format!("tags[{i}]"), m))?;
    }
    check_metadata(&request.metadata, "metadata")?;
    if let Some(campaign) = &request.campaign_id {
        label(campaign).map_err(|m| ApiError::invalid("campaign_id", m))?;
    }
    if let Some(pool) = &request.ip_pool {
        label(pool).map_err(|m| ApiError::invalid("ip_pool", m))?;
    }

    let attachments = decode_attachments(&request.attachments, config.max_attachment_bytes)?;
    let lane = if request.campaign_id.is_some() {
        Lane::Bulk
    } else {
        Lane::Transactional
    };
    let settings = &principal.settings;
    let options = RenderOptions {
        strict: request.strict_templates,
        track_opens: request.track_opens.unwrap_or(settings.track_opens),
        track_clicks: request.track_clicks.unwrap_or(settings.track_clicks),
        // Bulk senders must offer one-click unsubscribe (Gmail, Yahoo); others may.
        list_unsubscribe: request.list_unsubscribe.unwrap_or(lane == Lane::Bulk),
    };
    let from = EmailAddress {
        email: request.from.email,
        name: request.from.name,
    };
    let reply_to = request.reply_to.map(|r| EmailAddress {
        email: r.email,
        name: r.name,
    });

    let mut planned = Planned {
        from: from.clone(),
        copies: Vec::with_capacity(copies),
        source: "ingest",
        send_at,
        sendgrid_batch: request.sendgrid_batch.clone(),
    };
    let mut index: u32 = 0;
    let mut first_error = None;
    let all_or_nothing = request.all_or_nothing;
    for (i, mut r) in request.to.into_iter().enumerate() {
        let refused = |kind, to: &str, error: ApiError| RecipientResult {
            to: to.to_owned(),
            kind,
            status: RecipientStatus::Invalid,
            message_id: None,
            reason: Some(error.message),
            field: error.field,
            send_at: None,
        };
        let checked = check_recipient(i, &mut r).and_then(|()| {
            let send_at = match r.send_at {
                Some(at) => schedule_time(Some(at), now, config, &format!("to[{i}].send_at"))?,
                None => send_at,
            };
            let subject = match &r.subject {
                Some(own) => {
                    check_subject(own, &format!("to[{i}].subject"))?;
                    own.clone()
                }
                None => subject.clone(),
            };
            Ok((send_at, subject))
        });
        let (copy_send_at, copy_subject) = match checked {
            Ok(checked) => checked,
            Err(error) if all_or_nothing => return Err(error),
            Err(error) => {
                first_error.get_or_insert_with(|| error.clone());
                // Every copy of a refused recipient is refused with it.
                planned
                    .copies
                    .push((refused(CopyKind::To, &r.email, error.clone()), None));
                for m in &r.cc {
                    planned
                        .copies
                        .push((refused(CopyKind::Cc, &m.email, error.clone()), None));
                }
                for m in &r.bcc {
                    planned
                        .copies
                        .push((refused(CopyKind::Bcc, &m.email, error.clone()), None));
                }
                continue;
            }
        };
        let mut data = request.data.clone();
        data.extend(r.data);
        let mut metadata = request.metadata.clone();
        metadata.extend(r.metadata);
        let mut headers = request.headers.clone();
        headers.extend(r.headers);
        let headers: Vec<Header> = headers
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect();
        let to = EmailAddress {
            email: r.email,
            name: r.name,
        };
        let to_list: Vec<EmailAddress> = r
            .to_list
            .iter()
            .map(|m| EmailAddress {
                email: m.email.clone(),
                name: m.name.clone(),
            })
            .collect();
        let cc: Vec<EmailAddress> =
            r.cc.iter()
                .map(|m| EmailAddress {
                    email: m.email.clone(),
                    name: m.name.clone(),
                })
                .collect();
        let envelopes = std::iter::once((CopyKind::To, None))
            .chain(r.cc.iter().map(|m| (CopyKind::Cc, Some(m.email.clone()))))
            .chain(r.bcc.iter().map(|m| (CopyKind::Bcc, Some(m.email.clone()))));
        for (kind, envelope_to) in envelopes {
            let message_id = MessageId::derive(batch_id, index);
            index += 1;
            let record = RequestedV1 {
                message_id,
                account_id: principal.account_id,
                batch_id,
                lane,
                accepted_at: now,
                from: from.clone(),
                to: to.clone(),
                to_list: to_list.clone(),
                cc: cc.clone(),
                envelope_to,
                reply_to: reply_to.clone(),
                subject: copy_subject.clone(),
                html: html.clone(),
                text: text.clone(),
                headers: headers.clone(),
                data: data.clone(),
                context: MessageContext {
                    tags: request.tags.clone(),
                    metadata: metadata.clone(),
                    campaign_id: request.campaign_id.clone(),
                    ip_pool: request.ip_pool.clone(),
                    requested_confirmation: false,
                },
                options: options.clone(),
                attachments: attachments.clone(),
                mime: None,
                shared: None,
            };
            let result = RecipientResult {
                to: record.recipient().to_owned(),
                kind,
                status: RecipientStatus::Queued,
                message_id: Some(message_id),
                reason: None,
                field: None,
                send_at: copy_send_at,
            };
            planned.copies.push((result, Some(record)));
        }
    }
    if planned.records().is_empty() {
        return Err(first_error.unwrap_or_else(|| ApiError::invalid("to", "no valid recipient")));
    }
    Ok(planned)
}

fn check_subject(subject: &str, field: &str) -> Result<(), ApiError> {
    if subject.trim().is_empty() {
        return Err(ApiError::invalid(field, "subject is required"));
    }
    validate::header_text(subject, validate::MAX_SUBJECT).map_err(|m| ApiError::invalid(field, m))
}

/// When to send: `None` for now (no time, or one already due); a 400 naming `field` when
/// it is further ahead than `max_schedule_ahead`.
fn schedule_time(
    send_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
    config: &Config,
    field: &str,
) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(at) = send_at else {
        return Ok(None);
    };
    let limit = config.max_schedule_ahead;
    if at > now + limit {
        return Err(ApiError::invalid(
            field,
            format!("at most {} hours ahead", limit.as_secs() / 3600),
        ));
    }
    // Already due (or in the past): sent now, like any other message.
    Ok((at > now).then_some(at))
}

/// Everything inside one `to` entry: its address, name, copies, data and headers.
/// Addresses are replaced by their canonical form ([`validate::email`]).
fn check_recipient(i: usize, r: &mut request::Recipient) -> Result<(), ApiError> {
    use validate::*;
    r.email = email(&r.email).map_err(|m| ApiError::invalid(format!("to[{i}].email"), m))?;
    if let Some(name) = &r.name {
        header_text(name, MAX_NAME).map_err(|m| ApiError::invalid(format!("to[{i}].name"), m))?;
    }
    for (list, mailboxes) in [("cc", &mut r.cc), ("bcc", &mut r.bcc)] {
        for (j, m) in mailboxes.iter_mut().enumerate() {
            m.email = email(&m.email)
                .map_err(|msg| ApiError::invalid(format!("to[{i}].{list}[{j}].email"), msg))?;
            if let Some(name) = &m.name {
                header_text(name, MAX_NAME)
                    .map_err(|msg| ApiError::invalid(format!("to[{i}].{list}[{j}].name"), msg))?;
            }
        }
    }
    check_metadata(&r.metadata, &format!("to[{i}].metadata"))?;
    check_headers(&r.headers, &format!("to[{i}].headers"))
}

fn check_headers(headers: &BTreeMap<String, String>, field: &str) -> Result<(), ApiError> {
    for (name, value) in headers {
        validate::header_name(name).map_err(|m| ApiError::invalid(format!("{field}.{name}"), m))?;
        validate::header_value(value)
            .map_err(|m| ApiError::invalid(format!("{field}.{name}"), m))?;
    }
    Ok(())
}

fn decode_attachments(
    inputs: &[request::AttachmentInput],
    max_bytes: usize,
) -> Result<Vec<Attachment>, ApiError> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let mut total = 0;
    let mut attachments = Vec::with_capacity(inputs.len());
    for (i, a) in inputs.iter().enumerate() {
        let field = |name: &str| format!("attachments[{i}].{name}");
        validate::filename(&a.filename).map_err(|m| ApiError::invalid(field("filename"), m))?;
        validate::content_type(&a.content_type)
            .map_err(|m| ApiError::invalid(field("content_type"), m))?;
        let content_id = match &a.content_id {
            Some(cid) => Some(
                validate::content_id(cid)
                    .map_err(|m| ApiError::invalid(field("content_id"), m))?
                    .to_owned(),
            ),
            None => None,
        };
        // Line breaks are common in base64 from other tools; they carry nothing.
        let compact: String = a.content.split_ascii_whitespace().collect();
        let content = STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| ApiError::invalid(field("content"), "content is not valid base64"))?;
        total += content.len();
        if total > max_bytes {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                ..ApiError::invalid(
                    "attachments",
                    format!("attachments exceed {max_bytes} bytes in total"),
                )
            });
        }
        attachments.push(Attachment {
            filename: a.filename.clone(),
            content_type: a.content_type.to_ascii_lowercase(),
            content: content.into(),
            content_id,
        });
    }
    Ok(attachments)
}

fn check_metadata(metadata: &BTreeMap<String, String>, field: &str) -> Result<(), ApiError> {
    if metadata.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_METADATA} metadata keys"),
        ));
    }
    for (key, value) in metadata {
        validate::label(key).map_err(|m| ApiError::invalid(format!("{field}.{key}"), m))?;
        validate::header_text(value, MAX_METADATA_VALUE)
            .map_err(|m| ApiError::invalid(format!("{field}.{key}"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sendmill_store::{AccountLimits, AccountSettings, Scope};

    fn principal(track_opens: bool, track_clicks: bool) -> Principal {
        Principal {
            account_id: sendmill_wire::AccountId::generate(),
            key_id: uuid::Uuid::now_v7(),
            key_prefix: "sm_test".into(),
            scopes: vec![Scope::Send],
            settings: AccountSettings {
                track_opens,
                track_clicks,
            },
            operator: false,
            limits: AccountLimits::default(),
        }
    }

    fn plan_json(principal: &Principal, body: serde_json::Value) -> Result<Planned, ApiError> {
        let request = SendRequest::parse(body.to_string().as_bytes()).unwrap();
        plan(
            principal,
            request,
            &Config::default(),
            OffsetDateTime::now_utc(),
            BatchId::generate(),
        )
    }

    fn records(principal: &Principal, body: serde_json::Value) -> Vec<RequestedV1> {
        plan_json(principal, body)
            .unwrap()
            .records()
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn recipients_have_their_own_subject_and_send_at_and_a_drop_in_request_is_whole() {
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::hours(1);
        let body = serde_json::json!({
            "from": "a@example.test", "text": "t", "subject": "shared",
            "to": [{"email": "b@ok.test", "subject": "own",
                    "send_at": later.format(&time::format_description::well_known::Rfc3339).unwrap()},
                   "c@ok.test",
                   {"email": "d@ok.test", "send_at": "2099-01-01T00:00:00Z"}]
        });
        let planned = plan_json(&principal(false, false), body.clone()).unwrap();
        let records = planned.records();
        assert_eq!(records[0].subject, "own");
        assert_eq!(records[1].subject, "shared");
        assert_eq!(
            planned.copies[0].0.send_at.map(|t| t.unix_timestamp()),
            Some(later.unix_timestamp())
        );
        assert_eq!(planned.copies[1].0.send_at, None);
        // Too far ahead: only that recipient is refused, naming its field.
        assert_eq!(planned.copies[2].0.status, RecipientStatus::Invalid);
        assert_eq!(planned.copies[2].0.field.as_deref(), Some("to[2].send_at"));
        // A drop-in's request is accepted whole or not at all.
        let mut request = SendRequest::parse(body.to_string().as_bytes()).unwrap();
        request.all_or_nothing = true;
        let error = plan(
            &principal(false, false),
            request,
            &Config::default(),
            now,
            BatchId::generate(),
        )
        .err()
        .expect("refused whole");
        assert_eq!(error.field.as_deref(), Some("to[2].send_at"));
    }

    #[test]
    fn tracking_follows_the_account_unless_the_message_says_otherwise() {
        let base = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test"], "subject": "s", "text": "t"});
        let on = principal(true, true);
        let planned = records(&on, base.clone());
        assert!(planned[0].options.track_opens && planned[0].options.track_clicks);
        let mut off = base.clone();
        off["track_opens"] = serde_json::json!(false);
        let planned = records(&on, off);
        assert!(!planned[0].options.track_opens && planned[0].options.track_clicks);
        let planned = records(&principal(false, false), base);
        assert!(!planned[0].options.track_opens && !planned[0].options.track_clicks);
    }

    #[test]
    fn campaigns_go_bulk_with_one_click_unsubscribe_by_default() {
        let p = principal(false, false);
        let mut body = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test"], "subject": "s", "text": "t"});
        let planned = records(&p, body.clone());
        assert_eq!(planned[0].lane, Lane::Transactional);
        assert!(!planned[0].options.list_unsubscribe);
        body["campaign_id"] = serde_json::json!("spring");
        let planned = records(&p, body.clone());
        assert_eq!(planned[0].lane, Lane::Bulk);
        assert!(planned[0].options.list_unsubscribe);
        body["list_unsubscribe"] = serde_json::json!(false);
        assert!(!records(&p, body)[0].options.list_unsubscribe);
    }

    #[test]
    fn cc_and_bcc_get_their_own_copies_and_only_cc_is_shown() {
        let p = principal(false, false);
        let body = serde_json::json!({"from": "a@example.test", "subject": "s", "text": "t",
            "to": [{"email": "b@ok.test", "cc": ["Carol <c@ok.test>"], "bcc": ["d@ok.test"],
                    "headers": {"X-Per-Recipient": "1"}}]});
        let planned = records(&p, body);
        let envelope: Vec<&str> = planned.iter().map(|r| r.recipient()).collect();
        assert_eq!(envelope, ["b@ok.test", "c@ok.test", "d@ok.test"]);
        for r in &planned {
            assert_eq!(r.to.email, "b@ok.test");
            assert_eq!(r.cc.len(), 1);
            assert_eq!(r.headers[0].name, "X-Per-Recipient");
        }
        let ids: std::collections::HashSet<_> = planned.iter().map(|r| r.message_id).collect();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn one_bad_recipient_is_refused_alone_but_all_bad_refuses_the_request() {
        let p = principal(false, false);
        let body = serde_json::json!({"from": "a@example.test", "subject": "s", "text": "t",
            "to": ["good@ok.test", "not an address", {"email": "x@ok.test", "cc": ["bad"]}]});
        let planned = plan_json(&p, body).unwrap();
        let statuses: Vec<_> = planned
            .results()
            .map(|r| (r.status, r.field.clone()))
            .collect();
        assert_eq!(statuses[0], (RecipientStatus::Queued, None));
        assert_eq!(
            statuses[1],
            (RecipientStatus::Invalid, Some("to[1].email".into()))
        );
        assert_eq!(
            statuses[2],
            (RecipientStatus::Invalid, Some("to[2].cc[0].email".into()))
        );
        let body = serde_json::json!({"from": "a@example.test", "subject": "s", "text": "t", "to": ["nope"]});
        let error = plan_json(&p, body).err().expect("refused");
        assert_eq!(error.field.as_deref(), Some("to[0].email"));
    }

    #[test]
    fn a_replayed_batch_derives_the_same_message_ids() {
        let p = principal(false, false);
        let body = serde_json::json!({"from": "a@example.test", "to": ["b@ok.test", "c@ok.test"], "subject": "s", "text": "t"});
        let batch = BatchId::generate();
        let ids = |body: &serde_json::Value| -> Vec<MessageId> {
            let request = SendRequest::parse(body.to_string().as_bytes()).unwrap();
            plan(
                &p,
                request,
                &Config::default(),
                OffsetDateTime::now_utc(),
                batch,
            )
            .unwrap()
            .records()
            .iter()
            .map(|r| r.message_id)
            .collect()
        };
        assert_eq!(ids(&body), ids(&body));
    }
}
