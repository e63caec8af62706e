//! The HTTP server of the operator pod: `/metrics` (OpenMetrics text) and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Content type of the metrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The routes, as a function so tests can call them without a socket.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.render()).into_response() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Serves `router` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, router: Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(Error::Server)?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, router).await.map_err(Error::Server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, String) {
        let metrics = Arc::new(Metrics::new(None));
        metrics.retries.inc();
        let response = router(metrics)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_and_metrics() {
        assert_eq!(get("/healthz").await, (StatusCode::OK, "ok".into()));
        let (status, body) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("virtrigaud_operator_retries_total 1"),
            "{body}"
        );
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);
    }
}
