//! The model locks of one process, all held on one session of the state database.
//!
//! A session per running model made the connections grow with the number of models: a
//! hundred models exhausted a default Postgres (`max_connections` = 100). Postgres advisory
//! locks belong to a session, so one session can hold every model's lock; a task of its own
//! (the keeper) owns that session and takes and frees locks on request.
//!
//! Advisory locks are re-entrant within a session: Postgres would grant a held model again to
//! the same session. The keeper therefore also remembers which models it holds, and answers
//! "held" to a second task of this process asking for one of them.
//!
//! If the keeper's session ends, every lock it held is gone at once. The runs find out at
//! their next cursor write ([`super::StateStore::settle_holding`] checks, in the cursor's own
//! transaction, that the proof's backend still holds the model and that this process still
//! holds it under the proof's lease). The keeper connects a new session at its next request.

use super::{LockProof, Result, StateError};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Connecting the session, or any one statement on it. A statement on the keeper's session
/// only tries or frees a lock, so this bounds a server that stopped answering.
const KEEPER_TIMEOUT: Duration = Duration::from_secs(15);

/// The handle to a process's lock keeper; clones share it. The keeper ends, closing its
/// session (and so freeing any lock still held), when the last handle and lock are dropped.
#[derive(Clone)]
pub(crate) struct LockKeeper {
    requests: mpsc::UnboundedSender<Request>,
    held: Arc<Mutex<Held>>,
}

/// The models this process holds, each under a lease number, and the keeper's session.
#[derive(Default)]
struct Held {
    /// The keeper's session's backend, while it has one.
    backend_pid: Option<i32>,
    leases: HashMap<String, u64>,
    last_lease: u64,
}

enum Request {
    Take {
        model: String,
        reply: oneshot::Sender<Result<Option<LockProof>>>,
    },
    Release {
        model: String,
        lease: u64,
        done: Option<oneshot::Sender<()>>,
    },
}

/// A model's lock, held by the process's keeper until released or dropped.
pub struct ModelLock {
    model: String,
    proof: LockProof,
    requests: mpsc::UnboundedSender<Request>,
    released: bool,
}

impl ModelLock {
    /// Frees the lock and waits until the keeper has done so.
    pub async fn release(mut self) {
        self.released = true;
        let (done, freed) = oneshot::channel();
        let request = Request::Release {
            model: std::mem::take(&mut self.model),
            lease: self.proof.lease,
            done: Some(done),
        };
        if self.requests.send(request).is_ok() {
            let _ = freed.await;
        }
    }

    /// What a run shows its cursor writes to prove it still holds the model.
    pub fn proof(&self) -> LockProof {
        self.proof
    }
}

impl Drop for ModelLock {
    /// A lock dropped without `release` (a run stopped where it stood) is freed all the same.
    fn drop(&mut self) {
        if !self.released {
            let _ = self.requests.send(Request::Release {
                model: std::mem::take(&mut self.model),
                lease: self.proof.lease,
                done: None,
            });
        }
    }
}

impl LockKeeper {
    /// Starts the keeper. It connects its session at the first request, so a process that
    /// takes no lock (`status`, `check`) opens none.
    pub(crate) fn start(options: PgConnectOptions, schema: String) -> LockKeeper {
        let (requests, inbox) = mpsc::unbounded_channel();
        let held = Arc::new(Mutex::new(Held::default()));
        let keeper = Keeper {
            options,
            schema,
            session: None,
            held: held.clone(),
        };
        tokio::spawn(keeper.serve(inbox));
        LockKeeper { requests, held }
    }

    /// Takes the model's lock unless another process, or another task of this one, holds it.
    pub(crate) async fn take(&self, model: &str) -> Result<Option<ModelLock>> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Take {
            model: model.to_string(),
            reply,
        };
        self.requests.send(request).map_err(|_| stopped())?;
        let proof = answer.await.map_err(|_| stopped())??;
        Ok(proof.map(|proof| ModelLock {
            model: model.to_string(),
            proof,
            requests: self.requests.clone(),
            released: false,
        }))
    }

    /// True while this process holds the model under the proof's lease. The server side (that
    /// the proof's backend holds the lock) is checked by the caller; this catches a model
    /// freed and taken again on the same session, which the backend alone cannot tell apart.
    pub(crate) fn holds(&self, model: &str, proof: LockProof) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.backend_pid == Some(proof.backend_pid) && held.leases.get(model) == Some(&proof.lease)
    }
}

fn stopped() -> StateError {
    StateError::Db(sqlx::Error::Io(std::io::Error::other(
        "the model locks' keeper has stopped",
    )))
}

fn timed_out(what: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}

/// The task owning the lock session.
struct Keeper {
    options: PgConnectOptions,
    schema: String,
    session: Option<PgConnection>,
    held: Arc<Mutex<Held>>,
}

impl Keeper {
    async fn serve(mut self, mut inbox: mpsc::UnboundedReceiver<Request>) {
        while let Some(request) = inbox.recv().await {
            match request {
                Request::Take { model, reply } => {
                    let outcome = self.take(&model).await;
                    // The asker gave up (its run's deadline): a lock taken for it is freed.
                    if let Err(Ok(Some(proof))) = reply.send(outcome) {
                        self.release(&model, proof.lease).await;
                    }
                }
                Request::Release { model, lease, done } => {
                    self.release(&model, lease).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            }
        }
        if let Some(session) = self.session.take() {
            let _ = tokio::time::timeout(KEEPER_TIMEOUT, session.close()).await;
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(&mut self, model: &str) -> Result<Option<LockProof>> {
        if self.held().leases.contains_key(model) {
            return Ok(None);
        }
        // A session found dead is replaced once: its locks are gone anyway.
        let mut retried = false;
        loop {
            let backend_pid = self.connected().await?;
            let session = self.session.as_mut().expect("connected");
            let tried = tokio::time::timeout(
                KEEPER_TIMEOUT,
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
                    .bind(&self.schema)
                    .bind(model)
                    .fetch_one(session),
            )
            .await
            .unwrap_or_else(|_| Err(timed_out("trying the model's lock")));
            match tried {
                Ok(true) => {
                    let mut held = self.held();
                    held.last_lease += 1;
                    let lease = held.last_lease;
                    held.leases.insert(model.to_string(), lease);
                    return Ok(Some(LockProof { backend_pid, lease }));
                }
                Ok(false) => return Ok(None),
                // The server refused the statement: no lock was granted. Unless the refusal
                // was the session's end (a terminated backend says so), the session stands.
                Err(e @ sqlx::Error::Database(_)) if self.alive().await => return Err(e.into()),
                // The session failed or stopped answering, perhaps after granting the lock
                // (a lock we do not know of would stay held by our session for good): it
                // goes, and every lock with it.
                Err(e) => {
                    self.lose_session(&e);
                    if retried {
                        return Err(e.into());
                    }
                    retried = true;
                }
            }
        }
    }

    async fn release(&mut self, model: &str, lease: u64) {
        {
            let mut held = self.held();
            // A lease of a session that has since ended (or a model taken again) is not ours
            // to free: that lock is already gone, and the model's new holder keeps it.
            if held.leases.get(model) != Some(&lease) {
                return;
            }
            held.leases.remove(model);
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let freed = tokio::time::timeout(
            KEEPER_TIMEOUT,
            sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))")
                .bind(&self.schema)
                .bind(model)
                .fetch_one(session),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("freeing the model's lock")));
        match freed {
            Ok(true) => {}
            Ok(false) => warn!(model, "the model's lock was not held by the lock session"),
            // A lock that cannot be freed must not stay held while we believe it free: the
            // session goes, and every lock with it.
            Err(e) => self.lose_session(&e),
        }
    }

    /// The session's backend, connecting a session first if there is none.
    async fn connected(&mut self) -> Result<i32> {
        if let (Some(_), Some(pid)) = (&self.session, self.held().backend_pid) {
            return Ok(pid);
        }
        let mut session =
            tokio::time::timeout(KEEPER_TIMEOUT, PgConnection::connect_with(&self.options))
                .await
                .unwrap_or_else(|_| Err(timed_out("connecting the model locks' session")))?;
        let pid = tokio::time::timeout(
            KEEPER_TIMEOUT,
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut session),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("starting the model locks' session")))?;
        self.session = Some(session);
        let mut held = self.held();
        held.backend_pid = Some(pid);
        held.leases.clear();
        Ok(pid)
    }

    async fn alive(&mut self) -> bool {
        match self.session.as_mut() {
            Some(session) => matches!(
                tokio::time::timeout(KEEPER_TIMEOUT, session.ping()).await,
                Ok(Ok(()))
            ),
            None => false,
        }
    }

    /// Forgets the session and every lock it held (they ended with it, or end as it closes).
    fn lose_session(&mut self, cause: &sqlx::Error) {
        let mut held = self.held();
        if !held.leases.is_empty() {
            warn!(
                error = %cause,
                models = held.leases.len(),
                "the model locks' session in the state database failed; its locks are lost, and the runs holding them stop at their next cursor write"
            );
        }
        held.leases.clear();
        held.backend_pid = None;
        drop(held);
        // Dropped, not closed: a session that failed may not answer a goodbye.
        self.session = None;
    }
}
