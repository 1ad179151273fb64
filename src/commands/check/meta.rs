//! `check`'s questions about Meta: whether `meta.api_version` is live (from the table in
//! `crate::sink::versions`), and whether the token reaches each pixel.

use super::{Level, Report};
use crate::config::{Config, ModelConfig};
use crate::sink::versions::{assess, Severity};
use crate::sink::{ErrorClass, GraphClient, SinkError};

/// Whether `meta.api_version` is live on `today`: an error past its Graph API end of life (the
/// Conversions API follows that cycle), a warning within 90 days of it or of the Marketing
/// API's end, a note for a version newer than capi-sync knows.
pub(super) fn check_api_version(config: &Config, today: chrono::NaiveDate, report: &mut Report) {
    for f in assess(&config.meta.api_version, today) {
        let level = match f.severity {
            Severity::Ok => Level::Ok,
            Severity::Warning => Level::Warning,
            Severity::Error => Level::Error,
        };
        report.push("meta", Some("api_version"), level, f.message);
    }
}

/// Asks the Graph API for each pixel with the token, which proves both without an event.
pub(super) async fn check_graph(config: &Config, models: &[&ModelConfig], report: &mut Report) {
    if config.meta.access_token.is_empty() {
        report.push(
            "meta",
            Some("access_token"),
            Level::Error,
            "is empty: set CAPI_SYNC_META__ACCESS_TOKEN or meta.access_token_file (or run check with --offline)".into(),
        );
        return;
    }
    let graph = match GraphClient::new(&config.meta) {
        Ok(g) => g,
        Err(e) => {
            report.push(
                "meta",
                None,
                Level::Unreachable,
                format!("cannot build the HTTP client: {e}"),
            );
            return;
        }
    };
    let mut asked: Vec<(String, Result<(), String>, Level)> = Vec::new();
    for model in models {
        let subject = format!("pixel {}", model.pixel_id);
        let known = asked.iter().find(|(p, _, _)| *p == model.pixel_id).cloned();
        let (result, level) = match known {
            Some((_, r, l)) => (r, l),
            None => {
                let (r, l) = match graph.check_pixel(&model.pixel_id).await {
                    Ok(()) => (Ok(()), Level::Ok),
                    Err(e) => {
                        let (msg, level) = describe_graph_error(&graph, &model.pixel_id, &e);
                        (Err(msg), level)
                    }
                };
                asked.push((model.pixel_id.clone(), r.clone(), l));
                (r, l)
            }
        };
        match result {
            Ok(()) => report.push(
                &model.name,
                Some(&subject),
                Level::Ok,
                format!(
                    "{} answers with the token (nothing was sent)",
                    graph.pixel_url(&model.pixel_id)
                ),
            ),
            Err(msg) => report.push(&model.name, Some(&subject), level, msg),
        }
    }
}

fn describe_graph_error(graph: &GraphClient, pixel: &str, e: &SinkError) -> (String, Level) {
    match e.class() {
        ErrorClass::Auth => (
            format!(
                "Meta refused the token ({e}); check meta.access_token, and that the token's system user has access to this pixel or dataset"
            ),
            Level::Error,
        ),
        ErrorClass::RetiredVersion => (
            format!(
                "Meta refuses meta.api_version {} as deprecated or unsupported ({e}); set meta.api_version to a live version such as {}",
                graph.api_version(),
                crate::sink::versions::NEWEST
            ),
            Level::Error,
        ),
        ErrorClass::Invalid | ErrorClass::Unexpected => (
            format!("Meta refused the request ({e}); check the model's pixel_id and meta.api_version"),
            Level::Error,
        ),
        // Runs would stop at their first batch: the setting is wrong, not the network.
        ErrorClass::NotGraph => (
            format!(
                "meta.graph_url does not answer like the Graph API ({e}); check meta.graph_url and any proxy on the way to Meta"
            ),
            Level::Error,
        ),
        ErrorClass::Transient | ErrorClass::Throttled => (
            format!(
                "cannot reach the Graph API at {} ({e}); check meta.graph_url and the network, or run check with --offline",
                graph.pixel_url(pixel)
            ),
            Level::Unreachable,
        ),
    }
}
