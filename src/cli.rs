//! Commands and flags, and one function per command.

use crate::config::Config;
use crate::pipeline::{sync_model_once, RunOptions, RunStatus, RunSummary};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

/// Exit codes scripts can rely on.
pub mod exit {
    pub const OK: i32 = 0;
    /// At least one model failed to sync (delivery or warehouse failure).
    pub const SYNC_FAILED: i32 = 1;
    /// The configuration is invalid.
    pub const BAD_CONFIG: i32 = 2;
    /// Anything else (cannot connect, unexpected error).
    pub const UNEXPECTED: i32 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "capi-sync",
    version,
    about = "Sync conversions from a Postgres warehouse to Meta's Conversions API"
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(
        long,
        global = true,
        env = "CAPI_SYNC_CONFIG",
        default_value = "capi-sync.toml"
    )]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, env = "CAPI_SYNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler service: every model syncs on its cron schedule, at most
    /// service.max_concurrent_runs at once (the most overdue first), until SIGINT/SIGTERM.
    Run,
    /// Sync the named models (all enabled ones when none) once, now, and exit.
    Sync {
        models: Vec<String>,
        /// Map and count everything, send nothing, move no cursor.
        #[arg(long)]
        dry_run: bool,
        /// Send to Events Manager's Test Events with this code.
        #[arg(long)]
        test_event_code: Option<String>,
        /// Backfill: start this run at the rows whose cursor is VALUE or later, instead of
        /// at the model's cursor (one model only).
        #[arg(long, value_name = "VALUE")]
        from: Option<String>,
    },
    /// Check the config, the warehouse, each model's columns and the token, sending nothing.
    Check {
        models: Vec<String>,
        /// Do not ask the Graph API whether the token can reach each pixel.
        #[arg(long)]
        offline: bool,
    },
    /// Show the next rows a run would send, mapped and hashed exactly as sent; sends nothing.
    Preview {
        model: String,
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Per model: schedule, next and last run, cursor, rows waiting and lag, refused rows.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A model's recent runs, newest first.
    Runs {
        model: String,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// A model's refused rows (key, event id, reason, when), newest first.
    Refused {
        model: String,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Move a model's cursor back to the start, or to just before a cursor value.
    Reset {
        model: String,
        /// The next run reads the rows whose cursor is VALUE or later.
        #[arg(long, value_name = "VALUE")]
        to: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Create or upgrade capi-sync's own tables.
    Migrate,
    /// A local stand-in for the Graph API that validates requests like Meta does.
    Sandbox(SandboxArgs),
    /// Seed a demo warehouse, start the sandbox and sync the example models once.
    Demo,
    /// Re-read a model's refused rows by key and send those that are now valid.
    Retry { model: String },
    /// Normalize and hash customer fields from JSON lines on stdin
    /// (`{"field": "ph", "value": "...", "country": "gb"}`), one JSON line out per line in.
    Normalize {
        /// Country for national phone numbers when a line gives none.
        #[arg(long)]
        default_country: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    #[arg(long, default_value_t = 8089)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Append every accepted event as one JSON line to this file.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// The access token requests must carry (any non-empty token when unset).
    #[arg(long, env = "CAPI_SYNC_SANDBOX_TOKEN")]
    pub token: Option<String>,
    /// Fraction of requests answered with a transient HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Fraction of requests answered as throttled.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Fraction of requests accepted and recorded, then dropped without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,
    /// Fraction of events (chosen by event_id) rejected as invalid.
    #[arg(long, default_value_t = 0.0)]
    pub reject_rate: f64,
    /// Event ids always rejected as invalid (repeatable).
    #[arg(long = "reject-event-id")]
    pub reject_event_ids: Vec<String>,
    /// Seed for the fault rates.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::progress::LogWriter);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// Runs a command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Run => cmd_run(&cli.config).await,
        Command::Sync {
            ref models,
            dry_run,
            ref test_event_code,
            ref from,
        } => {
            let opts = SyncArgs {
                dry_run,
                test_event_code: test_event_code.clone(),
                from: from.clone(),
                json_logs: cli.log_format == LogFormat::Json,
            };
            cmd_sync(&cli.config, models, opts).await
        }
        Command::Check {
            ref models,
            offline,
        } => match load_config(&cli.config) {
            Ok(config) => crate::ops::check::run(&config, models, offline).await,
            Err(e) => Err(e),
        },
        Command::Preview {
            ref model,
            limit,
            json,
        } => match load_config(&cli.config) {
            Ok(config) => crate::ops::preview::run(&config, model, limit, json).await,
            Err(e) => Err(e),
        },
        Command::Status { json } => match load_config(&cli.config) {
            Ok(config) => crate::ops::status::run(&config, json).await,
            Err(e) => Err(e),
        },
        Command::Runs {
            ref model,
            limit,
            json,
        } => match load_config(&cli.config) {
            Ok(config) => crate::ops::history::runs(&config, model, limit, json).await,
            Err(e) => Err(e),
        },
        Command::Refused {
            ref model,
            limit,
            json,
        } => match load_config(&cli.config) {
            Ok(config) => crate::ops::history::refused(&config, model, limit, json).await,
            Err(e) => Err(e),
        },
        Command::Reset {
            ref model,
            ref to,
            yes,
        } => match load_config(&cli.config) {
            Ok(config) => crate::ops::reset::run(&config, model, to.as_deref(), yes).await,
            Err(e) => Err(e),
        },
        Command::Migrate => cmd_migrate(&cli.config).await,
        Command::Sandbox(ref args) => cmd_sandbox(args).await,
        Command::Demo => crate::demo::run().await,
        Command::Retry { ref model } => cmd_retry(&cli.config, model).await,
        Command::Normalize {
            ref default_country,
        } => crate::mapping::normalize_cli::run(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
            default_country.as_deref(),
        )
        .map(|_| exit::OK)
        .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<crate::config::ConfigError>() {
                eprintln!("{ce}");
                return exit::BAD_CONFIG;
            }
            if let Some(ue) = e.downcast_ref::<crate::ops::UsageError>() {
                eprintln!("capi-sync: {ue}");
                return exit::BAD_CONFIG;
            }
            eprintln!("capi-sync: {}", crate::error_line::one_line(&e));
            exit::UNEXPECTED
        }
    }
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Arc<Config>> {
    Ok(Arc::new(Config::load(path)?))
}

async fn cmd_migrate(path: &std::path::Path) -> anyhow::Result<i32> {
    let config = if path.exists() {
        Config::load(path)?
    } else {
        Config::from_env_only()?
    };
    let state = crate::app::connect_state(&config).await?;
    println!(
        "capi-sync tables are up to date in schema `{}`",
        state.schema()
    );
    Ok(exit::OK)
}

async fn cmd_run(path: &std::path::Path) -> anyhow::Result<i32> {
    let config = load_config(path)?;
    if config.models.iter().all(|m| !m.enabled) {
        anyhow::bail!(
            "no enabled models in {}; nothing to schedule",
            config.source
        );
    }
    let cancel = crate::app::shutdown_token_with_grace(config.service.shutdown_grace);
    let ctx = crate::app::connect(config, cancel).await?;
    crate::http_server::run_service(ctx).await?;
    Ok(exit::OK)
}

/// `sync`'s flags.
#[derive(Debug, Clone, Default)]
pub struct SyncArgs {
    pub dry_run: bool,
    pub test_event_code: Option<String>,
    pub from: Option<String>,
    pub json_logs: bool,
}

async fn cmd_sync(path: &std::path::Path, names: &[String], args: SyncArgs) -> anyhow::Result<i32> {
    let config = load_config(path)?;
    let models = select_models(&config, names)?;
    if args.from.is_some() && models.len() != 1 {
        return Err(crate::ops::UsageError(format!(
            "--from takes a value of one model's cursor; name exactly one model (got {})",
            models.len()
        ))
        .into());
    }
    let cancel = crate::app::shutdown_token_with_grace(config.service.shutdown_grace);
    let ctx = crate::app::connect(config.clone(), cancel).await?;
    let dry_run = args.dry_run;
    let mut failed = 0;
    for model in models {
        // Where this run starts: a backfill's point (checked, and its rows outside Meta's
        // window reported, before anything is read), else the stored cursor.
        let after = match &args.from {
            Some(v) => crate::ops::reset::backfill_start(&ctx, model, v).await?,
            None => ctx.state.cursor(&model.name).await.ok().flatten(),
        };
        let progress = start_progress(&ctx, model, after, args.json_logs).await;
        let opts = RunOptions {
            trigger: if args.from.is_some() {
                "backfill"
            } else {
                "manual"
            }
            .into(),
            from: args.from.clone(),
            dry_run,
            test_event_code: args.test_event_code.clone(),
            observer: Some(progress.clone()),
            ..Default::default()
        };
        let summary = sync_model_once(&ctx, model, &opts).await;
        progress.finish();
        println!("{}", format_summary(&summary, dry_run));
        if matches!(summary.status, RunStatus::Failed | RunStatus::Skipped) {
            failed += 1;
            eprintln!(
                "capi-sync: model {} {}: {}",
                summary.model,
                summary.status.as_str(),
                summary.error.as_deref().unwrap_or("unknown error")
            );
        }
    }
    Ok(if failed > 0 {
        exit::SYNC_FAILED
    } else {
        exit::OK
    })
}

async fn cmd_retry(path: &std::path::Path, name: &str) -> anyhow::Result<i32> {
    let config = load_config(path)?;
    let model = select_models(&config, &[name.to_string()])?[0];
    let cancel = crate::app::shutdown_token_with_grace(config.service.shutdown_grace);
    let ctx = crate::app::connect(config.clone(), cancel).await?;
    let opts = RunOptions {
        trigger: "retry".into(),
        mode: crate::pipeline::RunMode::RetryRefused,
        ..Default::default()
    };
    let summary = sync_model_once(&ctx, model, &opts).await;
    println!("{}", format_summary(&summary, false));
    let missing = summary.counters.rows_requested - summary.counters.rows_read;
    if missing > 0 {
        println!(
            "  {missing} refused rows are no longer returned by the model's query and stay refused"
        );
    }
    if summary.status != RunStatus::Succeeded {
        eprintln!(
            "capi-sync: model {} {}: {}",
            summary.model,
            summary.status.as_str(),
            summary.error.as_deref().unwrap_or("unknown error")
        );
        return Ok(exit::SYNC_FAILED);
    }
    Ok(exit::OK)
}

/// A progress bar or progress log lines for one run, with the rows waiting as its estimate.
async fn start_progress(
    ctx: &crate::pipeline::SyncContext,
    model: &crate::config::ModelConfig,
    after: Option<crate::state::CursorPosition>,
    json_logs: bool,
) -> Arc<crate::progress::Progress> {
    // The estimate only feeds the ETA: when it cannot be had, the run goes on without one.
    let estimate = crate::ops::model_backlog(&ctx.warehouse, model, after.as_ref())
        .await
        .ok()
        .map(|b| b.rows.max(0) as u64);
    crate::progress::Progress::start(
        &model.name,
        estimate,
        crate::progress::ProgressStyle::detect(json_logs),
    )
}

fn select_models<'a>(
    config: &'a Config,
    names: &[String],
) -> anyhow::Result<Vec<&'a crate::config::ModelConfig>> {
    if names.is_empty() {
        return Ok(config.models.iter().filter(|m| m.enabled).collect());
    }
    names
        .iter()
        .map(|n| {
            config.model(n).with_context(|| {
                format!(
                    "no model named `{n}` in {} (models: {})",
                    config.source,
                    config
                        .models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

/// One summary line per model, plus detail lines for refusals, drops and coverage.
pub fn format_summary(s: &RunSummary, dry_run: bool) -> String {
    let c = &s.counters;
    let sent_word = if dry_run {
        "events would be sent"
    } else {
        "events sent"
    };
    let mut out = format!(
        "{}: {} — {} rows read, {} {sent_word}, {} refused, {} already sent ({:.1}s)",
        s.model,
        s.status.as_str(),
        c.rows_read,
        c.events_sent,
        c.rows_refused,
        c.rows_already_sent,
        s.elapsed.as_secs_f64()
    );
    if !c.refused_by_reason.is_empty() {
        let parts: Vec<String> = c
            .refused_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!("\n  refused: {}", parts.join(", ")));
    }
    if !c.dropped_by_field.is_empty() {
        let parts: Vec<String> = c
            .dropped_by_field
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!(
            "\n  values dropped (field:reason): {}",
            parts.join(", ")
        ));
    }
    if c.events_sent > 0 && !c.coverage.is_empty() {
        let parts: Vec<String> = crate::mapping::event::IDENTIFIER_NAMES
            .iter()
            .filter_map(|k| {
                c.coverage
                    .get(*k)
                    .map(|v| format!("{k} {:.0}%", 100.0 * *v as f64 / c.events_sent as f64))
            })
            .collect();
        out.push_str(&format!(
            "\n  match keys (share of events): {}",
            parts.join(", ")
        ));
    }
    if let Some(e) = &s.error {
        if s.status != RunStatus::Succeeded {
            out.push_str(&format!("\n  error: {e}"));
        }
    }
    if dry_run {
        out.push_str("\n  dry run: nothing was sent, no cursor moved, no run was recorded");
    }
    out
}

async fn cmd_sandbox(args: &SandboxArgs) -> anyhow::Result<i32> {
    use crate::sandbox::{serve, Faults, SandboxConfig};
    let addr: std::net::SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "`{}:{}` is not an address to listen on",
                args.host, args.port
            )
        })?;
    let faults = Faults {
        fail_rate: args.fail_rate,
        throttle_rate: args.throttle_rate,
        drop_rate: args.drop_rate,
        slow_ms: args.slow_ms,
        reject_rate: args.reject_rate,
        reject_event_ids: args.reject_event_ids.iter().cloned().collect(),
        seed: args.seed,
    };
    let config = SandboxConfig {
        token: args.token.clone(),
        record: args.record.clone(),
        faults,
        keep_in_memory: false,
    };
    let cancel = crate::app::shutdown_token();
    tracing::info!(%addr, record = ?args.record, "sandbox listening; point meta.graph_url at http://{addr}");
    serve(addr, config, cancel)
        .await
        .with_context(|| format!("while serving the sandbox on {addr}"))?;
    Ok(exit::OK)
}
