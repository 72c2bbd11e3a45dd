//! The heartbeats' queries: the running set loaded at start and the batched
//! write of heartbeat times.

use chrono::{DateTime, Utc};

use super::{Db, DbError, QueryPlan, RunningRunner, timestamp};

impl Db {
    /// Every running runner, with what the gateway needs to route to it:
    /// what the running set that answers heartbeats holds (see `heartbeats`).
    pub async fn running_sessions(&self) -> Result<Vec<RunningRunner>, DbError> {
        sqlx::query_as(
            "SELECT session_id, kind, token, token_sha256, host_port, node_host, address \
             FROM runners \
             WHERE state = 'running'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DbError::from)
    }

    /// The query plan of the heartbeat write, for the benchmark and tests:
    /// one primary-key search per heartbeat, never a scan per heartbeat.
    pub async fn explain_heartbeats_write(&self) -> Result<QueryPlan, DbError> {
        self.explain(HEARTBEATS_WRITE, &["[]".to_owned()]).await
    }

    /// Writes a batch of heartbeat times in one statement, never moving a
    /// time back. Returns the positions in `batch` of the sessions that no
    /// longer have a running row.
    pub async fn record_heartbeats(
        &self,
        batch: &[(&str, DateTime<Utc>)],
    ) -> Result<Vec<usize>, DbError> {
        // One statement for the whole batch: 10,000 times hold the write
        // lock for milliseconds, where one UPDATE each took a quarter second.
        let times: Vec<(&str, String)> = batch
            .iter()
            .map(|(session_id, at)| (*session_id, timestamp(*at)))
            .collect();
        let times =
            serde_json::to_string(&times).map_err(|error| sqlx::Error::Encode(error.into()))?;
        let updated: Vec<String> = sqlx::query_scalar(HEARTBEATS_WRITE)
            .bind(times)
            .fetch_all(&self.pool)
            .await?;
        let updated: std::collections::HashSet<String> = updated.into_iter().collect();
        Ok(batch
            .iter()
            .enumerate()
            .filter(|(_, (session_id, _))| !updated.contains(*session_id))
            .map(|(position, _)| position)
            .collect())
    }
}

/// Writes a batch of heartbeat times (`[[session, time], ...]` in `?1`) and
/// returns the sessions with a running row. The batch is materialised first
/// and `+` keeps the planner off the state indexes: otherwise it may scan the
/// running rows and search the whole batch for each (10,000 times took 56 s).
const HEARTBEATS_WRITE: &str = "WITH beat(session_id, at) AS MATERIALIZED \
     (SELECT value ->> 0, value ->> 1 FROM json_each(?1)) \
     UPDATE runners SET last_heartbeat_at = MAX(runners.last_heartbeat_at, beat.at) \
     FROM beat WHERE runners.session_id = beat.session_id AND +runners.state = 'running' \
     RETURNING runners.session_id";
