//! The campaign sender's loop. Every `poll` (or at once after a round that did work) it:
//!
//! 1. **starts** due scheduled campaigns: the audience, evaluated once, goes into
//!    `campaign_recipients` in a pseudo-random order (md5 of campaign and contact) by
//!    one `INSERT … SELECT`; an A/B test's share is the first `test_percent` of that
//!    order, its variants dealt in turn (an even, random split);
//! 2. **decides** A/B tests whose wait is over, by the metric ([`crate::stats`]);
//! 3. unless the bulk lane's backlog is over `max_bulk_backlog`, **releases** one chunk
//!    of each account's least recently served sending campaign (so accounts take turns
//!    and one account's campaign cannot fill the lane ahead of another's), as far as
//!    its throttle allows.
//!
//! A chunk is one transaction holding the campaign's row (`FOR UPDATE SKIP LOCKED`: a
//! second sender passes it by): read the next recipients after the cursor, check each
//! contact now (status, suppression, still on a list, not excluded), produce the
//! records and `accepted` events and wait for Kafka's acknowledgement, then mark the
//! outcomes and move the cursor, and commit. Exactly once per contact follows (see the
//! crate doc).

use crate::{
    api::{audience_condition, recipient_from_row},
    content::{self, Addressing},
    model::{from_row, Campaign, Metric, COLUMNS},
    Campaigns,
};
use futures::future::try_join_all;
use sendmill_platform::{
    kafka::{
        blobs,
        lag::{GroupTopics, LagProbe},
        KafkaConnection, ProduceError,
    },
    CancellationToken,
};
use sendmill_wire::{AccountId, EventId, EventType, EventV1, Lane, MessageId, RequestedV1};
use sqlx::Row;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use uuid::Uuid;

/// Writes `record` and then its `accepted` event (stage `stage`), each acknowledged by
/// Kafka. The event's id derives from the message id, so a chunk released twice writes
/// the same event, which ClickHouse collapses.
pub async fn produce(
    state: &Campaigns,
    record: &RequestedV1,
    stage: &str,
) -> Result<(), ProduceError> {
    let key = record.message_id.to_string();
    state
        .producer
        .send(&state.topics.requested(record.lane), &key, record)
        .await?;
    let mut accepted = EventV1::new(
        EventType::Accepted,
        stage,
        record.message_id,
        record.account_id,
        record.recipient(),
        &record.context,
    );
    accepted.event_id = EventId(record.message_id.derived("accepted"));
    state
        .producer
        .send(&state.topics.events(), &key, &accepted)
        .await
}

/// `records` with the large parts (template, attachments) each variant's records share
/// written once to the blobs topic and pointed to ([`blobs::write_shared`]); a group
/// whose sharing saves too little, or a producer that does not share, keeps them.
///
/// Errors: a blob was not acknowledged (the chunk is released again later).
async fn share_parts(
    state: &Campaigns,
    records: Vec<RequestedV1>,
) -> Result<Vec<RequestedV1>, ProduceError> {
    if !state.producer.shares_parts() {
        return Ok(records);
    }
    // A chunk has one group per A/B variant at most: compare with each group's first.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        match groups.iter_mut().find(|g| records[g[0]].same_parts(record)) {
            Some(group) => group.push(i),
            None => groups.push(vec![i]),
        }
    }
    let topic = state.topics.blobs();
    let mut shared = Vec::new();
    for group in groups {
        let members: Vec<&RequestedV1> = group.iter().map(|&i| &records[i]).collect();
        if let Some(reference) = blobs::write_shared(&state.producer, &topic, &members).await? {
            shared.push((group, reference));
        }
    }
    let mut records = records;
    for (group, reference) in shared {
        for i in group {
            records[i] = records[i].pointing_to(reference.clone());
        }
    }
    Ok(records)
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("PostgreSQL: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Kafka(#[from] ProduceError),
    #[error("{0:?}")]
    Api(sendmill_platform::api::ApiError),
}

impl From<sendmill_platform::api::ApiError> for RoundError {
    fn from(e: sendmill_platform::api::ApiError) -> Self {
        RoundError::Api(e)
    }
}

pub(crate) async fn run(
    state: Campaigns,
    kafka: KafkaConnection,
    render_group: String,
    shutdown: CancellationToken,
) -> Result<(), crate::Error> {
    let probe = if state.config.max_bulk_backlog > 0 {
        let groups = vec![GroupTopics {
            group_id: render_group,
            topics: vec![kafka.topics.requested(Lane::Bulk)],
        }];
        let kafka = kafka.clone();
        let probe = tokio::task::spawn_blocking(move || {
            LagProbe::new(&kafka, groups, Duration::from_secs(5))
        })
        .await
        .expect("lag probe setup does not panic")?;
        Some(Arc::new(Mutex::new(probe)))
    } else {
        None
    };
    tracing::info!(chunk = state.config.chunk_size, "campaign sender running");
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let worked = match round(&state, probe.as_ref()).await {
            Ok(worked) => worked,
            Err(error) => {
                tracing::error!(%error, "campaign sender round failed; retrying");
                false
            }
        };
        if !worked {
            tokio::select! {
                _ = tokio::time::sleep(state.config.poll) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

async fn round(
    state: &Campaigns,
    probe: Option<&Arc<Mutex<LagProbe>>>,
) -> Result<bool, RoundError> {
    let mut worked = start_due(state).await?;
    decide_winners(state).await?;
    // Every sending campaign, each account's least recently served first.
    let sending: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, account_id FROM campaigns
         WHERE installation = $1 AND state = 'sending' AND phase IN ('all', 'test', 'rest')
         ORDER BY account_id, last_release_at NULLS FIRST",
    )
    .bind(state.topics.prefix())
    .fetch_all(state.store.pool())
    .await?;
    if sending.is_empty() {
        return Ok(worked);
    }
    if let Some(probe) = probe {
        let probe = probe.clone();
        let lag = tokio::task::spawn_blocking(move || probe.lock().expect("not poisoned").sample())
            .await
            .expect("lag sampling does not panic");
        match lag {
            Ok(lags)
                if lags.iter().map(|(_, l)| l).sum::<i64>() > state.config.max_bulk_backlog =>
            {
                metrics::counter!(crate::metric::BACKLOG_WAITS_TOTAL).increment(1);
                return Ok(false);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "bulk backlog unknown; releasing anyway"),
        }
    }
    // One chunk per account per round: its first campaign that can release (one
    // waiting for its throttle passes the turn to the account's next).
    let mut by_account: Vec<(Uuid, Vec<Uuid>)> = Vec::new();
    for (id, account) in sending {
        match by_account.last_mut() {
            Some((a, ids)) if *a == account => ids.push(id),
            _ => by_account.push((account, vec![id])),
        }
    }
    for (account, ids) in by_account {
        for id in ids {
            match release_chunk(state, id, AccountId(account)).await {
                Ok(true) => {
                    worked = true;
                    break;
                }
                Ok(false) => {}
                // One campaign's trouble is logged and passed over; the others go on.
                Err(error) => tracing::error!(campaign = %id, %error, "release failed; retrying"),
            }
        }
    }
    Ok(worked)
}

/// Starts every due scheduled campaign (see the module doc). Returns whether any began.
async fn start_due(state: &Campaigns) -> Result<bool, RoundError> {
    let due: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, account_id FROM campaigns
         WHERE installation = $1 AND state = 'scheduled' AND (send_at IS NULL OR send_at <= now())
         ORDER BY send_at NULLS FIRST LIMIT 20",
    )
    .bind(state.topics.prefix())
    .fetch_all(state.store.pool())
    .await?;
    let mut started = false;
    for (id, account) in due {
        match start(state, id, AccountId(account)).await {
            Ok(began) => started |= began,
            Err(error) => tracing::error!(campaign = %id, %error, "start failed; retrying"),
        }
    }
    Ok(started)
}

async fn start(state: &Campaigns, id: Uuid, account: AccountId) -> Result<bool, RoundError> {
    let mut tx = state.store.pool().begin().await?;
    let Some(row) = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM campaigns WHERE id = $1 AND state = 'scheduled'
           AND (send_at IS NULL OR send_at <= now()) FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let campaign = from_row(&row);
    let condition = match audience_condition(state, account, &campaign.input.audience).await {
        Ok(c) => c,
        Err(error) if error.status.is_client_error() => {
            // The segment went away after scheduling: nobody to send to.
            tracing::error!(campaign = %id, error = %error.message, "campaign cannot start: cancelled");
            set_aside(
                tx,
                id,
                "cancelled",
                format!("not started: {}", error.message),
            )
            .await?;
            return Ok(true);
        }
        Err(error) => return Err(error.into()),
    };
    let n = condition.next_placeholder();
    let sql = format!(
        "INSERT INTO campaign_recipients (campaign_id, seq, contact_id)
         SELECT ${n}, row_number() OVER (ORDER BY md5(${n}::text || c.id::text)), c.id
         FROM contacts c WHERE c.account_id = $1 AND {}",
        condition.clause
    );
    let size = condition
        .bind(account, sqlx::query(&sql))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
    let (phase, test_size) = match &campaign.input.ab_test {
        Some(ab) => {
            let k = ab.variants.len() as i64;
            let share = (size * i64::from(ab.test_percent) + 99) / 100;
            let test_size = share.max(k).min(size);
            let names: Vec<String> = ab.variants.iter().map(|v| v.name.clone()).collect();
            sqlx::query(
                "UPDATE campaign_recipients SET variant = ($2::text[])[((seq - 1) % $3) + 1]
                 WHERE campaign_id = $1 AND seq <= $4",
            )
            .bind(id)
            .bind(&names)
            .bind(k)
            .bind(test_size)
            .execute(&mut *tx)
            .await?;
            ("test", Some(test_size))
        }
        None => ("all", None),
    };
    sqlx::query(
        "UPDATE campaigns SET state = 'sending', phase = $2, audience_size = $3, test_size = $4,
             cursor = 0, started_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(phase)
    .bind(size)
    .bind(test_size)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(campaign = %id, audience = size, ?test_size, "campaign started");
    Ok(true)
}

/// Chooses the winner of every sending campaign whose test wait is over.
async fn decide_winners(state: &Campaigns) -> Result<(), RoundError> {
    let rows = sqlx::query(&format!(
        "SELECT account_id, {COLUMNS} FROM campaigns
         WHERE installation = $1 AND state = 'sending' AND phase = 'waiting'
           AND test_ends_at <= now()"
    ))
    .bind(state.topics.prefix())
    .fetch_all(state.store.pool())
    .await?;
    for row in rows {
        let account = AccountId(row.get("account_id"));
        let campaign = from_row(&row);
        let Some(ab) = &campaign.input.ab_test else {
            continue;
        };
        let figures = match crate::stats::variant_figures(state, account, &campaign).await {
            Ok(f) => f,
            Err(error) => {
                // ClickHouse away: the decision waits, releases go on.
                tracing::warn!(campaign = %campaign.id, error = %error.message, "A/B figures unavailable");
                continue;
            }
        };
        let (winner, tie) = match crate::stats::best(&figures, ab.metric) {
            Some(best) => best,
            None => (ab.variants[0].name.clone(), true),
        };
        let reason = serde_json::json!({
            "chosen_by": ab.metric,
            // No variant did better than the others (no opens or clicks yet, or equal
            // rates): the first one is sent.
            "tie": tie,
            "figures": figures,
        });
        let decided = sqlx::query(
            "UPDATE campaigns SET winner = $2, winner_reason = $3, phase = 'rest', updated_at = now()
             WHERE id = $1 AND phase = 'waiting' AND state = 'sending'",
        )
        .bind(campaign.id)
        .bind(&winner)
        .bind(sqlx::types::Json(reason))
        .execute(state.store.pool())
        .await?;
        if decided.rows_affected() == 0 {
            continue;
        }
        tracing::info!(campaign = %campaign.id, %winner, "A/B test decided");
    }
    Ok(())
}

/// Why a recipient is passed over at release (NULL: release it). `$2` the account,
/// `$3` the campaign's lists, `$4` its excluded lists.
const SKIP_REASON: &str = "CASE
    WHEN c.id IS NULL THEN 'deleted'
    WHEN c.status <> 'active' THEN c.status
    WHEN EXISTS (SELECT 1 FROM suppressions s WHERE s.account_id = $2 AND s.email = c.email
                 AND (s.expires_at IS NULL OR s.expires_at > now())) THEN 'suppressed'
    WHEN cardinality($3::uuid[]) > 0 AND NOT EXISTS (SELECT 1 FROM list_members m
                 WHERE m.account_id = $2 AND m.contact_id = c.id AND m.list_id = ANY($3)
                   AND m.state = 'subscribed') THEN 'left_list'
    WHEN EXISTS (SELECT 1 FROM list_members m WHERE m.account_id = $2 AND m.contact_id = c.id
                 AND m.list_id = ANY($4) AND m.state = 'subscribed') THEN 'excluded'
  END";

/// Releases the next chunk of campaign `id` (see the module doc). Returns whether it
/// did anything (released, skipped or moved the campaign on).
async fn release_chunk(
    state: &Campaigns,
    id: Uuid,
    account: AccountId,
) -> Result<bool, RoundError> {
    let mut tx = state.store.pool().begin().await?;
    let Some(row) = sqlx::query(&format!(
        "SELECT {COLUMNS}, throttle_tokens,
                extract(epoch FROM now() - coalesce(throttle_at, now()))::float8 AS throttle_idle
         FROM campaigns WHERE id = $1 AND state = 'sending'
           AND phase IN ('all', 'test', 'rest') FOR UPDATE SKIP LOCKED"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let campaign = from_row(&row);
    let cursor: i64 = row.get("cursor");
    let end = match campaign.phase.as_str() {
        "test" => campaign.progress.test_size.unwrap_or(0),
        _ => campaign.progress.audience_size.unwrap_or(0),
    };
    if cursor >= end {
        finish_phase(&mut tx, &campaign).await?;
        tx.commit().await?;
        return Ok(true);
    }
    // The throttle: a token bucket in the row (shared by every sender), refilled at
    // throttle_per_hour / 3600 per second up to one minute's worth (at least one).
    let mut limit = i64::from(state.config.chunk_size);
    let mut tokens = None;
    if let Some(per_hour) = campaign.input.throttle_per_hour {
        let cap = (f64::from(per_hour) / 60.0).clamp(1.0, f64::from(state.config.chunk_size));
        let idle: f64 = row.get("throttle_idle");
        let available =
            (row.get::<f64, _>("throttle_tokens") + idle * f64::from(per_hour) / 3600.0).min(cap);
        limit = limit.min(available.floor() as i64);
        tokens = Some(available);
        if limit == 0 {
            return Ok(false);
        }
    }
    let base = match content::base(state, account, &campaign).await {
        Ok(base) => base,
        Err(error) if error.status.is_client_error() => {
            // The template is gone: nothing sensible to send; the marketer decides.
            tracing::error!(campaign = %id, error = %error.message, "campaign paused");
            set_aside(tx, id, "paused", format!("paused: {}", error.message)).await?;
            return Ok(true);
        }
        Err(error) => return Err(error.into()),
    };
    let rows = sqlx::query(&format!(
        "SELECT r.seq, r.variant, r.contact_id AS id, c.email, c.name, c.attributes,
                {SKIP_REASON} AS skip
         FROM campaign_recipients r
         LEFT JOIN contacts c ON c.account_id = $2 AND c.id = r.contact_id
         WHERE r.campaign_id = $1 AND r.seq > $5 AND r.seq <= $6
         ORDER BY r.seq LIMIT $7"
    ))
    .bind(id)
    .bind(account.0)
    .bind(&campaign.input.audience.lists)
    .bind(&campaign.input.audience.exclude_lists)
    .bind(cursor)
    .bind(end)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let ab = campaign.input.ab_test.as_ref();
    let winner = content::variant(&base, ab, campaign.winner.as_deref());
    let mut variants: HashMap<String, content::Content> = HashMap::new();
    let mut records = Vec::new();
    let mut seqs = Vec::with_capacity(rows.len());
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut skipped_by: HashMap<String, u64> = HashMap::new();
    for r in &rows {
        seqs.push(r.get::<i64, _>("seq"));
        if let Some(reason) = r.get::<Option<String>, _>("skip") {
            *skipped_by.entry(reason.clone()).or_default() += 1;
            outcomes.push(reason);
            continue;
        }
        outcomes.push("released".to_owned());
        let recipient = recipient_from_row(r);
        let variant: Option<String> = r.get("variant");
        let content = match &variant {
            Some(v) => variants
                .entry(v.clone())
                .or_insert_with(|| content::variant(&base, ab, Some(v))),
            None => &winner,
        };
        records.push(content::record(
            state,
            account,
            &campaign,
            content,
            &recipient,
            MessageId::for_contact(campaign.id, recipient.contact_id),
            Addressing::Release {
                variant: variant.as_deref(),
            },
        ));
    }
    let records = share_parts(state, records).await?;
    try_join_all(records.iter().map(|r| produce(state, r, "campaigns"))).await?;
    sqlx::query(
        "UPDATE campaign_recipients r SET outcome = u.outcome
         FROM unnest($2::bigint[], $3::text[]) AS u(seq, outcome)
         WHERE r.campaign_id = $1 AND r.seq = u.seq",
    )
    .bind(id)
    .bind(&seqs)
    .bind(&outcomes)
    .execute(&mut *tx)
    .await?;
    let released = records.len() as i64;
    let skipped = rows.len() as i64 - released;
    let new_cursor = seqs.last().copied().unwrap_or(end);
    sqlx::query(
        "UPDATE campaigns SET cursor = $2, released = released + $3, skipped = skipped + $4,
             throttle_tokens = coalesce($5, throttle_tokens), throttle_at = now(),
             last_release_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(new_cursor)
    .bind(released)
    .bind(skipped)
    .bind(tokens.map(|t| t - rows.len() as f64))
    .execute(&mut *tx)
    .await?;
    if new_cursor >= end {
        finish_phase(&mut tx, &campaign).await?;
    }
    tx.commit().await?;
    metrics::counter!(crate::metric::RELEASED_TOTAL).increment(released as u64);
    for (reason, n) in skipped_by {
        metrics::counter!(crate::metric::SKIPPED_TOTAL, "reason" => reason).increment(n);
    }
    Ok(true)
}

/// Takes campaign `id` (whose row `tx` holds) out of the sender's hands: `paused` for
/// the marketer to decide, or `cancelled` before it started (an audience of 0), with
/// `note` saying why; commits.
async fn set_aside(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    to: &str,
    note: String,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE campaigns SET state = $2, note = $3, updated_at = now(),
             finished_at = CASE WHEN $2 = 'cancelled' THEN now() END,
             audience_size = CASE WHEN $2 = 'cancelled' THEN coalesce(audience_size, 0)
                                  ELSE audience_size END
         WHERE id = $1",
    )
    .bind(id)
    .bind(to)
    .bind(note)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The campaign's current phase is fully released: an A/B test waits for its winner
/// (`wait_seconds`, or the marketer for `manual`); otherwise the campaign is sent.
async fn finish_phase(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    campaign: &Campaign,
) -> Result<(), sqlx::Error> {
    match (&campaign.input.ab_test, campaign.phase.as_str()) {
        (Some(ab), "test") => {
            let wait = (ab.metric != Metric::Manual).then_some(i64::from(ab.wait_seconds));
            sqlx::query(
                "UPDATE campaigns SET phase = 'waiting',
                     test_ends_at = now() + make_interval(secs => $2), updated_at = now()
                 WHERE id = $1",
            )
            .bind(campaign.id)
            .bind(wait.map(|w| w as f64))
            .execute(&mut **tx)
            .await?;
        }
        _ => {
            sqlx::query(
                "UPDATE campaigns SET state = 'sent', finished_at = now(), updated_at = now()
                 WHERE id = $1",
            )
            .bind(campaign.id)
            .execute(&mut **tx)
            .await?;
            tracing::info!(campaign = %campaign.id, "campaign sent");
        }
    }
    Ok(())
}
