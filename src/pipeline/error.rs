//! Why a run failed, by kind. The text of each variant is the line shown to the user and
//! stored in `runs.error`, so it says what to do next; the kind is what code decides on (the
//! exit code, metrics, tests).

use crate::map_pool::MapPoolError;
use crate::sink::ErrorClass;
use crate::source::SourceError;
use crate::state::StateError;
use std::sync::Arc;

/// A run's failure. Cheap to clone: the settler's failure is read by the batching loop too.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    /// The model's lock could not be taken (the state database did not answer).
    #[error("cannot take the model's lock in the state database ({0}); check that it is reachable (state.url, or warehouse.url when they are the same)")]
    Lock(Arc<StateError>),
    /// The run's row in `runs` could not be written.
    #[error("cannot record the run in schema `{schema}` ({source}); run `capi-sync migrate` and check that the database role may write there")]
    RecordStart {
        schema: String,
        source: Arc<StateError>,
    },
    /// The model's query could not be described.
    #[error("{source}; check the model's SQL ({sql_origin}); `capi-sync check {model}` lists every problem")]
    Describe {
        source: Arc<SourceError>,
        sql_origin: String,
        model: String,
    },
    /// The model's columns do not map to events.
    #[error("the model's columns do not map to events: {}; `capi-sync check {model}` lists every problem", problems.join("; "))]
    ModelColumns {
        problems: Vec<String>,
        model: String,
    },
    /// The model's settings do not fit its query.
    #[error("model `{model}` sets lookback, but its cursor `{cursor}` is not a timestamp or date column; remove lookback or use a time cursor")]
    LookbackNeedsTimeCursor { model: String, cursor: String },
    /// The stored cursor does not fit the model's query.
    #[error("{0}")]
    Cursor(Arc<SourceError>),
    /// Reading the model's rows failed.
    #[error("{source}; check the model's SQL ({sql_origin})")]
    WarehouseRead {
        source: Arc<SourceError>,
        sql_origin: String,
    },
    /// The reader task ended without an answer.
    #[error("the warehouse reader stopped: {0}")]
    ReaderStopped(String),
    /// Reading our own state failed; `what` names what was read, when the text does.
    #[error("{}", state_read_text(what, source))]
    StateRead {
        what: Option<&'static str>,
        source: Arc<StateError>,
    },
    /// The settler could not record acknowledged events and the cursor.
    #[error("could not record acknowledged events and the cursor: {0}; the next run resumes at the last recorded batch")]
    Settle(Arc<StateError>),
    /// The settler's task is gone.
    #[error("the state writer stopped")]
    StateWriterStopped,
    /// The settler's task ended without an answer.
    #[error("the state writer stopped unexpectedly: {0}")]
    StateWriterPanicked(String),
    /// A batch's task ended without an answer.
    #[error("a batch task stopped unexpectedly: {0}")]
    BatchTaskStopped(String),
    /// The mapping threads failed.
    #[error("{0}")]
    Mapping(#[from] MapPoolError),
    /// The run's ledger writer is gone.
    #[error("the ledger writer stopped")]
    LedgerWriterStopped,
    /// A ledger write panicked.
    #[error("the ledger write panicked")]
    LedgerWritePanicked,
    /// A ledger write failed.
    #[error("{0}")]
    LedgerWrite(Arc<StateError>),
    /// The run passed `service.run_deadline` (the text says where).
    #[error("{0}")]
    Deadline(String),
    /// Meta or the way to it did not accept a batch (the text comes from
    /// `send::describe_failure`).
    #[error("{message}")]
    Sink { class: ErrorClass, message: String },
}

fn state_read_text(what: &Option<&'static str>, source: &StateError) -> String {
    match what {
        Some(what) => format!("cannot read {what} ({source})"),
        None => source.to_string(),
    }
}

/// What kind of failure stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunErrorKind {
    /// The model's SQL or settings: fixed by editing the model.
    Model,
    /// Reading the warehouse.
    WarehouseRead,
    /// Reading our own state.
    StateRead,
    /// Writing our own state.
    StateWrite,
    /// The model's lock was lost: another process may be syncing it.
    LockLost,
    /// The run passed its deadline.
    Deadline,
    /// Meta or the way to it, by the class of the last answer.
    Sink(ErrorClass),
    /// A task that panicked or vanished: a bug.
    Internal,
}

impl RunErrorKind {
    /// A stable snake_case name (logs, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            RunErrorKind::Model => "model",
            RunErrorKind::WarehouseRead => "warehouse_read",
            RunErrorKind::StateRead => "state_read",
            RunErrorKind::StateWrite => "state_write",
            RunErrorKind::LockLost => "lock_lost",
            RunErrorKind::Deadline => "deadline",
            RunErrorKind::Sink(_) => "sink",
            RunErrorKind::Internal => "internal",
        }
    }

    /// The process's exit code for a run that failed so: every failed run exits with 1 ("a
    /// model failed to sync"), whatever its kind; bad config and usage (2) are found before
    /// any run starts.
    pub fn exit_code(self) -> crate::exit::Exit {
        crate::exit::Exit::SyncFailed
    }
}

impl RunError {
    pub fn kind(&self) -> RunErrorKind {
        match self {
            RunError::Describe { .. }
            | RunError::ModelColumns { .. }
            | RunError::LookbackNeedsTimeCursor { .. }
            | RunError::Cursor(_) => RunErrorKind::Model,
            RunError::WarehouseRead { .. } => RunErrorKind::WarehouseRead,
            RunError::StateRead { .. } => RunErrorKind::StateRead,
            RunError::Settle(e) if matches!(**e, StateError::LockLost { .. }) => {
                RunErrorKind::LockLost
            }
            RunError::Lock(_)
            | RunError::RecordStart { .. }
            | RunError::Settle(_)
            | RunError::StateWriterStopped
            | RunError::LedgerWriterStopped
            | RunError::LedgerWrite(_) => RunErrorKind::StateWrite,
            RunError::Deadline(_) => RunErrorKind::Deadline,
            RunError::Sink { class, .. } => RunErrorKind::Sink(*class),
            RunError::ReaderStopped(_)
            | RunError::StateWriterPanicked(_)
            | RunError::BatchTaskStopped(_)
            | RunError::LedgerWritePanicked
            | RunError::Mapping(_) => RunErrorKind::Internal,
        }
    }

    /// See [`RunErrorKind::exit_code`].
    pub fn exit_code(&self) -> crate::exit::Exit {
        self.kind().exit_code()
    }

    /// A state read that failed, named as the message names it.
    pub(super) fn state_read(what: &'static str) -> impl FnOnce(StateError) -> RunError {
        move |e| RunError::StateRead {
            what: Some(what),
            source: Arc::new(e),
        }
    }
}

impl From<StateError> for RunError {
    /// A state read whose message is the state error's own.
    fn from(e: StateError) -> RunError {
        RunError::StateRead {
            what: None,
            source: Arc::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lock_while_settling_is_its_own_kind_with_the_settlers_text() {
        let e = RunError::Settle(Arc::new(StateError::LockLost { pid: 7 }));
        assert_eq!(e.kind(), RunErrorKind::LockLost);
        let text = e.to_string();
        assert!(
            text.starts_with(
                "could not record acknowledged events and the cursor: lost the model's lock"
            ) && text.ends_with("; the next run resumes at the last recorded batch"),
            "{text}"
        );
        assert_eq!(e.exit_code().code(), 1);
    }

    #[test]
    fn the_mapping_pools_failures_read_as_before() {
        let e = RunError::from(MapPoolError::Panicked);
        assert_eq!(
            e.to_string(),
            "mapping panicked; this is a bug in capi-sync, please report it"
        );
        assert_eq!(e.kind(), RunErrorKind::Internal);
    }
}
