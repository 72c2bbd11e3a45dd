//! Warm claims: a provision without a session id takes the oldest waiting
//! warm runner. Only the pick is one at a time; the engine marks of a
//! burst's claims go together, each on a runner of its own. Also the pool's
//! demand counters, and the retiring of waiting runners when it shrinks.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;

use super::Runners;
use crate::backend::Stop;
use crate::db::{Actor, AuditAction, RunnerRow};
use crate::lifecycle::{Removal, RunnerError};

/// How many waiting runners beyond those being claimed a pick reads, to
/// take the first in the engine's claim order
/// ([`crate::backend::RunnerBackend::claim_order`]).
const CLAIM_CANDIDATES: usize = 32;

/// The session ids of warm runners in a claim: being marked and written
/// (`taking`), or written since the last pick began (`claimed`), which a read
/// begun before their commit may still show as waiting.
#[derive(Debug, Default)]
pub(super) struct Claims {
    taking: HashSet<String>,
    claimed: HashSet<String>,
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
    /// never hands the runner to a second client. Only the pick is one at a
    /// time; the marks of a burst's claims go to the engine together.
    pub(super) async fn claim_warm(&self) -> Result<Option<RunnerRow>, RunnerError> {
        let Some((next, mut taken)) = self.pick_warm().await? else {
            return Ok(None);
        };
        let runner = next.container_id.as_deref().unwrap_or(&next.container_name);
        if let Err(error) = self
            .lifecycle
            .backend
            .mark_claimed(runner, &next.container_name)
            .await
        {
            // Not handed out: the next provision tries the next one, and
            // the reconcile sees what became of this one.
            tracing::warn!(session_id = %next.session_id, %error, "could not mark a warm runner claimed");
            return Ok(None);
        }
        let claimed = self
            .lifecycle
            .db
            .claim_warm(&next.session_id, Utc::now())
            .await?;
        taken.claimed = claimed.is_some();
        Ok(claimed)
    }

    /// The oldest waiting warm runner not being claimed, taken (for as long
    /// as the guard lives) so that no concurrent claim picks it too.
    async fn pick_warm(&self) -> Result<Option<(RunnerRow, Taken)>, RunnerError> {
        let _one_pick_at_a_time = self.picking.lock().await;
        let excluded = {
            let mut claims = self.claims.lock().expect("the claim set");
            // Claimed before this pick's read starts: the read sees them.
            claims.claimed.clear();
            claims.taking.len()
        };
        let rows = self
            .lifecycle
            .db
            .next_warm(u32::try_from(excluded + CLAIM_CANDIDATES).unwrap_or(u32::MAX))
            .await?;
        let mut claims = self.claims.lock().expect("the claim set");
        // A claim that committed while the read ran may still show as
        // waiting in it: it is in `claimed` then, and skipped too. Of the
        // rest, the first in the engine's claim order (runners finish
        // starting out of order), then the oldest row.
        let backend = &self.lifecycle.backend;
        let Some(next) = rows
            .into_iter()
            .filter(|row| {
                !claims.taking.contains(&row.session_id)
                    && !claims.claimed.contains(&row.session_id)
            })
            .enumerate()
            .min_by_key(|(position, row)| {
                let runner = row.container_id.as_deref().unwrap_or(&row.container_name);
                (backend.claim_order(runner).unwrap_or(i64::MIN), *position)
            })
            .map(|(_, row)| row)
        else {
            return Ok(None);
        };
        claims.taking.insert(next.session_id.clone());
        let taken = Taken {
            claims: self.claims.clone(),
            session_id: next.session_id.clone(),
            claimed: false,
        };
        Ok(Some((next, taken)))
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
        let Some((row, _taken)) = self.pick_warm().await? else {
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
