//! The operator's one error type.

/// Everything a reconcile or the process wiring can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed (network, conflict, permission...). Retried by the controller.
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),

    /// The VMMigration object lacks a field the API server always sets (name, namespace, uid).
    #[error("VMMigration is missing metadata.{0}")]
    MissingMetadata(&'static str),

    /// A JSON document could not be produced (the runner plan).
    #[error("serializing {what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// An object of the name the migration needs exists and is not the migration's (no controller
    /// reference to it): it is never adopted.
    #[error("{kind} {name} exists and is not owned by this VMMigration: remove or rename it")]
    NotOwned {
        /// Kind of the object.
        kind: String,
        /// Its name.
        name: String,
    },

    /// A flag or setting is invalid.
    #[error("configuration: {0}")]
    Config(String),

    /// Leader election failed or the Lease was lost.
    #[error("leader election: {0}")]
    LeaderElection(#[source] kube_lease_manager::LeaseManagerError),

    /// This replica no longer holds the leader-election Lease.
    #[error("lost the leader-election Lease; exiting so that a restart re-elects")]
    LeaseLost,

    /// The HTTP server for /metrics and /healthz failed.
    #[error("metrics server: {0}")]
    Server(#[source] std::io::Error),
}

impl Error {
    /// A short, stable label for the `reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingMetadata(_) => "missing_metadata",
            Error::Serialize { .. } => "serialize",
            Error::NotOwned { .. } => "not_owned",
            Error::Config(_) => "config",
            Error::LeaderElection(_) | Error::LeaseLost => "leader_election",
            Error::Server(_) => "server",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
