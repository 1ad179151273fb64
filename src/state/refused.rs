//! Refused rows: the rows we did not send, with their reasons, and their removal once the row
//! is delivered.

use super::{encode_key, RefusedRow, Result, StateStore};
use sqlx::{PgConnection, Row};
use std::collections::HashSet;

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

    pub async fn has_refused(&self, model: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refused_rows WHERE model = $1)")
                .bind(model)
                .fetch_one(&self.pool)
                .await?,
        )
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
        let rows: Vec<Vec<String>> = sqlx::query_scalar(
            "SELECT r.row_key FROM UNNEST($2::text[]) AS u(k)
             JOIN refused_rows r ON r.model = $1 AND r.row_key = ARRAY(SELECT json_array_elements_text(u.k::json))",
        )
        .bind(model)
        .bind(&encoded)
        .fetch_all(&self.pool)
        .await?;
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

/// A row that was refused before and is now delivered is no longer refused.
pub(super) async fn clear_refusals<'a>(
    conn: &mut PgConnection,
    model: &str,
    keys: impl Iterator<Item = &'a [String]> + Clone,
) -> Result<()> {
    let (keys, key_expr) = key_param(keys);
    // One primary-key probe per key. refused_rows grows during a run faster than autovacuum
    // analyzes it, and on statistics that still said "nearly empty" the plan hashed the keys
    // and read every refusal of the model for each write. Restored after: in the cursor's
    // transaction other statements follow.
    let before: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin'), \
                current_setting('enable_seqscan'), \
                set_config('enable_hashjoin', 'off', true), \
                set_config('enable_mergejoin', 'off', true), \
                set_config('enable_seqscan', 'off', true)",
    )
    .fetch_one(&mut *conn)
    .await
    .map(|(h, m, s, _, _, _): (String, String, String, String, String, String)| (h, m, s))?;
    sqlx::query(&format!(
        "DELETE FROM refused_rows r USING UNNEST($2::text[]) AS u(k)
         WHERE r.model = $1 AND r.row_key = {key_expr}"
    ))
    .bind(model)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "SELECT set_config('enable_hashjoin', $1, true), \
                set_config('enable_mergejoin', $2, true), \
                set_config('enable_seqscan', $3, true)",
    )
    .bind(&before.0)
    .bind(&before.1)
    .bind(&before.2)
    .execute(&mut *conn)
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
