//! The runner's one error type, classified so the operator knows whether another attempt can help.

use std::time::Duration;

/// Everything that can end a runner phase.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan or credential files the operator mounted are missing or malformed.
    #[error("runner plan: {0}")]
    Plan(String),
    /// Credentials were refused. Names the system and the Secret key, never the value.
    #[error("{system} authentication failed: {detail}")]
    Auth { system: String, detail: String },
    /// Something named in the spec does not exist (VM, pool, bucket, datastore...).
    #[error("{what} not found: {detail}")]
    NotFound { what: String, detail: String },
    /// The request is invalid for this target/source (format, clash, unsupported shape).
    #[error("{0}")]
    Invalid(String),
    /// Bytes read back do not match the recorded SHA-256.
    #[error("checksum mismatch for {object}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        object: String,
        expected: String,
        actual: String,
    },
    /// A guest did not shut down within spec.cutover.shutdownTimeout.
    #[error(
        "source VM {vm} was still running {timeout} after the guest was asked to shut down; raise spec.cutover.shutdownTimeout or use stopSource: PowerOff"
    )]
    ShutdownTimedOut { vm: String, timeout: String },
    /// Not enough space on scratch, storage or target.
    #[error("not enough space: {0}")]
    NoSpace(String),
    /// A recorded handle names something on a hypervisor that does not carry this migration's mark
    /// (or no longer has the recorded name): it is left alone.
    #[error("not created by this migration: {0}")]
    NotOurs(String),
    /// An endpoint resolves to a link-local or cloud metadata address.
    #[error("endpoint refused: {0}")]
    ForbiddenEndpoint(String),
    /// A network error, a 5xx or throttling: worth another try.
    #[error("{system} unavailable: {detail}")]
    Transient { system: String, detail: String },
    /// A tool inspecting an untrusted image ran into one of its resource limits (address space, CPU
    /// time, wall clock): the image is hostile or too complex to inspect safely. `what` names the
    /// command and the image, `limit` the limit (`30 s CPU-time`).
    #[error("{what} exceeded its {limit} limit ({detail})")]
    LimitExceeded {
        what: String,
        limit: String,
        detail: String,
    },
    /// qemu-img or another tool failed.
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes API (status patches).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Result alias for the runner.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done. `ENOSPC` becomes [`Error::NoSpace`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let context = context.into();
        if source.raw_os_error() == Some(28) {
            return Error::NoSpace(format!("{context}: {source}"));
        }
        Error::Io { context, source }
    }

    /// A transient failure of `system`.
    pub fn transient(system: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Error::Transient {
            system: system.into(),
            detail: detail.to_string(),
        }
    }

    /// Whether a later attempt (or an in-process retry) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A busy guest may shut down on the next try.
            Error::Transient { .. } | Error::Kube(_) | Error::ShutdownTimedOut { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ),
            Error::Plan(_)
            | Error::Auth { .. }
            | Error::NotFound { .. }
            | Error::Invalid(_)
            | Error::ChecksumMismatch { .. }
            | Error::NoSpace(_)
            | Error::NotOurs(_)
            | Error::ForbiddenEndpoint(_)
            // The same image runs into the same limit again.
            | Error::LimitExceeded { .. }
            | Error::Tool { .. } => false,
        }
    }

    /// CamelCase reason for conditions, Events and the termination message.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Plan(_) => "InvalidPlan",
            Error::Auth { .. } => "AuthenticationFailed",
            Error::NotFound { .. } => "NotFound",
            Error::Invalid(_) => "Invalid",
            Error::ChecksumMismatch { .. } => "ChecksumMismatch",
            Error::NoSpace(_) => "NoSpace",
            Error::ShutdownTimedOut { .. } => "ShutdownTimedOut",
            Error::NotOurs(_) => "NotOwned",
            Error::ForbiddenEndpoint(_) => "ForbiddenEndpoint",
            Error::Transient { .. } => "Unavailable",
            Error::LimitExceeded { .. } => "ResourceLimitExceeded",
            Error::Tool { .. } => "ToolFailed",
            Error::Io { .. } => "IOError",
            Error::Kube(_) => "KubernetesAPIError",
        }
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or `attempts` tries were made,
/// sleeping 1s, 2s, 4s... (capped at 30s) between tries. For in-process retries of transient errors.
pub async fn with_retries<T, F, Fut>(what: &str, attempts: u32, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut retry = Retry::new(what, attempts);
    loop {
        match op().await {
            Err(e) if retry.again(&e).await => {}
            result => return result,
        }
    }
}

/// The retry loop of [`with_retries`] as a value, for calls a closure cannot make (methods that
/// borrow a session mutably): `loop { match call().await { Err(e) if retry.again(&e).await => {} r => return r } }`.
pub struct Retry<'a> {
    what: &'a str,
    attempts: u32,
    tried: u32,
    delay: Duration,
}

impl<'a> Retry<'a> {
    /// At most `attempts` tries of `what`.
    pub fn new(what: &'a str, attempts: u32) -> Self {
        Retry {
            what,
            attempts,
            tried: 0,
            delay: Duration::from_secs(1),
        }
    }

    /// After a failed try: whether to try again (a retryable error, tries left), having waited
    /// out the backoff.
    pub async fn again(&mut self, e: &Error) -> bool {
        self.tried += 1;
        if !e.is_retryable() || self.tried >= self.attempts {
            return false;
        }
        tracing::warn!(
            "{}: {e}; retrying in {}s ({}/{})",
            self.what,
            self.delay.as_secs(),
            self.tried,
            self.attempts
        );
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(30));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(Error::transient("s3", "503 Slow Down").is_retryable());
        assert!(
            !Error::Auth {
                system: "s3".into(),
                detail: "x".into()
            }
            .is_retryable()
        );
        assert!(
            !Error::ChecksumMismatch {
                object: "o".into(),
                expected: "a".into(),
                actual: "b".into()
            }
            .is_retryable()
        );
        let enospc = Error::io("writing /scratch/x", std::io::Error::from_raw_os_error(28));
        assert!(matches!(enospc, Error::NoSpace(_)));
        assert!(!enospc.is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_only() {
        let mut calls = 0;
        let r: Result<()> = with_retries("op", 3, || {
            calls += 1;
            async { Err(Error::transient("http", "502")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<()> = with_retries("op", 3, || {
            calls += 1;
            async { Err(Error::Invalid("no".into())) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
