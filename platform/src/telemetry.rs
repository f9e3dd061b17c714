//! Logs, traces and metrics for a process. Logs go to stderr (JSON by default). Spans go,
//! when `otlp_endpoint` is set, through `tracing-opentelemetry` to a batch exporter that
//! posts OTLP JSON to a collector from its own thread, so a slow collector never holds a
//! message. Metrics are recorded through the `metrics` facade into one Prometheus
//! recorder that `/metrics` renders. All three are process-wide, so `init` may be called
//! more than once (tests do); the first call wins.

use crate::config::{LogFormat, TelemetryConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    trace::{Sampler, SdkTracerProvider},
    Resource,
};
use std::{
    sync::{atomic::Ordering, OnceLock},
    time::Duration,
};
use tracing_subscriber::{
    filter::{LevelFilter, Targets},
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer,
};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP span exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// What `init` installed that needs an orderly end: dropping it sends the spans still
/// queued for export.
#[must_use = "dropping it stops span export"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every span ended so far (tests and short-lived commands use it).
    pub fn flush(&self) {
        if let Some(provider) = &self.tracer_provider {
            if let Err(error) = provider.force_flush() {
                tracing::warn!(%error, "exporting spans failed");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take() {
            if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(%error, "exporting the last spans failed");
            }
        }
    }
}

/// Installs the log subscriber (with span export when configured) and the metrics
/// recorder. `service` names the process in its spans (`service.name`).
pub fn init(config: &TelemetryConfig, service: &str) -> Result<Telemetry, TelemetryError> {
    prometheus();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_filter.as_str()));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match config.log_format {
        LogFormat::Json => logs.json().flatten_event(true).boxed(),
        LogFormat::Text => logs.boxed(),
    }
    .with_filter(filter);

    let tracer_provider = if config.otlp_endpoint.is_empty() {
        None
    } else {
        Some(tracer_provider(config, service)?)
    };
    // Spans of Sendmill's own code only: the exporter's HTTP client logs through tracing
    // too, and exporting those would feed back into itself.
    let spans = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("sendmill"))
            .with_filter(Targets::new().with_target("sendmill", LevelFilter::INFO))
    });
    // A second init (tests start several pipelines in one process) keeps the first.
    if tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_err()
    {
        return Ok(Telemetry {
            tracer_provider: None,
        });
    }
    crate::traces::EXPORTING.store(tracer_provider.is_some(), Ordering::Relaxed);
    Ok(Telemetry { tracer_provider })
}

fn tracer_provider(
    config: &TelemetryConfig,
    service: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let endpoint = format!("{}/v1/traces", config.otlp_endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint.as_str())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint, source })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only when another recorder was installed first; then ours stays unused
        // and `/metrics` shows nothing, which a test of the metrics endpoint would catch.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
