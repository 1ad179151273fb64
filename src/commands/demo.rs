//! `capi-sync demo`: the embedded default a newcomer runs first. It seeds a demo warehouse
//! with messy CRM and store rows, starts the sandbox in-process, syncs the example models
//! once and prints what happened. With `--serve` it then keeps the service running (the
//! schedules, the endpoints and the dashboard) until Ctrl-C.

use crate::config::{redact_url, Config};
use crate::pipeline::{sync_model_once, RunOptions};
use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use std::path::PathBuf;
use std::sync::Arc;

const EXAMPLE_CONFIG: &str = include_str!("../../config/capi-sync.example.toml");
const LEAD_STAGES_SQL: &str = include_str!("../../config/models/lead_stages.sql");
const STORE_PURCHASES_SQL: &str = include_str!("../../config/models/store_purchases.sql");
const DEMO_DB: &str = "capi_sync_demo";
const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const DEMO_TOKEN: &str = "demo-access-token";

/// What seeding did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    pub first_seed: bool,
    pub lead_events: i64,
    pub sales: i64,
}

/// Where `demo --serve` serves first; when it is taken, a free port is chosen.
const SERVE_ADDR: &str = "127.0.0.1:9464";

/// Runs the demo; with `serve` set, then the service until Ctrl-C, on its address or
/// [`SERVE_ADDR`].
pub async fn run(serve: Option<Option<std::net::SocketAddr>>) -> anyhow::Result<super::Exit> {
    let url = demo_database_url().await?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .with_context(|| {
            format!(
                "while connecting to the demo warehouse at {}",
                redact_url(&url)
            )
        })?;
    let seed = seed(&pool, chrono::Utc::now())
        .await
        .context("while seeding the demo warehouse")?;
    pool.close().await;

    let record = std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join("capi-sync-demo-events.jsonl");
    let sandbox = crate::sandbox::start(
        "127.0.0.1:0".parse().expect("valid address"),
        crate::sandbox::SandboxConfig {
            token: Some(DEMO_TOKEN.into()),
            record: Some(record.clone()),
            faults: Default::default(),
            keep_in_memory: false,
            count_only: false,
        },
    )
    .await
    .context("while starting the sandbox")?;

    let mut config = demo_config(&url, &sandbox.base_url())?;
    if let Some(addr) = serve {
        let addr = addr.map_or_else(serve_addr, |a| a.to_string());
        config.service.metrics_addr = Some(addr);
        config.service.ui = crate::config::UiPlacement::WithEndpoints;
    }
    let config = Arc::new(config);
    println!("capi-sync demo");
    println!(
        "  warehouse: {} (tables crm.lead_events, store.sales)",
        redact_url(&url)
    );
    if seed.first_seed {
        println!(
            "  seeded {} CRM lead-stage rows and {} store sales (messy on purpose: mixed-case emails, phones in several formats, stale and incomplete rows)",
            seed.lead_events, seed.sales
        );
    } else {
        println!(
            "  the demo data was already there; inserted {} new lead-stage rows and {} new sales, which this run sends (rows sent before are not sent again)",
            seed.lead_events, seed.sales
        );
    }
    println!(
        "  sandbox: {} (validates requests like Meta's Graph API)",
        sandbox.base_url()
    );
    println!();

    let cancel = crate::app::shutdown_token_with_grace(config.service.shutdown_grace);
    let ctx = crate::app::connect(config.clone(), cancel).await?;
    let opts = RunOptions {
        trigger: "demo".into(),
        ..Default::default()
    };
    println!("before the sync, against Meta's window (7 days; 62 for physical_store):");
    for model in &config.models {
        println!("{}", window_line(&ctx, model).await);
    }
    println!();
    let mut failed = false;
    let mut sample = None;
    for model in &config.models {
        let summary = sync_model_once(&ctx, model, &opts).await;
        println!("{}", super::summary::format_summary(&summary, false));
        failed |= summary.status != crate::pipeline::RunStatus::Succeeded;
        if sample.is_none() {
            sample = summary.sample_event.map(|s| (model.name.clone(), s));
        }
    }
    println!();
    println!("after the sync (`capi-sync status` shows the same; `check` warns of rows about to leave the window):");
    for model in &config.models {
        println!("{}", window_line(&ctx, model).await);
    }
    // Match quality as Meta's Dataset Quality API reports it, here derived by the sandbox from
    // the events it just received, and recorded like the service records it.
    let models: Vec<&crate::config::ModelConfig> = config.models.iter().collect();
    let quality = crate::quality::fetch(&ctx.graph, Some(&ctx.state), true, &models).await;

    println!();
    println!("match quality (`capi-sync quality` reads it from Meta; the sandbox derives it from what it received):");
    for q in &quality {
        print!("{}", super::quality::format_read(q));
    }

    println!();
    match sample {
        Some((model, json)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(json);
            println!("one event as sent ({model}; customer fields are normalized and SHA-256 hashed):\n{pretty}");
        }
        None => {
            println!("no new events this time: every demo row had already been sent or refused.")
        }
    }
    let lines = std::fs::read_to_string(&record)
        .map(|s| s.lines().count())
        .unwrap_or(0);
    println!();
    println!(
        "recorded events: {} ({lines} events in total across demo runs)",
        record.display()
    );
    println!(
        "refused rows and their reasons: SELECT model, row_key, reason, detail FROM {}.refused_rows;",
        config.state.schema
    );
    println!(
        "match quality per model and event name: SELECT model, event_name, composite_score, match_keys FROM {}.results_latest_quality;",
        config.state.schema
    );
    println!("run it again: new demo rows are added and only those are sent.");
    if serve.is_some() {
        serve_dashboard(ctx).await?;
    }
    sandbox.shutdown().await;
    Ok(if failed {
        super::Exit::SyncFailed
    } else {
        super::Exit::Ok
    })
}

/// [`SERVE_ADDR`] when it is free, else a free port on the loopback interface.
/// One model's rows waiting after its cursor, those leaving Meta's window within
/// `service.expiring_within` and those already outside it: the figures of `status`.
async fn window_line(
    ctx: &crate::pipeline::SyncContext,
    model: &crate::config::ModelConfig,
) -> String {
    let horizon = ctx.config.service.expiring_within;
    let after = match ctx.state.cursor(&model.name).await {
        Ok(a) => a,
        Err(e) => return format!("  {}: the cursor cannot be read: {e}", model.name),
    };
    let backlog =
        crate::source::model_backlog_with_expiry(&ctx.warehouse, model, after.as_ref(), horizon)
            .await;
    let b = match backlog {
        Ok(b) => b,
        Err(e) => return format!("  {}: rows waiting unknown: {e}", model.name),
    };
    let expiry = match &b.expiry {
        Some(crate::source::ExpiryCount::Counted(e)) => {
            let first = e
                .earliest
                .map(|t| format!(" (the first at {})", super::utc(t)))
                .unwrap_or_default();
            format!(
                "{} leaving Meta's window within {}{first}, {} already outside it (refused as event_time_too_old when read)",
                super::rows(e.expiring),
                super::setting_duration(horizon.as_secs()),
                super::rows(e.expired),
            )
        }
        Some(crate::source::ExpiryCount::Unknown(why)) => {
            format!("rows leaving Meta's window unknown: {why}")
        }
        None => "rows leaving Meta's window not counted".to_string(),
    };
    format!(
        "  {}: {} waiting; {expiry}",
        model.name,
        super::rows(b.rows)
    )
}

fn serve_addr() -> String {
    let free = |a: &str| {
        std::net::TcpListener::bind(a)
            .ok()
            .and_then(|l| l.local_addr().ok())
    };
    free(SERVE_ADDR)
        .or_else(|| free("127.0.0.1:0"))
        .map_or_else(|| SERVE_ADDR.to_string(), |a| a.to_string())
}

/// The `run` service on the demo's models until Ctrl-C, its address printed once it listens.
async fn serve_dashboard(ctx: crate::pipeline::SyncContext) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let service = tokio::spawn(crate::http_server::run_service_announced(ctx, Some(tx)));
    if let Ok(at) = rx.await {
        println!();
        if let Some(addr) = at.dashboard {
            println!(
                "dashboard: http://{addr}/  (the models run on their schedules; Ctrl-C stops)"
            );
        }
        if let Some(addr) = at.endpoints {
            println!("probes and metrics: http://{addr}/healthz, /readyz, /metrics");
        }
    }
    service.await.context("the service stopped abnormally")?
}

/// `DATABASE_URL` when set; otherwise the local server's `capi_sync_demo` database, created
/// on first use.
async fn demo_database_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            return Ok(url);
        }
    }
    let admin = format!("{LOCAL_SERVER}/postgres");
    let mut conn = sqlx::PgConnection::connect(&admin).await.with_context(|| {
        format!(
            "while connecting to the local Postgres at {} (start it, or set DATABASE_URL)",
            redact_url(&admin)
        )
    })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DEMO_DB)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE {DEMO_DB}"))
            .execute(&mut conn)
            .await
        {
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !raced {
                return Err(e).context("while creating the demo database");
            }
        }
    }
    Ok(format!("{LOCAL_SERVER}/{DEMO_DB}"))
}

/// The example config from `config/`, pointed at the demo warehouse and the sandbox.
pub fn demo_config(warehouse_url: &str, graph_url: &str) -> anyhow::Result<Config> {
    let mut doc: toml::Table = EXAMPLE_CONFIG
        .parse()
        .context("the embedded example config is not TOML")?;
    let set = |doc: &mut toml::Table, section: &str, key: &str, value: &str| {
        if let Some(t) = doc.get_mut(section).and_then(|s| s.as_table_mut()) {
            t.insert(key.into(), toml::Value::String(value.into()));
        }
    };
    set(&mut doc, "warehouse", "url", warehouse_url);
    set(&mut doc, "meta", "graph_url", graph_url);
    set(&mut doc, "meta", "access_token", DEMO_TOKEN);
    if let Some(models) = doc.get_mut("models").and_then(|m| m.as_array_mut()) {
        for m in models.iter_mut().filter_map(|m| m.as_table_mut()) {
            let sql = match m.get("sql_file").and_then(|f| f.as_str()) {
                Some("models/lead_stages.sql") => LEAD_STAGES_SQL,
                Some("models/store_purchases.sql") => STORE_PURCHASES_SQL,
                _ => continue,
            };
            m.remove("sql_file");
            m.insert("sql".into(), toml::Value::String(sql.into()));
        }
    }
    let text = toml::to_string(&doc)?;
    Ok(Config::from_toml_str(&text, std::path::Path::new("."))?)
}

/// A small deterministic generator, so every demo database looks alike.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const FIRST: &[&str] = &[
    "John",
    "Mary-Jane",
    "José",
    "Zoë",
    "Ana",
    "Wei",
    " Liam ",
    "ÉMILE",
    "Sofía",
    "Aoife",
    "Noah",
    "Priya",
];
const LAST: &[&str] = &[
    "Smith",
    "O'Neil",
    "García",
    "Müller",
    "van der Berg",
    "Nguyen",
    "Kowalski",
    "Okafor",
    "Dubois",
    "Tanaka",
];
const CITIES: &[&str] = &[
    "San Francisco",
    "New York",
    "St. Louis",
    "São Paulo",
    "London",
    "Winston-Salem",
    "Toronto",
    "Austin",
];
const STATES: &[&str] = &[
    "California",
    "CA",
    "N.Y.",
    "new york",
    "Ontario",
    "TX",
    "Texas",
    "ca ",
];
const ZIPS: &[&str] = &[
    "94105-1234",
    "10001",
    " 02134",
    "SW1A 1AA",
    "M5V 2T6",
    "73301",
    "941051234",
];
const COUNTRIES: &[&str] = &[
    "US",
    "United States",
    "usa",
    "us",
    "GB",
    "United Kingdom",
    "Canada",
    "ca",
];
const DOMAINS: &[&str] = &["Gmail.com", "example.COM", "mail.co.uk", "Outlook.com"];
const STAGES: &[&str] = &["Lead", "Qualified", "Opportunity", "Closed Won"];

fn email(r: &mut Lcg, i: u64) -> Option<String> {
    Some(match r.below(10) {
        0 => return None,
        1 => "not-an-email".to_string(),
        2 => format!("  Customer.{i}@{}  ", r.pick(DOMAINS)),
        3 => format!("CUSTOMER_{i}@{}", r.pick(DOMAINS).to_uppercase()),
        _ => format!("customer.{i}@{}", r.pick(DOMAINS)),
    })
}

fn phone(r: &mut Lcg, i: u64) -> Option<String> {
    let n = 100 + (i % 900);
    Some(match r.below(9) {
        0 => return None,
        1 => format!("+1 (650) 253-0{:03}", n % 1000),
        2 => format!("650.253.{:04}", n),
        3 => format!("(415) 253 {:04}", n),
        4 => format!("+44 20 7946 {:04}", n),
        5 => format!("0044 (0)20 7946 {:04}", n),
        6 => "12345".to_string(),
        _ => format!("212-253-{:04}", n),
    })
}

/// Creates the demo tables and rows on the first run; later runs add a few new rows.
pub async fn seed(pool: &PgPool, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<SeedReport> {
    let mut tx = pool.begin().await?;
    for ddl in [
        "CREATE SCHEMA IF NOT EXISTS crm",
        "CREATE SCHEMA IF NOT EXISTS store",
        "CREATE TABLE IF NOT EXISTS crm.lead_events (
            lead_event_id bigint PRIMARY KEY, lead_id bigint, stage text, stage_changed_at timestamptz,
            email text, phone text, first_name text, last_name text, city text, state text, zip text,
            country text, updated_at timestamptz NOT NULL)",
        "CREATE TABLE IF NOT EXISTS store.sales (
            sale_id text PRIMARY KEY, store_code text, sold_at timestamptz, amount numeric(12,2), currency text,
            customer_email text, customer_phone text, customer_zip text, customer_country text,
            loyalty_id text, updated_at timestamptz NOT NULL)",
        "CREATE INDEX IF NOT EXISTS lead_events_cursor ON crm.lead_events (updated_at, lead_event_id)",
        "CREATE INDEX IF NOT EXISTS sales_cursor ON store.sales (updated_at, sale_id)",
    ] {
        sqlx::query(ddl).execute(&mut *tx).await?;
    }
    // Serialize concurrent demo runs on the same database.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('capi-sync demo seed'))")
        .execute(&mut *tx)
        .await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.lead_events")
        .fetch_one(&mut *tx)
        .await?;
    let first_seed = existing == 0;
    let next_id: i64 =
        sqlx::query_scalar("SELECT coalesce(max(lead_event_id), 0) + 1 FROM crm.lead_events")
            .fetch_one(&mut *tx)
            .await?;
    let next_sale: i64 = sqlx::query_scalar("SELECT count(*) + 1 FROM store.sales")
        .fetch_one(&mut *tx)
        .await?;
    let mut r = Lcg(0x5eed ^ next_id as u64);
    let (leads, sales) = if first_seed { (110, 150) } else { (6, 5) };
    let hour =
        |t: chrono::DateTime<chrono::Utc>| t - chrono::Duration::seconds(t.timestamp() % 3600);

    let mut lead_rows = 0i64;
    let mut id = next_id;
    for lead in 0..leads {
        let lead_id: Option<i64> = match r.below(12) {
            0 => None,
            1 => Some(100_000_000_000 + r.below(899_999_999_999) as i64), // 12 digits: not a Lead Ads id
            _ => Some(1_000_000_000_000_000 + r.below(8_999_999_999_999_999) as i64),
        };
        let stages = if first_seed { 1 + r.below(4) } else { 1 };
        let start = if first_seed {
            now - chrono::Duration::minutes(30 + r.below(6 * 24 * 60) as i64)
        } else {
            now - chrono::Duration::minutes(1 + r.below(5) as i64)
        };
        let stale = first_seed && r.chance(5);
        let identity_free = r.chance(4);
        let (em, ph) = (email(&mut r, lead), phone(&mut r, lead));
        let (first, last) = (r.pick(FIRST).to_string(), r.pick(LAST).to_string());
        let (city, state, zip, country) = (
            r.pick(CITIES),
            r.pick(STATES),
            r.pick(ZIPS),
            r.pick(COUNTRIES),
        );
        for s in 0..stages {
            let mut changed = start + chrono::Duration::hours(3 * s as i64);
            if stale {
                changed -= chrono::Duration::days(10);
            }
            if changed > now {
                changed = now - chrono::Duration::minutes(1);
            }
            let stage = if r.chance(3) {
                None
            } else {
                Some(STAGES[s as usize])
            };
            // CRM exports land in bulk: many rows share one updated_at.
            let updated = if first_seed {
                hour(changed.max(now - chrono::Duration::days(6))) + chrono::Duration::minutes(5)
            } else {
                now
            };
            let (lid, e, p, f, l) = if identity_free {
                (None, None, None, None, None)
            } else {
                (
                    lead_id,
                    em.clone(),
                    ph.clone(),
                    Some(first.clone()),
                    Some(last.clone()),
                )
            };
            sqlx::query(
                "INSERT INTO crm.lead_events (lead_event_id, lead_id, stage, stage_changed_at, email, phone, first_name,
                    last_name, city, state, zip, country, updated_at)
                 VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
            )
            .bind(id)
            .bind(lid)
            .bind(stage)
            .bind(changed)
            .bind(e)
            .bind(p)
            .bind(f)
            .bind(l)
            .bind(city)
            .bind(state)
            .bind(zip)
            .bind(country)
            .bind(updated)
            .execute(&mut *tx)
            .await?;
            id += 1;
            lead_rows += 1;
        }
    }

    for n in next_sale..next_sale + sales {
        let sold = if first_seed {
            let days = if r.chance(3) { 70 } else { r.below(30) as i64 };
            now - chrono::Duration::days(days) - chrono::Duration::minutes(r.below(600) as i64 + 5)
        } else {
            now - chrono::Duration::minutes(2)
        };
        let amount = format!("{}.{:02}", 5 + r.below(495), r.below(100));
        let currency = match r.below(20) {
            0 => None,
            1 => Some("usd"),
            2 => Some("EUR"),
            _ => Some("USD"),
        };
        let updated = if first_seed { hour(sold) } else { now };
        sqlx::query(
            "INSERT INTO store.sales (sale_id, store_code, sold_at, amount, currency, customer_email, customer_phone,
                customer_zip, customer_country, loyalty_id, updated_at)
             VALUES ($1,$2,$3,$4::numeric,$5,$6,$7,$8,$9,$10,$11)",
        )
        .bind(format!("S-{n:06}"))
        .bind(r.pick(&["SF-01", "NY-02", "AUS-03"]))
        .bind(sold)
        .bind(amount)
        .bind(currency)
        .bind(email(&mut r, 10_000 + n as u64))
        .bind(phone(&mut r, 10_000 + n as u64))
        .bind(r.pick(ZIPS))
        .bind(r.pick(COUNTRIES))
        .bind(if r.chance(50) { Some(format!("LOY-{:05}", n)) } else { None })
        .bind(updated)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(SeedReport {
        first_seed,
        lead_events: lead_rows,
        sales,
    })
}
