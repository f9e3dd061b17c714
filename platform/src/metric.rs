//! The names of the metrics this crate records, in one place: what each counts, its
//! labels and unit. The Grafana dashboard (`deploy/grafana/`) queries them by these names.

/// Records handed to a stage's handler; labels `stage`, `topic`.
pub const CONSUMED_TOTAL: &str = "sendmill_consumed_total";
/// Times a stage's handlers were full and its partitions paused; label `stage`.
pub const CONSUMER_CAPACITY_PAUSES_TOTAL: &str = "sendmill_consumer_capacity_pauses_total";
/// Times those partitions were resumed; label `stage`.
pub const CONSUMER_CAPACITY_RESUMES_TOTAL: &str = "sendmill_consumer_capacity_resumes_total";
/// Records between a consumer's position and the end of the partition; labels `stage`, `topic`, `partition`.
pub const CONSUMER_LAG: &str = "sendmill_consumer_lag";
/// 1 while a stage's partitions are paused for capacity; label `stage`.
pub const CONSUMER_PAUSED: &str = "sendmill_consumer_paused";
/// Times a stage's consumer clients were replaced after a fatal error; label `stage`.
pub const CONSUMER_RESTARTS_TOTAL: &str = "sendmill_consumer_restarts_total";
/// Records sent to the dead-letter topic; label `stage`.
pub const DLQ_TOTAL: &str = "sendmill_dlq_total";
/// Seconds a stage's handler took per record; label `stage`.
pub const HANDLE_SECONDS: &str = "sendmill_handle_seconds";
/// Failed infrastructure calls retried; label `call`.
pub const INFRA_RETRIES_TOTAL: &str = "sendmill_infra_retries_total";
/// Kafka produce calls that failed (each is retried by its caller).
pub const PRODUCE_ERRORS_TOTAL: &str = "sendmill_produce_errors_total";
/// Seconds until Kafka acknowledged a produced record.
pub const PRODUCE_SECONDS: &str = "sendmill_produce_seconds";
