//! The migration's life while it exists: start it, launch one runner Job per attempt, judge each
//! finished Job, retry transient failures after a backoff, and finish as Ready (creating the target
//! VirtualMachine object) or Failed.
//!
//! Each step reads what it needs from the API server (the Job of the current attempt, its pods) and
//! the VMMigration status, so a restarted operator continues exactly where the last one stopped.

use std::time::Duration;

use crd::{ConditionStatus, Phase, VMMigration, VMMigrationStatus, VirtualMachine};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
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
use crate::status::{FIELD_MANAGER, OperatorStatus};
use crate::verdict::{self, Verdict};
use crate::{Context, names};

/// Safety re-check of a running Job (Job changes trigger a reconcile anyway).
pub const RECHECK: Duration = Duration::from_secs(300);
/// How often a missing reference is looked for again during the grace period.
pub const REFERENCE_RETRY: Duration = Duration::from_secs(10);

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
    if status.next_retry_time.is_some() {
        // The Job of this attempt exists (an earlier process created it): the wait is over.
        clear_retry_time(m, ctx, &status).await?;
    }
    if !verdict::finished(&job) {
        return Ok(Action::requeue(RECHECK));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace(m)?);
    let pods = pods
        .list(&ListParams::default().labels(&builder::attempt_pod_selector(&m.name_any(), attempt)))
        .await?;
    match verdict::judge(&job, &pods.items) {
        Verdict::Running => Ok(Action::requeue(RECHECK)),
        Verdict::Succeeded { target_vm_id } => succeed(m, ctx, &status, target_vm_id).await,
        Verdict::Failed {
            retryable: true,
            reason,
            message,
        } if attempt < max_attempts(m) => {
            schedule_retry(m, ctx, &status, attempt, &reason, &message).await
        }
        Verdict::Failed {
            retryable,
            reason,
            message,
        } => {
            let why = if retryable {
                format!(
                    "attempt {attempt} of {} failed ({reason}: {message}); no attempts left",
                    max_attempts(m)
                )
            } else {
                format!("attempt {attempt} failed with a terminal error ({reason}: {message})")
            };
            let ready_reason = if retryable {
                "RetriesExhausted"
            } else {
                reason.as_str()
            };
            fail(
                m,
                ctx,
                &status,
                ready_reason,
                &format!("{reason}: {message}"),
                why,
            )
            .await
        }
    }
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
    let job = builder::runner_job(m, &ctx.settings, kind)?;
    objects::create(&Api::<Job>::namespaced(ctx.client.clone(), &ns), &job).await
}

/// Launches the Job of the current attempt.
async fn launch(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    kind: &JobKind,
) -> Result<Action> {
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
    if created == Created::New {
        ctx.metrics.job_launched("migrate");
        ctx.event_about(
            m,
            Some(job_ref(m, &kind.name)),
            EventType::Normal,
            reason::JOB_LAUNCHED,
            action::LAUNCH,
            format!(
                "attempt {} of {}: runner Job {}",
                kind.attempt,
                max_attempts(m),
                kind.name
            ),
        )
        .await;
    }
    if status.next_retry_time.is_some() {
        clear_retry_time(m, ctx, status).await?;
    }
    Ok(Action::requeue(RECHECK))
}

/// Pins the resolved references at the first launch; later, `Err` says what changed since.
async fn pinned(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
    resolved: &Resolved,
) -> Result<std::result::Result<(), String>> {
    let current = resolved.pins();
    if status.references.is_empty() {
        let mut s = OperatorStatus::carried_over(status);
        s.references = current;
        patch_status(ctx, m, &s).await?;
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

/// Removes nextRetryTime (server-side apply drops the field the operator no longer sends).
async fn clear_retry_time(
    m: &VMMigration,
    ctx: &Context,
    status: &VMMigrationStatus,
) -> Result<()> {
    let mut s = OperatorStatus::carried_over(status);
    s.next_retry_time = None;
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
