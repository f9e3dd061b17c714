//! `sendmill.alerts.v1`: something ops must know about, not tied to one message. The
//! reputation monitor writes one when a source IP's or an account's bounce or complaint
//! rate crosses its threshold and it pauses that IP or account.

use crate::WirePayload;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertV1 {
    pub alert_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub raised_at: OffsetDateTime,
    /// `ip` or `account`.
    pub subject_kind: String,
    /// The IP address or the account id.
    pub subject: String,
    /// `bounce_rate` or `complaint_rate`.
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    /// The sliding window the rate was measured over.
    pub window_secs: u32,
    /// Messages sent in that window (the rate's denominator).
    pub volume: u64,
    /// What was done: `paused`.
    pub action: String,
}

impl WirePayload for AlertV1 {
    const SCHEMA: &'static str = "sendmill.alerts.v1";
}
