//! Rows → Conversions API events. Pure: no I/O, so most unit tests live here.

mod encode;
pub mod event;
#[cfg(test)]
mod event_props;
pub mod identifiers;
pub mod json;
pub mod plan;
pub mod reason;
pub mod rules;
pub mod value;

pub use encode::DroppedValue;
pub use event::{derive_event_id, MappedEvent, RowOutcome};
pub use identifiers::Identifiers;
pub use plan::{ColumnInfo, ModelPlan, PlanProblem};
pub use reason::RefusalReason;
pub use rules::Refusal;
pub use value::{Value, ValueKind};
