//! One request to a route: the authenticated token, the path parameters, and the parameters of
//! query string and body, verified against the route's method in the schema ([`Args`]).
//!
//! Parameters arrive the way pve-http-server takes them: query string, plus for POST/PUT/DELETE a
//! form-urlencoded or JSON body; path parameters are merged in and a conflicting duplicate is a
//! 400. A handler checks privileges first (PVE's `permissions`, which only see the path), then
//! calls [`Call::args`].

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::Request;
use http::Method;
use serde_json::Value;

use super::AppState;
use super::routes::Route;
use crate::auth::Auth;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::schema::{self, Params};

/// Largest request body read for parameters (uploads are streamed instead).
const MAX_BODY: usize = 16 << 20;

/// A request to one route.
pub struct Call {
    /// Shared state.
    pub state: Arc<AppState>,
    /// The authenticated token.
    pub auth: Auth,
    /// The route.
    pub route: &'static Route,
    path: Params,
    request: Option<Request>,
}

impl Call {
    /// A call with its path parameters (already percent-decoded).
    pub fn new(
        state: Arc<AppState>,
        auth: Auth,
        route: &'static Route,
        path: Params,
        request: Request,
    ) -> Self {
        Call {
            state,
            auth,
            route,
            path,
            request: Some(request),
        }
    }

    /// The simulated node.
    pub fn node(&self) -> &Arc<Node> {
        &self.state.node
    }

    /// A path parameter as given (for the privilege paths PVE checks before verification).
    pub fn path(&self, name: &str) -> &str {
        debug_assert!(
            self.route.path_params().contains(&name),
            "{} has no path parameter {name}",
            self.route.path
        );
        self.path.get(name).map(String::as_str).unwrap_or_default()
    }

    /// The request itself (uploads read the body as a stream); afterwards [`Call::check`] verifies
    /// the parameters found in it.
    pub fn take_request(&mut self) -> Option<Request> {
        self.request.take()
    }

    /// Reads query and body, merges the path parameters and verifies all against the schema.
    pub async fn args(&mut self) -> Result<Args> {
        let params = match self.request.take() {
            Some(request) => read_params(request).await?,
            None => Params::new(),
        };
        self.check(params)
    }

    /// [`Call::args`] of a route below `/nodes/{node}`, then the node check (another node name
    /// fails as PVE's proxying to it would).
    pub async fn node_args(&mut self) -> Result<Args> {
        let params = match self.request.take() {
            Some(request) => read_params(request).await?,
            None => Params::new(),
        };
        self.node_args_from(params)
    }

    /// [`Call::node_args`] of parameters read otherwise (the fields of a multipart upload).
    pub fn node_args_from(&self, params: Params) -> Result<Args> {
        let args = self.check(params)?;
        self.state.node.check_node(args.str("node"))?;
        Ok(args)
    }

    /// Merges the path parameters into `params` and verifies them against the schema.
    pub fn check(&self, params: Params) -> Result<Args> {
        let params = with_path(params, &self.path)?;
        schema::validate(&self.route.method().params, &params)?;
        Ok(Args {
            params,
            route: self.route,
        })
    }
}

/// Merges path parameters into the request parameters (`rest_handler`).
fn with_path(mut params: Params, path: &Params) -> Result<Params> {
    for (name, value) in path {
        if params.get(name).is_some_and(|existing| existing != value) {
            return Err(Error::param(
                name,
                "duplicate parameter (already defined in URI) with conflicting values!",
            ));
        }
        params.insert(name.clone(), value.clone());
    }
    Ok(params)
}

/// Query string plus, for POST/PUT/DELETE, a form-urlencoded or JSON body; `_dc` (the GUI's cache
/// buster) is dropped.
async fn read_params(req: Request) -> Result<Params> {
    let mut params = Params::new();
    if let Some(query) = req.uri().query() {
        params.extend(url::form_urlencoded::parse(query.as_bytes()).into_owned());
    }
    let is_json = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if [Method::POST, Method::PUT, Method::DELETE].contains(req.method()) {
        let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| Error::failed(format!("unable to read request body - {e}")))?;
        if is_json && !body.is_empty() {
            params.extend(json_params(&body)?);
        } else {
            params.extend(url::form_urlencoded::parse(&body).into_owned());
        }
    }
    params.remove("_dc");
    Ok(params)
}

/// A JSON object body as string parameters (booleans as 1/0, `null` dropped).
fn json_params(body: &[u8]) -> Result<Params> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::failed(format!("unable to parse JSON body - {e}")))?;
    let Value::Object(map) = value else {
        return Err(Error::failed("unable to parse JSON body - not an object"));
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::Null => return None,
                Value::String(s) => s,
                Value::Bool(b) => (b as u8).to_string(),
                other => other.to_string(),
            };
            Some((k, text))
        })
        .collect())
}

/// Verified parameters. A handler reads only the names its route declares (`reads` in
/// [`super::ROUTES`], plus the path parameters), so the route test can check them against the
/// schema; debug builds assert it on every read.
pub struct Args {
    params: Params,
    route: &'static Route,
}

impl Args {
    fn declared(&self, name: &str) {
        debug_assert!(
            self.route.reads_param(name),
            "{} {} reads '{name}' without declaring it in ROUTES",
            self.route.verb.as_str(),
            self.route.path
        );
    }

    /// An optional parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.declared(name);
        self.params.get(name).map(String::as_str)
    }

    /// A parameter the schema requires (so it is there after verification).
    pub fn str(&self, name: &str) -> &str {
        self.get(name).unwrap_or_default()
    }

    /// A boolean parameter (absent: false).
    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("1")
    }

    /// A numeric parameter.
    pub fn num<T: FromStr>(&self, name: &str) -> Option<T> {
        self.get(name).and_then(|v| v.parse().ok())
    }

    /// The `vmid` parameter.
    pub fn vmid(&self) -> u32 {
        self.num("vmid").unwrap_or_default()
    }

    /// The parameters other than `options` (the VM config keys of create and update, each
    /// verified against its own declaration).
    pub fn rest(&self, options: &[&str]) -> Params {
        self.params
            .iter()
            .filter(|(k, _)| !options.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
