//! The names of the metrics this crate records, in one place: what each counts, its
//! labels and unit. The Grafana dashboard (`deploy/grafana/`) queries them by these names.

/// Event rows written to ClickHouse.
pub const ANALYTICS_ROWS_WRITTEN_TOTAL: &str = "sendmill_analytics_rows_written_total";
/// Opens, clicks and unsubscribes recorded; label `type`.
pub const ENGAGEMENT_EVENTS_TOTAL: &str = "sendmill_engagement_events_total";
/// Accepted messages without an outcome yet; labels `lane`, `stage` (the last to see them).
pub const MESSAGES_IN_FLIGHT: &str = "sendmill_messages_in_flight";
/// In-flight messages silent for longer than `outcomes.overdue_after`; labels `lane`, `stage`.
pub const MESSAGES_OVERDUE: &str = "sendmill_messages_overdue";
/// Pauses the reputation monitor set; label `kind` (ip, pool, account).
pub const REPUTATION_PAUSES_TOTAL: &str = "sendmill_reputation_pauses_total";
/// Tracking or unsubscribe requests with a bad token; label `kind`.
pub const TRACKING_REJECTED_TOTAL: &str = "sendmill_tracking_rejected_total";
/// Seconds per webhook POST.
pub const WEBHOOK_ATTEMPT_SECONDS: &str = "sendmill_webhook_attempt_seconds";
/// Webhook POSTs; label `outcome` (delivered, failed, …).
pub const WEBHOOK_ATTEMPTS_TOTAL: &str = "sendmill_webhook_attempts_total";
/// Webhook events given up on after the retry window.
pub const WEBHOOK_DEAD_LETTERED_TOTAL: &str = "sendmill_webhook_dead_lettered_total";
/// Webhook events in the dead-letter queue now.
pub const WEBHOOK_DEAD_LETTERS: &str = "sendmill_webhook_dead_letters";
/// Webhook events an endpoint acknowledged.
pub const WEBHOOK_EVENTS_DELIVERED_TOTAL: &str = "sendmill_webhook_events_delivered_total";
/// Webhook events written to endpoints' outboxes.
pub const WEBHOOK_EVENTS_QUEUED_TOTAL: &str = "sendmill_webhook_events_queued_total";
