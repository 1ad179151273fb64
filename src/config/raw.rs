//! The configuration as deserialized, before validation: every key as written, with serde's
//! defaults. `validate` (in `mod.rs`) turns it into the typed settings.

use super::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) warehouse: RawWarehouse,
    pub(super) state: RawState,
    pub(super) meta: RawMeta,
    pub(super) service: RawService,
    #[serde(default)]
    pub(super) models: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWarehouse {
    pub(super) url: Secret,
    pub(super) statement_timeout: String,
    pub(super) page_size: u32,
    pub(super) page_bytes: u64,
    pub(super) max_connections: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) schema: String,
    pub(super) url: Option<Secret>,
    pub(super) ledger_retention: String,
    pub(super) statement_timeout: String,
    pub(super) max_connections: u32,
    pub(super) ledger_partition_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMeta {
    pub(super) graph_url: String,
    pub(super) api_version: String,
    pub(super) access_token: Secret,
    pub(super) access_token_file: Option<PathBuf>,
    pub(super) test_event_code: Option<String>,
    pub(super) batch_size: u32,
    pub(super) concurrency: u32,
    pub(super) max_concurrency: u32,
    pub(super) request_timeout: String,
    pub(super) max_attempts: u32,
    pub(super) partner_agent: Option<String>,
    pub(super) quality_interval: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) run_deadline: String,
    pub(super) shutdown_grace: String,
    pub(super) metrics_addr: Option<String>,
    pub(super) ui_addr: Option<String>,
    pub(super) admin_token: Secret,
    pub(super) max_concurrent_runs: u32,
    pub(super) expiring_within: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) name: Option<String>,
    pub(super) pixel_id: Option<toml::Value>,
    pub(super) schedule: Option<String>,
    pub(super) sql: Option<String>,
    pub(super) sql_file: Option<PathBuf>,
    pub(super) primary_key: Option<OneOrMany>,
    pub(super) cursor: Option<String>,
    #[serde(default)]
    pub(super) constants: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) columns: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) ignore_columns: Vec<String>,
    pub(super) default_country: Option<String>,
    pub(super) external_id: Option<String>,
    pub(super) test_event_code: Option<String>,
    pub(super) batch_size: Option<u32>,
    pub(super) page_size: Option<u32>,
    pub(super) lookback: Option<String>,
    #[serde(default = "yes")]
    pub(super) enabled: bool,
}

fn yes() -> bool {
    true
}
