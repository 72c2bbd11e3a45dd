//! Warm claims: a provision without a session id takes the oldest waiting
//! warm runner. Claims are served in batches (a group commit): the claims
//! that arrive while a batch is picked wait for the next, which picks a
//! runner for each of them in one read, marks them on the engine together
//! and writes them in one transaction, so a class's burst of first loads
//! costs a few round trips, not one per browser. Also the pool's demand
//! counters, and the retiring of waiting runners when it shrinks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use tokio::sync::oneshot;

use super::Runners;
use crate::backend::Stop;
use crate::db::{Actor, AuditAction, RunnerRow};
use crate::lifecycle::{Removal, RunnerError};

/// How many waiting runners beyond those being claimed a pick reads, to
/// take the first in the engine's claim order
/// ([`crate::backend::RunnerBackend::claim_order`]).
const CLAIM_CANDIDATES: usize = 32;

/// The warm runners in a claim: being marked and written (`taking`), or
/// written since the last pick began (`claimed`), which a read begun before
/// their commit may still show as waiting; and the claims waiting for the
/// next batch, in arrival order.
#[derive(Debug, Default)]
pub(super) struct Claims {
    taking: HashSet<String>,
    claimed: HashSet<String>,
    queue: Vec<Waiting>,
    next_ticket: u64,
}

/// A claim waiting for its batch: answered with its runner, or `None` when
/// none was left for it (or its mark or write failed: the provision then
/// takes the cold path).
#[derive(Debug)]
struct Waiting {
    ticket: u64,
    answer: oneshot::Sender<Option<RunnerRow>>,
}

/// Claims and misses of the warm pool since the service started
/// (monotonic counters): a miss is a provision without a session id that
/// found no waiting runner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmDemand {
    pub claims: u64,
    pub misses: u64,
}

#[derive(Debug, Default)]
pub(super) struct DemandCounters {
    pub(super) claims: AtomicU64,
    pub(super) misses: AtomicU64,
}

/// A warm runner taken for a claim, given back when dropped: to the pool
/// when the claim failed, to `claimed` when its row was written.
#[derive(Debug)]
struct Taken {
    claims: Arc<std::sync::Mutex<Claims>>,
    session_id: String,
    claimed: bool,
}

impl Drop for Taken {
    fn drop(&mut self) {
        let mut claims = self.claims.lock().expect("the claim set");
        claims.taking.remove(&self.session_id);
        if self.claimed {
            claims.claimed.insert(std::mem::take(&mut self.session_id));
        }
    }
}

impl Runners {
    /// Claims the oldest waiting warm runner that no other claim is taking:
    /// marked claimed on the engine first (see
    /// [`crate::backend::RunnerBackend::mark_claimed`]), then in its row, so
    /// that a crash between the two, even with the database lost after it,
    /// never hands the runner to a second client. The claim joins the next
    /// batch; a batch's work runs in a task of its own, so a client that
    /// hangs up never leaves it half done.
    pub(super) async fn claim_warm(&self) -> Option<RunnerRow> {
        let (answer, answered) = oneshot::channel();
        let ticket = {
            let mut claims = self.claims.lock().expect("the claim set");
            let ticket = claims.next_ticket;
            claims.next_ticket += 1;
            claims.queue.push(Waiting { ticket, answer });
            ticket
        };
        // One batch is picked at a time; the claims that queued meanwhile
        // are the next one's. A claim taken into a batch already just waits.
        let picking = self.picking.clone().lock_owned().await;
        let batch = {
            let mut claims = self.claims.lock().expect("the claim set");
            match claims.queue.iter().any(|waiting| waiting.ticket == ticket) {
                true => std::mem::take(&mut claims.queue),
                false => Vec::new(),
            }
        };
        if batch.is_empty() {
            drop(picking);
        } else {
            let runners = self.clone();
            tokio::spawn(async move {
                let picked = runners.pick_warm(batch.len()).await;
                drop(picking);
                runners.serve_claims(batch, picked).await;
            });
        }
        // A batch that panicked answers nobody: the cold path then.
        answered.await.unwrap_or(None)
    }

    /// Marks the picked runners on the engine (together), writes their
    /// claims (one transaction), and answers the batch in arrival order,
    /// the first runner in claim order first.
    async fn serve_claims(
        &self,
        batch: Vec<Waiting>,
        picked: Result<Vec<(RunnerRow, Taken)>, RunnerError>,
    ) {
        let picked = picked.unwrap_or_else(|error| {
            tracing::warn!(%error, claims = batch.len(), "could not pick warm runners");
            Vec::new()
        });
        let backend = &self.lifecycle.backend;
        let marked = futures_util::future::join_all(picked.iter().map(|(row, _)| async move {
            let runner = row.container_id.as_deref().unwrap_or(&row.container_name);
            match backend.mark_claimed(runner, &row.container_name).await {
                Ok(()) => true,
                Err(error) => {
                    // Not handed out: the reconcile sees what became of it.
                    tracing::warn!(session_id = %row.session_id, %error, "could not mark a warm runner claimed");
                    false
                }
            }
        }))
        .await;
        let mut picked: Vec<(RunnerRow, Taken)> = picked
            .into_iter()
            .zip(marked)
            .filter_map(|(pick, marked)| marked.then_some(pick))
            .collect();
        let sessions: Vec<&str> = picked
            .iter()
            .map(|(row, _)| row.session_id.as_str())
            .collect();
        let claimed = match self.lifecycle.db.claim_warm(&sessions, Utc::now()).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, claims = sessions.len(), "could not write warm claims");
                Vec::new()
            }
        };
        let mut claimed: HashMap<String, RunnerRow> = claimed
            .into_iter()
            .map(|row| (row.session_id.clone(), row))
            .collect();
        let mut rows = Vec::with_capacity(picked.len());
        for (row, taken) in &mut picked {
            if let Some(claimed) = claimed.remove(&row.session_id) {
                taken.claimed = true;
                rows.push(claimed);
            }
        }
        // Given back only now: to `claimed` when written, else to the pool.
        drop(picked);
        // A claim whose client hung up passes its runner to the next.
        let mut rows = rows.into_iter();
        let mut next = rows.next();
        for waiting in batch {
            match waiting.answer.send(next.take()) {
                Ok(()) => next = rows.next(),
                Err(unsent) => next = unsent,
            }
        }
        for row in next.into_iter().chain(rows) {
            // Nobody left to take it: claimed, reaped when nobody heartbeats.
            tracing::info!(session_id = %row.session_id, "a warm runner claimed for a client that hung up");
        }
    }

    /// The next `count` waiting warm runners not being claimed, taken (for
    /// as long as their guards live) so that no concurrent claim picks them
    /// too: first in the engine's claim order (runners finish starting out
    /// of order), then the oldest row. Called one at a time (`picking`).
    async fn pick_warm(&self, count: usize) -> Result<Vec<(RunnerRow, Taken)>, RunnerError> {
        let excluded = {
            let mut claims = self.claims.lock().expect("the claim set");
            // Claimed before this pick's read starts: the read sees them.
            claims.claimed.clear();
            claims.taking.len()
        };
        let limit = excluded + count + CLAIM_CANDIDATES;
        let rows = self
            .lifecycle
            .db
            .next_warm(u32::try_from(limit).unwrap_or(u32::MAX))
            .await?;
        let mut claims = self.claims.lock().expect("the claim set");
        // A claim that committed while the read ran may still show as
        // waiting in it: it is in `claimed` then, and skipped too.
        let backend = &self.lifecycle.backend;
        let mut candidates: Vec<(i64, usize, RunnerRow)> = rows
            .into_iter()
            .filter(|row| {
                !claims.taking.contains(&row.session_id)
                    && !claims.claimed.contains(&row.session_id)
            })
            .enumerate()
            .map(|(position, row)| {
                let runner = row.container_id.as_deref().unwrap_or(&row.container_name);
                let order = backend.claim_order(runner).unwrap_or(i64::MIN);
                (order, position, row)
            })
            .collect();
        candidates.sort_unstable_by_key(|(order, position, _)| (*order, *position));
        Ok(candidates
            .into_iter()
            .take(count)
            .map(|(_, _, row)| {
                claims.taking.insert(row.session_id.clone());
                let taken = Taken {
                    claims: self.claims.clone(),
                    session_id: row.session_id.clone(),
                    claimed: false,
                };
                (row, taken)
            })
            .collect())
    }

    /// Claims and misses of the warm pool since start.
    pub fn warm_demand(&self) -> WarmDemand {
        WarmDemand {
            claims: self.demand.claims.load(Ordering::Relaxed),
            misses: self.demand.misses.load(Ordering::Relaxed),
        }
    }

    /// Removes the oldest waiting warm runner, taken as a claim would take
    /// it so that no client is handed it meanwhile; `false` when none waits.
    pub async fn retire_warm(&self) -> Result<bool, RunnerError> {
        let picked = {
            let _one_pick_at_a_time = self.picking.lock().await;
            self.pick_warm(1).await?
        };
        let Some((row, _taken)) = picked.into_iter().next() else {
            return Ok(false);
        };
        let removal = Removal {
            actor: Actor::Reaper,
            action: AuditAction::Reaped,
            reason: "the warm pool shrank back to WARM_POOL_MIN after a quiet period",
            stale_before: None,
            stop: Stop::Kill,
        };
        self.lifecycle.remove(&row, removal).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use crate::test_support::Harness;

    /// Claims that arrive while a batch is picked are the next batch's: 40
    /// at once are the first one's batch, then one of 39, each written in
    /// one transaction (its rows share the transaction's time), and every
    /// claim gets a waiting runner of its own, marked on the engine.
    #[tokio::test]
    async fn a_burst_of_claims_is_served_in_two_batches_each_a_runner_of_its_own() {
        let harness = Harness::new(&["--warm-pool-size=40"]).await;
        let started = harness
            .warm_pool()
            .try_once(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(started, 40);
        let claims =
            futures_util::future::join_all((0..40).map(|_| harness.runners.claim_warm())).await;
        let sessions: HashSet<String> = claims
            .into_iter()
            .map(|row| row.expect("a runner for every claim").session_id)
            .collect();
        assert_eq!(sessions.len(), 40, "a runner handed out twice");
        let rows = harness.db().all().await.unwrap();
        assert!(rows.iter().all(|row| !row.pooled), "{rows:?}");
        let writes: HashSet<&str> = rows.iter().map(|row| row.updated_at.as_str()).collect();
        assert!(
            writes.len() <= 2,
            "{} transactions: {writes:?}",
            writes.len()
        );
        let runners = harness.backend.runners();
        assert!(
            runners.iter().all(|runner| !runner.pooled),
            "each marked on the engine"
        );
    }

    /// More claims than waiting runners: the first in arrival order get
    /// them, the rest `None` (the cold path), none twice.
    #[tokio::test]
    async fn claims_beyond_the_waiting_runners_get_none() {
        let harness = Harness::new(&["--warm-pool-size=3"]).await;
        harness
            .warm_pool()
            .try_once(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        let claims =
            futures_util::future::join_all((0..5).map(|_| harness.runners.claim_warm())).await;
        let given: Vec<String> = claims
            .iter()
            .flatten()
            .map(|row| row.session_id.clone())
            .collect();
        assert_eq!(given.len(), 3, "{claims:?}");
        assert_eq!(given.iter().collect::<HashSet<_>>().len(), 3);
        assert!(claims[3].is_none() && claims[4].is_none(), "{claims:?}");
    }
}
