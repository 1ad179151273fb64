//! The model page's count of the delivery ledger, kept between refreshes.
//!
//! `count(*)` over a model's ledger reads every row it has kept: 0.7 s of the state
//! database's CPU at five million events. The page refreshes every few seconds for as long
//! as it is open, so the count is made again only when a run of the model has started or
//! finished since it was made, or when it is older than [`LEDGER_COUNT_TTL`] (a run in
//! progress, or pruning past the retention, changes the ledger without a run ending).

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a count is shown again.
pub(super) const LEDGER_COUNT_TTL: Duration = Duration::from_secs(60);

/// The ledger's events of a model and the last time it recorded one.
pub(super) type LedgerCount = (i64, Option<DateTime<Utc>>);

/// The model's latest run as the page saw it: its id and whether it had finished. A count
/// made under another mark is made again.
pub(super) type RunMark = Option<(i64, bool)>;

struct Kept {
    at: Instant,
    mark: RunMark,
    count: LedgerCount,
}

#[derive(Default)]
pub(super) struct LedgerCounts {
    kept: Mutex<HashMap<String, Kept>>,
    /// One count at a time, however many pages refresh.
    counting: tokio::sync::Mutex<()>,
}

impl LedgerCounts {
    fn fresh(&self, model: &str, mark: RunMark, now: Instant) -> Option<LedgerCount> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(model)
            .filter(|k| k.mark == mark && now.saturating_duration_since(k.at) < LEDGER_COUNT_TTL)
            .map(|k| k.count)
    }

    /// The kept count of `model` when it is still good for `mark` at `now`, else `count`'s.
    pub(super) async fn get<F, E>(
        &self,
        model: &str,
        mark: RunMark,
        now: Instant,
        count: F,
    ) -> Result<LedgerCount, E>
    where
        F: Future<Output = Result<LedgerCount, E>>,
    {
        if let Some(c) = self.fresh(model, mark, now) {
            return Ok(c);
        }
        let _counting = self.counting.lock().await;
        if let Some(c) = self.fresh(model, mark, now) {
            return Ok(c);
        }
        let counted = count.await?;
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).insert(
            model.to_string(),
            Kept {
                at: now,
                mark,
                count: counted,
            },
        );
        Ok(counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Counts how often the ledger is asked, answering `n` each time.
    async fn ask(
        counts: &LedgerCounts,
        model: &str,
        mark: RunMark,
        now: Instant,
        asked: &Cell<u32>,
        n: i64,
    ) -> i64 {
        let answer = counts
            .get(model, mark, now, async {
                asked.set(asked.get() + 1);
                Ok::<_, ()>((n, None))
            })
            .await;
        answer.expect("counted").0
    }

    #[tokio::test]
    async fn a_count_is_shown_again_until_a_run_ends_or_it_grows_old() {
        let counts = LedgerCounts::default();
        let asked = Cell::new(0);
        let t0 = Instant::now();
        let running = Some((7, false));
        assert_eq!(ask(&counts, "m", running, t0, &asked, 10).await, 10);
        // Refreshes within the TTL under the same run: the ledger is not asked again.
        let soon = t0 + Duration::from_secs(5);
        assert_eq!(ask(&counts, "m", running, soon, &asked, 11).await, 10);
        assert_eq!(asked.get(), 1);
        // The run finished: counted again at once.
        assert_eq!(
            ask(&counts, "m", Some((7, true)), soon, &asked, 12).await,
            12
        );
        assert_eq!(asked.get(), 2);
        // A new run started: counted again.
        assert_eq!(
            ask(&counts, "m", Some((8, false)), soon, &asked, 13).await,
            13
        );
        // Older than the TTL: counted again under the same mark.
        let late = soon + LEDGER_COUNT_TTL;
        assert_eq!(
            ask(&counts, "m", Some((8, false)), late, &asked, 14).await,
            14
        );
        assert_eq!(asked.get(), 4);
        // Another model has its own count.
        assert_eq!(
            ask(&counts, "n", Some((8, false)), late, &asked, 1).await,
            1
        );
        assert_eq!(asked.get(), 5);
    }

    #[tokio::test]
    async fn a_failed_count_is_not_kept() {
        let counts = LedgerCounts::default();
        let t0 = Instant::now();
        let failed = counts
            .get("m", None, t0, async { Err::<LedgerCount, _>("down") })
            .await;
        assert_eq!(failed, Err("down"));
        let asked = Cell::new(0);
        assert_eq!(ask(&counts, "m", None, t0, &asked, 3).await, 3);
        assert_eq!(asked.get(), 1);
    }
}
