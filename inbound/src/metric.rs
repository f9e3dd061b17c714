//! The names of the metrics this crate records, in one place: what each counts, its
//! labels and unit. The Grafana dashboard (`deploy/grafana/`) queries them by these names.

/// Messages the inbound SMTP server answered at the final dot; label `result` (`queued`,
/// or the refusal's reply code).
pub const INBOUND_RECEIVED_TOTAL: &str = "sendmill_inbound_received_total";
/// Recipients refused at RCPT because their domain is not a return-path domain (relay
/// attempts and misdirected mail).
pub const INBOUND_RELAY_REFUSED_TOTAL: &str = "sendmill_inbound_relay_refused_total";
/// Inbound messages processed; labels `kind` (failed, delayed, delivered, complaint,
/// auto_reply, unsubscribe, unclassified), `category` (the bounce category, or empty) and
/// `matched` (whether it was matched to a message: `true`/`false`).
pub const INBOUND_PROCESSED_TOTAL: &str = "sendmill_inbound_processed_total";
/// Inbound messages kept for a person to look at (unclassified or unmatched).
pub const INBOUND_KEPT_TOTAL: &str = "sendmill_inbound_kept_total";
