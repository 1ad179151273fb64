//! Settling: finished batches committed in order with the cursor.

use super::batch::BatchResult;
use super::counts::apply_counts;
use super::deadline::AbortOnDrop;
use super::error::RunError;
use super::send::describe_failure;
use super::{RunSummary, Stop};
use crate::config::ModelConfig;
use crate::state::{LockProof, MayBeRefused, RunCounters, Settlement, StateStore};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::warn;

/// Commits settled batches in order on its own task, so commits overlap with sending: the
/// cursor, refusals, run counters, and the acknowledged events the ledger writer handed back
/// (its fallback: the settler writes no ledger row of its own choosing). Batches that finish close together are merged into one transaction (group commit).
pub(super) struct Settler {
    tx: Option<mpsc::Sender<SettleJob>>,
    task: AbortOnDrop<Result<(), RunError>>,
    failed: Arc<std::sync::Mutex<Option<RunError>>>,
}

pub(super) struct SettleJob {
    pub(super) settlement: Settlement,
    pub(super) counters: RunCounters,
}

impl Settler {
    pub(super) fn start(
        state: StateStore,
        model: String,
        run_id: Option<i64>,
        refusals: Arc<MayBeRefused>,
        lock: LockProof,
    ) -> Settler {
        let (tx, mut rx) = mpsc::channel::<SettleJob>(2);
        let failed = Arc::new(std::sync::Mutex::new(None));
        let failed_task = failed.clone();
        let task = AbortOnDrop::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut merged = first.settlement;
                let mut counters = first.counters;
                while merged.delivered.len() < 20_000 {
                    match rx.try_recv() {
                        Ok(next) => {
                            merged.absorb(next.settlement);
                            counters = next.counters;
                        }
                        Err(_) => break,
                    }
                }
                merged.clear_refused = Some(refusals.clone());
                // Once this run has refused a row, a later delivery of that row in this run (it
                // was fixed, or moved to a new stage) must clear the refusal, even when the
                // model had none when the run started.
                if !merged.refused.is_empty() {
                    refusals.note(merged.refused.iter().map(|r| r.row_key.as_slice()));
                }
                let Some(id) = run_id else { continue };
                if let Err(e) = state
                    .settle_holding(&model, id, &merged, &counters, lock)
                    .await
                {
                    let failure = RunError::Settle(Arc::new(e));
                    *failed_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure.clone());
                    return Err(failure);
                }
            }
            Ok(())
        });
        Settler {
            tx: Some(tx),
            task,
            failed,
        }
    }

    pub(super) fn failure(&self) -> Option<RunError> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) async fn submit(
        &self,
        settlement: Settlement,
        counters: &RunCounters,
    ) -> Result<(), RunError> {
        let job = SettleJob {
            settlement,
            counters: counters.clone(),
        };
        match &self.tx {
            Some(tx) if tx.send(job).await.is_ok() => Ok(()),
            _ => Err(self.failure().unwrap_or(RunError::StateWriterStopped)),
        }
    }

    pub(super) async fn finish(mut self) -> Result<(), RunError> {
        self.tx.take();
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(RunError::StateWriterPanicked(e.to_string())),
        }
    }
}

/// Hands a finished batch to the settler, in order; a failed batch stops the run.
pub(super) async fn forward(
    settler: &Settler,
    model: &ModelConfig,
    api_version: &str,
    summary: &mut RunSummary,
    done: Result<BatchResult, tokio::task::JoinError>,
) -> Result<(), Stop> {
    let mut r = done.map_err(|e| Stop::Failed(RunError::BatchTaskStopped(e.to_string())))?;
    summary.counters.requests += r.requests;
    summary.counters.retries += r.retries;
    if let Some(err) = r.error.take() {
        let stop = if r.stopped_by_shutdown {
            Stop::Shutdown
        } else {
            Stop::Failed(RunError::Sink {
                class: err.class(),
                message: describe_failure(model, api_version, &err),
            })
        };
        record_acks_only(settler, summary, r).await;
        return Err(stop);
    }
    let BatchResult {
        batch,
        delivered,
        recorded,
        meta_refused,
        coverage,
        ..
    } = r;
    let mut refused = batch.refused;
    refused.extend(meta_refused);
    let settlement = Settlement {
        position: batch.last,
        delivered,
        recorded,
        refused,
        already_sent: batch.already_sent,
        changed: batch.changed,
        clear_refused: None,
    };
    apply_counts(&mut summary.counters, &settlement, &coverage);
    settler
        .submit(settlement, &summary.counters)
        .await
        .map_err(Stop::Failed)
}

/// Records acknowledged events in the ledger without moving the cursor (the batch, or one
/// before it, failed): a later run then does not send them again.
pub(super) async fn record_acks_only(settler: &Settler, summary: &mut RunSummary, r: BatchResult) {
    if r.delivered.is_empty() && r.recorded.is_empty() {
        return;
    }
    summary.counters.events_sent += (r.delivered.len() + r.recorded.len()) as i64;
    let settlement = Settlement {
        position: None,
        delivered: r.delivered,
        recorded: r.recorded,
        refused: vec![],
        already_sent: vec![],
        changed: vec![],
        clear_refused: None,
    };
    if let Err(e) = settler.submit(settlement, &summary.counters).await {
        warn!(error = %e, "could not record acknowledged events of a failed run");
    }
}
