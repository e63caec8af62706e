//! The one stream type every staged byte passes through: it updates a SHA-256 and a [`Progress`]
//! counter in the same pass that moves the bytes, so neither can be forgotten on a new path.
//!
//! [`HashingReader`] and [`HashingWriter`] implement both the blocking (`std::io`) and the async
//! (`tokio::io`) traits, depending on what they wrap.

use std::io::{self, Seek};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use crate::progress::Progress;
use crate::{Error, Result};

/// Buffer size for file copies and network bodies: large enough to keep syscalls rare, small enough
/// to keep memory flat.
pub const CHUNK: usize = 1 << 20;

/// A running SHA-256 plus a byte count, feeding a [`Progress`].
#[derive(Clone, Debug)]
pub struct Tally {
    hasher: Sha256,
    bytes: u64,
    progress: Progress,
}

impl Tally {
    /// An empty tally reporting into `progress`.
    pub fn new(progress: Progress) -> Self {
        Tally {
            hasher: Sha256::new(),
            bytes: 0,
            progress,
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        self.progress.add(data.len() as u64);
    }

    /// Bytes fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Starts over (the data fed so far is being discarded); progress goes back to zero.
    pub fn restart(&mut self) {
        self.hasher = Sha256::new();
        self.bytes = 0;
        self.progress.set_done(0);
    }

    /// The hex SHA-256 of everything fed so far, without ending the tally.
    pub fn hex_so_far(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Ends the tally: the byte count and the hex SHA-256.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hasher.finalize()))
    }
}

/// Wraps a reader; every byte read is hashed and counted.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    tally: Tally,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`, reporting into `progress`.
    pub fn new(inner: R, progress: Progress) -> Self {
        HashingReader {
            inner,
            tally: Tally::new(progress),
        }
    }

    /// Wraps `inner`, continuing an existing tally (e.g. after hashing a resumed prefix).
    pub fn with_tally(inner: R, tally: Tally) -> Self {
        HashingReader { inner, tally }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.tally.bytes()
    }

    /// Gives back the reader and the tally.
    pub fn into_parts(self) -> (R, Tally) {
        (self.inner, self.tally)
    }

    /// Ends reading: the byte count and the hex SHA-256.
    pub fn finish(self) -> (u64, String) {
        self.tally.finish()
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.tally.update(&buf.filled()[before..]);
        }
        polled
    }
}

/// Wraps a writer; every byte accepted by the inner writer is hashed and counted.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    tally: Tally,
}

impl<W> HashingWriter<W> {
    /// Wraps `inner`, reporting into `progress`.
    pub fn new(inner: W, progress: Progress) -> Self {
        HashingWriter {
            inner,
            tally: Tally::new(progress),
        }
    }

    /// Wraps `inner`, continuing an existing tally (the bytes already in a resumed file).
    pub fn with_tally(inner: W, tally: Tally) -> Self {
        HashingWriter { inner, tally }
    }

    /// Bytes written so far (including a resumed prefix).
    pub fn bytes(&self) -> u64 {
        self.tally.bytes()
    }

    /// The wrapped writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives back the writer and the tally.
    pub fn into_parts(self) -> (W, Tally) {
        (self.inner, self.tally)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tally.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.tally.update(&buf[..n]);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Opens `path` for writing after hashing what it already holds (a missing file starts empty),
/// positioned at its end: an interrupted download continues where it stopped, with the hash still
/// covering the whole file. The existing prefix counts as progress. Blocking.
pub fn open_resumable(path: &Path, progress: Progress) -> io::Result<(std::fs::File, Tally)> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?;
    let mut reader = HashingReader::new(io::BufReader::with_capacity(CHUNK, &mut file), progress);
    io::copy(&mut reader, &mut io::sink())?;
    let (_, tally) = reader.into_parts();
    file.seek(io::SeekFrom::Start(tally.bytes()))?;
    Ok((file, tally))
}

/// A fixed number of equally sized buffers, taken and given back (by dropping them, or the last
/// [`Bytes`] made from one). The big transfers allocate their memory once per operation: it stays
/// at `count * size` instead of whatever the allocator keeps of thousands of freed 8 MiB blocks.
#[derive(Clone, Debug)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    size: usize,
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    available: tokio::sync::Semaphore,
}

impl BufferPool {
    /// `count` buffers of `size` bytes, allocated when first taken.
    pub fn new(count: usize, size: usize) -> Self {
        BufferPool {
            inner: Arc::new(PoolInner {
                size,
                free: std::sync::Mutex::new(Vec::new()),
                available: tokio::sync::Semaphore::new(count.max(1)),
            }),
        }
    }

    /// Size of each buffer.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// An empty buffer with room for [`BufferPool::size`] bytes; waits until one is free.
    pub async fn take(&self) -> PooledBuf {
        self.inner
            .available
            .acquire()
            .await
            .expect("the pool's semaphore is never closed")
            .forget();
        self.pop()
    }

    /// [`BufferPool::take`] for blocking threads.
    pub fn take_blocking(&self) -> PooledBuf {
        futures::executor::block_on(self.take())
    }

    fn pop(&self) -> PooledBuf {
        let reused = self
            .inner
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        PooledBuf {
            buf: reused.unwrap_or_else(|| Vec::with_capacity(self.inner.size)),
            pool: self.inner.clone(),
        }
    }
}

/// A buffer of a [`BufferPool`]; goes back to the pool when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<PoolInner>,
}

impl PooledBuf {
    /// The content as [`Bytes`] (no copy); the buffer returns to the pool when the last clone of
    /// it is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if buf.capacity() >= self.pool.size {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buf);
        }
        self.pool.available.add_permits(1);
    }
}

/// A file read in order on a blocking thread, through the hash, handed out as chunks the size of
/// the pool's buffers (the last one shorter). Reading waits for a free buffer, so memory stays at
/// the pool's size however slowly the chunks are consumed.
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    thread: tokio::task::JoinHandle<io::Result<Tally>>,
}

impl ChunkReader {
    /// Starts reading `path` into buffers of `pool`, reporting into `progress`.
    pub fn open(path: &Path, pool: BufferPool, progress: Progress) -> Self {
        // never the limit: the pool is
        let (tx, rx) = mpsc::channel(pool.inner.available.available_permits().max(1));
        let path = path.to_path_buf();
        let chunk = pool.size();
        let thread = tokio::task::spawn_blocking(move || {
            let fail = |e: io::Error| {
                let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
                e
            };
            let file = std::fs::File::open(&path).map_err(fail)?;
            let mut reader = HashingReader::new(file, progress);
            loop {
                let mut buf = pool.take_blocking();
                buf.resize(chunk, 0);
                let mut filled = 0;
                while filled < chunk {
                    match io::Read::read(&mut reader, &mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(fail(e)),
                    }
                }
                if filled == 0 {
                    return Ok(reader.into_parts().1);
                }
                buf.truncate(filled);
                if tx.blocking_send(Ok(buf.freeze())).is_err() {
                    // the consumer stopped early (its request failed): it reports that
                    return Ok(reader.into_parts().1);
                }
            }
        });
        ChunkReader { rx, thread }
    }

    /// The next chunk, `None` at the end of the file.
    pub async fn next(&mut self) -> Option<io::Result<Bytes>> {
        self.rx.recv().await
    }

    /// [`ChunkReader::next`] for blocking threads.
    pub fn blocking_next(&mut self) -> Option<io::Result<Bytes>> {
        self.rx.blocking_recv()
    }

    /// The chunks as a stream (for a request body), and the thread that yields the tally at the end.
    pub fn into_parts(
        self,
    ) -> (
        impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static,
        tokio::task::JoinHandle<io::Result<Tally>>,
    ) {
        let chunks = futures::stream::unfold(self.rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (chunks, self.thread)
    }

    /// Stops reading; the byte count and SHA-256 of what was read.
    pub async fn finish(self) -> io::Result<(u64, String)> {
        drop(self.rx);
        Ok(self.thread.await.map_err(io::Error::other)??.finish())
    }
}

impl ChunkReader {
    /// Runs `produce` on a blocking thread with a writer whose bytes are hashed and handed out as
    /// chunks the size of `pool`'s buffers (the last one shorter): a conversion's output read as it
    /// is written, never whole in memory. The tally counts the produced bytes into `progress`.
    pub fn produce<F>(pool: BufferPool, progress: Progress, produce: F) -> Self
    where
        F: FnOnce(&mut ChunkWriter) -> io::Result<()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(pool.inner.available.available_permits().max(1));
        let thread = tokio::task::spawn_blocking(move || {
            let mut writer = ChunkWriter {
                pool,
                buf: None,
                tx: tx.clone(),
                tally: Tally::new(progress),
            };
            let produced = produce(&mut writer).and_then(|()| writer.send_current());
            match produced {
                Ok(()) => Ok(writer.tally),
                // the consumer stopped early (its request failed): it reports that
                Err(_) if tx.is_closed() => Ok(writer.tally),
                Err(e) => {
                    let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
                    Err(e)
                }
            }
        });
        ChunkReader { rx, thread }
    }
}

/// The writer [`ChunkReader::produce`] hands its producer: fills pooled buffers through the hash and
/// sends each one when full. Writing waits for a free buffer, so a slow consumer slows the producer
/// instead of growing memory.
pub struct ChunkWriter {
    pool: BufferPool,
    buf: Option<PooledBuf>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    tally: Tally,
}

impl ChunkWriter {
    fn send_current(&mut self) -> io::Result<()> {
        let Some(buf) = self.buf.take().filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        self.tally.update(&buf);
        self.tx
            .blocking_send(Ok(buf.freeze()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the consumer stopped"))
    }
}

impl io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.tx.is_closed() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the consumer stopped",
            ));
        }
        let size = self.pool.size();
        let buf = self.buf.get_or_insert_with(|| self.pool.take_blocking());
        let n = data.len().min(size - buf.len());
        buf.extend_from_slice(&data[..n]);
        if buf.len() == size {
            self.send_current()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes to upload, produced afresh for every try: a file, or a conversion's output as it is
/// written ([`ChunkReader::produce`]).
pub trait Body: Send + Sync {
    /// What is read, for messages: a path, or `vda converted to vmdk`.
    fn describe(&self) -> String;

    /// The exact length, when known before reading (a file); `None` for a conversion's output.
    fn exact_len(&self) -> Option<u64>;

    /// At most this many bytes come (sizes multipart uploads).
    fn max_len(&self) -> u64;

    /// Starts producing the bytes in chunks of `pool`'s buffer size, hashed, counted into
    /// `progress`.
    fn open(&self, pool: BufferPool, progress: Progress) -> ChunkReader;
}

/// A file as a [`Body`].
#[derive(Clone, Debug)]
pub struct FileBody {
    path: PathBuf,
    len: u64,
}

impl FileBody {
    /// The file at `path`, with its current length.
    pub async fn new(path: &Path) -> Result<Self> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        Ok(FileBody {
            path: path.to_path_buf(),
            len,
        })
    }
}

impl Body for FileBody {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn exact_len(&self) -> Option<u64> {
        Some(self.len)
    }

    fn max_len(&self) -> u64 {
        self.len
    }

    fn open(&self, pool: BufferPool, progress: Progress) -> ChunkReader {
        ChunkReader::open(&self.path, pool, progress)
    }
}

enum SinkOp {
    Data(Bytes),
    Truncate,
}

/// A local file written in order on a blocking thread, through the hash: where downloads land.
/// Continues a partial file ([`open_resumable`]); [`FileSink::finish`] flushes and fsyncs it.
pub struct FileSink {
    tx: Option<mpsc::Sender<SinkOp>>,
    thread: Option<tokio::task::JoinHandle<io::Result<Tally>>>,
    bytes: u64,
    path: PathBuf,
}

impl FileSink {
    /// Opens `path` (hashing what it already holds); at most `ahead` writes wait in the queue.
    pub async fn resume(path: &Path, ahead: usize, progress: Progress) -> Result<Self> {
        let (tx, mut rx) = mpsc::channel::<SinkOp>(ahead.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        let owned = path.to_path_buf();
        let thread = tokio::task::spawn_blocking(move || {
            let (file, mut tally) = match open_resumable(&owned, progress) {
                Ok(opened) => opened,
                Err(e) => {
                    let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
            };
            let _ = ready_tx.send(Ok(tally.bytes()));
            let mut out = io::BufWriter::with_capacity(CHUNK, file);
            while let Some(op) = rx.blocking_recv() {
                match op {
                    SinkOp::Data(data) => {
                        io::Write::write_all(&mut out, &data)?;
                        tally.update(&data);
                    }
                    SinkOp::Truncate => {
                        io::Write::flush(&mut out)?;
                        out.get_mut().set_len(0)?;
                        out.get_mut().rewind()?;
                        tally.restart();
                    }
                }
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(tally)
        });
        let bytes = ready_rx
            .await
            .map_err(|_| {
                Error::io(
                    format!("opening {}", path.display()),
                    io::Error::other("writer thread ended"),
                )
            })?
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Ok(FileSink {
            tx: Some(tx),
            thread: Some(thread),
            bytes,
            path: path.to_path_buf(),
        })
    }

    /// Bytes in the file so far (the resumed prefix plus what was written).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends `data`.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let n = data.len() as u64;
        self.send(SinkOp::Data(data)).await?;
        self.bytes += n;
        Ok(())
    }

    /// Discards everything written so far (the source restarted from byte 0).
    pub async fn truncate(&mut self) -> Result<()> {
        self.send(SinkOp::Truncate).await?;
        self.bytes = 0;
        Ok(())
    }

    async fn send(&mut self, op: SinkOp) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(op).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // the thread stopped: its error says why
        self.tx = None;
        let why = match self.thread.take() {
            Some(thread) => match thread.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => io::Error::other("the writer stopped"),
                Err(e) => io::Error::other(e),
            },
            None => io::Error::other("the writer stopped"),
        };
        Err(Error::io(format!("writing {}", self.path.display()), why))
    }

    /// Flushes and fsyncs the file; the tally of its whole content.
    pub async fn finish(mut self) -> Result<Tally> {
        self.tx = None;
        let context = format!("writing {}", self.path.display());
        match self.thread.take() {
            Some(thread) => thread
                .await
                .map_err(|e| Error::io(context.clone(), io::Error::other(e)))?
                .map_err(|e| Error::io(context, e)),
            None => Err(Error::io(context, io::Error::other("the writer stopped"))),
        }
    }
}

/// SHA-256 and size of a whole file, read in one pass off the async runtime.
pub async fn hash_file(path: &Path, progress: Progress) -> Result<(u64, String)> {
    let path = path.to_path_buf();
    let context = format!("hashing {}", path.display());
    tokio::task::spawn_blocking(move || -> io::Result<(u64, String)> {
        let file = std::fs::File::open(&path)?;
        let mut reader = HashingReader::new(io::BufReader::with_capacity(CHUNK, file), progress);
        io::copy(&mut reader, &mut io::sink())?;
        Ok(reader.finish())
    })
    .await
    .map_err(|e| Error::io(context.clone(), io::Error::other(e)))?
    .map_err(|e| Error::io(context, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    // sha256("abc"), FIPS 180-2 appendix B.1
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn blocking_reader_and_writer_hash_and_count() {
        let progress = Progress::new(3);
        let mut r = HashingReader::new(&b"abc"[..], progress.clone());
        let mut out = Vec::new();
        Read::read_to_end(&mut r, &mut out).unwrap();
        assert_eq!(r.finish(), (3, ABC.to_string()));
        assert_eq!(progress.done(), 3);

        let mut w = HashingWriter::new(Vec::new(), Progress::default());
        Write::write_all(&mut w, b"ab").unwrap();
        Write::write_all(&mut w, b"c").unwrap();
        let (inner, tally) = w.into_parts();
        assert_eq!(inner, b"abc");
        assert_eq!(tally.finish(), (3, ABC.to_string()));
    }

    #[tokio::test]
    async fn async_reader_and_writer_hash_and_count() {
        let mut r = HashingReader::new(&b"abc"[..], Progress::default());
        let mut out = Vec::new();
        AsyncReadExt::read_to_end(&mut r, &mut out).await.unwrap();
        assert_eq!(r.finish(), (3, ABC.to_string()));

        let progress = Progress::default();
        let mut w = HashingWriter::new(Vec::new(), progress.clone());
        AsyncWriteExt::write_all(&mut w, b"abc").await.unwrap();
        assert_eq!(w.into_parts().1.finish(), (3, ABC.to_string()));
        assert_eq!(progress.done(), 3);
    }

    #[tokio::test]
    async fn sink_resumes_and_hashes_the_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"ab").unwrap();
        let progress = Progress::default();
        let mut sink = FileSink::resume(&path, 2, progress.clone()).await.unwrap();
        assert_eq!(sink.bytes(), 2);
        sink.write(Bytes::from_static(b"c")).await.unwrap();
        let tally = sink.finish().await.unwrap();
        assert_eq!(tally.finish(), (3, ABC.to_string()));
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(progress.done(), 3);
        assert_eq!(
            hash_file(&path, Progress::default()).await.unwrap(),
            (3, ABC.to_string())
        );

        let mut sink = FileSink::resume(&path, 2, Progress::default())
            .await
            .unwrap();
        sink.truncate().await.unwrap();
        sink.write(Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(sink.finish().await.unwrap().finish(), (3, ABC.to_string()));
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
    }

    #[tokio::test]
    async fn pooled_buffers_come_back() {
        let pool = BufferPool::new(2, 16);
        let a = pool.take().await;
        let mut b = pool.take().await;
        b.extend_from_slice(b"data");
        let frozen = b.freeze();
        let copy = frozen.clone();
        drop(frozen);
        // a third buffer only once one is back
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), pool.take()).await;
        assert!(waiting.is_err());
        drop(copy);
        let c = pool.take().await;
        assert!(c.is_empty() && c.capacity() >= 16);
        drop((a, c));
        assert_eq!(pool.inner.free.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn chunk_reader_cuts_fixed_chunks_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let progress = Progress::default();
        let pool = BufferPool::new(1, 2);
        let mut reader = ChunkReader::open(&path, pool.clone(), progress.clone());
        assert_eq!(reader.next().await.unwrap().unwrap(), &b"ab"[..]);
        assert_eq!(reader.next().await.unwrap().unwrap(), &b"c"[..]);
        assert!(reader.next().await.is_none());
        assert_eq!(reader.finish().await.unwrap(), (3, ABC.to_string()));
        assert_eq!(progress.done(), 3);

        let mut missing = ChunkReader::open(&dir.path().join("nope"), pool, Progress::default());
        assert!(missing.next().await.unwrap().is_err());
        assert!(missing.finish().await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_is_cut_into_chunks_hashed_and_bounded_by_the_pool() {
        let progress = Progress::default();
        // writes of 1 byte, then 4: chunks of the pool's size whatever the writes' sizes
        let mut reader = ChunkReader::produce(BufferPool::new(2, 2), progress.clone(), |out| {
            out.write_all(b"a")?;
            out.write_all(b"bc")
        });
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next().await {
            chunks.push(chunk.unwrap());
        }
        assert_eq!(chunks, [&b"ab"[..], &b"c"[..]]);
        assert_eq!(reader.finish().await.unwrap(), (3, ABC.to_string()));
        assert_eq!(progress.done(), 3);

        // a producer's error reaches the consumer
        let mut failing = ChunkReader::produce(BufferPool::new(2, 2), Progress::default(), |out| {
            out.write_all(b"abc")?;
            Err(io::Error::other("qemu-img died"))
        });
        let mut seen = Vec::new();
        while let Some(chunk) = failing.next().await {
            seen.push(chunk.map_err(|e| e.to_string()));
        }
        assert_eq!(seen.last().unwrap(), &Err("qemu-img died".to_string()));
        assert!(failing.finish().await.is_err());

        // a consumer that stops ends the producer instead of blocking it on a full pool
        let stopped = ChunkReader::produce(BufferPool::new(1, 2), Progress::default(), |out| {
            for _ in 0..1000 {
                out.write_all(b"abcd")?;
            }
            Ok(())
        });
        let done = tokio::time::timeout(std::time::Duration::from_secs(10), stopped.finish());
        let (bytes, _) = done.await.expect("the producer stopped").unwrap();
        assert!(bytes < 4000, "{bytes} bytes produced for nobody");
    }
}
