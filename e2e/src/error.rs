//! The one error type of the e2e crate.

use std::path::PathBuf;

/// Everything that can go wrong in the process node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {}", kube_message(.0))]
    Kube(#[from] kube::Error),

    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),

    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A command-line flag or configuration file is invalid.
    #[error("configuration: {0}")]
    Config(String),

    /// TLS material is missing or invalid.
    #[error("TLS: {0}")]
    Tls(String),

    /// A container image has no local binary.
    #[error(
        "image {image:?} is not mapped to a local binary (add --image {repo}=/path/to/binary, or put a \
         binary named after the repository's last component in a --bin-dir)"
    )]
    ImageNotMapped { image: String, repo: String },

    /// A volume could not be materialised.
    #[error("volume {volume:?}: {message}")]
    Volume { volume: String, message: String },

    /// An environment variable could not be resolved.
    #[error("container {container:?}: env: {message}")]
    Env { container: String, message: String },

    /// The pod asks for something the process node cannot do.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A process could not be started.
    #[error("start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

/// A one-line description of a Kubernetes client error: the API server's message and code for
/// refusals (instead of the whole Status object).
pub fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
