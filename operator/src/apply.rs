//! The migration's life while it exists: start it, launch one runner Job per attempt, report why a
//! launched runner cannot start (and give its attempt up after the start timeout), judge each
//! finished Job, retry transient failures after a backoff, and finish as Ready (creating the target
//! VirtualMachine object) or Failed.
//!
//! Each step reads what it needs from the API server (the Job of the current attempt, its pods) and
//! the VMMigration status, so a restarted operator continues exactly where the last one stopped.

use std::time::Duration;

use crd::plan::RunnerMode;
use crd::{ConditionStatus, Phase, VMMigration, VMMigrationStatus, VirtualMachine};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::builder::{self, JobKind};
use crate::error::{Error, Result};
use crate::events::{action, reason};
use crate::objects::{self, Created};
use crate::resolve::{self, Resolved};
use crate::start::{self, Problem, Start};
use crate::status::{FIELD_MANAGER, OperatorStatus, READY};
use crate::verdict::{self, Verdict};
use crate::{Context, names, queue, retry};

/// Safety re-check of a running Job (Job changes trigger a reconcile anyway).
pub const RECHECK: Duration = Duration::from_secs(300);
/// How often a missing reference is looked for again during the grace period.
pub const REFERENCE_RETRY: Duration = Duration::from_secs(10);
/// How often a launched runner that has not started is looked at: a start problem reaches the
/// migration within this time (pods and Events are read, not watched).
pub const START_RECHECK: Duration = Duration::from_secs(5);

/// The duration from `now` until `t` (zero when past).
pub fn until(now: &Time, t: &Time) -> Duration {
    let d = t.0.duration_since(now.0);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

fn namespace(m: &VMMigration) -> Result<String> {
    m.namespace().ok_or(Error::MissingMetadata("namespace"))
}

/// UID of the migration: the controller owner of everything it creates.
pub fn owner_uid(m: &VMMigration) -> Result<String> {
    m.uid().ok_or(Error::MissingMetadata("uid"))
}

fn max_attempts(m: &VMMigration) -> i32 {
    m.spec.retry_policy.max_attempts.max(1)
}

/// `attempt N of M`, or for an attempt beyond maxAttempts (a requested retry) `attempt N (requested;
/// maxAttempts M)`.
pub fn attempt_label(m: &VMMigration, attempt: i32) -> String {
    let max = max_attempts(m);
    if attempt <= max {
        format!("attempt {attempt} of {max}")
    } else {
        format!("attempt {attempt} (requested; maxAttempts {max})")
    }
}

/// A reference to the Job `name` of the migration, for Events.
pub fn job_ref(m: &VMMigration, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: Some(name.to_owned()),
        namespace: m.namespace(),
        ..ObjectReference::default()
    }
}

/// Applies the operator's status fields.
pub async fn patch_status(ctx: &Context, m: &VMMigration, s: &OperatorStatus) -> Result<()> {
    let api: Api<VMMigration> = Api::namespaced(ctx.client.clone(), &namespace(m)?);
    api.patch_status(
        &m.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(s.apply_document()),
    )
    .await?;
    Ok(())
}

/// One reconcile of a migration that is not being deleted.
pub async fn apply(m: &VMMigration, ctx: &Context) -> Result<Action> {
    let mut status = m.status.clone().unwrap_or_default();
    if let Some(value) = retry::requested(m, &status) {
        retry::on_request(m, ctx, &mut status, &value).await?;
    }
    if status.completion_time.is_some() {
        return Ok(Action::await_change());
    }
    if let Some(phase) = status.phase
        && Phase::PIPELINE.contains(&phase)
        && ctx.phase_changed(m, phase)
    {
        let note = match status.progress {
            Some(p) => format!("phase {phase} ({p}%)"),
            None => format!("phase {phase}"),
        };
        ctx.event(
            m,
            EventType::Normal,
            phase.as_str(),
            action::RECONCILE,
            note,
        )
        .await;
    }

    if status.attempt.is_none() {
        start(m, ctx, &mut status).await?;
    }
    if status.phase == Some(Phase::Ready) {
        return succeed(m, ctx, &status, None).await;
    }
    let now = ctx.now();
    if let Some(next) = &status.next_retry_time
        && next.0 > now.0
    {
        return Ok(Action::requeue(until(&now, next)));
    }

    let attempt = status.attempt.unwrap_or(1);
    let kind = JobKind::migrate(&m.name_any(), attempt);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace(m)?);
    let Some(job) = jobs.get_opt(&kind.name).await? else {
        return launch(m, ctx, &status, &kind).await;
    };
    if status.next_retry_time.is_some() || queue::is_queued(&status) {
        // The Job of this attempt exists (an earlier process created it): the wait is over.
        launched(m, ctx, &status, attempt).await?;
    }
    if !verdict::finished(&job) {
        return watch_start(m, ctx, &status, &job, attempt).await;
    }
    let pods = attempt_pods(m, ctx, attempt).await?;
    match verdict::judge(&job, &pods) {
        Verdict::Running => Ok(Action::requeue(RECHECK)),
        Verdict::Succeeded { target_vm_id } => succeed(m, ctx, &status, target_vm_id).await,
        Verdict::Failed {
            retryable,
            reason,
            message,
        } => attempt_failed(m, ctx, &status, attempt, retryable, &reason, &message).await,
    }
}

/// The pods of the runner Job of `attempt`.
async fn attempt_pods(m: &VMMigration, ctx: &Context, attempt: i32) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace(m)?);
    let selector = builder::attempt_pod_selector(&m.name_any(), attempt);
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// Attempt `attempt` failed: the next one after the backoff when it may succeed and is left, else
/// the end of the migration.
async fn attempt_failed(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    attempt: i32,
    retryable: bool,
    reason: &str,
    message: &str,
) -> Result<Action> {
    if retryable && attempt < max_attempts(m) {
        return schedule_retry(m, ctx, status, attempt, reason, message).await;
    }
    let why = if retryable {
        format!(
            "{} failed ({reason}: {message}); no attempts left",
            attempt_label(m, attempt)
        )
    } else {
        format!("attempt {attempt} failed with a terminal error ({reason}: {message})")
    };
    let ready_reason = if retryable {
        "RetriesExhausted"
    } else {
        reason
    };
    fail(
        m,
        ctx,
        status,
        ready_reason,
        &format!("{reason}: {message}"),
        why,
    )
    .await
}

/// While the attempt's Job runs and its runner has not reported yet: whether the runner started,
/// and if not why (reported on the migration within [`START_RECHECK`]); at the start timeout the
/// attempt fails.
async fn watch_start(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    job: &Job,
    attempt: i32,
) -> Result<Action> {
    if status.phase.is_some_and(|p| Phase::PIPELINE.contains(&p)) {
        // The runner reports its phases: it started.
        clear_start_problem(m, ctx, status, attempt).await?;
        return Ok(Action::requeue(RECHECK));
    }
    let pods = attempt_pods(m, ctx, attempt).await?;
    let events = match pods.is_empty() {
        true => failed_creates(m, ctx, job).await?,
        false => Vec::new(),
    };
    let problem = match start::judge(&pods, &events) {
        Start::Started => {
            clear_start_problem(m, ctx, status, attempt).await?;
            return Ok(Action::requeue(RECHECK));
        }
        Start::Waiting(problem) => problem,
    };
    if start::timed_out(job, &ctx.now(), ctx.settings.runner_start_timeout) {
        return start_timed_out(m, ctx, status, job, attempt, problem).await;
    }
    match &problem {
        Some(p) => report_start_problem(m, ctx, status, job, p).await?,
        None => clear_start_problem(m, ctx, status, attempt).await?,
    }
    Ok(Action::requeue(START_RECHECK))
}

/// The Job controller's `FailedCreate` Events about `job` (core/v1: the Job controller records them
/// there).
async fn failed_creates(m: &VMMigration, ctx: &Context, job: &Job) -> Result<Vec<CoreEvent>> {
    let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), &namespace(m)?);
    let fields = format!(
        "involvedObject.kind=Job,involvedObject.name={},involvedObject.uid={},reason={}",
        job.name_any(),
        job.uid().unwrap_or_default(),
        start::FAILED_CREATE
    );
    Ok(events
        .list(&ListParams::default().fields(&fields))
        .await?
        .items)
}

/// The operator's Ready condition, if set.
fn ready(status: &VMMigrationStatus) -> Option<&crd::Condition> {
    status.conditions.iter().find(|c| c.type_ == READY)
}

/// Puts `problem` on the Ready condition and the message; a Warning Event when its reason is new.
async fn report_start_problem(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    job: &Job,
    problem: &Problem,
) -> Result<()> {
    let current = ready(status);
    let same_reason = current.and_then(|c| c.reason.as_deref()) == Some(problem.reason);
    if same_reason
        && current.and_then(|c| c.message.as_deref()) == Some(problem.message.as_str())
        && status.message.as_deref() == Some(problem.message.as_str())
    {
        return Ok(());
    }
    let mut s = OperatorStatus::carried_over(status);
    s.message = Some(problem.message.clone());
    s.set_ready(
        ConditionStatus::False,
        problem.reason,
        &problem.message,
        &ctx.now(),
    );
    patch_status(ctx, m, &s).await?;
    if !same_reason {
        ctx.event_about(
            m,
            Some(job_ref(m, &job.name_any())),
            EventType::Warning,
            problem.reason,
            action::START,
            format!(
                "the runner of Job {} cannot start ({}): {}",
                job.name_any(),
                problem.cause,
                problem.message
            ),
        )
        .await;
    }
    Ok(())
}

/// Puts the Ready condition back to Pending when it names a start problem that is gone.
async fn clear_start_problem(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    attempt: i32,
) -> Result<()> {
    let reason = ready(status).and_then(|c| c.reason.as_deref());
    if !reason.is_some_and(|r| start::REASONS.contains(&r)) {
        return Ok(());
    }
    let mut s = OperatorStatus::carried_over(status);
    waiting_for_the_runner(ctx, m, status, attempt, &mut s);
    patch_status(ctx, m, &s).await
}

/// Back to the plain wait for the runner: Ready `Pending`, and while the migration is still Pending
/// the operator's own message (once the runner reports, the message is the runner's).
fn waiting_for_the_runner(
    ctx: &Context,
    m: &VMMigration,
    status: &VMMigrationStatus,
    attempt: i32,
    s: &mut OperatorStatus,
) {
    if status.phase == Some(Phase::Pending) {
        s.message = Some(format!(
            "waiting for the runner ({})",
            attempt_label(m, attempt)
        ));
    }
    s.set_ready(
        ConditionStatus::False,
        "Pending",
        "the migration has not finished",
        &ctx.now(),
    );
}

/// The runner did not start within the start timeout: the attempt fails (retryable) with the start
/// problem, and its Job, which would wait for its deadline, is deleted.
async fn start_timed_out(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    job: &Job,
    attempt: i32,
    problem: Option<Problem>,
) -> Result<Action> {
    let timeout = crd::format_duration(ctx.settings.runner_start_timeout);
    let (reason, message) = match problem {
        Some(p) => (
            p.reason,
            format!("the runner did not start within {timeout}: {}", p.message),
        ),
        None => (
            reason::RUNNER_START_TIMEOUT,
            format!("the runner did not start within {timeout}"),
        ),
    };
    let action = attempt_failed(m, ctx, status, attempt, true, reason, &message).await?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace(m)?);
    objects::delete_object(&jobs, job, &owner_uid(m)?, PropagationPolicy::Background).await?;
    Ok(action)
}

/// New migration: phase Pending, startTime, attempt 1.
async fn start(m: &VMMigration, ctx: &Context, status: &mut VMMigrationStatus) -> Result<()> {
    let now = ctx.now();
    let max = max_attempts(m);
    let mut s = OperatorStatus::carried_over(status);
    s.phase = Some(Phase::Pending);
    s.start_time = Some(s.start_time.unwrap_or_else(|| now.clone()));
    s.attempt = Some(1);
    s.message = Some(format!("waiting for the runner (attempt 1 of {max})"));
    s.set_ready(
        ConditionStatus::False,
        "Pending",
        "the migration has not finished",
        &now,
    );
    patch_status(ctx, m, &s).await?;
    s.merge_into(status);
    ctx.event(
        m,
        EventType::Normal,
        reason::PENDING,
        action::RECONCILE,
        format!(
            "migrating VirtualMachine {} to Provider {} as {}; attempt 1 of {max}",
            m.spec.source_name, m.spec.target_provider_ref.name, m.spec.target_name
        ),
    )
    .await;
    Ok(())
}

/// Creates the runner's ServiceAccount, Role and RoleBinding unless they exist.
pub async fn ensure_identity(m: &VMMigration, ctx: &Context) -> Result<()> {
    let ns = namespace(m)?;
    let sa = builder::service_account(m)?;
    let role = builder::role(m)?;
    let binding = builder::role_binding(m)?;
    objects::create(
        &Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns),
        &sa,
    )
    .await?;
    objects::create(&Api::<Role>::namespaced(ctx.client.clone(), &ns), &role).await?;
    objects::create(
        &Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns),
        &binding,
    )
    .await?;
    Ok(())
}

/// Creates the Secret and Job of `kind` (and the runner identity). Returns whether the Job is new.
pub async fn create_run(
    m: &VMMigration,
    ctx: &Context,
    resolved: &Resolved,
    kind: &JobKind,
) -> Result<Created> {
    let ns = namespace(m)?;
    ensure_identity(m, ctx).await?;
    let plan = builder::runner_plan(m, resolved, kind, &ctx.settings)?;
    let secret = builder::runner_secret(
        m,
        kind.secret.clone(),
        kind.component(),
        kind.attempt,
        &plan,
        builder::credential_files(m, resolved),
    )?;
    objects::create(&Api::<Secret>::namespaced(ctx.client.clone(), &ns), &secret).await?;
    let mut job = builder::runner_job(m, &ctx.settings, kind)?;
    if kind.mode == RunnerMode::Migrate {
        // The Providers this Job holds a slot on (see `queue`).
        job.metadata.annotations = Some(queue::job_annotations(resolved));
    }
    objects::create(&Api::<Job>::namespaced(ctx.client.clone(), &ns), &job).await
}

/// Launches the Job of the current attempt, when its Providers have a slot for it (see [`queue`]).
async fn launch(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    kind: &JobKind,
) -> Result<Action> {
    if queue::is_queued(status)
        && let Some(wait) = queue::wait_for_pinned_slot(m, ctx, status).await?
    {
        // Still in line: nothing else is read.
        return Ok(wait);
    }
    let resolved = match resolve::resolve(&ctx.client, m).await? {
        Ok(r) => r,
        Err(missing) => {
            let now = ctx.now();
            let created = m
                .metadata
                .creation_timestamp
                .clone()
                .unwrap_or_else(|| now.clone());
            let waited = until(&created, &now);
            if waited < ctx.settings.reference_grace {
                ctx.event(
                    m,
                    EventType::Warning,
                    reason::WAITING_FOR_REFERENCE,
                    action::LAUNCH,
                    format!(
                        "{missing}; waiting up to {} after creation",
                        crd::format_duration(ctx.settings.reference_grace)
                    ),
                )
                .await;
                return Ok(Action::requeue(REFERENCE_RETRY));
            }
            return fail(
                m,
                ctx,
                status,
                "ReferenceNotFound",
                &missing.to_string(),
                format!("cannot start: {missing}"),
            )
            .await;
        }
    };
    let mut status = status.clone();
    let status = &mut status;
    if let Err(changes) = pinned(m, ctx, status, &resolved).await? {
        return fail(
            m,
            ctx,
            status,
            "ReferenceChanged",
            &changes,
            format!(
                "attempt {} not started: {changes}; the migration keeps the objects it was admitted \
                 with: delete it and create a new one",
                kind.attempt
            ),
        )
        .await;
    }
    let turn = ctx.launch_turn().await;
    let providers = [
        resolved.source_provider.clone(),
        resolved.target_provider.clone(),
    ];
    if let Some(wait) = queue::wait_for_slot(m, ctx, status, &providers).await? {
        return Ok(wait);
    }
    let created = match create_run(m, ctx, &resolved, kind).await {
        Err(e @ Error::NotOwned { .. }) => {
            let why = e.to_string();
            return fail(
                m,
                ctx,
                status,
                "ObjectConflict",
                &why,
                format!("cannot start: {why}"),
            )
            .await;
        }
        other => other?,
    };
    drop(turn);
    if created == Created::New {
        ctx.metrics.job_launched("migrate");
        ctx.event_about(
            m,
            Some(job_ref(m, &kind.name)),
            EventType::Normal,
            reason::JOB_LAUNCHED,
            action::LAUNCH,
            format!(
                "{}: runner Job {}",
                attempt_label(m, kind.attempt),
                kind.name
            ),
        )
        .await;
    }
    launched(m, ctx, status, kind.attempt).await?;
    Ok(Action::requeue(START_RECHECK))
}

/// Pins the resolved references at the first launch (into `status` too, so later writes of this
/// reconcile keep them); later, `Err` says what changed since.
async fn pinned(
    m: &VMMigration,
    ctx: &Context,
    status: &mut VMMigrationStatus,
    resolved: &Resolved,
) -> Result<std::result::Result<(), String>> {
    let current = resolved.pins();
    if status.references.is_empty() {
        let mut s = OperatorStatus::carried_over(status);
        s.references = current;
        patch_status(ctx, m, &s).await?;
        status.references = s.references;
        return Ok(Ok(()));
    }
    Ok(check_pins(&status.references, &current))
}

/// `Err` naming every change between the pinned and the current references.
pub fn check_pins(
    pinned: &[crd::PinnedReference],
    current: &[crd::PinnedReference],
) -> std::result::Result<(), String> {
    match crd::references::changes(pinned, current).as_slice() {
        [] => Ok(()),
        changes => Err(changes.join("; ")),
    }
}

/// The attempt's Job exists: removes nextRetryTime (server-side apply drops the field the
/// operator no longer sends) and puts a `Queued` Ready condition back to Pending. No write when
/// neither is there.
async fn launched(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    attempt: i32,
) -> Result<()> {
    let queued = queue::is_queued(status);
    if status.next_retry_time.is_none() && !queued {
        return Ok(());
    }
    let mut s = OperatorStatus::carried_over(status);
    s.next_retry_time = None;
    if queued {
        waiting_for_the_runner(ctx, m, status, attempt, &mut s);
    }
    patch_status(ctx, m, &s).await
}

/// Deletes the credentials Secret of the current attempt (its run is over).
async fn delete_attempt_secret(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
) -> Result<()> {
    let Some(attempt) = status.attempt else {
        return Ok(());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace(m)?);
    objects::delete(
        &secrets,
        &names::attempt_secret(&m.name_any(), attempt),
        &owner_uid(m)?,
        PropagationPolicy::Background,
    )
    .await
}

/// Attempt `attempt` failed transiently: schedule attempt+1 after the backoff.
async fn schedule_retry(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    attempt: i32,
    why: &str,
    message: &str,
) -> Result<Action> {
    let next_attempt = attempt + 1;
    let max = max_attempts(m);
    let backoff = match m.spec.retry_policy.backoff_before(next_attempt) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                m,
                ctx,
                status,
                "InvalidRetryPolicy",
                &e.to_string(),
                format!("cannot schedule a retry: {e}"),
            )
            .await;
        }
    };
    let now = ctx.now();
    // Whole seconds (rounded up), as the API stores times: the status says exactly when.
    let next = now
        .0
        .checked_add(backoff)
        .map_err(|e| Error::Config(format!("retry time out of range: {e}")))?;
    let next_second = next.as_second() + i64::from(next.subsec_nanosecond() > 0);
    let next = Time(
        Timestamp::from_second(next_second)
            .map_err(|e| Error::Config(format!("retry time out of range: {e}")))?,
    );
    let backoff = until(&now, &next);
    delete_attempt_secret(m, ctx, status).await?;
    let mut s = OperatorStatus::carried_over(status);
    s.phase = Some(Phase::Pending);
    s.attempt = Some(next_attempt);
    s.next_retry_time = Some(next.clone());
    s.last_error = Some(format!("{why}: {message}"));
    s.message = Some(format!(
        "attempt {attempt} of {max} failed ({why}: {message}); attempt {next_attempt} starts at {}",
        next.0
    ));
    s.set_ready(
        ConditionStatus::False,
        "RetryScheduled",
        &format!("attempt {next_attempt} of {max} starts at {}", next.0),
        &now,
    );
    patch_status(ctx, m, &s).await?;
    ctx.metrics.retries.inc();
    ctx.event_about(
        m,
        Some(job_ref(m, &names::job(&m.name_any(), attempt))),
        EventType::Warning,
        reason::RETRY_SCHEDULED,
        action::RETRY,
        format!(
            "attempt {attempt} of {max} failed ({why}: {message}); attempt {next_attempt} in {}",
            crd::format_duration(backoff)
        ),
    )
    .await;
    Ok(Action::requeue(backoff))
}

/// Ends the migration as Failed.
async fn fail(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    ready_reason: &str,
    last_error: &str,
    message: String,
) -> Result<Action> {
    let now = ctx.now();
    delete_attempt_secret(m, ctx, status).await?;
    let mut s = OperatorStatus::carried_over(status);
    s.phase = Some(Phase::Failed);
    s.completion_time = Some(now.clone());
    s.next_retry_time = None;
    s.last_error = Some(last_error.to_owned());
    s.message = Some(message.clone());
    s.set_ready(ConditionStatus::False, ready_reason, &message, &now);
    patch_status(ctx, m, &s).await?;
    ctx.event(
        m,
        EventType::Warning,
        reason::FAILED,
        action::COMPLETE,
        message,
    )
    .await;
    Ok(Action::await_change())
}

/// The runner finished: record the target VM in the inventory and end as Ready.
async fn succeed(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    outcome_vm_id: Option<String>,
) -> Result<Action> {
    let now = ctx.now();
    let ns = namespace(m)?;
    let vm_id = status.target_vm_id.clone().or(outcome_vm_id.clone());
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vm = builder::target_vm(m)?;
    let inventory = match vms
        .patch(
            &m.spec.target_name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&vm),
        )
        .await
    {
        Ok(_) => {
            if let Some(id) = &vm_id {
                vms.patch_status(
                    &m.spec.target_name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(builder::target_vm_status(id)),
                )
                .await?;
            }
            Ok(())
        }
        Err(e) if objects::api_code(&e) == Some(409) => Err(e),
        Err(e) => return Err(e.into()),
    };
    if let Err(e) = &inventory {
        ctx.event(
            m,
            EventType::Warning,
            reason::TARGET_INVENTORY_FAILED,
            action::COMPLETE,
            format!(
                "VirtualMachine {ns}/{} exists and belongs to something else; not changed: {e}",
                m.spec.target_name
            ),
        )
        .await;
    }
    delete_attempt_secret(m, ctx, status).await?;

    let target = &m.spec.target_provider_ref;
    let message = format!(
        "migrated to Provider {} as {}{}",
        target.name,
        m.spec.target_name,
        vm_id
            .as_ref()
            .map(|id| format!(" (id {id})"))
            .unwrap_or_default()
    );
    let mut s = OperatorStatus::carried_over(status);
    s.phase = Some(Phase::Ready);
    s.completion_time = Some(now.clone());
    s.next_retry_time = None;
    s.message = Some(message.clone());
    if status.target_vm_id.is_none() {
        s.target_vm_id = outcome_vm_id;
    }
    s.set_ready(ConditionStatus::True, "Succeeded", &message, &now);
    patch_status(ctx, m, &s).await?;
    ctx.event(
        m,
        EventType::Normal,
        reason::SUCCEEDED,
        action::COMPLETE,
        message,
    )
    .await;
    Ok(Action::await_change())
}
