//! Real servers on loopback for the staging tests: each test starts its own s3s-fs or nginx on a
//! free port in a temporary directory, so tests are self-contained and run in parallel. A missing
//! server binary fails the test with the command that installs it (`make test` installs them).

#![allow(dead_code)] // each test file uses a part of this module

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crd::{StorageSpec, StorageType};
use runner::credentials::Credentials;
use sha2::{Digest, Sha256};

/// `${VRG_CACHE:-$HOME/.cache/virtrigaud}`, where e2e/scripts/install-deps.sh puts server binaries.
pub fn vrg_cache() -> PathBuf {
    std::env::var_os("VRG_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/virtrigaud")
        })
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} is not listening on 127.0.0.1:{port} after 20s");
}

/// Writes `size` pseudo-random (incompressible) bytes to `path`; the same seed gives the same file.
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// Hex SHA-256 of a file, computed here independently of the code under test.
pub fn sha256_of(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// Overwrites one byte in the middle of `path` (simulating corruption in storage).
pub fn flip_a_byte(path: &Path) {
    let mut data = std::fs::read(path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(path, data).unwrap();
}

/// A spec of `type_` with the given fields.
pub fn spec(type_: StorageType, endpoint: Option<&str>, bucket: Option<&str>) -> StorageSpec {
    StorageSpec {
        type_,
        bucket: bucket.map(str::to_string),
        endpoint: endpoint.map(str::to_string),
        region: None,
        path: None,
        credentials_secret_ref: None,
    }
}

/// An s3s-fs server (SigV4 enforced) on a free loopback port with one bucket.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub root: tempfile::TempDir,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bucket = "vm-migrations".to_string();
        std::fs::create_dir_all(root.path().join("data").join(&bucket)).unwrap();
        let access_key = "AKIAVIRTRIGAUDTEST".to_string();
        let secret_key = "s3cr3t-virtrigaud-test-key".to_string();
        let port = free_port();
        let child = spawn_s3s(root.path(), port, &access_key, &secret_key);
        S3Server {
            child,
            port,
            root,
            bucket,
            access_key,
            secret_key,
        }
    }

    /// Stops the server (SIGKILL) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_s3s(
            self.root.path(),
            self.port,
            &self.access_key,
            &self.secret_key,
        );
    }

    /// Stops the server (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Where s3s-fs keeps its files: `<data>/<bucket>/<key>` and `<data>/.upload_id-*` parts.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn object_path(&self, key: &str) -> PathBuf {
        self.data_dir().join(&self.bucket).join(key)
    }

    /// Parts of in-progress multipart uploads on the server.
    pub fn stored_parts(&self) -> usize {
        std::fs::read_dir(self.data_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        name.starts_with(".upload_id-") && name.contains(".part-")
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spec as a user writes it for this server (MinIO style: endpoint with scheme in the
    /// Secret).
    pub fn spec(&self) -> StorageSpec {
        spec(
            StorageType::S3,
            Some(&format!("127.0.0.1:{}", self.port)),
            Some(&self.bucket),
        )
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::default()
            .with("storage", "accessKey", &self.access_key)
            .with("storage", "secretKey", &self.secret_key)
            .with("storage", "endpoint", self.endpoint())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts s3s-fs on `port` with its data in `<root>/data` and its log in `<root>/s3s-fs.log`.
fn spawn_s3s(root: &Path, port: u16, access_key: &str, secret_key: &str) -> Child {
    let bin = vrg_cache().join("bin/s3s-fs");
    assert!(
        bin.is_file(),
        "s3s-fs not found at {}: install it with `cargo install s3s-fs@0.14.1 --features binary \
         --root {}` (or run e2e/scripts/install-deps.sh; `make test` does)",
        bin.display(),
        vrg_cache().display()
    );
    let log = root.join("s3s-fs.log");
    let mut child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root.join("data"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .expect("starting s3s-fs");
    wait_for_port(port, &mut child, "s3s-fs", &log);
    child
}

/// A private CA and a server certificate for 127.0.0.1 signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "virtrigaud test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        TestPki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// nginx serving WebDAV (PUT/DELETE, create_full_put_path) on http and https, accepting only
/// `Authorization: Bearer <token>` or basic auth `user:password`. `/strict/` lacks
/// create_full_put_path, like plain WebDAV servers: a PUT into a missing collection answers 409.
pub struct Nginx {
    child: Child,
    pub http_port: u16,
    pub https_port: u16,
    pub dir: tempfile::TempDir,
    pub token: String,
    pub username: String,
    pub password: String,
    pub pki: TestPki,
}

impl Nginx {
    pub fn start() -> Self {
        let version = Command::new("nginx").arg("-V").output();
        let has_dav = match &version {
            Ok(out) => String::from_utf8_lossy(&out.stderr).contains("http_dav_module"),
            Err(_) => false,
        };
        assert!(
            has_dav,
            "nginx with the WebDAV module is required: install it with `apt-get install -y nginx-full` \
             (or run e2e/scripts/install-deps.sh; `make test` does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pki = TestPki::new();
        std::fs::write(d.join("server.pem"), &pki.cert_pem).unwrap();
        std::fs::write(d.join("server-key.pem"), &pki.key_pem).unwrap();
        std::fs::create_dir_all(d.join("www/strict")).unwrap();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let token = "vrg-test-token-0123456789".to_string();
        let (username, password) = ("vrg".to_string(), "p4ss-word".to_string());
        let basic = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        };
        let (http_port, https_port) = (free_port(), free_port());
        let p = d.display();
        let conf = format!(
            r#"
daemon off;
master_process off;
user root;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 64; }}
http {{
    default_type application/octet-stream;
    access_log {p}/access.log;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    client_max_body_size 0;
    sendfile on;
    map $http_authorization $vrg_ok {{
        default 0;
        "Bearer {token}" 1;
        "Basic {basic}" 1;
    }}
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {p}/server.pem;
        ssl_certificate_key {p}/server-key.pem;
        root {p}/www;
        # a WebDAV server without create_full_put_path: RFC 4918 (Apache mod_dav...) answers 409
        # to a PUT into a missing collection; nginx says 500, mapped here to the standard answer
        location /strict/ {{
            if ($vrg_ok = 0) {{ return 401; }}
            dav_methods PUT DELETE MKCOL;
            dav_access user:rw group:r all:r;
            error_page 500 = @conflict;
        }}
        location @conflict {{ return 409; }}
        location / {{
            if ($vrg_ok = 0) {{ return 401; }}
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"#
        );
        std::fs::write(d.join("nginx.conf"), conf).unwrap();
        let log = d.join("error.log");
        let mut child = Command::new("nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
            .spawn()
            .expect("starting nginx");
        wait_for_port(http_port, &mut child, "nginx", &d.join("stderr.log"));
        wait_for_port(https_port, &mut child, "nginx", &d.join("stderr.log"));
        Nginx {
            child,
            http_port,
            https_port,
            dir,
            token,
            username,
            password,
            pki,
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/vm-exports", self.http_port)
    }

    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}/vm-exports", self.https_port)
    }

    /// The file nginx stores `key` (under `/vm-exports`) in.
    pub fn file(&self, key: &str) -> PathBuf {
        self.dir.path().join("www/vm-exports").join(key)
    }

    pub fn token_credentials(&self) -> Credentials {
        Credentials::default().with("storage", "token", &self.token)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw disk of 48 MiB holding 24 MiB of random data in three extents (holes between and after):
/// its streamOptimized VMDK is more than one 8 MiB S3 part.
pub fn sparse_raw_disk(path: &Path, seed: u64) {
    const MIB: u64 = 1 << 20;
    let chunk = path.with_extension("chunk");
    let mut out = std::fs::File::create(path).unwrap();
    out.set_len(48 * MIB).unwrap();
    for (i, at) in [0u64, 17, 33].into_iter().enumerate() {
        random_file(&chunk, 8 * MIB, seed + i as u64);
        let data = std::fs::read(&chunk).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&out, &data, at * MIB).unwrap();
    }
    std::fs::remove_file(&chunk).unwrap();
    out.flush().unwrap();
}

/// The `sparse_raw_disk` at `src` converted to streamOptimized VMDK while `stage` uploads it
/// ([`Stage::upload_body`], no converted copy on disk), fetched back into `dir`: checks the staged
/// object's size and SHA-256 against the fetched bytes, that the guest counter saw the whole disk,
/// that the fetched VMDK is `qemu-img compare`-identical to the source, and that nothing but the
/// source and the fetched image was written to `dir`. The staged object.
pub async fn streamed_vmdk_round_trip(
    stage: &dyn runner::storage::Stage,
    key: &str,
    dir: &Path,
) -> runner::storage::StagedObject {
    let src = dir.join("vda.raw");
    sparse_raw_disk(&src, 40);
    let image = runner::provider::LocalImage {
        path: src.clone(),
        format: crd::DiskFormat::Raw,
    };
    let guest = runner::progress::Progress::new(48 << 20);
    let body = runner::disk::vmdk_body(&image, &guest)
        .await
        .unwrap()
        .expect("a raw image streams through the runner's VMDK writer");
    let staged = stage
        .upload_body(key, &body, &runner::progress::Progress::default())
        .await
        .unwrap();
    assert_eq!(guest.done(), 48 << 20, "every guest byte was converted");
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["vda.raw"], "the conversion left no copy in scratch");

    let fetched = dir.join("fetched.vmdk");
    stage
        .download(&staged, &fetched, &runner::progress::Progress::default())
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), staged.size);
    assert_eq!(sha256_of(&fetched), staged.sha256);
    assert!(
        staged.size > 8 << 20 && staged.size < 26 << 20,
        "{} bytes",
        staged.size
    );
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "vmdk"])
        .arg(&src)
        .arg(&fetched)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&compare.stdout),
        String::from_utf8_lossy(&compare.stderr)
    );
    std::fs::remove_file(&fetched).unwrap();
    staged
}
