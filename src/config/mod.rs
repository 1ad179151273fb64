//! Layered configuration: embedded defaults < `DATABASE_URL` < TOML file < `CAPI_SYNC_*` env,
//! then validation into typed settings. Every error names the key, the model and the source.

mod duration;
mod graph_url;
mod secret;

pub use duration::parse_duration;
pub use secret::{redact_url, shown, Secret};

use crate::normalize::country_code;
use crate::params::{self, Target, TopField};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The commented defaults, embedded in the binary.
pub const DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// Meta's `action_source` values (capi-reference.md §2).
pub const ACTION_SOURCES: &[&str] = &[
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
];

/// One or more configuration problems, each on its own line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config error: {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn one(p: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![p.into()],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw, as deserialized.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    warehouse: RawWarehouse,
    state: RawState,
    meta: RawMeta,
    service: RawService,
    #[serde(default)]
    models: Vec<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarehouse {
    url: Secret,
    statement_timeout: String,
    page_size: u32,
    page_bytes: u64,
    max_connections: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    schema: String,
    url: Option<Secret>,
    ledger_retention: String,
    statement_timeout: String,
    max_connections: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    graph_url: String,
    api_version: String,
    access_token: Secret,
    access_token_file: Option<PathBuf>,
    test_event_code: Option<String>,
    batch_size: u32,
    concurrency: u32,
    request_timeout: String,
    max_attempts: u32,
    partner_agent: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    run_deadline: String,
    shutdown_grace: String,
    metrics_addr: Option<String>,
    max_concurrent_runs: u32,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: Option<String>,
    pixel_id: Option<toml::Value>,
    schedule: Option<String>,
    sql: Option<String>,
    sql_file: Option<PathBuf>,
    primary_key: Option<OneOrMany>,
    cursor: Option<String>,
    #[serde(default)]
    constants: BTreeMap<String, toml::Value>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    #[serde(default)]
    ignore_columns: Vec<String>,
    default_country: Option<String>,
    external_id: Option<String>,
    test_event_code: Option<String>,
    batch_size: Option<u32>,
    page_size: Option<u32>,
    lookback: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Validated.

#[derive(Debug, Clone)]
pub struct Config {
    pub warehouse: WarehouseSettings,
    pub state: StateSettings,
    pub meta: MetaSettings,
    pub service: ServiceSettings,
    pub models: Vec<ModelConfig>,
    /// Where the file came from, for messages.
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct WarehouseSettings {
    pub url: Secret,
    pub statement_timeout: Duration,
    pub page_size: u32,
    /// A page also ends once its values reach this many bytes (multi-megabyte rows).
    pub page_bytes: u64,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct StateSettings {
    pub schema: String,
    /// `None`: the warehouse database.
    pub url: Option<Secret>,
    pub ledger_retention: Duration,
    /// Any one statement on the state database (`state.statement_timeout`).
    pub statement_timeout: Duration,
    /// The state pool's size (`state.max_connections`); the model locks take one more.
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct MetaSettings {
    pub graph_url: String,
    pub api_version: String,
    pub access_token: Secret,
    pub test_event_code: Option<String>,
    pub batch_size: usize,
    pub concurrency: usize,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub partner_agent: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub run_deadline: Duration,
    /// How long a stopping run (at its deadline, or on SIGTERM/SIGINT) gives the batches in
    /// flight to settle; on shutdown the process exits after it.
    pub shutdown_grace: Duration,
    pub metrics_addr: Option<String>,
    /// The most model runs the service lets go at once; due runs beyond it wait their turn,
    /// the most overdue first (`service.max_concurrent_runs`).
    pub max_concurrent_runs: u32,
}

/// How `external_id` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalIdMode {
    /// Normalized and SHA-256 hashed (Meta recommends hashing).
    Hash,
    /// Sent as it is, to match a Pixel that sends it unhashed.
    Raw,
}

/// A validated cron schedule.
#[derive(Clone)]
pub struct Schedule {
    pub expression: String,
    pub cron: cron::Schedule,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({})", self.expression)
    }
}

impl Schedule {
    /// Accepts 5-field crontab (minute precision), 6 fields with seconds first, or the
    /// `@hourly`-style shorthands.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let trimmed = expr.trim();
        let fields = trimmed.split_whitespace().count();
        let full = if trimmed.starts_with('@') {
            trimmed.to_string()
        } else {
            match fields {
                5 => format!("0 {trimmed}"),
                6 => trimmed.to_string(),
                n => {
                    return Err(format!(
                        "`{trimmed}` has {n} fields; use 5 (minute hour day month weekday) or 6 (with seconds first)"
                    ))
                }
            }
        };
        let cron = cron::Schedule::from_str(&full)
            .map_err(|e| format!("`{trimmed}` is not a valid cron expression: {e}"))?;
        Ok(Schedule {
            expression: trimmed.to_string(),
            cron,
        })
    }

    pub fn next_after(
        &self,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.cron.after(&t).next()
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub pixel_id: String,
    pub schedule: Schedule,
    pub sql: String,
    /// Where the SQL came from (inline or the file path), for messages.
    pub sql_origin: String,
    pub primary_key: Vec<String>,
    pub cursor: String,
    /// Parameter target → value, in key order.
    pub constants: Vec<(Target, serde_json::Value)>,
    /// Parameter target → column name.
    pub columns: Vec<(Target, String)>,
    pub ignore_columns: Vec<String>,
    /// Lowercase ISO alpha-2.
    pub default_country: Option<&'static str>,
    pub external_id: ExternalIdMode,
    pub test_event_code: Option<String>,
    pub batch_size: usize,
    /// Rows per keyset page.
    pub page_size: u32,
    pub lookback: Duration,
    pub enabled: bool,
}

impl Config {
    /// Loads the file at `path` (which must exist unless `allow_missing`), layering defaults and env.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::one(format!(
                "config file {} not found (pass --config PATH or set CAPI_SYNC_CONFIG; config/capi-sync.example.toml is a commented example)",
                path.display()
            )));
        }
        let figment = Self::figment(Some(path));
        Self::from_figment(
            figment,
            path.parent().unwrap_or(Path::new(".")),
            &path.display().to_string(),
        )
    }

    /// Loads from a TOML string over the defaults only, ignoring the environment (the demo's
    /// embedded config, tests).
    pub fn from_toml_str(toml_text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let figment = Figment::from(Toml::string(DEFAULTS_TOML)).merge(Toml::string(toml_text));
        Self::from_figment(figment, base_dir, "inline config")
    }

    fn figment(path: Option<&Path>) -> Figment {
        let mut f = Figment::from(Toml::string(DEFAULTS_TOML)).merge(database_url_env());
        if let Some(p) = path {
            f = f.merge(Toml::file_exact(p));
        }
        f.merge(capi_env())
    }

    /// Defaults, `DATABASE_URL` and `CAPI_SYNC_*` env only: for commands that need no models.
    pub fn from_env_only() -> Result<Config, ConfigError> {
        Self::from_figment(Self::figment(None), Path::new("."), "environment")
    }

    fn from_figment(
        figment: Figment,
        base_dir: &Path,
        source: &str,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(|e| figment_error(&figment, e))?;
        validate(raw, base_dir, source)
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The state database URL (the warehouse's unless set).
    pub fn state_url(&self) -> &Secret {
        self.state.url.as_ref().unwrap_or(&self.warehouse.url)
    }
}

fn database_url_env() -> Env {
    Env::raw()
        .only(&["DATABASE_URL"])
        .map(|_| "warehouse.url".into())
}

/// The prefix of the environment variables read as config keys.
pub const ENV_PREFIX: &str = "CAPI_SYNC_";

/// Environment variables that belong to the command line (each a clap `env` in `cli.rs`), not
/// to the configuration: read as config keys they would fail the load as unknown keys (the
/// sandbox's token) or be taken for settings they are not. A test in `cli.rs` proves that
/// every `env` of every command is listed here.
pub mod command_env {
    pub const CONFIG: &str = "CAPI_SYNC_CONFIG";
    pub const LOG_FORMAT: &str = "CAPI_SYNC_LOG_FORMAT";
    pub const SANDBOX_TOKEN: &str = "CAPI_SYNC_SANDBOX_TOKEN";
    pub const ALL: &[&str] = &[CONFIG, LOG_FORMAT, SANDBOX_TOKEN];
}

fn capi_env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| {
            !command_env::ALL
                .iter()
                .any(|name| name.get(ENV_PREFIX.len()..).is_some_and(|k| key == k))
        })
        .split("__")
}

fn figment_error(figment: &Figment, err: figment::Error) -> ConfigError {
    let problems = err
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let model = model_name_for_path(figment, &e.path);
            let origin = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!("{} ({})", m.name, src),
                    None => m.name.to_string(),
                })
                .unwrap_or_else(|| "defaults".into());
            let kind = e.kind.to_string();
            match model {
                Some(name) => format!("model `{name}`: key `{key}`: {kind} (from {origin})"),
                None if key.is_empty() => format!("{kind} (from {origin})"),
                None => format!("key `{key}`: {kind} (from {origin})"),
            }
        })
        .collect();
    ConfigError { problems }
}

fn model_name_for_path(figment: &Figment, path: &[String]) -> Option<String> {
    if path.first().map(String::as_str) != Some("models") {
        return None;
    }
    let idx: usize = path.get(1)?.parse().ok()?;
    let models = figment.find_value("models").ok()?;
    let arr = models.as_array()?;
    arr.get(idx)?
        .find_ref("name")
        .and_then(|v| v.as_str().map(str::to_string))
        .or_else(|| Some(format!("#{}", idx + 1)))
}

fn dur(key: &str, text: &str, problems: &mut Vec<String>) -> Duration {
    parse_duration(text).unwrap_or_else(|e| {
        problems.push(format!("key `{key}`: {e}"));
        Duration::from_secs(1)
    })
}

fn validate(raw: RawConfig, base_dir: &Path, source: &str) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();

    let warehouse = WarehouseSettings {
        url: raw.warehouse.url,
        statement_timeout: dur(
            "warehouse.statement_timeout",
            &raw.warehouse.statement_timeout,
            &mut problems,
        ),
        page_size: raw.warehouse.page_size,
        page_bytes: raw.warehouse.page_bytes,
        max_connections: raw.warehouse.max_connections.max(2),
    };
    if warehouse.page_bytes == 0 {
        problems.push("key `warehouse.page_bytes`: must be at least 1".into());
    }
    if warehouse.page_size == 0 {
        problems.push("key `warehouse.page_size`: must be at least 1".into());
    }
    if !is_identifier(&raw.state.schema) {
        problems.push(format!(
            "key `state.schema`: `{}` is not a plain SQL identifier (letters, digits, _)",
            raw.state.schema
        ));
    }
    // A retention that does not parse is reported once, here; models are then not compared
    // with it.
    let retention = parse_duration(&raw.state.ledger_retention)
        .ok()
        .map(|d| (raw.state.ledger_retention.trim().to_string(), d));
    let state = StateSettings {
        schema: raw.state.schema,
        url: raw.state.url,
        ledger_retention: dur(
            "state.ledger_retention",
            &raw.state.ledger_retention,
            &mut problems,
        ),
        statement_timeout: dur(
            "state.statement_timeout",
            &raw.state.statement_timeout,
            &mut problems,
        ),
        // A run commits its cursor and writes its ledger at once: one session would queue
        // every run's commits behind its ledger writes.
        max_connections: raw.state.max_connections.max(2),
    };
    if state.statement_timeout.is_zero() {
        problems.push("key `state.statement_timeout`: must be more than 0s".into());
    }

    let mut token = raw.meta.access_token;
    if let Some(file) = &raw.meta.access_token_file {
        let path = base_dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(t) => token = Secret::new(t.trim()),
            Err(e) => problems.push(format!(
                "key `meta.access_token_file`: cannot read {}: {e}",
                path.display()
            )),
        }
    }
    problems.extend(graph_url::problem(&raw.meta.graph_url));
    if !is_api_version(&raw.meta.api_version) {
        problems.push(format!(
            "key `meta.api_version`: `{}` is not a Graph API version like v25.0",
            raw.meta.api_version
        ));
    }
    if !(1..=1000).contains(&raw.meta.batch_size) {
        problems.push(format!(
            "key `meta.batch_size`: {} is outside 1..=1000 (Meta accepts at most 1000 events per request)",
            raw.meta.batch_size
        ));
    }
    if raw.meta.concurrency == 0 {
        problems.push("key `meta.concurrency`: must be at least 1".into());
    }
    let meta = MetaSettings {
        graph_url: raw.meta.graph_url.trim_end_matches('/').to_string(),
        api_version: raw.meta.api_version,
        access_token: token,
        test_event_code: raw.meta.test_event_code.filter(|s| !s.is_empty()),
        batch_size: raw.meta.batch_size.clamp(1, 1000) as usize,
        concurrency: raw.meta.concurrency.max(1) as usize,
        request_timeout: dur(
            "meta.request_timeout",
            &raw.meta.request_timeout,
            &mut problems,
        ),
        max_attempts: raw.meta.max_attempts.max(1),
        partner_agent: raw.meta.partner_agent.filter(|s| !s.is_empty()),
    };
    let service = ServiceSettings {
        run_deadline: dur(
            "service.run_deadline",
            &raw.service.run_deadline,
            &mut problems,
        ),
        shutdown_grace: dur(
            "service.shutdown_grace",
            &raw.service.shutdown_grace,
            &mut problems,
        ),
        metrics_addr: raw.service.metrics_addr,
        max_concurrent_runs: raw.service.max_concurrent_runs.max(1),
    };
    if raw.service.max_concurrent_runs == 0 {
        problems.push("key `service.max_concurrent_runs`: must be at least 1".into());
    }
    if let Some(addr) = service.metrics_addr.as_deref().map(str::trim) {
        if !addr.is_empty() && addr.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "key `service.metrics_addr`: `{addr}` is not an address to listen on, like 127.0.0.1:9464 (\"\" serves no endpoints)"
            ));
        }
    }

    let mut models = Vec::new();
    let mut seen = HashSet::new();
    for (i, m) in raw.models.into_iter().enumerate() {
        let label = m
            .name
            .clone()
            .unwrap_or_else(|| format!("#{} (no name)", i + 1));
        let mut mp = Vec::new();
        let defaults = ModelDefaults {
            batch_size: meta.batch_size,
            page_size: warehouse.page_size.max(1),
            ledger_retention: retention.as_ref().map(|(text, d)| (text.as_str(), *d)),
        };
        if let Some(model) = validate_model(m, base_dir, &defaults, &mut mp) {
            if !seen.insert(model.name.clone()) {
                mp.push(format!(
                    "key `name`: a second model is named `{}`; model names must be unique",
                    model.name
                ));
            }
            if mp.is_empty() {
                models.push(model);
            }
        }
        problems.extend(
            mp.into_iter()
                .map(|p| format!("model `{label}`: {p} (in {source})")),
        );
    }

    if problems.is_empty() {
        Ok(Config {
            warehouse,
            state,
            meta,
            service,
            models,
            source: source.to_string(),
        })
    } else {
        Err(ConfigError { problems })
    }
}

/// What a model's settings default to, or are bounded by, from the global sections.
struct ModelDefaults<'a> {
    batch_size: usize,
    page_size: u32,
    /// `state.ledger_retention` as written and parsed; None when it does not parse.
    ledger_retention: Option<(&'a str, Duration)>,
}

fn validate_model(
    m: RawModel,
    base_dir: &Path,
    defaults: &ModelDefaults<'_>,
    problems: &mut Vec<String>,
) -> Option<ModelConfig> {
    let name = match m.name {
        Some(n) if is_model_name(&n) => n,
        Some(n) => {
            problems.push(format!(
                "key `name`: `{n}` must be 1-63 letters, digits, `_` or `-`"
            ));
            return None;
        }
        None => {
            problems.push("key `name` is missing".into());
            return None;
        }
    };
    let pixel_id = match m.pixel_id {
        Some(toml::Value::String(s)) if is_digits(s.trim()) => s.trim().to_string(),
        Some(toml::Value::Integer(n)) if n > 0 => n.to_string(),
        Some(_) => {
            problems.push(
                "key `pixel_id`: must be the numeric pixel or dataset ID, e.g. \"123456789012345\""
                    .into(),
            );
            String::new()
        }
        None => {
            problems.push("key `pixel_id` is missing".into());
            String::new()
        }
    };
    let schedule = match m.schedule.as_deref().map(Schedule::parse) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            problems.push(format!("key `schedule`: {e}"));
            None
        }
        None => {
            problems.push(
                "key `schedule` is missing (a cron expression such as \"*/15 * * * *\")".into(),
            );
            None
        }
    };
    let (sql, sql_origin) = match (m.sql, m.sql_file) {
        (Some(_), Some(_)) => {
            problems.push("keys `sql` and `sql_file` are both set; keep one".into());
            (String::new(), String::new())
        }
        (Some(s), None) => (s, "inline `sql`".to_string()),
        (None, Some(f)) => {
            let path = base_dir.join(&f);
            match std::fs::read_to_string(&path) {
                Ok(s) => (s, path.display().to_string()),
                Err(e) => {
                    problems.push(format!(
                        "key `sql_file`: cannot read {}: {e}",
                        path.display()
                    ));
                    (String::new(), String::new())
                }
            }
        }
        (None, None) => {
            problems.push("key `sql` is missing (or give `sql_file`)".into());
            (String::new(), String::new())
        }
    };
    let sql = sql.trim().trim_end_matches(';').trim().to_string();
    if sql.is_empty() && problems.is_empty() {
        problems.push("key `sql`: the query is empty".into());
    }
    let primary_key = match m.primary_key {
        Some(OneOrMany::One(k)) if !k.trim().is_empty() => vec![k.trim().to_string()],
        Some(OneOrMany::Many(ks)) if !ks.is_empty() && ks.iter().all(|k| !k.trim().is_empty()) => {
            ks.into_iter().map(|k| k.trim().to_string()).collect()
        }
        Some(_) => {
            problems.push("key `primary_key`: give one column name or a list of them".into());
            vec![]
        }
        None => {
            problems.push(
                "key `primary_key` is missing (the column, or columns, that identify a row)".into(),
            );
            vec![]
        }
    };
    let cursor = match m.cursor {
        Some(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            problems.push("key `cursor` is missing (a timestamp, date or integer column that grows as rows are added or changed)".into());
            String::new()
        }
    };

    let mut constants = Vec::new();
    let mut crm_shorthand = false;
    for (key, value) in m.constants {
        let target = match params::resolve(&key) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("key `constants.\"{key}\"`: {e}"));
                continue;
            }
        };
        let json = match toml_to_json(&value) {
            Some(j) => j,
            None => {
                problems.push(format!(
                    "key `constants.\"{key}\"`: dates are not allowed as constants"
                ));
                continue;
            }
        };
        if target == Target::Top(TopField::ActionSource) {
            match json.as_str() {
                Some("crm") => {
                    crm_shorthand = true;
                    constants.push((target, serde_json::Value::String("system_generated".into())));
                    continue;
                }
                Some(s) if ACTION_SOURCES.contains(&s) => {}
                _ => {
                    problems.push(format!(
                        "key `constants.action_source`: {json} is not one of {} (or `crm`, shorthand for system_generated with custom_data.event_source = \"crm\")",
                        ACTION_SOURCES.join(", ")
                    ));
                    continue;
                }
            }
        }
        constants.push((target, json));
    }
    if crm_shorthand {
        let es = Target::CustomData("event_source".into());
        if !constants.iter().any(|(t, _)| *t == es) {
            constants.push((es, serde_json::Value::String("crm".into())));
        }
    }

    let mut columns = Vec::new();
    for (param, column) in m.columns {
        match params::resolve(&param) {
            Ok(t) => columns.push((t, column)),
            Err(e) => problems.push(format!("key `columns.\"{param}\"`: {e}")),
        }
    }

    let default_country = match m.default_country.as_deref() {
        None => None,
        Some(c) => match country_code(c) {
            Some(code) => Some(code),
            None => {
                problems.push(format!(
                    "key `default_country`: `{c}` is not a country (use an ISO 3166-1 code like \"us\" or \"gb\")"
                ));
                None
            }
        },
    };
    let external_id = match m.external_id.as_deref() {
        None | Some("hash") => ExternalIdMode::Hash,
        Some("raw") => ExternalIdMode::Raw,
        Some(other) => {
            problems.push(format!(
                "key `external_id`: `{other}` must be \"hash\" or \"raw\""
            ));
            ExternalIdMode::Hash
        }
    };
    let batch_size = match m.batch_size {
        None => defaults.batch_size,
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(n) => {
            problems.push(format!(
                "key `batch_size`: {n} is outside 1..=1000 (Meta accepts at most 1000 events per request)"
            ));
            defaults.batch_size
        }
    };
    let page_size = match m.page_size {
        None => defaults.page_size,
        Some(0) => {
            problems
                .push("key `page_size`: 0 rows per keyset page; it must be at least 1".to_string());
            defaults.page_size
        }
        Some(n) => n,
    };
    let lookback = match m.lookback.as_deref() {
        None => Duration::ZERO,
        Some(t) => parse_duration(t).unwrap_or_else(|e| {
            problems.push(format!("key `lookback`: {e}"));
            Duration::ZERO
        }),
    };
    // The lookback re-reads rows already settled; the delivery ledger is what keeps a re-read
    // row from being sent again, and it forgets events after its retention. A longer lookback
    // would re-send, under the same event id, rows whose ledger entry was pruned (Meta
    // deduplicates an event_id for 48 hours only, capi-reference.md §7).
    if let (Some(text), Some((retention_text, retention))) =
        (m.lookback.as_deref(), defaults.ledger_retention)
    {
        if lookback > retention {
            problems.push(format!(
                "key `lookback` = \"{}\" is longer than key `state.ledger_retention` = \"{retention_text}\": the delivery ledger suppresses re-sends only within its retention, so rows re-read after their ledger entry is pruned would be sent again; shorten lookback or lengthen state.ledger_retention",
                text.trim()
            ));
        }
    }

    Some(ModelConfig {
        name,
        pixel_id,
        schedule: schedule.unwrap_or_else(|| Schedule::parse("0 * * * *").expect("valid")),
        sql,
        sql_origin,
        primary_key,
        cursor,
        constants,
        columns,
        ignore_columns: m.ignore_columns,
        default_country,
        external_id,
        test_event_code: m.test_event_code.filter(|s| !s.is_empty()),
        batch_size,
        page_size,
        lookback,
        enabled: m.enabled,
    })
}

fn toml_to_json(v: &toml::Value) -> Option<serde_json::Value> {
    Some(match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(_) => return None,
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(toml_to_json).collect::<Option<Vec<_>>>()?)
        }
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| Some((k.clone(), toml_to_json(v)?)))
                .collect::<Option<serde_json::Map<_, _>>>()?,
        ),
    })
}

pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_model_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_api_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    match rest.split_once('.') {
        Some((a, b)) => is_digits(a) && is_digits(b),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_crons_parse() {
        let five = Schedule::parse("*/15 * * * *").unwrap();
        let six = Schedule::parse("30 */15 * * * *").unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:07:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            five.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T10:15:00+00:00"
        );
        assert_eq!(
            six.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T10:15:30+00:00"
        );
    }

    #[test]
    fn bad_crons_are_rejected_with_the_expression() {
        let e = Schedule::parse("every hour").unwrap_err();
        assert!(e.contains("every hour"), "{e}");
        let e = Schedule::parse("61 * * * *").unwrap_err();
        assert!(e.contains("61 * * * *"), "{e}");
    }

    #[test]
    fn api_versions() {
        assert!(is_api_version("v25.0"));
        assert!(!is_api_version("25.0"));
        assert!(!is_api_version("v25"));
    }
}
