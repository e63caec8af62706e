//! Credentials the operator mounts next to the plan: one file per value, named `<scope>.<key>`
//! (see [`crd::plan`]), e.g. `storage.accessKey`, `storage.ca.crt`, `source.password`.
//!
//! Values never appear in `Debug` output, logs or errors: errors name the file and the Secret key only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The credential values of one runner attempt, keyed by scope and Secret key.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Where they were read from (for messages); empty for in-memory sets.
    dir: PathBuf,
    values: BTreeMap<(String, String), String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // keys only: values are secret
        f.debug_struct("Credentials")
            .field("dir", &self.dir)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Credentials {
    /// Reads every `<scope>.<key>` file in `dir` (a mounted Secret). Kubernetes' `..data`
    /// bookkeeping entries and the plan file are skipped. Trailing newlines are stripped, except
    /// from PEM files (`*.crt`, `*.pem`, `*.key`), which are kept verbatim.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::Plan(format!("reading credentials in {}: {e}", dir.display())))?;
        let mut creds = Credentials {
            dir: dir.clone(),
            values: BTreeMap::new(),
        };
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::Plan(format!("reading credentials in {}: {e}", dir.display()))
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || name == crd::plan::PLAN_FILE {
                continue;
            }
            let Some((scope, key)) = name.split_once('.') else {
                continue;
            };
            let path = entry.path();
            // follows the Secret volume's symlinks; directories (`..2024_...`) are skipped above
            if !path.is_file() {
                continue;
            }
            let raw = std::fs::read_to_string(&path)
                .map_err(|e| Error::Plan(format!("reading credential file {name}: {e}")))?;
            creds.insert(scope, key, raw);
        }
        Ok(creds)
    }

    /// Adds (or replaces) one value; PEM values keep their newlines, others are trimmed at the end.
    pub fn insert(&mut self, scope: &str, key: &str, value: impl Into<String>) {
        let mut value = value.into();
        if !is_pem_key(key) {
            value.truncate(value.trim_end_matches(['\n', '\r']).len());
        }
        self.values
            .insert((scope.to_string(), key.to_string()), value);
    }

    /// Builder form of [`Credentials::insert`], handy in tests.
    pub fn with(mut self, scope: &str, key: &str, value: impl Into<String>) -> Self {
        self.insert(scope, key, value);
        self
    }

    /// The value of `key` in `scope`; a missing value is an error naming the file and the Secret key.
    pub fn get(&self, scope: &str, key: &str) -> Result<&str> {
        self.optional(scope, key).ok_or_else(|| {
            Error::Plan(format!(
                "credential {} missing (Secret key {key:?} of the {scope} credentials{})",
                crd::plan::credential_file(scope, key),
                if self.dir.as_os_str().is_empty() {
                    String::new()
                } else {
                    format!(", looked in {}", self.dir.display())
                }
            ))
        })
    }

    /// The value of `key` in `scope`, if given. Empty values count as absent.
    pub fn optional(&self, scope: &str, key: &str) -> Option<&str> {
        self.values
            .get(&(scope.to_string(), key.to_string()))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Where the values were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn is_pem_key(key: &str) -> bool {
    [".crt", ".pem", ".key"].iter().any(|s| key.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_scoped_files_and_names_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("storage.accessKey"), "AKID\n").unwrap();
        std::fs::write(d.join("storage.ca.crt"), "-----BEGIN CERTIFICATE-----\nx\n").unwrap();
        std::fs::write(d.join("plan.json"), "{}").unwrap();
        std::fs::create_dir(d.join("..2026_11_01")).unwrap();
        std::fs::write(d.join("..data"), "ignored").unwrap();

        let creds = Credentials::load(d).unwrap();
        assert_eq!(creds.get("storage", "accessKey").unwrap(), "AKID");
        assert_eq!(
            creds.optional("storage", "ca.crt"),
            Some("-----BEGIN CERTIFICATE-----\nx\n")
        );
        assert_eq!(creds.optional("plan", "json"), None);

        let err = creds.get("storage", "secretKey").unwrap_err().to_string();
        assert!(err.contains("storage.secretKey"), "{err}");
        assert!(err.contains("\"secretKey\""), "{err}");
    }

    #[test]
    fn debug_shows_no_values() {
        let creds = Credentials::default().with("storage", "token", "s3cr3t-value");
        let shown = format!("{creds:?}");
        assert!(shown.contains("token"));
        assert!(!shown.contains("s3cr3t-value"));
    }
}
