//! The names of the metrics this crate records, in one place: what each counts, its
//! labels and unit. The Grafana dashboard (`deploy/grafana/`) queries them by these names.

/// Addresses suppressed because of a hard bounce.
pub const DISPATCH_BOUNCE_SUPPRESSIONS_TOTAL: &str = "sendmill_dispatch_bounce_suppressions_total";
/// Events the dispatcher wrote; label `type`.
pub const DISPATCH_EVENTS_TOTAL: &str = "sendmill_dispatch_events_total";
/// Dedupe-journal writes that failed (a crash then may send twice).
pub const DISPATCH_JOURNAL_ERRORS_TOTAL: &str = "sendmill_dispatch_journal_errors_total";
/// Attempts with no usable source IP (paused or out of warm-up quota).
pub const DISPATCH_NO_SOURCE_TOTAL: &str = "sendmill_dispatch_no_source_total";
/// Messages naming an IP pool they may not use (the default pool was used).
pub const DISPATCH_POOL_HINT_IGNORED_TOTAL: &str = "sendmill_dispatch_pool_hint_ignored_total";
/// Messages dropped at delivery because the recipient is suppressed now.
pub const DISPATCH_SUPPRESSED_TOTAL: &str = "sendmill_dispatch_suppressed_total";
/// Messages reported delivered from the journal (data sent, reply never read).
pub const DISPATCH_UNCONFIRMED_TOTAL: &str = "sendmill_dispatch_unconfirmed_total";
/// Share of its configured rate a provider is sent at (1: none, backing off below); label `provider`.
pub const SHAPING_BACKOFF_FACTOR: &str = "sendmill_shaping_backoff_factor";
/// Rate-limit replies that put a provider into backoff; label `provider`.
pub const SHAPING_RATE_LIMITED_TOTAL: &str = "sendmill_shaping_rate_limited_total";
/// Seconds a message waited for its shaping token.
pub const SHAPING_WAIT_SECONDS: &str = "sendmill_shaping_wait_seconds";
/// Messages that waited for a shaping token.
pub const SHAPING_WAITS_TOTAL: &str = "sendmill_shaping_waits_total";
/// Source IPs found out of their warm-up quota for a provider today.
pub const SHAPING_WARMUP_EXHAUSTED_TOTAL: &str = "sendmill_shaping_warmup_exhausted_total";
/// SMTP connections opened; labels `provider`, `tls` (yes, no).
pub const SMTP_CONNECTIONS_TOTAL: &str = "sendmill_smtp_connections_total";
/// Seconds per delivery attempt over one MX host (session and transaction); label `provider`.
pub const SMTP_SEND_SECONDS: &str = "sendmill_smtp_send_seconds";
/// TLS-RPT (RFC 8460) results for recipient domains with an MTA-STS policy, per new
/// session or policy fetch; labels `domain`, `result` (`success` or an RFC 8460
/// result type: `starttls-not-supported`, `certificate-host-mismatch`,
/// `certificate-expired`, `certificate-not-trusted`, `validation-failure`,
/// `sts-policy-fetch-error`, `sts-policy-invalid`), `mode` (`enforce`, `testing`; absent
/// on fetches).
pub const TLS_RPT_SESSIONS_TOTAL: &str = "sendmill_tls_rpt_sessions_total";
