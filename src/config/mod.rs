//! Layered configuration: embedded defaults < `DATABASE_URL` < TOML file < `CAPI_SYNC_*` env,
//! then validation into typed settings. Every error names the key, the model and the source.

mod duration;
mod graph_url;
mod model;
mod raw;
mod schedule;
mod secret;

pub use duration::parse_duration;
pub use schedule::Schedule;
pub use secret::{redact_url, shown, Secret};

use model::{validate_model, ModelDefaults};
use raw::RawConfig;

use crate::params::Target;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
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
    /// `state.ledger_partition_bytes`: the newest ledger generation's index size at which the
    /// next starts; 0 for a quarter of the server's `shared_buffers`.
    pub ledger_partition_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct MetaSettings {
    pub graph_url: String,
    pub api_version: String,
    pub access_token: Secret,
    pub test_event_code: Option<String>,
    pub batch_size: usize,
    /// Requests in flight per pixel at first (`meta.concurrency`).
    pub concurrency: usize,
    /// The most requests in flight per pixel as the limit grows (`meta.max_concurrency`).
    pub max_concurrency: usize,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub partner_agent: Option<String>,
    /// How often the service reads the Dataset Quality API; None: never
    /// (`meta.quality_interval` = "0" or "off").
    pub quality_interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub run_deadline: Duration,
    /// How long a stopping run (at its deadline, or on SIGTERM/SIGINT) gives the batches in
    /// flight to settle; on shutdown the process exits after it.
    pub shutdown_grace: Duration,
    pub metrics_addr: Option<String>,
    /// Where the dashboard is served (`service.ui_addr`).
    pub ui: UiPlacement,
    /// The bearer token of the dashboard's actions (`service.admin_token`); None: the
    /// dashboard only reads.
    pub admin_token: Option<Secret>,
    /// The most model runs the service lets go at once; due runs beyond it wait their turn,
    /// the most overdue first (`service.max_concurrent_runs`).
    pub max_concurrent_runs: u32,
    /// Rows waiting whose `event_time` leaves Meta's window within this time are counted as
    /// expiring (`service.expiring_within`): `status`, `check`, the metrics and the service's
    /// warnings.
    pub expiring_within: Duration,
}

/// Where `capi-sync run` serves its dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiPlacement {
    /// On `service.metrics_addr`, beside the probes (`service.ui_addr` not set).
    WithEndpoints,
    /// On a listener of its own (`service.ui_addr` set to an address).
    Own(std::net::SocketAddr),
    /// Not served (`service.ui_addr = ""`).
    Off,
}

/// The shortest `service.admin_token` accepted: it guards actions that send events, so it
/// must not be guessable.
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;

/// How `external_id` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalIdMode {
    /// Normalized and SHA-256 hashed (Meta recommends hashing).
    Hash,
    /// Sent as it is, to match a Pixel that sends it unhashed.
    Raw,
}

/// `service.ui_addr`: unset, an address, or "" (off).
fn ui_placement(text: Option<&str>, problems: &mut Vec<String>) -> UiPlacement {
    match text.map(str::trim) {
        None => UiPlacement::WithEndpoints,
        Some("") => UiPlacement::Off,
        Some(addr) => match addr.parse() {
            Ok(a) => UiPlacement::Own(a),
            Err(_) => {
                problems.push(format!(
                    "key `service.ui_addr`: `{addr}` is not an address to listen on, like 127.0.0.1:9465 (\"\" serves no dashboard; leave it unset to serve it on service.metrics_addr)"
                ));
                UiPlacement::Off
            }
        },
    }
}

/// `service.admin_token`: empty is none (the dashboard only reads); a set one must be long
/// enough not to be guessed. The message never shows the value.
fn admin_token(token: Secret, problems: &mut Vec<String>) -> Option<Secret> {
    if token.is_empty() {
        return None;
    }
    let trimmed = Secret::new(token.expose().trim());
    if trimmed.expose().chars().count() < ADMIN_TOKEN_MIN_LEN {
        problems.push(format!(
            "key `service.admin_token`: must be at least {ADMIN_TOKEN_MIN_LEN} characters (e.g. the output of `openssl rand -hex 24`), or empty for a read-only dashboard"
        ));
        return None;
    }
    Some(trimmed)
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

/// `meta.quality_interval`: a duration of at least a minute, or "0"/"off" for never.
fn quality_interval(text: &str, problems: &mut Vec<String>) -> Option<Duration> {
    let t = text.trim();
    if t == "0" || t.eq_ignore_ascii_case("off") {
        return None;
    }
    match parse_duration(t) {
        Ok(d) if d >= Duration::from_secs(60) => Some(d),
        Ok(_) => {
            problems.push(format!("key `meta.quality_interval`: `{t}` is shorter than a minute (Meta's quality metrics cover days; use e.g. \"6h\", or \"off\")"));
            None
        }
        Err(e) => {
            problems.push(format!("key `meta.quality_interval`: {e} (or \"off\")"));
            None
        }
    }
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
        ledger_partition_bytes: raw.state.ledger_partition_bytes,
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
            "key `meta.api_version`: `{}` is not a Graph API version like v27.0",
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
    if raw.meta.max_concurrency < raw.meta.concurrency {
        problems.push(format!(
            "key `meta.max_concurrency`: {} is below meta.concurrency ({}); requests in flight start at meta.concurrency and grow up to meta.max_concurrency, so set it to at least {} (equal to meta.concurrency keeps the number fixed)",
            raw.meta.max_concurrency, raw.meta.concurrency, raw.meta.concurrency
        ));
    }
    let meta = MetaSettings {
        graph_url: raw.meta.graph_url.trim_end_matches('/').to_string(),
        api_version: raw.meta.api_version,
        access_token: token,
        test_event_code: raw.meta.test_event_code.filter(|s| !s.is_empty()),
        batch_size: raw.meta.batch_size.clamp(1, 1000) as usize,
        concurrency: raw.meta.concurrency.max(1) as usize,
        max_concurrency: raw.meta.max_concurrency.max(raw.meta.concurrency).max(1) as usize,
        request_timeout: dur(
            "meta.request_timeout",
            &raw.meta.request_timeout,
            &mut problems,
        ),
        max_attempts: raw.meta.max_attempts.max(1),
        partner_agent: raw.meta.partner_agent.filter(|s| !s.is_empty()),
        quality_interval: quality_interval(&raw.meta.quality_interval, &mut problems),
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
        ui: ui_placement(raw.service.ui_addr.as_deref(), &mut problems),
        admin_token: admin_token(raw.service.admin_token, &mut problems),
        max_concurrent_runs: raw.service.max_concurrent_runs.max(1),
        expiring_within: dur(
            "service.expiring_within",
            &raw.service.expiring_within,
            &mut problems,
        ),
    };
    // Meta's longest window is 62 days (physical_store): a longer horizon counts every row.
    if service.expiring_within.is_zero()
        || service.expiring_within > Duration::from_secs(62 * 86_400)
    {
        problems.push(format!(
            "key `service.expiring_within`: `{}` must be more than 0s and at most 62d (Meta's longest window)",
            raw.service.expiring_within
        ));
    }
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

pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
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
    fn quality_interval_defaults_to_six_hours_and_turns_off() {
        let with = |v: &str| {
            let meta = if v.is_empty() {
                String::new()
            } else {
                format!("quality_interval = \"{v}\"\n")
            };
            Config::from_toml_str(
                &format!("[warehouse]\nurl = \"postgres://localhost/x\"\n[meta]\naccess_token = \"t\"\n{meta}"),
                Path::new("."),
            )
        };
        let hours = |c: Config| c.meta.quality_interval.map(|d| d.as_secs() / 3600);
        assert_eq!(hours(with("").unwrap()), Some(6));
        assert_eq!(hours(with("off").unwrap()), None);
        assert_eq!(hours(with("0").unwrap()), None);
        for bad in ["10s", "soon"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("meta.quality_interval"), "{e}");
        }
    }

    #[test]
    fn api_versions() {
        assert!(is_api_version("v25.0"));
        assert!(!is_api_version("25.0"));
        assert!(!is_api_version("v25"));
    }

    #[test]
    fn the_expiry_horizon_is_a_day_by_default_and_within_metas_longest_window() {
        let config = |service: &str| {
            let text = format!(
                "[warehouse]\nurl = \"postgres://localhost/w\"\n[meta]\naccess_token = \"t\"\n[service]\n{service}\n"
            );
            Config::from_toml_str(&text, Path::new("."))
        };
        assert_eq!(
            config("").unwrap().service.expiring_within,
            Duration::from_secs(86_400)
        );
        assert_eq!(
            config("expiring_within = \"6h\"")
                .unwrap()
                .service
                .expiring_within,
            Duration::from_secs(6 * 3600)
        );
        for bad in ["0s", "63d", "soon"] {
            let e = config(&format!("expiring_within = \"{bad}\""))
                .unwrap_err()
                .to_string();
            assert!(e.contains("service.expiring_within"), "{bad}: {e}");
        }
    }
}
