//! A retry asked for by the user: a new value of the annotation `virtrigaud.io/retry` on a Failed
//! VMMigration starts a new attempt (attempt + 1, also beyond `retryPolicy.maxAttempts`: the user
//! asked) with the same spec:
//!
//! ```sh
//! kubectl annotate vmmigration <name> virtrigaud.io/retry="$(date +%s)" --overwrite
//! ```
//!
//! The operator clears `completionTime`, sets phase Pending and the Ready reason `RetryRequested`,
//! and changes none of the runner's fields: the staged disks (`disks[].stagedUrl`, `sha256`), an
//! imported disk, a kept snapshot and the source's power record stay, and the new runner resumes
//! from them as any later attempt does. A migration whose failure discarded its partial target
//! (a terminal error or the last attempt) still has its staged objects, so it resumes from those.
//! The new attempt waits for a slot like any other (see [`crate::queue`]) and is refused, like any
//! later attempt, when a pinned reference changed.
//!
//! The value acted on is recorded in `status.retryRequest`, so a value is acted on once (a restarted
//! operator does not retry again). A new value on a Ready migration, or on one still running, is
//! refused: an Event `RetryRefused`, the value recorded, nothing else. While the runner has written
//! Failed but the operator has not judged its Job yet, the request waits for that judgement. A value
//! already there when the migration starts (a manifest carrying the annotation) is recorded, not
//! acted on.

use crd::{ConditionStatus, Phase, VMMigration, VMMigrationStatus, annotations};
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::Context;
use crate::apply::{attempt_label, patch_status};
use crate::error::Result;
use crate::events::{action, reason};
use crate::status::OperatorStatus;

/// The retry annotation's value when it is one the operator has not acted on yet.
pub fn requested(m: &VMMigration, status: &VMMigrationStatus) -> Option<String> {
    let value = m.annotations().get(annotations::RETRY)?;
    (status.retry_request.as_deref() != Some(value.as_str())).then(|| value.clone())
}

/// Acts on retry request `value`: a Failed migration gets its next attempt (the status is updated
/// in place, so the rest of the reconcile launches it); any other is refused with an Event.
pub async fn on_request(
    m: &VMMigration,
    ctx: &Context,
    status: &mut VMMigrationStatus,
    value: &str,
) -> Result<()> {
    let finished = status.completion_time.is_some();
    let mut s = OperatorStatus::carried_over(status);
    s.retry_request = Some(value.to_owned());
    if status.attempt.is_none() {
        // Set before the migration started (a manifest carrying the annotation): not a request.
        patch_status(ctx, m, &s).await?;
        s.merge_into(status);
        return Ok(());
    }
    let refusal = match status.phase {
        Some(Phase::Failed) if finished => None,
        // The runner reported its failure; the operator's judgement of the Job comes first.
        Some(Phase::Failed) => return Ok(()),
        Some(Phase::Ready) => Some("it is Ready: there is nothing to retry".to_owned()),
        phase => Some(format!(
            "it has not failed ({}, phase {}): a retry is for a Failed migration",
            attempt_label(m, status.attempt.unwrap_or(1)),
            phase.map(|p| p.as_str()).unwrap_or("none")
        )),
    };
    let annotation = format!("{}={value:?}", annotations::RETRY);
    if let Some(why) = refusal {
        patch_status(ctx, m, &s).await?;
        s.merge_into(status);
        ctx.event(
            m,
            EventType::Warning,
            reason::RETRY_REFUSED,
            action::RETRY,
            format!("retry requested ({annotation}) and refused: {why}"),
        )
        .await;
        return Ok(());
    }

    let next = status.attempt.unwrap_or(0) + 1;
    let label = attempt_label(m, next);
    let after = status
        .last_error
        .as_deref()
        .map(|e| format!(" after {e}"))
        .unwrap_or_default();
    let now = ctx.now();
    s.phase = Some(Phase::Pending);
    s.completion_time = None;
    s.next_retry_time = None;
    s.attempt = Some(next);
    let message = format!("retry requested ({annotation}): {label} starts{after}");
    s.message = Some(message.clone());
    s.set_ready(
        ConditionStatus::False,
        reason::RETRY_REQUESTED,
        &format!("{label} starts on request ({annotation})"),
        &now,
    );
    patch_status(ctx, m, &s).await?;
    s.merge_into(status);
    ctx.event(
        m,
        EventType::Normal,
        reason::RETRY_REQUESTED,
        action::RETRY,
        format!("{message}; the staged disks and the status the runner resumes from are kept"),
    )
    .await;
    Ok(())
}
