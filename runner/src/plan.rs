//! The runner's side of the operator contract ([`crd::plan`]): where the plan, scratch space and
//! termination message are, reading the plan, and turning a result into a [`RunnerOutcome`] and an
//! exit code.

use std::path::{Path, PathBuf};

use crd::plan::{self, EXIT_OK, EXIT_RETRYABLE, EXIT_TERMINAL, RunnerOutcome, RunnerPlan};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::{Error, Result};

/// Environment variable that overrides [`plan::SCRATCH_DIR`].
pub const ENV_SCRATCH_DIR: &str = "VRG_SCRATCH_DIR";
/// Environment variable that overrides [`plan::TERMINATION_MESSAGE_PATH`].
pub const ENV_TERMINATION_LOG: &str = "VRG_TERMINATION_LOG";
/// The termination message is cut at 4 KiB by Kubernetes; messages are kept well below.
const MAX_MESSAGE: usize = 3000;

/// Where the runner finds its inputs and puts its outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The mounted runner Secret: the plan and credential files.
    pub plan_dir: PathBuf,
    /// Scratch space for exported and converted images.
    pub scratch: PathBuf,
    /// Where the outcome JSON is written.
    pub termination_log: PathBuf,
    /// Bytes the scratch volume may hold when less than its filesystem's free space
    /// ([`plan::ENV_SCRATCH_LIMIT`], an emptyDir's sizeLimit).
    pub scratch_limit: Option<u64>,
}

impl Paths {
    /// The contract's paths, each overridable by its environment variable.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Paths {
            plan_dir: var(plan::ENV_MOUNT_DIR, plan::MOUNT_DIR),
            scratch: var(ENV_SCRATCH_DIR, plan::SCRATCH_DIR),
            termination_log: var(ENV_TERMINATION_LOG, plan::TERMINATION_MESSAGE_PATH),
            scratch_limit: scratch_limit(std::env::var(plan::ENV_SCRATCH_LIMIT).ok()),
        }
    }
}

/// The scratch limit from its variable's value: whole bytes; anything else is ignored (with a
/// warning), leaving the filesystem's free space as the only bound.
fn scratch_limit(value: Option<String>) -> Option<u64> {
    let value = value?;
    let limit = value.trim().parse().ok();
    if limit.is_none() {
        tracing::warn!(
            "{} is {value:?}, not a number of bytes: ignored",
            plan::ENV_SCRATCH_LIMIT
        );
    }
    limit
}

/// Reads and parses `plan.json` in `dir`.
pub fn load(dir: &Path) -> Result<RunnerPlan> {
    let path = dir.join(plan::PLAN_FILE);
    let text = std::fs::read(&path)
        .map_err(|e| Error::Plan(format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| Error::Plan(format!("{}: {e}", path.display())))
}

/// The outcome of a run: `Completed` with the target VM id, or the error's reason and message.
pub fn outcome(result: &Result<Option<String>>) -> RunnerOutcome {
    match result {
        Ok(target_vm_id) => RunnerOutcome {
            succeeded: true,
            retryable: false,
            reason: "Completed".into(),
            message: match target_vm_id {
                Some(id) => format!("target VM {id} created and verified"),
                None => "cleanup finished".into(),
            },
            target_vm_id: target_vm_id.clone(),
        },
        Err(e) => {
            let mut message = e.to_string();
            if message.len() > MAX_MESSAGE {
                let mut end = MAX_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push_str("...");
            }
            RunnerOutcome {
                succeeded: false,
                retryable: e.is_retryable(),
                reason: e.reason().into(),
                message,
                target_vm_id: None,
            }
        }
    }
}

/// The exit code the operator reads next to the outcome.
pub fn exit_code(outcome: &RunnerOutcome) -> i32 {
    match (outcome.succeeded, outcome.retryable) {
        (true, _) => EXIT_OK,
        (false, true) => EXIT_RETRYABLE,
        (false, false) => EXIT_TERMINAL,
    }
}

/// Writes `outcome` as JSON to the termination message file.
pub fn write_outcome(path: &Path, outcome: &RunnerOutcome) -> Result<()> {
    let json = serde_json::to_vec(outcome).expect("an outcome always serializes");
    std::fs::write(path, json).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Bytes of a memory quantity (the parser the webhook admits with: [`crd::quantity`]).
pub fn quantity_bytes(q: &Quantity) -> Result<u64> {
    crd::quantity::memory_bytes(&q.0)
        .map_err(|e| Error::Invalid(format!("targetResources.memory: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_exit_codes() {
        let ok = outcome(&Ok(Some("vm-1".into())));
        assert!(ok.succeeded);
        assert_eq!(ok.target_vm_id.as_deref(), Some("vm-1"));
        assert_eq!(exit_code(&ok), EXIT_OK);

        let retry = outcome(&Err(Error::transient("s3", "503 Slow Down")));
        assert_eq!(
            (retry.retryable, retry.reason.as_str()),
            (true, "Unavailable")
        );
        assert_eq!(exit_code(&retry), EXIT_RETRYABLE);

        let terminal = outcome(&Err(Error::Invalid("é".repeat(4000))));
        assert_eq!(exit_code(&terminal), EXIT_TERMINAL);
        assert!(serde_json::to_vec(&terminal).unwrap().len() < 4096);
    }

    #[test]
    fn the_scratch_limit_is_whole_bytes_or_nothing() {
        assert_eq!(scratch_limit(None), None);
        assert_eq!(scratch_limit(Some("107374182400".into())), Some(100 << 30));
        assert_eq!(scratch_limit(Some("100Gi".into())), None);
    }

    #[test]
    fn reads_the_plan_and_writes_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Plan(_)), "{err}");
        std::fs::write(dir.path().join(plan::PLAN_FILE), "{\"attempt\": 1}").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("plan.json"), "{err}");

        let out = dir.path().join("termination-log");
        let outcome = outcome(&Err(Error::NoSpace("scratch".into())));
        write_outcome(&out, &outcome).unwrap();
        let back: RunnerOutcome = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(back, outcome);
    }

    #[test]
    fn memory_quantities_are_the_webhooks() {
        let q = |s: &str| quantity_bytes(&Quantity(s.into()));
        assert_eq!(q("8Gi").unwrap(), 8 << 30);
        assert_eq!(
            q("1e9").unwrap(),
            1_000_000_000,
            "admitted by the webhook, taken here"
        );
        let err = q("8GB").unwrap_err().to_string();
        assert!(
            err.starts_with("targetResources.memory: \"8GB\" is not a Kubernetes quantity"),
            "{err}"
        );
    }
}
