//! Settling: one transaction records a settled stretch of rows (ledger rows not yet written,
//! refusals, changed fingerprints), moves the cursor and writes the run's counters.

use super::ledger::{by_event_id, probe_order, record_deliveries};
use super::refused::clear_refusals;
use super::runs::write_counters;
use super::{encode_key, LockProof, Result, RunCounters, Settlement, StateStore};

impl StateStore {
    /// Records a settled stretch and moves the cursor, atomically, with the run's counters.
    /// Its delivered events replace ledger rows of the same ids: they may repeat an early write
    /// that failed only on our side of the connection.
    pub async fn settle(
        &self,
        model: &str,
        run_id: i64,
        settlement: &Settlement,
        counters: &RunCounters,
    ) -> Result<()> {
        self.settle_checked(model, run_id, settlement, counters, None)
            .await
    }

    /// [`StateStore::settle`] for a run holding the model's lock: the transaction first proves
    /// that the lock's session still holds it, and writes nothing when it does not
    /// ([`StateError::LockLost`]). Another process that took the model over then owns its
    /// cursor; a write of ours after its reads could move the cursor back.
    pub async fn settle_holding(
        &self,
        model: &str,
        run_id: i64,
        settlement: &Settlement,
        counters: &RunCounters,
        lock: LockProof,
    ) -> Result<()> {
        self.settle_checked(model, run_id, settlement, counters, Some(lock))
            .await
    }

    async fn settle_checked(
        &self,
        model: &str,
        run_id: i64,
        settlement: &Settlement,
        counters: &RunCounters,
        lock: Option<LockProof>,
    ) -> Result<()> {
        let generation = if settlement.delivered.is_empty() {
            0
        } else {
            self.write_generation().await?
        };
        let mut tx = self.pool.begin().await?;
        if let Some(lock) = lock {
            self.prove_lock(&mut tx, model, lock).await?;
        }
        if !settlement.delivered.is_empty() {
            record_deliveries(
                &mut tx,
                model,
                run_id,
                generation,
                &[&settlement.delivered],
                true,
            )
            .await?;
        }
        if let Some(may_be) = &settlement.clear_refused {
            let delivered = settlement.delivered_keys().map(|k| k.as_slice());
            clear_refusals(&mut tx, model, may_be, delivered).await?;
        }
        if !settlement.refused.is_empty() {
            let r = &settlement.refused;
            let keys: Vec<String> = r.iter().map(|x| encode_key(&x.row_key)).collect();
            let ids: Vec<Option<&str>> = r.iter().map(|x| x.event_id.as_deref()).collect();
            let reasons: Vec<&str> = r.iter().map(|x| x.reason.as_str()).collect();
            let details: Vec<&str> = r.iter().map(|x| x.detail.as_str()).collect();
            let codes: Vec<Option<i32>> = r.iter().map(|x| x.meta_code).collect();
            let subcodes: Vec<Option<i32>> = r.iter().map(|x| x.meta_subcode).collect();
            let cursors: Vec<Option<&str>> = r.iter().map(|x| x.cursor_value.as_deref()).collect();
            sqlx::query(
                "INSERT INTO refused_rows (model, row_key, event_id, reason, detail, meta_code, meta_subcode, cursor_value, run_id)
                 SELECT DISTINCT ON (k) $1, ARRAY(SELECT json_array_elements_text(k::json)), id, re, de, co, sc, cv, $9
                 FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[], $8::text[]) AS u(k, id, re, de, co, sc, cv)
                 ON CONFLICT (model, row_key) DO UPDATE
                   SET event_id = EXCLUDED.event_id, reason = EXCLUDED.reason, detail = EXCLUDED.detail,
                       meta_code = EXCLUDED.meta_code, meta_subcode = EXCLUDED.meta_subcode,
                       cursor_value = EXCLUDED.cursor_value, run_id = EXCLUDED.run_id, refused_at = now()",
            )
            .bind(model)
            .bind(&keys)
            .bind(&ids)
            .bind(&reasons)
            .bind(&details)
            .bind(&codes)
            .bind(&subcodes)
            .bind(&cursors)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        if !settlement.changed.is_empty() {
            by_event_id(&mut tx).await?;
            let ids = probe_order(settlement.changed.iter().map(String::as_str));
            sqlx::query(
                "UPDATE deliveries d SET changed_at = now() FROM unnest($2::text[]) AS i(id)
                 WHERE d.event_id = i.id AND d.model = $1 AND d.changed_at IS NULL",
            )
            .bind(model)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(p) = &settlement.position {
            sqlx::query(
                "INSERT INTO cursors (model, cursor_value, row_key, updated_at, run_id) VALUES ($1, $2, $3, now(), $4)
                 ON CONFLICT (model) DO UPDATE SET cursor_value = $2, row_key = $3, updated_at = now(), run_id = $4",
            )
            .bind(model)
            .bind(&p.cursor_value)
            .bind(&p.row_key)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        write_counters(&mut tx, run_id, counters, None, None).await?;
        tx.commit().await?;
        Ok(())
    }
}
