//! Infrastructure faults in the middle of a run: the warehouse's connections terminated, the
//! state database unreachable for a while. The run fails cleanly (or waits within its
//! deadline), and the next normal run delivers every eligible row under its one id, with
//! nothing refused by mistake.

use crate::helpers::*;
use crate::proxy::{Mode, Proxy};
use crate::stalls::{
    assert_each_row_delivered_once, assert_each_row_delivered_under_its_id, paged_leads_model,
    proxied_config, run_row, start_run, wait_until,
};
use capi_sync::config::Config;
use capi_sync::pipeline::RunStatus;
use capi_sync::sandbox::Faults;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warehouse_connections_terminated_mid_run_fail_it_cleanly_and_the_next_run_delivers_every_row_once(
) {
    let warehouse = TestDb::new().await;
    // The state schema in a database of its own: the warehouse's connections can then be told
    // from the state's by their database.
    let state = TestDb::new().await;
    seed_leads(
        &warehouse.pool,
        3000,
        "now() - interval '1 day' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    // Each page's query takes 0.3 s, so the reader's connection is mostly inside a query.
    let model = LEADS_MODEL
        .replace(
            "FROM crm.leads\"",
            "FROM crm.leads WHERE (SELECT pg_sleep(0.3)) IS NOT NULL\"",
        )
        .replace(
            "cursor = \"updated_at\"",
            "cursor = \"updated_at\"\npage_size = 300\nbatch_size = 50",
        );
    let extra = format!(
        "[state]\nurl = \"{}\"\n[service]\nmetrics_addr = \"\"\n",
        state.url
    );
    let config = Config::from_toml_str(
        &config_text(&warehouse, &sandbox.base_url(), &extra, &model),
        std::path::Path::new("."),
    )
    .unwrap();
    let ctx = context(config).await;

    let run = start_run(&ctx).await;
    wait_until("some events are sent", || !sandbox.events().is_empty()).await;
    // Terminated again and again until the run ends: the reader's next page meets it.
    while !run.is_finished() {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'capi-sync' AND pid <> pg_backend_pid()",
        )
        .bind(&warehouse.name)
        .execute(&warehouse.pool)
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = run.await.unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    // The message depends on where the termination met the reader (inside a query, or a
    // connection found closed); that the run says why it failed is what matters.
    assert!(
        run.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{run:?}"
    );
    assert_eq!(run_row(&state, run.run_id).await, ("failed".into(), true));
    assert!(sandbox.events().len() < 3000);

    let next = sync(&ctx, "leads").await;
    assert_eq!(next.status, RunStatus::Succeeded, "{:?}", next.error);
    assert_each_row_delivered_once(&sandbox, &state.pool, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_database_unreachable_for_ten_seconds_loses_nothing_and_the_next_run_delivers_every_row(
) {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        3000,
        "now() - interval '1 day' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 100,
        ..Faults::default()
    })
    .await;
    let proxy = Proxy::to_postgres().await;
    let config = proxied_config(
        &db,
        None,
        Some(&proxy),
        &sandbox.base_url(),
        "run_deadline = \"20s\"\nshutdown_grace = \"10s\"",
        &paged_leads_model(),
    );
    let ctx = context(config).await;

    let run = start_run(&ctx).await;
    wait_until("some events are sent", || sandbox.events().len() >= 300).await;
    proxy.set(Mode::Refuse);
    // What the ledger held when the state database went away (read directly): none of these
    // may ever be sent again.
    let recorded: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT event_id FROM capi_sync.deliveries")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.set(Mode::Forward);

    let run = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ended")
        .unwrap();
    // Its lock's session was cut with the rest: it cannot have moved the cursor since.
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");

    let next = sync(&ctx, "leads").await;
    assert_eq!(next.status, RunStatus::Succeeded, "{:?}", next.error);
    assert_each_row_delivered_under_its_id(&sandbox, &db.pool, 3000).await;
    // The one repeat allowed: events Meta acknowledged while their ledger rows could not be
    // written. They are sent again under the same ids (Meta deduplicates them).
    let counts = event_id_counts(&sandbox.events());
    let resent: Vec<&String> = counts
        .iter()
        .filter(|(id, &n)| n > 1 && recorded.contains(*id))
        .map(|(id, _)| id)
        .collect();
    assert!(
        resent.is_empty(),
        "events recorded before the outage were sent again: {resent:?}"
    );
    let all_recorded: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT event_id) FROM capi_sync.deliveries WHERE model = 'leads'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(all_recorded, 3000);
}
