//! The crate's one error type. Each variant is one way a Proxmox VE request or `pvesm` call fails, and
//! [`Error::status`] gives the HTTP status PVE answers with for it (pve-http-server + pve-manager's
//! `PVE::HTTPServer::rest_handler`): 401 from the auth handler, 403 from `raise_perm_exc`, 400 from
//! `raise_param_exc` (with one message per parameter), 501 for a method/path without a handler, and
//! 500 with the `die` message for everything else.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Per-parameter messages of a 400 answer (`{"errors": {"vmid": "..."}}`).
pub type ParamErrors = BTreeMap<String, String>;

/// Everything that can go wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable credential: PVE answers 401 with the reason in the status line and no body.
    #[error("{0}")]
    Unauthorized(String),
    /// The token lacks a privilege: `Permission check failed (<path>, <privs>)`, or without the
    /// detail when PVE raises it bare (VM create).
    #[error("Permission check failed{}", permission_detail(.0))]
    Permission(String),
    /// Parameter verification failed; the map holds one message per parameter.
    #[error("Parameter verification failed.")]
    Param(ParamErrors),
    /// No handler for this method and path.
    #[error("Method '{method} {path}' not implemented")]
    NotImplemented {
        /// HTTP method.
        method: String,
        /// Path below `/api2/json`.
        path: String,
    },
    /// What PVE `die`s with: the text is PVE's own message.
    #[error("{0}")]
    Failed(String),
    /// A file or directory operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A state file of the data directory is not what this simulator wrote.
    #[error("state file {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The TLS certificate or key was refused.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// An HTTP download (download-url) failed.
    #[error("download failed: {0}")]
    Download(#[from] reqwest::Error),
}

impl Error {
    /// A 400 error for one parameter.
    pub fn param(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Param(BTreeMap::from([(name.into(), message.into())]))
    }

    /// A 500 error with PVE's message (without the trailing newline PVE's `die` adds).
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// The HTTP status of this error in PVE's API.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Permission(_) => StatusCode::FORBIDDEN,
            Error::Param(_) => StatusCode::BAD_REQUEST,
            Error::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message as PVE puts it into the `message` field: `die` messages end with a newline there.
    pub fn pve_message(&self) -> String {
        match self {
            Error::NotImplemented { .. } => self.to_string(),
            _ => format!("{self}\n"),
        }
    }

    /// The text a PVE CLI tool prints for this error (`400 Parameter verification failed.` plus one
    /// `param: message` line per parameter for parameter errors, the message otherwise).
    pub fn cli_message(&self) -> String {
        match self {
            Error::Param(errors) => {
                let mut text = format!("400 {self}\n");
                for (name, message) in errors {
                    text.push_str(&format!("{name}: {}\n", message.trim_end_matches('\n')));
                }
                text
            }
            _ => self.pve_message(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.pve_message();
        let reason = message.lines().next().unwrap_or_default().to_string();
        let mut response = if let Error::Unauthorized(_) = self {
            // pve-http-server answers a failed login with the reason only, no body
            status.into_response()
        } else {
            let mut body = serde_json::json!({ "data": null, "message": message });
            if let Error::Param(errors) = &self {
                body["errors"] = serde_json::json!(errors);
            }
            (status, axum::Json(body)).into_response()
        };
        // PVE puts the (first line of the) message into the HTTP status line
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
            response.extensions_mut().insert(phrase);
        }
        if status.is_server_error() || status == StatusCode::BAD_REQUEST {
            tracing::info!(status = status.as_u16(), "{}", message.trim_end());
        }
        response
    }
}

fn permission_detail(what: &str) -> String {
    if what.is_empty() {
        String::new()
    } else {
        format!(" ({what})")
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
