//! Match quality as Meta reported it: each read (`quality_fetches`), the scores per event name
//! (`quality_snapshots`) and the newest per model and event name (the `results_latest_quality` view).
//! Scores, percentages and identifier names only.

use super::{Result, StateStore};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::collections::BTreeMap;

/// One event name's quality at one read.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QualityScore {
    pub event_name: String,
    /// `web` or `offline`.
    pub source: String,
    pub fetched_at: Option<DateTime<Utc>>,
    /// Out of 10.
    pub composite_score: Option<f64>,
    /// Identifier → coverage in percent.
    pub match_keys: BTreeMap<String, f64>,
    pub event_coverage_pct: Option<f64>,
    pub event_coverage_goal_pct: Option<f64>,
    pub acr_pct: Option<f64>,
    pub upload_frequency: Option<String>,
    pub match_key_score: Option<f64>,
    pub frequency_score: Option<f64>,
    pub freshness_score: Option<f64>,
}

/// How one read of a model's quality ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QualityFetch {
    pub fetched_at: DateTime<Utc>,
    pub pixel_id: String,
    pub source: String,
    /// `scored`, `no_score` or `unavailable`.
    pub status: String,
    pub note: Option<String>,
    pub meta_code: Option<i64>,
}

/// A model's last read and its newest scores (from earlier reads when the last had none).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LatestQuality {
    pub last_fetch: Option<QualityFetch>,
    pub scores: Vec<QualityScore>,
}

impl StateStore {
    /// Records one read of `model`'s quality and its scores, in one transaction.
    pub async fn record_quality(
        &self,
        model: &str,
        fetch: &QualityFetch,
        scores: &[QualityScore],
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO quality_fetches (fetched_at, model, pixel_id, source, status, note, meta_code)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(fetch.fetched_at)
        .bind(model)
        .bind(&fetch.pixel_id)
        .bind(&fetch.source)
        .bind(&fetch.status)
        .bind(&fetch.note)
        .bind(fetch.meta_code)
        .fetch_one(&mut *tx)
        .await?;
        for s in scores {
            sqlx::query(
                "INSERT INTO quality_snapshots (fetch_id, fetched_at, model, pixel_id, source, event_name,
                    composite_score, match_keys, event_coverage_pct, event_coverage_goal_pct, acr_pct,
                    upload_frequency, match_key_score, frequency_score, freshness_score)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(id)
            .bind(fetch.fetched_at)
            .bind(model)
            .bind(&fetch.pixel_id)
            .bind(&s.source)
            .bind(&s.event_name)
            .bind(s.composite_score)
            .bind(sqlx::types::Json(&s.match_keys))
            .bind(s.event_coverage_pct)
            .bind(s.event_coverage_goal_pct)
            .bind(s.acr_pct)
            .bind(&s.upload_frequency)
            .bind(s.match_key_score)
            .bind(s.frequency_score)
            .bind(s.freshness_score)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `model`'s last read and its rows of `results_latest_quality`, by event name.
    pub async fn latest_quality(&self, model: &str) -> Result<LatestQuality> {
        let last_fetch = sqlx::query(
            "SELECT fetched_at, pixel_id, source, status, note, meta_code FROM quality_fetches
             WHERE model = $1 ORDER BY fetched_at DESC, id DESC LIMIT 1",
        )
        .bind(model)
        .fetch_optional(self.pool())
        .await?
        .map(|r| QualityFetch {
            fetched_at: r.get(0),
            pixel_id: r.get(1),
            source: r.get(2),
            status: r.get(3),
            note: r.get(4),
            meta_code: r.get(5),
        });
        let rows = sqlx::query(
            "SELECT event_name, source, fetched_at, composite_score, match_keys, event_coverage_pct,
                    event_coverage_goal_pct, acr_pct, upload_frequency, match_key_score,
                    frequency_score, freshness_score
             FROM results_latest_quality WHERE model = $1 ORDER BY event_name",
        )
        .bind(model)
        .fetch_all(self.pool())
        .await?;
        let scores = rows
            .into_iter()
            .map(|r| QualityScore {
                event_name: r.get(0),
                source: r.get(1),
                fetched_at: r.get(2),
                composite_score: r.get(3),
                match_keys: r.get::<sqlx::types::Json<BTreeMap<String, f64>>, _>(4).0,
                event_coverage_pct: r.get(5),
                event_coverage_goal_pct: r.get(6),
                acr_pct: r.get(7),
                upload_frequency: r.get(8),
                match_key_score: r.get(9),
                frequency_score: r.get(10),
                freshness_score: r.get(11),
            })
            .collect();
        Ok(LatestQuality { last_fetch, scores })
    }

    /// Removes the reads older than `older_than`, with their snapshots. Returns the reads
    /// removed.
    pub async fn prune_quality(&self, older_than: std::time::Duration) -> Result<u64> {
        let secs = older_than.as_secs_f64();
        Ok(sqlx::query(
            "DELETE FROM quality_fetches WHERE fetched_at < now() - make_interval(secs => $1)",
        )
        .bind(secs)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    /// The event names of `model`'s events in the delivery ledger (within its retention).
    pub async fn delivered_event_names(&self, model: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT event_name FROM deliveries WHERE model = $1 ORDER BY event_name",
        )
        .bind(model)
        .fetch_all(self.pool())
        .await?)
    }
}
