//! W3C trace context across the pipeline, so that one trace follows a message from the
//! `POST` that accepted it, through render and every dispatch attempt, to its events in
//! ClickHouse.
//!
//! Context crosses Kafka as `traceparent` / `tracestate` record headers: the producer
//! writes the current span's context, the consumer reads it into [`TraceHeaders`] and
//! opens each record's span as its child. HTTP requests continue a caller's
//! `traceparent`. Spans become OpenTelemetry spans only when the process exports them
//! (`telemetry.otlp_endpoint`); otherwise no span has a context, nothing is written into
//! records, and a record's context is passed on untouched by nobody.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use sendmill_wire::EventV1;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once spans are exported, so that describing spans costs nothing otherwise.
pub(crate) static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The W3C header carrying trace id, parent span id and sampling flag.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor-specific trace state.
pub const TRACESTATE: &str = "tracestate";

/// The trace context a record or request arrived with, as its W3C header values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The context of the current span; empty when spans are not exported.
    pub fn current() -> Self {
        let mut headers = Self::default();
        // Every produce asks: without an exporter there is no context to look up.
        if !EXPORTING.load(Ordering::Relaxed) {
            return headers;
        }
        let context = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&context, &mut headers);
        headers
    }

    /// Reads the context from Kafka record headers.
    pub fn from_kafka<H: Headers>(headers: &H) -> Self {
        let mut found = Self::default();
        for header in headers.iter() {
            let value = header
                .value
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned);
            match header.key {
                TRACEPARENT => found.traceparent = value,
                TRACESTATE => found.tracestate = value,
                _ => {}
            }
        }
        found
    }

    /// Reads the context from HTTP request headers.
    pub fn from_http(headers: &axum::http::HeaderMap) -> Self {
        let read = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Self {
            traceparent: read(TRACEPARENT),
            tracestate: read(TRACESTATE),
        }
    }

    /// `headers` with this context added.
    pub fn add_to_kafka(&self, mut headers: OwnedHeaders) -> OwnedHeaders {
        for (key, value) in [
            (TRACEPARENT, &self.traceparent),
            (TRACESTATE, &self.tracestate),
        ] {
            if let Some(value) = value {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                });
            }
        }
        headers
    }

    /// Makes `span` a child of this context. A missing or malformed `traceparent` leaves
    /// `span` the root of a new trace; so does a process that does not export spans.
    pub fn continue_in(&self, span: &tracing::Span) {
        if self.traceparent.is_none() || !EXPORTING.load(Ordering::Relaxed) {
            return;
        }
        let parent = TraceContextPropagator::new().extract(self);
        // Fails only when the span is disabled or spans are not exported: nothing to link.
        let _ = span.set_parent(parent);
    }
}

/// Describes `event` on the current span: what happened to the message, and where. A
/// no-op unless spans are exported.
pub fn annotate_event(event: &EventV1) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let span = tracing::Span::current();
    span.set_attribute("sendmill.message_id", event.message_id.to_string());
    span.set_attribute("sendmill.event_type", event.event_type.as_str());
    span.set_attribute("sendmill.attempt", i64::from(event.attempt));
    let optional = [
        ("sendmill.provider", &event.provider),
        ("sendmill.mx_host", &event.mx_host),
        ("sendmill.source_ip", &event.source_ip),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            span.set_attribute(key, value.clone());
        }
    }
    if let Some(reply) = &event.smtp {
        span.set_attribute("sendmill.smtp_code", i64::from(reply.code));
    }
}

impl Injector for TraceHeaders {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = Some(value),
            TRACESTATE => self.tracestate = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
}

impl Extractor for TraceHeaders {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::OwnedHeaders;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn kafka_headers_round_trip_and_keep_other_headers() {
        let context = TraceHeaders {
            traceparent: Some(PARENT.into()),
            tracestate: Some("vendor=1".into()),
        };
        let headers = context.add_to_kafka(OwnedHeaders::new().insert(Header {
            key: "sendmill-schema",
            value: Some("requested.v1"),
        }));
        assert_eq!(headers.count(), 3);
        assert_eq!(TraceHeaders::from_kafka(&headers), context);
    }

    #[test]
    fn an_empty_context_writes_no_headers() {
        let headers = TraceHeaders::default().add_to_kafka(OwnedHeaders::new());
        assert_eq!(headers.count(), 0);
        assert_eq!(TraceHeaders::current(), TraceHeaders::default());
    }

    #[test]
    fn http_headers_are_read() {
        let mut map = axum::http::HeaderMap::new();
        map.insert(TRACEPARENT, PARENT.parse().unwrap());
        let read = TraceHeaders::from_http(&map);
        assert_eq!(read.traceparent.as_deref(), Some(PARENT));
        assert_eq!(read.tracestate, None);
    }
}
