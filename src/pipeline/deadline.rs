//! Bounds on a run. Every wait of a run ends by `service.run_deadline`: the reading loop stops
//! there, what is in flight then gets `service.shutdown_grace` to settle, and whatever still
//! waits after that (a warehouse socket that stopped answering, a state database gone quiet)
//! is dropped with its task. A stalled read would otherwise hold the model's lock, and a pool
//! connection, for as long as the socket stays half-open: hours, with default TCP settings.
//!
//! The running runs are also listed here, for `/readyz` to report one stuck past its deadline.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

/// A spawned task of a run, aborted when its handle is dropped: a run that gives up (at its
/// deadline, or dropped by its caller) takes its reader, mapper, settler and batches with it,
/// and with them the connections they hold.
pub struct AbortOnDrop<T>(JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    pub fn spawn(task: impl Future<Output = T> + Send + 'static) -> AbortOnDrop<T> {
        AbortOnDrop(tokio::spawn(task))
    }
}

impl<T> AbortOnDrop<T> {
    pub fn abort(&self) {
        self.0.abort();
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// Why a run stopped at its deadline, for the run's error.
pub fn passed_deadline(run_deadline: Duration, what: &str) -> String {
    format!(
        "the run passed its deadline (service.run_deadline = {run_deadline:?}) {what}; the next run resumes at the last acknowledged batch"
    )
}

/// The runs in progress in this process, with their deadlines.
#[derive(Clone, Default)]
pub struct RunRegistry {
    inner: Arc<Mutex<HashMap<u64, RunningRun>>>,
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for RunRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunRegistry({} running)", self.lock().len())
    }
}

struct RunningRun {
    model: String,
    started: Instant,
    deadline: Instant,
}

/// A run's place in the registry; dropping it (the run ending, however) removes it.
pub struct Registered {
    registry: RunRegistry,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// A run still going after its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverdueRun {
    pub model: String,
    pub running_for: Duration,
    pub past_deadline_by: Duration,
}

impl RunRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, RunningRun>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enter(&self, model: &str, deadline: Instant) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            RunningRun {
                model: model.to_string(),
                started: Instant::now(),
                deadline,
            },
        );
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// The models with a run in progress in this process, each once, sorted.
    pub fn running_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self.lock().values().map(|r| r.model.clone()).collect();
        models.sort();
        models.dedup();
        models
    }

    /// Runs still in progress past their deadline (draining what was in flight, or stuck).
    pub fn overdue(&self) -> Vec<OverdueRun> {
        let now = Instant::now();
        let mut late: Vec<OverdueRun> = self
            .lock()
            .values()
            .filter(|r| now > r.deadline)
            .map(|r| OverdueRun {
                model: r.model.clone(),
                running_for: now - r.started,
                past_deadline_by: now - r.deadline,
            })
            .collect();
        late.sort_by(|a, b| a.model.cmp(&b.model));
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_is_overdue_only_past_its_deadline_and_until_it_ends() {
        let runs = RunRegistry::default();
        let on_time = runs.enter("orders", Instant::now() + Duration::from_secs(3600));
        let late = runs.enter("leads", Instant::now() - Duration::from_secs(1));
        let overdue = runs.overdue();
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].model, "leads");
        assert!(overdue[0].past_deadline_by >= Duration::from_secs(1));
        drop(late);
        assert!(runs.overdue().is_empty());
        drop(on_time);
        assert!(runs.lock().is_empty());
    }

    #[tokio::test]
    async fn dropping_a_task_handle_aborts_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = AbortOnDrop::spawn(async move {
            // Holds the sender until aborted: the receiver sees it dropped.
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(task);
        let outcome = tokio::time::timeout(Duration::from_secs(10), rx).await;
        assert!(matches!(outcome, Ok(Err(_))), "the task was not aborted");
    }
}
