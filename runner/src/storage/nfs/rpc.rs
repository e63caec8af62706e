//! NFSv3 and MOUNT v3 over TCP (RFC 1813), with the `nfs3_client` crate's XDR and RPC clients on
//! connections this module opens itself (to the addresses the endpoint guard judged), with a deadline
//! on every connect and every call.
//!
//! A [`Session`] is one mounted export: the root file handle (MOUNT is asked once, then released:
//! NFSv3 handles do not depend on it) and a pool of connections to the NFS port. The crate's client
//! has one call in flight per connection, so transfers pipeline by running calls on several
//! connections at once ([`Session::take`]).
//!
//! Every failure is a [`Failure`]: the operation (with the object it was on) and what went wrong,
//! which [`super`] turns into the runner's classified [`crate::Error`].

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::mount::{self, dirpath, mountstat3};
use nfs3_client::nfs3_types::nfs3::{
    self as v3, COMMIT3args, CREATE3args, FSINFO3args, GETATTR3args, LOOKUP3args, MKDIR3args,
    Nfs3Option, Nfs3Result, READ3args, REMOVE3args, RENAME3args, RMDIR3args, SETATTR3args,
    WRITE3args, createhow3, diropargs3, fattr3, filename3, nfs_fh3, nfsstat3, sattr3, stable_how,
    writeverf3,
};
use nfs3_client::nfs3_types::portmap::IPPROTO_TCP;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioIo;
use nfs3_client::{MountClient, MountError, Nfs3Client, PortmapError, PortmapperClient, RpcError};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// One connection to the NFS port.
pub(super) type Conn = Nfs3Client<TokioIo<TcpStream>>;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one call may take (a 1 MiB WRITE to a slow disk included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest READ or WRITE asked for, whatever the server allows.
const MAX_IO: u32 = 1 << 20;
/// Idle connections a session keeps.
const MAX_IDLE: usize = 8;
/// How long an idle connection is reused: well under the idle timeouts servers close them after
/// (minutes), so a pooled connection is not found closed on its next call.
const IDLE_REUSE: Duration = Duration::from_secs(30);
/// Modes of what the runner creates.
pub(super) const FILE_MODE: u32 = 0o644;
pub(super) const DIR_MODE: u32 = 0o755;

/// What went wrong, before it is classified.
#[derive(Debug)]
pub(super) enum Fail {
    /// Connecting to an address failed.
    Connect(SocketAddr, std::io::Error),
    /// No answer within the deadline (the connection is dropped).
    Timeout(Duration),
    /// The RPC layer: transport, XDR, or the server refused the call.
    Rpc(RpcError),
    /// The portmapper has no TCP port for a program (`MOUNT v3`, `NFS v3`).
    Unregistered(&'static str, SocketAddr),
    /// MOUNT refused the export; the server's export list when it told it.
    Mount(mountstat3, Option<Vec<String>>),
    /// An NFS procedure failed.
    Status(nfsstat3),
    /// The export's security flavours do not include AUTH_UNIX.
    Flavors(Vec<u32>),
    /// An answer that breaks the protocol's promises (no handle after CREATE, a changed write
    /// verifier, a WRITE that wrote nothing...).
    Protocol(String),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Connect(addr, e) => write!(f, "connecting to {addr}: {e}"),
            Fail::Timeout(d) => write!(f, "no answer within {}s", d.as_secs()),
            Fail::Rpc(e) => write!(f, "RPC: {e}"),
            Fail::Unregistered(program, pmap) => write!(
                f,
                "the portmapper at {pmap} has no TCP port registered for {program}"
            ),
            Fail::Mount(stat, None) => write!(f, "{stat}"),
            Fail::Mount(stat, Some(exports)) if exports.is_empty() => {
                write!(f, "{stat}; the server lists no exports")
            }
            Fail::Mount(stat, Some(exports)) => {
                write!(f, "{stat}; the server's exports: {}", exports.join(", "))
            }
            Fail::Status(stat) => write!(f, "{stat}"),
            Fail::Flavors(flavors) => write!(
                f,
                "the export accepts only the security flavors {flavors:?}, not AUTH_UNIX (1)"
            ),
            Fail::Protocol(what) => f.write_str(what),
        }
    }
}

impl Fail {
    /// The failure of `what` (an operation and its object, e.g. `WRITE ns/m/.vda.raw.tmp-7`).
    pub(super) fn at(self, what: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            fail: self,
        }
    }

    /// Whether the connection the failure happened on is unusable.
    pub(super) fn breaks_connection(&self) -> bool {
        match self {
            Fail::Rpc(e) => !e.is_connection_reusable(),
            Fail::Timeout(_) | Fail::Connect(..) => true,
            _ => false,
        }
    }
}

/// A failed operation: what was being done, and what went wrong.
#[derive(Debug)]
pub(super) struct Failure {
    pub what: String,
    pub fail: Fail,
}

type R<T> = Result<T, Fail>;

/// Runs an RPC with the call deadline.
async fn call<T>(f: impl Future<Output = Result<T, RpcError>>) -> R<T> {
    match timeout(CALL_TIMEOUT, f).await {
        Err(_) => Err(Fail::Timeout(CALL_TIMEOUT)),
        Ok(Err(e)) => Err(Fail::Rpc(e)),
        Ok(Ok(v)) => Ok(v),
    }
}

/// The result of a procedure, or its status as the failure.
fn ok<T, E>(res: Nfs3Result<T, E>) -> R<T> {
    match res {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((stat, _)) => Err(Fail::Status(stat)),
    }
}

async fn connect(addr: SocketAddr) -> R<TokioIo<TcpStream>> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Fail::Timeout(CONNECT_TIMEOUT))?
        .map_err(|e| Fail::Connect(addr, e))?;
    // calls are request/answer: no Nagle delay on the last segment of either
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

/// The AUTH_UNIX identity calls are made with: this process's effective uid and gid and its
/// supplementary groups (at most 16, the protocol's limit), and the host name.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
    pub machine: String,
}

impl Identity {
    pub(super) fn of_process() -> Self {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let mut gids: Vec<u32> = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        gids.retain(|g| *g != gid);
        gids.truncate(16);
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "virtrigaud-runner".into());
        Identity {
            uid,
            gid,
            gids,
            machine: machine.chars().take(255).collect(),
        }
    }

    fn credential(&self) -> opaque_auth<'static> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or_default();
        opaque_auth::auth_unix(&auth_unix {
            stamp,
            machinename: Opaque::owned(self.machine.clone().into_bytes()),
            uid: self.uid,
            gid: self.gid,
            gids: self.gids.clone(),
        })
    }
}

/// Where the export is.
#[derive(Clone, Debug)]
pub(super) struct Target {
    /// The judged addresses of the server, tried in order.
    pub addrs: Vec<IpAddr>,
    /// `host:port`: MOUNT and NFS both there. `None`: ask the portmapper.
    pub port: Option<u16>,
    /// The export path (`/mnt/migrations`).
    pub export: String,
}

/// A mounted export.
pub(super) struct Session {
    nfs: SocketAddr,
    credential: opaque_auth<'static>,
    /// The export's root directory.
    pub root: nfs_fh3,
    /// Bytes per WRITE and per READ.
    pub wsize: u32,
    pub rsize: u32,
    /// Connections whose last call ended cleanly, with when it ended.
    idle: Mutex<Vec<(Instant, Conn)>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("nfs", &self.nfs)
            .field("wsize", &self.wsize)
            .field("rsize", &self.rsize)
            .finish_non_exhaustive()
    }
}

/// The MOUNT and NFS ports of `addr`, from its portmapper.
async fn ask_portmapper(addr: IpAddr) -> Result<(u16, u16), Failure> {
    let pmap = SocketAddr::new(addr, endpoint_policy::PORTMAPPER_PORT);
    let what = format!(
        "asking the portmapper at {pmap} for the MOUNT and NFS ports (for a server without one, \
         write host:port)"
    );
    let io = connect(pmap).await.map_err(|f| f.at(&what))?;
    let mut client = PortmapperClient::new(io);
    let mut port = async |program: &'static str, prog: u32, vers: u32| -> R<u16> {
        match timeout(CALL_TIMEOUT, client.getport(prog, vers, IPPROTO_TCP)).await {
            Err(_) => Err(Fail::Timeout(CALL_TIMEOUT)),
            Ok(Ok(port)) => Ok(port),
            Ok(Err(PortmapError::ProgramUnavailable)) => Err(Fail::Unregistered(program, pmap)),
            Ok(Err(PortmapError::InvalidPortValue(p))) => Err(Fail::Protocol(format!(
                "the portmapper at {pmap} answered port {p} for {program}"
            ))),
            Ok(Err(PortmapError::Rpc(e))) => Err(Fail::Rpc(e)),
        }
    };
    let mount_port = port("MOUNT v3", mount::PROGRAM, mount::VERSION)
        .await
        .map_err(|f| f.at(&what))?;
    let nfs_port = port("NFS v3", v3::PROGRAM, v3::VERSION)
        .await
        .map_err(|f| f.at(&what))?;
    Ok((mount_port, nfs_port))
}

impl Session {
    /// Mounts the export: finds the ports (the given one, or the portmapper's), asks MOUNT for the
    /// root handle, and FSINFO for the transfer sizes. The server's addresses are tried in order.
    pub(super) async fn mount(target: &Target, identity: &Identity) -> Result<Session, Failure> {
        let mut last = None;
        for addr in &target.addrs {
            match Session::mount_at(*addr, target, identity).await {
                Ok(session) => return Ok(session),
                // an address that does not answer: the next may
                Err(f) if matches!(f.fail, Fail::Connect(..) | Fail::Timeout(_)) => last = Some(f),
                Err(f) => return Err(f),
            }
        }
        Err(last.unwrap_or_else(|| {
            Fail::Protocol("the server has no address".into()).at(format!("MNT {}", target.export))
        }))
    }

    async fn mount_at(addr: IpAddr, target: &Target, identity: &Identity) -> Result<Self, Failure> {
        let (mount_port, nfs_port) = match target.port {
            Some(port) => (port, port),
            None => ask_portmapper(addr).await?,
        };
        let credential = identity.credential();
        let export = target.export.as_str();
        let what = format!(
            "MNT {export} (MOUNT v3 at {})",
            SocketAddr::new(addr, mount_port)
        );
        let io = connect(SocketAddr::new(addr, mount_port))
            .await
            .map_err(|f| f.at(&what))?;
        let mut mounter =
            MountClient::new_with_auth(io, credential.clone(), opaque_auth::default());
        let path = || dirpath(Opaque::borrowed(export.as_bytes()));
        let mounted = match timeout(CALL_TIMEOUT, mounter.mnt(path())).await {
            Err(_) => Err(Fail::Timeout(CALL_TIMEOUT)),
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(MountError::Denied(stat))) => {
                // servers answer ACCES for a path they do not export at all: the list tells
                let exports = match timeout(Duration::from_secs(10), mounter.export()).await {
                    Ok(Ok(list)) => Some(
                        list.into_inner()
                            .into_iter()
                            .map(|e| String::from_utf8_lossy(&e.ex_dir.0).into_owned())
                            .collect(),
                    ),
                    _ => None,
                };
                Err(Fail::Mount(stat, exports))
            }
            Ok(Err(MountError::Rpc(e))) => Err(Fail::Rpc(e)),
        }
        .map_err(|f| f.at(&what))?;
        // AUTH_UNIX (1); an empty list is an old server's way of saying AUTH_UNIX
        let flavors = mounted.auth_flavors.clone();
        if !flavors.is_empty() && !flavors.contains(&1) {
            return Err(Fail::Flavors(flavors).at(&what));
        }
        // the handle stays valid without the mount: release the server's record of it
        let _ = timeout(Duration::from_secs(5), mounter.umnt(path())).await;
        drop(mounter);

        let mut session = Session {
            nfs: SocketAddr::new(addr, nfs_port),
            credential,
            root: nfs_fh3 {
                data: Opaque::owned(mounted.fhandle.0.to_vec()),
            },
            wsize: 64 * 1024,
            rsize: 64 * 1024,
            idle: Mutex::new(Vec::new()),
        };
        let what = format!("FSINFO {export} (NFS v3 at {})", session.nfs);
        let mut conn = session.take().await.map_err(|f| f.at(&what))?;
        let info = call(conn.fsinfo(&FSINFO3args {
            fsroot: session.root.clone(),
        }))
        .await
        .and_then(ok)
        .map_err(|f| f.at(&what))?;
        session.give_back(conn);
        let size = |max: u32, pref: u32| {
            let want = if max > 0 { max } else { pref };
            // whole 4 KiB pages; tiny or absent limits fall back to 32 KiB
            let n = want.min(MAX_IO) & !4095;
            if n == 0 { 32 * 1024 } else { n }
        };
        session.wsize = size(info.wtmax, info.wtpref);
        session.rsize = size(info.rtmax, info.rtpref);
        Ok(session)
    }

    /// The NFS server's address.
    pub(super) fn address(&self) -> SocketAddr {
        self.nfs
    }

    /// A recently used idle connection, or a new one.
    pub(super) async fn take(&self) -> R<Conn> {
        let reused = {
            let mut idle = self.idle.lock().expect("idle pool");
            idle.retain(|(since, _)| since.elapsed() < IDLE_REUSE);
            idle.pop()
        };
        if let Some((_, conn)) = reused {
            return Ok(conn);
        }
        let io = connect(self.nfs).await?;
        Ok(Nfs3Client::new_with_auth(
            io,
            self.credential.clone(),
            opaque_auth::default(),
        ))
    }

    /// Returns a connection whose last call ended cleanly.
    pub(super) fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("idle pool");
        if idle.len() < MAX_IDLE {
            idle.push((Instant::now(), conn));
        }
    }

    /// Runs one call on a pooled connection; the connection goes back unless the call broke it.
    async fn on_conn<T>(&self, f: impl AsyncFnOnce(&mut Conn) -> R<T>) -> R<T> {
        let mut conn = self.take().await?;
        let result = f(&mut conn).await;
        match &result {
            Err(fail) if fail.breaks_connection() => {}
            _ => self.give_back(conn),
        }
        result
    }

    /// LOOKUP `name` in `dir`: the handle and, when the server sent them, the attributes.
    pub(super) async fn lookup(&self, dir: &nfs_fh3, name: &str) -> R<(nfs_fh3, Option<fattr3>)> {
        let res = self
            .on_conn(async |c| {
                call(c.lookup(&LOOKUP3args {
                    what: dirop(dir, name),
                }))
                .await
            })
            .await?;
        let ok = ok(res)?;
        Ok((ok.object, attrs(ok.obj_attributes)))
    }

    /// GETATTR.
    pub(super) async fn getattr(&self, fh: &nfs_fh3) -> R<fattr3> {
        let res = self
            .on_conn(async |c| call(c.getattr(&GETATTR3args { object: fh.clone() })).await)
            .await?;
        Ok(ok(res)?.obj_attributes)
    }

    /// MKDIR `name` in `dir`.
    pub(super) async fn mkdir(&self, dir: &nfs_fh3, name: &str) -> R<Option<nfs_fh3>> {
        let res = self
            .on_conn(async |c| {
                call(c.mkdir(&MKDIR3args {
                    where_: dirop(dir, name),
                    attributes: sattr3 {
                        mode: Nfs3Option::Some(DIR_MODE),
                        ..sattr3::default()
                    },
                }))
                .await
            })
            .await?;
        Ok(new_handle(ok(res)?.obj))
    }

    /// CREATE `name` in `dir`, failing when it exists (GUARDED), empty, mode [`FILE_MODE`].
    pub(super) async fn create(&self, dir: &nfs_fh3, name: &str) -> R<Option<nfs_fh3>> {
        let res = self
            .on_conn(async |c| {
                call(c.create(&CREATE3args {
                    where_: dirop(dir, name),
                    how: createhow3::GUARDED(sattr3 {
                        mode: Nfs3Option::Some(FILE_MODE),
                        size: Nfs3Option::Some(0),
                        ..sattr3::default()
                    }),
                }))
                .await
            })
            .await?;
        Ok(new_handle(ok(res)?.obj))
    }

    /// SETATTR the size.
    pub(super) async fn truncate(&self, fh: &nfs_fh3, size: u64) -> R<()> {
        let res = self
            .on_conn(async |c| {
                call(c.setattr(&SETATTR3args {
                    object: fh.clone(),
                    new_attributes: sattr3 {
                        size: Nfs3Option::Some(size),
                        ..sattr3::default()
                    },
                    guard: Nfs3Option::None,
                }))
                .await
            })
            .await?;
        ok(res).map(drop)
    }

    /// COMMIT the whole file: the server's write verifier.
    pub(super) async fn commit(&self, fh: &nfs_fh3) -> R<writeverf3> {
        let res = self
            .on_conn(async |c| {
                call(c.commit(&COMMIT3args {
                    file: fh.clone(),
                    offset: 0,
                    count: 0,
                }))
                .await
            })
            .await?;
        Ok(ok(res)?.verf)
    }

    /// RENAME `from` to `to` in `dir` (replacing `to`).
    pub(super) async fn rename(&self, dir: &nfs_fh3, from: &str, to: &str) -> R<()> {
        let res = self
            .on_conn(async |c| {
                call(c.rename(&RENAME3args {
                    from: dirop(dir, from),
                    to: dirop(dir, to),
                }))
                .await
            })
            .await?;
        ok(res).map(drop)
    }

    /// REMOVE `name` from `dir`; `false` when it was not there.
    pub(super) async fn remove(&self, dir: &nfs_fh3, name: &str) -> R<bool> {
        let res = self
            .on_conn(async |c| {
                call(c.remove(&REMOVE3args {
                    object: dirop(dir, name),
                }))
                .await
            })
            .await?;
        match ok(res) {
            Ok(_) => Ok(true),
            Err(Fail::Status(nfsstat3::NFS3ERR_NOENT)) => Ok(false),
            Err(f) => Err(f),
        }
    }

    /// RMDIR `name` in `dir`.
    pub(super) async fn rmdir(&self, dir: &nfs_fh3, name: &str) -> R<()> {
        let res = self
            .on_conn(async |c| {
                call(c.rmdir(&RMDIR3args {
                    object: dirop(dir, name),
                }))
                .await
            })
            .await?;
        ok(res).map(drop)
    }

    /// WRITEs all of `data` at `offset`, FILE_SYNC: small files (sidecars, probes).
    pub(super) async fn write_sync(&self, fh: &nfs_fh3, data: &[u8]) -> R<()> {
        let mut conn = self.take().await?;
        let result = write_all(&mut conn, fh, 0, data, stable_how::FILE_SYNC).await;
        if !matches!(&result, Err(f) if f.breaks_connection()) {
            self.give_back(conn);
        }
        result.map(drop)
    }

    /// READs up to `limit` bytes from the start of a small file.
    pub(super) async fn read_small(&self, fh: &nfs_fh3, limit: u32) -> R<Vec<u8>> {
        let mut conn = self.take().await?;
        let result = read_exact(&mut conn, fh, 0, limit.min(self.rsize)).await;
        if !matches!(&result, Err(f) if f.breaks_connection()) {
            self.give_back(conn);
        }
        result
    }
}

/// What a run of WRITEs promised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Written {
    /// The server's write verifier (it changes when the server restarts).
    pub verf: writeverf3,
    /// Whether every byte is already on stable storage (no COMMIT needed).
    pub stable: bool,
}

/// WRITEs all of `data` at `offset` on `conn`, continuing after short writes.
pub(super) async fn write_all(
    conn: &mut Conn,
    fh: &nfs_fh3,
    offset: u64,
    data: &[u8],
    stable: stable_how,
) -> R<Written> {
    let mut done = 0usize;
    let mut written = None::<Written>;
    loop {
        let rest = &data[done..];
        let res = call(conn.write(&WRITE3args {
            file: fh.clone(),
            offset: offset + done as u64,
            count: rest.len() as u32,
            stable,
            data: Opaque::borrowed(rest),
        }))
        .await?;
        let ok = ok(res)?;
        let this = Written {
            verf: ok.verf,
            stable: ok.committed != stable_how::UNSTABLE,
        };
        written = Some(match written {
            None => this,
            Some(w) if w.verf != this.verf => {
                return Err(Fail::Protocol(
                    "the server's write verifier changed (it restarted)".into(),
                ));
            }
            Some(w) => Written {
                verf: w.verf,
                stable: w.stable && this.stable,
            },
        });
        let n = ok.count as usize;
        if n == 0 && !rest.is_empty() {
            return Err(Fail::Protocol(format!(
                "WRITE at offset {} wrote 0 of {} bytes",
                offset + done as u64,
                rest.len()
            )));
        }
        done += n.min(rest.len());
        if done >= data.len() {
            return Ok(written.expect("one WRITE made"));
        }
    }
}

/// READs `len` bytes at `offset` on `conn` (fewer only at the end of the file), continuing after
/// short reads.
pub(super) async fn read_exact(conn: &mut Conn, fh: &nfs_fh3, offset: u64, len: u32) -> R<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    loop {
        let want = len - out.len() as u32;
        let res = call(conn.read(&READ3args {
            file: fh.clone(),
            offset: offset + out.len() as u64,
            count: want,
        }))
        .await?;
        let ok = ok(res)?;
        let data = ok.data.into_owned();
        if data.len() > want as usize {
            return Err(Fail::Protocol(format!(
                "READ of {want} bytes answered {} bytes",
                data.len()
            )));
        }
        let got = data.len();
        if out.is_empty() {
            out = data;
        } else {
            out.extend_from_slice(&data);
        }
        if out.len() as u32 == len || ok.eof {
            return Ok(out);
        }
        if got == 0 {
            return Err(Fail::Protocol(format!(
                "READ at offset {} returned no data before the end of the file",
                offset + out.len() as u64
            )));
        }
    }
}

fn dirop<'a>(dir: &nfs_fh3, name: &'a str) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3::from(name.as_bytes()),
    }
}

fn attrs(a: Nfs3Option<fattr3>) -> Option<fattr3> {
    match a {
        Nfs3Option::Some(a) => Some(a),
        Nfs3Option::None => None,
    }
}

/// A spawned task that is aborted when dropped (a failed transfer leaves no call running).
pub(super) struct Task<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    pub(super) fn spawn(f: impl Future<Output = T> + Send + 'static) -> Self {
        Task(tokio::spawn(f))
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// The file type of `attr` is a directory.
pub(super) fn is_dir(attr: &fattr3) -> bool {
    attr.type_ == v3::ftype3::NF3DIR
}

/// The handle a MKDIR or CREATE returned, if the server sent one (it may leave it to a LOOKUP).
fn new_handle(obj: Nfs3Option<nfs_fh3>) -> Option<nfs_fh3> {
    match obj {
        Nfs3Option::Some(fh) => Some(fh),
        Nfs3Option::None => None,
    }
}
