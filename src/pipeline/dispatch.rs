//! Batches in flight: each cut batch takes one of its pixel's request slots (as many as the
//! pixel's shared pace allows) and is sent on a task of its own; finished batches go to the settler in the order they were
//! cut. A dry run only counts its batches.

use super::batch::{Batch, BatchResult};
use super::counts::count_dry;
use super::deadline::passed_deadline;
use super::deadline::AbortOnDrop;
use super::error::RunError;
use super::observer::RunObserver;
use super::pixel_budget::{PixelBudget, RequestSlot};
use super::send::BatchSender;
use super::settle::{forward, record_acks_only, Settler};
use super::{RunSummary, Stop};
use crate::config::ModelConfig;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct InFlight<'a> {
    model: &'a ModelConfig,
    observer: Option<Arc<dyn RunObserver>>,
    dry_run: bool,
    /// `meta.concurrency`: batches answered and waiting for their ledger write, beyond the
    /// pixel's requests in flight.
    concurrency: usize,
    sender: BatchSender,
    settler: Settler,
    /// The pixel's request slots and pace, shared with its other runs.
    pixel: Arc<PixelBudget>,
    /// When the run must stop waiting, and `service.run_deadline` for the message.
    deadline: (tokio::time::Instant, Duration),
    batches: FuturesOrdered<AbortOnDrop<BatchResult>>,
}

impl<'a> InFlight<'a> {
    pub(super) fn new(
        model: &'a ModelConfig,
        observer: Option<Arc<dyn RunObserver>>,
        dry_run: bool,
        concurrency: usize,
        sender: BatchSender,
        settler: Settler,
        deadline: (tokio::time::Instant, Duration),
    ) -> InFlight<'a> {
        let pixel = sender.pixel.clone();
        InFlight {
            model,
            observer,
            dry_run,
            concurrency,
            sender,
            settler,
            pixel,
            deadline,
            batches: FuturesOrdered::new(),
        }
    }

    /// Why the settler stopped, if it did.
    pub(super) fn settler_failure(&self) -> Option<RunError> {
        self.settler.failure()
    }

    /// Sends a cut batch, then settles the batches that have finished, in order; a failed
    /// batch stops the run.
    pub(super) async fn dispatch(
        &mut self,
        batch: Batch,
        summary: &mut RunSummary,
    ) -> Result<(), Stop> {
        if self.dry_run {
            count_dry(
                &mut summary.counters,
                &batch,
                &self.model.name,
                &self.observer,
            );
            return Ok(());
        }
        let slot = self.slot().await?;
        self.batches.push_back(AbortOnDrop::spawn(
            self.sender.clone().send_batch(batch, slot),
        ));
        // Batches answered by Meta and waiting for their ledger write hold no request
        // slot; they are settled in order as they finish, and at most as many again
        // as requests in flight wait so.
        loop {
            let done = if self.batches.len() >= self.pixel.limit() + self.concurrency {
                self.batches.next().await
            } else {
                match self.batches.next().now_or_never() {
                    Some(done) => done,
                    None => break,
                }
            };
            let Some(done) = done else { break };
            forward(
                &self.settler,
                self.model,
                self.sender.graph.api_version(),
                summary,
                done,
            )
            .await?;
            self.pixel.after_batch(&self.model.name);
            if let Some(o) = &self.observer {
                o.requests_in_flight_limit(&self.model.pixel_id, self.pixel.limit());
            }
        }
        Ok(())
    }

    /// One of the pixel's request slots, waited for until the run's deadline: the slots may
    /// all be taken by other runs of the pixel.
    async fn slot(&self) -> Result<RequestSlot, Stop> {
        let (deadline, run_deadline) = self.deadline;
        tokio::select! {
            slot = self.pixel.acquire() => Ok(slot),
            _ = tokio::time::sleep_until(deadline) => Err(Stop::Failed(RunError::Deadline(passed_deadline(
                run_deadline,
                "while waiting for one of the pixel's request slots (meta.concurrency)",
            )))),
        }
    }

    /// The run's last, partial batch. One with no events to send settles without a request.
    pub(super) async fn dispatch_last(&mut self, batch: Batch, summary: &mut RunSummary) {
        if self.dry_run {
            count_dry(
                &mut summary.counters,
                &batch,
                &self.model.name,
                &self.observer,
            );
        } else if batch.events.is_empty() {
            if let Some(o) = &self.observer {
                o.batch_done(&self.model.name, 0, &batch.refused);
            }
            let settles_only = BatchResult::settling_only(batch);
            self.batches
                .push_back(AbortOnDrop::spawn(async move { settles_only }));
        } else {
            let slot = self.pixel.acquire().await;
            self.batches.push_back(AbortOnDrop::spawn(
                self.sender.clone().send_batch(batch, slot),
            ));
        }
    }

    /// Waits for every batch still in flight, and for the settler. Whatever is in flight
    /// finishes and is recorded, even after a failure or on shutdown: an acknowledged event
    /// always reaches the ledger. Gives back why the run stopped, if it did.
    pub(super) async fn finish(
        mut self,
        summary: &mut RunSummary,
        mut failure: Option<Stop>,
    ) -> Option<Stop> {
        while let Some(done) = self.batches.next().await {
            if failure.is_some() {
                if let Ok(r) = done {
                    record_acks_only(&self.settler, summary, r).await;
                }
                continue;
            }
            if let Err(stop) = forward(
                &self.settler,
                self.model,
                self.sender.graph.api_version(),
                summary,
                done,
            )
            .await
            {
                failure = Some(stop);
            }
        }
        if let Some(ledger) = &self.sender.ledger {
            tracing::debug!(
                model = %self.model.name,
                transactions = ledger.writes(),
                "ledger transactions tried for acknowledged events"
            );
        }
        if let Err(e) = self.settler.finish().await {
            failure.get_or_insert(Stop::Failed(e));
        }
        summary.counters.throttles = self.sender.throttled.load(Ordering::Relaxed) as i64;
        failure
    }
}
