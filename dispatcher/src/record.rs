//! Steps 2 and 6 of the dispatcher's recipe, the events a message's handling writes:
//! a recipient suppressed since acceptance ends as `dropped`; an attempt's [`Outcome`]
//! ends as `delivered` or `bounced` (through the terminal barrier), or becomes a record
//! on the next retry delay topic and a `deferred` event, or `expired` past the retry
//! window. A hard bounce whose rule says so suppresses the address.

use crate::{
    outcome::{Failure, Outcome},
    Dispatcher, Routed,
};
use sendmill_platform::{backoff, kafka::HandlerError};
use sendmill_wire::{BounceCategory, EventType, EventV1, ReadyV1, RetryTier, RetryV1};
use time::OffsetDateTime;

impl Dispatcher {
    /// Step 2: ends the message as `dropped` when its recipient is on a suppression list
    /// now (a bounce of another message, an unsubscribe, since acceptance); `true` then.
    pub(crate) async fn drop_if_suppressed(&self, ready: &ReadyV1) -> Result<bool, HandlerError> {
        let recipients = [ready.recipient.clone()];
        let found = backoff::until_ok("check suppressions", &self.shutdown, || {
            self.suppressions.check(ready.account_id, &recipients)
        })
        .await?;
        let Some(suppressed) = found.into_iter().next().flatten() else {
            return Ok(false);
        };
        // The person asked for this confirmation after unsubscribing (wire's
        // `MessageContext::requested_confirmation`).
        if ready.context.requested_confirmation
            && !suppressed.global
            && suppressed.reason == sendmill_store::SuppressionReason::Unsubscribe.as_str()
        {
            return Ok(false);
        }
        let mut event = new_event(EventType::Dropped, ready);
        event.reason = Some(if suppressed.global {
            format!("suppressed ({}, global list)", suppressed.reason)
        } else {
            format!("suppressed ({})", suppressed.reason)
        });
        metrics::counter!(crate::metric::DISPATCH_SUPPRESSED_TOTAL).increment(1);
        self.finish(event).await?;
        Ok(true)
    }

    /// Step 6: the events (and retry record) of attempt number `attempt`'s `outcome`.
    pub(crate) async fn record_outcome(
        &self,
        ready: ReadyV1,
        attempt: u32,
        outcome: Outcome,
        routed: Routed,
    ) -> Result<(), HandlerError> {
        let event = |event_type| {
            let mut e = new_event(event_type, &ready);
            e.attempt = attempt;
            e.provider = Some(
                routed
                    .provider
                    .clone()
                    .unwrap_or_else(|| ready.recipient_domain()),
            );
            if let Some(pool) = &routed.pool {
                e.context.ip_pool = Some(pool.clone());
            }
            e
        };
        match outcome {
            Outcome::Delivered(delivered) => {
                let mut e = event(EventType::Delivered);
                e.mx_host = Some(delivered.mx_host);
                e.source_ip = delivered.source_ip;
                e.smtp = Some(delivered.reply);
                self.finish(e).await
            }
            Outcome::Permanent(failure) => {
                tracing::info!(message_id = %ready.message_id, reason = %failure, "bounced");
                if routed.suppress {
                    self.suppress_bounced(&ready, &failure).await?;
                }
                self.finish(failure_event(event(EventType::Bounced), failure))
                    .await
            }
            Outcome::Temporary(failure) => {
                let (tier, delay) = self.config.retry_delay(attempt);
                let tier = RetryTier::ALL[tier];
                let now = OffsetDateTime::now_utc();
                let due_at = now + delay;
                let deadline = ready.accepted_at + self.config.max_retry_age;
                if due_at > deadline {
                    let mut e = failure_event(event(EventType::Expired), failure);
                    e.bounce_category = Some(BounceCategory::Expired);
                    return self.finish(e).await;
                }
                tracing::debug!(message_id = %ready.message_id, reason = %failure, tier = tier.as_str(), "deferred");
                let retry = RetryV1 {
                    due_at,
                    last_reply: failure.reply.clone(),
                    last_error: Some(failure.reason.to_string()),
                    ready: ReadyV1 {
                        attempts: attempt,
                        ..ready.clone()
                    },
                };
                let topic = self.kafka.topics.retry(ready.lane, tier);
                let key = ready.message_id.to_string();
                backoff::until_ok("produce retry", &self.shutdown, || {
                    self.producer.send(&topic, &key, &retry)
                })
                .await?;
                self.emit(&failure_event(event(EventType::Deferred), failure))
                    .await
            }
        }
    }

    /// A hard bounce whose rule says so puts the address on the account's list, so later
    /// sends are dropped at ingest instead of hurting the IPs' reputation.
    async fn suppress_bounced(
        &self,
        ready: &ReadyV1,
        failure: &Failure,
    ) -> Result<(), HandlerError> {
        let source = format!("bounce of {}: {}", ready.message_id, failure.reason);
        let added = backoff::until_ok("suppress bounced address", &self.shutdown, || {
            self.suppressions.add_if_absent(
                ready.account_id,
                &ready.recipient,
                sendmill_store::SuppressionReason::Bounce,
                Some(&source),
            )
        })
        .await?;
        if added {
            metrics::counter!(crate::metric::DISPATCH_BOUNCE_SUPPRESSIONS_TOTAL).increment(1);
        }
        Ok(())
    }
}

fn failure_event(mut event: EventV1, failure: Failure) -> EventV1 {
    event.mx_host = failure.mx_host;
    event.source_ip = failure.source_ip;
    event.bounce_category = Some(failure.category);
    event.reason = Some(failure.reason.to_string());
    event.smtp = failure.reply;
    event
}

/// An event of `ready`'s message, written by the dispatcher.
pub(crate) fn new_event(event_type: EventType, ready: &ReadyV1) -> EventV1 {
    EventV1::new(
        event_type,
        "dispatcher",
        ready.message_id,
        ready.account_id,
        &ready.recipient,
        &ready.context,
    )
}
