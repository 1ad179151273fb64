//! Rows → Conversions API events. Pure: no I/O, so most unit tests live here.

pub mod event;
#[cfg(test)]
mod event_props;
pub mod json;
pub mod normalize;
pub mod normalize_cli;
pub mod params;
pub mod reason;
pub mod rules;
pub mod value;

pub use event::{
    derive_event_id, ColumnInfo, DroppedValue, Identifiers, MappedEvent, ModelPlan, PlanProblem,
    RowOutcome,
};
pub use reason::RefusalReason;
pub use rules::Refusal;
pub use value::{Value, ValueKind};
