//! The `api2/json` HTTP API: routing, authentication, parameter extraction and PVE's response
//! envelope (`{"data": ...}`; errors as described in [`crate::error`]).
//!
//! Parameters arrive the way pve-http-server takes them: query string, plus for POST/PUT a
//! form-urlencoded or JSON body; path parameters are merged in and a conflicting duplicate is a 400.

mod cluster;
mod nodes;
mod qemu;
mod storage;
mod tasks;

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::{Method, Uri};
use serde_json::{Value, json};

use crate::auth::{Auth, Tokens};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::schema::{Params, Prop, Schema};

/// State shared by all handlers.
pub struct AppState {
    /// The simulated node.
    pub node: Arc<Node>,
    /// Accepted API tokens.
    pub tokens: Tokens,
}

/// Handler state.
pub type St = State<Arc<AppState>>;

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
        ApiOk {
            data: Value::Null,
            total: None,
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

/// The request parameters (query + body).
pub struct ApiParams(pub Params);

impl<S: Send + Sync> FromRequest<S> for ApiParams {
    type Rejection = Error;

    async fn from_request(req: Request, _state: &S) -> Result<Self> {
        let mut params = Params::new();
        if let Some(query) = req.uri().query() {
            params.extend(url::form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        let is_json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if req.method() == Method::POST
            || req.method() == Method::PUT
            || req.method() == Method::DELETE
        {
            let body = axum::body::to_bytes(req.into_body(), 16 << 20)
                .await
                .map_err(|e| Error::failed(format!("unable to read request body - {e}")))?;
            if is_json && !body.is_empty() {
                let value: Value = serde_json::from_slice(&body)
                    .map_err(|e| Error::failed(format!("unable to parse JSON body - {e}")))?;
                let Value::Object(map) = value else {
                    return Err(Error::failed("unable to parse JSON body - not an object"));
                };
                for (k, v) in map {
                    let text = match v {
                        Value::Null => continue,
                        Value::String(s) => s,
                        Value::Bool(b) => (b as u8).to_string(),
                        other => other.to_string(),
                    };
                    params.insert(k, text);
                }
            } else {
                params.extend(url::form_urlencoded::parse(&body).into_owned());
            }
        }
        params.remove("_dc");
        Ok(ApiParams(params))
    }
}

/// Merges path parameters into the request parameters (`rest_handler`).
pub fn with_path(mut params: Params, path: &[(&str, &str)]) -> Result<Params> {
    for (name, value) in path {
        if let Some(existing) = params.get(*name)
            && existing != value
        {
            return Err(Error::param(
                *name,
                "duplicate parameter (already defined in URI) with conflicting values!",
            ));
        }
        params.insert(name.to_string(), value.to_string());
    }
    Ok(params)
}

/// `pve-node` standard option.
pub fn node_prop() -> Prop {
    Prop::string().verify(crate::schema::verify_node)
}

/// `pve-vmid` standard option.
pub fn vmid_prop() -> Prop {
    Prop::integer()
        .verify(crate::schema::verify_vmid)
        .range(Some(100), Some(999_999_999))
}

/// `pve-storage-id` standard option.
pub fn storage_prop() -> Prop {
    Prop::string().verify(crate::schema::verify_storage_id)
}

/// Validates parameters against a schema given as a list of properties.
pub fn validate(params: &Params, props: Vec<(&'static str, Prop)>) -> Result<()> {
    Schema::new(props).validate(params)
}

/// Authenticates every request (pve-http-server checks credentials before looking for a handler).
async fn authenticate(State(state): St, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match state.tokens.authenticate(header) {
        Ok(auth) => {
            let user = auth.tokenid.clone();
            req.extensions_mut().insert(auth);
            let response = next.run(req).await;
            tracing::info!(%method, %path, %user, status = response.status().as_u16(), "request");
            return response;
        }
        Err(e) => e.into_response(),
    };
    tracing::info!(%method, %path, status = response.status().as_u16(), "request refused");
    response
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

/// The API router (every path below `/api2/json`).
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/version", get(cluster::version))
        .route("/cluster/nextid", get(cluster::nextid))
        .route("/cluster/resources", get(cluster::resources))
        .route("/nodes", get(nodes::index))
        .route("/nodes/{node}/status", get(nodes::status))
        .route("/nodes/{node}/qemu", get(qemu::list).post(qemu::create))
        .route(
            "/nodes/{node}/qemu/{vmid}",
            get(qemu::vm_index).delete(qemu::destroy),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/config",
            get(qemu::config_get)
                .post(qemu::config_post)
                .put(qemu::config_put),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/current",
            get(qemu::status_current),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/{action}",
            post(qemu::status_action),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot",
            get(qemu::snapshot_list).post(qemu::snapshot_create),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
            get(qemu::snapshot_index).delete(qemu::snapshot_delete),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/config",
            get(qemu::snapshot_config),
        )
        .route("/nodes/{node}/storage", get(storage::index))
        .route(
            "/nodes/{node}/storage/{storage}/status",
            get(storage::status),
        )
        .route(
            "/nodes/{node}/storage/{storage}/content",
            get(storage::content),
        )
        .route(
            "/nodes/{node}/storage/{storage}/content/{*volume}",
            get(storage::volume_info).delete(storage::volume_delete),
        )
        .route(
            "/nodes/{node}/storage/{storage}/upload",
            post(storage::upload),
        )
        .route(
            "/nodes/{node}/storage/{storage}/download-url",
            post(storage::download_url),
        )
        .route("/nodes/{node}/tasks", get(tasks::list))
        .route("/nodes/{node}/tasks/{upid}/status", get(tasks::status))
        .route("/nodes/{node}/tasks/{upid}/log", get(tasks::log))
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

/// The authenticated token of a request.
pub type Authed = Extension<Auth>;
