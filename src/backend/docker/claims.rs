//! Warm claims recorded on the engine in one write per batch.
//!
//! A warm runner must never go to a second client, even when the database
//! that says it was claimed is lost or restored from a backup older than
//! the claim. So a claim is recorded on the engine before its row. Renaming
//! each claimed container did that, but the engine serialises renames of
//! running containers (its network store writes one at a time): a burst of
//! 50 claims queued about 60 ms behind them.
//!
//! Instead every warm container carries, in a label, the time it was
//! started for the pool (`taylored-runner-pooled-at`, microseconds since
//! the epoch), and the engine holds one number per instance: the **claim
//! watermark**. A warm runner started at or before it may have been handed
//! out, and a reconcile never puts it back in the pool. The number is the
//! name of a container that is created and never started (no process, no
//! network; `taylored-claims-<instance digest>-<watermark>`), and a claim
//! raises it to its runner's start time before its row is written. Claims
//! that arrive while one write is in flight are covered together by the
//! next (a group commit), so a burst costs a few renames, not one each.
//!
//! A missing record (removed by hand, or by `docker container prune`)
//! counts as an infinite watermark: every labelled warm runner is then
//! taken for claimed (kept as a session of its own, never handed out, and
//! reaped when nobody heartbeats it), which is safe. A record is therefore
//! created before the first labelled warm runner is started. Warm runners
//! without the label (started by an older version) are still marked one at
//! a time by the `-claimed` rename.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RenameContainerOptionsBuilder,
};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::error::status_of;
use crate::backend::EngineError;
use crate::config::{CLAIMS_LABEL, INSTANCE_LABEL};

/// Where a watermark is written: the engine, or a test's stand-in.
pub(super) trait WatermarkStore {
    /// Makes `watermark` durable (it is higher than any written before).
    fn write(&self, watermark: i64) -> impl Future<Output = Result<(), EngineError>> + Send;
}

/// The batching of watermark writes: [`Watermark::cover`] returns once a
/// write at or above its mark is durable; one write at a time, each taking
/// the highest mark asked for so far.
#[derive(Debug)]
pub(super) struct Watermark {
    /// The highest watermark known durable.
    durable: AtomicI64,
    /// The highest mark asked for.
    wanted: AtomicI64,
    /// One write at a time; tokio's mutex is fair, so claims are covered
    /// in the order they asked.
    writing: tokio::sync::Mutex<()>,
}

impl Watermark {
    pub(super) fn new(durable: i64) -> Self {
        Self {
            durable: AtomicI64::new(durable),
            wanted: AtomicI64::new(durable),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts again from a new record at `watermark` (below the infinite
    /// one a missing record counts as), called under the write lock.
    fn reset(&self, watermark: i64) {
        self.wanted.store(watermark, Ordering::Release);
        self.durable.store(watermark, Ordering::Release);
    }

    pub(super) fn durable(&self) -> i64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Returns once the durable watermark is at least `mark`, writing it
    /// (with every mark asked for meanwhile) if no write in flight covers
    /// it. A failed write fails the claims waiting on it; the next claim
    /// tries again.
    pub(super) async fn cover(
        &self,
        mark: i64,
        store: &impl WatermarkStore,
    ) -> Result<(), EngineError> {
        self.wanted.fetch_max(mark, Ordering::AcqRel);
        if self.durable() >= mark {
            return Ok(());
        }
        let _one_write = self.writing.lock().await;
        if self.durable() >= mark {
            return Ok(());
        }
        let target = self.wanted.load(Ordering::Acquire).max(mark);
        store.write(target).await?;
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }
}

/// The warm pool's claim record on one engine: the watermark, the record
/// container that holds it, and the start time of each warm runner this
/// process has seen (from its label).
#[derive(Debug)]
pub(super) struct ClaimRecord {
    docker: Docker,
    instance: String,
    image: String,
    /// Loaded from the engine once, on first use.
    state: OnceCell<Loaded>,
    /// Each warm container's `taylored-runner-pooled-at`, by id.
    pooled_at: Mutex<HashMap<String, i64>>,
}

#[derive(Debug)]
struct Loaded {
    watermark: Watermark,
    /// The record container's id, once there is one.
    record: tokio::sync::Mutex<Option<String>>,
}

/// The store of the engine: renames the record container, or creates it.
struct EngineStore<'a> {
    claims: &'a ClaimRecord,
    record: &'a tokio::sync::Mutex<Option<String>>,
}

impl WatermarkStore for EngineStore<'_> {
    async fn write(&self, watermark: i64) -> Result<(), EngineError> {
        let mut record = self.record.lock().await;
        let name = self.claims.record_name(watermark);
        if let Some(id) = record.as_deref() {
            let options = RenameContainerOptionsBuilder::new().name(&name).build();
            match self.claims.docker.rename_container(id, options).await {
                Ok(()) => return Ok(()),
                // Removed by hand: made again below.
                Err(error) if status_of(&error) == Some(404) => {
                    tracing::warn!(
                        container = id,
                        "the claim record container is gone; creating it again"
                    );
                }
                Err(error) => return Err(error.into()),
            }
        }
        *record = Some(self.claims.create_record(&name).await?);
        Ok(())
    }
}

/// Microseconds since the epoch, now.
fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl ClaimRecord {
    pub(super) fn new(docker: Docker, instance: String, image: String) -> Self {
        Self {
            docker,
            instance,
            image,
            state: OnceCell::new(),
            pooled_at: Mutex::new(HashMap::new()),
        }
    }

    /// The record container's name prefix: per instance, valid whatever
    /// characters the instance name holds.
    fn record_prefix(&self) -> String {
        let digest = Sha256::digest(self.instance.as_bytes());
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("taylored-claims-{hash}-")
    }

    fn record_name(&self, watermark: i64) -> String {
        format!("{}{watermark}", self.record_prefix())
    }

    /// The watermark the engine holds, read once: the highest record's
    /// (`i64::MAX` when there is none).
    async fn loaded(&self) -> Result<&Loaded, EngineError> {
        self.state
            .get_or_try_init(|| async {
                let (watermark, record) = self.read_record().await?;
                Ok(Loaded {
                    watermark: Watermark::new(watermark),
                    record: tokio::sync::Mutex::new(record),
                })
            })
            .await
    }

    /// The highest record container of this instance and its watermark.
    async fn read_record(&self) -> Result<(i64, Option<String>), EngineError> {
        let instance = format!("{INSTANCE_LABEL}={}", self.instance);
        let filters = HashMap::from([("label", vec![CLAIMS_LABEL, instance.as_str()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let prefix = self.record_prefix();
        let highest = self
            .docker
            .list_containers(Some(options))
            .await?
            .into_iter()
            .filter_map(|summary| {
                let name = summary.names?.into_iter().next()?;
                let watermark = name
                    .trim_start_matches('/')
                    .strip_prefix(&prefix)?
                    .parse::<i64>()
                    .ok()?;
                Some((watermark, summary.id?))
            })
            .max();
        Ok(match highest {
            Some((watermark, id)) => (watermark, Some(id)),
            None => (i64::MAX, None),
        })
    }

    async fn create_record(&self, name: &str) -> Result<String, EngineError> {
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            labels: Some(HashMap::from([
                (CLAIMS_LABEL.to_owned(), "true".to_owned()),
                (INSTANCE_LABEL.to_owned(), self.instance.clone()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_owned()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let created = self.docker.create_container(Some(options), body).await?;
        tracing::info!(container = name, "claim record container created");
        Ok(created.id)
    }

    /// The start time to label a new warm runner with: after the watermark,
    /// with a record on the engine first (one with the watermark at now,
    /// when there was none: every earlier warm runner stays claimed).
    pub(super) async fn next_pooled_at(&self) -> Result<i64, EngineError> {
        let loaded = self.loaded().await?;
        if loaded.record.lock().await.is_none() {
            let now = now_micros();
            let _one_write = loaded.writing().await;
            if loaded.record.lock().await.is_none() {
                let store = EngineStore {
                    claims: self,
                    record: &loaded.record,
                };
                store.write(now).await?;
                loaded.watermark.reset(now);
            }
        }
        Ok(now_micros().max(loaded.watermark.durable().saturating_add(1)))
    }

    /// Remembers a warm container's start time (from its label).
    pub(super) fn remember(&self, container_id: &str, pooled_at: i64) {
        self.pooled_at
            .lock()
            .expect("the warm start times")
            .insert(container_id.to_owned(), pooled_at);
    }

    /// Forgets a container (claimed or removed).
    pub(super) fn forget(&self, container_id: &str) {
        self.pooled_at
            .lock()
            .expect("the warm start times")
            .remove(container_id);
    }

    /// The start time a warm container was labelled with, if this process
    /// saw it started or listed.
    pub(super) fn pooled_at(&self, container_id: &str) -> Option<i64> {
        self.pooled_at
            .lock()
            .expect("the warm start times")
            .get(container_id)
            .copied()
    }

    /// Records on the engine that the warm runner started at `pooled_at`
    /// may be handed out: returns once the watermark covers it.
    pub(super) async fn cover(&self, pooled_at: i64) -> Result<(), EngineError> {
        let loaded = self.loaded().await?;
        let store = EngineStore {
            claims: self,
            record: &loaded.record,
        };
        loaded.watermark.cover(pooled_at, &store).await
    }

    /// The watermark the engine holds (read once per process).
    pub(super) async fn watermark(&self) -> Result<i64, EngineError> {
        Ok(self.loaded().await?.watermark.durable())
    }
}

impl Loaded {
    async fn writing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.watermark.writing.lock().await
    }
}

/// Whether a warm container still waits for a claim: pooled by its label,
/// not renamed `-claimed`, and (when it carries its start time) started
/// after the claim watermark.
pub(super) fn waiting(
    pooled: bool,
    claimed_name: bool,
    pooled_at: Option<i64>,
    watermark: i64,
) -> bool {
    pooled && !claimed_name && pooled_at.is_none_or(|at| at > watermark)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A store whose writes take 2 ms (the engine's rename of a created
    /// container is about that) and are counted.
    #[derive(Default)]
    struct Slow {
        writes: Mutex<Vec<i64>>,
        failing: AtomicUsize,
    }

    impl WatermarkStore for Slow {
        async fn write(&self, watermark: i64) -> Result<(), EngineError> {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if self.failing.load(Ordering::SeqCst) > 0 {
                self.failing.fetch_sub(1, Ordering::SeqCst);
                return Err(EngineError::Refused("the engine is down".into()));
            }
            self.writes.lock().unwrap().push(watermark);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_claims_is_covered_by_a_few_writes_each_at_or_above_its_mark() {
        let watermark = Watermark::new(0);
        let store = Slow::default();
        let started = tokio::time::Instant::now();
        let covered: Vec<(i64, Duration)> = futures_util::future::join_all((1..=50).map(|mark| {
            let (watermark, store) = (&watermark, &store);
            async move {
                watermark.cover(mark, store).await.unwrap();
                (mark, started.elapsed())
            }
        }))
        .await;
        let writes = store.writes.lock().unwrap().clone();
        // The first claim's write, then one covering the 49 that arrived
        // while it was in flight.
        assert_eq!(writes, vec![1, 50], "{writes:?}");
        assert_eq!(watermark.durable(), 50);
        for (mark, at) in covered {
            let first_covering = writes.iter().position(|w| *w >= mark).unwrap();
            assert!(
                at >= Duration::from_millis(2 * (first_covering as u64 + 1)),
                "{mark} at {at:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_mark_already_covered_writes_nothing() {
        let watermark = Watermark::new(100);
        let store = Slow::default();
        watermark.cover(40, &store).await.unwrap();
        watermark.cover(100, &store).await.unwrap();
        assert!(store.writes.lock().unwrap().is_empty());
        watermark.cover(101, &store).await.unwrap();
        assert_eq!(*store.writes.lock().unwrap(), vec![101]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_fails_its_claims_and_the_next_claim_writes_again() {
        let watermark = Watermark::new(0);
        let store = Slow::default();
        store.failing.store(1, Ordering::SeqCst);
        assert!(watermark.cover(7, &store).await.is_err());
        assert_eq!(watermark.durable(), 0, "nothing was made durable");
        watermark.cover(3, &store).await.unwrap();
        // The retry carries the highest mark asked for, 7.
        assert_eq!(*store.writes.lock().unwrap(), vec![7]);
        assert_eq!(watermark.durable(), 7);
    }

    #[test]
    fn a_warm_runner_waits_only_above_the_watermark_and_unrenamed() {
        assert!(waiting(true, false, Some(11), 10));
        assert!(
            !waiting(true, false, Some(10), 10),
            "at the watermark: maybe handed out"
        );
        assert!(
            !waiting(true, false, Some(5), i64::MAX),
            "no record: all claimed"
        );
        assert!(
            !waiting(true, true, Some(11), 10),
            "renamed by an older version"
        );
        assert!(
            waiting(true, false, None, i64::MAX),
            "an older version's: by its name"
        );
        assert!(!waiting(false, false, Some(11), 10), "not a warm runner");
    }
}
