//! A TCP proxy in front of one of the world's servers that fails on command, as a load balancer
//! or a flaky network does: it answers HTTP 503 to every request for a while (cutting the
//! connections open when that starts), or resets the one connection whose responses pass a byte
//! count. It listens on the world's gateway address, which runner pods reach, and forwards to a
//! loopback port only.

#![allow(dead_code)] // each test file uses a different part

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Forwards everything.
    Pass,
    /// Answers `503 Service Unavailable` to every request.
    Unavailable,
    /// Resets the first connection whose responses pass this many bytes, then forwards.
    ResetAfter(u64),
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections reset by [`Mode::ResetAfter`] and 503 answers given.
    resets: Arc<AtomicU64>,
    refusals: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `gateway` (a free port) and forwards to `127.0.0.1:upstream_port`.
    pub async fn start(gateway: &str, upstream_port: u16) -> FaultProxy {
        let ip: IpAddr = gateway.parse().expect("the gateway address");
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind on the gateway");
        let addr = listener.local_addr().unwrap();
        let upstream = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), upstream_port);
        let (mode, rx) = watch::channel(Mode::Pass);
        let (resets, refusals) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (r, f, tx) = (resets.clone(), refusals.clone(), mode.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let conn = Conn {
                    upstream,
                    mode: rx.clone(),
                    control: tx.clone(),
                    resets: r.clone(),
                    refusals: f.clone(),
                };
                tokio::spawn(conn.serve(client));
            }
        });
        FaultProxy {
            addr,
            mode,
            resets,
            refusals,
            task,
        }
    }

    /// `http://<gateway>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Conn {
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    control: watch::Sender<Mode>,
    resets: Arc<AtomicU64>,
    refusals: Arc<AtomicU64>,
}

impl Conn {
    async fn serve(mut self, mut client: TcpStream) {
        if *self.mode.borrow_and_update() == Mode::Unavailable {
            self.refuse(&mut client).await;
            return;
        }
        let Ok(mut server) = TcpStream::connect(self.upstream).await else {
            return;
        };
        let cut = self.relay(&mut client, &mut server).await;
        if cut {
            // an abortive close: the client sees a reset, as from a crashed peer (a zero linger
            // does not block on drop, the deprecation's concern)
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
        }
    }

    /// Forwards both ways until either side is done; true when the connection is to be cut (an
    /// outage began, or its responses passed [`Mode::ResetAfter`]'s count).
    async fn relay(&mut self, client: &mut TcpStream, server: &mut TcpStream) -> bool {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let up = async {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
            let _ = sw.shutdown().await;
        };
        let (mode, control, resets) = (&self.mode, &self.control, &self.resets);
        let down = async {
            let mut buf = vec![0u8; 64 << 10];
            let mut sent = 0u64;
            loop {
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                sent += n as u64;
                // a copy: a borrow held into the body would deadlock send_replace
                let current = *mode.borrow();
                if let Mode::ResetAfter(limit) = current
                    && sent >= limit
                {
                    control.send_replace(Mode::Pass);
                    resets.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
            }
            let _ = cw.shutdown().await;
            false
        };
        let mut watch = self.mode.clone();
        let outage = async move {
            while watch.changed().await.is_ok() {
                if *watch.borrow() == Mode::Unavailable {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::pin!(up, down, outage);
        tokio::select! {
            cut = &mut down => cut,
            _ = &mut up => tokio::select! {
                cut = &mut down => cut,
                _ = &mut outage => true,
            },
            _ = &mut outage => true,
        }
    }

    /// Reads the request head and answers 503.
    async fn refuse(&self, client: &mut TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        });
        let _ = read.await;
        self.refusals.fetch_add(1, Ordering::Relaxed);
        let _ = client
            .write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\
                  Connection: close\r\n\r\n",
            )
            .await;
        let _ = client.shutdown().await;
    }
}
