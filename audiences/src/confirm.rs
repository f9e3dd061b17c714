//! The double opt-in confirmation message. It goes through the normal pipeline as any
//! transactional message does: a `requested` record on the transactional lane (render,
//! DKIM, the dispatcher's shaping and retries, events in ClickHouse), then its
//! `accepted` event, written only after Kafka acknowledged the record. The list gives the
//! sender and subject; the body carries the signed, expiring confirmation link.

use crate::{contacts::db_error, lists::PendingConfirmation, Audiences};
use sendmill_platform::api::ApiError;
use sendmill_wire::{
    BatchId, EmailAddress, EventType, EventV1, Lane, MessageContext, MessageId, RequestedV1,
};
use time::OffsetDateTime;

/// The subject when the list sets none (a Handlebars template).
pub const DEFAULT_SUBJECT: &str = "Please confirm your subscription to {{list_name}}";

const HTML: &str = r#"<!doctype html>
<html><body style="font-family: sans-serif; line-height: 1.5">
<p>Hello{{#if name}} {{name}}{{/if}},</p>
<p>Someone, hopefully you, asked to receive <strong>{{list_name}}</strong> at this address.
Please confirm that you want it:</p>
<p><a href="{{confirm_url}}" style="display:inline-block;padding:10px 18px;background:#1f6feb;color:#fff;text-decoration:none;border-radius:4px">Confirm my subscription</a></p>
<p>If you did not ask for this, ignore this message: nothing will be sent to you.</p>
</body></html>
"#;

const TEXT: &str = "Hello{{#if name}} {{name}}{{/if}},

Someone, hopefully you, asked to receive {{list_name}} at this address.
Please confirm that you want it by opening this link:

{{confirm_url}}

If you did not ask for this, ignore this message: nothing will be sent to you.
";

/// Writes the confirmation for `pending` to the pipeline and records when. Errors: 503
/// without a tracking secret (no link can be signed) or when Kafka does not take it (the
/// membership stays `unconfirmed` with no confirmation sent; adding the contact again,
/// or the subscribe form, sends it).
pub async fn send(state: &Audiences, pending: &PendingConfirmation) -> Result<(), ApiError> {
    let account = pending.list.account;
    let Some(url) = crate::tokens::confirm_url(state, account, pending.list.id, pending.contact_id)
    else {
        return Err(ApiError::unavailable(
            "double opt-in (tracking.secret is not set, so no confirmation link can be signed)",
        ));
    };
    let Some(from) = pending.list.confirm_from.clone() else {
        return Err(ApiError::invalid(
            "confirm_from",
            "the double opt-in list has no confirmation sender",
        ));
    };
    let message_id = MessageId::generate();
    let context = MessageContext {
        tags: vec!["sendmill:confirmation".into()],
        metadata: [("list_id".to_owned(), pending.list.id.to_string())].into(),
        campaign_id: None,
        ip_pool: None,
        requested_confirmation: true,
    };
    let mut data = serde_json::Map::new();
    data.insert("confirm_url".into(), url.into());
    data.insert("list_name".into(), pending.list.name.clone().into());
    data.insert("name".into(), pending.name.clone().into());
    let record = RequestedV1 {
        message_id,
        account_id: account,
        batch_id: BatchId::generate(),
        lane: Lane::Transactional,
        accepted_at: OffsetDateTime::now_utc(),
        from: EmailAddress {
            email: from,
            name: None,
        },
        to: EmailAddress {
            email: pending.email.clone(),
            name: (!pending.name.is_empty()).then(|| pending.name.clone()),
        },
        to_list: Vec::new(),
        cc: Vec::new(),
        envelope_to: None,
        reply_to: None,
        subject: pending
            .list
            .confirm_subject
            .clone()
            .unwrap_or_else(|| DEFAULT_SUBJECT.into()),
        html: Some(HTML.into()),
        text: Some(TEXT.into()),
        headers: Vec::new(),
        data,
        context,
        options: Default::default(),
        attachments: Vec::new(),
        mime: None,
        shared: None,
    };
    let key = message_id.to_string();
    state
        .producer
        .send(&state.topics.requested(Lane::Transactional), &key, &record)
        .await
        .map_err(|error| {
            tracing::error!(%error, "confirmation message not queued");
            ApiError::unavailable("the message queue")
        })?;
    let accepted = EventV1::new(
        EventType::Accepted,
        "audiences",
        message_id,
        account,
        &pending.email,
        &record.context,
    );
    if let Err(error) = state
        .producer
        .send(&state.topics.events(), &key, &accepted)
        .await
    {
        // The message is queued and will be sent; only its timeline lacks `accepted`.
        tracing::error!(%error, "confirmation's accepted event not written");
    }
    sqlx::query(
        "UPDATE list_members SET confirmation_sent_at = now(), updated_at = now()
         WHERE list_id = $1 AND contact_id = $2",
    )
    .bind(pending.list.id)
    .bind(pending.contact_id)
    .execute(state.store.pool())
    .await
    .map_err(db_error)?;
    metrics::counter!(crate::metric::CONFIRMATIONS_SENT_TOTAL).increment(1);
    Ok(())
}
