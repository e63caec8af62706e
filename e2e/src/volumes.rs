//! Pod volumes materialised as directories under the pod's directory.
//!
//! Each volume becomes `<pod dir>/volumes/<name>/` (emptyDir, Secret, ConfigMap, downward API,
//! projected), or points at an existing directory: `hostPath` at the host path itself, `nfs` at
//! `<nfs root>/<server>/<path>` (a local stand-in for the export, created when missing). The
//! container's mount namespace then binds these directories at the volume mounts' paths.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use k8s_openapi::jiff::Timestamp;

use crate::env::{PodContext, field_value, resource_value};
use crate::error::{Error, Result};
use crate::objects::Objects;

/// Default file mode of Secret, ConfigMap, downward API and projected volumes.
const DEFAULT_MODE: u32 = 0o644;
/// Default lifetime asked for a projected service-account token.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Where each volume of a pod lives on this machine.
#[derive(Debug, Default)]
pub struct Volumes {
    /// Volume name to host directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Projected service-account tokens to refresh.
    pub tokens: Vec<TokenFile>,
}

/// A projected service-account token file, refreshed before it expires.
#[derive(Clone, Debug)]
pub struct TokenFile {
    /// File holding the token.
    pub path: PathBuf,
    /// Audience asked for (the API server's when empty).
    pub audience: Option<String>,
    /// Requested lifetime.
    pub expiration_seconds: i64,
    /// File mode.
    pub mode: u32,
    /// When the current token was issued.
    pub issued: Timestamp,
    /// When the current token expires.
    pub expires: Timestamp,
}

impl TokenFile {
    /// The kubelet's rule: refresh once 80% of the lifetime has passed, or after 24 hours.
    pub fn needs_refresh(&self, now: Timestamp) -> bool {
        let lifetime = self.expires.as_second() - self.issued.as_second();
        let age = now.as_second() - self.issued.as_second();
        age * 10 >= lifetime * 8 || age >= 24 * 3600
    }
}

/// Node facts the downward API may ask for.
#[derive(Clone, Copy, Debug)]
pub struct NodeCapacity {
    /// CPU cores.
    pub cpu_cores: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// Materialises every volume of `pod` under `pod_dir`.
pub async fn materialise(
    objects: &Objects,
    pod: &Pod,
    ctx: &PodContext,
    pod_dir: &Path,
    nfs_root: &Path,
    node: NodeCapacity,
) -> Result<Volumes> {
    let mut out = Volumes::default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for volume in &volumes {
        let dir = materialise_one(
            objects,
            pod,
            ctx,
            pod_dir,
            nfs_root,
            node,
            volume,
            &mut out.tokens,
        )
        .await
        .map_err(|e| match e {
            Error::Volume { .. } => e,
            other => Error::Volume {
                volume: volume.name.clone(),
                message: other.to_string(),
            },
        })?;
        out.dirs.insert(volume.name.clone(), dir);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn materialise_one(
    objects: &Objects,
    pod: &Pod,
    ctx: &PodContext,
    pod_dir: &Path,
    nfs_root: &Path,
    node: NodeCapacity,
    volume: &Volume,
    tokens: &mut Vec<TokenFile>,
) -> Result<PathBuf> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let dir = pod_dir.join("volumes").join(&volume.name);
    let fail = |message: String| Error::Volume {
        volume: volume.name.clone(),
        message,
    };

    if volume.empty_dir.is_some() {
        std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        return Ok(dir);
    }
    if let Some(nfs) = &volume.nfs {
        let local = nfs_dir(nfs_root, &nfs.server, &nfs.path)?;
        std::fs::create_dir_all(&local).map_err(Error::io("create", &local))?;
        return Ok(local);
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        match host.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => {
                std::fs::create_dir_all(&path).map_err(Error::io("create", &path))?
            }
            "FileOrCreate" => {
                if !path.exists() {
                    std::fs::write(&path, b"").map_err(Error::io("create", &path))?;
                }
            }
            "" => {}
            _ if path.exists() => {}
            kind => {
                return Err(fail(format!(
                    "hostPath {} ({kind}) does not exist",
                    host.path
                )));
            }
        }
        return Ok(path);
    }

    // Everything else is a set of files written afresh.
    let mut files = Files::default();
    if let Some(secret) = &volume.secret {
        let name = secret.secret_name.clone().unwrap_or_default();
        let mode = mode(secret.default_mode);
        match objects.secret(ns, &name).await? {
            Some(s) => {
                let data = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                files.add_keys(
                    &data,
                    secret.items.as_deref(),
                    mode,
                    &format!("secret {name:?}"),
                )?;
            }
            None if secret.optional.unwrap_or(false) => {}
            None => return Err(fail(format!("secret {name:?} not found"))),
        }
    } else if let Some(cm) = &volume.config_map {
        let mode = mode(cm.default_mode);
        match objects.config_map(ns, &cm.name).await? {
            Some(c) => files.add_keys(
                &config_map_data(c),
                cm.items.as_deref(),
                mode,
                &format!("configmap {:?}", cm.name),
            )?,
            None if cm.optional.unwrap_or(false) => {}
            None => return Err(fail(format!("configmap {:?} not found", cm.name))),
        }
    } else if let Some(downward) = &volume.downward_api {
        let mode = mode(downward.default_mode);
        files.add_downward(
            pod,
            ctx,
            node,
            downward.items.as_deref().unwrap_or_default(),
            mode,
        )?;
    } else if let Some(projected) = &volume.projected {
        let mode = mode(projected.default_mode);
        for source in projected.sources.iter().flatten() {
            if let Some(secret) = &source.secret {
                match objects.secret(ns, &secret.name).await? {
                    Some(s) => {
                        let data = s
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .collect();
                        files.add_keys(
                            &data,
                            secret.items.as_deref(),
                            mode,
                            &format!("secret {:?}", secret.name),
                        )?;
                    }
                    None if secret.optional.unwrap_or(false) => {}
                    None => return Err(fail(format!("secret {:?} not found", secret.name))),
                }
            } else if let Some(cm) = &source.config_map {
                match objects.config_map(ns, &cm.name).await? {
                    Some(c) => files.add_keys(
                        &config_map_data(c),
                        cm.items.as_deref(),
                        mode,
                        &format!("configmap {:?}", cm.name),
                    )?,
                    None if cm.optional.unwrap_or(false) => {}
                    None => return Err(fail(format!("configmap {:?} not found", cm.name))),
                }
            } else if let Some(downward) = &source.downward_api {
                files.add_downward(
                    pod,
                    ctx,
                    node,
                    downward.items.as_deref().unwrap_or_default(),
                    mode,
                )?;
            } else if let Some(sat) = &source.service_account_token {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let seconds = sat.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
                let token = objects
                    .token(
                        ns,
                        &sa,
                        sat.audience.clone().into_iter().collect(),
                        seconds,
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        pod.metadata.uid.as_deref().unwrap_or_default(),
                    )
                    .await?;
                let rel = safe_relative(&sat.path)?;
                files.add(rel.clone(), token.token.into_bytes(), mode);
                tokens.push(TokenFile {
                    path: dir.join(rel),
                    audience: sat.audience.clone(),
                    expiration_seconds: seconds,
                    mode,
                    issued: Timestamp::now(),
                    expires: token.expires,
                });
            } else {
                return Err(Error::Unsupported(
                    "projected source other than secret, configMap, downwardAPI, serviceAccountToken".into(),
                ));
            }
        }
    } else {
        return Err(fail(
            "unsupported volume type on the process node (supported: emptyDir, secret, configMap, \
             downwardAPI, projected, nfs, hostPath)"
                .into(),
        ));
    }
    files.write(&dir)?;
    Ok(dir)
}

/// The local directory standing for an NFS export: `<root>/<server>/<path>`.
pub fn nfs_dir(root: &Path, server: &str, path: &str) -> Result<PathBuf> {
    let server = safe_relative(server)?;
    let path = safe_relative(path.trim_start_matches('/'))?;
    Ok(root.join(server).join(path))
}

fn mode(m: Option<i32>) -> u32 {
    m.map_or(DEFAULT_MODE, |m| (m as u32) & 0o7777)
}

fn config_map_data(cm: k8s_openapi::api::core::v1::ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    data
}

/// A relative path without `..`, as volume item paths must be.
fn safe_relative(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(Error::Unsupported(format!(
            "volume path {p:?} must be relative without '..'"
        )))
    }
}

/// Files to write into a volume directory.
#[derive(Default)]
struct Files {
    entries: Vec<(PathBuf, Vec<u8>, u32)>,
}

impl Files {
    fn add(&mut self, path: PathBuf, data: Vec<u8>, mode: u32) {
        self.entries.retain(|(p, _, _)| *p != path);
        self.entries.push((path, data, mode));
    }

    /// All keys, or only the listed items (each of which must exist).
    fn add_keys(
        &mut self,
        data: &BTreeMap<String, Vec<u8>>,
        items: Option<&[KeyToPath]>,
        mode: u32,
        what: &str,
    ) -> Result<()> {
        match items {
            None => {
                for (k, v) in data {
                    self.add(safe_relative(k)?, v.clone(), mode);
                }
            }
            Some(items) => {
                for item in items {
                    let value = data.get(&item.key).ok_or_else(|| {
                        Error::Unsupported(format!("{what} has no key {:?}", item.key))
                    })?;
                    let m = item.mode.map_or(mode, |m| (m as u32) & 0o7777);
                    self.add(safe_relative(&item.path)?, value.clone(), m);
                }
            }
        }
        Ok(())
    }

    fn add_downward(
        &mut self,
        pod: &Pod,
        ctx: &PodContext,
        node: NodeCapacity,
        items: &[DownwardAPIVolumeFile],
        mode: u32,
    ) -> Result<()> {
        for item in items {
            let value = if let Some(f) = &item.field_ref {
                field_value(pod, ctx, f)?
            } else if let Some(r) = &item.resource_field_ref {
                resource_value(pod, None, r, node.cpu_cores, node.memory_bytes)?
            } else {
                String::new()
            };
            let m = item.mode.map_or(mode, |m| (m as u32) & 0o7777);
            self.add(safe_relative(&item.path)?, value.into_bytes(), m);
        }
        Ok(())
    }

    /// Replaces `dir` with exactly these files.
    fn write(&self, dir: &Path) -> Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(Error::io("remove", dir))?;
        }
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        for (rel, data, mode) in &self.entries {
            write_file(&dir.join(rel), data, *mode)?;
        }
        Ok(())
    }
}

/// Writes a file atomically (temporary file + rename in the same directory) with `mode`.
pub fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, data).map_err(Error::io("write", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfs_dir_is_named_after_server_and_path() {
        let root = Path::new("/w/nfs");
        assert_eq!(
            nfs_dir(root, "127.0.0.1", "/exports/vm").unwrap(),
            PathBuf::from("/w/nfs/127.0.0.1/exports/vm")
        );
        assert!(nfs_dir(root, "srv", "/../../etc").is_err());
    }

    #[test]
    fn files_honour_items_modes_and_replace_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("v");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(vol.join("stale"), "x").unwrap();
        let data: BTreeMap<String, Vec<u8>> = [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into();
        let mut files = Files::default();
        files
            .add_keys(
                &data,
                Some(&[KeyToPath {
                    key: "b".into(),
                    path: "sub/bee".into(),
                    mode: Some(0o400),
                }]),
                0o644,
                "secret",
            )
            .unwrap();
        files.write(&vol).unwrap();
        assert!(!vol.join("stale").exists());
        assert!(!vol.join("a").exists());
        assert_eq!(std::fs::read(vol.join("sub/bee")).unwrap(), b"2");
        let m = std::fs::metadata(vol.join("sub/bee"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o400);

        let mut missing = Files::default();
        let err = missing
            .add_keys(
                &data,
                Some(&[KeyToPath {
                    key: "zz".into(),
                    path: "zz".into(),
                    mode: None,
                }]),
                0o644,
                "secret \"s\"",
            )
            .unwrap_err();
        assert!(err.to_string().contains("no key \"zz\""), "{err}");
    }

    #[test]
    fn token_refresh_at_eighty_percent() {
        let issued = Timestamp::from_second(1_000_000).unwrap();
        let t = TokenFile {
            path: "/t".into(),
            audience: None,
            expiration_seconds: 1000,
            mode: 0o644,
            issued,
            expires: Timestamp::from_second(1_001_000).unwrap(),
        };
        assert!(!t.needs_refresh(Timestamp::from_second(1_000_799).unwrap()));
        assert!(t.needs_refresh(Timestamp::from_second(1_000_800).unwrap()));
    }
}
