//! TLS: a rustls server configuration (TLS 1.2 and 1.3) whose certificate is re-read from its files when
//! they change, so a rotated certificate (cert-manager, a Secret volume update, the self-signed rotation)
//! is served from the next connection on, without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::Error;

/// File name of the serving certificate chain in the certificate directory (cert-manager's name).
pub const CERT_FILE: &str = "tls.crt";
/// File name of the serving key in the certificate directory.
pub const KEY_FILE: &str = "tls.key";
/// File name of the CA certificate in the certificate directory (written in self-signed mode).
pub const CA_FILE: &str = "ca.crt";

/// What identifies one version of a file: a rewrite or a replacement (Secret volumes swap a symlink)
/// changes at least one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

#[derive(Debug)]
struct Loaded {
    stamps: (FileStamp, FileStamp),
    /// The PEM bytes the key was built from.
    pem: (Vec<u8>, Vec<u8>),
    key: Arc<CertifiedKey>,
    /// When the files were last read.
    read_at: Instant,
}

/// Even with unchanged stamps the files are re-read this often: an in-place rewrite of the same size
/// within one file-timestamp tick would otherwise go unseen.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(60);

/// A certificate resolver that serves `tls.crt`/`tls.key` from a directory, re-reading them when their
/// modification time (or size, or inode) changes, and at least every [`RECHECK_INTERVAL`]. A
/// half-written or broken pair is not served: the previous one stays until the files are valid again.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl ReloadingCert {
    /// Loads the pair from `dir`; fails when it is missing or invalid, so a misconfigured webhook stops at
    /// start rather than at the first handshake.
    pub fn new(dir: &Path) -> Result<Self, Error> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        let loaded = load(&cert_path, &key_path)?;
        Ok(ReloadingCert {
            cert_path,
            key_path,
            loaded: Mutex::new(loaded),
        })
    }

    /// The certificate to serve now, re-read first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let stamps = (stamp(&self.cert_path), stamp(&self.key_path));
        let changed = match stamps {
            (Ok(cert), Ok(key)) => (cert, key) != loaded.stamps,
            // Missing for a moment (a rename in progress): keep serving what we have.
            _ => false,
        };
        if changed || loaded.read_at.elapsed() >= RECHECK_INTERVAL {
            match load(&self.cert_path, &self.key_path) {
                Ok(fresh) if fresh.pem == loaded.pem => {
                    loaded.stamps = fresh.stamps;
                    loaded.read_at = fresh.read_at;
                }
                Ok(fresh) => {
                    tracing::info!(path = %self.cert_path.display(), "serving certificate reloaded");
                    *loaded = fresh;
                }
                Err(error) => {
                    tracing::warn!(%error, "certificate files cannot be loaded; serving the previous certificate");
                    loaded.read_at = Instant::now();
                }
            }
        }
        loaded.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::file(path, e))
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Loaded, Error> {
    // Stamps are taken before reading: a change during the read is seen at the next handshake.
    let stamps = (
        stamp(cert_path).map_err(|e| Error::file(cert_path, e))?,
        stamp(key_path).map_err(|e| Error::file(key_path, e))?,
    );
    let pem_error = |path: &Path, reason: String| Error::Pem {
        path: path.to_owned(),
        reason,
    };
    let cert_pem = read(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "no certificate in the file".into()));
    }
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(key_path, format!("no usable private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match()?;
    Ok(Loaded {
        stamps,
        pem: (cert_pem, key_pem),
        key: Arc::new(certified),
        read_at: Instant::now(),
    })
}

/// The server configuration: TLS 1.2 and 1.3 only (rustls has nothing older), ring as the crypto
/// provider, HTTP/2 and HTTP/1.1 offered by ALPN, the certificate from `resolver`.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, Error> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        // Written aside and renamed into place, as Secret volumes and cert writers do.
        for (file, text) in [
            (CERT_FILE, certified.cert.pem()),
            (KEY_FILE, certified.signing_key.serialize_pem()),
        ] {
            std::fs::write(dir.join("new"), text).unwrap();
            std::fs::rename(dir.join("new"), dir.join(file)).unwrap();
        }
        certified.cert.der().to_vec()
    }

    #[test]
    fn reloads_when_the_files_change_and_keeps_the_old_pair_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "one.test");
        let resolver = ReloadingCert::new(dir.path()).unwrap();
        assert_eq!(resolver.current().cert[0].as_ref(), first.as_slice());

        let second = write_pair(dir.path(), "two.test");
        assert_eq!(resolver.current().cert[0].as_ref(), second.as_slice());

        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        assert_eq!(
            resolver.current().cert[0].as_ref(),
            second.as_slice(),
            "a broken pair is not served"
        );
    }

    #[test]
    fn refuses_to_start_without_a_valid_pair() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ReloadingCert::new(dir.path()),
            Err(Error::File { .. })
        ));
        std::fs::write(dir.path().join(CERT_FILE), "garbage").unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        assert!(matches!(
            ReloadingCert::new(dir.path()),
            Err(Error::Pem { .. })
        ));
        // A certificate with somebody else's key.
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).unwrap();
        std::fs::write(dir.path().join(CERT_FILE), a.cert.pem()).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b.signing_key.serialize_pem()).unwrap();
        assert!(matches!(ReloadingCert::new(dir.path()), Err(Error::Tls(_))));
    }
}
