//! The VirtRigaud validating admission webhook for `VMMigration`, `Provider` and `VirtualMachine`.
//!
//! [`router`] builds the HTTP service: `POST /validate` takes an AdmissionReview for a VMMigration CREATE
//! or UPDATE (a body up to [`MAX_BODY_BYTES`]), `/healthz` answers `ok`, `/metrics` renders Prometheus
//! metrics. [`server`] puts it behind rustls ([`tls`]) and holds clients to its [`server::Limits`]; [`selfsigned`] lets the webhook issue its own certificate when there is no
//! cert-manager.
//!
//! Validation is split the way the work is: [`admission`] parses the review and dispatches,
//! [`spec`] holds the checks that need nothing but the object, [`endpoints`] the storage address policy,
//! and [`vmmigration`] adds the checks of referenced objects through the [`cluster::Cluster`] trait. The
//! webhook reads Kubernetes objects only (never a hypervisor or storage), so it answers in milliseconds.

pub mod admission;
pub mod cluster;
pub use endpoint_policy as endpoints;
pub mod error;
pub mod metrics;
pub mod names;
pub mod provider;
pub mod selfsigned;
pub mod server;
pub mod spec;
pub mod tls;
pub mod virtualmachine;
pub mod vmmigration;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub use admission::{Admission, Verdict, Violation};
pub use error::Error;
pub use metrics::Metrics;

/// Path the API server posts AdmissionReviews to.
pub const VALIDATE_PATH: &str = "/validate";
/// The largest object etcd stores by default (`--max-request-bytes`, 1.5 MiB).
pub const ETCD_MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// Largest accepted request body: an AdmissionReview carries the object and the old object, each up
/// to [`ETCD_MAX_OBJECT_BYTES`], in an envelope (kinds, user info, options) of a few KiB.
pub const MAX_BODY_BYTES: usize = 2 * ETCD_MAX_OBJECT_BYTES + 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
}

/// The full router: `/validate`, `/healthz`, `/metrics`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .merge(ops_router(state.metrics.clone()))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `/healthz` and `/metrics` only, for the plain-HTTP listener.
pub fn ops_router<S: Clone + Send + Sync + 'static>(metrics: Arc<Metrics>) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
}

/// The answer to a body over [`MAX_BODY_BYTES`] (or one that could not be read).
fn unreadable_body(rejection: BytesRejection) -> Response {
    let status = rejection.status();
    if status != StatusCode::PAYLOAD_TOO_LARGE {
        return rejection.into_response();
    }
    let message = format!(
        "request body larger than {MAX_BODY_BYTES} bytes, the most an AdmissionReview needs \
         (object and oldObject at etcd's {ETCD_MAX_OBJECT_BYTES}-byte limit each, and the envelope)\n"
    );
    (status, message).into_response()
}

async fn validate(State(state): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return unreadable_body(rejection),
    };
    let started = Instant::now();
    let (review, operation, outcome) = state.admission.review(&body).await;
    let operation = match operation {
        Some(op) => format!("{op:?}").to_uppercase(),
        None => "unknown".to_owned(),
    };
    let elapsed = started.elapsed();
    state.metrics.observe(&operation, outcome.as_str(), elapsed);
    tracing::info!(
        %operation,
        result = outcome.as_str(),
        elapsed_ms = elapsed.as_secs_f64() * 1000.0,
        "admission review answered"
    );
    Json(review).into_response()
}
