//! The ops endpoints every stage serves (`/livez`, `/readyz`, `/healthz`, `/metrics`),
//! serving an axum router until shutdown, and reading a request's cookies.

use axum::{
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4: pairs
/// separated by `;`), for the web pages' session cookies.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// - `/livez` (and its older name `/healthz`): 200 and `{"status":"ok","stage":…}`
///   whenever the process answers at all (the liveness probe);
/// - `/readyz`: 200 `{"status":"ready","checks":{name: "ok"}}` when every condition and
///   dependency of [`crate::health`] holds, else 503 with `"not_ready"` and each failing
///   check's reason (the readiness probe);
/// - `/metrics`: Prometheus text.
pub fn ops_router(stage: &'static str) -> Router {
    let live = move || async move { Json(serde_json::json!({"status": "ok", "stage": stage})) };
    Router::new()
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(move || ready(stage)))
        .route("/metrics", get(render_metrics))
}

async fn ready(stage: &'static str) -> impl IntoResponse {
    let report = crate::health::readiness().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if report.ready { "ready" } else { "not_ready" },
        "stage": stage,
        "checks": report.checks,
    });
    (status, Json(body))
}

async fn render_metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}

/// Serves `router` on `listener` until `shutdown` fires, then finishes in-flight requests.
/// `name` says what listens, in the log line announcing it.
pub async fn serve(
    name: &str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "{name} listening");
    // The peer address reaches handlers that need it (the audiences' public forms
    // limit sign-ups per client address) as `ConnectInfo<SocketAddr>`.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
