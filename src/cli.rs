//! The command line: its commands and flags, the tracing set-up, and the dispatch to
//! `src/commands/`, where each command is.

use crate::commands::{self, load_config};
use crate::config::command_env;
use crate::exit::Exit;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
        env = command_env::CONFIG,
        default_value = "capi-sync.toml"
    )]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, env = command_env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
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
        /// Exit 1 when a model's match quality (out of 10, as Meta reports it) is below this;
        /// read now, or the last recorded with --offline or when Meta cannot be reached.
        #[arg(long, value_name = "SCORE", value_parser = parse_score)]
        min_quality: Option<f64>,
    },
    /// Read each model's match quality from Meta's Dataset Quality API now, record it and
    /// show it per event name (composite score, coverage per customer key, freshness).
    Quality {
        models: Vec<String>,
        #[arg(long)]
        json: bool,
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
    Demo {
        /// Then keep the service running (schedules, endpoints and the dashboard) until
        /// Ctrl-C, on 127.0.0.1:9464, or another free port when that one is taken.
        #[arg(long)]
        serve: bool,
        /// Where `--serve` listens (port 0: any free port).
        #[arg(long, value_name = "ADDR", requires = "serve")]
        addr: Option<std::net::SocketAddr>,
    },
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

/// A match quality score: Meta's scores are out of 10.
fn parse_score(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if (0.0..=10.0).contains(&x) => Ok(x),
        _ => Err(format!(
            "`{text}` is not a score from 0 to 10 (Meta's match quality is out of 10)"
        )),
    }
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
    #[arg(long, env = command_env::SANDBOX_TOKEN)]
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
    /// Answer JSON events requests with their event count only, without validating the
    /// events: an endpoint that costs next to nothing, for benchmarks of the sender.
    #[arg(long)]
    pub count_only: bool,
}

impl SandboxArgs {
    /// The sandbox's settings, as the flags give them.
    pub fn sandbox_config(&self) -> crate::sandbox::SandboxConfig {
        crate::sandbox::SandboxConfig {
            token: self.token.clone(),
            record: self.record.clone(),
            faults: crate::sandbox::Faults {
                fail_rate: self.fail_rate,
                throttle_rate: self.throttle_rate,
                drop_rate: self.drop_rate,
                slow_ms: self.slow_ms,
                reject_rate: self.reject_rate,
                reject_event_ids: self.reject_event_ids.iter().cloned().collect(),
                seed: self.seed,
                usage_percent: 0,
            },
            keep_in_memory: false,
            count_only: self.count_only,
        }
    }
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

/// Runs a command; returns the code the process exits with.
pub async fn run(cli: Cli) -> Exit {
    let result = match cli.command {
        Command::Run => commands::run::run(&cli.config).await,
        Command::Sync {
            ref models,
            dry_run,
            ref test_event_code,
            ref from,
        } => {
            let opts = commands::sync::SyncArgs {
                dry_run,
                test_event_code: test_event_code.clone(),
                from: from.clone(),
                json_logs: cli.log_format == LogFormat::Json,
            };
            commands::sync::run(&cli.config, models, opts).await
        }
        Command::Check {
            ref models,
            offline,
            min_quality,
        } => match load_config(&cli.config) {
            Ok(config) => match commands::check::run(&config, models, offline).await {
                Ok(Exit::Ok) if min_quality.is_some() => {
                    let min = min_quality.unwrap_or_default();
                    commands::quality::check_min_quality(&config, models, offline, min)
                        .await
                        .map(|ok| if ok { Exit::Ok } else { Exit::SyncFailed })
                }
                other => other,
            },
            Err(e) => Err(e),
        },
        Command::Quality { ref models, json } => match load_config(&cli.config) {
            Ok(config) => commands::quality::run(&config, models, json).await,
            Err(e) => Err(e),
        },
        Command::Preview {
            ref model,
            limit,
            json,
        } => match load_config(&cli.config) {
            Ok(config) => commands::preview::run(&config, model, limit, json).await,
            Err(e) => Err(e),
        },
        Command::Status { json } => match load_config(&cli.config) {
            Ok(config) => commands::status::run(&config, json).await,
            Err(e) => Err(e),
        },
        Command::Runs {
            ref model,
            limit,
            json,
        } => match load_config(&cli.config) {
            Ok(config) => commands::history::runs(&config, model, limit, json).await,
            Err(e) => Err(e),
        },
        Command::Refused {
            ref model,
            limit,
            json,
        } => match load_config(&cli.config) {
            Ok(config) => commands::history::refused(&config, model, limit, json).await,
            Err(e) => Err(e),
        },
        Command::Reset {
            ref model,
            ref to,
            yes,
        } => match load_config(&cli.config) {
            Ok(config) => commands::reset::run(&config, model, to.as_deref(), yes).await,
            Err(e) => Err(e),
        },
        Command::Migrate => commands::migrate::run(&cli.config).await,
        Command::Sandbox(ref args) => {
            commands::sandbox::run(&args.host, args.port, args.sandbox_config()).await
        }
        Command::Demo { serve, addr } => commands::demo::run(serve.then_some(addr)).await,
        Command::Retry { ref model } => commands::retry::run(&cli.config, model).await,
        Command::Normalize {
            ref default_country,
        } => commands::normalize::run(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
            default_country.as_deref(),
        )
        .map(|_| Exit::Ok)
        .map_err(anyhow::Error::from),
    };
    result.unwrap_or_else(|e| crate::exit::report(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn envs_of(cmd: &clap::Command, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.push(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            envs_of(sub, out);
        }
    }

    /// The config's `CAPI_SYNC_*` layer skips exactly the variables the command line reads; a
    /// new `env` on a flag must be added to `command_env::ALL`, or the config load would take
    /// it for an unknown key.
    #[test]
    fn every_command_line_variable_is_kept_out_of_the_config_keys() {
        let mut envs = Vec::new();
        envs_of(&Cli::command(), &mut envs);
        assert!(envs.len() >= 3, "{envs:?}");
        for env in &envs {
            assert!(
                command_env::ALL.contains(&env.as_str()),
                "{env} is read by the command line but not listed in config::command_env::ALL"
            );
        }
    }
}
