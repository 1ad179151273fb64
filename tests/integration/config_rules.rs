//! Settings that cannot work are refused when the config loads, naming the model and the key;
//! variables that belong to the command line are never read as config keys.
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error by design.

use capi_sync::config::{Config, ConfigError};
use std::path::Path;

fn load(extra: &str, model_keys: &str) -> Result<Config, ConfigError> {
    let text = format!(
        r#"[warehouse]
url = "postgres://localhost/x"
{extra}
[[models]]
name = "leads"
pixel_id = "123"
schedule = "*/15 * * * *"
sql = "SELECT 1"
primary_key = "id"
cursor = "updated_at"
{model_keys}
"#
    );
    Config::from_toml_str(&text, Path::new("."))
}

#[test]
fn a_model_page_size_of_zero_is_refused_naming_the_model_and_key() {
    let e = load("", "page_size = 0").unwrap_err().to_string();
    assert!(e.contains("model `leads`"), "{e}");
    assert!(e.contains("key `page_size`"), "{e}");
    assert!(e.contains("at least 1"), "{e}");
    assert_eq!(load("", "page_size = 1").unwrap().models[0].page_size, 1);
}

#[test]
fn a_model_batch_size_outside_meta_limit_is_refused_naming_the_model_and_key() {
    for bad in [0, 1001] {
        let e = load("", &format!("batch_size = {bad}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model `leads`"), "{e}");
        assert!(e.contains("key `batch_size`"), "{e}");
        assert!(e.contains(&bad.to_string()), "{e}");
        assert!(e.contains("1000 events per request"), "{e}");
    }
    assert_eq!(
        load("", "batch_size = 1000").unwrap().models[0].batch_size,
        1000
    );
}

#[test]
fn a_lookback_longer_than_the_ledger_retention_is_refused_naming_both() {
    let e = load("[state]\nledger_retention = \"3d\"", "lookback = \"4d\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("model `leads`"), "{e}");
    assert!(e.contains("key `lookback` = \"4d\""), "{e}");
    assert!(e.contains("key `state.ledger_retention` = \"3d\""), "{e}");
    // Equal is allowed: every re-read row is still in the ledger.
    let c = load("[state]\nledger_retention = \"3d\"", "lookback = \"72h\"").unwrap();
    assert_eq!(
        c.models[0].lookback,
        std::time::Duration::from_secs(72 * 3600)
    );
}

#[test]
fn the_default_retention_bounds_the_lookback_too() {
    let e = load("", "lookback = \"15d\"").unwrap_err().to_string();
    assert!(e.contains("key `state.ledger_retention` = \"14d\""), "{e}");
    assert!(load("", "lookback = \"2h\"").is_ok());
}

#[test]
fn the_sandbox_token_variable_is_not_read_as_a_config_key() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "capi-sync.toml",
            "[[models]]\nname = \"m\"\npixel_id = \"1\"\nschedule = \"* * * * *\"\nsql = \"SELECT 1\"\nprimary_key = \"id\"\ncursor = \"u\"\n",
        )?;
        jail.set_env("CAPI_SYNC_SANDBOX_TOKEN", "sandbox-secret");
        jail.set_env("CAPI_SYNC_LOG_FORMAT", "json");
        jail.set_env("CAPI_SYNC_CONFIG", "capi-sync.toml");
        let c = Config::load(Path::new("capi-sync.toml")).map_err(|e| e.to_string())?;
        assert_eq!(c.models.len(), 1);
        // A variable that is neither a command-line one nor a key is still an error.
        jail.set_env("CAPI_SYNC_SANDBOX_TOKENS", "x");
        let e = Config::load(Path::new("capi-sync.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sandbox_tokens"), "{e}");
        Ok(())
    });
}
