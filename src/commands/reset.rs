//! `capi-sync reset MODEL [--to VALUE] [--yes]` moves a model's cursor; `sync --from VALUE`
//! starts one run at a cursor value. Both say up front how many of the rows to be read are
//! too old for Meta, instead of letting the run discover them one by one.

use super::UsageError;
use crate::config::{Config, ModelConfig};
use crate::pipeline::SyncContext;
use crate::source::{SourceError, Warehouse};
use crate::state::CursorPosition;
use anyhow::Context;
use std::io::{BufRead, IsTerminal, Write};

/// Where a cursor value puts the reader: just before the first row whose cursor is `value`.
async fn start_at(
    warehouse: &Warehouse,
    model: &ModelConfig,
    value: &str,
) -> anyhow::Result<(Option<CursorPosition>, String)> {
    let (query, columns) = warehouse
        .describe(model)
        .await
        .with_context(|| format!("check the model's SQL ({})", model.sql_origin))?;
    let position = match warehouse.position_before(model, &query, value).await {
        Ok(p) => p,
        Err(SourceError::Model { message, .. }) => return Err(UsageError(message).into()),
        Err(e) => return Err(e.into()),
    };
    let report = super::window_report(warehouse, model, &query, &columns, position.as_ref()).await;
    Ok((position, report))
}

/// For `sync --from VALUE`: checks that VALUE fits the cursor's type and prints what the
/// backfill reads, before anything is read. Returns the position just before VALUE (None:
/// from the first row); the run itself reads `cursor >= VALUE`, the same rows.
pub async fn backfill_start(
    ctx: &SyncContext,
    model: &ModelConfig,
    value: &str,
) -> anyhow::Result<Option<CursorPosition>> {
    let (position, report) = start_at(&ctx.warehouse, model, value).await?;
    println!(
        "{}: backfilling from {} = {value}: {report}",
        model.name, model.cursor
    );
    Ok(position)
}

pub async fn run(
    config: &Config,
    model: &str,
    to: Option<&str>,
    yes: bool,
) -> anyhow::Result<super::Exit> {
    let model = super::model_named(config, model)?;
    let warehouse = crate::app::connect_warehouse(config).await?;
    let state = crate::app::connect_state(config).await?;
    let current = state.cursor_record(&model.name).await?;

    let (target, report) = match to {
        Some(v) => start_at(&warehouse, model, v).await?,
        None => {
            let (query, columns) = warehouse
                .describe(model)
                .await
                .with_context(|| format!("check the model's SQL ({})", model.sql_origin))?;
            let report = super::window_report(&warehouse, model, &query, &columns, None).await;
            (None, report)
        }
    };
    let from = match &current {
        Some(c) => super::position_text(&c.position),
        None => "none (never moved)".into(),
    };
    let destination = match to {
        Some(v) => format!(
            "just before {} = {v}: the next run reads the rows whose {} is {v} or later",
            model.cursor, model.cursor
        ),
        None => "the start: the next run reads every row".into(),
    };
    println!("{}: the cursor moves", model.name);
    println!("  from: {from}");
    println!("  to:   {destination}");
    println!("  {report}");
    println!(
        "  events delivered in the last {} are in the delivery ledger and are not sent again",
        humantime_days(config.state.ledger_retention)
    );

    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(UsageError(format!(
                "reset moves where the next run of `{}` starts reading; confirm with --yes (standard input is not a terminal, so there is no one to ask)",
                model.name
            ))
            .into());
        }
        let mut out = std::io::stdout();
        if !confirm(&mut stdin.lock(), &mut out)? {
            println!("nothing changed");
            return Ok(super::Exit::Ok);
        }
    }

    // The lock keeps a run of this model from settling over the new cursor.
    let Some(lock) = state.try_lock_model(&model.name).await? else {
        anyhow::bail!(
            "model `{}` is being synced by another process right now (it holds the model's lock); nothing changed — try again when that run finishes",
            model.name
        );
    };
    let result = state.set_cursor(&model.name, target.as_ref()).await;
    lock.release().await;
    result.with_context(|| format!("while moving the cursor of `{}`", model.name))?;
    println!(
        "{}: cursor moved; the next run (scheduled, or `capi-sync sync {}`) starts there",
        model.name, model.name
    );
    Ok(super::Exit::Ok)
}

/// Asks "Move it? [y/N]" and reads one answer: only y or yes agrees.
pub fn confirm(input: &mut impl BufRead, output: &mut impl Write) -> std::io::Result<bool> {
    write!(output, "Move it? [y/N] ")?;
    output.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn humantime_days(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(86_400) {
        format!("{} days", secs / 86_400)
    } else {
        super::human_duration(secs as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_confirms() {
        for (answer, expected) in [
            ("y\n", true),
            ("YES\n", true),
            ("\n", false),
            ("n\n", false),
            ("", false),
        ] {
            let mut out = Vec::new();
            let got = confirm(&mut answer.as_bytes(), &mut out).unwrap();
            assert_eq!(got, expected, "{answer:?}");
            assert_eq!(String::from_utf8(out).unwrap(), "Move it? [y/N] ");
        }
    }
}
