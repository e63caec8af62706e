//! The one stream type every staged byte passes through: it updates a SHA-256 and a [`Progress`]
//! counter in the same pass that moves the bytes, so neither can be forgotten on a new path.
//!
//! [`HashingReader`] and [`HashingWriter`] implement both the blocking (`std::io`) and the async
//! (`tokio::io`) traits, depending on what they wrap.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

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

/// A local file written through a hash, with a write buffer: where downloads land.
pub type FileWriter = HashingWriter<BufWriter<tokio::fs::File>>;

/// Opens `path` for appending after hashing what it already holds, so an interrupted download
/// continues where it stopped with the hash still covering the whole file. A missing file starts
/// empty. The resumed prefix counts as progress.
pub async fn resume_file(path: &Path, progress: Progress) -> Result<FileWriter> {
    let context = || format!("resuming {}", path.display());
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .await
        .map_err(|e| Error::io(context(), e))?;
    let reading = file
        .try_clone()
        .await
        .map_err(|e| Error::io(context(), e))?
        .into_std()
        .await;
    let tally = Tally::new(progress);
    let tally = tokio::task::spawn_blocking(move || -> io::Result<Tally> {
        let mut reader =
            HashingReader::with_tally(io::BufReader::with_capacity(CHUNK, reading), tally);
        io::copy(&mut reader, &mut io::sink())?;
        Ok(reader.into_parts().1)
    })
    .await
    .map_err(|e| Error::io(context(), io::Error::other(e)))?
    .map_err(|e| Error::io(context(), e))?;
    file.seek(io::SeekFrom::Start(tally.bytes()))
        .await
        .map_err(|e| Error::io(context(), e))?;
    Ok(HashingWriter::with_tally(
        BufWriter::with_capacity(CHUNK, file),
        tally,
    ))
}

impl FileWriter {
    /// Discards everything written so far (the source restarted from byte 0).
    pub async fn truncate(&mut self) -> io::Result<()> {
        self.inner.flush().await?;
        self.inner.get_mut().set_len(0).await?;
        self.inner.seek(io::SeekFrom::Start(0)).await?;
        self.tally.restart();
        Ok(())
    }

    /// Flushes and fsyncs the file; gives back the tally.
    pub async fn sync(mut self) -> io::Result<Tally> {
        self.inner.flush().await?;
        self.inner.get_mut().sync_all().await?;
        Ok(self.tally)
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
    async fn resumed_file_hashes_the_whole_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        std::fs::write(&path, b"ab").unwrap();
        let progress = Progress::default();
        let mut w = resume_file(&path, progress.clone()).await.unwrap();
        assert_eq!(w.bytes(), 2);
        w.write_all(b"c").await.unwrap();
        let tally = w.sync().await.unwrap();
        assert_eq!(tally.finish(), (3, ABC.to_string()));
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(progress.done(), 3);
        assert_eq!(
            hash_file(&path, Progress::default()).await.unwrap(),
            (3, ABC.to_string())
        );
    }
}
