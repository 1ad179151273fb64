//! The real binary as a child process that dies and is started again, for the crash-safety and
//! soak tests.
//!
//! Each *life* of the process ends either by `kill -9` or by exiting on its own. When a life
//! ends we wait for the sandbox (in-process, so it outlives every child) to finish the requests
//! it already received, then note how many events it has recorded and which event ids the
//! delivery ledger holds. That is enough to tell the one allowed repeat (an event whose batch
//! was in flight when the process died, so its ledger row never committed) from the forbidden
//! one (an event sent again after its acknowledgement was committed). Within a life, a ledger
//! watcher notes when each event id first appears in the ledger, so a re-send after commit is
//! caught there too (up to the watcher's polling interval).

use crate::helpers::*;
use capi_sync::sandbox::{Faults, SandboxHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Killed,
    Exited(i32),
}

/// One process life, and what the world looked like when it ended.
#[derive(Debug)]
pub struct Life {
    pub command: &'static str,
    pub ending: Ending,
    pub duration: Duration,
    /// Index of the first recorded event of this life (the sandbox's count when it started).
    pub recorded_from: usize,
    /// The sandbox's count of recorded events once this life's requests were finished.
    pub recorded_to: usize,
    /// Event ids in the delivery ledger when the life had ended.
    pub ledger_at_end: HashSet<String>,
}

/// Batches of one model whose events Meta may have received without their ledger rows being
/// committed: those in flight (`meta.concurrency`), one finished batch waiting to be queued,
/// and those acknowledged and waiting for the group commit (its queue holds 2, and the commit
/// under way merges at most what the queue held plus the one it took).
pub fn uncommitted_batches_at_most(concurrency: usize) -> usize {
    concurrency + 1 + 2 + 3
}

/// Where the kill lands.
#[derive(Debug, Clone, Copy)]
pub enum KillPoint {
    /// This long after the process was started (may hit start-up, migrations, the lock).
    AfterStart(Duration),
    /// This long after the sandbox received the life's first request (a batch in flight).
    AfterFirstRequest(Duration),
}

/// Event ids first seen in the ledger by one poll, and a count of recorded events taken after
/// that poll: any recording of those ids at or past that index came after their commit.
type Checkpoint = (usize, Vec<String>);

pub struct Harness {
    pub db: TestDb,
    pub sandbox: Arc<SandboxHandle>,
    pub rng: StdRng,
    pub lives: Vec<Life>,
    watcher: Option<(CancellationToken, JoinHandle<Vec<Checkpoint>>)>,
    checkpoints: Vec<Checkpoint>,
    /// Holds the config file and the children's log.
    _dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
}

/// The seed from `CAPI_TEST_SEED` (to replay a failure), else a fresh one. Printed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("CAPI_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("{test}: seed {seed} (replay with CAPI_TEST_SEED={seed})");
    seed
}

impl Harness {
    /// `meta_toml` is the body of the `[meta]` table after the URL and token.
    pub async fn new(seed: u64, faults: Faults, meta_toml: &str, models_toml: &str) -> Harness {
        let db = TestDb::new().await;
        let sandbox = start_sandbox(faults).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("capi-sync.toml");
        let text = format!(
            // No metrics endpoint: tests and other services run side by side on one host.
            "[warehouse]\nurl = \"{url}\"\nstatement_timeout = \"20s\"\n\
             [service]\nmetrics_addr = \"\"\n\
             [meta]\ngraph_url = \"{graph}\"\naccess_token = \"{TOKEN}\"\n{meta_toml}\n{models_toml}",
            url = db.url,
            graph = sandbox.base_url(),
        );
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("capi-sync.log");
        Harness {
            db,
            sandbox: Arc::new(sandbox),
            rng: StdRng::seed_from_u64(seed),
            lives: Vec::new(),
            watcher: None,
            checkpoints: Vec::new(),
            _dir: dir,
            config,
            log,
        }
    }

    pub fn spawn(&self, command: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capi-sync"));
        // The binary reads every CAPI_SYNC_* variable as config (CAPI_SYNC_TEST_PG is ours).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CAPI_SYNC_") {
                cmd.env_remove(name);
            }
        }
        cmd.args(["--config", self.config.to_str().unwrap(), command])
            .env(
                "RUST_LOG",
                // Warnings, and the line that says a shutdown signal came in.
                std::env::var("CAPI_TEST_CHILD_LOG")
                    .unwrap_or_else(|_| "warn,capi_sync::app=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start capi-sync")
    }

    /// The children's stderr so far, without the retry chatter (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("retrying")).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Starts `command`, kills it with SIGKILL at `point` (unless it exits first), and records
    /// the life.
    pub async fn live_and_kill(&mut self, command: &'static str, point: KillPoint) -> Ending {
        let recorded_from = self.recorded();
        let requests_before = self.sandbox.stats().requests;
        let started = Instant::now();
        let mut child = self.spawn(command);
        let mut deadline = match point {
            KillPoint::AfterStart(d) => Some(started + d),
            KillPoint::AfterFirstRequest(_) => None,
        };
        let ending = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Ending::Exited(status.code().unwrap_or(-1));
            }
            let now = Instant::now();
            match (deadline, point) {
                (Some(at), _) if now >= at => {
                    // SIGKILL: no handler runs, nothing is flushed or committed.
                    child.start_kill().unwrap();
                    child.wait().await.unwrap();
                    break Ending::Killed;
                }
                (None, KillPoint::AfterFirstRequest(d))
                    if self.sandbox.stats().requests > requests_before =>
                {
                    deadline = Some(now + d);
                }
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "capi-sync {command} neither exited nor reached its kill point in 60 s\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        self.end_life(command, ending, started, recorded_from).await;
        ending
    }

    /// Runs `command` until it exits (within `limit`), and records the life.
    pub async fn live_until_exit(&mut self, command: &'static str, limit: Duration) -> i32 {
        let recorded_from = self.recorded();
        let started = Instant::now();
        let mut child = self.spawn(command);
        let status = match tokio::time::timeout(limit, child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => panic!(
                "capi-sync {command} did not exit within {limit:?}\n{}",
                self.log_tail()
            ),
        };
        let code = status.code().unwrap_or(-1);
        self.end_life(command, Ending::Exited(code), started, recorded_from)
            .await;
        code
    }

    /// Starts `command` (the `run` service), polls `done` every 250 ms, then sends SIGTERM and
    /// records the life. Returns the exit code and how long the exit took after the signal.
    pub async fn live_until_then_sigterm(
        &mut self,
        command: &'static str,
        limit: Duration,
        mut done: impl AsyncFnMut(&Harness) -> bool,
    ) -> (i32, Duration) {
        let recorded_from = self.recorded();
        let started = Instant::now();
        let mut child = self.spawn(command);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "capi-sync {command} exited by itself ({status})\n{}",
                    self.log_tail()
                );
            }
            if done(self).await {
                break;
            }
            assert!(
                started.elapsed() < limit,
                "capi-sync {command} did not get done within {limit:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let signalled = Instant::now();
        sigterm(child.id().unwrap());
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .unwrap_or_else(|_| panic!("capi-sync {command} ignored SIGTERM for 60 s"))
            .unwrap();
        let took = signalled.elapsed();
        let code = status.code().unwrap_or(-1);
        self.end_life(command, Ending::Exited(code), started, recorded_from)
            .await;
        (code, took)
    }

    /// `sync` until it exits 0, at most `attempts` times (a run may fail when the sandbox's
    /// faults exhaust a batch's retries; the next run resumes at the last acknowledged batch).
    pub async fn sync_until_success(&mut self, attempts: usize, limit: Duration) {
        for _ in 0..attempts {
            if self.live_until_exit("sync", limit).await == 0 {
                return;
            }
        }
        panic!(
            "capi-sync sync did not succeed in {attempts} attempts\n{}",
            self.log_tail()
        );
    }

    fn recorded(&self) -> usize {
        self.sandbox.events().len()
    }

    async fn end_life(
        &mut self,
        command: &'static str,
        ending: Ending,
        started: Instant,
        recorded_from: usize,
    ) {
        let duration = started.elapsed();
        // Requests the sandbox had fully received when the process died are still answered
        // (and recorded) by it; wait until it is quiet. The sandbox records before its
        // `slow_ms` delay, so this only waits for request bodies already on the way.
        let mut last = (self.sandbox.stats().requests, self.recorded());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = (self.sandbox.stats().requests, self.recorded());
            if now == last {
                break;
            }
            last = now;
        }
        let ledger_at_end = self.ledger().await;
        self.lives.push(Life {
            command,
            ending,
            duration,
            recorded_from,
            recorded_to: last.1,
            ledger_at_end,
        });
    }

    pub async fn ledger(&self) -> HashSet<String> {
        // Not prepared: a plan cached between two migrations (one changes the column's
        // collation) fails every later call with "cached plan must not change result type".
        match sqlx::query_scalar::<_, String>("SELECT event_id FROM capi_sync.deliveries")
            .persistent(false)
            .fetch_all(&self.db.pool)
            .await
        {
            Ok(ids) => ids.into_iter().collect(),
            // Before the first migration the table does not exist yet.
            Err(e)
                if e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "42P01") =>
            {
                HashSet::new()
            }
            Err(e) => panic!("reading the ledger: {e}"),
        }
    }

    /// Event ids the ledger holds more than once for one model (the writers keep them unique;
    /// no index does).
    pub async fn ledger_duplicates(&self) -> Vec<(String, String, i64)> {
        sqlx::query_as(
            "SELECT model, event_id, count(*) FROM capi_sync.deliveries
             GROUP BY model, event_id HAVING count(*) > 1",
        )
        .fetch_all(&self.db.pool)
        .await
        .expect("ledger duplicates")
    }

    /// Polls the ledger every 200 ms until [`Self::stop_watching_ledger`].
    pub fn watch_ledger(&mut self) {
        let stop = CancellationToken::new();
        let (pool, sandbox, until) = (self.db.pool.clone(), self.sandbox.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seen: HashSet<String> = HashSet::new();
            let mut checkpoints = Vec::new();
            while !until.is_cancelled() {
                let ids: Vec<String> =
                    sqlx::query_scalar("SELECT event_id FROM capi_sync.deliveries")
                        .persistent(false)
                        .fetch_all(&pool)
                        .await
                        .unwrap_or_default();
                let new: Vec<String> = ids.into_iter().filter(|id| !seen.contains(id)).collect();
                if !new.is_empty() {
                    // The sandbox counts an event just after storing it: a moment later, the
                    // count covers every event stored before the query returned.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let recorded = sandbox.stats().events_accepted as usize;
                    seen.extend(new.iter().cloned());
                    checkpoints.push((recorded, new));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            checkpoints
        });
        self.watcher = Some((stop, task));
    }

    pub async fn stop_watching_ledger(&mut self) {
        if let Some((stop, task)) = self.watcher.take() {
            stop.cancel();
            self.checkpoints = task.await.unwrap();
        }
    }

    pub fn random_ms(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.random_range(range))
    }

    /// What the recorded events say about repeats, checked against each life's ledger.
    pub fn audit(&self) -> Audit {
        let events = self.sandbox.events();
        let life_of = |index: usize| {
            self.lives
                .iter()
                .position(|l| index >= l.recorded_from && index < l.recorded_to)
                .expect("every recorded event belongs to a life")
        };
        let mut recordings: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let id = e["event_id"].as_str().expect("event_id").to_string();
            recordings.entry(id).or_default().push(i);
        }
        // For each id, the number of recorded events by which it was surely committed.
        let mut committed_by: HashMap<&str, usize> = HashMap::new();
        for life in &self.lives {
            for id in &life.ledger_at_end {
                committed_by.entry(id).or_insert(life.recorded_to);
            }
        }
        for (recorded, ids) in &self.checkpoints {
            for id in ids {
                let at = committed_by.entry(id).or_insert(*recorded);
                *at = (*at).min(*recorded);
            }
        }
        let mut audit = Audit::default();
        for (id, at) in &recordings {
            // Forbidden: recorded again once the ledger held the id.
            if let Some(&by) = committed_by.get(id.as_str()) {
                if let Some(&i) = at.iter().find(|&&i| i >= by) {
                    audit.resent_after_commit.push((id.clone(), i));
                }
            }
            for pair in at.windows(2) {
                let (before, after) = (life_of(pair[0]), life_of(pair[1]));
                if before == after {
                    audit.repeats_within_a_life += 1;
                } else {
                    *audit.repeats_after_life.entry(before).or_default() += 1;
                }
            }
        }
        for (k, life) in self.lives.iter().enumerate() {
            let unsettled = events[life.recorded_from..life.recorded_to]
                .iter()
                .filter_map(|e| e["event_id"].as_str())
                .filter(|id| !life.ledger_at_end.contains(*id))
                .collect::<HashSet<_>>()
                .len();
            audit.unsettled_at_end.insert(k, unsettled);
        }
        audit.recorded_ids = recordings.keys().cloned().collect();
        audit.recorded = events.len();
        audit
    }

    /// One line per life, for the test output.
    pub fn describe_lives(&self, audit: &Audit) -> String {
        self.lives
            .iter()
            .enumerate()
            .map(|(k, l)| {
                format!(
                    "  life {k}: {} {:?} after {} ms, {} events recorded, {} recorded but not in the ledger at its end, {} re-sent by later lives",
                    l.command,
                    l.ending,
                    l.duration.as_millis(),
                    l.recorded_to - l.recorded_from,
                    audit.unsettled_at_end[&k],
                    audit.repeats_after_life.get(&k).copied().unwrap_or(0),
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Debug, Default)]
pub struct Audit {
    /// Event ids recorded again after the ledger held them (must stay empty), with the index
    /// of that recording.
    pub resent_after_commit: Vec<(String, usize)>,
    /// Extra recordings of an id already recorded earlier in the same life (lost
    /// acknowledgements: dropped connections).
    pub repeats_within_a_life: usize,
    /// Extra recordings of an id first recorded in life k (batches in flight when k ended).
    pub repeats_after_life: BTreeMap<usize, usize>,
    /// Per life: distinct ids it recorded that were not in the ledger when it ended.
    pub unsettled_at_end: BTreeMap<usize, usize>,
    pub recorded_ids: HashSet<String>,
    pub recorded: usize,
}

impl Audit {
    pub fn repeats(&self) -> usize {
        self.repeats_within_a_life + self.repeats_after_life.values().sum::<usize>()
    }
}

pub async fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The stored cursor of a model as (cursor value as timestamptz text, row key).
pub async fn cursor(db: &TestDb, model: &str) -> Option<(String, Vec<String>)> {
    sqlx::query_as::<_, (String, Vec<String>)>(
        "SELECT cursor_value::timestamptz::text, row_key FROM capi_sync.cursors WHERE model = $1",
    )
    .bind(model)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

/// The last (updated_at, id) of `crm.leads` among rows matching `filter`, in the form of
/// [`cursor`].
pub async fn last_row(db: &TestDb, filter: &str) -> (String, Vec<String>) {
    sqlx::query_as::<_, (String, Vec<String>)>(&format!(
        "SELECT updated_at::text, ARRAY[id::text] FROM crm.leads WHERE {filter}
         ORDER BY updated_at DESC, id DESC LIMIT 1"
    ))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}
