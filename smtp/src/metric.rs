//! The names of the metrics this crate records, in one place: what each counts, its
//! labels and unit. The Grafana dashboard (`deploy/grafana/`) queries them by these names.

/// Seconds to open an SMTP session (connect, greeting, EHLO, STARTTLS).
pub const SMTP_CONNECT_SECONDS: &str = "sendmill_smtp_connect_seconds";
/// Seconds from the message data to the reply to its final dot.
pub const SMTP_DATA_SECONDS: &str = "sendmill_smtp_data_seconds";
