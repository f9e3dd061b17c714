//! The reputation monitor's alerts, kept for the dashboard: what was paused, why, and
//! when ops resumed it.

use crate::{Store, StoreError};
use sendmill_wire::AlertV1;
use sqlx::Row;
use time::OffsetDateTime;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Alert {
    #[serde(flatten)]
    pub alert: AlertV1,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
}

impl Store {
    pub async fn record_alert(&self, alert: &AlertV1) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO reputation_alerts
                 (id, raised_at, subject_kind, subject, metric, value, threshold, window_secs, volume)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(alert.alert_id)
        .bind(alert.raised_at)
        .bind(&alert.subject_kind)
        .bind(&alert.subject)
        .bind(&alert.metric)
        .bind(alert.value)
        .bind(alert.threshold)
        .bind(alert.window_secs as i32)
        .bind(alert.volume as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest alerts first.
    pub async fn alerts(&self, limit: i64) -> Result<Vec<Alert>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, raised_at, subject_kind, subject, metric, value, threshold, window_secs,
                    volume, resolved_at
             FROM reputation_alerts ORDER BY raised_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Alert {
                    alert: AlertV1 {
                        alert_id: r.try_get("id")?,
                        raised_at: r.try_get("raised_at")?,
                        subject_kind: r.try_get("subject_kind")?,
                        subject: r.try_get("subject")?,
                        metric: r.try_get("metric")?,
                        value: r.try_get("value")?,
                        threshold: r.try_get("threshold")?,
                        window_secs: r.try_get::<i32, _>("window_secs")? as u32,
                        volume: r.try_get::<i64, _>("volume")? as u64,
                        action: "paused".into(),
                    },
                    resolved_at: r.try_get("resolved_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Marks the open alerts of a subject resolved (ops resumed it).
    pub async fn resolve_alerts(
        &self,
        subject_kind: &str,
        subject: &str,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE reputation_alerts SET resolved_at = now()
             WHERE subject_kind = $1 AND subject = $2 AND resolved_at IS NULL",
        )
        .bind(subject_kind)
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

impl Store {
    /// Whether `key_id` is an unrevoked key of an operator account with the `admin`
    /// scope (dashboard sessions re-check this on every request).
    pub async fn operator_key_active(&self, key_id: uuid::Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM api_keys k JOIN accounts a ON a.id = k.account_id
             WHERE k.id = $1 AND k.revoked_at IS NULL AND a.operator AND 'admin' = ANY (k.scopes))",
        )
        .bind(key_id)
        .fetch_one(&self.pool)
        .await?)
    }
}
