//! The `runner` binary's contract with the operator when it cannot even start the pipeline: a
//! RunnerOutcome in the termination message and the terminal exit code.

use std::process::Command;

use crd::plan::{EXIT_TERMINAL, RunnerOutcome};

fn run(mode: &str, plan_dir: &std::path::Path, log: &std::path::Path) -> (i32, RunnerOutcome) {
    let status = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg(mode)
        .env("VRG_RUNNER_DIR", plan_dir)
        .env("VRG_TERMINATION_LOG", log)
        .env("VRG_SCRATCH_DIR", plan_dir)
        .status()
        .unwrap();
    let outcome = serde_json::from_slice(&std::fs::read(log).unwrap()).unwrap();
    (status.code().unwrap(), outcome)
}

#[test]
fn missing_plan_is_a_terminal_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let (code, outcome) = run("migrate", dir.path(), &log);
    assert_eq!(code, EXIT_TERMINAL);
    assert!(!outcome.succeeded && !outcome.retryable);
    assert_eq!(outcome.reason, "InvalidPlan");
    assert!(outcome.message.contains("plan.json"), "{}", outcome.message);
}

#[test]
fn plan_for_another_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plan = serde_json::json!({
        "migration": {"namespace": "default", "name": "m", "uid": "u"},
        "attempt": 1,
        "mode": "cleanup",
        "source": {"name": "default/a", "type": "libvirt", "endpoint": "qemu:///system"},
        "sourceVm": {"name": "web"},
        "target": {"name": "default/b", "type": "libvirt", "endpoint": "qemu:///system"},
        "targetName": "web2",
        "storage": {"type": "nfs", "endpoint": "nfs.local", "path": "/x"},
        "cleanupPolicy": {"deleteIntermediate": true, "deleteSnapshot": true, "deleteSource": false}
    });
    std::fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    let log = dir.path().join("termination-log");
    let (code, outcome) = run("migrate", dir.path(), &log);
    assert_eq!(code, EXIT_TERMINAL);
    assert_eq!(
        outcome.message,
        "runner plan: the plan is for Cleanup, the runner was started for Migrate"
    );
}
