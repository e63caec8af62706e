//! Deterministic names of the objects the operator creates for a migration.
//!
//! Names are derived from the VMMigration name and the attempt number only, so a restarted operator
//! finds what it created before (and a second `create` answers AlreadyExists instead of making a
//! duplicate). Per migration there is one ServiceAccount, Role and RoleBinding (`<migration>-runner`),
//! shared by every attempt and the cleanup run; per attempt one Secret (`<migration>-runner-a<N>`) and
//! one Job (`<migration>-a<N>`); for a cancelled migration one cleanup Secret and Job
//! (`<migration>-cleanup`). A name longer than 63 characters (the label-value limit the Job name must
//! respect) is shortened to a prefix plus a hash of the full migration name.

use sha2::{Digest, Sha256};

/// Longest name we produce: Job names end up in the `job-name` pod label (63 characters).
pub const MAX_NAME: usize = 63;

/// `<migration><suffix>`, shortened with a hash when it would exceed [`MAX_NAME`].
fn with_suffix(migration: &str, suffix: &str) -> String {
    let full = format!("{migration}{suffix}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = hex::encode(Sha256::digest(migration.as_bytes()));
    let hash = &hash[..8];
    // prefix + "-" + hash + suffix must fit.
    let keep = MAX_NAME - suffix.len() - hash.len() - 1;
    let prefix = migration[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}{suffix}")
}

/// The runner Job of `attempt`.
pub fn job(migration: &str, attempt: i32) -> String {
    with_suffix(migration, &format!("-a{attempt}"))
}

/// The ServiceAccount, Role and RoleBinding every runner of the migration uses.
pub fn runner_identity(migration: &str) -> String {
    with_suffix(migration, "-runner")
}

/// The credentials Secret of `attempt`.
pub fn attempt_secret(migration: &str, attempt: i32) -> String {
    with_suffix(migration, &format!("-runner-a{attempt}"))
}

/// The cleanup Job and its Secret.
pub fn cleanup(migration: &str) -> String {
    with_suffix(migration, "-cleanup")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_readable() {
        assert_eq!(job("kvm-to-vsphere", 1), "kvm-to-vsphere-a1");
        assert_eq!(job("kvm-to-vsphere", 10), "kvm-to-vsphere-a10");
        assert_eq!(runner_identity("m"), "m-runner");
        assert_eq!(attempt_secret("m", 2), "m-runner-a2");
        assert_eq!(cleanup("m"), "m-cleanup");
    }

    #[test]
    fn long_names_are_truncated_with_a_stable_hash() {
        let long = "a".repeat(40) + "-" + &"b".repeat(22); // 63 characters, the CRD's limit
        let names = [
            job(&long, 1),
            job(&long, 10),
            runner_identity(&long),
            attempt_secret(&long, 10),
            cleanup(&long),
        ];
        for name in &names {
            assert!(name.len() <= MAX_NAME, "{name} is {} long", name.len());
            assert!(name.starts_with("aaaa"), "{name}");
        }
        assert!(names[0].ends_with("-a1") && names[1].ends_with("-a10"));
        assert_eq!(job(&long, 1), names[0], "deterministic");
        // Two migrations sharing a long prefix do not collide.
        let other = "a".repeat(40) + "-" + &"c".repeat(22);
        assert_ne!(job(&other, 1), names[0]);
        // No dangling separator before the hash.
        let dashes = "a".repeat(50) + &"-".repeat(13);
        assert!(!job(&dashes, 1).contains("--"), "{}", job(&dashes, 1));
    }
}
