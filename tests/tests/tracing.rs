//! One trace follows a message through every stage: the spans that ingest, render, the
//! dispatcher and analytics export over OTLP/HTTP for one message share one trace id,
//! carried across Kafka as W3C `traceparent` record headers. The collector is an OTLP
//! JSON receiver in this test; the exporter under test is the one `sendmill` ships.
//!
//! Its own test binary: span export is set up once per process, before the pipeline.

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use sendmill_platform::{config::TelemetryConfig, telemetry};
use sendmill_tests::*;
use serde_json::{json, Value};
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

const LIMIT: Duration = Duration::from_secs(60);

/// One exported span, as the receiver saw it.
#[derive(Clone, Debug)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, Value>,
}

impl ExportedSpan {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

type Received = Arc<Mutex<Vec<ExportedSpan>>>;

/// `POST /v1/traces` of an OTLP/HTTP collector, JSON encoding.
async fn receive(State(received): State<Received>, Json(body): Json<Value>) -> StatusCode {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut spans = Vec::new();
    for resource in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&resource["resource"]["attributes"])
            .remove("service.name")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(ExportedSpan {
                    service: service.clone(),
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]).to_ascii_lowercase(),
                    span_id: text(&span["spanId"]).to_ascii_lowercase(),
                    parent_span_id: text(&span["parentSpanId"]).to_ascii_lowercase(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    if spans.is_empty() {
        // An export without spans means the receiver misread the encoding.
        return StatusCode::BAD_REQUEST;
    }
    received.lock().unwrap().extend(spans);
    StatusCode::OK
}

/// OTLP `KeyValue`s as key → the value's JSON (strings as strings, ints as strings or
/// numbers, as the encoding has them).
fn attributes(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((kv["key"].as_str()?.to_owned(), value))
        })
        .collect()
}

async fn start_collector() -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// The spans of the stages that handled `message_id`'s records, by stage.
fn stage_spans(received: &Received, message_id: &str) -> Vec<ExportedSpan> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.attribute("messaging.kafka.message.key") == Some(message_id))
        .cloned()
        .collect()
}

/// Waits until analytics exported the span of `message_id`'s delivered event (the last
/// span of its trace), flushing the exporter on every round.
async fn wait_for_trace(
    exporter: &telemetry::Telemetry,
    received: &Received,
    message_id: &str,
) -> Vec<ExportedSpan> {
    poll_until(LIMIT, || async {
        exporter.flush();
        let spans = stage_spans(received, message_id);
        spans
            .iter()
            .any(|s| {
                s.name == "analytics" && s.attribute("sendmill.event_type") == Some("delivered")
            })
            .then_some(spans)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no analytics span of {message_id}'s delivered event within {LIMIT:?}; got {:#?}",
            stage_spans(received, message_id)
        )
    })
}

fn names(spans: &[ExportedSpan]) -> BTreeSet<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_on_the_ingest_render_dispatcher_and_analytics_spans_of_a_message() {
    let (collector, received) = start_collector().await;
    let exporter = telemetry::init(
        &TelemetryConfig {
            log_filter: "warn".into(),
            otlp_endpoint: collector,
            ..Default::default()
        },
        "sendmill-trace-test",
    )
    .expect("the OTLP exporter builds");
    let p = TestPipeline::start().await;

    // A caller that traces its own request: Sendmill's spans join the caller's trace.
    let caller_trace = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let request_id = unique("traced");
    let body = message_to(
        &p,
        json!([{"email": "ada@ok.test", "name": "Ada", "data": {"name": "Ada"}}]),
    );
    let response = p
        .http
        .post(format!("http://{}/v1/messages", p.ingest))
        .bearer_auth(&p.api_key)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("x-request-id", &request_id)
        .json(&body)
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(response.status().as_u16(), 202);
    let traced_id = first_message_id(&response.json().await.unwrap());

    // A caller that does not: ingest starts the trace.
    let (status, body) = p
        .send(&message_to(
            &p,
            json!([{"email": "bob@ok.test", "name": "Bob", "data": {"name": "Bob"}}]),
        ))
        .await;
    assert_eq!(status, 202, "{body}");
    let untraced_id = first_message_id(&body);

    p.wait_for_status(&traced_id, "delivered", LIMIT).await;
    p.wait_for_status(&untraced_id, "delivered", LIMIT).await;

    let spans = wait_for_trace(&exporter, &received, &traced_id).await;
    assert!(
        names(&spans).is_superset(&BTreeSet::from(["render", "dispatcher", "analytics"])),
        "{spans:#?}"
    );
    for span in &spans {
        assert_eq!(span.trace_id, caller_trace, "{span:#?}");
    }
    let ingest: Vec<ExportedSpan> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.attribute("request_id") == Some(request_id.as_str()))
        .cloned()
        .collect();
    assert_eq!(ingest.len(), 1, "{ingest:#?}");
    assert_eq!(ingest[0].name, "POST /v1/messages");
    assert_eq!(ingest[0].trace_id, caller_trace);
    assert_eq!(ingest[0].parent_span_id, caller_span);
    assert_eq!(ingest[0].service, "sendmill-trace-test");
    // Render continues from the request; the dispatcher's attempt and the events follow.
    let render = spans.iter().find(|s| s.name == "render").unwrap();
    assert_eq!(render.parent_span_id, ingest[0].span_id, "{render:#?}");
    let dispatcher = spans.iter().find(|s| s.name == "dispatcher").unwrap();
    assert_eq!(dispatcher.parent_span_id, render.span_id, "{dispatcher:#?}");
    assert_eq!(
        dispatcher.attribute("sendmill.event_type"),
        Some("delivered")
    );
    assert_eq!(dispatcher.attribute("sendmill.mx_host"), Some("mx.ok.test"));
    let delivered_event = spans
        .iter()
        .find(|s| s.name == "analytics" && s.attribute("sendmill.event_type") == Some("delivered"))
        .unwrap();
    assert_eq!(delivered_event.parent_span_id, dispatcher.span_id);

    // The untraced message has a trace of its own, begun by its request.
    let spans = wait_for_trace(&exporter, &received, &untraced_id).await;
    let traces: BTreeSet<&str> = spans.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "{spans:#?}");
    let trace = *traces.first().unwrap();
    assert_ne!(trace, caller_trace);
    let all = received.lock().unwrap().clone();
    let root = all
        .iter()
        .find(|s| s.trace_id == trace && s.name == "POST /v1/messages")
        .expect("the request span is in the message's trace");
    assert!(
        root.parent_span_id.is_empty() || root.parent_span_id.chars().all(|c| c == '0'),
        "{root:#?}"
    );

    p.stop().await;
}
