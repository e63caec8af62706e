//! The VirtRigaud migration operator: a small, stateless controller over `VMMigration`.
//!
//! All migration state lives in the VMMigration status and in Kubernetes objects with deterministic
//! names (see [`names`]), so the operator can be killed and restarted at any moment without changing
//! the outcome. Per attempt it launches one runner Job (see [`builder`]); the runner does the disk
//! work and reports phases and progress itself. The operator owns the start (Pending, attempt 1),
//! the report of a runner pod that cannot start (within seconds, see [`start`]), the per-Provider
//! concurrency limit (a migration beyond it waits in line, see [`queue`]), retries with exponential
//! backoff (carried by `Action::requeue`, never by sleeping) and on request (the
//! `virtrigaud.io/retry` annotation of a Failed migration, see [`retry`]), the final outcome (Ready
//! with the target VirtualMachine object, or Failed) and deletion (stop the runner, run a cleanup
//! Job, delete what it created, drop the finalizer).
//!
//! The controller reads as two functions: [`reconcile`] and [`error_policy`].

pub mod apply;
pub mod builder;
pub mod cleanup;
pub mod config;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod objects;
pub mod queue;
pub mod resolve;
pub mod retry;
pub mod runner_image;
pub mod server;
pub mod start;
pub mod status;
pub mod verdict;

#[cfg(test)]
mod fixtures;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crd::{Phase, VMMigration, labels};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

pub use config::{Args, Settings};
pub use error::{Error, Result};
use metrics::Metrics;

/// Name of the controller in Events and logs.
pub const CONTROLLER_NAME: &str = "virtrigaud-operator";
/// How long after a failed reconcile it is retried.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// Where "now" comes from (a fixed clock in tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Builder settings from the flags.
    pub settings: Settings,
    /// The controller's cache of every VMMigration (the migrations waiting for a slot are read
    /// from it, see [`queue`]); empty until [`Context::with_migrations`].
    pub migrations: Store<VMMigration>,
    /// Held from the slot decision to the Job's creation, so two reconciles of this process never
    /// take the same last slot of a Provider.
    launch_turn: tokio::sync::Mutex<()>,
    clock: Clock,
    /// Last pipeline phase an Event was published for, by VMMigration uid. Only deduplicates
    /// pipeline-phase Events; losing it on restart costs at most one repeated Event.
    seen_phases: Mutex<HashMap<String, Phase>>,
}

impl Context {
    /// A context using the wall clock.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        settings: Settings,
        instance: String,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.into(),
                instance: Some(instance),
            },
        );
        Context {
            client,
            recorder,
            metrics,
            settings,
            migrations: Writer::default().as_reader(),
            launch_turn: tokio::sync::Mutex::new(()),
            clock: Arc::new(Timestamp::now),
            seen_phases: Mutex::default(),
        }
    }

    /// Reads the migrations waiting for a slot from `store` (the controller's cache).
    pub fn with_migrations(mut self, store: Store<VMMigration>) -> Self {
        self.migrations = store;
        self
    }

    /// Waits for this process's turn to decide on a slot and launch (see [`queue`]).
    pub async fn launch_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.launch_turn.lock().await
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The current time.
    pub fn now(&self) -> Time {
        Time((self.clock)())
    }

    /// Publishes an Event about `m` (best effort).
    pub async fn event(
        &self,
        m: &VMMigration,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.event_about(m, None, type_, reason, action, note).await
    }

    /// Publishes an Event about `m` naming a related object (a Job).
    pub async fn event_about(
        &self,
        m: &VMMigration,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        events::publish(
            &self.recorder,
            &m.object_ref(&()),
            related,
            type_,
            reason,
            action,
            note,
        )
        .await;
    }

    /// Records `phase` as seen for `m`; true when it differs from the last one seen.
    fn phase_changed(&self, m: &VMMigration, phase: Phase) -> bool {
        let uid = m.uid().unwrap_or_default();
        let mut seen = self.seen_phases.lock().expect("phase map lock");
        seen.insert(uid, phase) != Some(phase)
    }

    fn forget(&self, m: &VMMigration) {
        let uid = m.uid().unwrap_or_default();
        self.seen_phases
            .lock()
            .expect("phase map lock")
            .remove(&uid);
    }
}

/// Drives one VMMigration one step towards its goal.
pub async fn reconcile(m: Arc<VMMigration>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciliations.inc();
    let started = Instant::now();
    let result = reconcile_inner(&m, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(m: &VMMigration, ctx: &Context) -> Result<Action> {
    let ns = m.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<VMMigration> = Api::namespaced(ctx.client.clone(), &ns);
    match finalizer::state(m) {
        finalizer::State::Add => {
            finalizer::add(&api, m).await?;
            // The patch triggers the next reconcile.
            Ok(Action::await_change())
        }
        finalizer::State::Apply => apply::apply(m, ctx).await,
        finalizer::State::Cleanup => match cleanup::cleanup(m, ctx).await? {
            cleanup::Progress::Done => {
                finalizer::remove(&api, m).await?;
                ctx.forget(m);
                Ok(Action::await_change())
            }
            cleanup::Progress::Wait(action) => Ok(action),
        },
        finalizer::State::Gone => Ok(Action::await_change()),
    }
}

/// What happens after a failed reconcile: counted by error kind, retried after [`ERROR_REQUEUE`].
pub fn error_policy(m: Arc<VMMigration>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(
        migration = %format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any()),
        error = %error,
        "reconcile failed"
    );
    ctx.metrics.reconcile_failed(error);
    Action::requeue(ERROR_REQUEUE)
}

/// Runs the operator until a signal or the loss of the Lease.
pub async fn run(args: Args) -> Result<()> {
    let mut settings = Settings::from_args(&args)?;
    let client = Client::try_default().await?;
    settings.runner_image = runner_image::resolve(
        &client,
        &settings.runner_image,
        &args.lease_namespace,
        args.pod_name.as_deref(),
    )
    .await?;
    tracing::info!("runner image {}", settings.runner_image);
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("{CONTROLLER_NAME}-{}", std::process::id()));

    let controller = Controller::new(
        Api::<VMMigration>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let migrations = controller.store();
    // A Job's change reconciles its owning migration, and for a runner Job also the first in line
    // on its Providers (a slot may have freed): see `queue::triggers`.
    let waiting = migrations.clone();
    let controller = controller.watches(
        Api::<Job>::all(client.clone()),
        watcher::Config::default().labels(&format!(
            "{}={}",
            builder::MANAGED_BY_LABEL,
            labels::MANAGED_BY
        )),
        move |job: Job| queue::triggers(&job, &waiting),
    );
    let metrics = Arc::new(Metrics::new(Some(migrations.clone())));

    let addr = SocketAddr::new(args.bind_address, args.metrics_port);
    let server = tokio::spawn(server::serve(addr, server::router(metrics.clone())));

    let mut leadership = if args.leader_election {
        Some(
            leader::acquire(
                client.clone(),
                &args.lease_namespace,
                &args.lease_name,
                &identity,
            )
            .await?,
        )
    } else {
        None
    };

    let ctx =
        Arc::new(Context::new(client, metrics, settings, identity).with_migrations(migrations));
    let controller = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(migration = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile loop"),
            }
        });

    tokio::select! {
        _ = controller => {
            tracing::info!("controller stopped");
            Ok(())
        }
        _ = async {
            match leadership.as_mut() {
                Some(l) => l.lost().await,
                None => futures::future::pending().await,
            }
        } => Err(Error::LeaseLost),
        result = server => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(Error::Config(format!("metrics server task: {e}"))),
        },
    }
}
