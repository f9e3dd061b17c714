//! The ops endpoints every stage serves (`/healthz`, `/metrics`) and serving an axum
//! router until shutdown.

use axum::{http::header, response::IntoResponse, routing::get, Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `/healthz` (JSON, names the stage) and `/metrics` (Prometheus text).
pub fn ops_router(stage: &'static str) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(move || async move { Json(serde_json::json!({"status": "ok", "stage": stage})) }),
        )
        .route("/metrics", get(render_metrics))
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
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
