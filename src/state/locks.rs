//! Model locks: the proof that a run still holds its model's lock, taking a model's lock, and
//! the check every cursor write makes first.

use super::{ModelLock, Result, StateError, StateStore};
use sqlx::PgConnection;

/// Who holds a model's lock: the server process (backend pid) of the session holding it, and
/// the lease under which this process's keeper gave it to one run. A session that ended
/// (killed by `pg_terminate_backend`, a network failure, a server restart) frees every lock
/// it held, and another process may then take the models; so each cursor write first checks
/// that this backend still holds the model and this process still holds it under this lease
/// (see [`StateStore::settle_holding`]). The lease tells apart two runs of one model in turn
/// on the same session, which share the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockProof {
    pub backend_pid: i32,
    pub lease: u64,
}

impl StateStore {
    /// Takes the model's lock if no other process, nor another task of this one, holds it.
    ///
    /// Every lock of the process is held on one session of its own, the lock keeper's
    /// (see `lock_keeper`), so the connections do not grow with the number of models, and
    /// the pool's sessions stay free for the runs' ledger reads and commits.
    pub async fn try_lock_model(&self, model: &str) -> Result<Option<ModelLock>> {
        let Some(lock) = self.locks.take(model).await? else {
            return Ok(None);
        };
        // A process whose lock session died may still be committing a cursor write it checked
        // before we took the lock: wait for it (it holds the settle lock while it commits),
        // so this run reads the cursor after that write, never before it. Any session can
        // wait for it; the lock itself stays with the keeper. On failure the dropped lock is
        // freed.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2 || '#settle'))")
            .bind(&self.schema)
            .bind(model)
            .execute(&self.pool)
            .await?;
        Ok(Some(lock))
    }

    /// Proves, inside a settling transaction, that the lock's session still holds the model's
    /// lock under the run's lease ([`StateStore::settle_holding`]); [`StateError::LockLost`]
    /// when it does not.
    pub(super) async fn prove_lock(
        &self,
        conn: &mut PgConnection,
        model: &str,
        lock: LockProof,
    ) -> Result<()> {
        // The settle lock orders this check and commit against a process taking the model
        // over (it waits on this lock in `try_lock_model` before reading the cursor): once
        // the check passes, no other run reads the cursor until this transaction ends.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2 || '#settle'))")
            .bind(&self.schema)
            .bind(model)
            .execute(&mut *conn)
            .await?;
        // pg_locks lists a two-key advisory lock with its keys as oids (objsubid 2).
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND pid = $3 AND objsubid = 2
                 AND classid = hashtext($1)::oid AND objid = hashtext($2)::oid)",
        )
        .bind(&self.schema)
        .bind(model)
        .bind(lock.backend_pid)
        .fetch_one(&mut *conn)
        .await?;
        // The backend alone cannot tell a run whose lock was freed and taken again by
        // another run of this process on the same session: the lease can.
        if !held || !self.locks.holds(model, lock) {
            return Err(StateError::LockLost {
                pid: lock.backend_pid,
            });
        }
        Ok(())
    }
}
