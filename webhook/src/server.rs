//! Listeners: the HTTPS listener the API server calls (rustls in front of the router) and an optional
//! plain-HTTP listener for Prometheus and probes.
//!
//! Both hold every client to [`Limits`], so that no slow or greedy client can hold the webhook: at
//! most [`Limits::max_connections`] connections (more wait in the kernel's backlog), a TLS handshake
//! within [`Limits::handshake`], a request head within [`Limits::header_read`] (hyper's HTTP/1 header
//! timeout; a connection without a request in flight for that long is closed, which also covers a
//! client that sends nothing after the handshake and HTTP/2), at most
//! [`Limits::max_requests_in_flight`] requests handled at once, each answered within
//! [`Limits::request`] (its body read included) or with 408. The body size limit is the router's
//! ([`crate::MAX_BODY_BYTES`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long in-flight requests get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 streams one connection may have open (the in-flight cap is global anyway).
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// What one client may take of the webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A TLS handshake that takes longer is dropped.
    pub handshake: Duration,
    /// A request head (HTTP/1 headers) must arrive within this; a connection with no request in
    /// flight for this long is closed.
    pub header_read: Duration,
    /// A request (body read and review) not answered within this gets 408. The API server waits
    /// the webhook configuration's `timeoutSeconds` (10) at most anyway.
    pub request: Duration,
    /// Open connections; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Requests handled at once over all connections. Each may buffer a body of up to
    /// [`crate::MAX_BODY_BYTES`] and its parse, so this bounds the memory clients can make the
    /// webhook use; requests beyond it wait (within their [`Limits::request`]).
    pub max_requests_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
            request: Duration::from_secs(10),
            max_connections: 128,
            max_requests_in_flight: 16,
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then lets open connections finish
/// (up to 10 s). Each connection is handshaken with `tls`, whose certificate resolver is asked anew each
/// time, so certificate rotation needs no restart.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let handshake = move |tcp: TcpStream, peer: SocketAddr| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            }
        }
    };
    serve(listener, handshake, app, limits, shutdown).await;
}

/// Serves `app` over plain HTTP until `shutdown` completes, under the same [`Limits`].
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let handshake = |tcp: TcpStream, _peer: SocketAddr| async move { Some(tcp) };
    serve(listener, handshake, app, limits, shutdown).await;
}

/// The accept loop: a connection slot, then `handshake`, then HTTP on its own task.
async fn serve<H, F, S>(
    listener: TcpListener,
    handshake: H,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let in_flight = Arc::new(Semaphore::new(limits.max_requests_in_flight));
    let (closing, closed) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let stream = handshake(tcp, peer);
        let connection = Connection {
            app: app.clone(),
            limits,
            in_flight: in_flight.clone(),
            closing: closed.clone(),
            peer,
        };
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(stream) = stream.await {
                connection.serve(stream).await;
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drain(&slots, limits.max_connections).await;
}

/// Waits (up to [`DRAIN_TIMEOUT`]) until every connection slot is back: all connections ended.
async fn drain(slots: &Semaphore, max_connections: usize) {
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// One accepted connection and what it shares with the others.
struct Connection {
    app: Router,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    closing: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    /// Serves HTTP/1.1 or HTTP/2 on `stream` until the client is done, the connection has been idle
    /// for [`Limits::header_read`], or the server shuts down; a connection asked to close gets
    /// [`Limits::request`] to finish what is in flight.
    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = TowerToHyperService::new(bounded(
            self.app.clone(),
            activity.clone(),
            self.in_flight.clone(),
            self.limits.request,
        ));
        let builder = self.builder();
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let mut closing = self.closing.clone();
        let why = tokio::select! {
            result = connection.as_mut() => return self.ended(result.err()),
            () = activity.idle_for(self.limits.header_read) => "idle",
            _ = closing.wait_for(|closing| *closing) => "shutting down",
        };
        tracing::debug!(peer = %self.peer, "closing the connection: {why}");
        connection.as_mut().graceful_shutdown();
        match tokio::time::timeout(self.limits.request, connection).await {
            Ok(result) => self.ended(result.err()),
            Err(_) => tracing::debug!(peer = %self.peer, "connection dropped: {why}"),
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        builder
    }

    fn ended(&self, error: Option<Box<dyn std::error::Error + Send + Sync>>) {
        if let Some(error) = error {
            tracing::debug!(peer = %self.peer, %error, "connection ended with an error");
        }
    }
}

/// `app` with each request counted in `activity`, held to a slot of `in_flight` and answered within
/// `timeout` (408 otherwise).
fn bounded(
    app: Router,
    activity: Arc<Activity>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |request: Request<Incoming>| {
        let (app, in_flight) = (app.clone(), in_flight.clone());
        let busy = activity.begin();
        async move {
            let _busy = busy;
            let answer = async {
                let _slot = in_flight.acquire().await;
                app.oneshot(request).await
            };
            match tokio::time::timeout(timeout, answer).await {
                Ok(response) => response,
                Err(_) => Ok(timed_out(timeout)),
            }
        }
    })
}

fn timed_out(timeout: Duration) -> Response<Body> {
    let mut response = Response::new(Body::from(format!(
        "request not completed within {} s\n",
        timeout.as_secs_f64()
    )));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// One request in flight; dropping it (answered or cancelled) ends it.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        *activity.idle_since.lock().expect("not poisoned") = Instant::now();
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    fn idle_deadline(&self, idle: Duration) -> Instant {
        *self.idle_since.lock().expect("not poisoned") + idle
    }

    /// Completes once the connection has had no request in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            tokio::time::sleep_until(self.idle_deadline(idle).into()).await;
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                // Requests end within their timeout; look again once they may have.
                tokio::time::sleep(idle).await;
            } else if self.idle_deadline(idle) <= Instant::now() {
                return;
            }
        }
    }
}
