//! Deleting a migration. A finished, successful migration only loses its helper objects (the target
//! VM stays). Otherwise, when a runner ever ran: stop the running Job, launch a cleanup run of the
//! runner (same image, `cleanup` mode) that removes staged objects and the source snapshot per
//! cleanupPolicy, wait for it, then delete every Job, Secret, RoleBinding, Role and ServiceAccount of
//! the migration and let the finalizer go.
//!
//! Deletion never hangs on something that cannot happen: a runner that does not stop within
//! [`STOP_GRACE`] is left to the garbage collector, and a cleanup run that cannot be created (its
//! references are gone, or the namespace is terminating) is skipped with a Warning Event.

use std::time::Duration;

use crd::{Phase, VMMigration, labels};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::apply::{create_run, owner_uid, until};
use crate::builder::{self, COMPONENT_RUNNER, JobKind};
use crate::error::{Error, Result};
use crate::events::{action, reason};
use crate::objects::{self, Created};
use crate::resolve;
use crate::verdict::{self, Verdict};
use crate::{Context, finalizer, names};

/// How long deletion waits for a stopped runner's pod to go away before carrying on.
pub const STOP_GRACE: Duration = Duration::from_secs(300);
/// How often a stopping runner or a cleanup run is checked (Job changes also trigger a reconcile).
pub const POLL: Duration = Duration::from_secs(5);

/// Whether cleanup is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Everything is removed: drop the finalizer.
    Done,
    /// Not yet: reconcile again.
    Wait(Action),
}

fn is_component(job: &Job, component: &str) -> bool {
    job.labels().get(labels::COMPONENT).map(String::as_str) == Some(component)
}

fn forbidden(e: &Error) -> bool {
    matches!(e, Error::Kube(k) if matches!(objects::api_code(k), Some(403) | Some(404)))
}

/// One reconcile of a migration being deleted.
pub async fn cleanup(m: &VMMigration, ctx: &Context) -> Result<Progress> {
    let name = m.name_any();
    let ns = m.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let status = m.status.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs = jobs_api
        .list(&ListParams::default().labels(&builder::migration_selector(&name)))
        .await?
        .items;

    let succeeded = status.completion_time.is_some() && status.phase == Some(Phase::Ready);
    // A runner may have run even when no runner Job is left: stopping one (below) deletes it, and the
    // next reconcile must still launch the cleanup run. The attempt counter remembers that one started.
    let runner_ran =
        status.attempt.is_some() || jobs.iter().any(|j| is_component(j, COMPONENT_RUNNER));
    if !succeeded && runner_ran {
        if let Some(wait) = stop_runners(m, ctx, &jobs_api, &jobs).await? {
            return Ok(Progress::Wait(wait));
        }
        let cleanup_name = names::cleanup(&name);
        match jobs.iter().find(|j| j.name_any() == cleanup_name) {
            None => {
                if launch_cleanup(m, ctx).await? {
                    return Ok(Progress::Wait(Action::requeue(POLL)));
                }
            }
            Some(job) if !verdict::finished(job) => {
                return Ok(Progress::Wait(Action::requeue(POLL)));
            }
            Some(job) => match verdict::judge(job, &[]) {
                Verdict::Succeeded { .. } => {
                    ctx.event(
                        m,
                        EventType::Normal,
                        reason::CLEANUP_SUCCEEDED,
                        action::CLEANUP,
                        format!("cleanup Job {cleanup_name} succeeded"),
                    )
                    .await
                }
                _ => {
                    ctx.event(
                        m,
                        EventType::Warning,
                        reason::CLEANUP_FAILED,
                        action::CLEANUP,
                        format!(
                            "cleanup Job {cleanup_name} failed; staged objects or the source snapshot may remain (see its pod's log)"
                        ),
                    )
                    .await
                }
            },
        }
    }

    delete_owned(m, ctx, &jobs_api, &jobs, status.attempt).await?;
    Ok(Progress::Done)
}

/// Deletes every running runner Job (foreground, so the Job stays until its pod is gone). Returns
/// `Some(wait)` while one is still stopping.
async fn stop_runners(
    m: &VMMigration,
    ctx: &Context,
    api: &Api<Job>,
    jobs: &[Job],
) -> Result<Option<Action>> {
    let active: Vec<&Job> = jobs
        .iter()
        .filter(|j| is_component(j, COMPONENT_RUNNER) && !verdict::finished(j))
        .collect();
    if active.is_empty() {
        return Ok(None);
    }
    let now = ctx.now();
    let deleting_since = m
        .metadata
        .deletion_timestamp
        .clone()
        .unwrap_or_else(|| now.clone());
    if until(&deleting_since, &now) >= STOP_GRACE {
        tracing::warn!(migration = %m.name_any(), "runner did not stop in time; cleaning up anyway");
        return Ok(None);
    }
    for job in active {
        if job.metadata.deletion_timestamp.is_none() {
            objects::delete_object(api, job, &owner_uid(m)?, PropagationPolicy::Foreground).await?;
            ctx.event_about(
                m,
                Some(crate::apply::job_ref(m, &job.name_any())),
                EventType::Normal,
                reason::STOPPING,
                action::CLEANUP,
                format!("stopping runner Job {}", job.name_any()),
            )
            .await;
        }
    }
    Ok(Some(Action::requeue(POLL)))
}

/// Whether `m` is still there as this reconcile read it: the same UID, still held by the finalizer.
/// A reconcile of a stale cached copy, after the finalizer went, must not launch a cleanup run (and
/// make its Secret, Job and runner identity again) for a migration that is gone.
async fn still_held(m: &VMMigration, ctx: &Context) -> Result<bool> {
    let ns = m.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<VMMigration> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(api.get_opt(&m.name_any()).await?.is_some_and(|now| {
        now.uid() == m.uid() && now.finalizers().iter().any(|f| f == finalizer::FINALIZER)
    }))
}

/// Creates the cleanup run. Returns false when it cannot be run (and says why in an Event); true
/// when it runs, or when the migration is already gone (nothing to launch, nothing to wait for).
async fn launch_cleanup(m: &VMMigration, ctx: &Context) -> Result<bool> {
    if !still_held(m, ctx).await? {
        tracing::info!("{} is gone already: no cleanup run", m.name_any());
        return Ok(true);
    }
    let skip = |why: String| async move {
        ctx.event(
            m,
            EventType::Warning,
            reason::CLEANUP_SKIPPED,
            action::CLEANUP,
            format!("{why}: no cleanup run; staged objects or the source snapshot may remain"),
        )
        .await;
        Ok(false)
    };
    let resolved = match resolve::resolve(&ctx.client, m).await {
        Ok(Ok(r)) => r,
        Ok(Err(missing)) => return skip(missing.to_string()).await,
        Err(e) if forbidden(&e) => return skip(e.to_string()).await,
        Err(e) => return Err(e),
    };
    // (a migration launched before references were pinned has none to compare)
    let pinned = m
        .status
        .as_ref()
        .map(|s| s.references.as_slice())
        .unwrap_or_default();
    if !pinned.is_empty()
        && let Err(changes) = crate::apply::check_pins(pinned, &resolved.pins())
    {
        // the cleanup run would get the credentials of objects the migration was not admitted with
        return skip(format!("{changes} since the migration started")).await;
    }
    let attempt = m.status.as_ref().and_then(|s| s.attempt).unwrap_or(1);
    let kind = JobKind::cleanup(&m.name_any(), attempt);
    match create_run(m, ctx, &resolved, &kind).await {
        Ok(Created::New) => {
            ctx.metrics.job_launched("cleanup");
            ctx.event(
                m,
                EventType::Normal,
                reason::CLEANUP_STARTED,
                action::CLEANUP,
                format!("cleanup Job {}", kind.name),
            )
            .await;
            Ok(true)
        }
        Ok(Created::Existing) => Ok(true),
        Err(e) if forbidden(&e) || matches!(e, Error::NotOwned { .. }) => skip(e.to_string()).await,
        Err(e) => Err(e),
    }
}

/// Deletes the migration's Jobs (their pods in the background), Secrets, RoleBinding, Role and
/// ServiceAccount. The target VirtualMachine is not owned and stays.
async fn delete_owned(
    m: &VMMigration,
    ctx: &Context,
    jobs_api: &Api<Job>,
    jobs: &[Job],
    attempt: Option<i32>,
) -> Result<()> {
    let name = m.name_any();
    let ns = m.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let owner = owner_uid(m)?;
    let background = || PropagationPolicy::Background;
    for job in jobs {
        objects::delete_object(jobs_api, job, &owner, background()).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(attempt) = attempt {
        let secret = names::attempt_secret(&name, attempt);
        objects::delete(&secrets, &secret, &owner, background()).await?;
    }
    objects::delete(&secrets, &names::cleanup(&name), &owner, background()).await?;
    let identity = names::runner_identity(&name);
    let client = || ctx.client.clone();
    let rolebindings = Api::<RoleBinding>::namespaced(client(), &ns);
    objects::delete(&rolebindings, &identity, &owner, background()).await?;
    let roles = Api::<Role>::namespaced(client(), &ns);
    objects::delete(&roles, &identity, &owner, background()).await?;
    let accounts = Api::<ServiceAccount>::namespaced(client(), &ns);
    objects::delete(&accounts, &identity, &owner, background()).await?;
    Ok(())
}
