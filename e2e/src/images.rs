//! Image references mapped to locally built binaries.
//!
//! There is no container runtime: an image stands for one executable on this machine. A mapping
//! `REPOSITORY=PATH` matches an image whose repository (the reference without tag and digest) is
//! REPOSITORY, or ends with `/REPOSITORY` (so the registry host does not matter), or, when
//! REPOSITORY ends with `/` or `*`, starts with it. The longest matching pattern wins. An image no
//! pattern matches stands for the executable named like the repository's last component in one of
//! the `--bin-dir` directories (`virtrigaud/runner:dev` -> `<bin dir>/runner`), so a cargo target
//! directory serves every image of the workspace's binaries.
//!
//! A container's `command` replaces the image entrypoint as in Kubernetes. Its first word is looked
//! up on this machine: an existing absolute path is used as is; otherwise its basename is looked up
//! in the `--bin-dir` directories, then compared with the image's binary, and a bare name is finally
//! left to the `PATH` search of `execvp`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Maps image repositories to local executables.
#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    entries: Vec<(String, PathBuf)>,
    bin_dirs: Vec<PathBuf>,
}

/// The program and arguments a container runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// Path (or bare name for a `PATH` search) of the executable.
    pub program: PathBuf,
    /// `argv[0]` as the pod spec names it.
    pub arg0: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
}

impl ImageMap {
    /// Builds a map from `REPOSITORY=PATH` pairs and the directories searched by basename.
    pub fn new(entries: Vec<(String, PathBuf)>, bin_dirs: Vec<PathBuf>) -> Self {
        ImageMap { entries, bin_dirs }
    }

    /// Parses one `REPOSITORY=PATH` flag value.
    pub fn parse_entry(flag: &str) -> Result<(String, PathBuf)> {
        let (repo, path) = flag
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("--image {flag:?}: expected REPOSITORY=PATH")))?;
        if repo.is_empty() || path.is_empty() {
            return Err(Error::Config(format!(
                "--image {flag:?}: expected REPOSITORY=PATH"
            )));
        }
        Ok((repo.to_string(), PathBuf::from(path)))
    }

    /// Reads a YAML file holding a map `repository: /path/to/binary`.
    pub fn read_file(path: &Path) -> Result<Vec<(String, PathBuf)>> {
        let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
        let map: BTreeMap<String, PathBuf> = serde_yaml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(map.into_iter().collect())
    }

    /// Adds mappings (later ones win over earlier ones with the same pattern).
    pub fn extend(&mut self, entries: impl IntoIterator<Item = (String, PathBuf)>) {
        for (repo, path) in entries {
            self.entries.retain(|(r, _)| *r != repo);
            self.entries.push((repo, path));
        }
    }

    /// The repository part of an image reference: without `@digest` and without `:tag`.
    pub fn repository(image: &str) -> &str {
        let image = image.split_once('@').map_or(image, |(repo, _)| repo);
        let last_slash = image.rfind('/').map_or(0, |i| i + 1);
        match image[last_slash..].rfind(':') {
            Some(colon) => &image[..last_slash + colon],
            None => image,
        }
    }

    /// The executable an image stands for.
    pub fn resolve_image(&self, image: &str) -> Result<PathBuf> {
        let repo = Self::repository(image);
        let mapped = self
            .entries
            .iter()
            .filter(|(pattern, _)| pattern_matches(pattern, repo))
            .max_by_key(|(pattern, _)| pattern.len())
            .map(|(_, path)| path.clone());
        let by_name = || {
            let name = repo.rsplit('/').next().unwrap_or(repo);
            self.bin_dirs
                .iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        };
        mapped
            .or_else(by_name)
            .ok_or_else(|| Error::ImageNotMapped {
                image: image.to_string(),
                repo: repo.to_string(),
            })
    }

    /// What a container runs: Kubernetes' command/args semantics applied to the image's binary.
    pub fn invocation(
        &self,
        image_binary: &Path,
        command: &[String],
        args: &[String],
    ) -> Invocation {
        match command.split_first() {
            Some((first, rest)) => Invocation {
                program: self.resolve_program(first, image_binary),
                arg0: first.clone(),
                args: rest.iter().chain(args).cloned().collect(),
            },
            None => Invocation {
                program: image_binary.to_path_buf(),
                arg0: image_binary.display().to_string(),
                args: args.to_vec(),
            },
        }
    }

    /// Finds the local executable for the first word of a container command.
    pub fn resolve_program(&self, program: &str, image_binary: &Path) -> PathBuf {
        let path = Path::new(program);
        if path.is_absolute() && path.is_file() {
            return path.to_path_buf();
        }
        let Some(base) = path.file_name() else {
            return path.to_path_buf();
        };
        for dir in &self.bin_dirs {
            let candidate = dir.join(base);
            if candidate.is_file() {
                return candidate;
            }
        }
        if image_binary.file_name() == Some(base) {
            return image_binary.to_path_buf();
        }
        path.to_path_buf()
    }
}

fn pattern_matches(pattern: &str, repo: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return repo.starts_with(prefix) || repo.contains(&format!("/{prefix}"));
    }
    if pattern.ends_with('/') {
        return repo.starts_with(pattern) || repo.contains(&format!("/{pattern}"));
    }
    repo == pattern || repo.ends_with(&format!("/{pattern}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ImageMap {
        ImageMap::new(
            vec![
                ("virtrigaud/runner".into(), "/opt/bin/runner".into()),
                ("virtrigaud/".into(), "/opt/bin/any".into()),
                ("busybox-like".into(), "/bin/sh".into()),
            ],
            vec![],
        )
    }

    #[test]
    fn repository_strips_tag_and_digest_but_not_registry_port() {
        assert_eq!(
            ImageMap::repository("virtrigaud/runner:v1"),
            "virtrigaud/runner"
        );
        assert_eq!(
            ImageMap::repository("reg:5000/virtrigaud/runner"),
            "reg:5000/virtrigaud/runner"
        );
        assert_eq!(
            ImageMap::repository("reg:5000/a/b:dev@sha256:abc"),
            "reg:5000/a/b"
        );
        assert_eq!(ImageMap::repository("busybox"), "busybox");
    }

    #[test]
    fn exact_and_registry_qualified_names_match_longest_pattern() {
        let m = map();
        assert_eq!(
            m.resolve_image("virtrigaud/runner:dev").unwrap(),
            PathBuf::from("/opt/bin/runner")
        );
        assert_eq!(
            m.resolve_image("ghcr.io/virtrigaud/runner").unwrap(),
            PathBuf::from("/opt/bin/runner")
        );
        assert_eq!(
            m.resolve_image("virtrigaud/operator:1").unwrap(),
            PathBuf::from("/opt/bin/any")
        );
        assert_eq!(
            m.resolve_image("busybox-like:latest").unwrap(),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn unknown_image_names_the_repository_in_the_error() {
        let err = map().resolve_image("quay.io/other/thing:1").unwrap_err();
        assert!(
            err.to_string().contains("--image quay.io/other/thing="),
            "{err}"
        );
        // a pattern must match a whole path component
        assert!(map().resolve_image("my-busybox-like").is_err());
    }

    #[test]
    fn unmapped_images_fall_back_to_a_binary_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("webhook"), "").unwrap();
        let m = ImageMap::new(
            vec![("virtrigaud/runner".into(), "/opt/runner".into())],
            vec![dir.path().into()],
        );
        assert_eq!(
            m.resolve_image("virtrigaud/webhook:dev").unwrap(),
            dir.path().join("webhook")
        );
        assert_eq!(
            m.resolve_image("virtrigaud/runner:dev").unwrap(),
            PathBuf::from("/opt/runner")
        );
        assert!(m.resolve_image("virtrigaud/operator:dev").is_err());
    }

    #[test]
    fn invocation_follows_command_and_args_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("runner");
        std::fs::write(&bin, "").unwrap();
        let m = ImageMap::new(vec![], vec![dir.path().to_path_buf()]);
        let image_bin = PathBuf::from("/opt/bin/runner-image");

        let inv = m.invocation(&image_bin, &[], &["--x".into()]);
        assert_eq!(inv.program, image_bin);
        assert_eq!(inv.args, vec!["--x".to_string()]);

        // an absolute command that does not exist here is found by basename in --bin-dir
        let inv = m.invocation(
            &image_bin,
            &["/usr/local/bin/runner".into(), "a".into()],
            &["b".into()],
        );
        assert_eq!(inv.program, bin);
        assert_eq!(inv.arg0, "/usr/local/bin/runner");
        assert_eq!(inv.args, vec!["a".to_string(), "b".to_string()]);

        // the image's own binary by basename
        let inv = m.invocation(&image_bin, &["runner-image".into()], &[]);
        assert_eq!(inv.program, image_bin);

        // existing host paths and bare names for PATH
        assert_eq!(
            m.resolve_program("/bin/sh", &image_bin),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(m.resolve_program("sh", &image_bin), PathBuf::from("sh"));
    }
}
