//! The ledger's generations (see the migration `ledger_generations`): a partition each, new
//! events written to the newest, the next one started once the newest's event-id index would
//! no longer stay in the server's shared buffers.

use super::{Result, StateStore};
use sqlx::Row;

/// The lower bound of the automatic size: a smaller `shared_buffers` would start a generation
/// every few thousand events, and each one adds a probe to every lookup.
const MIN_AUTO_BYTES: i64 = 8 << 20;

impl StateStore {
    /// The generation new ledger rows go to: the newest, or the next one, started here when
    /// the newest's indexes have reached [`StateStore::ledger_partition_bytes`] (0: a quarter of
    /// the server's `shared_buffers`, at least 8 MiB).
    pub(super) async fn write_generation(&self) -> Result<i32> {
        let (newest, full) = self.newest_generation().await?;
        if !full {
            return Ok(newest);
        }
        self.start_generation(newest).await
    }

    /// The newest generation, and whether its indexes have reached the size.
    async fn newest_generation(&self) -> Result<(i32, bool)> {
        let row = sqlx::query(
            "SELECT g.generation,
                    pg_indexes_size(format('deliveries_g%s', g.generation)::regclass)
                      >= CASE WHEN $1 > 0 THEN $1
                              ELSE greatest(pg_size_bytes(current_setting('shared_buffers')) / 4, $2)
                         END
             FROM ledger_generations g ORDER BY g.generation DESC LIMIT 1",
        )
        .bind(i64::try_from(self.partition_bytes).unwrap_or(i64::MAX))
        .bind(MIN_AUTO_BYTES)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Starts the generation after `full` unless another writer already has, and returns the
    /// newest. The partition is made apart and then attached: attaching locks the ledger only
    /// against other schema changes, where creating it as a partition would stop every
    /// reader and writer of the ledger until the transaction ends.
    async fn start_generation(&self, full: i32) -> Result<i32> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext('#ledger-generation'))")
            .bind(&self.schema)
            .execute(&mut *tx)
            .await?;
        let newest: i32 = sqlx::query_scalar("SELECT max(generation) FROM ledger_generations")
            .fetch_one(&mut *tx)
            .await?;
        if newest != full {
            tx.commit().await?;
            return Ok(newest);
        }
        let next = newest + 1;
        let table = format!("deliveries_g{next}");
        for ddl in [
            format!("CREATE TABLE {table} (LIKE deliveries INCLUDING DEFAULTS)"),
            format!("ALTER TABLE {table} ALTER COLUMN generation SET DEFAULT {next}"),
            format!("ALTER TABLE deliveries ATTACH PARTITION {table} FOR VALUES IN ({next})"),
        ] {
            sqlx::query(&ddl).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO ledger_generations (generation) VALUES ($1)")
            .bind(next)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            generation = next,
            "delivery ledger: started a new generation"
        );
        Ok(next)
    }

    /// Drops the generations that pruning emptied, the newest excepted. Dropping a partition
    /// locks the whole ledger for an instant; when that lock is not granted within a few
    /// seconds (a long lookup), the generation is left for the next prune.
    pub(super) async fn drop_empty_generations(&self) -> Result<u64> {
        let older: Vec<i32> = sqlx::query_scalar(
            "SELECT generation FROM ledger_generations
             WHERE generation < (SELECT max(generation) FROM ledger_generations)
             ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut dropped = 0;
        for g in older {
            let table = format!("deliveries_g{g}");
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET LOCAL lock_timeout = '5s'")
                .execute(&mut *tx)
                .await?;
            let empty: bool =
                sqlx::query_scalar(&format!("SELECT NOT EXISTS (SELECT 1 FROM {table})"))
                    .fetch_one(&mut *tx)
                    .await?;
            if !empty {
                continue;
            }
            match sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                // 55P03: lock_not_available.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => continue,
                Err(e) => return Err(e.into()),
            }
            sqlx::query("DELETE FROM ledger_generations WHERE generation = $1")
                .bind(g)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            dropped += 1;
        }
        Ok(dropped)
    }
}
