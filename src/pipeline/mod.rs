//! One model run: lock → describe → read → map → send → settle. Only this module decides,
//! from an error's class, whether to retry, split a batch, refuse rows or stop the run.

use crate::config::{Config, ModelConfig};
use crate::sink::GraphClient;
use crate::source::Warehouse;
use crate::state::{LockProof, RunCounters, StateStore};
use batch::BatchAssembler;
use deadline::passed_deadline;
pub use deadline::{OverdueRun, RunRegistry};
use dispatch::InFlight;
pub use error::{RunError, RunErrorKind};
use ledger_writer::LedgerWriter;
use map_stage::{MappedChunk, MappedChunkData};
use observer::RunObserver;
pub use pixel_budget::PixelBudgets;
use read::count_unreadable;
use send::BatchSender;
use settle::Settler;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

mod adaptive_limit;
mod batch;
mod counts;
pub mod deadline;
mod dispatch;
pub mod error;
pub mod ledger_writer;
mod map_stage;
pub mod observer;
pub mod pixel_budget;
mod read;
mod send;
mod settle;
mod taken_ids;

/// Everything a run needs, shared by the runs the scheduler starts.
#[derive(Clone)]
pub struct SyncContext {
    pub config: Arc<Config>,
    pub warehouse: Warehouse,
    pub state: StateStore,
    pub graph: GraphClient,
    pub cancel: CancellationToken,
    /// The runs in progress, for `/readyz`.
    pub runs: RunRegistry,
    /// Requests to Meta in flight per pixel, shared by the runs sending to it.
    pub pixels: PixelBudgets,
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
    /// The schedule's fire time this run was due at (service runs), recorded with the run.
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
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
    /// Why the run failed, as shown to the user and stored in `runs`.
    pub error: Option<String>,
    /// The kind of the failure (none when the run did not fail).
    pub error_kind: Option<RunErrorKind>,
    /// The first event sent (hashed, as sent), for demos and previews.
    pub sample_event: Option<String>,
    pub elapsed: Duration,
}

impl RunSummary {
    fn fail(&mut self, e: RunError) {
        self.status = RunStatus::Failed;
        self.error = Some(e.to_string());
        self.error_kind = Some(e.kind());
    }
}

/// Why a run stops early. Either way the cursor stays at the last acknowledged batch.
pub(super) enum Stop {
    Failed(RunError),
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
        error_kind: None,
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
            summary.fail(RunError::Lock(Arc::new(e)));
            return summary;
        }
    };
    let run_id = if opts.dry_run {
        None
    } else {
        match tokio::time::timeout_at(
            deadline,
            ctx.state
                .start_scheduled_run(&model.name, &opts.trigger, opts.scheduled_for),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("recording the run's start")))
        {
            Ok(id) => Some(id),
            Err(e) => {
                summary.fail(RunError::RecordStart {
                    schema: ctx.config.state.schema.clone(),
                    source: Arc::new(e),
                });
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
        Err(RunError::Deadline(passed_deadline(
            run_deadline,
            &format!(
                "and what was in flight did not settle within service.shutdown_grace ({:?}); it was stopped where it stood",
                ctx.config.service.shutdown_grace
            ),
        )))
    });
    summary.elapsed = started.elapsed();
    match result {
        Ok(status) => summary.status = status,
        Err(e) => summary.fail(e),
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

/// How long the run's end (its row in `runs`, freeing the model's lock) may take.
const END_TIMEOUT: Duration = Duration::from_secs(15);

fn timed_out<T: From<sqlx::Error>>(what: &str) -> T {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} did not finish by the run's deadline (service.run_deadline)"),
    ))
    .into()
}

/// Frees the model's lock. The request to the process's lock keeper stands even if this gives
/// up waiting; and if the state database does not answer, the keeper's session is dropped,
/// which frees the lock all the same once the server notices.
async fn release(lock: crate::state::ModelLock) {
    let _ = tokio::time::timeout(END_TIMEOUT, lock.release()).await;
}

/// One run's stages, wired: read → map → batch → send → ledger → settle.
async fn run_inner(
    ctx: &SyncContext,
    model: &ModelConfig,
    opts: &RunOptions,
    run_id: Option<i64>,
    deadline: tokio::time::Instant,
    lock: LockProof,
    summary: &mut RunSummary,
) -> Result<RunStatus, RunError> {
    let (query, plan) = read::describe(ctx, model, deadline).await?;
    let chunk = model.batch_size.max(100);
    let (reader, rx_rows) =
        read::start_reader(ctx, model, opts, &query, chunk, &mut summary.counters).await?;
    let mut assembler = BatchAssembler::new(
        model,
        plan.maps_event_id(),
        // Batches not yet settled: those with a request in flight (up to
        // `meta.max_concurrency` as the pixel's limit grows), and `meta.concurrency` more
        // answered and waiting for their ledger write (see `InFlight::dispatch`).
        ctx.config.meta.max_concurrency + ctx.config.meta.concurrency,
    );
    let (mapper, mut rx_mapped) =
        map_stage::start(ctx, &model.name, opts.mode, plan, rx_rows).await?;
    // Which delivered rows may have a refusal to clear, shared by the ledger writer and the
    // settler: the model's refusals as the run started and those this run adds.
    let refusals = std::sync::Arc::new(
        ctx.state
            .may_be_refused(
                &model.name,
                opts.mode == RunMode::RetryRefused,
                crate::state::REFUSALS_FILTERED_AT_MOST,
            )
            .await?,
    );
    let ledger = run_id.map(|run_id| {
        LedgerWriter::start(
            ctx.state.clone(),
            model.name.clone(),
            run_id,
            refusals.clone(),
        )
    });
    let settler = Settler::start(
        ctx.state.clone(),
        model.name.clone(),
        run_id,
        refusals,
        lock,
    );
    // Meta limits requests by pixel: the runs of one pixel share its slots and its pace.
    let pixel = ctx.pixels.pixel(
        &model.pixel_id,
        ctx.config.meta.concurrency,
        ctx.config.meta.max_concurrency,
    );
    let mut flight = InFlight::new(
        model,
        opts.observer.clone(),
        opts.dry_run,
        ctx.config.meta.concurrency,
        BatchSender::new(ctx, model, opts, ledger, pixel),
        settler,
        (deadline, ctx.config.service.run_deadline),
    );

    let (failure, status) = loop {
        let chunk = match next_chunk(ctx, &flight, &mut rx_mapped, deadline).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break (None, RunStatus::Succeeded),
            Err(Some(stop)) => break (Some(stop), RunStatus::Succeeded),
            Err(None) => break (None, RunStatus::Cancelled),
        };
        let batched = batch_chunk(
            ctx,
            model,
            opts,
            &mut assembler,
            &mut flight,
            chunk,
            summary,
        );
        if let Err(stop) = batched.await {
            break (Some(stop), RunStatus::Succeeded);
        }
    };
    drop(rx_mapped);
    let read_all = failure.is_none() && status == RunStatus::Succeeded;
    // A run that stops early does not wait for its reader: the read may be the very thing
    // that stalled, and it holds a warehouse connection. The last partial batch goes only
    // when the read finished normally.
    if !read_all {
        reader.abort();
        mapper.abort();
    } else if let Some(batch) = assembler.finish() {
        flight.dispatch_last(batch, summary).await;
    }
    let mut failure = flight.finish(summary, failure).await;
    let _ = mapper.await;
    let reader_failure = read::reader_failure(model, reader.await);
    if failure.is_none() && status == RunStatus::Succeeded {
        failure = reader_failure.map(Stop::Failed);
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

/// The next mapped chunk: `Ok(None)` once the read is done, `Err(None)` on shutdown, and
/// `Err(Some(stop))` when the run must stop (its deadline, the settler, or the chunk failed).
async fn next_chunk(
    ctx: &SyncContext,
    flight: &InFlight<'_>,
    rx_mapped: &mut mpsc::Receiver<MappedChunk>,
    deadline: tokio::time::Instant,
) -> Result<Option<MappedChunkData>, Option<Stop>> {
    let run_deadline = ctx.config.service.run_deadline;
    if ctx.cancel.is_cancelled() {
        return Err(None);
    }
    if tokio::time::Instant::now() > deadline {
        return Err(Some(Stop::Failed(RunError::Deadline(passed_deadline(
            run_deadline,
            "while reading",
        )))));
    }
    if let Some(e) = flight.settler_failure() {
        return Err(Some(Stop::Failed(e)));
    }
    let mapped = tokio::select! {
        c = rx_mapped.recv() => c,
        _ = ctx.cancel.cancelled() => return Err(None),
        // A warehouse read that stopped answering (a failover, a half-open connection)
        // is given up here rather than waited on.
        _ = tokio::time::sleep_until(deadline) => {
            return Err(Some(Stop::Failed(RunError::Deadline(passed_deadline(run_deadline, "while reading")))));
        }
    };
    match mapped {
        None => Ok(None),
        Some(Ok(chunk)) => Ok(Some(chunk)),
        Some(Err(e)) => Err(Some(Stop::Failed(e))),
    }
}

/// Counts a mapped chunk, cuts its rows into batches and sends each batch as it is cut.
async fn batch_chunk(
    ctx: &SyncContext,
    model: &ModelConfig,
    opts: &RunOptions,
    assembler: &mut BatchAssembler,
    flight: &mut InFlight<'_>,
    chunk: MappedChunkData,
    summary: &mut RunSummary,
) -> Result<(), Stop> {
    let MappedChunkData {
        rows,
        outcomes,
        dropped,
        mut known,
    } = chunk;
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
    let suspects = assembler.suspects(&outcomes, &known.ledger);
    if !suspects.is_empty() {
        known.older = ctx
            .state
            .delivered_rows(&model.name, &suspects)
            .await
            .map_err(|e| Stop::Failed(RunError::state_read("the delivery ledger")(e)))?;
    }
    let chunk_len = rows.len();
    for (i, (row, outcome)) in rows.into_iter().zip(outcomes).enumerate() {
        if let Some(batch) = assembler.push(row, outcome, &known, i + 1 == chunk_len, summary) {
            flight.dispatch(batch, summary).await?;
        }
    }
    Ok(())
}
