//! A fixed set of threads that map chunks of rows, shared by every model of the process.
//!
//! Mapping is CPU work, so it does not run on the async workers. It used to run on tokio's
//! blocking pool, which starts a new thread whenever none is idle: a backfill ended up
//! mapping on four or five threads in turn, and each kept its own allocator pages for the
//! event JSON it made (about 8 MiB more peak RSS at a million rows than two threads).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    jobs: Mutex<Sender<Job>>,
}

/// Threads in the pool: one per core, at least two (reading, sending and the database share
/// the cores), at most eight (a run keeps two chunks in mapping at once).
fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("capi-map-{i}"))
                .spawn(move || work(&rx))
                .expect("a mapping thread starts");
        }
        Pool {
            jobs: Mutex::new(tx),
        }
    })
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        // A panic in a job drops its answer (the caller sees an error); the thread stays.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

/// A failure of the mapping threads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapPoolError {
    #[error("the mapping threads are gone")]
    Gone,
    #[error("mapping panicked; this is a bug in capi-sync, please report it")]
    Panicked,
}

/// Runs `f` on a mapping thread. Fails only when `f` panicked.
pub async fn run<T, F>(f: F) -> Result<T, MapPoolError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let sent = match pool().jobs.lock() {
        Ok(jobs) => jobs.send(job),
        Err(poisoned) => poisoned.into_inner().send(job),
    };
    if sent.is_err() {
        return Err(MapPoolError::Gone);
    }
    rx.await.map_err(|_| MapPoolError::Panicked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pool_and_a_panic_is_an_error_not_a_lost_thread() {
        let name = run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("capi-map-"));
        for _ in 0..threads() {
            let err = run(|| -> u32 { panic!("boom") })
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("panicked"), "{err}");
        }
        // The pool still maps after as many panics as it has threads.
        let results: Vec<u32> =
            futures::future::join_all((0..threads() as u32 * 2).map(|i| run(move || i * 2)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        assert_eq!(
            results,
            (0..threads() as u32 * 2).map(|i| i * 2).collect::<Vec<_>>()
        );
    }
}
