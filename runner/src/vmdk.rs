//! A streamOptimized VMDK writer that compresses grains on every core.
//!
//! The layout is VMware's ("Virtual Disk Format 5.0", stream-optimized compressed sparse extents), as
//! vSphere's import and qemu read it:
//! - sector 0: the sparse extent header (`KDMV`, version 3, flags: newline test, compressed grains,
//!   markers; grains of 128 sectors, 512 entries per grain table, deflate; the grain directory offset
//!   "at the end", `u64::MAX`);
//! - sectors 1-20: the text descriptor (`createType="streamOptimized"`, one `SPARSE` extent);
//! - from sector 128 (the overhead): one compressed grain per 64 KiB of the disk that holds any
//!   non-zero byte, in disk order, each a 12-byte marker (the grain's first sector, the compressed
//!   length) followed by a zlib stream, padded to a sector. All-zero grains are omitted;
//! - then every grain table (a marker sector, 512 entries naming each grain's sector or 0), the grain
//!   directory (a marker, one entry per table), the footer (a marker and the header again, with the
//!   directory's sector) and the end-of-stream marker (a zero sector).
//!
//! Grains are compressed in a pool of worker threads (one per core) and written in order through a
//! bounded queue, so memory stays a few MiB whatever the disk's size and the output can go straight
//! to a file, an upload or an NFC lease. A grain whose samples do not compress is stored (a zlib
//! stream of stored deflate blocks: still a valid compressed grain) instead of being deflated for
//! nothing: deflating incompressible data costs about the same at any level. The input is the disk's
//! guest-visible content with its holes known ([`Source`]): a raw image (its holes found with
//! `SEEK_DATA`/`SEEK_HOLE`) or a qcow2 image whose clusters `qemu-img map` locates in the file, so
//! unallocated space is never read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use flate2::Compression;
use flate2::write::ZlibEncoder;

use crate::progress::Progress;
use crate::{Error, Result};

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Bytes per grain (64 KiB, what vSphere and qemu write).
pub const GRAIN: u64 = 65536;
const GRAIN_SECTORS: u64 = GRAIN / SECTOR;
/// Grain table entries per table.
const GTES: u64 = 512;
/// "KDMV" read as a little-endian u32.
pub const MAGIC: u32 = 0x564d_444b;
/// Flags: valid newline-detection characters (bit 0), compressed grains (bit 16), markers (bit 17).
pub const FLAGS: u32 = 1 | (1 << 16) | (1 << 17);
const GD_AT_END: u64 = u64::MAX;
const DESCRIPTOR_SECTORS: u64 = 20;
/// Sectors before the first grain.
const OVERHEAD: u64 = GRAIN_SECTORS;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;
/// Grains queued per worker between the reader, the workers and the writer.
const QUEUE_PER_WORKER: usize = 4;
/// Grains read but not yet written, at most: bounds memory (64 KiB each, twice) whatever a slow
/// worker holds up.
const IN_FLIGHT_PER_WORKER: usize = 16;
/// Bytes sampled at three places of a grain to decide whether deflating it is worth the time.
const SAMPLE: usize = 2048;

/// One stretch of the disk: `len` bytes from guest offset `start`, found at `file_offset` of the
/// source file (`None`: zeros, never read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub len: u64,
    pub file_offset: Option<u64>,
}

/// A disk's guest-visible content: its size and where its data is in one file.
pub struct Source {
    file: File,
    size: u64,
    /// In guest order, not overlapping; what they do not cover is zeros.
    extents: Vec<Extent>,
}

impl Source {
    /// A raw image: its data extents from `SEEK_DATA`/`SEEK_HOLE`.
    pub fn raw(path: &Path) -> Result<Source> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len();
        let extents = data_extents(&file, size)
            .map_err(|e| Error::io(format!("finding the data of {}", path.display()), e))?;
        Ok(Source {
            file,
            size,
            extents,
        })
    }

    /// A disk of `size` bytes whose data `extents` (guest order) are at their offsets in `path`:
    /// what `qemu-img map` reports for a qcow2 image's uncompressed clusters.
    pub fn mapped(path: &Path, size: u64, extents: Vec<Extent>) -> Result<Source> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut end = 0;
        for e in &extents {
            if e.start < end || e.start.saturating_add(e.len) > size {
                return Err(Error::Invalid(format!(
                    "{}: map extent {e:?} overlaps another or ends past the {size}-byte disk",
                    path.display()
                )));
            }
            end = e.start + e.len;
        }
        Ok(Source {
            file,
            size,
            extents,
        })
    }

    /// Guest-visible size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads grain `index` into `buf` (zero-filled first); false when it holds no data extent.
    fn read_grain(&self, index: u64, buf: &mut [u8], from: &mut usize) -> std::io::Result<bool> {
        let (lo, hi) = (index * GRAIN, ((index + 1) * GRAIN).min(self.size));
        buf.fill(0);
        let mut any = false;
        while let Some(e) = self.extents.get(*from) {
            if e.start + e.len <= lo {
                *from += 1;
                continue;
            }
            if e.start >= hi {
                break;
            }
            if let Some(offset) = e.file_offset {
                let (a, b) = (e.start.max(lo), (e.start + e.len).min(hi));
                let dst = &mut buf[(a - lo) as usize..(b - lo) as usize];
                self.file.read_exact_at(dst, offset + (a - e.start))?;
                any = true;
            }
            if e.start + e.len > hi {
                break;
            }
            *from += 1;
        }
        Ok(any)
    }
}

/// Data extents of a file of `size` bytes (holes skipped), by `SEEK_DATA`/`SEEK_HOLE`.
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<Extent>> {
    use nix::unistd::{Whence, lseek};
    let fd = std::os::fd::AsFd::as_fd(file);
    let mut extents = Vec::new();
    let mut at = 0i64;
    while (at as u64) < size {
        let data = match lseek(fd, at, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(fd, data, Whence::SeekHole)?;
        let end = (hole as u64).min(size);
        extents.push(Extent {
            start: data as u64,
            len: end - data as u64,
            file_offset: Some(data as u64),
        });
        at = hole;
    }
    Ok(extents)
}

/// The most bytes [`write`] writes for a disk of `size` bytes: every grain stored (its marker and a
/// zlib stream of stored blocks, padded to a sector), plus the tables, directory, footer and headers.
pub fn max_len(size: u64) -> u64 {
    let grains = size.div_ceil(GRAIN);
    let tables = grains.div_ceil(GTES);
    let directory = (tables * 4).div_ceil(SECTOR) * SECTOR;
    OVERHEAD * SECTOR
        + grains * (GRAIN + SECTOR)
        + tables * (SECTOR + GTES * 4)
        + SECTOR
        + directory
        + 3 * SECTOR
}

/// How grains are compressed.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Compressing threads.
    pub workers: usize,
    /// zlib level of grains worth deflating (qemu-img's is 6, zlib's default).
    pub level: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            level: 6,
        }
    }
}

/// What [`write`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes of the whole stream.
    pub bytes: u64,
    /// Grains written (the others held only zeros).
    pub grains: u64,
    /// Grains stored uncompressed (their samples did not shrink).
    pub stored: u64,
}

/// Writes `source` as a streamOptimized VMDK into `out`, adding each grain's guest bytes to
/// `progress` as it goes. Blocking: run it on a blocking thread.
pub fn write(
    source: &Source,
    out: impl Write,
    opts: Options,
    progress: &Progress,
) -> Result<Written> {
    let workers = opts.workers.max(1);
    let (job_tx, job_rx) = sync_channel::<Job>(workers * QUEUE_PER_WORKER);
    let (done_tx, done_rx) = sync_channel::<Result<Done>>(workers * QUEUE_PER_WORKER);
    // A credit per grain in flight: the reader takes one per grain, the writer returns it once the
    // grain is written.
    let in_flight = workers * IN_FLIGHT_PER_WORKER;
    let (credit_tx, credit_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = credit_tx.try_send(());
    }
    let job_rx = Arc::new(Mutex::new(job_rx));
    let level = Compression::new(opts.level.min(9));
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_grains(source, job_tx, credit_rx, progress));
        for _ in 0..workers {
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            scope.spawn(move || compress_grains(&rx, &tx, level));
        }
        // Only the workers hold the queues now: when they stop, the reader's sends fail.
        drop((job_rx, done_tx));
        let written = assemble(source.size, out, done_rx, credit_tx, progress);
        let read = reader
            .join()
            .map_err(|_| Error::Invalid("the grain reader panicked".into()))?;
        // A reader error surfaces first: the writer then only saw the stream end early.
        read.and(written)
    })
}

/// A grain to compress: its sequence number among written grains, its index on the disk, bytes.
struct Job {
    seq: u64,
    index: u64,
    data: Vec<u8>,
}

/// A compressed grain.
struct Done {
    seq: u64,
    index: u64,
    zlib: Vec<u8>,
    stored: bool,
}

/// Reads every grain that holds data, in order, and queues it; zero grains only count as progress.
fn read_grains(
    source: &Source,
    jobs: SyncSender<Job>,
    credits: Receiver<()>,
    progress: &Progress,
) -> Result<()> {
    let grains = source.size.div_ceil(GRAIN);
    let (mut seq, mut from) = (0, 0);
    for index in 0..grains {
        let mut data = vec![0u8; GRAIN as usize];
        let any = source
            .read_grain(index, &mut data, &mut from)
            .map_err(|e| Error::io(format!("reading grain {index}"), e))?;
        let guest = (source.size - index * GRAIN).min(GRAIN);
        if !any || is_zero(&data) {
            progress.add(guest);
            continue;
        }
        // Either fails only when the writer stopped: its error is the one to report.
        if credits.recv().is_err() || jobs.send(Job { seq, index, data }).is_err() {
            return Ok(());
        }
        seq += 1;
    }
    Ok(())
}

fn is_zero(data: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// A worker: compresses queued grains until the queue closes.
fn compress_grains(
    jobs: &Mutex<Receiver<Job>>,
    done: &SyncSender<Result<Done>>,
    level: Compression,
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = compress(&job.data, level).map(|(zlib, stored)| Done {
            seq: job.seq,
            index: job.index,
            zlib,
            stored,
        });
        if done.send(result).is_err() {
            return;
        }
    }
}

/// One grain as a zlib stream: deflated at `level` when samples of it shrink, else stored.
pub fn compress(grain: &[u8], level: Compression) -> Result<(Vec<u8>, bool)> {
    let io = |e| Error::io("compressing a grain", e);
    if worth_deflating(grain) {
        let mut z = ZlibEncoder::new(Vec::with_capacity(grain.len() / 2), level);
        z.write_all(grain).map_err(io)?;
        let deflated = z.finish().map_err(io)?;
        if deflated.len() < grain.len() {
            return Ok((deflated, false));
        }
    }
    let mut z = ZlibEncoder::new(Vec::with_capacity(grain.len() + 64), Compression::none());
    z.write_all(grain).map_err(io)?;
    Ok((z.finish().map_err(io)?, true))
}

/// Whether any of three samples (start, middle, end) of `grain` shrinks under fast deflate.
fn worth_deflating(grain: &[u8]) -> bool {
    if grain.len() <= 3 * SAMPLE {
        return true;
    }
    let mid = grain.len() / 2 - SAMPLE / 2;
    [0, mid, grain.len() - SAMPLE].iter().any(|&at| {
        let sample = &grain[at..at + SAMPLE];
        let mut z = ZlibEncoder::new(Vec::with_capacity(SAMPLE + 64), Compression::fast());
        z.write_all(sample).is_ok() && z.finish().is_ok_and(|out| out.len() < SAMPLE * 15 / 16)
    })
}

/// Writes header, descriptor, the grains in order as they come back, tables, directory, footer.
fn assemble(
    size: u64,
    out: impl Write,
    done: Receiver<Result<Done>>,
    credits: SyncSender<()>,
    progress: &Progress,
) -> Result<Written> {
    let mut out = Counted::new(BufWriter::with_capacity(1 << 20, out));
    let capacity = size.div_ceil(SECTOR);
    out.write(&header(capacity, GD_AT_END))?;
    out.write(&descriptor(capacity))?;
    out.pad_to(OVERHEAD * SECTOR)?;

    let grains = size.div_ceil(GRAIN);
    let tables = grains.div_ceil(GTES);
    let mut gt = vec![0u32; (tables * GTES) as usize];
    let mut pending = BTreeMap::new();
    let (mut next, mut written) = (
        0u64,
        Written {
            bytes: 0,
            grains: 0,
            stored: 0,
        },
    );
    for result in done {
        let d = result?;
        pending.insert(d.seq, d);
        while let Some(d) = pending.remove(&next) {
            let sector = out.sector()?;
            gt[d.index as usize] = u32::try_from(sector).map_err(|_| {
                Error::Invalid(format!("the VMDK grew past 2 TiB at grain {}", d.index))
            })?;
            let mut marker = Vec::with_capacity(12);
            marker.extend_from_slice(&(d.index * GRAIN_SECTORS).to_le_bytes());
            marker.extend_from_slice(&(d.zlib.len() as u32).to_le_bytes());
            out.write(&marker)?;
            out.write(&d.zlib)?;
            out.pad_sector()?;
            progress.add(GRAIN.min(size - d.index * GRAIN));
            let _ = credits.try_send(());
            written.grains += 1;
            written.stored += u64::from(d.stored);
            next += 1;
        }
    }
    if !pending.is_empty() {
        return Err(Error::Invalid(
            "grains were lost between the workers and the writer".into(),
        ));
    }

    let mut gd = Vec::with_capacity(tables as usize);
    for table in gt.chunks(GTES as usize) {
        out.write(&marker(GTES * 4 / SECTOR, MARKER_GT))?;
        gd.push(u32::try_from(out.sector()?).map_err(|_| Error::Invalid("VMDK too large".into()))?);
        out.write(&le_words(table))?;
        out.pad_sector()?;
    }
    let gd_sectors = (gd.len() as u64 * 4).div_ceil(SECTOR);
    out.write(&marker(gd_sectors, MARKER_GD))?;
    let gd_offset = out.sector()?;
    out.write(&le_words(&gd))?;
    out.pad_sector()?;
    out.write(&marker(1, MARKER_FOOTER))?;
    out.write(&header(capacity, gd_offset))?;
    out.write(&[0u8; SECTOR as usize])?; // end of stream
    written.bytes = out.finish()?;
    Ok(written)
}

/// The sparse extent header (one sector).
fn header(capacity: u64, gd_offset: u64) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&FLAGS.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptor offset
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES as u32).to_le_bytes());
    h[48..56].copy_from_slice(&0u64.to_le_bytes()); // no redundant directory
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD.to_le_bytes());
    h[72] = 0; // clean
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    h
}

/// The text descriptor, padded to its sectors.
fn descriptor(capacity: u64) -> Vec<u8> {
    let cylinders = (capacity / (16 * 63)).clamp(1, 16383);
    let cid = (capacity as u32) ^ 0x5a5a_5a5a;
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\n# Extent description\nRW {capacity} SPARSE \"disk.vmdk\"\n\n\
         # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"16\"\n\
         ddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\n\
         ddb.toolsVersion = \"2147483647\"\n"
    );
    let mut bytes = text.into_bytes();
    bytes.resize((DESCRIPTOR_SECTORS * SECTOR) as usize, 0);
    bytes
}

/// A metadata marker sector: `sectors` of metadata of `kind` follow.
fn marker(sectors: u64, kind: u32) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    m[0..8].copy_from_slice(&sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn le_words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A writer that knows its offset.
struct Counted<W: Write> {
    inner: W,
    at: u64,
}

impl<W: Write> Counted<W> {
    fn new(inner: W) -> Self {
        Counted { inner, at: 0 }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner
            .write_all(bytes)
            .map_err(|e| Error::io("writing the VMDK", e))?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, offset: u64) -> Result<()> {
        let zeros = vec![0u8; offset.saturating_sub(self.at) as usize];
        self.write(&zeros)
    }

    fn pad_sector(&mut self) -> Result<()> {
        self.pad_to(self.at.next_multiple_of(SECTOR))
    }

    /// The current sector (the offset is always sector-aligned where this is asked).
    fn sector(&self) -> Result<u64> {
        if !self.at.is_multiple_of(SECTOR) {
            return Err(Error::Invalid(format!(
                "VMDK writer misaligned at byte {}",
                self.at
            )));
        }
        Ok(self.at / SECTOR)
    }

    fn finish(mut self) -> Result<u64> {
        self.inner
            .flush()
            .map_err(|e| Error::io("writing the VMDK", e))?;
        Ok(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_sit_where_readers_look() {
        let h = header(2048, GD_AT_END);
        assert_eq!(&h[0..4], b"KDMV");
        assert_eq!(
            u32::from_le_bytes(h[8..12].try_into().unwrap()) & (1 << 16),
            1 << 16
        );
        assert_eq!(u64::from_le_bytes(h[12..20].try_into().unwrap()), 2048);
        assert_eq!(u64::from_le_bytes(h[56..64].try_into().unwrap()), u64::MAX);
        assert_eq!(u16::from_le_bytes(h[77..79].try_into().unwrap()), 1);
    }

    #[test]
    fn incompressible_grains_are_stored_and_others_deflated() {
        let mut random = vec![0u8; GRAIN as usize];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let (stored, was_stored) = compress(&random, Compression::default()).unwrap();
        assert!(was_stored);
        assert!(stored.len() > random.len() && stored.len() < random.len() + 64);
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
            .iter()
            .copied()
            .cycle()
            .take(GRAIN as usize)
            .collect();
        let (deflated, was_stored) = compress(&text, Compression::default()).unwrap();
        assert!(!was_stored);
        assert!(deflated.len() < 2048, "{}", deflated.len());
        for (z, original) in [(&stored, &random), (&deflated, &text)] {
            let mut back = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(&z[..]), &mut back)
                .unwrap();
            assert_eq!(&back, original);
        }
    }
}
