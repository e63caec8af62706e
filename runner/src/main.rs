//! `runner migrate` and `runner cleanup`: reads the plan, builds the providers, stage and status
//! writer, runs, writes the outcome to the termination message and exits with the contract's code.

use clap::{Parser, Subcommand};
use crd::VMMigration;
use crd::plan::{RunnerMode, RunnerPlan};
use kube::Api;
use runner::credentials::Credentials;
use runner::endpoint::Guard;
use runner::phases::{self, Pipeline};
use runner::plan::{self, Paths};
use runner::provider::{self, Source, Target};
use runner::status::{KubeStatus, StatusWriter};
use runner::storage::{self, StageOptions, UploadLedger};
use runner::{Error, Result};

/// The VirtRigaud migration runner (one process per migration attempt).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Log format and filter (`--log-format`, `--log-level`, or VRG_LOG_FORMAT / VRG_LOG_LEVEL from
    /// the operator's Job).
    #[command(flatten)]
    log: crd::logging::LogSettings,
}

#[derive(Subcommand, Clone, Copy)]
enum Mode {
    /// Run the migration pipeline and patch the VMMigration status.
    Migrate,
    /// Remove what a migration left behind: staged objects, snapshot, partial target.
    Cleanup,
}

#[tokio::main]
async fn main() {
    let mut cli = Cli::parse();
    // The runner's lines are read by users (`kubectl logs`): no module paths.
    cli.log.with_target = false;
    if let Err(e) = crd::logging::init(&cli.log, "info") {
        eprintln!("runner: {e}");
        std::process::exit(crd::plan::EXIT_TERMINAL);
    }
    let paths = Paths::from_env();
    let result = run(cli.mode, &paths).await;
    let outcome = plan::outcome(&result);
    match &result {
        Ok(_) => tracing::info!("finished: {}", outcome.message),
        Err(_) => tracing::error!(
            "failed ({}, {}): {}",
            outcome.reason,
            if outcome.retryable {
                "retryable"
            } else {
                "terminal"
            },
            outcome.message
        ),
    }
    if let Err(e) = plan::write_outcome(&paths.termination_log, &outcome) {
        tracing::warn!("termination message not written: {e}");
    }
    std::process::exit(plan::exit_code(&outcome));
}

async fn run(mode: Mode, paths: &Paths) -> Result<Option<String>> {
    let plan = plan::load(&paths.plan_dir)?;
    let expected = match mode {
        Mode::Migrate => RunnerMode::Migrate,
        Mode::Cleanup => RunnerMode::Cleanup,
    };
    if plan.mode != expected {
        return Err(Error::Plan(format!(
            "the plan is for {:?}, the runner was started for {expected:?}",
            plan.mode
        )));
    }
    tracing::info!(
        "{expected:?} {}/{} attempt {}: {} on {} -> {} on {}",
        plan.migration.namespace,
        plan.migration.name,
        plan.attempt,
        plan.source_vm.name,
        plan.source.name,
        plan.target_name,
        plan.target.name
    );
    let credentials = Credentials::load(&paths.plan_dir)?;
    let client = kube::Client::try_default().await?;
    let api: Api<VMMigration> = Api::namespaced(client, &plan.migration.namespace);
    let migration = api.get(&plan.migration.name).await?;
    if migration.metadata.uid.as_deref() != Some(plan.migration.uid.as_str()) {
        return Err(Error::Plan(format!(
            "VMMigration {} was replaced since this runner was planned",
            plan.migration.name
        )));
    }
    let previous = migration.status.unwrap_or_default();
    match mode {
        Mode::Migrate => {
            let sink = KubeStatus::new(api, plan.migration.name.clone());
            let uploads = UploadLedger::seeded(&previous.uploads);
            let mut status =
                StatusWriter::new(Box::new(sink), &previous).mirror_uploads(uploads.clone());
            match connect(&plan, &credentials, uploads).await {
                Ok((source, target, stage)) => {
                    let pipeline =
                        Pipeline::new(plan, source, target, stage, status, &paths.scratch)
                            .scratch_limit(paths.scratch_limit);
                    pipeline.run().await.map(Some)
                }
                Err(e) => {
                    if let Err(write) = status.fail(crd::Phase::Validating, &e).await {
                        tracing::warn!("could not record the failure in the status: {write}");
                    }
                    Err(e)
                }
            }
        }
        Mode::Cleanup => {
            let uploads = UploadLedger::seeded(&previous.uploads);
            let (source, target, stage) = connect(&plan, &credentials, uploads).await?;
            let result = phases::cleanup(&plan, &previous, &*source, &*target, &*stage).await;
            source.close().await;
            target.close().await;
            result.map(|()| None)
        }
    }
}

type Connected = (Box<dyn Source>, Box<dyn Target>, Box<dyn storage::Stage>);

async fn connect(
    plan: &RunnerPlan,
    credentials: &Credentials,
    uploads: UploadLedger,
) -> Result<Connected> {
    let guard = Guard::for_plan(plan);
    let source = provider::source(&plan.source, credentials, guard)?;
    let target = provider::target(&plan.target, credentials, guard)?;
    let options = StageOptions {
        guard,
        uploads,
        ..StageOptions::default()
    };
    let stage = storage::open(&plan.storage, credentials, &options).await?;
    Ok((source, target, stage))
}
