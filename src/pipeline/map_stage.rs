//! The mapping stage: chunks of rows to events on the mapping threads, with what the
//! ledger knows of them.

use super::RunMode;
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
    /// Fingerprints of the chunk's events already delivered.
    pub(super) ledger: HashMap<String, String>,
    /// Re-read rows (lookback) already recorded as refused.
    pub(super) known_refusals: HashSet<Vec<String>>,
}

pub(super) type MappedChunk = Result<MappedChunkData, String>;

/// Maps chunks on blocking threads, two at a time (order kept), and looks their event ids up
/// in the ledger, so the batching loop only assembles batches.
pub(super) async fn map_stage(
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
                .map_err(|e| format!("cannot read the delivery ledger ({e})"))?
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
        state
            .refused_among(&model, &keys)
            .await
            .map_err(|e| e.to_string())?
    } else {
        HashSet::new()
    };
    Ok(MappedChunkData {
        rows,
        outcomes,
        dropped,
        ledger,
        known_refusals,
    })
}
