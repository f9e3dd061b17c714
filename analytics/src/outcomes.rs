//! Loss can't hide: accepted messages without an outcome, counted.
//!
//! Every accepted message ends in exactly one terminal event. One that has not yet is
//! *in flight*; one that has been silent (no event at all) for longer than
//! `overdue_after_secs` is *overdue*: the longest retry delay is an hour, so a message
//! still moving through the pipeline writes an event (a `deferred` at each attempt) well
//! within that, and silence past it means a record was lost or a stage is stuck. Both
//! are counted from ClickHouse by lane (a `campaign_id` is the bulk lane) and by the stage
//! of the message's latest event (`ingest`: accepted, not yet attempted; `dispatcher`:
//! deferred, waiting for its retry; `scheduled`: held until its `send_at`, silent by
//! design and never overdue).
//!
//! [`run`] refreshes the gauges `sendmill_messages_in_flight{lane,stage}` and
//! `sendmill_messages_overdue{lane,stage}` every `check`, and raises an alert (kept
//! in PostgreSQL for the dashboard, written to the alerts topic) when a (lane, stage)
//! turns overdue. [`pending`] answers `GET /v1/stats/pending` and the dashboard, for
//! one account or all. Only messages accepted within `window_hours` are looked at (the
//! delivery attempts of a message end after `dispatcher.max_retry_age`, 24 h).

use crate::stats::Visibility;
use sendmill_platform::{
    kafka::{self, KafkaConnection},
    CancellationToken,
};
use sendmill_store::Store;
use sendmill_wire::{AlertV1, ACCEPTED_SCHEDULED};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};
use time::OffsetDateTime;

/// `[analytics.outcomes]`: counting accepted messages without an outcome.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// Refresh the gauges and raise alerts in this analytics process.
    pub enabled: bool,
    /// Time between counts.
    #[serde(with = "sendmill_platform::config::duration")]
    pub check: Duration,
    /// The silence (no event of any kind) after which a message without an
    /// outcome is overdue. Above the longest retry delay (1 h by default).
    #[serde(with = "sendmill_platform::config::duration")]
    pub overdue_after: Duration,
    /// Hours back (by event time) a count looks; above `dispatcher.max_retry_age`.
    pub window_hours: u32,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            check: Duration::from_secs(30),
            overdue_after: Duration::from_secs(5_400),
            window_hours: 48,
        }
    }
}

/// Messages without an outcome in one (lane, stage).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct Pending {
    /// `transactional` or `bulk`.
    pub lane: String,
    /// The stage of the latest event: `ingest`, `dispatcher`, or `scheduled`.
    pub stage: String,
    pub in_flight: u64,
    pub overdue: u64,
}

/// `GET /v1/stats/pending`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingReport {
    pub in_flight: u64,
    pub overdue: u64,
    pub overdue_after_secs: u64,
    pub by: Vec<Pending>,
}

impl PendingReport {
    pub fn new(by: Vec<Pending>, config: &OutcomesConfig) -> Self {
        Self {
            in_flight: by.iter().map(|p| p.in_flight).sum(),
            overdue: by.iter().map(|p| p.overdue).sum(),
            overdue_after_secs: config.overdue_after.as_secs(),
            by,
        }
    }
}

const TERMINAL: &str = "('delivered','bounced','expired','dropped','failed','render_failed')";

/// Counts messages accepted within the window that have no terminal event, per (lane,
/// stage), for `visibility`; `now` is the clock overdue is judged by.
pub async fn pending(
    clickhouse: &clickhouse::Client,
    visibility: Visibility,
    config: &OutcomesConfig,
    now: OffsetDateTime,
) -> Result<Vec<Pending>, clickhouse::error::Error> {
    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as u64;
    let since = now.unix_timestamp() - i64::from(config.window_hours) * 3600;
    let overdue_before_ms = now_ms.saturating_sub(config.overdue_after.as_millis() as u64);
    let account = match visibility {
        Visibility::Account(_) => "AND account_id = toUUID(?)",
        Visibility::Everyone => "",
    };
    // One row per message first (an event redelivered twice is counted once), then per
    // (lane, stage). Kept within what ClickHouse 18.16 and current releases share.
    let sql = format!(
        "SELECT lane, stage, count() AS in_flight, \
                countIf(stage != 'scheduled' AND last_ms < ?) AS overdue \
         FROM ( \
           SELECT message_id, \
                  if(any(campaign_id) = '', 'transactional', 'bulk') AS lane, \
                  if(argMax(event_type, occurred_at_ms) = 'accepted' \
                     AND argMax(reason, occurred_at_ms) = ?, 'scheduled', \
                     argMax(stage, occurred_at_ms)) AS stage, \
                  max(occurred_at_ms) AS last_ms \
           FROM events \
           WHERE occurred_at >= toDateTime(?) {account} \
           GROUP BY message_id \
           HAVING countIf(event_type = 'accepted') > 0 \
              AND countIf(event_type IN {TERMINAL}) = 0 \
         ) \
         GROUP BY lane, stage ORDER BY lane, stage"
    );
    let mut query = clickhouse
        .query(&sql)
        .bind(overdue_before_ms)
        .bind(ACCEPTED_SCHEDULED)
        .bind(since);
    if let Visibility::Account(id) = visibility {
        query = query.bind(id.to_string());
    }
    query.fetch_all::<Pending>().await
}

#[derive(Debug, thiserror::Error)]
pub enum OutcomesError {
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
}

/// Counts every `check` until `shutdown` (see the module doc). A count that fails
/// (ClickHouse away) is logged and tried at the next tick; the gauges keep their values.
pub async fn run(
    clickhouse: clickhouse::Client,
    store: Store,
    kafka: KafkaConnection,
    config: OutcomesConfig,
    shutdown: CancellationToken,
) -> Result<(), OutcomesError> {
    let producer = kafka.producer()?;
    let alerts_topic = kafka.topics.alerts();
    let mut tick = tokio::time::interval(config.check.max(Duration::from_secs(1)));
    // (lane, stage) → overdue at the last count: gauges of a pair that emptied go to 0,
    // and an alert is raised when a pair turns overdue, not at every count.
    let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let rows = match pending(
            &clickhouse,
            Visibility::Everyone,
            &config,
            OffsetDateTime::now_utc(),
        )
        .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot count messages without an outcome");
                continue;
            }
        };
        let mut now: BTreeMap<(String, String), u64> = BTreeMap::new();
        for row in &rows {
            let labels = [("lane", row.lane.clone()), ("stage", row.stage.clone())];
            metrics::gauge!(crate::metric::MESSAGES_IN_FLIGHT, &labels).set(row.in_flight as f64);
            metrics::gauge!(crate::metric::MESSAGES_OVERDUE, &labels).set(row.overdue as f64);
            now.insert((row.lane.clone(), row.stage.clone()), row.overdue);
        }
        for (lane, stage) in last.keys().filter(|k| !now.contains_key(*k)) {
            let labels = [("lane", lane.clone()), ("stage", stage.clone())];
            metrics::gauge!(crate::metric::MESSAGES_IN_FLIGHT, &labels).set(0.0);
            metrics::gauge!(crate::metric::MESSAGES_OVERDUE, &labels).set(0.0);
        }
        // A pair no longer overdue resolves its open alert.
        for ((lane, stage), &was) in &last {
            let is = now
                .get(&(lane.clone(), stage.clone()))
                .copied()
                .unwrap_or(0);
            if was > 0 && is == 0 {
                if let Err(error) = store
                    .resolve_alerts("pipeline", &format!("{lane}/{stage}"))
                    .await
                {
                    tracing::warn!(%error, "cannot resolve the overdue alert");
                }
            }
        }
        for row in &rows {
            let (lane, stage, overdue, in_flight) =
                (&row.lane, &row.stage, row.overdue, row.in_flight);
            let was = last
                .get(&(lane.clone(), stage.clone()))
                .copied()
                .unwrap_or(0);
            if overdue > 0 && was == 0 {
                let alert = AlertV1 {
                    alert_id: uuid::Uuid::now_v7(),
                    raised_at: OffsetDateTime::now_utc(),
                    subject_kind: "pipeline".into(),
                    subject: format!("{lane}/{stage}"),
                    metric: "overdue_messages".into(),
                    value: overdue as f64,
                    threshold: 0.0,
                    window_secs: config.overdue_after.as_secs() as u32,
                    volume: in_flight,
                    action: "alerted".into(),
                };
                tracing::error!(%lane, %stage, overdue, in_flight,
                    overdue_after_secs = config.overdue_after.as_secs(),
                    "accepted messages have had no event past the overdue age");
                if let Err(error) = store.record_alert(&alert).await {
                    tracing::warn!(%error, "cannot record the overdue alert");
                }
                if let Err(error) = producer.send(&alerts_topic, &alert.subject, &alert).await {
                    tracing::warn!(%error, "cannot write the overdue alert");
                }
            }
        }
        last = now;
    }
}
