//! The real binary: exit codes, stderr lines, and the normalize command.

use crate::helpers::*;
use capi_sync::sandbox::Faults;
use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_capi-sync"))
}

fn write_config(
    dir: &std::path::Path,
    db: &TestDb,
    graph_url: &str,
    models: &str,
) -> std::path::PathBuf {
    let path = dir.join("capi-sync.toml");
    let text = format!(
        "[warehouse]\nurl = \"{}\"\n[meta]\ngraph_url = \"{graph_url}\"\nmax_attempts = 1\n{models}",
        db.url
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn sync_exits_zero_and_prints_a_summary_per_model() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 5, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &db, &sandbox.base_url(), LEADS_MODEL);
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["--config", cfg.to_str().unwrap(), "sync"])
            .env("CAPI_SYNC_META__ACCESS_TOKEN", TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("leads: succeeded — 5 rows read, 5 events sent"),
        "{stdout}"
    );
    assert_eq!(sandbox.events().len(), 5);
}

#[tokio::test]
async fn sync_exits_one_with_a_reason_line_when_a_model_fails() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 5, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &db, &sandbox.base_url(), LEADS_MODEL);
    // A wrong token: Meta answers 190, the run stops at once.
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["--config", cfg.to_str().unwrap(), "sync", "leads"])
            .env("CAPI_SYNC_META__ACCESS_TOKEN", "wrong-token-value")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("capi-sync: model leads failed"))
        .expect(&stderr);
    assert!(
        line.contains("access_token") && line.contains("190"),
        "{line}"
    );
    assert!(
        !stderr.contains("wrong-token-value"),
        "the token leaked into stderr"
    );
}

#[tokio::test]
async fn a_broken_config_exits_two_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capi-sync.toml");
    std::fs::write(
        &path,
        "[warehouse]\nurl = \"postgres://x/y\"\nsurprise = 1\n",
    )
    .unwrap();
    let out = bin()
        .args(["--config", path.to_str().unwrap(), "sync"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("surprise") && stderr.contains("capi-sync.toml"),
        "{stderr}"
    );
}

#[test]
fn normalize_reads_json_lines_and_answers_each() {
    let mut child = bin()
        .args(["normalize", "--default-country", "us"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"field\":\"ph\",\"value\":\"(650) 253-0000\"}\n{\"field\":\"country\",\"value\":\"United States\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["normalized"], "16502530000");
    assert_eq!(lines[1]["normalized"], "us");
    assert_eq!(
        lines[1]["sha256"],
        "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
    );
}
