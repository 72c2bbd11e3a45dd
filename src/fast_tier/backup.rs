//! Online backups (`orchestrator backup`, `BACKUP_INTERVAL_SECONDS`): a copy
//! taken while the heartbeats of 1,000 sessions pour in is whole, passes
//! SQLite's integrity check, and opens as a service's database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::http::StatusCode;
use chrono::Utc;

use super::Service;
use crate::backend::NetworkMode;
use crate::backup::Backups;
use crate::db::{Db, RunnerState, integrity_check};
use crate::domain::SessionId;

const SESSIONS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_a_heartbeat_flood_is_whole_and_restores() {
    let service = Arc::new(Service::new(&["--max-concurrent-runners=0"]).await);
    let sessions: Vec<String> = (0..SESSIONS).map(|i| format!("backup-{i}")).collect();
    for session in &sessions {
        let id = SessionId::parse(session).unwrap();
        service
            .runners()
            .provision(Some(id), &NetworkMode::Default)
            .await
            .unwrap();
    }
    // The flood: every session's heartbeat through the API, then their
    // write in one transaction, round after round until the backups end.
    let (stop, rounds) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let flood = tokio::spawn({
        let (service, sessions) = (Arc::clone(&service), sessions.clone());
        let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
        async move {
            while !stop.load(Ordering::Acquire) {
                for session in &sessions {
                    assert_eq!(service.heartbeat(session).await.status, StatusCode::OK);
                }
                assert_eq!(service.flush_heartbeats().await.unwrap(), SESSIONS);
                rounds.fetch_add(1, Ordering::AcqRel);
            }
        }
    });
    while rounds.load(Ordering::Acquire) == 0 {
        tokio::task::yield_now().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let backups = Backups::new(
        service.db().clone(),
        dir.path().to_owned(),
        2,
        Arc::clone(&service.harness.service.metrics),
    );
    // Backups one after another until heartbeat writes have committed
    // while they were being taken (a backup takes far less than a round).
    let (mut written, before) = (Vec::new(), rounds.load(Ordering::Acquire));
    let mut i = 0;
    while written.len() < 3 || rounds.load(Ordering::Acquire) - before < 2 {
        assert!(i < 10_000, "the flood stalled");
        let backup = backups
            .try_once(Utc::now() + chrono::Duration::seconds(i))
            .await
            .unwrap();
        integrity_check(&backup.path).await.unwrap();
        written.push(backup.path);
        i += 1;
    }
    stop.store(true, Ordering::Release);
    flood.await.unwrap();
    let during = rounds.load(Ordering::Acquire) - before;
    assert!(during >= 2, "{during} heartbeat writes during the backups");

    // Only the newest two are kept.
    let (old, kept) = written.split_at(written.len() - 2);
    assert!(old.iter().all(|path| !path.exists()), "{old:?}");
    for path in kept {
        let restored = Db::connect(&path.display().to_string()).await.unwrap();
        let rows = restored.all().await.unwrap();
        assert_eq!(rows.len(), SESSIONS, "{}", path.display());
        assert!(
            rows.iter()
                .all(|row| row.state == RunnerState::Running && row.container_id.is_some()),
            "{rows:?}"
        );
    }
    // A backup never overwrites a file.
    let error = service.db().backup_to(&kept[1]).await.unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
}
