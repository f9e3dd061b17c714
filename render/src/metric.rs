//! The names of the metrics this crate records, in one place: what each counts, its
//! labels and unit. The Grafana dashboard (`deploy/grafana/`) queries them by these names.

/// Messages ended as `render_failed`.
pub const RENDER_FAILED_TOTAL: &str = "sendmill_render_failed_total";
/// Messages rendered and written to `ready`.
pub const RENDERED_TOTAL: &str = "sendmill_rendered_total";
