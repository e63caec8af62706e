//! The runner's disk engine on one image, for `bench/run.sh`: convert (qemu-img through
//! [`runner::disk`]), stage (upload through a [`runner::storage::Stage`], hashing in the same pass),
//! fetch (download, re-hashing in the same pass) and verify (the download's SHA-256 against the
//! one recorded at upload). Prints one JSON line with the time of each step, the staged size and
//! this process's peak RSS.
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

    let start = Instant::now();
    let source = LocalImage {
        path: args.src.clone(),
        format: args.src_format,
    };
    runner::disk::convert(&source, args.format, &converted, &Progress::default()).await?;
    let converted_at = start.elapsed();

    let staged = stage
        .upload(&args.key, &converted, &Progress::default())
        .await?;
    let uploaded_at = start.elapsed();

    // download re-hashes while writing and refuses a mismatch with the recorded SHA-256
    stage
        .download(&staged, &fetched, &Progress::default())
        .await?;
    let total = start.elapsed();

    stage.delete(&args.key).await?;
    for done in [&converted, &fetched] {
        std::fs::remove_file(done)?;
    }
    println!(
        "{{\"convert_s\":{:.3},\"upload_s\":{:.3},\"download_s\":{:.3},\"total_s\":{:.3},\
         \"staged_bytes\":{},\"sha256\":\"{}\",\"peak_rss_kib\":{}}}",
        converted_at.as_secs_f64(),
        (uploaded_at - converted_at).as_secs_f64(),
        (total - uploaded_at).as_secs_f64(),
        total.as_secs_f64(),
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
