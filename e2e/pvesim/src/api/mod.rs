//! The `api2/json` HTTP API: the route table ([`ROUTES`]), authentication, and PVE's response
//! envelope (`{"data": ...}`; errors as described in [`crate::error`]). Every route is a method
//! of the schema file (or a listed exception), and its parameters are verified against it
//! (`call`).

mod call;
mod cluster;
mod nodes;
mod qemu;
mod routes;
mod storage;
mod tasks;
mod upload;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{RawPathParams, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Extension, Json, Router};
use http::{Method, Uri};
use serde_json::{Value, json};

pub use call::{Args, Call};
pub use routes::{ROUTES, Route};

use crate::auth::{Auth, Tokens};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::schema::{Params, Verb};

/// State shared by all handlers.
pub struct AppState {
    /// The simulated node.
    pub node: Arc<Node>,
    /// Accepted API tokens.
    pub tokens: Tokens,
}

/// A successful answer: `{"data": ...}` (plus `total` for paged results).
pub struct ApiOk {
    data: Value,
    total: Option<usize>,
}

impl ApiOk {
    /// `{"data": data}`.
    pub fn new(data: impl Into<Value>) -> Self {
        ApiOk {
            data: data.into(),
            total: None,
        }
    }

    /// `{"data": null}`.
    pub fn null() -> Self {
        ApiOk::new(Value::Null)
    }

    /// `{"data": data, "total": total}`.
    pub fn paged(data: impl Into<Value>, total: usize) -> Self {
        ApiOk {
            data: data.into(),
            total: Some(total),
        }
    }
}

impl IntoResponse for ApiOk {
    fn into_response(self) -> Response {
        let mut body = json!({ "data": self.data });
        if let Some(total) = self.total {
            body["total"] = json!(total);
        }
        Json(body).into_response()
    }
}

/// Handler result.
pub type ApiResult = Result<ApiOk>;

/// Authenticates every request (pve-http-server checks credentials before looking for a handler).
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match state.tokens.authenticate(header) {
        Ok(auth) => {
            let user = auth.tokenid.clone();
            req.extensions_mut().insert(auth);
            let response = next.run(req).await;
            tracing::info!(%method, %path, %user, status = response.status().as_u16(), "request");
            response
        }
        Err(e) => {
            let response = e.into_response();
            tracing::info!(%method, %path, status = response.status().as_u16(), "request refused");
            response
        }
    }
}

/// No handler for this method and path.
async fn not_implemented(method: Method, uri: Uri) -> Error {
    let path = uri
        .path()
        .strip_prefix("/api2/json")
        .unwrap_or(uri.path())
        .to_string();
    Error::NotImplemented {
        method: method.to_string(),
        path,
    }
}

fn filter(verb: Verb) -> MethodFilter {
    match verb {
        Verb::Get => MethodFilter::GET,
        Verb::Post => MethodFilter::POST,
        Verb::Put => MethodFilter::PUT,
        Verb::Delete => MethodFilter::DELETE,
    }
}

/// The axum handler of one route: builds the [`Call`] and runs the route's handler.
fn endpoint(route: &'static Route) -> MethodRouter<Arc<AppState>> {
    let handler = move |State(state): State<Arc<AppState>>,
                        Extension(auth): Extension<Auth>,
                        path: RawPathParams,
                        req: Request| {
        let path: Params = path
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (route.handler)(Call::new(state, auth, route, path, req))
    };
    axum::routing::on(filter(route.verb), handler)
}

/// The API router: every route of [`ROUTES`] below `/api2/json`, 501 for anything else.
pub fn router(state: Arc<AppState>) -> Router {
    let mut by_path: BTreeMap<String, MethodRouter<Arc<AppState>>> = BTreeMap::new();
    for route in ROUTES {
        let method_router = endpoint(route);
        let merged = match by_path.remove(&route.axum_path()) {
            Some(existing) => existing.merge(method_router),
            None => method_router,
        };
        by_path.insert(route.axum_path(), merged);
    }
    let api = by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(&path, methods)
        })
        .method_not_allowed_fallback(not_implemented);
    Router::new()
        .nest("/api2/json", api)
        .fallback(not_implemented)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ))
        .with_state(state)
}
