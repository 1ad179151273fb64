//! Running the real `capi-sync` binary against a test database and the sandbox: where a
//! command's output and exit code are the behaviour under test.

use super::{config_text, TestDb};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What a finished command printed, and its exit code.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Both streams, for assertion messages and for scans that must cover everything printed.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The first line of stdout that starts with `prefix`; the test fails, showing stdout,
    /// when there is none.
    pub fn stdout_line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{}", self.stdout))
    }
}

/// A config file in a temporary directory, for the binary; the directory goes with it.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// A config file pointed at `db` and `graph_url`, whose `[service]` listens on `service`
/// (`""`: no endpoints).
pub fn config_file(db: &TestDb, graph_url: &str, models_toml: &str, service: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ops-test.toml");
    let text = config_text(
        db,
        graph_url,
        &format!("[service]\nmetrics_addr = \"{service}\""),
        models_toml,
    );
    std::fs::write(&path, text).unwrap();
    ConfigFile { _dir: dir, path }
}

/// The binary with `--config config` and `args`, its output captured and no setting inherited
/// from the environment of whoever runs the tests; it is killed if the test drops it.
pub fn command(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = binary();
    cmd.arg("--config").arg(config).args(args);
    cmd.env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The binary, with no setting inherited from the environment of whoever runs the tests: it
/// reads every `CAPI_SYNC_*` variable, and `DATABASE_URL`, as config.
pub fn binary() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_capi-sync"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CAPI_SYNC_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Sends SIGTERM to process `pid`, as an orchestrator stopping the service would.
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// Runs the binary to the end.
pub async fn cli(config: &Path, args: &[&str]) -> Output {
    let out = command(config, args).output().await.expect("run capi-sync");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
