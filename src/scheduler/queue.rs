//! Which model runs next: a pure queue over the models' schedules, driven with the time passed
//! in, so its fairness is tested without waiting for real fire times.
//!
//! Each model has one due time: the earliest fire time of its schedule not yet served. A model
//! is *waiting* once its due time has passed and it is not running. Free slots (at most
//! `capacity` runs at once) go to the waiting models in order of due time, earliest first, so
//! the most overdue model runs next; a model's due time only moves (to the schedule's next fire
//! time after the start) when its run starts, so a model that just ran queues behind every
//! model that waited longer, and none starves. Among models due at the same fire time, the one
//! whose last run started earliest goes first. Fire times a model misses while it waits or runs
//! collapse into its one due time: it is never queued twice.
//!
//! A run can also be asked for by hand (the dashboard's "run now" and "retry"): it is due at
//! the time it was asked, queues like any other, and never overlaps the model's own run. A
//! model has at most one asked run of each kind waiting. An asked sync also serves a fire
//! time that has passed; an asked retry of refused rows reads no new rows, so the scheduled
//! run still follows it.

use crate::config::Schedule;
use chrono::{DateTime, Utc};

/// One model's place in the queue.
#[derive(Debug, Clone)]
struct Slot<'a> {
    /// Borrowed from the config: the queue copies nothing of a model.
    schedule: &'a Schedule,
    /// The earliest fire time not yet served; None when the schedule has no future fire time.
    due_at: Option<DateTime<Utc>>,
    /// When its last run started: among models due at the same fire time, the one that ran
    /// least recently goes first, so ties rotate instead of favouring the first in the config.
    last_started: Option<DateTime<Utc>>,
    running: bool,
    /// When a sync and a retry of refused rows were asked for by hand, not yet started.
    asked_sync: Option<DateTime<Utc>>,
    asked_retry: Option<DateTime<Utc>>,
}

impl Slot<'_> {
    /// The earliest of its fire time and the times its waiting asked runs were asked.
    fn due(&self) -> Option<DateTime<Utc>> {
        [self.due_at, self.asked_sync, self.asked_retry]
            .into_iter()
            .flatten()
            .min()
    }
}

/// A run asked for by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// A sync of the rows after the cursor, as a scheduled run does.
    Sync,
    /// The model's refused rows read again by key (`capi-sync retry`).
    RetryRefused,
}

/// A run the queue let start: the model (its index in the list given to [`RunQueue::new`]),
/// the fire time it was due at, and how late it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub model: usize,
    pub due_at: DateTime<Utc>,
    pub delay: chrono::Duration,
    /// None for a run of the schedule.
    pub asked: Option<Asked>,
}

#[derive(Debug, Clone)]
pub struct RunQueue<'a> {
    slots: Vec<Slot<'a>>,
    capacity: usize,
    running: usize,
}

impl<'a> RunQueue<'a> {
    /// A queue over these schedules (one per model, in config order), at most `capacity` runs
    /// at once; each model is first due at its schedule's first fire time after `now`.
    pub fn new(
        schedules: impl IntoIterator<Item = &'a Schedule>,
        capacity: usize,
        now: DateTime<Utc>,
    ) -> RunQueue<'a> {
        let slots = schedules
            .into_iter()
            .map(|schedule| Slot {
                due_at: schedule.next_after(now),
                schedule,
                last_started: None,
                running: false,
                asked_sync: None,
                asked_retry: None,
            })
            .collect();
        RunQueue {
            slots,
            capacity: capacity.max(1),
            running: 0,
        }
    }

    /// The models whose schedule has no future fire time: they never run.
    pub fn never_due(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].due_at.is_none())
            .collect()
    }

    /// The models due at `now` and not running, the most overdue first (ties: the one that
    /// started least recently, then config order).
    pub fn due(&self, now: DateTime<Utc>) -> Vec<(usize, DateTime<Utc>)> {
        let mut due: Vec<(usize, DateTime<Utc>)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.running)
            .filter_map(|(i, s)| s.due().filter(|d| *d <= now).map(|d| (i, d)))
            .collect();
        due.sort_by_key(|&(i, d)| (d, self.slots[i].last_started, i));
        due
    }

    /// How many due runs wait for a free slot at `now`.
    pub fn waiting(&self, now: DateTime<Utc>) -> usize {
        self.slots
            .iter()
            .filter(|s| !s.running && s.due().is_some_and(|d| d <= now))
            .count()
    }

    /// Runs going.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Marks `model`'s run started at `now`: its next due time is the schedule's first fire
    /// time after `now`, so the fire times it missed while waiting are served by this run.
    /// Returns None (and changes nothing) when the model is not due, already running, or no
    /// slot is free.
    pub fn start(&mut self, model: usize, now: DateTime<Utc>) -> Option<Start> {
        if self.running >= self.capacity {
            return None;
        }
        let slot = self.slots.get_mut(model)?;
        let due_at = slot.due().filter(|d| *d <= now && !slot.running)?;
        let asked = if slot.asked_retry.take().is_some() {
            Some(Asked::RetryRefused)
        } else if slot.asked_sync.take().is_some() {
            Some(Asked::Sync)
        } else {
            None
        };
        slot.running = true;
        slot.last_started = Some(now);
        // A sync serves a fire time that has passed; a retry reads no new rows and leaves it.
        if asked != Some(Asked::RetryRefused) && slot.due_at.is_some_and(|d| d <= now) {
            slot.due_at = slot.schedule.next_after(now);
        }
        self.running += 1;
        Some(Start {
            model,
            due_at,
            delay: now - due_at,
            asked,
        })
    }

    /// Asks for a run of `model` by hand at `now`: it is due at once and starts when a slot is
    /// free and the model's own run (if any) has ended. Returns false when a run of this kind
    /// was already asked for and waits (it serves this request too), or there is no such model.
    pub fn ask(&mut self, model: usize, kind: Asked, now: DateTime<Utc>) -> bool {
        let Some(slot) = self.slots.get_mut(model) else {
            return false;
        };
        let waiting = match kind {
            Asked::Sync => &mut slot.asked_sync,
            Asked::RetryRefused => &mut slot.asked_retry,
        };
        if waiting.is_some() {
            return false;
        }
        *waiting = Some(now);
        true
    }

    /// Marks `model`'s run ended. If its schedule fired again meanwhile, it is due (once).
    pub fn finish(&mut self, model: usize) {
        if let Some(slot) = self.slots.get_mut(model) {
            if slot.running {
                slot.running = false;
                self.running -= 1;
            }
        }
    }

    /// One iteration of the scheduler: starts as many due runs as there are free slots, the
    /// most overdue first.
    pub fn start_due(&mut self, now: DateTime<Utc>) -> Vec<Start> {
        let free = self.capacity.saturating_sub(self.running);
        let due = self.due(now);
        due.into_iter()
            .take(free)
            .filter_map(|(model, _)| self.start(model, now))
            .collect()
    }

    /// When the next model that is not running falls due (None: none ever will). A model
    /// already due but waiting for a slot is not counted: a slot freeing wakes the scheduler.
    pub fn next_due_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.slots
            .iter()
            .filter(|s| !s.running)
            .filter_map(|s| s.due_at)
            .filter(|d| *d > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn every_minute(n: usize) -> Vec<Schedule> {
        (0..n)
            .map(|_| Schedule::parse("* * * * *").unwrap())
            .collect()
    }

    #[test]
    fn nothing_is_due_before_the_first_fire_time() {
        let schedules = every_minute(3);
        let q = RunQueue::new(&schedules, 2, at("2026-03-01T12:00:10Z"));
        assert!(q.due(at("2026-03-01T12:00:59Z")).is_empty());
        assert_eq!(
            q.next_due_after(at("2026-03-01T12:00:10Z")),
            Some(at("2026-03-01T12:01:00Z"))
        );
        assert_eq!(q.due(at("2026-03-01T12:01:00Z")).len(), 3);
    }

    #[test]
    fn the_most_overdue_model_starts_first() {
        let schedules = vec![
            Schedule::parse("*/5 * * * *").unwrap(),
            Schedule::parse("* * * * *").unwrap(),
            Schedule::parse("*/2 * * * *").unwrap(),
        ];
        let mut q = RunQueue::new(&schedules, 1, at("2026-03-01T12:00:30Z"));
        // Due at 12:05, 12:01 and 12:02; one slot busy until 12:06 keeps all three waiting.
        let now = at("2026-03-01T12:06:00Z");
        assert_eq!(
            q.due(now).iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
        let started = q.start_due(now);
        assert_eq!(started.len(), 1, "one slot");
        assert_eq!(started[0].model, 1);
        assert_eq!(started[0].due_at, at("2026-03-01T12:01:00Z"));
        assert_eq!(started[0].delay, Duration::minutes(5));
        assert_eq!(q.waiting(now), 2);
        q.finish(1);
        assert_eq!(q.start_due(now)[0].model, 2);
        q.finish(2);
        assert_eq!(q.start_due(now)[0].model, 0);
    }

    #[test]
    fn a_model_still_running_when_it_falls_due_again_is_queued_once() {
        let schedules = every_minute(1);
        let mut q = RunQueue::new(&schedules, 4, at("2026-03-01T12:00:30Z"));
        let first = q.start_due(at("2026-03-01T12:01:00Z"));
        assert_eq!(first.len(), 1);
        // The run takes three and a half minutes: three fire times pass meanwhile.
        for minute in 2..=4 {
            let now = at(&format!("2026-03-01T12:0{minute}:00Z"));
            assert!(q.due(now).is_empty(), "a running model is not due again");
            assert!(q.start_due(now).is_empty(), "nor started a second time");
            assert_eq!(q.waiting(now), 0);
        }
        q.finish(0);
        let now = at("2026-03-01T12:04:30Z");
        // The missed fire times collapse into one run, due at the first of them.
        assert_eq!(q.due(now), vec![(0, at("2026-03-01T12:02:00Z"))]);
        let again = q.start_due(now);
        assert_eq!(again.len(), 1);
        q.finish(0);
        assert!(
            q.due(now).is_empty(),
            "the run served every missed fire time"
        );
        assert_eq!(q.next_due_after(now), Some(at("2026-03-01T12:05:00Z")));
    }

    #[test]
    fn a_model_waiting_for_a_slot_is_queued_once_however_many_fire_times_pass() {
        let schedules = every_minute(2);
        let mut q = RunQueue::new(&schedules, 1, at("2026-03-01T12:00:30Z"));
        let first = q.start_due(at("2026-03-01T12:01:00Z"));
        assert_eq!(first[0].model, 0);
        // Model 1 waits through three fire times behind model 0's long run.
        let now = at("2026-03-01T12:04:00Z");
        assert_eq!(q.due(now), vec![(1, at("2026-03-01T12:01:00Z"))]);
        assert_eq!(q.waiting(now), 1);
        q.finish(0);
        // Model 0 is due again (12:02) but model 1 has waited since 12:01.
        let next = q.start_due(now);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].model, 1);
        assert_eq!(next[0].delay, Duration::minutes(3));
        assert_eq!(q.waiting(now), 1, "model 0 waits, once");
    }

    #[test]
    fn with_one_slot_and_many_models_every_model_runs_before_any_runs_twice() {
        // Fifty per-minute models, one slot, every run taking 20 s: demand far beyond capacity.
        let models = 50;
        let schedules = every_minute(models);
        let mut q = RunQueue::new(&schedules, 1, at("2026-03-01T11:59:30Z"));
        let mut now = at("2026-03-01T12:00:00Z");
        let mut runs_of = vec![0usize; models];
        let mut order = Vec::new();
        let mut worst_wait = Duration::zero();
        for _ in 0..(models * 3) {
            let started = q.start_due(now);
            assert_eq!(
                started.len(),
                1,
                "a model is always due: the slot never idles"
            );
            let s = &started[0];
            runs_of[s.model] += 1;
            order.push(s.model);
            worst_wait = worst_wait.max(s.delay);
            now += Duration::seconds(20);
            q.finish(s.model);
        }
        assert!(
            runs_of.iter().all(|&n| n == 3),
            "each model ran three times: {runs_of:?}"
        );
        for round in order.chunks(models) {
            let mut seen = round.to_vec();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), models, "a round serves every model once");
        }
        // A model waits for at most one full round of the others.
        assert!(
            worst_wait <= Duration::seconds(20 * models as i64),
            "{worst_wait}"
        );
    }

    #[test]
    fn with_enough_slots_every_model_starts_at_its_fire_time() {
        let schedules = every_minute(10);
        let mut q = RunQueue::new(&schedules, 10, at("2026-03-01T12:00:30Z"));
        for minute in 1..=3 {
            let now = at(&format!("2026-03-01T12:0{minute}:00Z"));
            let started = q.start_due(now);
            assert_eq!(started.len(), 10);
            assert!(started.iter().all(|s| s.delay == Duration::zero()));
            for s in started {
                q.finish(s.model);
            }
        }
    }

    #[test]
    fn no_more_runs_than_slots_go_at_once() {
        let schedules = every_minute(9);
        let mut q = RunQueue::new(&schedules, 4, at("2026-03-01T12:00:30Z"));
        let now = at("2026-03-01T12:01:00Z");
        assert_eq!(q.start_due(now).len(), 4);
        assert_eq!(q.running(), 4);
        assert!(q.start_due(now).is_empty());
        assert!(q.start(8, now).is_none(), "no slot free");
        assert_eq!(q.waiting(now), 5);
        q.finish(2);
        q.finish(2);
        assert_eq!(q.running(), 3, "finishing twice frees one slot");
        assert_eq!(q.start_due(now).len(), 1);
    }

    #[test]
    fn a_schedule_without_a_future_fire_time_never_runs() {
        // A fixed year in the past: no fire time after now.
        use std::str::FromStr;
        let past = Schedule {
            expression: "0 0 0 1 1 * 2001".into(),
            cron: cron::Schedule::from_str("0 0 0 1 1 * 2001").unwrap(),
        };
        let mut q = RunQueue::new([&past], 1, at("2026-03-01T12:00:00Z"));
        assert_eq!(q.never_due(), vec![0]);
        assert!(q.start_due(at("2030-01-01T00:00:00Z")).is_empty());
        assert_eq!(q.next_due_after(at("2026-03-01T12:00:00Z")), None);
    }

    #[test]
    fn an_asked_run_starts_at_once_and_after_the_models_own_run() {
        let schedules = every_minute(1);
        let mut q = RunQueue::new(&schedules, 2, at("2026-03-01T12:00:30Z"));
        let now = at("2026-03-01T12:00:40Z");
        assert!(q.start_due(now).is_empty(), "nothing due yet");
        assert!(q.ask(0, Asked::Sync, now));
        assert!(!q.ask(0, Asked::Sync, now), "asked once, however often");
        let started = q.start_due(now);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].asked, Some(Asked::Sync));
        // Asked while its run goes: it waits for the run to end, never overlapping it.
        assert!(q.ask(0, Asked::RetryRefused, now));
        assert!(q.start_due(now).is_empty());
        q.finish(0);
        let started = q.start_due(now);
        assert_eq!(started[0].asked, Some(Asked::RetryRefused));
    }

    #[test]
    fn an_asked_retry_leaves_the_scheduled_run_due() {
        let schedules = every_minute(1);
        let mut q = RunQueue::new(&schedules, 1, at("2026-03-01T12:00:30Z"));
        let now = at("2026-03-01T12:01:10Z");
        assert!(q.ask(0, Asked::RetryRefused, now));
        let first = q.start_due(now);
        assert_eq!(first[0].asked, Some(Asked::RetryRefused));
        q.finish(0);
        let second = q.start_due(now);
        assert_eq!(second.len(), 1, "the fire time of 12:01 is still served");
        assert_eq!(second[0].asked, None);
        assert_eq!(second[0].due_at, at("2026-03-01T12:01:00Z"));
    }
}
