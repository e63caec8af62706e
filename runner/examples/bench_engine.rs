//! The runner's disk engine on one image, for `bench/run.sh`, staging a disk as the pipeline does:
//! the image as it is when the formats match, a streamOptimized VMDK written by the runner's writer
//! as it is uploaded (no scratch copy), else converted into scratch ([`runner::disk::convert`]) and
//! uploaded; then fetched (download, re-hashing in the same pass) and verified (the download's
//! SHA-256 against the one recorded at upload). Prints one JSON line with the time of each step,
//! the staged size, the scratch bytes each side wrote and this process's peak RSS.
//! `--convert-only` times the conversion into a file alone.
//!
//! ```text
//! bench_engine --src disk.qcow2 --src-format qcow2 --format vmdk --storage s3 \
//!   --endpoint 127.0.0.1:9000 --bucket bench --credentials creds/ --work /tmp/w --key ns/m/vda.vmdk
//! ```

use runner::endpoint::Guard;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use crd::{DiskFormat, StorageSpec, StorageType};
use runner::credentials::Credentials;
use runner::progress::Progress;
use runner::provider::LocalImage;
use runner::storage::{self, StageOptions};

#[derive(Parser)]
struct Args {
    /// Source image.
    #[arg(long)]
    src: PathBuf,
    #[arg(long)]
    src_format: DiskFormat,
    /// Staged (target) format.
    #[arg(long)]
    format: DiskFormat,
    /// `s3` or `http`.
    #[arg(long)]
    storage: String,
    /// The spec's endpoint (s3: host:port, with the scheme in the credentials' `endpoint`; http: base URL).
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    bucket: Option<String>,
    /// Directory with the `storage.*` credential files.
    #[arg(long)]
    credentials: PathBuf,
    /// Scratch directory for the converted and fetched images.
    #[arg(long)]
    work: PathBuf,
    /// Object key.
    #[arg(long)]
    key: String,
    /// Only convert into `--work` (no staging): the conversion's time and output size.
    #[arg(long)]
    convert_only: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let type_ = match args.storage.as_str() {
        "s3" => StorageType::S3,
        "http" => StorageType::Http,
        other => return Err(format!("--storage {other}: expected s3 or http").into()),
    };
    let spec = StorageSpec {
        type_,
        bucket: args.bucket.clone(),
        endpoint: Some(args.endpoint.clone()),
        region: None,
        path: None,
        credentials_secret_ref: None,
    };
    let credentials = Credentials::load(&args.credentials)?;
    let stage = storage::open(
        &spec,
        &credentials,
        &StageOptions {
            guard: Guard::new(true),
            ..StageOptions::default()
        },
    )
    .await?;
    std::fs::create_dir_all(&args.work)?;
    let converted = args.work.join(format!("converted.{}", args.format));
    let fetched = args.work.join(format!("fetched.{}", args.format));
    for stale in [&converted, &fetched] {
        let _ = std::fs::remove_file(stale);
    }
    let source = LocalImage {
        path: args.src.clone(),
        format: args.src_format,
    };

    let start = Instant::now();
    if args.convert_only {
        runner::disk::convert(&source, args.format, &converted, &Progress::default()).await?;
        let took = start.elapsed();
        let bytes = std::fs::metadata(&converted)?.len();
        std::fs::remove_file(&converted)?;
        println!(
            "{{\"convert_s\":{:.3},\"bytes\":{bytes},\"peak_rss_kib\":{}}}",
            took.as_secs_f64(),
            peak_rss_kib(Path::new("/proc/self/status")).unwrap_or(0)
        );
        return Ok(());
    }
    // as the pipeline stages a disk: the export as it is when the formats match, our VMDK
    // writer streamed into the upload, else a converted copy in scratch
    let max_len = runner::vmdk::max_len(
        runner::disk::inspect(&source.path, source.format)
            .await?
            .virtual_size,
    );
    let streamed = match args.format {
        f if f == args.src_format => None,
        DiskFormat::Vmdk if stage.streams(max_len) => {
            runner::disk::vmdk_body(&source, &Progress::default()).await?
        }
        _ => None,
    };
    let (staged, converted_at, scratch_upload) = if let Some(body) = &streamed {
        (
            stage
                .upload_body(&args.key, body, &Progress::default())
                .await?,
            start.elapsed(),
            0,
        )
    } else {
        let image = if args.format == args.src_format {
            source.clone()
        } else {
            runner::disk::convert(&source, args.format, &converted, &Progress::default()).await?
        };
        let converted_at = start.elapsed();
        let scratch = if image.path == converted {
            std::fs::metadata(&converted)?.len()
        } else {
            0
        };
        let staged = stage
            .upload(&args.key, &image.path, &Progress::default())
            .await?;
        (staged, converted_at, scratch)
    };
    let uploaded_at = start.elapsed();

    // download re-hashes while writing and refuses a mismatch with the recorded SHA-256
    stage
        .download(&staged, &fetched, &Progress::default())
        .await?;
    let total = start.elapsed();
    let scratch_download = std::fs::metadata(&fetched)?.len();

    stage.delete(&args.key).await?;
    for done in [&converted, &fetched] {
        let _ = std::fs::remove_file(done);
    }
    println!(
        "{{\"convert_s\":{:.3},\"upload_s\":{:.3},\"download_s\":{:.3},\"total_s\":{:.3},\
         \"streamed\":{},\"staged_bytes\":{},\"sha256\":\"{}\",\"scratch_upload_bytes\":{scratch_upload},\
         \"scratch_download_bytes\":{scratch_download},\"peak_rss_kib\":{}}}",
        converted_at.as_secs_f64(),
        (uploaded_at - converted_at).as_secs_f64(),
        (total - uploaded_at).as_secs_f64(),
        total.as_secs_f64(),
        streamed.is_some(),
        staged.size,
        staged.sha256,
        peak_rss_kib(Path::new("/proc/self/status")).unwrap_or(0)
    );
    Ok(())
}

/// `VmHWM` (peak resident set) of this process, without qemu-img's.
fn peak_rss_kib(status: &Path) -> Option<u64> {
    std::fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
