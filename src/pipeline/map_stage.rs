//! The mapping stage: chunks of rows to events on the mapping threads, with what the
//! ledger knows of them.

use super::batch::ChunkKnowledge;
use super::deadline::AbortOnDrop;
use super::error::RunError;
use super::taken_ids::Older;
use super::{RunMode, SyncContext};
use crate::mapping::{MappedEvent, ModelPlan, Refusal};
use crate::source::SourceRow;
use crate::state::StateStore;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A chunk of rows with what became of each, and what the ledger knows of them.
pub(super) struct MappedChunkData {
    pub(super) rows: Vec<SourceRow>,
    pub(super) outcomes: Vec<Result<MappedEvent, Refusal>>,
    pub(super) dropped: Vec<crate::mapping::DroppedValue>,
    /// What the ledger and the refused rows say of them (`older` is left to the batching
    /// loop, which alone knows the ids taken so far).
    pub(super) known: ChunkKnowledge,
}

pub(super) type MappedChunk = Result<MappedChunkData, RunError>;

/// Starts the mapping stage on the reader's chunks. Rows read in this run cannot be in the
/// ledger when the model has never delivered an event (a first backfill): then the per-chunk
/// lookups are skipped.
pub(super) async fn start(
    ctx: &SyncContext,
    model: &str,
    mode: RunMode,
    plan: Arc<ModelPlan>,
    rx_rows: mpsc::Receiver<Vec<SourceRow>>,
) -> Result<(AbortOnDrop<()>, mpsc::Receiver<MappedChunk>), RunError> {
    let ledger_state = if ctx
        .state
        .has_deliveries(model)
        .await
        .map_err(RunError::state_read("the delivery ledger"))?
    {
        Some(ctx.state.clone())
    } else {
        None
    };
    let (tx_mapped, rx_mapped) = mpsc::channel::<MappedChunk>(2);
    let mapper = AbortOnDrop::spawn(map_stage(
        plan,
        ledger_state,
        ctx.state.clone(),
        model.to_string(),
        mode,
        rx_rows,
        tx_mapped,
    ));
    Ok((mapper, rx_mapped))
}

/// Maps chunks on blocking threads, two at a time (order kept), and looks their event ids up
/// in the ledger, so the batching loop only assembles batches.
async fn map_stage(
    plan: Arc<ModelPlan>,
    ledger: Option<StateStore>,
    state: StateStore,
    model: String,
    mode: RunMode,
    mut rx_rows: mpsc::Receiver<Vec<SourceRow>>,
    tx_mapped: mpsc::Sender<MappedChunk>,
) {
    let mut jobs = FuturesOrdered::new();
    let mut input_open = true;
    loop {
        tokio::select! {
            rows = rx_rows.recv(), if input_open && jobs.len() < 2 => match rows {
                Some(rows) => {
                    let plan = plan.clone();
                    let ledger = ledger.clone();
                    let state = state.clone();
                    let model = model.clone();
                    jobs.push_back(async move { annotate(plan, ledger, state, model, mode, rows).await });
                }
                None => input_open = false,
            },
            Some(done) = jobs.next(), if !jobs.is_empty() => {
                if tx_mapped.send(done).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

pub(super) async fn annotate(
    plan: Arc<ModelPlan>,
    ledger: Option<StateStore>,
    state: StateStore,
    model: String,
    mode: RunMode,
    rows: Vec<SourceRow>,
) -> MappedChunk {
    let now = chrono::Utc::now().timestamp();
    let (rows, outcomes, dropped) = crate::map_pool::run(move || {
        let mut rows = rows;
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut dropped = Vec::new();
        for row in &mut rows {
            let out = plan.map_row(&row.values, &row.key, now);
            // The values are not needed past mapping: freed here, on a mapping thread, not
            // by the single task that batches the events.
            row.values = Vec::new();
            dropped.extend(out.dropped);
            outcomes.push(out.result);
        }
        (rows, outcomes, dropped)
    })
    .await?;
    let ledger = match ledger {
        Some(ledger) => {
            let ids: Vec<String> = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok().map(|e| e.event_id.clone()))
                .collect();
            ledger
                .delivered_fingerprints(&model, &ids)
                .await
                .map_err(RunError::state_read("the delivery ledger"))?
        }
        None => HashMap::new(),
    };
    let known_refusals = if mode == RunMode::Incremental && rows.iter().any(|r| r.reread) {
        let keys: Vec<Vec<String>> = rows
            .iter()
            .zip(&outcomes)
            .filter(|(r, _)| r.reread)
            .map(|(r, _)| r.key.clone())
            .collect();
        state.refused_among(&model, &keys).await?
    } else {
        HashSet::new()
    };
    Ok(MappedChunkData {
        rows,
        outcomes,
        dropped,
        known: ChunkKnowledge {
            ledger,
            known_refusals,
            older: Older::new(),
        },
    })
}
