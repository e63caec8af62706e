//! Per-Provider concurrency: at most `spec.maxConcurrentMigrations` migrations (default 10) run
//! against one Provider at once, counting every migration that uses it as its source or its target.
//!
//! **Slots.** A slot is held by a runner Job (component `runner`) from its creation until it has
//! finished (a `Complete` or `Failed` condition), whatever becomes of its migration; a Job being
//! deleted holds its slot until it is gone, as its pod may still run. The rule reads only Jobs, so
//! it is the same for every reconcile and after a restart. Runner Jobs carry the `namespace/name`
//! of their source and target Provider as annotations ([`crd::annotations`]); a Job made by an
//! earlier operator without them counts for the Providers its migration pinned. Cleanup Jobs hold
//! no slot: deleting a migration never waits in line.
//!
//! **The line.** A migration waits in line for a Provider while it is Pending, its pinned references
//! name that Provider, it has no runner Job of its current attempt (nor an unfinished one of an
//! earlier attempt) and no retry time in the future. The line is ordered by `creationTimestamp`,
//! then name, then namespace: first come, first served across every namespace whose migrations use
//! the Provider (the key is the Provider's `namespace/name`). A migration launches when, on each of
//! its Providers, the unfinished runner Jobs of other migrations plus the migrations waiting ahead
//! of it leave a slot, so a slot that frees goes to the first in line and never to a later one (a
//! first in line that also waits for another Provider keeps one slot reserved here meanwhile).
//!
//! **Cost.** A check is one list of runner Jobs cluster-wide by label selector (a consistent read:
//! a Job created a moment ago by another reconcile is in it); the migrations in line come from the
//! controller's cache. The decision and the Job's creation happen under the context's launch lock,
//! so two reconciles of this process cannot take the same last slot. A waiting migration is looked
//! at again every [`QUEUE_RECHECK`] (reading its two pinned Providers, so a changed limit counts at
//! once), and sooner: every change of a runner Job wakes the first in line on its Providers
//! ([`triggers`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crd::{ConditionStatus, Phase, Provider, VMMigration, VMMigrationStatus, annotations, labels};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::builder::{COMPONENT_RUNNER, MANAGED_BY_LABEL};
use crate::error::Result;
use crate::events::{action, reason};
use crate::resolve::Resolved;
use crate::status::{OperatorStatus, READY};
use crate::{Context, apply, verdict};

/// How often a migration waiting for a slot is looked at again (a runner Job's change on one of its
/// Providers wakes the first in line sooner).
pub const QUEUE_RECHECK: Duration = Duration::from_secs(10);
/// The Ready condition's reason while a migration waits for a slot.
pub const QUEUED: &str = "Queued";

/// `namespace/name` of a Provider: the key of its line.
pub fn provider_key(p: &Provider) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// Selects every runner Job of the operator (all namespaces).
pub fn runner_job_selector() -> String {
    format!(
        "{MANAGED_BY_LABEL}={},{}={COMPONENT_RUNNER}",
        labels::MANAGED_BY,
        labels::COMPONENT
    )
}

/// The annotations of a runner Job naming the Providers its slot is held on.
pub fn job_annotations(resolved: &Resolved) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            annotations::SOURCE_PROVIDER.to_owned(),
            provider_key(&resolved.source_provider),
        ),
        (
            annotations::TARGET_PROVIDER.to_owned(),
            provider_key(&resolved.target_provider),
        ),
    ])
}

/// The Providers (`namespace/name`) a migration's pinned references name, in pin order.
pub fn pinned_providers(status: &VMMigrationStatus) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for pin in status.references.iter().filter(|p| p.kind == "Provider") {
        let key = format!("{}/{}", pin.namespace, pin.name);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn is_runner(job: &Job) -> bool {
    job.labels().get(labels::COMPONENT).map(String::as_str) == Some(COMPONENT_RUNNER)
}

/// Whether `job` holds a slot: a runner Job that has not finished.
pub fn holds_slot(job: &Job) -> bool {
    is_runner(job) && !verdict::finished(job)
}

fn owned_by(job: &Job, m: &VMMigration) -> bool {
    let Some(uid) = m.uid() else {
        return false;
    };
    job.owner_references().iter().any(|o| o.uid == uid)
}

fn attempt_of(job: &Job) -> Option<i32> {
    job.labels().get(labels::ATTEMPT)?.parse().ok()
}

/// The Providers a runner Job holds its slot on: its annotations, or (a Job made before they
/// existed) the pins of its migration.
pub fn job_providers(job: &Job, migrations: &[Arc<VMMigration>]) -> Vec<String> {
    let a = job.annotations();
    let mut keys: Vec<String> = Vec::new();
    for key in [annotations::SOURCE_PROVIDER, annotations::TARGET_PROVIDER]
        .into_iter()
        .filter_map(|k| a.get(k))
    {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    if !keys.is_empty() {
        return keys;
    }
    migrations
        .iter()
        .find(|m| owned_by(job, m))
        .and_then(|m| m.status.as_ref())
        .map(pinned_providers)
        .unwrap_or_default()
}

/// First come, first served: creation time, then name, then namespace.
fn order(m: &VMMigration) -> (Option<Timestamp>, String, String) {
    (
        m.metadata.creation_timestamp.as_ref().map(|t| t.0),
        m.name_any(),
        m.namespace().unwrap_or_default(),
    )
}

/// Whether `m` waits in line for Provider `key`.
fn in_line(m: &VMMigration, key: &str, jobs: &[Job], now: &Time) -> bool {
    let Some(s) = &m.status else {
        return false;
    };
    m.metadata.deletion_timestamp.is_none()
        && s.completion_time.is_none()
        && matches!(s.phase, None | Some(Phase::Pending))
        && s.next_retry_time.as_ref().is_none_or(|t| t.0 <= now.0)
        && pinned_providers(s).iter().any(|k| k == key)
        && !jobs.iter().any(|j| {
            is_runner(j) && owned_by(j, m) && (!verdict::finished(j) || attempt_of(j) == s.attempt)
        })
}

/// Why a migration may not launch yet: the first of its Providers without a slot for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// `namespace/name` of the Provider.
    pub provider: String,
    /// Its limit.
    pub limit: i32,
    /// Unfinished runner Jobs of other migrations on it.
    pub running: usize,
    /// Migrations waiting in line ahead of this one.
    pub ahead: usize,
}

impl Blocked {
    /// The status message while waiting.
    pub fn message(&self) -> String {
        format!(
            "waiting for a slot on Provider {}: {} of {} running, {} ahead of this migration",
            self.provider, self.running, self.limit, self.ahead
        )
    }
}

/// Whether `m` may launch on `providers` (`namespace/name` and limit each), given every runner Job
/// and the migrations known; `Some` names the first Provider without a slot for it.
pub fn decide(
    m: &VMMigration,
    providers: &[(String, i32)],
    jobs: &[Job],
    migrations: &[Arc<VMMigration>],
    now: &Time,
) -> Option<Blocked> {
    let me = order(m);
    let uid = m.uid();
    for (key, limit) in providers {
        let running = jobs
            .iter()
            .filter(|j| holds_slot(j) && !owned_by(j, m))
            .filter(|j| job_providers(j, migrations).iter().any(|k| k == key))
            .count();
        let ahead = migrations
            .iter()
            .filter(|o| o.uid() != uid && order(o) < me)
            .filter(|o| in_line(o, key, jobs, now))
            .count();
        if running + ahead >= usize::try_from(*limit).unwrap_or(1).max(1) {
            return Some(Blocked {
                provider: key.clone(),
                limit: *limit,
                running,
                ahead,
            });
        }
    }
    None
}

/// Whether the Ready condition says the migration waits for a slot.
pub fn is_queued(status: &VMMigrationStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason.as_deref() == Some(QUEUED))
}

/// Decides whether `m` may launch now on `providers`. When it may not, the status says for which
/// Provider it waits and how many are ahead (written only when that changed; an Event `Queued` when
/// it enters the line), and the reconcile's Action is returned.
pub async fn wait_for_slot(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    providers: &[Provider],
) -> Result<Option<Action>> {
    let mut limits: Vec<(String, i32)> = Vec::new();
    for p in providers {
        let key = provider_key(p);
        if !limits.iter().any(|(k, _)| k == &key) {
            limits.push((key, p.spec.concurrency_limit()));
        }
    }
    let jobs: Api<Job> = Api::all(ctx.client.clone());
    let jobs = jobs
        .list(&ListParams::default().labels(&runner_job_selector()))
        .await?
        .items;
    let migrations = ctx.migrations.state();
    let Some(blocked) = decide(m, &limits, &jobs, &migrations, &ctx.now()) else {
        return Ok(None);
    };
    let message = blocked.message();
    let ready = status.conditions.iter().find(|c| c.type_ == READY);
    let entering = !is_queued(status);
    let unchanged = !entering
        && status.phase == Some(Phase::Pending)
        && status.message.as_deref() == Some(message.as_str())
        && ready.and_then(|c| c.message.as_deref()) == Some(message.as_str());
    if !unchanged {
        let mut s = OperatorStatus::carried_over(status);
        s.phase = Some(Phase::Pending);
        s.message = Some(message.clone());
        s.set_ready(ConditionStatus::False, QUEUED, &message, &ctx.now());
        apply::patch_status(ctx, m, &s).await?;
    }
    if entering {
        ctx.event(
            m,
            EventType::Normal,
            reason::QUEUED,
            action::LAUNCH,
            message,
        )
        .await;
    }
    Ok(Some(Action::requeue(QUEUE_RECHECK)))
}

/// [`wait_for_slot`] on the Providers `m` pinned, read now (a changed limit counts at once): the
/// cheap check of a migration already in line, before its references and Secrets are resolved.
/// `None` also when a pinned Provider is gone (resolving reports that).
pub async fn wait_for_pinned_slot(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
) -> Result<Option<Action>> {
    let mut providers = Vec::new();
    for key in pinned_providers(status) {
        let Some((ns, name)) = key.split_once('/') else {
            return Ok(None);
        };
        let api: Api<Provider> = Api::namespaced(ctx.client.clone(), ns);
        match api.get_opt(name).await? {
            Some(p) => providers.push(p),
            None => return Ok(None),
        }
    }
    if providers.is_empty() {
        return Ok(None);
    }
    wait_for_slot(m, ctx, status, &providers).await
}

/// The migrations a change of `job` concerns: its owner (as `Controller::owns` would), and for a
/// runner Job the first in line (Ready reason `Queued`, in the cache) on each Provider it uses, as
/// a slot may have freed or the one ahead may have launched.
pub fn triggers(job: &Job, migrations: &Store<VMMigration>) -> Vec<ObjectRef<VMMigration>> {
    let ns = job.namespace();
    let mut refs: Vec<ObjectRef<VMMigration>> = job
        .owner_references()
        .iter()
        .filter_map(|o| ObjectRef::from_owner_ref(ns.as_deref(), o, ()))
        .collect();
    if !is_runner(job) {
        return refs;
    }
    let all = migrations.state();
    for key in job_providers(job, &all) {
        let first = all
            .iter()
            .filter(|m| {
                m.metadata.deletion_timestamp.is_none()
                    && m.status.as_ref().is_some_and(|s| {
                        s.completion_time.is_none()
                            && is_queued(s)
                            && pinned_providers(s).contains(&key)
                    })
            })
            .min_by_key(|m| order(m));
        if let Some(first) = first {
            let r = ObjectRef::from_obj(&**first);
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;
    use serde_json::{Value, json};

    const NOW: &str = "2026-01-01T10:00:00Z";

    fn now() -> Time {
        Time(NOW.parse().unwrap())
    }

    fn pins(providers: &[&str]) -> Value {
        Value::Array(
            providers
                .iter()
                .map(|p| {
                    let (ns, name) = p.split_once('/').unwrap();
                    json!({"kind": "Provider", "namespace": ns, "name": name, "uid": format!("uid-{name}")})
                })
                .collect(),
        )
    }

    /// A migration `ns/name` created at `created` (seconds after NOW) pinned to `providers`.
    fn mig(ns: &str, name: &str, created: i64, providers: &[&str], status: Value) -> VMMigration {
        let t: Timestamp = NOW.parse().unwrap();
        let created = Time(t + k8s_openapi::jiff::SignedDuration::from_secs(created));
        let mut status = status;
        status["references"] = pins(providers);
        serde_json::from_value(json!({
            "apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "VMMigration",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                         "creationTimestamp": created},
            "spec": {"sourceName": "vm", "targetProviderRef": {"name": "t"}, "targetName": "x",
                     "storage": {"type": "s3", "bucket": "bkt"}},
            "status": status,
        }))
        .unwrap()
    }

    fn pending(attempt: i32) -> Value {
        json!({"phase": "Pending", "attempt": attempt})
    }

    fn job_of(m: &VMMigration, attempt: i32, finished: bool, annotate: bool) -> Job {
        let status = if finished {
            json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
        } else {
            json!({"active": 1})
        };
        let mut annotations = json!({});
        if annotate {
            let providers = pinned_providers(m.status.as_ref().unwrap());
            annotations = json!({"virtrigaud.io/source-provider": providers[0],
                                 "virtrigaud.io/target-provider": providers.last().unwrap()});
        }
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": format!("{}-a{attempt}", m.name_any()), "namespace": m.namespace(),
                         "labels": {"virtrigaud.io/component": "runner",
                                    "virtrigaud.io/attempt": attempt.to_string(),
                                    "virtrigaud.io/migration": m.name_any()},
                         "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "infra.virtrigaud.io/v1beta1",
                             "kind": "VMMigration", "name": m.name_any(), "uid": m.uid().unwrap(),
                             "controller": true}]},
            "status": status,
        }))
        .unwrap()
    }

    fn arcs(ms: &[&VMMigration]) -> Vec<Arc<VMMigration>> {
        ms.iter().map(|m| Arc::new((*m).clone())).collect()
    }

    #[test]
    fn running_jobs_and_those_ahead_fill_the_slots() {
        let p = "infra/esx1";
        let me = mig("team-a", "me", -10, &[p, "team-a/kvm"], pending(1));
        let runner = mig(
            "team-b",
            "runner",
            -100,
            &[p],
            json!({"phase": "Transferring", "attempt": 1}),
        );
        let done = mig(
            "team-b",
            "done",
            -200,
            &[p],
            json!({"phase": "Ready", "attempt": 1, "completionTime": NOW}),
        );
        let older = mig("team-c", "older", -50, &[p], pending(1));
        let younger = mig("team-c", "younger", -5, &[p], pending(1));
        let jobs = vec![
            job_of(&runner, 1, false, true),
            job_of(&done, 1, true, true),
        ];
        let world = arcs(&[&me, &runner, &done, &older, &younger]);
        let limits = |n| vec![(p.to_owned(), n), ("team-a/kvm".to_owned(), 10)];

        // 1 running + 1 ahead (older; younger is behind, the finished Job holds nothing).
        assert_eq!(
            decide(&me, &limits(2), &jobs, &world, &now()),
            Some(Blocked {
                provider: p.into(),
                limit: 2,
                running: 1,
                ahead: 1
            })
        );
        assert_eq!(
            Blocked {
                provider: p.into(),
                limit: 2,
                running: 1,
                ahead: 1
            }
            .message(),
            "waiting for a slot on Provider infra/esx1: 1 of 2 running, 1 ahead of this migration"
        );
        assert_eq!(decide(&me, &limits(3), &jobs, &world, &now()), None);
        // The first in line goes where the later one waits.
        assert_eq!(decide(&older, &limits(2), &jobs, &world, &now()), None);
        // The other Provider's limit counts too.
        let full_kvm = vec![(p.to_owned(), 10), ("team-a/kvm".to_owned(), 1)];
        let other = mig(
            "team-a",
            "kvm-user",
            -300,
            &["team-a/kvm"],
            json!({"phase": "Exporting", "attempt": 1}),
        );
        let mut jobs2 = jobs.clone();
        jobs2.push(job_of(&other, 1, false, true));
        let mut world2 = world.clone();
        world2.push(Arc::new(other));
        assert_eq!(
            decide(&me, &full_kvm, &jobs2, &world2, &now()).map(|b| b.provider),
            Some("team-a/kvm".to_owned())
        );
    }

    #[test]
    fn who_waits_in_line() {
        let p = "infra/esx1";
        let me = mig("a", "me", 0, &[p], pending(1));
        let retrying = {
            let mut s = pending(2);
            s["nextRetryTime"] = json!("2026-01-01T10:05:00Z");
            mig("a", "retrying", -50, &[p], s)
        };
        let retry_due = {
            let mut s = pending(2);
            s["nextRetryTime"] = json!("2026-01-01T09:59:00Z");
            mig("a", "due", -40, &[p], s)
        };
        let launched = mig("a", "launched", -30, &[p], pending(1));
        let unpinned: VMMigration = {
            let mut m = mig("a", "unpinned", -20, &[], pending(1));
            m.status.as_mut().unwrap().references.clear();
            m
        };
        let elsewhere = mig("a", "elsewhere", -10, &["infra/esx2"], pending(1));
        let jobs = vec![job_of(&launched, 1, false, true)];
        let world = arcs(&[&me, &retrying, &retry_due, &launched, &unpinned, &elsewhere]);
        // Only `due` is ahead; `launched` runs (1 running).
        assert_eq!(
            decide(&me, &[(p.into(), 1)], &jobs, &world, &now()),
            Some(Blocked {
                provider: p.into(),
                limit: 1,
                running: 1,
                ahead: 1
            })
        );
        assert_eq!(decide(&me, &[(p.into(), 3)], &jobs, &world, &now()), None);
    }

    #[test]
    fn a_job_without_annotations_counts_for_its_migrations_pins() {
        let p = "infra/esx1";
        let me = mig("a", "me", 0, &[p], pending(1));
        let old = mig(
            "b",
            "old",
            -30,
            &[p],
            json!({"phase": "Importing", "attempt": 1}),
        );
        let jobs = vec![job_of(&old, 1, false, false)];
        assert_eq!(job_providers(&jobs[0], &arcs(&[&old])), vec![p.to_owned()]);
        assert!(decide(&me, &[(p.into(), 1)], &jobs, &arcs(&[&me, &old]), &now()).is_some());
        // Its own Jobs do not count against a migration (a retry whose old Job is still going).
        let mine = vec![job_of(&me, 1, false, true)];
        assert_eq!(
            decide(&me, &[(p.into(), 1)], &mine, &arcs(&[&me]), &now()),
            None
        );
    }

    #[test]
    fn a_runner_job_change_wakes_its_owner_and_the_first_in_line() {
        let p = "infra/esx1";
        let queued = |name: &str, created: i64| {
            mig(
                "a",
                name,
                created,
                &[p],
                json!({"phase": "Pending", "attempt": 1,
                "conditions": [{"type": "Ready", "status": "False", "reason": "Queued", "lastTransitionTime": NOW}]}),
            )
        };
        let first = queued("first", -20);
        let second = queued("second", -10);
        let runner = mig(
            "b",
            "runner",
            -100,
            &[p],
            json!({"phase": "Transferring", "attempt": 1}),
        );
        let mut writer: Writer<VMMigration> = Writer::default();
        for m in [&second, &first, &runner] {
            writer.apply_watcher_event(&watcher::Event::Apply(m.clone()));
        }
        let store = writer.as_reader();
        let refs = triggers(&job_of(&runner, 1, true, true), &store);
        assert_eq!(
            refs,
            vec![
                ObjectRef::new("runner").within("b"),
                ObjectRef::new("first").within("a")
            ]
        );
    }
}
