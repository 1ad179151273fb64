//! The delivery ledger: every event id Meta acknowledged, with its row key and fingerprint.
//! Looked up by event id, written with one binary `COPY`, pruned past its retention.

use super::refused::clear_refusals;
use super::{copy, Delivered, MayBeRefused, Result, StateStore};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use std::time::Duration;

impl StateStore {
    /// Row key and fingerprint of these event ids, where the ledger has them.
    pub async fn delivered_rows(
        &self,
        model: &str,
        event_ids: &[String],
    ) -> Result<HashMap<String, (Vec<String>, String)>> {
        let rows = self
            .ledger_rows("d.event_id, d.row_key, d.fingerprint", model, event_ids)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    /// `columns` (of `d`, the ledger) of the ledger rows of these event ids, found through the
    /// event-id index.
    ///
    /// The ids go in as a table (`unnest`), one index probe each, in the index's bucket order.
    /// Asked as `event_id = ANY($1)`, the hash index answered through a bitmap whose every
    /// candidate row was checked again against the whole array: about 6.5 µs of server CPU per
    /// id of a 1000-id chunk, against 2.6 µs probe by probe.
    async fn ledger_rows(
        &self,
        columns: &str,
        model: &str,
        event_ids: &[String],
    ) -> Result<Vec<PgRow>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = probe_order(event_ids.iter().map(String::as_str));
        let mut tx = self.pool.begin().await?;
        by_event_id(&mut tx).await?;
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM unnest($1::text[]) AS i(id) \
             JOIN deliveries d ON d.event_id = i.id WHERE d.model = $2"
        ))
        .bind(&ids)
        .bind(model)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// True when the model has ever written ledger rows (`ledger_models`, marked by every
    /// ledger write): false only when the ledger holds no event of it.
    pub async fn has_deliveries(&self, model: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ledger_models WHERE model = $1)")
                .bind(model)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The ledger's fingerprints for these event ids (those already delivered).
    pub async fn delivered_fingerprints(
        &self,
        model: &str,
        event_ids: &[String],
    ) -> Result<HashMap<String, String>> {
        let rows = self
            .ledger_rows("d.event_id, d.fingerprint", model, event_ids)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Writes acknowledged events to the ledger in their own transaction, as soon as Meta
    /// answers and before the batches ahead of them are settled: the rows of one or more
    /// batches (`parts`, see the pipeline's ledger writer) in one `COPY`. The cursor still
    /// moves only in order, in [`StateStore::settle`]; a ledger row ahead of the cursor (after
    /// a crash) only means the next run finds the event already sent. Ledger writes then run
    /// beside the cursor's transaction instead of inside it, which kept a backfill waiting on
    /// a single database backend.
    ///
    /// The events must be new to the ledger, as every event a run sends is: the run holds the
    /// model's lock, sends only ids the ledger lacked when their chunk was read, and each id
    /// once. (A write that may repeat an earlier one goes through [`StateStore::settle`], which
    /// replaces.)
    ///
    /// `clear_refused`: the rows among these that may have a refusal; their refusals are deleted
    /// in the same transaction, so no crash leaves a delivered row listed as refused.
    pub async fn record_acknowledged(
        &self,
        model: &str,
        run_id: i64,
        parts: &[&[Delivered]],
        clear_refused: &MayBeRefused,
    ) -> Result<()> {
        let generation = self.write_generation().await?;
        let mut tx = self.pool.begin().await?;
        // The commit does not wait for its WAL to reach the disk. The cursor's transaction does
        // (`settle`), and it commits after this one, later in the same WAL: once the cursor
        // stands past these events, their ledger rows are durable too. A database crash before
        // that can lose them, but then the cursor has not moved either, and the next run
        // re-sends the events under the same ids, as after a crash of our own. Not waiting
        // lets the batches settle one disk flush sooner.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        record_deliveries(&mut tx, model, run_id, generation, parts, false).await?;
        let delivered = parts
            .iter()
            .flat_map(|p| p.iter())
            .map(|d| d.row_key.as_slice());
        clear_refusals(&mut tx, model, clear_refused, delivered).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes ledger entries older than the retention.
    ///
    /// The retention of a large backfill ends all at once, and deleting millions of rows can
    /// outlast the sessions' statement timeout; failing, the prune would fail again every
    /// hour. It runs with a timeout of its own, long enough for that and still bounded.
    pub async fn prune_ledger(&self, retention: Duration) -> Result<u64> {
        let secs = retention.as_secs() as f64;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL statement_timeout = '30min'")
            .execute(&mut *tx)
            .await?;
        let pruned = sqlx::query(
            "DELETE FROM deliveries WHERE delivered_at < now() - make_interval(secs => $1)",
        )
        .bind(secs)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        self.drop_empty_generations().await?;
        Ok(pruned)
    }
}

/// The most bytes of `COPY` data handed to the driver at once (see [`record_deliveries`]).
const COPY_PIECE_BYTES: usize = 256 << 10;

/// Appends ledger rows with one binary `COPY`. The ledger's index does not enforce one row
/// per event id (see the migration `ledger_hash_index`): `replace` first deletes the rows'
/// ids, for a write that may repeat one already made (the cursor's transaction recording
/// events whose early write failed, perhaps only on our side of the connection).
pub(super) async fn record_deliveries(
    conn: &mut PgConnection,
    model: &str,
    run_id: i64,
    generation: i32,
    parts: &[&[Delivered]],
    replace: bool,
) -> Result<()> {
    if replace {
        let ids = probe_order(
            parts
                .iter()
                .flat_map(|p| p.iter())
                .map(|d| d.event_id.as_str()),
        );
        by_event_id(conn).await?;
        sqlx::query(
            "DELETE FROM deliveries d USING unnest($1::text[]) AS i(id) \
             WHERE d.event_id = i.id AND d.model = $2",
        )
        .bind(&ids)
        .bind(model)
        .execute(&mut *conn)
        .await?;
    }
    // The model has ledger rows from this transaction on (`has_deliveries`).
    sqlx::query("INSERT INTO ledger_models (model) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(model)
        .execute(&mut *conn)
        .await?;
    let data = copy::deliveries(model, run_id, generation, parts);
    let mut copy_in = conn.copy_in_raw(copy::DELIVERIES_COPY).await?;
    // Sent in pieces: the driver copies what it is given into the connection's write buffer,
    // which keeps its largest size for the connection's life. A write of 8,000 rows in one
    // piece left a few megabytes held by each connection of the pool that ever wrote one.
    for piece in data.chunks(COPY_PIECE_BYTES) {
        copy_in.send(piece).await?;
    }
    copy_in.finish().await?;
    Ok(())
}

/// Makes the transaction's statements find ledger rows by their event ids' index, one plain
/// index probe per id. The ledger grows faster than autovacuum analyzes it, and a plan made on
/// statistics that still say "nearly empty" would scan every row for each lookup. A bitmap
/// per probe (the plan chosen otherwise) cost about 10% more than reading the row at once,
/// and a lookup of a few thousand ids is not worth starting parallel workers (a process each).
pub(super) async fn by_event_id(conn: &mut PgConnection) -> Result<()> {
    sqlx::query(
        "SELECT set_config('enable_seqscan', 'off', true), \
                set_config('enable_bitmapscan', 'off', true), \
                set_config('max_parallel_workers_per_gather', '0', true)",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Event ids once each, in the order of the ledger's index buckets (see
/// [`copy::bucket_order`]): probes of one bucket then follow one another.
pub(super) fn probe_order<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut ids: Vec<(u32, &str)> = ids.map(|id| (copy::bucket_order(id), id)).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter().map(|(_, id)| id).collect()
}
