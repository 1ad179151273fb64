//! One model run: lock → describe → read → map → send → settle. Only this module decides,
//! from an error's class, whether to retry, split a batch, refuse rows or stop the run.

use crate::config::{Config, ModelConfig};
use crate::mapping::{ModelPlan, Refusal};
use crate::sink::retry::RetryPolicy;
use crate::sink::GraphClient;
use crate::source::{SourceRow, Warehouse};
use crate::state::{LockProof, RunCounters, StateStore};
use batch::{duplicate_key_refusal, refused_row, Batch, BatchResult, PendingEvent};
use counts::{count_dry, Coverage};
use deadline::{passed_deadline, AbortOnDrop};
pub use deadline::{OverdueRun, RunRegistry};
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use ledger_writer::LedgerWriter;
use map_stage::{map_stage, MappedChunk, MappedChunkData};
use observer::RunObserver;
use pacing::{Pacer, RequestSlots};
use read::{count_unreadable, read_ranges};
use send::BatchSender;
use settle::{forward, record_acks_only, Settler};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taken_ids::{Older, Taken, TakenIds};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

mod batch;
mod counts;
pub mod deadline;
pub mod ledger_writer;
mod map_stage;
pub mod observer;
mod pacing;
mod read;
mod send;
mod settle;
mod taken_ids;

/// Everything a run needs, shared by the scheduler's model tasks.
#[derive(Clone)]
pub struct SyncContext {
    pub config: Arc<Config>,
    pub warehouse: Warehouse,
    pub state: StateStore,
    pub graph: GraphClient,
    pub cancel: CancellationToken,
    /// The runs in progress, for `/readyz`.
    pub runs: RunRegistry,
}

/// What a run reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Rows after the model's cursor (plus the lookback window).
    #[default]
    Incremental,
    /// The model's refused rows, re-read by key; the cursor does not move.
    RetryRefused,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub mode: RunMode,
    /// Backfill: read rows whose cursor is at least this value, instead of after the cursor.
    pub from: Option<String>,
    /// `schedule`, `manual`, `demo`, ...
    pub trigger: String,
    /// Map everything, send nothing, move no cursor.
    pub dry_run: bool,
    /// Overrides the model's and the global test_event_code.
    pub test_event_code: Option<String>,
    /// Told about rows read, batches done, retries and the run's end (progress, metrics).
    pub observer: Option<Arc<dyn RunObserver>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// Stopped by shutdown after settling what was in flight.
    Cancelled,
    /// Another process holds the model's lock.
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub model: String,
    pub run_id: Option<i64>,
    pub status: RunStatus,
    pub counters: RunCounters,
    pub error: Option<String>,
    /// The first event sent (hashed, as sent), for demos and previews.
    pub sample_event: Option<String>,
    pub elapsed: Duration,
}

/// Why a run stops early. Either way the cursor stays at the last acknowledged batch.
pub(super) enum Stop {
    Failed(String),
    /// Shutdown came while a batch waited to retry. Meta accepted none of it, so there is
    /// nothing to settle, and the next run sends it again.
    Shutdown,
}

/// Runs one model once, now.
pub async fn sync_model_once(
    ctx: &SyncContext,
    model: &ModelConfig,
    opts: &RunOptions,
) -> RunSummary {
    let started = Instant::now();
    let mut summary = RunSummary {
        model: model.name.clone(),
        run_id: None,
        status: RunStatus::Failed,
        counters: RunCounters::default(),
        error: None,
        sample_event: None,
        elapsed: Duration::ZERO,
    };
    let run_deadline = ctx.config.service.run_deadline;
    let deadline = tokio::time::Instant::now() + run_deadline;
    let _running = ctx.runs.enter(&model.name, deadline);
    let lock = match tokio::time::timeout_at(deadline, ctx.state.try_lock_model(&model.name))
        .await
        .unwrap_or_else(|_| Err(timed_out("taking the model's lock")))
    {
        Ok(Some(l)) => l,
        Ok(None) => {
            info!(model = %model.name, "another capi-sync process is syncing this model; skipping");
            summary.status = RunStatus::Skipped;
            summary.error = Some("another process holds this model's lock".into());
            return summary;
        }
        Err(e) => {
            summary.error = Some(format!(
                "cannot take the model's lock in the state database ({e}); check that it is reachable (state.url, or warehouse.url when they are the same)"
            ));
            return summary;
        }
    };
    let run_id = if opts.dry_run {
        None
    } else {
        match tokio::time::timeout_at(deadline, ctx.state.start_run(&model.name, &opts.trigger))
            .await
            .unwrap_or_else(|_| Err(timed_out("recording the run's start")))
        {
            Ok(id) => Some(id),
            Err(e) => {
                summary.error = Some(format!(
                    "cannot record the run in schema `{}` ({e}); run `capi-sync migrate` and check that the database role may write there",
                    ctx.config.state.schema
                ));
                release(lock).await;
                return summary;
            }
        }
    };
    summary.run_id = run_id;
    let span = info_span!("run", model = %model.name, run_id = run_id.unwrap_or(0));
    // The reading loop stops at the deadline; what is in flight then has the grace to settle.
    // Past that, the run is dropped, and its tasks with it (see `deadline`).
    let hard_stop = deadline + ctx.config.service.shutdown_grace;
    let proof = lock.proof();
    let result = tokio::time::timeout_at(
        hard_stop,
        run_inner(ctx, model, opts, run_id, deadline, proof, &mut summary).instrument(span),
    )
    .await
    .unwrap_or_else(|_| {
        Err(passed_deadline(
            run_deadline,
            &format!(
                "and what was in flight did not settle within service.shutdown_grace ({:?}); it was stopped where it stood",
                ctx.config.service.shutdown_grace
            ),
        ))
    });
    summary.elapsed = started.elapsed();
    match result {
        Ok(status) => summary.status = status,
        Err(message) => {
            summary.status = RunStatus::Failed;
            summary.error = Some(message);
        }
    }
    if let Some(id) = run_id {
        let finish = ctx.state.finish_run(
            id,
            summary.status.as_str(),
            &summary.counters,
            summary.error.as_deref(),
        );
        // Bounded like every wait of a run: a state database that stopped answering leaves
        // the row `running`, and the next run of the model closes it as interrupted.
        match tokio::time::timeout(END_TIMEOUT, finish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(model = %model.name, error = %e, "could not record the run's end"),
            Err(_) => warn!(model = %model.name, "recording the run's end timed out"),
        }
    }
    release(lock).await;
    if let Some(o) = &opts.observer {
        o.run_finished(&summary);
    }
    info!(
        model = %model.name,
        status = summary.status.as_str(),
        rows_read = summary.counters.rows_read,
        events_sent = summary.counters.events_sent,
        rows_refused = summary.counters.rows_refused,
        rows_already_sent = summary.counters.rows_already_sent,
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "run finished"
    );
    summary
}

/// How long the run's end (its row in `runs`, the lock's session closing) may take.
const END_TIMEOUT: Duration = Duration::from_secs(15);

fn timed_out<T: From<sqlx::Error>>(what: &str) -> T {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} did not finish by the run's deadline (service.run_deadline)"),
    ))
    .into()
}

/// Closes the lock's session; if the state database does not answer, the session is dropped
/// (its socket closed), which frees the lock all the same once the server notices.
async fn release(lock: crate::state::ModelLock) {
    let _ = tokio::time::timeout(END_TIMEOUT, lock.release()).await;
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    ctx: &SyncContext,
    model: &ModelConfig,
    opts: &RunOptions,
    run_id: Option<i64>,
    deadline: tokio::time::Instant,
    lock: LockProof,
    summary: &mut RunSummary,
) -> Result<RunStatus, String> {
    let run_deadline = ctx.config.service.run_deadline;
    let (query, columns) = tokio::time::timeout_at(deadline, ctx.warehouse.describe(model))
        .await
        .map_err(|_| passed_deadline(run_deadline, "while describing the model's query"))?
        .map_err(|e| {
            format!(
                "{e}; check the model's SQL ({}); `capi-sync check {}` lists every problem",
                model.sql_origin, model.name
            )
        })?;
    let plan = Arc::new(ModelPlan::new(model, &columns).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        format!(
            "the model's columns do not map to events: {}; `capi-sync check {}` lists every problem",
            list.join("; "),
            model.name
        )
    })?);
    let plan_maps_event_id = plan.maps_event_id();
    let batch_size = model.batch_size;
    let (tx_rows, rx_rows) = mpsc::channel::<Vec<SourceRow>>(2);
    let warehouse = ctx.warehouse.clone();
    let reader_query = query.clone();
    let chunk = batch_size.max(100);
    let reader = match opts.mode {
        RunMode::Incremental => {
            let stored = ctx
                .state
                .cursor(&model.name)
                .await
                .map_err(|e| format!("cannot read the model's cursor ({e})"))?;
            let ranges = read_ranges(model, &query, stored, opts.from.clone())?;
            AbortOnDrop::spawn(async move {
                warehouse
                    .stream_rows(&reader_query, ranges, tx_rows, chunk)
                    .await
            })
        }
        RunMode::RetryRefused => {
            let keys = ctx
                .state
                .refused_keys(&model.name)
                .await
                .map_err(|e| e.to_string())?;
            summary.counters.rows_requested = keys.len() as i64;
            AbortOnDrop::spawn(async move {
                let mut total = 0u64;
                for part in keys.chunks(chunk) {
                    let mut rows = warehouse.rows_by_key(&reader_query, part).await?;
                    for r in &mut rows {
                        r.reread = true;
                    }
                    total += rows.len() as u64;
                    if tx_rows.send(rows).await.is_err() {
                        break;
                    }
                }
                Ok(total)
            })
        }
    };
    // Deliveries clear earlier refusals of the same rows; when the model has none (the usual
    // backfill), that statement is skipped.
    let clear_refused = opts.mode == RunMode::RetryRefused
        || ctx
            .state
            .has_refused(&model.name)
            .await
            .map_err(|e| e.to_string())?;

    // Rows read in this run cannot be in the ledger when the model has never delivered an
    // event (a first backfill): then the per-chunk lookups are skipped.
    let ledger_state = if ctx
        .state
        .has_deliveries(&model.name)
        .await
        .map_err(|e| format!("cannot read the delivery ledger ({e})"))?
    {
        Some(ctx.state.clone())
    } else {
        None
    };
    let (tx_mapped, mut rx_mapped) = mpsc::channel::<MappedChunk>(2);
    let mapper = AbortOnDrop::spawn(map_stage(
        plan,
        ledger_state,
        ctx.state.clone(),
        model.name.clone(),
        opts.mode,
        rx_rows,
        tx_mapped,
    ));

    let test_event_code = opts
        .test_event_code
        .clone()
        .or_else(|| model.test_event_code.clone())
        .or_else(|| ctx.config.meta.test_event_code.clone());
    let sender = BatchSender {
        graph: ctx.graph.clone(),
        pixel_id: model.pixel_id.clone(),
        test_event_code,
        policy: RetryPolicy::new(ctx.config.meta.max_attempts),
        throttled: Arc::new(AtomicU64::new(0)),
        model: model.name.clone(),
        observer: opts.observer.clone(),
        cancel: ctx.cancel.clone(),
        ledger: run_id.map(|run_id| {
            LedgerWriter::start(ctx.state.clone(), model.name.clone(), run_id, clear_refused)
        }),
    };
    let mut pacer = Pacer::new(ctx.config.meta.concurrency);
    let requests = RequestSlots::default();
    let settler = Settler::start(
        ctx.state.clone(),
        model.name.clone(),
        run_id,
        clear_refused,
        lock,
    );

    let mut in_flight: FuturesOrdered<AbortOnDrop<BatchResult>> = FuturesOrdered::new();
    let mut pending = Batch::for_events(batch_size);
    let mut seq = 0u64;
    let mut failure: Option<Stop> = None;
    let mut status = RunStatus::Succeeded;
    // Batches not yet settled: those with a request in flight, and as many again answered and
    // waiting for their ledger write.
    let mut taken = TakenIds::new(plan_maps_event_id, 2 * ctx.config.meta.concurrency);

    'read: loop {
        if ctx.cancel.is_cancelled() {
            status = RunStatus::Cancelled;
            break;
        }
        if tokio::time::Instant::now() > deadline {
            failure = Some(Stop::Failed(passed_deadline(run_deadline, "while reading")));
            break;
        }
        if let Some(e) = settler.failure() {
            failure = Some(Stop::Failed(e));
            break;
        }
        let mapped = tokio::select! {
            c = rx_mapped.recv() => c,
            _ = ctx.cancel.cancelled() => { status = RunStatus::Cancelled; break 'read; }
            // A warehouse read that stopped answering (a failover, a half-open connection)
            // is given up here rather than waited on.
            _ = tokio::time::sleep_until(deadline) => {
                failure = Some(Stop::Failed(passed_deadline(run_deadline, "while reading")));
                break 'read;
            }
        };
        let Some(mapped) = mapped else { break };
        let MappedChunkData {
            rows,
            outcomes,
            dropped,
            ledger,
            known_refusals,
        } = match mapped {
            Ok(m) => m,
            Err(e) => {
                failure = Some(Stop::Failed(e));
                break;
            }
        };
        summary.counters.rows_read += rows.len() as i64;
        if let Some(o) = &opts.observer {
            o.rows_read(&model.name, rows.len() as u64);
        }
        for d in dropped {
            *summary
                .counters
                .dropped_by_field
                .entry(format!("{}:{}", d.field, d.reason))
                .or_default() += 1;
        }

        let suspects = taken.suspects(
            outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok())
                .filter(|e| !ledger.contains_key(&e.event_id)),
        );
        let older: Older = if suspects.is_empty() {
            HashMap::new()
        } else {
            ctx.state
                .delivered_rows(&model.name, &suspects)
                .await
                .map_err(|e| format!("cannot read the delivery ledger ({e})"))?
        };
        let chunk_len = rows.len();
        for (i, (row, outcome)) in rows.into_iter().zip(outcomes).enumerate() {
            // A batch is cut when it holds `batch_size` events, or as many rows found already
            // sent (a re-read of delivered rows sends nothing; its batches only settle them).
            // The batch's position is only needed where a batch is cut and at the chunk's
            // end; cloning it for every row cost more than mapping some fields.
            let may_cut = (outcome.is_ok() && pending.events.len() + 1 >= batch_size)
                || pending.already_sent.len() + 1 >= batch_size;
            let position = (!row.reread && (may_cut || i + 1 == chunk_len)).then(|| row.position());
            match outcome {
                // A re-read row refused before (by us or by Meta) keeps its verdict until it
                // changes or `retry` is asked for; it is neither re-sent nor re-recorded.
                _ if row.reread && known_refusals.contains(&row.key) => {}
                _ if row.duplicate => pending.refused.push(refused_row(
                    &row.key,
                    &row.cursor_text,
                    duplicate_key_refusal(model).with_event_id(outcome.ok().map(|e| e.event_id)),
                )),
                Err(refusal) => {
                    pending
                        .refused
                        .push(refused_row(&row.key, &row.cursor_text, refusal))
                }
                Ok(event) => {
                    if let Some(fp) = ledger.get(&event.event_id) {
                        summary.counters.rows_already_sent += 1;
                        pending.already_sent.push(row.key);
                        if *fp != event.fingerprint() {
                            pending.changed.push(event.event_id.clone());
                        }
                    } else {
                        match taken.take(&event, &row.key, &older) {
                            Taken::SameRow { changed } => {
                                // The row changed after its first reading and moved further
                                // along the cursor. That reading's event is sent (or refused
                                // by Meta) in this run: not sent twice, not refused either.
                                summary.counters.rows_already_sent += 1;
                                if changed {
                                    pending.changed.push(event.event_id.clone());
                                }
                            }
                            Taken::OtherRow => pending.refused.push(refused_row(
                                &row.key,
                                &row.cursor_text,
                                Refusal::new(
                                    "duplicate_event_id",
                                    "another row in this run maps to the same event_id; Meta would count only one",
                                )
                                .with_event_id(Some(event.event_id.clone())),
                            )),
                            Taken::New => {
                                if summary.sample_event.is_none() {
                                    summary.sample_event = Some(event.json.clone());
                                }
                                pending.events.push(PendingEvent {
                                    event,
                                    key: row.key,
                                    cursor_text: row.cursor_text,
                                });
                            }
                        }
                    }
                }
            }
            if position.is_some() {
                pending.last = position;
            }
            if pending.events.len() >= batch_size || pending.already_sent.len() >= batch_size {
                seq += 1;
                taken.batch_cut();
                if let (Some(ledger), false) = (&sender.ledger, pending.refused.is_empty()) {
                    ledger.refusals.store(true, Ordering::Relaxed);
                }
                // The next batch's vector is made at its full size: grown by doubling, each
                // batch copied its events about twice over.
                let mut batch = std::mem::replace(&mut pending, Batch::for_events(batch_size));
                batch.seq = seq;
                if opts.dry_run {
                    count_dry(&mut summary.counters, &batch, &model.name, &opts.observer);
                    continue;
                }
                let slot = requests.acquire(pacer.limit).await;
                in_flight.push_back(AbortOnDrop::spawn(sender.clone().send_batch(batch, slot)));
                // Batches answered by Meta and waiting for their ledger write hold no request
                // slot; they are settled in order as they finish, and at most as many again
                // as requests in flight wait so.
                loop {
                    let done = if in_flight.len() >= pacer.limit + ctx.config.meta.concurrency {
                        in_flight.next().await
                    } else {
                        match in_flight.next().now_or_never() {
                            Some(done) => done,
                            None => break,
                        }
                    };
                    let Some(done) = done else { break };
                    if let Err(stop) = forward(&settler, model, summary, done).await {
                        failure = Some(stop);
                        break 'read;
                    }
                    pacer.after_batch(sender.throttled.load(Ordering::Relaxed), &model.name);
                }
            }
        }
    }
    drop(rx_mapped);
    // A run that stops early does not wait for its reader: the read may be the very thing
    // that stalled, and it holds a warehouse connection.
    if failure.is_some() || status != RunStatus::Succeeded {
        reader.abort();
        mapper.abort();
    }

    // The last partial batch goes only when the read finished normally. Rows found already
    // sent settle too: a re-read row's verdict becomes "delivered" (a retried row whose
    // duplicate is gone, say), even when the batch has no position to move the cursor to.
    if failure.is_none()
        && status == RunStatus::Succeeded
        && (!pending.events.is_empty()
            || pending.last.is_some()
            || !pending.refused.is_empty()
            || !pending.already_sent.is_empty())
    {
        seq += 1;
        let mut batch = std::mem::take(&mut pending);
        batch.seq = seq;
        if opts.dry_run {
            count_dry(&mut summary.counters, &batch, &model.name, &opts.observer);
        } else if batch.events.is_empty() {
            if let Some(o) = &opts.observer {
                o.batch_done(&model.name, 0, &batch.refused);
            }
            let empty = BatchResult {
                batch,
                delivered: vec![],
                recorded: vec![],
                meta_refused: vec![],
                coverage: Coverage::default(),
                requests: 0,
                retries: 0,
                error: None,
                stopped_by_shutdown: false,
            };
            in_flight.push_back(AbortOnDrop::spawn(async move { empty }));
        } else {
            let slot = requests.acquire(pacer.limit).await;
            in_flight.push_back(AbortOnDrop::spawn(sender.clone().send_batch(batch, slot)));
        }
    }
    // Whatever is in flight finishes and is recorded, even after a failure or on shutdown:
    // an acknowledged event always reaches the ledger.
    while let Some(done) = in_flight.next().await {
        if failure.is_some() {
            if let Ok(r) = done {
                record_acks_only(&settler, summary, r).await;
            }
            continue;
        }
        if let Err(stop) = forward(&settler, model, summary, done).await {
            failure = Some(stop);
        }
    }
    if let Some(ledger) = &sender.ledger {
        tracing::debug!(
            model = %model.name,
            transactions = ledger.writes(),
            "ledger transactions tried for acknowledged events"
        );
    }
    if let Err(e) = settler.finish().await {
        failure.get_or_insert(Stop::Failed(e));
    }

    summary.counters.throttles = sender.throttled.load(Ordering::Relaxed) as i64;
    let _ = mapper.await;
    match reader.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if failure.is_none() && status == RunStatus::Succeeded => {
            failure = Some(Stop::Failed(format!(
                "{e}; check the model's SQL ({})",
                model.sql_origin
            )));
        }
        Ok(Err(_)) => {}
        Err(e) if failure.is_none() && status == RunStatus::Succeeded => {
            failure = Some(Stop::Failed(format!("the warehouse reader stopped: {e}")))
        }
        Err(_) => {}
    }
    // Counted after the read, not beside it: a run holds one warehouse connection at a time,
    // so models beyond `warehouse.max_connections` still get theirs.
    if opts.mode == RunMode::Incremental && failure.is_none() && status == RunStatus::Succeeded {
        count_unreadable(&ctx.warehouse, model, &query, &mut summary.counters).await;
    }
    match failure {
        Some(Stop::Failed(f)) => Err(f),
        Some(Stop::Shutdown) => Ok(RunStatus::Cancelled),
        None => Ok(status),
    }
}
