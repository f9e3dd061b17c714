//! The `events` row, one per wire event.

use clickhouse::Row;
use sendmill_wire::EventV1;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, Row, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: u32,
    pub occurred_at_ms: u64,
    #[serde(with = "clickhouse::serde::uuid")]
    pub message_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub account_id: Uuid,
    pub recipient: String,
    pub recipient_domain: String,
    pub campaign_id: String,
    pub tags: Vec<String>,
    pub metadata: String,
    pub stage: String,
    pub mx_host: String,
    pub source_ip: String,
    pub ip_pool: String,
    pub provider: String,
    pub smtp_code: u16,
    pub smtp_enhanced: String,
    pub smtp_reply: String,
    pub bounce_category: String,
    pub attempt: u16,
    pub reason: String,
    pub user_agent: String,
    pub url: String,
    pub machine: u8,
}

impl From<&EventV1> for EventRow {
    fn from(e: &EventV1) -> Self {
        let millis = (e.occurred_at.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        Self {
            event_id: e.event_id.0,
            event_type: e.event_type.as_str().to_owned(),
            occurred_at: (millis / 1000) as u32,
            occurred_at_ms: millis,
            message_id: e.message_id.0,
            account_id: e.account_id.0,
            recipient: e.recipient.clone(),
            recipient_domain: e.recipient_domain(),
            campaign_id: e.context.campaign_id.clone().unwrap_or_default(),
            tags: e.context.tags.clone(),
            metadata: serde_json::to_string(&e.context.metadata).expect("string map encodes"),
            stage: e.stage.clone(),
            mx_host: e.mx_host.clone().unwrap_or_default(),
            source_ip: e.source_ip.clone().unwrap_or_default(),
            ip_pool: e.context.ip_pool.clone().unwrap_or_default(),
            provider: e.provider.clone().unwrap_or_default(),
            smtp_code: e.smtp.as_ref().map_or(0, |s| s.code),
            smtp_enhanced: e
                .smtp
                .as_ref()
                .and_then(|s| s.enhanced.clone())
                .unwrap_or_default(),
            smtp_reply: e.smtp.as_ref().map(|s| s.text.clone()).unwrap_or_default(),
            bounce_category: e
                .bounce_category
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            attempt: e.attempt.min(u16::MAX as u32) as u16,
            reason: e.reason.clone().unwrap_or_default(),
            user_agent: e.user_agent.clone().unwrap_or_default(),
            url: e.url.clone().unwrap_or_default(),
            machine: u8::from(e.machine),
        }
    }
}
