//! `capi-sync quality [MODEL ...] [--json]`: reads each model's match quality from Meta's
//! Dataset Quality API now, records it (`quality_fetches`, `quality_snapshots`, the
//! `results_latest_quality` view) and prints it per model and event name. A refusal or an unreachable
//! Meta is a note, and the command still exits 0. Also `check --min-quality`, and the lines
//! `status` and `demo` show.

use super::{select_models, utc, Exit};
use crate::config::Config;
use crate::quality::ModelQuality;
use crate::sink::GraphClient;
use crate::state::{LatestQuality, QualityScore};
use anyhow::Context;

pub async fn run(config: &Config, names: &[String], as_json: bool) -> anyhow::Result<Exit> {
    let models = select_models(config, names)?;
    let state = crate::app::connect_state(config).await?;
    let graph = GraphClient::new(&config.meta).context("while building the HTTP client")?;
    let read = crate::quality::fetch(&graph, Some(&state), true, &models).await;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "models": read }))?
        );
    } else {
        for q in &read {
            print!("{}", format_read(q));
        }
    }
    Ok(Exit::Ok)
}

/// One model's read: a headline, then a line per event name, or the note.
pub fn format_read(q: &ModelQuality) -> String {
    let mut out = format!(
        "{} (dataset {}, {} events): read {}\n",
        q.model,
        q.pixel_id,
        q.source.as_str(),
        utc(q.fetched_at)
    );
    for s in &q.scores {
        out.push_str(&format!("  {}\n", format_score(s)));
    }
    if let Some(note) = &q.note {
        out.push_str(&format!("  {note}\n"));
    }
    out
}

fn pct(x: f64) -> String {
    let r = (x * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}%")
    } else {
        format!("{r:.1}%")
    }
}

/// `Lead: match quality 4.8/10; coverage email 100%, phone 50%; ...`.
pub fn format_score(s: &QualityScore) -> String {
    let mut parts = vec![match s.composite_score {
        Some(c) if s.source == "offline" => format!("offline score {c:.1}/10"),
        Some(c) => format!("match quality {c:.1}/10"),
        None => "no composite score".to_string(),
    }];
    if !s.match_keys.is_empty() {
        let keys: Vec<String> = s
            .match_keys
            .iter()
            .map(|(k, v)| format!("{k} {}", pct(*v)))
            .collect();
        parts.push(format!("coverage {}", keys.join(", ")));
    }
    if let Some(c) = s.event_coverage_pct {
        let goal = s
            .event_coverage_goal_pct
            .map(|g| format!(" (goal {})", pct(g)))
            .unwrap_or_default();
        parts.push(format!("event coverage {}{goal}", pct(c)));
    }
    if let Some(a) = s.acr_pct {
        parts.push(format!("additional conversions {}", pct(a)));
    }
    if let Some(f) = &s.upload_frequency {
        parts.push(format!("freshness {f}"));
    }
    for (name, v) in [
        ("match keys", s.match_key_score),
        ("frequency", s.frequency_score),
        ("freshness", s.freshness_score),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v:.1}/10"));
        }
    }
    format!("{}: {}", s.event_name, parts.join("; "))
}

/// `status`'s lines for a model's quality: the newest scores, and the last read's note.
pub fn format_status(q: &LatestQuality) -> String {
    let mut out = String::new();
    for s in &q.scores {
        let when = s.fetched_at.map(utc).unwrap_or_default();
        out.push_str(&format!("  quality:   {} (read {when})\n", format_score(s)));
    }
    match &q.last_fetch {
        Some(f) if f.status != "scored" => {
            let note = f.note.as_deref().unwrap_or("no score");
            out.push_str(&format!(
                "  quality:   last read {}: {note}\n",
                utc(f.fetched_at)
            ));
        }
        None => out.push_str("  quality:   never read (`capi-sync quality`, or the service every meta.quality_interval)\n"),
        _ => {}
    }
    out
}

/// `check --min-quality MIN`: every selected model's scores against `min` (out of 10), read
/// now unless `offline` or Meta cannot be reached, else the latest recorded. Prints a line per
/// model and event name; false when a score is below `min`. A model without a score is a note.
pub async fn check_min_quality(
    config: &Config,
    names: &[String],
    offline: bool,
    min: f64,
) -> anyhow::Result<bool> {
    let models = select_models(config, names)?;
    let state = super::read_only_state(config).await.ok().flatten();
    let fresh = if offline {
        Vec::new()
    } else {
        let graph = GraphClient::new(&config.meta).context("while building the HTTP client")?;
        crate::quality::fetch(&graph, state.as_ref(), false, &models).await
    };
    let mut ok = true;
    for model in &models {
        let now = fresh.iter().find(|q| q.model == model.name);
        let (scores, note, origin) = match now {
            Some(q) if q.status == "scored" => (q.scores.clone(), None, "read now"),
            _ => {
                let recorded = match &state {
                    Some(s) => s.latest_quality(&model.name).await.unwrap_or_default(),
                    None => LatestQuality::default(),
                };
                let note = now
                    .and_then(|q| q.note.clone())
                    .or_else(|| recorded.last_fetch.as_ref().and_then(|f| f.note.clone()));
                (recorded.scores, note, "last recorded")
            }
        };
        let scored: Vec<&QualityScore> = scores
            .iter()
            .filter(|s| s.composite_score.is_some())
            .collect();
        if scored.is_empty() {
            println!(
                "{}: quality: note — no match quality score, so --min-quality does not apply (not a failure){}",
                model.name,
                note.map(|n| format!(": {n}")).unwrap_or_default()
            );
            continue;
        }
        for s in scored {
            let score = s.composite_score.unwrap_or_default();
            if score < min {
                ok = false;
                println!(
                    "{}: quality: below — {} scores {score:.1}/10, below --min-quality {min} ({origin})",
                    model.name, s.event_name
                );
            } else {
                println!(
                    "{}: quality: ok — {} scores {score:.1}/10, at least {min} ({origin})",
                    model.name, s.event_name
                );
            }
        }
    }
    Ok(ok)
}
