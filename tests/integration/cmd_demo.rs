//! `capi-sync demo`: after its sync it shows the rows against Meta's window (before and after
//! the sync) and the match quality the sandbox derives from what it received.

use crate::helpers::*;

/// The number before `marker` in `line` ("6 rows already outside" → 6).
fn count_before(line: &str, marker: &str) -> i64 {
    let head = &line[..line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {line:?}"))];
    head.split_whitespace()
        .rev()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("a count before {marker:?} in {line:?}"))
}

#[tokio::test]
async fn demo_shows_rows_leaving_metas_window_and_the_quality_read_after_its_sync() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = binary();
    let out = cmd
        .arg("demo")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = |section: &str, model: &str| -> String {
        let rest = &stdout[stdout
            .find(section)
            .unwrap_or_else(|| panic!("{section:?} in {stdout}"))..];
        rest.lines()
            .find(|l| l.starts_with(&format!("  {model}: ")))
            .unwrap_or_else(|| panic!("{model} after {section:?} in {stdout}"))
            .to_string()
    };
    for model in ["crm_lead_stages", "store_purchases"] {
        let before = line("before the sync", model);
        assert!(
            before.contains("leaving Meta's window within 24h"),
            "{before}"
        );
        let expired = count_before(&before, "already outside it");
        // The rows already outside the window are the ones the sync refuses as too old.
        let summary = stdout
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{model}: succeeded")))
            .find(|l| l.trim_start().starts_with("refused:"))
            .unwrap_or_else(|| panic!("{model}'s refusals in {stdout}"));
        let too_old = summary
            .split("event_time_too_old ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or_else(|| panic!("{summary}"));
        assert_eq!(expired, too_old, "{before}\n{summary}");
        let after = line("after the sync", model);
        assert!(
            after.contains(&format!(
                "  {model}: 0 rows waiting; 0 rows leaving Meta's window"
            )),
            "{after}"
        );
    }
    let quality = &stdout[stdout
        .find("match quality (")
        .expect("a match quality section")..];
    assert!(
        quality.contains("store_purchases (dataset ")
            && quality.contains("Purchase: offline score"),
        "{quality}"
    );
    assert!(quality.contains("crm_lead_stages (dataset "), "{quality}");
}
