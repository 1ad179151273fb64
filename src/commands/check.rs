//! `capi-sync check [MODEL ...] [--offline]`: everything that can be known about a model
//! before its first run, without sending an event or reading a row. One line per finding,
//! `model: column: level — message`, OK lines included.

mod meta;
mod rows;

use crate::config::{redact_url, Config, ExternalIdMode, ModelConfig};
use crate::mapping::{ColumnInfo, ModelPlan, PlanProblem, ValueKind};
use crate::params::{self, Target, TopField, UserDataKey};
use crate::source::Warehouse;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    /// Something the operator must fix in the config or a model (exit code 2).
    Error,
    /// Something could not be reached (exit code 3).
    Unreachable,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Unreachable => "error",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The model, or the part of the setup (`config`, `warehouse`, `state`, `meta`).
    pub scope: String,
    /// The column or parameter, when the finding is about one.
    pub subject: Option<String>,
    pub level: Level,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.scope)?;
        if let Some(s) = &self.subject {
            write!(f, "{s}: ")?;
        }
        write!(f, "{} — {}", self.level.as_str(), self.message)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, scope: &str, subject: Option<&str>, level: Level, message: String) {
        let f = Finding {
            scope: scope.to_string(),
            subject: subject.map(str::to_string),
            level,
            message,
        };
        println!("{f}");
        self.findings.push(f);
    }

    fn count(&self, pred: impl Fn(Level) -> bool) -> usize {
        self.findings.iter().filter(|f| pred(f.level)).count()
    }

    /// 2 for any config or model error, else 3 for anything unreachable, else 0.
    pub fn exit_code(&self) -> super::Exit {
        if self.count(|l| l == Level::Error) > 0 {
            super::Exit::BadConfig
        } else if self.count(|l| l == Level::Unreachable) > 0 {
            super::Exit::Unexpected
        } else {
            super::Exit::Ok
        }
    }
}

/// Runs every check for the selected models (all when `names` is empty), printing each
/// finding as it is made. Returns the exit code.
pub async fn run(config: &Config, names: &[String], offline: bool) -> anyhow::Result<super::Exit> {
    let today = chrono::Utc::now().date_naive();
    Ok(run_on(config, names, offline, today).await?.exit_code())
}

/// [`run`] as it would go on `today` (which decides whether `meta.api_version` has ended):
/// the findings, each printed as it is made.
pub async fn run_on(
    config: &Config,
    names: &[String],
    offline: bool,
    today: chrono::NaiveDate,
) -> anyhow::Result<Report> {
    let models: Vec<&ModelConfig> = if names.is_empty() {
        config.models.iter().collect()
    } else {
        names
            .iter()
            .map(|n| super::model_named(config, n))
            .collect::<Result<_, _>>()?
    };
    let mut report = Report::default();
    report.push(
        "config",
        None,
        Level::Ok,
        format!(
            "{} is valid ({} models, {} enabled)",
            config.source,
            config.models.len(),
            config.models.iter().filter(|m| m.enabled).count()
        ),
    );

    let budget = crate::app::ConnectionBudget::of(config);
    let mut budget_line = format!("connections per syncing process: {budget}");
    if config.state.url.is_some() {
        budget_line.push_str(&format!(
            " ({} of them on the state database)",
            budget.state + budget.lock_sessions
        ));
    }
    report.push("config", None, Level::Ok, budget_line);
    meta::check_api_version(config, today, &mut report);

    let warehouse = match crate::app::connect_warehouse(config).await {
        Ok(w) => {
            report.push(
                "warehouse",
                None,
                Level::Ok,
                format!("{} answers", redact_url(config.warehouse.url.expose())),
            );
            check_encryption(
                "warehouse",
                &config.warehouse.url,
                Some(w.pool()),
                &mut report,
            )
            .await;
            Some(w)
        }
        Err(e) => {
            report.push(
                "warehouse",
                None,
                Level::Unreachable,
                crate::error_line::one_line(&e),
            );
            None
        }
    };
    if let Some(w) = &warehouse {
        check_server_room(config, &budget, w.pool(), &mut report).await;
    }
    let state = check_state(config, &mut report).await;

    for model in &models {
        match &warehouse {
            Some(w) => {
                if !check_model(w, model, &mut report).await {
                    continue;
                }
                let horizon = config.service.expiring_within;
                rows::check_expiring(w, state.as_ref(), model, horizon, &mut report).await;
            }
            None => report.push(
                &model.name,
                None,
                Level::Warning,
                "not checked: the warehouse cannot be reached".into(),
            ),
        }
    }

    if offline {
        report.push(
            "meta",
            None,
            Level::Ok,
            "the Graph API was not asked (--offline)".into(),
        );
    } else {
        meta::check_graph(config, &models, &mut report).await;
    }

    let errors = report.count(|l| l >= Level::Error);
    let warnings = report.count(|l| l == Level::Warning);
    println!(
        "check: {} checked, {errors} error{}, {warnings} warning{}; nothing was sent",
        super::rows(models.len() as i64).replace("row", "model"),
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    Ok(report)
}

/// Our schema: reachable, and created and up to date (or not yet: the first run creates it).
/// Returns our tables, when they exist, for the cursors.
async fn check_state(config: &Config, report: &mut Report) -> Option<crate::state::StateStore> {
    let schema = &config.state.schema;
    let store = match super::read_only_state(config).await {
        Ok(s) => s,
        Err(e) => {
            report.push(
                "state",
                None,
                Level::Unreachable,
                crate::error_line::one_line(&e),
            );
            return None;
        }
    };
    check_encryption(
        "state",
        config.state_url(),
        store.as_ref().map(|s| s.pool()),
        report,
    )
    .await;
    let Some(store) = store else {
        report.push(
            "state",
            None,
            Level::Ok,
            format!("schema `{schema}` has no capi-sync tables yet; `capi-sync migrate` or the first sync creates them"),
        );
        return None;
    };
    let applied: Result<Vec<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(store.pool())
            .await;
    let known: BTreeSet<i64> = crate::state::MIGRATOR.iter().map(|m| m.version).collect();
    match applied {
        Ok(v) => {
            let applied: BTreeSet<i64> = v.into_iter().collect();
            let pending = known.difference(&applied).count();
            if pending == 0 {
                report.push(
                    "state",
                    None,
                    Level::Ok,
                    format!("schema `{schema}` is up to date"),
                );
            } else {
                report.push(
                    "state",
                    None,
                    Level::Warning,
                    format!("schema `{schema}` lacks {pending} migration(s); `capi-sync migrate` (or the next sync) applies them"),
                );
            }
        }
        Err(e) => report.push(
            "state",
            None,
            Level::Warning,
            format!("cannot read the migration history in schema `{schema}`: {e}"),
        ),
    }
    Some(store)
}

/// Warns when the warehouse's server allows fewer client connections than this process may
/// open there (all of them when the state tables live in the warehouse database): runs would
/// then fail with "too many clients already" under load, and starve the server's other users.
async fn check_server_room(
    config: &Config,
    budget: &crate::app::ConnectionBudget,
    pool: &sqlx::PgPool,
    report: &mut Report,
) {
    let allowed: Result<i32, _> = sqlx::query_scalar(
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int",
    )
    .fetch_one(pool)
    .await;
    // A Postgres-wire warehouse that is not Postgres may not know these settings.
    let Ok(allowed) = allowed else { return };
    let here = match config.state.url {
        Some(_) => budget.warehouse,
        None => budget.total(),
    };
    if i64::from(here) > i64::from(allowed) {
        report.push(
            "warehouse",
            None,
            Level::Warning,
            format!(
                "the server allows {allowed} client connections in all, fewer than the {here} this process may open there; lower warehouse.max_connections or state.max_connections, or raise the server's max_connections"
            ),
        );
    }
}

/// Whether the connection is encrypted, as the server sees it (`pg_stat_ssl`): asked on one of
/// the pool's sessions, or on a session of its own when there is no pool.
async fn check_encryption(
    scope: &str,
    url: &crate::config::Secret,
    pool: Option<&sqlx::PgPool>,
    report: &mut Report,
) {
    use crate::connection::{describe_encryption, encryption, parse, scrub};
    use sqlx::Connection;
    // A URL that does not parse was reported with the failed connection.
    let Ok((opts, target)) = parse(url) else {
        return;
    };
    let result = match pool {
        Some(pool) => encryption(pool).await,
        None => match sqlx::PgConnection::connect_with(&opts).await {
            Ok(mut conn) => {
                let found = encryption(&mut conn).await;
                let _ = conn.close().await;
                found
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(enc) => {
            let (warn, line) = describe_encryption(&target, &enc);
            let level = if warn { Level::Warning } else { Level::Ok };
            report.push(scope, None, level, format!("{}: {line}", target.shown));
        }
        Err(e) => report.push(
            scope,
            None,
            Level::Warning,
            format!(
                "cannot tell whether the connection to {} is encrypted (pg_stat_ssl): {}",
                target.shown,
                scrub(&e.to_string(), Some(url))
            ),
        ),
    }
}

/// What a column of this type feeds, in words.
fn describe_target(target: &Target, kind: &str, model: &ModelConfig) -> String {
    let how = match target {
        Target::UserData(UserDataKey::Hashed(f))
            if f.key() == "external_id" && model.external_id == ExternalIdMode::Raw =>
        {
            "; sent as it is (external_id = \"raw\")"
        }
        Target::UserData(UserDataKey::Hashed(_)) => "; normalized and SHA-256 hashed",
        Target::UserData(UserDataKey::Integer(_)) => "; sent as a JSON integer",
        _ => "",
    };
    format!("maps to {} ({kind}{how})", target.path())
}

/// Where a column goes: an explicit `[models.columns]` entry, else its own name.
fn column_target(model: &ModelConfig, name: &str) -> Option<Target> {
    if let Some((t, _)) = model.columns.iter().find(|(_, c)| c == name) {
        return Some(t.clone());
    }
    params::resolve(name).ok()
}

/// Returns whether the model's query could be described.
async fn check_model(warehouse: &Warehouse, model: &ModelConfig, report: &mut Report) -> bool {
    let name = model.name.as_str();
    if !model.enabled {
        report.push(
            name,
            None,
            Level::Ok,
            "disabled (enabled = false): checked, but not scheduled".into(),
        );
    }
    let (query, columns) = match warehouse.describe(model).await {
        Ok(d) => d,
        Err(e) => {
            report.push(
                name,
                Some("sql"),
                Level::Error,
                format!("{e}; fix the model's SQL ({})", model.sql_origin),
            );
            return false;
        }
    };
    report.push(
        name,
        Some("sql"),
        Level::Ok,
        format!(
            "the query plans in the warehouse ({} columns; no row was read)",
            columns.len()
        ),
    );
    let problems = ModelPlan::new(model, &columns).err().unwrap_or_default();

    for col in &columns {
        check_column(model, col, &problems, report);
    }
    for p in problems.iter().filter(|p| {
        p.column
            .as_ref()
            .is_some_and(|c| !columns.iter().any(|x| &x.name == c))
    }) {
        // A cursor, key or [models.columns] entry that names a column the query lacks.
        report.push(name, p.column.as_deref(), Level::Error, p.message.clone());
    }

    let mut required_missing = Vec::new();
    for field in [
        TopField::EventName,
        TopField::EventTime,
        TopField::ActionSource,
    ] {
        let target = Target::Top(field);
        let from_column = columns.iter().find(|c| {
            !model.ignore_columns.contains(&c.name)
                && column_target(model, &c.name).as_ref() == Some(&target)
        });
        let constant = model.constants.iter().find(|(t, _)| *t == target);
        let message = match (from_column, constant) {
            (Some(c), Some((_, v))) => format!("from column `{}`, else the constant {v}", c.name),
            (Some(c), None) => format!("from column `{}`", c.name),
            (None, Some((_, v))) => format!("the constant {v}"),
            (None, None) => {
                required_missing.push(field.key());
                let fix = if field == TopField::EventTime {
                    "add a column named `event_time` (timestamp, date or Unix seconds) to the SQL, or map one in [models.columns]".to_string()
                } else {
                    format!(
                        "add a column named `{0}` to the SQL, map one in [models.columns], or set [models.constants] {0}",
                        field.key()
                    )
                };
                report.push(
                    name,
                    Some(field.key()),
                    Level::Error,
                    format!("required, but no column or constant gives it: {fix}"),
                );
                continue;
            }
        };
        report.push(
            name,
            Some(field.key()),
            Level::Ok,
            format!("required field, {message}"),
        );
    }
    // Problems not about one returned column (constants that cannot be used, ...), except
    // the missing required fields reported just above.
    for p in problems.iter().filter(|p| p.column.is_none()) {
        if required_missing
            .iter()
            .any(|f| p.message.contains(&format!("`{f}`")))
        {
            continue;
        }
        report.push(name, Some("constants"), Level::Error, p.message.clone());
    }
    if !model.constants.is_empty() {
        let shown: Vec<String> = model
            .constants
            .iter()
            .map(|(t, v)| match t {
                // A hashed field's constant is customer data; it is sent hashed, never shown.
                Target::UserData(UserDataKey::Hashed(_)) => format!("{} = (hashed)", t.path()),
                _ => format!("{} = {v}", t.path()),
            })
            .collect();
        report.push(name, Some("constants"), Level::Ok, shown.join(", "));
    }

    if !model.lookback.is_zero() && !query.cursor_is_time() {
        report.push(
            name,
            Some("lookback"),
            Level::Error,
            format!(
                "is set, but the cursor `{}` is not a timestamp or date column, so no time can be subtracted from it; remove lookback or use a time cursor",
                model.cursor
            ),
        );
    }
    if problems
        .iter()
        .all(|p| p.column.as_deref() != Some(&model.cursor))
        && columns.iter().any(|c| c.name == model.cursor)
    {
        match warehouse.plan_paging(&query).await {
            Ok(()) => report.push(
                name,
                Some(&model.cursor),
                Level::Ok,
                format!(
                    "pages on (cursor, primary key) = ({}, {}) plan in the warehouse",
                    model.cursor,
                    model.primary_key.join(", ")
                ),
            ),
            Err(e) => report.push(
                name,
                Some(&model.cursor),
                Level::Error,
                format!("{e}; use a timestamp, date or integer cursor and an orderable key"),
            ),
        }
        rows::check_unreadable_rows(warehouse, model, &query, report).await;
    }
    true
}

fn check_column(
    model: &ModelConfig,
    col: &ColumnInfo,
    problems: &[PlanProblem],
    report: &mut Report,
) {
    let name = model.name.as_str();
    let mine: Vec<&PlanProblem> = problems
        .iter()
        .filter(|p| p.column.as_deref() == Some(col.name.as_str()))
        .collect();
    if !mine.is_empty() {
        for p in mine {
            report.push(name, Some(&col.name), Level::Error, p.message.clone());
        }
        return;
    }
    let kind = col.kind.describe();
    let mut roles = Vec::new();
    if model.cursor == col.name {
        roles.push(format!("the cursor ({kind})"));
    }
    if model.primary_key.contains(&col.name) {
        roles.push(format!("the primary key ({kind})"));
    }
    if model.ignore_columns.contains(&col.name) {
        roles.push(format!("ignored, listed in ignore_columns ({kind})"));
    } else if let Some(t) = column_target(model, &col.name) {
        roles.push(describe_target(&t, kind, model));
    }
    report.push(name, Some(&col.name), Level::Ok, roles.join(", "));
    if model.cursor == col.name
        && !matches!(
            col.kind,
            ValueKind::Int | ValueKind::Date | ValueKind::Timestamp | ValueKind::TimestampTz
        )
    {
        report.push(
            name,
            Some(&col.name),
            Level::Warning,
            format!(
                "the cursor is {kind}: it works if its values sort in the order rows change, but a timestamp, date or integer is safer (text sorts '10' before '9')"
            ),
        );
    }
}
