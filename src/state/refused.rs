//! Refused rows: the rows we did not send, with their reasons, and their removal once the row
//! is delivered.

use super::{encode_key, RefusedRow, Result, StateStore};
use futures::TryStreamExt;
use sqlx::{PgConnection, Row};
use std::collections::HashSet;
use std::sync::Mutex;

impl StateStore {
    /// Every refused row key of a model, oldest first.
    pub async fn refused_keys(&self, model: &str) -> Result<Vec<Vec<String>>> {
        Ok(sqlx::query_scalar(
            "SELECT row_key FROM refused_rows WHERE model = $1 ORDER BY refused_at, row_key",
        )
        .bind(model)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Which rows a run's deliveries may have to clear a refusal of. The model's refusals as
    /// the run starts go into the filter (with the rows the run itself refuses later, they
    /// are every refusal it can meet: runs of a model hold its lock), so a delivered row is
    /// looked up only when its key may be among them. Past `at_most` refusals (or for
    /// `retry`, whose every row is a refused one), every delivered row is.
    ///
    /// Looking up every delivered row of a model that held any refusal cost a primary-key
    /// probe per event, about 3 µs of the database's CPU: a run resumed after a crash, its
    /// backfill having refused a few rows, was 25-35% slower than the backfill itself.
    pub async fn may_be_refused(
        &self,
        model: &str,
        every_row: bool,
        at_most: usize,
    ) -> Result<MayBeRefused> {
        if every_row {
            return Ok(MayBeRefused::new(true));
        }
        let may_be = MayBeRefused::new(false);
        let mut keys = sqlx::query_scalar::<_, Vec<String>>(
            "SELECT row_key FROM refused_rows WHERE model = $1 LIMIT $2",
        )
        .bind(model)
        .bind(i64::try_from(at_most).unwrap_or(i64::MAX).saturating_add(1))
        .fetch(&self.pool);
        let mut seen = 0usize;
        let mut part: Vec<Vec<String>> = Vec::with_capacity(1024);
        while let Some(key) = keys.try_next().await? {
            seen += 1;
            if seen > at_most {
                return Ok(MayBeRefused::new(true));
            }
            part.push(key);
            if part.len() == part.capacity() {
                may_be.note(part.iter().map(Vec::as_slice));
                part.clear();
            }
        }
        may_be.note(part.iter().map(Vec::as_slice));
        Ok(may_be)
    }

    /// Which of these row keys are already recorded as refused.
    pub async fn refused_among(
        &self,
        model: &str,
        keys: &[Vec<String>],
    ) -> Result<HashSet<Vec<String>>> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let encoded: Vec<String> = keys.iter().map(|k| encode_key(k)).collect();
        let mut tx = self.pool.begin().await?;
        key_probes_only(&mut tx).await?;
        let rows: Vec<Vec<String>> = sqlx::query_scalar(&format!(
            "SELECT f.row_key FROM UNNEST($2::text[]) AS u(k) CROSS JOIN LATERAL ({}) AS f",
            probe_by_key(
                "row_key",
                "ARRAY(SELECT json_array_elements_text(u.k::json))"
            )
        ))
        .bind(model)
        .bind(&encoded)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().collect())
    }

    pub async fn refused_rows(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<(RefusedRow, chrono::DateTime<chrono::Utc>)>> {
        let rows = sqlx::query(
            "SELECT row_key, event_id, reason, detail, meta_code, meta_subcode, cursor_value, refused_at
             FROM refused_rows WHERE model = $1 ORDER BY refused_at DESC, row_key LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    RefusedRow {
                        row_key: r.get(0),
                        event_id: r.get(1),
                        reason: r.get(2),
                        detail: r.get(3),
                        meta_code: r.get(4),
                        meta_subcode: r.get(5),
                        cursor_value: r.get(6),
                    },
                    r.get(7),
                )
            })
            .collect())
    }
}

/// A row that was refused before and is now delivered is no longer refused: the refusals of
/// the delivered rows that `may_be` says may have one are deleted (no statement when none may).
pub(super) async fn clear_refusals<'a>(
    conn: &mut PgConnection,
    model: &str,
    may_be: &MayBeRefused,
    delivered: impl Iterator<Item = &'a [String]>,
) -> Result<()> {
    let kept = may_be.keep(delivered);
    if kept.is_empty() {
        return Ok(());
    }
    let (keys, key_expr) = key_param(kept.into_iter());
    // One primary-key probe per key; restored after, as other statements follow in the
    // cursor's transaction.
    let before = key_probes_only(&mut *conn).await?;
    // The rows are found key by key, then deleted by their tuple ids. Joined in the DELETE
    // itself, the planner could still read the model's refusals through the primary key's
    // first column and compare each with every key (a nested loop the other way round):
    // 1-3 s per ledger write in a run resumed after a crash, with 1 000-6 000 refusals.
    sqlx::query(&format!(
        "DELETE FROM refused_rows WHERE ctid = ANY (ARRAY(
             SELECT f.ctid FROM UNNEST($2::text[]) AS u(k) CROSS JOIN LATERAL ({}) AS f))",
        probe_by_key("ctid", key_expr)
    ))
    .bind(model)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    restore_plans(&mut *conn, &before).await?;
    Ok(())
}

/// The refusal of the model (`$1`) whose row key is `key_expr` (an expression of the unnested
/// key `k`), as a subquery to join LATERAL to the keys: its `LIMIT` keeps the planner from
/// flattening it into a join it could turn round, so each key is one primary-key probe (with
/// [`key_probes_only`]'s settings). The key is the primary key: at most one row matches.
fn probe_by_key(columns: &str, key_expr: &str) -> String {
    format!(
        "SELECT r.{columns} FROM refused_rows r \
         WHERE r.model = $1 AND r.row_key = {key_expr} LIMIT 1"
    )
}

/// The planner settings [`key_probes_only`] turns off.
const PLANS_OFF: [&str; 5] = [
    "enable_hashjoin",
    "enable_mergejoin",
    "enable_seqscan",
    "enable_bitmapscan",
    "enable_material",
];

/// Leaves the transaction's planner one way to join row keys with `refused_rows`: a
/// primary-key probe per key. refused_rows grows during a run faster than autovacuum analyzes
/// it, and on statistics that still said "nearly empty" the plan read every refusal of the
/// model (hashed, or materialized and compared with each key): seconds per statement once a
/// backfill had refused some 20 000 rows. Returns the settings as they were.
async fn key_probes_only(conn: &mut PgConnection) -> Result<Vec<String>> {
    let before: Vec<String> =
        sqlx::query_scalar("SELECT current_setting(name) FROM unnest($1::text[]) AS name")
            .bind(&PLANS_OFF[..])
            .fetch_all(&mut *conn)
            .await?;
    let off = vec!["off".to_string(); before.len()];
    restore_plans(conn, &off).await?;
    Ok(before)
}

/// Sets [`PLANS_OFF`]'s settings, in order, to `values` for the rest of the transaction.
async fn restore_plans(conn: &mut PgConnection, values: &[String]) -> Result<()> {
    sqlx::query(
        "SELECT set_config(name, value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)",
    )
    .bind(&PLANS_OFF[..])
    .bind(values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Row keys as one text[] parameter plus the SQL that turns an element `k` back into the
/// key array: single-column keys go as they are (the common, fast case), composite keys as
/// JSON arrays.
fn key_param<'a>(keys: impl Iterator<Item = &'a [String]> + Clone) -> (Vec<String>, &'static str) {
    if keys.clone().all(|k| k.len() == 1) {
        (keys.map(|k| k[0].clone()).collect(), "ARRAY[k]")
    } else {
        (
            keys.map(encode_key).collect(),
            "ARRAY(SELECT json_array_elements_text(k::json))",
        )
    }
}

/// The rows of a run that may have a refusal in `refused_rows`: the model's refusals as the
/// run started ([`StateStore::may_be_refused`]) and the rows this run refused, remembered in a
/// Bloom filter of their keys (no false negatives; a false positive only deletes nothing); or
/// every row (`retry`, or a model with more refusals than the filter is meant for).
///
/// Clearing refusals is a lookup per row key, and a run that refused any row used to clear
/// them for every row it delivered after: in a 5M-row backfill refusing 2% of its rows, those
/// deletes took more of the database's time than the ledger rows themselves.
pub struct MayBeRefused {
    every_row: bool,
    refused_keys: Mutex<Option<Vec<u64>>>,
}

/// 4 Mi bits (512 KiB, allocated at the run's first refusal): under 1% false positives up to
/// about 400 000 refused rows ([`REFUSALS_FILTERED_AT_MOST`]) with [`KEY_PROBES`] probes.
const KEY_FILTER_BITS: usize = 1 << 22;
const KEY_PROBES: u32 = 7;

/// The most refusals of a model read into a run's filter ([`StateStore::may_be_refused`]);
/// past them every delivered row is looked up (reading them would cost a run more than the
/// probes it saves, and the filter would mistake ever more keys for refused ones).
pub const REFUSALS_FILTERED_AT_MOST: usize = 400_000;

impl MayBeRefused {
    pub fn new(every_row: bool) -> MayBeRefused {
        MayBeRefused {
            every_row,
            refused_keys: Mutex::new(None),
        }
    }

    fn bits(key: &[String]) -> impl Iterator<Item = usize> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in key {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let h = h.digest128();
        let (a, b) = (h as u64, (h >> 64) as u64 | 1);
        (0..u64::from(KEY_PROBES))
            .map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % KEY_FILTER_BITS as u64) as usize)
    }

    /// Remembers the keys of rows this run refused.
    pub fn note<'a>(&self, keys: impl Iterator<Item = &'a [String]>) {
        if self.every_row {
            return;
        }
        let mut filter = self.refused_keys.lock().unwrap_or_else(|p| p.into_inner());
        let filter = filter.get_or_insert_with(|| vec![0u64; KEY_FILTER_BITS / 64]);
        for key in keys {
            for bit in Self::bits(key) {
                filter[bit / 64] |= 1 << (bit % 64);
            }
        }
    }

    /// The keys, among these, of rows that may have a refusal.
    pub fn keep<'a>(&self, keys: impl Iterator<Item = &'a [String]>) -> Vec<&'a [String]> {
        if self.every_row {
            return keys.collect();
        }
        let filter = self.refused_keys.lock().unwrap_or_else(|p| p.into_inner());
        let Some(filter) = filter.as_ref() else {
            return Vec::new();
        };
        keys.filter(|key| Self::bits(key).all(|bit| filter[bit / 64] & (1 << (bit % 64)) != 0))
            .collect()
    }
}

impl std::fmt::Debug for MayBeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MayBeRefused")
            .field("every_row", &self.every_row)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Delivered;

    fn row(key: &[&str]) -> Delivered {
        Delivered {
            row_key: key.iter().map(|s| s.to_string()).collect(),
            event_id: "e".into(),
            event_name: "Lead".into(),
            event_time: 0,
            fingerprint: "f".into(),
            fbtrace_id: None,
        }
    }

    /// Indexes of the rows whose keys `m` keeps.
    fn among(m: &MayBeRefused, rows: &[Delivered]) -> Vec<usize> {
        let kept = m.keep(rows.iter().map(|d| d.row_key.as_slice()));
        (0..rows.len())
            .filter(|&i| kept.contains(&rows[i].row_key.as_slice()))
            .collect()
    }

    #[test]
    fn every_row_may_be_refused_when_the_model_had_refusals() {
        let m = MayBeRefused::new(true);
        assert_eq!(among(&m, &[row(&["1"]), row(&["2"])]), vec![0, 1]);
    }

    #[test]
    fn without_earlier_refusals_only_the_rows_this_run_refused() {
        let m = MayBeRefused::new(false);
        let rows: Vec<Delivered> = (0..20_000).map(|i| row(&[&i.to_string()])).collect();
        assert!(among(&m, &rows).is_empty(), "nothing refused yet");
        let refused: Vec<Vec<String>> = (0..20_000)
            .step_by(50)
            .map(|i| vec![i.to_string()])
            .collect();
        m.note(refused.iter().map(|k| k.as_slice()));
        let found = among(&m, &rows);
        // Every refused row is among them (a Bloom filter has no false negatives) ...
        for i in (0..20_000).step_by(50) {
            assert!(found.contains(&i), "row {i} was refused");
        }
        // ... and few others.
        assert!(found.len() < 400 + 20, "{} rows", found.len());
    }

    #[test]
    fn composite_keys_are_told_apart_by_their_parts() {
        let m = MayBeRefused::new(false);
        m.note([["ab".to_string(), "c".to_string()].as_slice()].into_iter());
        assert_eq!(among(&m, &[row(&["ab", "c"])]), vec![0]);
        assert!(among(&m, &[row(&["a", "bc"]), row(&["abc"])]).is_empty());
    }
}
