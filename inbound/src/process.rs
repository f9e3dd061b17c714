//! The processor: consumes `sendmill.inbound.v1`, reads each message
//! ([`report::analyze`]), finds the message and account it is about, and writes what it
//! means. At least once, and idempotent: an event's id is derived from its message and
//! type (a `deferred` one's from the inbound record), a kept row's from the inbound
//! record, so a record processed twice (a crash before its offset was stored), or the
//! same report sent twice, writes the same event again, which ClickHouse collapses and
//! the webhook outbox and the reputation monitor refuse; suppressions are added once.
//!
//! Matching, first that applies:
//! 1. an envelope recipient that is one of our signed return addresses
//!    ([`ReturnPaths::verify`]): the DSN or auto-reply sent to a VERP address, the
//!    unsubscribe sent to the `mailto:`;
//! 2. a signed return address inside the message (the `Return-Path` of the returned copy
//!    in an ARF report sent to a feedback-loop mailbox);
//! 3. the returned copy's `Message-ID` (`<message id@domain>` as render writes it),
//!    looked up **only among the accounts that own the domain the return was sent to**:
//!    a Message-ID is public, a tag is not.
//!
//! The message's facts (account, recipient, tags, campaign, source IP) come from its
//! `accepted` and `delivered` events in ClickHouse.
//!
//! What each kind writes (the message's terminal event is never touched):
//! - failed DSN → `async_bounced` (recipient, remote MTA, reply, category); `bad_mailbox`
//!   and `bad_domain` add a `bounce` suppression;
//! - delayed DSN → `deferred`;
//! - complaint → `complained` and a `complaint` suppression (the reputation monitor counts
//!   it from the events topic);
//! - mail to the `mailto:` unsubscribe → `unsubscribed` and an `unsubscribe` suppression,
//!   as the one-click POST does;
//! - auto-reply → `auto_replied`;
//! - a success DSN → nothing (counted);
//! - unclassified, or unmatched → kept in `inbound_returns` for `unclassified_retention`.

use crate::{
    metric,
    receiver::ReturnPathDomains,
    report::{self, Kind, Report, Rules},
    Config,
};
use clickhouse::Row;
use sendmill_platform::{
    backoff,
    kafka::{
        self,
        consumer::{decode, HandlerError},
        ConsumerSpec, Handled, KafkaConnection, Record,
    },
    return_path::{ReturnKind, ReturnPaths},
    CancellationToken,
};
use sendmill_store::{returns::NewReturn, Store, SuppressionReason};
use sendmill_tenancy::suppressions::SuppressionCache;
use sendmill_wire::{
    AccountId, BounceCategory, EventId, EventType, EventV1, InboundV1, MessageContext, MessageId,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::{sync::Arc, time::Duration};
use time::OffsetDateTime;

/// How soon a return whose message is not yet in the event store is tried again.
const RETRY_MATCH: Duration = Duration::from_secs(5);

/// What a return is, once read and matched: the decision, before any side effect.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// An event (and maybe a suppression) for a message.
    Event {
        event_type: EventType,
        suppress: Option<SuppressionReason>,
    },
    /// A success report: nothing to write.
    Nothing,
    /// Kept for a person, with why.
    Keep(String),
}

/// The facts of a message, from its events.
#[derive(Clone, Debug)]
pub struct MessageFacts {
    pub message_id: MessageId,
    pub account_id: AccountId,
    pub recipient: String,
    pub context: MessageContext,
    pub source_ip: Option<String>,
    pub provider: Option<String>,
}

pub struct Processor {
    config: Config,
    rules: Rules,
    store: Store,
    clickhouse: clickhouse::Client,
    suppressions: SuppressionCache,
    return_paths: Option<ReturnPaths>,
    domains: Arc<ReturnPathDomains>,
    producer: kafka::Producer,
    events_topic: String,
    shutdown: CancellationToken,
}

impl Processor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        kafka: KafkaConnection,
        store: Store,
        clickhouse: clickhouse::Client,
        suppressions: SuppressionCache,
        return_paths: Option<ReturnPaths>,
        domains: Arc<ReturnPathDomains>,
        shutdown: CancellationToken,
    ) -> Result<Self, kafka::KafkaError> {
        Ok(Self {
            config,
            rules: Rules::builtin(),
            store,
            clickhouse,
            suppressions,
            return_paths,
            domains,
            producer: kafka.producer()?,
            events_topic: kafka.topics.events(),
            shutdown,
        })
    }

    async fn handle(&self, record: Record) -> Result<Handled, HandlerError> {
        let inbound: InboundV1 = decode(&record)?;
        let report = report::analyze(&inbound.message, &inbound.mail_from, &self.rules);
        let rcpt_domain = inbound
            .recipients
            .first()
            .and_then(|r| r.rsplit_once('@'))
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        let rcpt_owners = backoff::until_ok("return-path domain owners", &self.shutdown, || {
            self.domains.owners(&rcpt_domain)
        })
        .await?;

        // The signed address that names the message, if any.
        let verified = self.return_paths.as_ref().and_then(|paths| {
            let from_envelope = inbound.recipients.iter().find_map(|r| paths.verify(r));
            from_envelope.or_else(|| {
                report
                    .return_addresses
                    .iter()
                    .filter_map(|a| paths.verify(a))
                    .find(|a| a.kind == ReturnKind::Bounce)
            })
        });
        let unsubscribe = verified.as_ref().is_some_and(|v| {
            v.kind == ReturnKind::Unsubscribe
                && !inbound.mail_from.is_empty()
                && matches!(report.kind, Kind::AutoReply | Kind::Unclassified)
        });
        let kind_label = if unsubscribe {
            "unsubscribe"
        } else {
            report.kind.as_str()
        };
        let (event_type, suppress) = match decide(&report, unsubscribe) {
            Outcome::Event {
                event_type,
                suppress,
            } => (event_type, suppress),
            Outcome::Nothing => {
                count(kind_label, &report, false);
                return Ok(Handled::Done);
            }
            Outcome::Keep(reason) => {
                count(kind_label, &report, false);
                self.keep(&inbound, &report, &rcpt_owners, &reason).await?;
                return Ok(Handled::Done);
            }
        };

        // Which message, among which accounts.
        let (message_id, owners, trusted) = match &verified {
            Some(v) => {
                let owners = backoff::until_ok("return-path domain owners", &self.shutdown, || {
                    self.domains.owners(&v.domain)
                })
                .await?;
                (Some(v.message_id), owners, true)
            }
            None => (
                report
                    .original
                    .message_id
                    .as_deref()
                    .and_then(message_id_of_header),
                rcpt_owners.clone(),
                false,
            ),
        };
        let Some(message_id) = message_id else {
            count(kind_label, &report, false);
            self.keep(
                &inbound,
                &report,
                &rcpt_owners,
                "no message named (no signed return address or known Message-ID)",
            )
            .await?;
            return Ok(Handled::Done);
        };
        let mut facts = None;
        for &account in owners.iter() {
            facts = backoff::until_ok("message lookup", &self.shutdown, || {
                self.lookup(account, message_id)
            })
            .await?;
            if facts.is_some() {
                break;
            }
        }
        let Some(facts) = facts else {
            // Signed by us, so the message exists; if it was accepted within the match
            // window (its id is a UUIDv7: the time is in it), its events may still be on
            // their way to ClickHouse: try again shortly. An older one is not waited for
            // (the partition would wait with it).
            let now = OffsetDateTime::now_utc();
            let accepted_at = message_id
                .0
                .get_timestamp()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t.to_unix().0 as i64).ok());
            let recent = |at: OffsetDateTime| now - at < self.config.match_window;
            if trusted && recent(inbound.received_at) && accepted_at.is_some_and(recent) {
                return Ok(Handled::NotBefore(now + RETRY_MATCH));
            }
            count(kind_label, &report, false);
            let reason = format!(
                "message {message_id} not found among the accounts of {}",
                if trusted {
                    "its signed address"
                } else {
                    "the domain it was sent to"
                }
            );
            self.keep(&inbound, &report, &rcpt_owners, &reason).await?;
            return Ok(Handled::Done);
        };

        let event = event_for(&inbound, &report, &facts, event_type, unsubscribe);
        if let Some(reason) = suppress {
            let source = format!("inbound {} {}", kind_label, facts.message_id);
            backoff::until_ok("add suppression", &self.shutdown, || {
                self.suppressions.add_if_absent(
                    facts.account_id,
                    &facts.recipient,
                    reason,
                    Some(&source),
                )
            })
            .await?;
        }
        let key = facts.message_id.to_string();
        backoff::until_ok("write event", &self.shutdown, || {
            self.producer.send(&self.events_topic, &key, &event)
        })
        .await?;
        count(kind_label, &report, true);
        Ok(Handled::Done)
    }

    /// The facts of `message_id` if it is `account`'s.
    async fn lookup(
        &self,
        account: AccountId,
        message_id: MessageId,
    ) -> Result<Option<MessageFacts>, clickhouse::error::Error> {
        #[derive(Row, Deserialize)]
        struct FactsRow {
            recipient: String,
            campaign_id: String,
            tags: Vec<String>,
            metadata: String,
            ip_pool: String,
            source_ip: String,
            provider: String,
        }
        // The delivered event knows the source IP; the accepted one the rest, and both
        // carry the context.
        let row: Option<FactsRow> = self
            .clickhouse
            .query(
                "SELECT recipient, campaign_id, tags, metadata, ip_pool, source_ip, provider
                 FROM events
                 WHERE account_id = toUUID(?) AND message_id = toUUID(?)
                       AND event_type IN ('accepted', 'delivered')
                 ORDER BY event_type = 'delivered' DESC, occurred_at_ms DESC LIMIT 1",
            )
            .bind(account.0.to_string())
            .bind(message_id.0.to_string())
            .fetch_optional()
            .await?;
        Ok(row.map(|r| {
            let some = |s: String| (!s.is_empty()).then_some(s);
            MessageFacts {
                message_id,
                account_id: account,
                recipient: r.recipient,
                context: MessageContext {
                    tags: r.tags,
                    metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
                    campaign_id: some(r.campaign_id),
                    ip_pool: some(r.ip_pool),
                    requested_confirmation: false,
                },
                source_ip: some(r.source_ip),
                provider: some(r.provider),
            }
        }))
    }

    async fn keep(
        &self,
        inbound: &InboundV1,
        report: &Report,
        owners: &[AccountId],
        reason: &str,
    ) -> Result<(), HandlerError> {
        // PostgreSQL text takes no NUL, and none of these needs a control character: a
        // hostile subject must not make the row unwritable (and the record stuck).
        let clean = |text: &str, max: usize| -> String {
            text.chars().filter(|c| !c.is_control()).take(max).collect()
        };
        let rcpt_to = clean(&inbound.recipients.join(", "), 2000);
        let subject = clean(&report.subject, 500);
        let mail_from = clean(&inbound.mail_from, 500);
        let reason = clean(reason, 1000);
        let expires_at = inbound.received_at + self.config.unclassified_retention;
        let account_id = match owners {
            [one] => Some(*one),
            _ => None,
        };
        let kept = NewReturn {
            id: inbound.inbound_id,
            account_id,
            received_at: inbound.received_at,
            mail_from: &mail_from,
            rcpt_to: &rcpt_to,
            subject: &subject,
            reason: &reason,
            raw: &inbound.message,
            expires_at,
        };
        backoff::until_ok("keep return", &self.shutdown, || {
            self.store.keep_return(&kept)
        })
        .await?;
        metrics::counter!(metric::INBOUND_KEPT_TOTAL).increment(1);
        tracing::info!(inbound_id = %inbound.inbound_id, reason, "inbound message kept");
        Ok(())
    }
}

/// What a report comes to, before matching.
pub fn decide(report: &Report, unsubscribe: bool) -> Outcome {
    if unsubscribe {
        return Outcome::Event {
            event_type: EventType::Unsubscribed,
            suppress: Some(SuppressionReason::Unsubscribe),
        };
    }
    match report.kind {
        Kind::Failed => Outcome::Event {
            event_type: EventType::AsyncBounced,
            suppress: matches!(
                report.category,
                Some(BounceCategory::BadMailbox | BounceCategory::BadDomain)
            )
            .then_some(SuppressionReason::Bounce),
        },
        Kind::Delayed => Outcome::Event {
            event_type: EventType::Deferred,
            suppress: None,
        },
        Kind::Complaint => Outcome::Event {
            event_type: EventType::Complained,
            suppress: Some(SuppressionReason::Complaint),
        },
        Kind::AutoReply => Outcome::Event {
            event_type: EventType::AutoReplied,
            suppress: None,
        },
        Kind::Delivered => Outcome::Nothing,
        Kind::Unclassified => {
            Outcome::Keep(report.note.clone().unwrap_or_else(|| "unclassified".into()))
        }
    }
}

/// The event a matched return writes; its id is derived from the inbound record's.
fn event_for(
    inbound: &InboundV1,
    report: &Report,
    facts: &MessageFacts,
    event_type: EventType,
    unsubscribe: bool,
) -> EventV1 {
    let mut event = EventV1::new(
        event_type,
        "inbound",
        facts.message_id,
        facts.account_id,
        &facts.recipient,
        &facts.context,
    );
    // A message is bounced, complained about, unsubscribed or auto-answered once: the
    // same report sent again (an MTA resending after a lost 250, a feedback loop sending
    // twice, someone replaying one) is the same event, which ClickHouse collapses, the
    // webhook outbox and the reputation monitor refuse. A delay can be reported again
    // later (after 4 h, after 24 h): each report is its own event.
    let once_per_message = event_type != EventType::Deferred;
    let digest = if once_per_message {
        Sha256::new()
            .chain_update(facts.message_id.0.as_bytes())
            .chain_update(event_type.as_str())
            .finalize()
    } else {
        Sha256::new()
            .chain_update(inbound.inbound_id.as_bytes())
            .chain_update(event_type.as_str())
            .finalize()
    };
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    event.event_id = EventId(uuid::Builder::from_custom_bytes(bytes).into_uuid());
    event.occurred_at = inbound.received_at;
    event.source_ip = facts.source_ip.clone();
    event.provider = facts.provider.clone();
    if unsubscribe {
        event.reason = Some("mailto unsubscribe (RFC 2369)".into());
        return event;
    }
    event.mx_host = report.remote_mta.clone();
    event.smtp = report.reply.clone();
    event.bounce_category = report.category;
    let by = report
        .reporting_mta
        .as_deref()
        .map(|m| format!(" from {m}"))
        .unwrap_or_default();
    event.reason = Some(match event_type {
        EventType::Complained => format!(
            "{} feedback report{by} ({})",
            report.feedback_type.as_deref().unwrap_or("abuse"),
            report.format
        ),
        EventType::AutoReplied => format!("auto-reply ({})", report.format),
        _ => {
            let mut reason = format!("{} report{by}", report.format);
            if let Some(r) = report
                .recipient
                .as_deref()
                .filter(|r| *r != facts.recipient)
            {
                reason.push_str(&format!(" for {r}"));
            }
            reason
        }
    });
    event
}

/// The message id in a `Message-ID` render wrote: `<uuid@domain>`.
pub fn message_id_of_header(value: &str) -> Option<MessageId> {
    let inner = value.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, _) = inner.split_once('@')?;
    uuid::Uuid::try_parse(local).ok().map(MessageId)
}

fn count(kind: &'static str, report: &Report, matched: bool) {
    metrics::counter!(
        metric::INBOUND_PROCESSED_TOTAL,
        "kind" => kind,
        "category" => report.category.map_or("", BounceCategory::as_str),
        "matched" => if matched { "true" } else { "false" }
    )
    .increment(1);
}

/// Consumes the inbound topic until `shutdown`, and deletes expired kept returns every
/// ten minutes.
pub async fn run(
    kafka: KafkaConnection,
    processor: Processor,
    shutdown: CancellationToken,
) -> Result<(), kafka::KafkaError> {
    let spec = ConsumerSpec {
        stage: "inbound",
        group_id: processor.config.group_id.clone(),
        topics: vec![kafka.topics.inbound()],
        concurrency: processor.config.concurrency,
    };
    let store = processor.store.clone();
    let sweeper = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(600));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                match store.delete_expired_returns().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "expired kept returns deleted"),
                    Err(error) => tracing::warn!(%error, "cannot delete expired kept returns"),
                }
            }
        })
    };
    let result = kafka::consumer::run_shared(
        &kafka,
        spec,
        Arc::new(processor),
        |processor, record| async move { processor.handle(record).await },
        shutdown,
    )
    .await;
    sweeper.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_read_from_headers_render_writes() {
        let id = MessageId::generate();
        assert_eq!(
            message_id_of_header(&format!(" <{id}@example.test>")),
            Some(id)
        );
        assert_eq!(message_id_of_header("<abc@example.test>"), None);
        assert_eq!(message_id_of_header("garbage"), None);
    }
}
