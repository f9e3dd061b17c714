//! Drops day partitions older than the configured retention from `events` and its
//! rollups. ClickHouse 18.16 has no TTL, and dropping a whole partition is cheap and
//! atomic where deleting rows is neither; so every table here is partitioned by day
//! (`toYYYYMMDD`), and retention is "whole days older than N".

use sendmill_platform::CancellationToken;
use std::time::Duration;
use time::{Date, OffsetDateTime};

/// The tables the job prunes, each with the days it keeps.
#[derive(Clone, Debug)]
pub struct Retention {
    pub tables: Vec<(&'static str, u32)>,
}

impl Retention {
    pub fn new(events_days: u32, rollup_days: u32) -> Self {
        Self {
            tables: vec![
                ("events", events_days),
                ("events_minute", rollup_days),
                ("campaign_minute", rollup_days),
            ],
        }
    }

    /// Drops what is past retention today; returns `(table, partition)` for each drop.
    pub async fn prune(
        &self,
        client: &clickhouse::Client,
        today: Date,
    ) -> Result<Vec<(String, u32)>, clickhouse::error::Error> {
        let mut dropped = Vec::new();
        for &(table, keep_days) in &self.tables {
            let oldest_kept = yyyymmdd(today - time::Duration::days(i64::from(keep_days)));
            let partitions: Vec<String> = client
                .query(
                    "SELECT DISTINCT partition FROM system.parts
                     WHERE database = currentDatabase() AND table = ? AND active",
                )
                .bind(table)
                .fetch_all()
                .await?;
            for partition in partitions {
                // A partition of a day-partitioned table is its YYYYMMDD.
                let Ok(day) = partition.trim_matches('\'').parse::<u32>() else {
                    continue;
                };
                if day < oldest_kept {
                    client
                        .query(&format!("ALTER TABLE {table} DROP PARTITION {day}"))
                        .execute()
                        .await?;
                    tracing::info!(table, day, "dropped partition past retention");
                    dropped.push((table.to_owned(), day));
                }
            }
        }
        Ok(dropped)
    }

    /// Prunes once an `every`, until `shutdown`; a failure is logged and tried again next
    /// time (nothing is lost by pruning late).
    pub async fn run(
        self,
        client: clickhouse::Client,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(error) = self.prune(&client, OffsetDateTime::now_utc().date()).await {
                tracing::warn!(%error, "retention: cannot prune partitions");
            }
        }
    }
}

pub fn yyyymmdd(day: Date) -> u32 {
    day.year() as u32 * 10_000 + u32::from(u8::from(day.month())) * 100 + u32::from(day.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_are_the_day_as_a_number() {
        let day = Date::from_calendar_date(2026, time::Month::March, 7).unwrap();
        assert_eq!(yyyymmdd(day), 20260307);
        assert!(yyyymmdd(day) < yyyymmdd(day + time::Duration::days(30)));
    }
}
