//! Rows → Conversions API events. Pure: no I/O, so most unit tests live here.

pub mod event;
#[cfg(test)]
mod event_props;
pub mod identifiers;
pub mod json;
pub mod reason;
pub mod rules;
pub mod value;

pub use event::{
    derive_event_id, ColumnInfo, DroppedValue, MappedEvent, ModelPlan, PlanProblem, RowOutcome,
};
pub use identifiers::Identifiers;
pub use reason::RefusalReason;
pub use rules::Refusal;
pub use value::{Value, ValueKind};
