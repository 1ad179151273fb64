//! SIGTERM/SIGINT on the real binary: the runs stop reading and settle what is in flight, for
//! at most `service.shutdown_grace`, then the process exits; a second signal exits at once.

use crate::helpers::*;
use crate::proxy::{Mode, Proxy};
use crate::stalls::{paged_leads_model, proxied_config_text, wait_until};
use capi_sync::sandbox::{Faults, SandboxHandle};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The exit status of a process stopped before its runs settled (`capi_sync::app::EXIT_FORCED`).
const FORCED: i32 = 130;

struct Process {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// `capi-sync sync leads` with this config text.
    fn sync(config_text: &str) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("capi-sync.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = dir.path().join("capi-sync.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capi-sync"));
        // The binary reads every CAPI_SYNC_* variable as config (CAPI_SYNC_TEST_PG is ours).
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CAPI_SYNC_") {
                cmd.env_remove(name);
            }
        }
        let child = cmd
            .args(["--config", config.to_str().unwrap(), "sync", "leads"])
            // Warnings, and the line that says a shutdown signal came in.
            .env("RUST_LOG", "warn,capi_sync::app=info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .expect("start capi-sync");
        Process {
            child,
            log,
            _dir: dir,
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process says it saw the shutdown signal.
    async fn saw_signal(&self) {
        wait_until("the process reports the shutdown signal", || {
            self.log().contains("shutdown requested")
        })
        .await;
    }

    /// The exit code, waited for up to `limit` (a hang fails the test).
    async fn exit_code(&mut self, limit: Duration) -> i32 {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap().code().unwrap_or(-1),
            Err(_) => panic!("capi-sync did not exit within {limit:?}\n{}", self.log()),
        }
    }
}

async fn seeded(rows: i64) -> TestDb {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        rows,
        "now() - interval '1 day' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
    db
}

/// The last run's status in the `runs` table.
async fn last_run_status(db: &TestDb) -> String {
    sqlx::query_scalar("SELECT status FROM capi_sync.runs ORDER BY id DESC LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// A config for processes whose batches Meta (the sandbox) answers after `slow_ms`.
fn slow_meta_config(db: &TestDb, sandbox: &SandboxHandle, grace: &str) -> String {
    proxied_config_text(
        db,
        None,
        None,
        &sandbox.base_url(),
        &format!("shutdown_grace = \"{grace}\""),
        &paged_leads_model(),
    )
    // Requests wait on the sandbox rather than time out and retry.
    .replace("request_timeout = \"5s\"", "request_timeout = \"120s\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_sync_stalled_on_the_warehouse_and_frees_its_model() {
    let db = seeded(3000).await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 100,
        ..Faults::default()
    })
    .await;
    let proxy = Proxy::to_postgres().await;
    let text = proxied_config_text(
        &db,
        Some(&proxy),
        None,
        &sandbox.base_url(),
        // Neither the deadline nor the grace ends this run: the signal does.
        "run_deadline = \"1h\"\nshutdown_grace = \"5m\"",
        &paged_leads_model(),
    );
    let mut process = Process::sync(&text);
    wait_until("some events are sent", || sandbox.events().len() >= 200).await;
    proxy.set(Mode::Stall);
    process.signal(libc::SIGTERM);
    // Settled and exited on its own (not forced), with the read still stalled.
    let code = process.exit_code(Duration::from_secs(60)).await;
    assert_eq!(code, 0, "{}", process.log());
    assert_eq!(last_run_status(&db).await, "cancelled");
    let ctx = context(
        capi_sync::config::Config::from_toml_str(
            &text.replace(&proxy.url(&db.url), &db.url),
            std::path::Path::new("."),
        )
        .unwrap(),
    )
    .await;
    ctx.state
        .try_lock_model("leads")
        .await
        .unwrap()
        .expect("the model's lock was released")
        .release()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_without_waiting_for_the_batches_in_flight() {
    let db = seeded(200).await;
    // Meta takes ten minutes to answer: only the second signal can end the wait.
    let sandbox = start_sandbox(Faults {
        slow_ms: 600_000,
        ..Faults::default()
    })
    .await;
    let mut process = Process::sync(&slow_meta_config(&db, &sandbox, "10m"));
    wait_until("a batch is in flight", || sandbox.stats().requests > 0).await;
    process.signal(libc::SIGTERM);
    process.saw_signal().await;
    process.signal(libc::SIGINT);
    assert_eq!(
        process.exit_code(Duration::from_secs(60)).await,
        FORCED,
        "{}",
        process.log()
    );
    assert!(process.log().contains("second shutdown signal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_one_signal_the_process_exits_once_the_shutdown_grace_has_passed() {
    let db = seeded(200).await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 600_000,
        ..Faults::default()
    })
    .await;
    let mut process = Process::sync(&slow_meta_config(&db, &sandbox, "2s"));
    wait_until("a batch is in flight", || sandbox.stats().requests > 0).await;
    process.signal(libc::SIGTERM);
    assert_eq!(
        process.exit_code(Duration::from_secs(60)).await,
        FORCED,
        "{}",
        process.log()
    );
    assert!(
        process.log().contains("shutdown_grace"),
        "{}",
        process.log()
    );
    // Nothing was acknowledged, so nothing moved: the next run sends every row.
    let cursor = cursor_key(&db.pool, "leads").await;
    assert_eq!(cursor, None);
}
