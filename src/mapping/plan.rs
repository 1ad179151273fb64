//! The model plan: which column or constant feeds which parameter, decided once per run from
//! the model's config and the columns its query returns, with every problem found at once.

use super::encode::{custom_value, hash_values};
use super::value::{Value, ValueKind};
use crate::config::{ExternalIdMode, ModelConfig};
use crate::normalize::{Hashed, NormalizeContext, PiiField};
use crate::params::{Target, TopField, UserDataKey};
use std::collections::HashMap;

/// A model output column as described by the warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ValueKind,
}

/// A problem with a model's columns, found before any row is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "column `{c}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) target: Target,
    pub(super) column: Option<usize>,
    pub(super) constant: Option<Value>,
    /// Pre-computed hashes of a hashed-field constant.
    pub(super) constant_hashes: Option<Vec<Hashed>>,
    /// Pre-computed JSON of a custom_data constant (checked once, not per row).
    pub(super) constant_custom: Option<String>,
}

/// How one model's rows become events; built once per run from the model's config and the
/// columns its query returns.
#[derive(Debug, Clone)]
pub struct ModelPlan {
    pub(super) model: String,
    pub(super) slots: Vec<Slot>,
    pub(super) country_column: Option<usize>,
    pub(super) country_constant: Option<String>,
    pub(super) default_country: Option<&'static str>,
    pub(super) external_id_raw: bool,
}

impl ModelPlan {
    /// Builds the plan, or every problem with the model's columns at once.
    pub fn new(model: &ModelConfig, columns: &[ColumnInfo]) -> Result<ModelPlan, Vec<PlanProblem>> {
        let mut problems = Vec::new();
        let index: HashMap<&str, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut slots: Vec<Slot> = Vec::new();
        let mut explicitly_mapped: Vec<bool> = vec![false; columns.len()];

        for (target, column) in &model.columns {
            match index.get(column.as_str()) {
                Some(&i) => {
                    explicitly_mapped[i] = true;
                    add_column_slot(&mut slots, target.clone(), i, columns, &mut problems);
                }
                None => problems.push(PlanProblem {
                    column: Some(column.clone()),
                    message: format!(
                        "mapped to `{}` in [models.columns] but the query returns no such column",
                        target.path()
                    ),
                }),
            }
        }
        for (i, col) in columns.iter().enumerate() {
            if explicitly_mapped[i] || model.ignore_columns.iter().any(|c| c == &col.name) {
                continue;
            }
            match crate::params::resolve(&col.name) {
                Ok(target) => add_column_slot(&mut slots, target, i, columns, &mut problems),
                Err(e) => {
                    let is_key = model.primary_key.contains(&col.name) || model.cursor == col.name;
                    if !is_key {
                        problems.push(PlanProblem {
                            column: Some(col.name.clone()),
                            message: format!("{e}; or list it in ignore_columns"),
                        });
                    }
                }
            }
        }
        for key in model
            .primary_key
            .iter()
            .chain(std::iter::once(&model.cursor))
        {
            if !index.contains_key(key.as_str()) {
                problems.push(PlanProblem {
                    column: Some(key.clone()),
                    message: if *key == model.cursor {
                        "is the model's cursor but the query returns no such column".into()
                    } else {
                        "is in the model's primary_key but the query returns no such column".into()
                    },
                });
            }
        }
        if let Some(&ci) = index.get(model.cursor.as_str()) {
            let kind = columns[ci].kind;
            if matches!(
                kind,
                ValueKind::Json | ValueKind::TextArray | ValueKind::Bool
            ) {
                problems.push(PlanProblem {
                    column: Some(model.cursor.clone()),
                    message: format!(
                        "is the cursor but its type is {}; use a timestamp, date or integer column",
                        kind.describe()
                    ),
                });
            }
        }

        let ctx = NormalizeContext {
            default_country: model.default_country,
            row_country: None,
            external_id_raw: model.external_id == ExternalIdMode::Raw,
        };
        for (target, json) in &model.constants {
            let value = Value::from_json(json);
            let constant_hashes = match target {
                Target::UserData(UserDataKey::Hashed(f)) => {
                    let mut hashes = Vec::new();
                    let mut dropped = Vec::new();
                    hash_values(*f, &value, &ctx, &mut hashes, &mut dropped);
                    if let Some(d) = dropped.first() {
                        problems.push(PlanProblem {
                            column: None,
                            message: format!(
                                "constant `{}` cannot be used: {}",
                                target.path(),
                                d.reason
                            ),
                        });
                    }
                    Some(hashes)
                }
                _ => None,
            };
            let constant_custom = match target {
                Target::CustomData(k) => match custom_value(k, &value) {
                    Ok(raw) => Some(raw),
                    Err(r) => {
                        problems.push(PlanProblem {
                            column: None,
                            message: format!(
                                "constant `{}` cannot be used: {}",
                                target.path(),
                                r.detail
                            ),
                        });
                        None
                    }
                },
                _ => None,
            };
            match slots.iter_mut().find(|s| s.target == *target) {
                Some(slot) => {
                    slot.constant = Some(value);
                    slot.constant_hashes = constant_hashes;
                    slot.constant_custom = constant_custom;
                }
                None => slots.push(Slot {
                    target: target.clone(),
                    column: None,
                    constant: Some(value),
                    constant_hashes,
                    constant_custom,
                }),
            }
        }

        for required in [
            TopField::EventName,
            TopField::EventTime,
            TopField::ActionSource,
        ] {
            if !slots.iter().any(|s| s.target == Target::Top(required)) {
                problems.push(PlanProblem {
                    column: None,
                    message: format!(
                        "no column or constant gives `{}` (every event needs event_name, event_time and action_source)",
                        required.key()
                    ),
                });
            }
        }

        let country_target = Target::UserData(UserDataKey::Hashed(PiiField::Country));
        let country_slot = slots.iter().find(|s| s.target == country_target);
        let country_column = country_slot.and_then(|s| s.column);
        let country_constant = country_slot
            .and_then(|s| s.constant.as_ref())
            .and_then(|v| v.as_text().map(|t| t.into_owned()));

        if problems.is_empty() {
            Ok(ModelPlan {
                model: model.name.clone(),
                slots,
                country_column,
                country_constant,
                default_country: model.default_country,
                external_id_raw: model.external_id == ExternalIdMode::Raw,
            })
        } else {
            Err(problems)
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// True when a column or constant gives `event_id` (the model owns its identity).
    pub fn maps_event_id(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.target == Target::Top(TopField::EventId))
    }
}

/// True when a parameter takes the column's values: it is mapped in `[models.columns]`, or
/// named after a parameter and not in `ignore_columns` (the rule [`ModelPlan::new`] applies).
/// Other columns are never fetched: the reader selects only these.
pub fn column_is_mapped(model: &ModelConfig, name: &str) -> bool {
    model.columns.iter().any(|(_, c)| c == name)
        || (!model.ignore_columns.iter().any(|c| c == name) && crate::params::resolve(name).is_ok())
}

fn add_column_slot(
    slots: &mut Vec<Slot>,
    target: Target,
    index: usize,
    columns: &[ColumnInfo],
    problems: &mut Vec<PlanProblem>,
) {
    if let Some(existing) = slots.iter().find(|s| s.target == target) {
        let other = existing
            .column
            .map(|i| columns[i].name.clone())
            .unwrap_or_default();
        problems.push(PlanProblem {
            column: Some(columns[index].name.clone()),
            message: format!(
                "maps to `{}`, which column `{other}` already gives",
                target.path()
            ),
        });
        return;
    }
    if let Some(msg) = type_problem(&target, columns[index].kind) {
        problems.push(PlanProblem {
            column: Some(columns[index].name.clone()),
            message: msg,
        });
        return;
    }
    slots.push(Slot {
        target,
        column: Some(index),
        constant: None,
        constant_hashes: None,
        constant_custom: None,
    });
}

/// Column types that can never give a valid value for a parameter.
fn type_problem(target: &Target, kind: ValueKind) -> Option<String> {
    use ValueKind::*;
    let ok = match target {
        Target::Top(TopField::EventTime) => {
            matches!(kind, Int | Numeric | Date | Timestamp | TimestampTz | Text)
        }
        Target::Top(TopField::OptOut) => matches!(kind, Bool | Text | Int),
        Target::Top(TopField::DataProcessingOptions) => matches!(kind, TextArray | Json | Text),
        Target::Top(_) => !matches!(kind, Json | TextArray),
        Target::UserData(UserDataKey::Hashed(PiiField::Db)) => matches!(
            kind,
            Date | Timestamp | TimestampTz | Text | Int | TextArray
        ),
        Target::UserData(UserDataKey::Hashed(_)) => {
            matches!(kind, Text | Int | Numeric | TextArray | Date)
        }
        Target::UserData(UserDataKey::Integer(_)) => matches!(kind, Int | Numeric | Text),
        Target::UserData(UserDataKey::Plain(_)) => !matches!(kind, Json | TextArray),
        Target::CustomData(k)
            if matches!(k.as_str(), "value" | "predicted_ltv" | "net_revenue") =>
        {
            matches!(kind, Int | Float | Numeric | Text)
        }
        _ => true,
    };
    (!ok).then(|| {
        format!(
            "its type {} cannot give `{}`",
            kind.describe(),
            target.path()
        )
    })
}
