//! Receiving an export stream into a local file: `pvesm export`'s 8-byte little-endian size header
//! ([`read_header`]), then the bytes, written with all-zero blocks left as holes
//! ([`copy_sparse`]), so a raw image in scratch takes only the space of its data.

use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::progress::Progress;
use crate::{Error, Result};

/// Bytes read at once from the stream.
const BUF: usize = 1 << 20;
/// Granularity of holes: an all-zero block of this size is skipped over, not written.
const BLOCK: usize = 64 << 10;

/// Why receiving stopped.
#[derive(Debug)]
pub enum Failure {
    /// The stream ended early or was unreadable: the remote command's own error says why.
    Stream(Error),
    /// Writing the local file failed.
    Local(Error),
}

impl Failure {
    /// The error, given the remote command's outcome: its failure explains a broken stream better.
    pub fn with_remote(self, remote: Result<()>) -> Error {
        match (self, remote) {
            (Failure::Stream(_), Err(remote)) => remote,
            (Failure::Stream(e), Ok(())) | (Failure::Local(e), _) => e,
        }
    }
}

/// Reads the 8-byte little-endian size header of a `pvesm export` stream.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> Result<u64, Failure> {
    let mut header = [0u8; 8];
    r.read_exact(&mut header).await.map_err(|e| {
        Failure::Stream(Error::transient(
            what,
            format!("the export stream ended before its size header: {e}"),
        ))
    })?;
    Ok(u64::from_le_bytes(header))
}

/// Copies the stream into a new file `out`, leaving all-zero blocks as holes, until EOF or
/// `limit` bytes; with a limit, a shorter stream is an error. Returns the bytes copied.
pub async fn copy_sparse<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &Path,
    limit: Option<u64>,
    progress: &Progress,
    what: &str,
) -> Result<u64, Failure> {
    let local =
        |e: std::io::Error| Failure::Local(Error::io(format!("writing {}", out.display()), e));
    let mut file = tokio::fs::File::create(out).await.map_err(local)?;
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let want = limit.map_or(BUF as u64, |l| (l - total).min(BUF as u64)) as usize;
        if want == 0 {
            break;
        }
        let n = fill(r, &mut buf[..want]).await.map_err(|e| {
            Failure::Stream(Error::transient(
                what,
                format!("reading the export stream: {e}"),
            ))
        })?;
        if n == 0 {
            break;
        }
        write_sparse(&mut file, &buf[..n]).await.map_err(local)?;
        total += n as u64;
        progress.add(n as u64);
    }
    if let Some(l) = limit
        && total != l
    {
        return Err(Failure::Stream(Error::transient(
            what,
            format!("the export stream ended after {total} of {l} bytes"),
        )));
    }
    file.set_len(total).await.map_err(local)?;
    file.sync_all().await.map_err(local)?;
    Ok(total)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = r.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// A block of zeros to compare with (a `memcmp`, fast in any build).
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// Writes `data` at the file's position, seeking over all-zero [`BLOCK`]s.
async fn write_sparse(file: &mut tokio::fs::File, data: &[u8]) -> std::io::Result<()> {
    for block in data.chunks(BLOCK) {
        if block == &ZEROS[..block.len()] {
            file.seek(std::io::SeekFrom::Current(block.len() as i64))
                .await?;
        } else {
            file.write_all(block).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn stream(size: u64, body: &[u8]) -> Vec<u8> {
        let mut s = size.to_le_bytes().to_vec();
        s.extend_from_slice(body);
        s
    }

    #[tokio::test]
    async fn raw_size_streams_become_sparse_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d.raw");
        let mut body = vec![0u8; 8 << 20];
        body[..4096].fill(0x11);
        body[(6 << 20)..(6 << 20) + 10].fill(0x22);
        let bytes = stream(body.len() as u64, &body);
        let mut r = bytes.as_slice();
        let size = read_header(&mut r, "t").await.unwrap();
        let progress = Progress::new(size);
        let n = copy_sparse(&mut r, &out, Some(size), &progress, "t")
            .await
            .unwrap();
        assert_eq!((n, progress.done()), (8 << 20, 8 << 20));
        assert_eq!(std::fs::read(&out).unwrap(), body);
        let meta = std::fs::metadata(&out).unwrap();
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "holes kept: {} blocks",
            meta.blocks()
        );
    }

    #[tokio::test]
    async fn short_streams_and_missing_headers_are_stream_failures() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d.raw");
        let bytes = stream(100, &[1u8; 40]);
        let mut r = bytes.as_slice();
        let size = read_header(&mut r, "t").await.unwrap();
        let e = copy_sparse(&mut r, &out, Some(size), &Progress::default(), "t")
            .await
            .unwrap_err();
        assert!(matches!(e, Failure::Stream(_)), "{e:?}");
        let remote = Err(Error::Tool {
            tool: "pvesm".into(),
            detail: "volume does not exist".into(),
        });
        assert!(
            e.with_remote(remote)
                .to_string()
                .contains("volume does not exist")
        );

        let mut r: &[u8] = &[1, 2, 3];
        assert!(matches!(
            read_header(&mut r, "t").await,
            Err(Failure::Stream(_))
        ));
    }

    #[tokio::test]
    async fn without_a_limit_reads_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("f.qcow2");
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = body.as_slice();
        let n = copy_sparse(&mut r, &out, None, &Progress::default(), "t")
            .await
            .unwrap();
        assert_eq!(n, body.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), body);
    }
}
