//! The names of the metrics this crate records, in one place: what each counts, its
//! labels and unit. The Grafana dashboard (`deploy/grafana/`) queries them by these names.

/// Recipients accepted (queued, scheduled or sandboxed).
pub const INGEST_ACCEPTED_TOTAL: &str = "sendmill_ingest_accepted_total";
/// `accepted`/`dropped` events that could not be written (their messages are queued).
pub const INGEST_EVENT_LOSS_TOTAL: &str = "sendmill_ingest_event_loss_total";
/// Scheduled messages released to the queue at their `send_at`.
pub const INGEST_RELEASED_TOTAL: &str = "sendmill_ingest_released_total";
/// Requests refused for an account's limit; label `limit` (rate, quota).
pub const INGEST_THROTTLED_TOTAL: &str = "sendmill_ingest_throttled_total";
/// Messages taken over SMTP submission (each with one or more recipients).
pub const SUBMISSION_MESSAGES_TOTAL: &str = "sendmill_submission_messages_total";
/// SMTP submission transactions refused at the final dot; label `code` (the SMTP reply
/// code: 550 sender, 552 size, 554 malformed, 451/452 limits or queue).
pub const SUBMISSION_REFUSED_TOTAL: &str = "sendmill_submission_refused_total";
