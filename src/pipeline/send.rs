//! Sending a batch: request slots, retries, and bisection of a rejected request.

use super::batch::{Batch, BatchResult, PendingEvent};
use super::counts::Coverage;
use super::ledger_writer::LedgerWriter;
use super::observer::RunObserver;
use super::pixel_budget::{PixelBudget, RequestSlot};
use super::{RunOptions, SyncContext};
use crate::config::ModelConfig;
use crate::mapping::RefusalReason;
use crate::sink::retry::RetryPolicy;
use crate::sink::{ErrorClass, GraphClient, GraphError, SinkError};
use crate::state::{Delivered, RefusedRow};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

pub(super) fn describe_failure(model: &ModelConfig, api_version: &str, err: &SinkError) -> String {
    match err.class() {
        ErrorClass::RetiredVersion => format!(
            "Meta refuses meta.api_version {api_version} as a deprecated or unsupported version ({err}); set meta.api_version to a live version such as {}, the newest capi-sync knows (`capi-sync check {}` shows the version's end of life); nothing was refused, the next run resumes at the last acknowledged batch",
            crate::sink::versions::NEWEST,
            model.name
        ),
        ErrorClass::Auth => format!(
            "Meta refused the credentials for pixel {} ({err}); check meta.access_token and that the token's system user has access to this pixel/dataset (`capi-sync check {}` tests the token without sending)",
            model.pixel_id, model.name
        ),
        ErrorClass::Throttled => format!("Meta kept throttling the requests ({err}); retries ran out, the next run resumes at the last acknowledged batch"),
        ErrorClass::Transient => format!("the Graph API did not accept the batch after retries ({err}); the next run resumes at the last acknowledged batch"),
        ErrorClass::Invalid => format!(
            "Meta rejected a batch ({err}); check meta.graph_url, meta.api_version and the model's pixel_id (`capi-sync check {}` tests them)",
            model.name
        ),
        ErrorClass::Unexpected => format!("an error capi-sync does not classify stopped the run ({err}); nothing was refused, the next run resumes at the last acknowledged batch"),
        ErrorClass::NotGraph => format!(
            "the answer is not the Graph API's ({err}); nothing was refused, the next run resumes at the last acknowledged batch. Check meta.graph_url and any proxy on the way to Meta (`capi-sync check {}` tests it){}",
            model.name,
            if err.status() == Some(413) {
                "; a 413 comes from a proxy that limits request bodies: raise its limit or lower meta.batch_size"
            } else {
                ""
            }
        ),
    }
}

#[derive(Clone)]
pub(super) struct BatchSender {
    pub(super) graph: GraphClient,
    /// The request slots and pace of the pixel, shared with its other runs.
    pub(super) pixel: Arc<PixelBudget>,
    pub(super) pixel_id: String,
    pub(super) test_event_code: Option<String>,
    pub(super) policy: RetryPolicy,
    /// Throttled answers seen by any batch of this run.
    pub(super) throttled: Arc<AtomicU64>,
    pub(super) model: String,
    pub(super) observer: Option<Arc<dyn RunObserver>>,
    pub(super) cancel: CancellationToken,
    /// Where acknowledged events are written as soon as Meta answers (runs that record).
    pub(super) ledger: Option<LedgerWriter>,
}

impl BatchSender {
    /// The run's sender. `ledger`: the run's ledger writer, for runs that record.
    pub(super) fn new(
        ctx: &SyncContext,
        model: &ModelConfig,
        opts: &RunOptions,
        ledger: Option<LedgerWriter>,
        pixel: Arc<PixelBudget>,
    ) -> BatchSender {
        let test_event_code = opts
            .test_event_code
            .clone()
            .or_else(|| model.test_event_code.clone())
            .or_else(|| ctx.config.meta.test_event_code.clone());
        BatchSender {
            graph: ctx.graph.clone(),
            pixel,
            pixel_id: model.pixel_id.clone(),
            test_event_code,
            policy: RetryPolicy::new(ctx.config.meta.max_attempts),
            throttled: Arc::new(AtomicU64::new(0)),
            model: model.name.clone(),
            observer: opts.observer.clone(),
            cancel: ctx.cancel.clone(),
            ledger,
        }
    }
}

/// Usage (percent of a Meta rate limit) at which we slow down before being throttled.
pub(super) const NEAR_LIMIT_PERCENT: u32 = 90;

impl BatchSender {
    pub(super) async fn send_batch(self, batch: Batch, slot: RequestSlot) -> BatchResult {
        let span = info_span!("batch", seq = batch.seq, events = batch.events.len());
        async move {
            let started = Instant::now();
            let mut result = BatchResult {
                delivered: Vec::with_capacity(batch.events.len()),
                recorded: Vec::new(),
                meta_refused: Vec::new(),
                coverage: Coverage::default(),
                requests: 0,
                retries: 0,
                error: None,
                stopped_by_shutdown: false,
                batch: Batch::default(),
            };
            // The whole batch's body is built once, and each event's JSON is freed: retries
            // resend this body, and a part of the batch (bisecting a rejected request) is
            // copied out of it, so a batch in flight holds its events once, not twice.
            let mut batch = batch;
            let (full_body, spans) = if batch.events.is_empty() {
                // Only rows found already sent or refused: nothing to send.
                (bytes::Bytes::new(), Vec::new())
            } else {
                let events: Vec<&str> =
                    batch.events.iter().map(|e| e.event.json.as_str()).collect();
                self.graph
                    .body_with_spans(&events, self.test_event_code.as_deref())
            };
            for e in &mut batch.events {
                e.event.json = String::new();
            }
            let all: Vec<usize> = (0..batch.events.len()).collect();
            let part_body = |part: &[usize]| {
                if part.len() == spans.len() {
                    full_body.clone()
                } else {
                    let events: Vec<&[u8]> =
                        part.iter().map(|&i| &full_body[spans[i].clone()]).collect();
                    self.graph.body(&events, self.test_event_code.as_deref())
                }
            };
            // The trace id of the request that delivered each event (the outer `Some`).
            let mut acked: Vec<Option<Option<Arc<str>>>> = vec![None; batch.events.len()];
            // Bisect on code 100 with an event subcode (`ErrorClass::Invalid`, see
            // `sink::classify`): Meta rejects a whole request for one invalid event, so we
            // split until each bad event stands alone. A part known to hold a bad event is
            // split in up to [`SPLIT_WAYS`] pieces sent at once when the pixel has slots free
            // (about log4(n) rounds of answers), else in halves sent one after the other
            // (about log2(n) rounds, fewer requests). Any other failure stops the batch with
            // nothing refused.
            let mut stack: Vec<Part> = vec![Part::whole(all)];
            while let Some(Part {
                events: part,
                holds_invalid,
                first_half,
            }) = stack.pop()
            {
                if part.is_empty() {
                    continue;
                }
                if holds_invalid && part.len() > 1 {
                    // Rejected, or its other half accepted: the invalid event is in here, and
                    // sending it whole would only be rejected again.
                    let spare = self.spare_slots(part.len().min(SPLIT_WAYS) - 1);
                    if spare.is_empty() {
                        Part::split(&part, &mut stack);
                        continue;
                    }
                    let pieces = split_ways(&part, spare.len() + 1);
                    let sends = pieces.iter().map(|piece| async {
                        let mut tally = Tally::default();
                        let outcome = self
                            .send_with_retries(part_body(piece), piece.len(), &mut tally)
                            .await;
                        (outcome, tally)
                    });
                    let outcomes = futures::future::join_all(sends).await;
                    drop(spare);
                    let mut failed = None;
                    for (piece, (outcome, tally)) in pieces.into_iter().zip(outcomes) {
                        tally.add_to(&mut result);
                        // Every piece's answer counts, also when another piece failed: an
                        // accepted piece is delivered and goes into the ledger.
                        if let Err(err) = Self::settle_part(
                            piece,
                            outcome,
                            &batch,
                            &mut acked,
                            &mut result,
                            &mut stack,
                        ) {
                            failed.get_or_insert(err);
                        }
                    }
                    if let Some(err) = failed {
                        result.error = Some(err);
                        break;
                    }
                    continue;
                }
                let mut tally = Tally::default();
                let outcome = self
                    .send_with_retries(part_body(&part), part.len(), &mut tally)
                    .await;
                tally.add_to(&mut result);
                let accepted = outcome.is_ok();
                if let Err(err) =
                    Self::settle_part(part, outcome, &batch, &mut acked, &mut result, &mut stack)
                {
                    result.error = Some(err);
                    break;
                }
                if accepted && first_half {
                    // The second half of the same rejected whole is next.
                    if let Some(second) = stack.last_mut() {
                        second.holds_invalid = true;
                    }
                }
            }
            // Meta has answered (or the batch failed): the next batch may send while this
            // one's events go into the ledger.
            drop(slot);
            if let Some(o) = &self.observer {
                o.batch_latency(&self.model, started.elapsed());
                // A failed batch's refusals are not settled: the next run finds them again.
                let mut refused = Vec::new();
                if result.error.is_none() {
                    refused.extend(batch.refused.iter().cloned());
                    refused.extend(result.meta_refused.iter().cloned());
                }
                let delivered = acked.iter().filter(|a| a.is_some()).count();
                o.batch_done(&self.model, delivered as u64, &refused);
            }
            drop(full_body);
            // The batch waits for the ones before it and for its commit. Its events move into
            // the ledger's rows (the ledger keeps fingerprints, not the JSON), so nothing is
            // copied.
            for (event, trace) in std::mem::take(&mut batch.events).into_iter().zip(acked) {
                let Some(fbtrace_id) = trace else { continue };
                result
                    .coverage
                    .add(event.event.identifiers, &event.event.event_name);
                result.delivered.push(Delivered {
                    fingerprint: event.event.fingerprint(),
                    row_key: event.key,
                    event_id: event.event.event_id,
                    event_name: event.event.event_name,
                    event_time: event.event.event_time,
                    fbtrace_id,
                });
            }
            if let Some(ledger) = &self.ledger {
                // The one place the run learns that the model may now hold refusals: a
                // batch's result, with the rows refused by us or by Meta. Later ledger writes
                // then also clear earlier refusals of the rows they deliver (the settler
                // clears them too, in the cursor's order).
                if !batch.refused.is_empty() || !result.meta_refused.is_empty() {
                    ledger.note_refusals(
                        batch
                            .refused
                            .iter()
                            .chain(&result.meta_refused)
                            .map(|r| r.row_key.as_slice()),
                    );
                }
                if !result.delivered.is_empty() {
                    let acked = ledger
                        .record_or_defer(std::mem::take(&mut result.delivered))
                        .await;
                    result.recorded = acked.recorded;
                    result.delivered = acked.with_the_cursor;
                }
            }
            result.batch = batch;
            result
        }
        .instrument(span)
        .await
    }

    /// Up to `n` more of the pixel's request slots, as many as are free now (none while a
    /// throttled answer asks to wait): a bisecting batch sends its pieces at once only with
    /// slots of its own for them, so the pixel's limit holds.
    fn spare_slots(&self, n: usize) -> Vec<RequestSlot> {
        std::iter::from_fn(|| self.pixel.try_acquire())
            .take(n)
            .collect()
    }

    /// Meta's answer to one part of a batch: an accepted part's events are acknowledged, a
    /// rejected event alone is refused, a rejected part goes back on the stack to be split.
    /// Any other failure is given back: it stops the batch.
    fn settle_part(
        part: Vec<usize>,
        outcome: Result<Option<String>, SinkError>,
        batch: &Batch,
        acked: &mut [Option<Option<Arc<str>>>],
        result: &mut BatchResult,
        stack: &mut Vec<Part>,
    ) -> Result<(), SinkError> {
        match outcome {
            Ok(trace) => {
                let trace: Option<Arc<str>> = trace.map(Into::into);
                for &i in &part {
                    acked[i] = Some(trace.clone());
                }
                Ok(())
            }
            Err(err) if err.class() == ErrorClass::Invalid => {
                if part.len() == 1 {
                    result
                        .meta_refused
                        .push(meta_refusal(&batch.events[part[0]], &err));
                } else {
                    stack.push(Part {
                        events: part,
                        holds_invalid: true,
                        first_half: false,
                    });
                }
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// One request body of `events` events, sent until Meta accepts it or the retry policy
    /// gives up.
    pub(super) async fn send_with_retries(
        &self,
        body: bytes::Bytes,
        events: usize,
        tally: &mut Tally,
    ) -> Result<Option<String>, SinkError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            tally.requests += 1;
            let sent_at = Instant::now();
            match self.graph.send(&self.pixel_id, body.clone(), events).await {
                Ok(ack) => {
                    // How fast Meta answers is what the pixel's requests in flight grow by.
                    self.pixel.answered(sent_at.elapsed(), ack.usage_percent);
                    // Meta's usage headers warn before it throttles: near the limit, slow
                    // down as if throttled so the pixel is never blocked.
                    if ack.usage_percent.is_some_and(|p| p >= NEAR_LIMIT_PERCENT) {
                        self.throttled.fetch_add(1, Ordering::Relaxed);
                        self.pixel.throttled();
                        warn!(
                            usage_percent = ack.usage_percent,
                            "Meta reports rate-limit usage near its limit; lowering requests in flight"
                        );
                    }
                    return Ok(ack.fbtrace_id);
                }
                Err(err) => {
                    let class = err.class();
                    match self.policy.delay(
                        class,
                        attempt,
                        err.retry_after(),
                        rand::random::<f64>(),
                    ) {
                        Some(wait) => {
                            tally.retries += 1;
                            if class == ErrorClass::Throttled {
                                self.throttled.fetch_add(1, Ordering::Relaxed);
                                self.pixel.throttled();
                                // The pixel's other requests would be throttled alike.
                                self.pixel.hold_until(tokio::time::Instant::now() + wait);
                            }
                            if let Some(o) = &self.observer {
                                o.retry(&self.model, class);
                            }
                            warn!(
                                class = ?class,
                                attempt,
                                wait_ms = wait.as_millis() as u64,
                                error = %err,
                                "batch not accepted; retrying"
                            );
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                // Shutdown does not wait out a backoff (up to minutes when
                                // throttled): this part was not accepted, so it is dropped
                                // and the next run sends it from the cursor. A request
                                // already on the wire is still awaited above: its answer may
                                // be an acknowledgement to record.
                                _ = self.cancel.cancelled() => {
                                    tally.stopped_by_shutdown = true;
                                    return Err(err);
                                }
                            }
                        }
                        None => return Err(err),
                    }
                }
            }
        }
    }
}

/// The most requests a bisecting batch sends at once: a part known to hold an invalid event is
/// cut in this many pieces when the pixel has as many slots free (its own and three more).
/// Four pieces a round find a bad event among 1000 in five rounds of answers, where halves
/// take ten; each round sends four requests instead of one or two.
pub(super) const SPLIT_WAYS: usize = 4;

/// `events` cut in `ways` pieces of nearly equal size, in order, the longer ones last (two
/// ways: the halves a rejected part is bisected into).
fn split_ways(events: &[usize], ways: usize) -> Vec<Vec<usize>> {
    let ways = ways.clamp(1, events.len().max(1));
    let (size, longer) = (events.len() / ways, events.len() % ways);
    let mut rest = events;
    (0..ways)
        .map(|i| {
            let (piece, after) = rest.split_at(size + usize::from(i >= ways - longer));
            rest = after;
            piece.to_vec()
        })
        .collect()
}

/// Requests and retries of a batch's parts, and whether shutdown stopped one.
#[derive(Default)]
pub(super) struct Tally {
    requests: i64,
    retries: i64,
    stopped_by_shutdown: bool,
}

impl Tally {
    fn add_to(self, result: &mut BatchResult) {
        result.requests += self.requests;
        result.retries += self.retries;
        result.stopped_by_shutdown |= self.stopped_by_shutdown;
    }
}

/// Events of a batch to send in one request while bisecting a rejected one.
struct Part {
    events: Vec<usize>,
    /// Known to hold an event Meta finds invalid (it was rejected, or its whole was rejected
    /// and the other half accepted): split, never sent whole.
    holds_invalid: bool,
    /// The first half of a rejected whole: its second half lies under it on the stack.
    first_half: bool,
}

impl Part {
    fn whole(events: Vec<usize>) -> Part {
        Part {
            events,
            holds_invalid: false,
            first_half: false,
        }
    }

    /// Pushes the halves of a rejected part, the first half on top.
    fn split(events: &[usize], stack: &mut Vec<Part>) {
        let mut halves = split_ways(events, 2);
        let first = halves.remove(0);
        stack.extend(halves.into_iter().map(Part::whole));
        stack.push(Part {
            first_half: true,
            ..Part::whole(first)
        });
    }
}

pub(super) fn meta_refusal(e: &PendingEvent, err: &SinkError) -> RefusedRow {
    let g: GraphError = err.graph_error().cloned().unwrap_or_default();
    let text = g
        .error_user_msg
        .clone()
        .or(g.error_user_title.clone())
        .unwrap_or_else(|| g.message.clone());
    RefusedRow {
        row_key: e.key.clone(),
        event_id: Some(e.event.event_id.clone()),
        reason: RefusalReason::RejectedByMeta.to_string(),
        detail: format!(
            "Meta rejected the event (code {}{}): {}",
            g.code,
            g.error_subcode.map(|s| format!("/{s}")).unwrap_or_default(),
            crate::redact::graph_message(&text.chars().take(300).collect::<String>())
        ),
        meta_code: Some(g.code as i32),
        meta_subcode: g.error_subcode.map(|s| s as i32),
        cursor_value: Some(e.cursor_text.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_ways;

    #[test]
    fn pieces_cover_the_part_in_order_with_sizes_one_apart() {
        for len in 1..=70usize {
            let part: Vec<usize> = (100..100 + len).collect();
            for ways in 1..=super::SPLIT_WAYS {
                let pieces = split_ways(&part, ways);
                assert_eq!(pieces.len(), ways.min(len), "{len} events, {ways} ways");
                assert_eq!(pieces.concat(), part, "{len} events, {ways} ways");
                let sizes: Vec<usize> = pieces.iter().map(Vec::len).collect();
                let (min, max) = (sizes.iter().min(), sizes.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{sizes:?}");
                assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
                // The longer pieces last: two ways are the halves bisection always cut.
                assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
                if ways == 2 && len >= 2 {
                    assert_eq!(sizes[0], len / 2, "{len} events");
                }
            }
        }
    }
}
