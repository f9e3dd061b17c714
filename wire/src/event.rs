//! `sendmill.events.v1`: what happened to a message. Every stage writes these; analytics
//! stores them in ClickHouse and sends them to customer webhooks.

use crate::{AccountId, EventId, MessageContext, MessageId, WirePayload};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The `reason` of the `accepted` event of a message held until its `send_at`: it stays
/// silent until then, which the outcome watch must not take for a lost message.
pub const ACCEPTED_SCHEDULED: &str = "scheduled";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Accepted,
    Dropped,
    RenderFailed,
    Delivered,
    Deferred,
    Bounced,
    Expired,
    Failed,
    Opened,
    Clicked,
    Unsubscribed,
    Complained,
    /// A bounce that came back by mail (a DSN) after the receiving server had answered
    /// 250 and the message had its terminal `delivered` event: a further event, never a
    /// second terminal one. Counted as a bounce in rates; the message stays delivered.
    AsyncBounced,
    /// An automatic reply (RFC 3834 `Auto-Submitted`, out of office, challenge-response):
    /// neither a bounce nor a person's engagement.
    AutoReplied,
}

impl EventType {
    pub const ALL: [EventType; 14] = [
        EventType::Accepted,
        EventType::Dropped,
        EventType::RenderFailed,
        EventType::Delivered,
        EventType::Deferred,
        EventType::Bounced,
        EventType::Expired,
        EventType::Failed,
        EventType::Opened,
        EventType::Clicked,
        EventType::Unsubscribed,
        EventType::Complained,
        EventType::AsyncBounced,
        EventType::AutoReplied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Accepted => "accepted",
            EventType::Dropped => "dropped",
            EventType::RenderFailed => "render_failed",
            EventType::Delivered => "delivered",
            EventType::Deferred => "deferred",
            EventType::Bounced => "bounced",
            EventType::Expired => "expired",
            EventType::Failed => "failed",
            EventType::Opened => "opened",
            EventType::Clicked => "clicked",
            EventType::Unsubscribed => "unsubscribed",
            EventType::Complained => "complained",
            EventType::AsyncBounced => "async_bounced",
            EventType::AutoReplied => "auto_replied",
        }
    }

    /// Every accepted message ends in exactly one terminal event.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventType::Delivered
                | EventType::Bounced
                | EventType::Expired
                | EventType::Dropped
                | EventType::Failed
                | EventType::RenderFailed
        )
    }
}

/// Why a message bounced, coarse enough to act on (suppress, alert, slow down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceCategory {
    BadMailbox,
    BadDomain,
    MailboxFull,
    Policy,
    RateLimited,
    TlsRequired,
    /// The receiver refused the sender's authentication (SPF, DKIM, DMARC, RFC 7372's
    /// 5.7.20–5.7.27): a DNS or signing fix on our side, never the recipient's fault.
    Authentication,
    Routing,
    Protocol,
    Expired,
    Other,
}

impl BounceCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceCategory::BadMailbox => "bad_mailbox",
            BounceCategory::BadDomain => "bad_domain",
            BounceCategory::MailboxFull => "mailbox_full",
            BounceCategory::Policy => "policy",
            BounceCategory::RateLimited => "rate_limited",
            BounceCategory::TlsRequired => "tls_required",
            BounceCategory::Authentication => "authentication",
            BounceCategory::Routing => "routing",
            BounceCategory::Protocol => "protocol",
            BounceCategory::Expired => "expired",
            BounceCategory::Other => "other",
        }
    }
}

/// A receiving server's reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpReply {
    pub code: u16,
    /// RFC 3463 enhanced status code, e.g. `5.1.1`, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventV1 {
    pub event_id: EventId,
    pub event_type: EventType,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub message_id: MessageId,
    pub account_id: AccountId,
    pub recipient: String,
    #[serde(default)]
    pub context: MessageContext,
    /// The stage that wrote the event (`ingest`, `submission`, `render`, `dispatcher`,
    /// `analytics`, `inbound`).
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounce_category: Option<BounceCategory>,
    /// The delivery attempt this event reports (1 for the first).
    #[serde(default)]
    pub attempt: u32,
    /// Human-readable detail: a render error, a connection error, a drop reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The client that opened, clicked or unsubscribed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The clicked link's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The open or click most likely came from a machine (privacy proxy prefetch, link
    /// scanner), not a person.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub machine: bool,
}

impl WirePayload for EventV1 {
    const SCHEMA: &'static str = "sendmill.events.v1";
}

impl EventV1 {
    /// A bare event of `event_type` for one message, stamped now; callers fill in what
    /// they know.
    ///
    /// A terminal event's id is its message's id: a message ends once, so whoever
    /// reports its end again (a stage that lost its dedupe state and redid the work, a
    /// journal replay) writes the same event, which ClickHouse collapses and the webhook
    /// outbox refuses. Every other event gets a new id.
    pub fn new(
        event_type: EventType,
        stage: &str,
        message_id: MessageId,
        account_id: AccountId,
        recipient: &str,
        context: &MessageContext,
    ) -> Self {
        Self {
            event_id: if event_type.is_terminal() {
                EventId(message_id.0)
            } else {
                EventId::generate()
            },
            event_type,
            occurred_at: OffsetDateTime::now_utc(),
            message_id,
            account_id,
            recipient: recipient.to_owned(),
            context: context.clone(),
            stage: stage.to_owned(),
            mx_host: None,
            source_ip: None,
            provider: None,
            smtp: None,
            bounce_category: None,
            attempt: 0,
            reason: None,
            user_agent: None,
            url: None,
            machine: false,
        }
    }

    pub fn recipient_domain(&self) -> String {
        crate::payload::domain_of(&self.recipient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_has_one_terminal_event_id_and_new_ids_for_the_rest() {
        let message = MessageId::generate();
        let event = |t| {
            EventV1::new(
                t,
                "test",
                message,
                AccountId::generate(),
                "a@b.test",
                &MessageContext::default(),
            )
        };
        let delivered = event(EventType::Delivered);
        assert_eq!(delivered.event_id, event(EventType::Delivered).event_id);
        assert_eq!(delivered.event_id, event(EventType::Bounced).event_id);
        assert_ne!(
            event(EventType::Deferred).event_id,
            event(EventType::Deferred).event_id
        );
        assert_ne!(event(EventType::Deferred).event_id, delivered.event_id);
    }
}
