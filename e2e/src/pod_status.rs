//! Pod phase and conditions computed from container statuses, following the kubelet's rules.

use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodReadinessGate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// `Pending`, `Running`, `Succeeded` or `Failed`.
pub type Phase = &'static str;

fn terminated_code(s: &ContainerStatus) -> Option<i32> {
    s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code)
}

fn last_terminated(s: &ContainerStatus) -> bool {
    s.last_state
        .as_ref()
        .is_some_and(|l| l.terminated.is_some())
}

/// Whether every init container has completed successfully.
pub fn initialized(init: &[ContainerStatus]) -> bool {
    init.iter().all(|s| terminated_code(s) == Some(0))
}

/// The pod phase, as the kubelet's `getPhase` computes it.
pub fn phase(
    restart_policy: &str,
    init: &[ContainerStatus],
    containers: &[ContainerStatus],
) -> Phase {
    if !initialized(init) {
        let init_failed = init
            .iter()
            .any(|s| terminated_code(s).is_some_and(|c| c != 0));
        return if init_failed && restart_policy == "Never" {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let state = s.state.as_ref();
        if state.is_some_and(|st| st.running.is_some()) {
            running += 1;
        } else if let Some(code) = terminated_code(s) {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else if last_terminated(s) {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

/// Sets condition `type_` in `conditions`, keeping its transition time when the status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<PodCondition>,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let transition = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(PodCondition {
        type_: type_.to_string(),
        status,
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(transition),
        last_probe_time: None,
        observed_generation: None,
    });
}

/// What the conditions are computed from.
pub struct ConditionInputs<'a> {
    /// The pod's IP and volumes are ready.
    pub sandbox_ready: bool,
    /// Init container statuses.
    pub init: &'a [ContainerStatus],
    /// Regular container statuses.
    pub containers: &'a [ContainerStatus],
    /// The pod phase.
    pub phase: Phase,
    /// The pod's readiness gates.
    pub readiness_gates: &'a [PodReadinessGate],
}

/// Updates the kubelet-owned conditions (`PodReadyToStartContainers`, `Initialized`,
/// `ContainersReady`, `Ready`), leaving the others (`PodScheduled`, `DisruptionTarget`, readiness
/// gates) as they are.
pub fn update_conditions(
    conditions: &mut Vec<PodCondition>,
    inputs: &ConditionInputs<'_>,
    now: Timestamp,
) {
    set_condition(
        conditions,
        "PodReadyToStartContainers",
        inputs.sandbox_ready,
        None,
        None,
        now,
    );

    let incomplete: Vec<&str> = inputs
        .init
        .iter()
        .filter(|s| terminated_code(s) != Some(0))
        .map(|s| s.name.as_str())
        .collect();
    if incomplete.is_empty() {
        set_condition(conditions, "Initialized", true, None, None, now);
    } else {
        let message = format!(
            "containers with incomplete status: [{}]",
            incomplete.join(" ")
        );
        set_condition(
            conditions,
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(message),
            now,
        );
    }

    let terminal = matches!(inputs.phase, "Succeeded" | "Failed");
    let unready: Vec<&str> = inputs
        .containers
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let containers_ready = !terminal && unready.is_empty() && incomplete.is_empty();
    let (reason, message) = if terminal {
        (Some("PodCompleted"), None)
    } else if !incomplete.is_empty() || !unready.is_empty() {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    } else {
        (None, None)
    };
    set_condition(
        conditions,
        "ContainersReady",
        containers_ready,
        reason,
        message.clone(),
        now,
    );

    let gates_open: Vec<&str> = inputs
        .readiness_gates
        .iter()
        .filter(|g| {
            !conditions
                .iter()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        })
        .map(|g| g.condition_type.as_str())
        .collect();
    if containers_ready && !gates_open.is_empty() {
        let message = format!(
            "corresponding condition of pod readiness gate \"{}\" does not exist.",
            gates_open[0]
        );
        set_condition(
            conditions,
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some(message),
            now,
        );
    } else {
        set_condition(conditions, "Ready", containers_ready, reason, message, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    fn waiting(name: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ContainerCreating".into()),
                    message: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running(name: &str, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            ready,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn exited(name: &str, code: i32) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn crash_looping(name: &str) -> ContainerStatus {
        let mut s = waiting(name);
        s.last_state = exited(name, 1).state;
        s
    }

    #[test]
    fn phases_follow_restart_policy() {
        assert_eq!(phase("Never", &[], &[waiting("a")]), "Pending");
        assert_eq!(
            phase("Never", &[], &[running("a", false), exited("b", 0)]),
            "Running"
        );
        assert_eq!(
            phase("Never", &[], &[exited("a", 0), exited("b", 0)]),
            "Succeeded"
        );
        assert_eq!(
            phase("Never", &[], &[exited("a", 0), exited("b", 3)]),
            "Failed"
        );
        assert_eq!(phase("OnFailure", &[], &[exited("a", 3)]), "Running");
        assert_eq!(phase("OnFailure", &[], &[exited("a", 0)]), "Succeeded");
        assert_eq!(phase("Always", &[], &[exited("a", 0)]), "Running");
        assert_eq!(phase("Always", &[], &[crash_looping("a")]), "Running");
    }

    #[test]
    fn init_containers_gate_the_phase() {
        assert_eq!(
            phase("Never", &[running("i", false)], &[waiting("a")]),
            "Pending"
        );
        assert_eq!(phase("Never", &[exited("i", 1)], &[waiting("a")]), "Failed");
        assert_eq!(
            phase("OnFailure", &[exited("i", 1)], &[waiting("a")]),
            "Pending"
        );
        assert_eq!(
            phase("Never", &[exited("i", 0)], &[running("a", true)]),
            "Running"
        );
    }

    #[test]
    fn conditions_track_readiness_and_keep_transition_times() {
        let t0 = Timestamp::from_second(1000).unwrap();
        let t1 = Timestamp::from_second(2000).unwrap();
        let mut conds = vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "True".into(),
            ..Default::default()
        }];
        let not_ready = [running("a", false)];
        let inputs = ConditionInputs {
            sandbox_ready: true,
            init: &[],
            containers: &not_ready,
            phase: "Running",
            readiness_gates: &[],
        };
        update_conditions(&mut conds, &inputs, t0);
        let get =
            |c: &Vec<PodCondition>, t: &str| c.iter().find(|x| x.type_ == t).cloned().unwrap();
        assert_eq!(get(&conds, "Ready").status, "False");
        assert_eq!(
            get(&conds, "Ready").message.as_deref(),
            Some("containers with unready status: [a]")
        );
        assert_eq!(get(&conds, "PodScheduled").status, "True");

        let ready = [running("a", true)];
        update_conditions(
            &mut conds,
            &ConditionInputs {
                containers: &ready,
                ..inputs
            },
            t1,
        );
        assert_eq!(get(&conds, "Ready").status, "True");
        assert_eq!(get(&conds, "Ready").last_transition_time, Some(Time(t1)));
        assert_eq!(
            get(&conds, "Initialized").last_transition_time,
            Some(Time(t0))
        );

        let done = [exited("a", 0)];
        let inputs = ConditionInputs {
            containers: &done,
            phase: "Succeeded",
            ..inputs
        };
        update_conditions(&mut conds, &inputs, t1);
        assert_eq!(get(&conds, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let mut conds = Vec::new();
        let ready = [running("a", true)];
        let gates = [PodReadinessGate {
            condition_type: "example.com/lb".into(),
        }];
        let inputs = ConditionInputs {
            sandbox_ready: true,
            init: &[],
            containers: &ready,
            phase: "Running",
            readiness_gates: &gates,
        };
        update_conditions(&mut conds, &inputs, Timestamp::now());
        let ready_cond = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready_cond.reason.as_deref(), Some("ReadinessGatesNotReady"));
        assert_eq!(
            conds
                .iter()
                .find(|c| c.type_ == "ContainersReady")
                .unwrap()
                .status,
            "True"
        );
    }
}
