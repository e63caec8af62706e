//! The crate's one error type: everything that can fail outside of a validation verdict.
//!
//! A denied VMMigration is not an error: validators return [`crate::admission::Verdict`]s. These are the
//! failures of the machinery around them (files, TLS, certificates, the Kubernetes API).

use std::path::PathBuf;

/// A failure of the webhook's machinery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file (certificate, key, CA bundle).
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A PEM file holds no certificate or no private key, or cannot be parsed.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },

    /// rustls refused the certificate or key.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),

    /// Generating the self-signed CA or serving certificate failed.
    #[error("certificate generation: {0}")]
    CertificateGeneration(#[from] rcgen::Error),

    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {}", api_message(.0))]
    Kube(#[from] kube::Error),

    /// The ValidatingWebhookConfiguration to patch has no webhooks or cannot be patched.
    #[error("ValidatingWebhookConfiguration {name}: {reason}")]
    WebhookConfiguration { name: String, reason: String },

    /// The Secret with the CA the replicas share (self-signed mode) is unusable.
    #[error("CA Secret {name}: {reason}")]
    CaSecret { name: String, reason: String },

    /// The in-memory cluster (tests, local runs) was told to fail.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),

    /// Binding or accepting on a listener failed.
    #[error("listener {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }
}

/// An API error as one short line: the server's message with its reason and code, or the client error.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}
