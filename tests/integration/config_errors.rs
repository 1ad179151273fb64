#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error by design.

use capi_sync::config::{Config, ConfigError};
use std::path::Path;

fn load(models: &str) -> Result<Config, ConfigError> {
    let text = format!("[warehouse]\nurl = \"postgres://localhost/x\"\n{models}");
    Config::from_toml_str(&text, Path::new("."))
}

fn load_file(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capi-sync.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

const GOOD: &str = r#"
[[models]]
name = "m1"
pixel_id = "123"
schedule = "*/15 * * * *"
sql = "SELECT 1"
primary_key = "id"
cursor = "updated_at"
"#;

#[test]
fn the_example_config_loads_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let c = Config::load(&dir.join("capi-sync.example.toml")).expect("example config is valid");
    assert_eq!(c.models.len(), 2);
    let crm = c.model("crm_lead_stages").unwrap();
    assert!(crm.sql.contains("crm.lead_events"));
    // `crm` is shorthand for system_generated + custom_data.event_source = crm.
    let consts: Vec<String> = crm
        .constants
        .iter()
        .map(|(t, v)| format!("{}={v}", t.path()))
        .collect();
    assert!(
        consts.contains(&"action_source=\"system_generated\"".to_string()),
        "{consts:?}"
    );
    assert!(
        consts.contains(&"custom_data.event_source=\"crm\"".to_string()),
        "{consts:?}"
    );
    assert_eq!(
        c.model("store_purchases").unwrap().default_country,
        Some("us")
    );
}

#[test]
fn the_demo_config_built_from_the_example_validates() {
    let c =
        capi_sync::commands::demo::demo_config("postgres://localhost/demo", "http://127.0.0.1:1")
            .unwrap();
    assert_eq!(c.models.len(), 2);
    assert_eq!(c.meta.graph_url, "http://127.0.0.1:1");
}

#[test]
fn a_valid_minimal_model_loads_with_the_default_api_version() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.models[0].name, "m1");
    assert_eq!(c.meta.api_version, "v27.0");
}

#[test]
fn an_unknown_key_names_the_model_the_key_and_the_file() {
    let e = load_file(&format!("{GOOD}colour = \"blue\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("colour"), "{e}");
    assert!(e.contains("model `m1`"), "{e}");
    assert!(e.contains("capi-sync.toml"), "{e}");
}

#[test]
fn a_model_without_sql_is_an_error_naming_the_model() {
    let e = load(&GOOD.replace("sql = \"SELECT 1\"\n", ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model `m1`") && e.contains("`sql` is missing"),
        "{e}"
    );
}

#[test]
fn a_bad_cron_is_an_error_naming_the_model_and_key() {
    let e = load(&GOOD.replace("*/15 * * * *", "every 15 minutes"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model `m1`") && e.contains("schedule") && e.contains("every 15 minutes"),
        "{e}"
    );
}

#[test]
fn two_models_with_one_name_are_an_error() {
    let e = load(&format!("{GOOD}{GOOD}")).unwrap_err().to_string();
    assert!(e.contains("model `m1`") && e.contains("unique"), "{e}");
}

#[test]
fn an_unknown_constant_parameter_is_an_error() {
    let e = load(&format!(
        "{GOOD}[models.constants]\nemail_address = \"x\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("model `m1`") && e.contains("email_address"),
        "{e}"
    );
}

#[test]
fn an_invalid_action_source_constant_is_an_error() {
    let e = load(&format!(
        "{GOOD}[models.constants]\naction_source = \"store\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("action_source") && e.contains("physical_store"),
        "{e}"
    );
}

#[test]
fn env_overrides_the_file_with_double_underscore_nesting() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "capi-sync.toml",
            &format!("[meta]\napi_version = \"v24.0\"\n{GOOD}"),
        )?;
        jail.set_env("CAPI_SYNC_META__API_VERSION", "v25.0");
        jail.set_env("CAPI_SYNC_META__ACCESS_TOKEN", "secret-from-env");
        let c = Config::load(Path::new("capi-sync.toml")).map_err(|e| e.to_string())?;
        assert_eq!(c.meta.api_version, "v25.0");
        assert_eq!(c.meta.access_token.expose(), "secret-from-env");
        assert!(!format!("{c:?}").contains("secret-from-env"));
        Ok(())
    });
}

#[test]
fn database_url_fills_the_warehouse_url_when_nothing_else_does() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("capi-sync.toml", GOOD)?;
        jail.set_env("DATABASE_URL", "postgres://from-env/wh");
        let c = Config::load(Path::new("capi-sync.toml")).map_err(|e| e.to_string())?;
        assert_eq!(c.warehouse.url.expose(), "postgres://from-env/wh");
        Ok(())
    });
}
