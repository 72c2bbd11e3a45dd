//! Heartbeats answered from memory (`src/heartbeats.rs`): for known and
//! unknown sessions alike without reading the database, written within the
//! flush interval and at a clean stop, never letting the reaper remove a
//! runner whose heartbeat was answered 200, and forgotten with the runner.

use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use taylored_orchestrator::backend::Stop;
use taylored_orchestrator::db::{Actor, AuditAction};
use taylored_orchestrator::lifecycle::{Removal, RemovalOutcome};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEnv, clock_past, eventually, spawn_app_with};

/// Long enough that nothing is flushed during a test unless it says so.
const NEVER: &str = "--heartbeat-flush-interval=60000";

#[tokio::test]
async fn heartbeats_are_held_in_memory_and_written_by_a_clean_stop() {
    let env = TestEnv::new();
    let app = env.spawn(&[NEVER]).await;
    let session = app.api.provision(None).await.session_id().to_owned();
    let provisioned = env.row(&session).await.unwrap().last_heartbeat_at;
    clock_past(&provisioned).await;

    for _ in 0..3 {
        assert_eq!(app.api.heartbeat(&session).await.status, 200);
    }
    assert_eq!(
        env.row(&session).await.unwrap().last_heartbeat_at,
        provisioned,
        "the heartbeats were written one by one"
    );

    let env = app.stop().await;
    let stopped = env.row(&session).await.unwrap().last_heartbeat_at;
    assert!(stopped > provisioned, "{stopped} <= {provisioned}");
}

#[tokio::test]
async fn a_heartbeat_not_yet_written_spares_its_runner() {
    let app = spawn_app_with(&[NEVER]).await;
    for session in ["heartbeating", "silent"] {
        assert_eq!(app.api.provision(Some(session)).await.status, 201);
    }
    assert_eq!(app.api.heartbeat("heartbeating").await.status, 200);
    assert_eq!(app.api.heartbeat("silent").await.status, 200);
    let cutoff = Utc::now();
    clock_past(&taylored_orchestrator::db::timestamp(cutoff)).await;
    assert_eq!(app.api.heartbeat("heartbeating").await.status, 200);

    // As the reaper removes a runner its query found idle: both rows are
    // older than the cutoff in the database.
    let reap = |session: &'static str| {
        let service = app.service.clone();
        async move {
            let row = service.db.find(session).await.unwrap().unwrap();
            assert!(row.last_heartbeat_at < taylored_orchestrator::db::timestamp(cutoff));
            let removal = Removal {
                actor: Actor::Reaper,
                action: AuditAction::Reaped,
                reason: "test",
                stale_before: Some(cutoff),
                stop: Stop::Graceful,
            };
            service.lifecycle.remove(&row, removal).await.unwrap()
        }
    };
    assert_eq!(reap("heartbeating").await, RemovalOutcome::Skipped);
    assert_eq!(reap("silent").await, RemovalOutcome::Removed);
    assert_eq!(app.api.heartbeat("heartbeating").await.status, 200);
    assert_eq!(app.api.heartbeat("silent").await.status, 404);
}

#[tokio::test]
async fn heartbeats_are_written_within_the_flush_interval() {
    let app = spawn_app_with(&["--heartbeat-flush-interval=50"]).await;
    let session = app.api.provision(None).await.session_id().to_owned();
    let before = app.env.row(&session).await.unwrap().last_heartbeat_at;
    clock_past(&before).await;

    assert_eq!(app.api.heartbeat(&session).await.status, 200);

    eventually(
        Duration::from_secs(5),
        "the heartbeat written to the database",
        || async { app.env.row(&session).await.unwrap().last_heartbeat_at > before },
    )
    .await;
    let metrics = app.api.metrics().await;
    assert!(
        metrics.contains("orchestrator_heartbeat_writes_total{result=\"ok\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn removed_runners_stop_answering_heartbeats_at_once() {
    let env = TestEnv::new();
    let app = env.spawn(&[NEVER]).await;
    for session in ["deprovisioned", "killed", "reaped"] {
        assert_eq!(app.api.provision(Some(session)).await.status, 201);
        assert_eq!(app.api.heartbeat(session).await.status, 200);
    }

    assert_eq!(app.api.deprovision("deprovisioned").await.status, 200);
    assert_eq!(app.api.heartbeat("deprovisioned").await.status, 404);

    env.kill_runner("killed").await;
    env.until_row_dropped("killed", Duration::from_secs(10))
        .await;
    assert_eq!(app.api.heartbeat("killed").await.status, 404);

    let reaper = app.reaper(Duration::from_secs(60));
    let outcome = reaper
        .try_once(Utc::now() + chrono::Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(outcome.reaped, 1, "{outcome:?}");
    assert_eq!(app.api.heartbeat("reaped").await.status, 404);
}

/// The safety net behind the removal paths: a row taken out of `running`
/// behind the service's back stops answering at the next flush.
#[tokio::test]
async fn a_flush_forgets_a_runner_whose_row_is_no_longer_running() {
    let env = TestEnv::new();
    let app = env.spawn(&["--heartbeat-flush-interval=50"]).await;
    assert_eq!(app.api.provision(Some("outside")).await.status, 201);
    assert_eq!(app.api.heartbeat("outside").await.status, 200);

    sqlx::query("UPDATE runners SET state = 'removing' WHERE session_id = 'outside'")
        .execute(env.db().await.pool())
        .await
        .unwrap();

    eventually(
        Duration::from_secs(5),
        "heartbeats answering 404",
        || async { app.api.heartbeat("outside").await.status == 404 },
    )
    .await;
}

/// Heartbeats racing the reaper's sweeps, flushes and removals: a runner
/// that keeps heartbeating is never removed, and one that stops is.
#[tokio::test]
async fn heartbeating_runners_survive_a_busy_reaper() {
    let app = spawn_app_with(&["--heartbeat-flush-interval=20"]).await;
    let sessions: Vec<String> = (0..8).map(|i| format!("busy-{i}")).collect();
    for session in &sessions {
        assert_eq!(app.api.provision(Some(session)).await.status, 201);
    }
    // Provisioning took a while on a busy machine: every runner starts the
    // race just heartbeated.
    for session in &sessions {
        assert_eq!(app.api.heartbeat(session).await.status, 200);
    }
    let reaper = app.reaper(Duration::from_secs(2));
    let (steady, stopping) = sessions.split_at(4);
    let (stop_steady, stop_early) = (CancellationToken::new(), CancellationToken::new());
    let heartbeat_until = |session: &String, stop: CancellationToken| {
        let api = &app.api;
        let session = session.clone();
        async move {
            while !stop.is_cancelled() {
                let status = api.heartbeat(&session).await.status;
                assert_eq!(status, 200, "{session} lost its runner while heartbeating");
                // A browser's pace, compressed: the load under test, not a
                // wait for anything.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    };
    // At least 30 sweeps, and on until the silent runners are gone.
    let sweeps = async {
        let started = tokio::time::Instant::now();
        let mut reaped = 0;
        for sweep in 0.. {
            if sweep == 10 {
                stop_early.cancel();
            }
            reaped += reaper.try_once(Utc::now()).await.unwrap().reaped;
            if sweep >= 30 && reaped >= stopping.len() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the silent runners were not reaped: {reaped} of {}",
                stopping.len()
            );
            // The sweeps' pace (the race under test), not a wait: the
            // loop ends on the silent runners being reaped.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop_steady.cancel();
        reaped
    };
    let heartbeats = join_all(
        steady
            .iter()
            .map(|s| heartbeat_until(s, stop_steady.clone()))
            .chain(
                stopping
                    .iter()
                    .map(|s| heartbeat_until(s, stop_early.clone())),
            ),
    );
    let (reaped, _) = tokio::join!(sweeps, heartbeats);

    assert_eq!(reaped, stopping.len());
    for session in steady {
        assert!(app.env.row(session).await.is_some(), "{session} was reaped");
    }
    for session in stopping {
        assert_eq!(app.api.heartbeat(session).await.status, 404);
    }
}

/// The set of running sessions answers every heartbeat: with the database
/// closed (where any read fails and would answer 500), a runner just
/// provisioned, never heartbeated before, answers 200, and made-up sessions
/// answer 404.
#[tokio::test]
async fn heartbeats_are_answered_without_reading_the_database() {
    let app = spawn_app_with(&[NEVER]).await;
    assert_eq!(app.api.provision(Some("provisioned")).await.status, 201);

    app.service.db.pool().close().await;

    let known = app.api.heartbeat("provisioned").await;
    assert_eq!(
        (known.status, known.message()),
        (200, "Heartbeat received for session provisioned.")
    );
    for made_up in ["made-up-1", "made-up-2", "provisioned-not"] {
        let unknown = app.api.heartbeat(made_up).await;
        assert_eq!((unknown.status, unknown.error()), (404, "RUNNER_NOT_FOUND"));
    }
}

/// The shared runner of `REUSE_RUNNER_MODE` is in the set too: its id
/// answers the singleton message, any other id the mismatch, both without
/// the database.
#[tokio::test]
async fn the_shared_runner_is_answered_without_reading_the_database() {
    let app = spawn_app_with(&[NEVER, "--reuse-runner-mode=true"]).await;
    let shared = app.api.provision(None).await.session_id().to_owned();

    app.service.db.pool().close().await;

    assert_eq!(
        app.api.heartbeat(&shared).await.message(),
        "Heartbeat received for singleton runner."
    );
    let mismatch = app.api.heartbeat("someone-else").await;
    assert_eq!(
        (mismatch.status, mismatch.message()),
        (404, "Singleton runner not found or session ID mismatch.")
    );
}

/// After a restart the set is loaded at start: kept runners answer 200
/// with the database closed, removed ones 404.
#[tokio::test]
async fn kept_runners_answer_after_a_restart_without_reading_the_database() {
    let env = TestEnv::new();
    let app = env.spawn(&[NEVER]).await;
    for session in ["kept", "deprovisioned"] {
        assert_eq!(app.api.provision(Some(session)).await.status, 201);
    }
    assert_eq!(app.api.deprovision("deprovisioned").await.status, 200);
    let env = app.stop().await;

    let app = env.spawn(&[NEVER]).await;
    assert_eq!(app.reconciled.kept, 1, "{:?}", app.reconciled);
    app.service.db.pool().close().await;

    assert_eq!(app.api.heartbeat("kept").await.status, 200);
    assert_eq!(app.api.heartbeat("deprovisioned").await.status, 404);
}

/// `HeartbeatWriter::load_running` makes the set exactly the database's running
/// rows, whatever it held before.
#[tokio::test]
async fn loading_the_running_rows_replaces_the_set() {
    let env = TestEnv::new();
    let app = env.spawn(&[NEVER]).await;
    assert_eq!(app.api.provision(Some("leaving")).await.status, 201);
    let db = env.db().await;
    sqlx::query(
        "UPDATE runners SET state = 'removing' WHERE session_id = 'leaving'; \
         INSERT INTO runners (session_id, kind, state, container_name, created_at, \
            updated_at, last_heartbeat_at, pooled) \
         SELECT 'arriving', kind, 'running', 'arriving-container', created_at, updated_at, \
            last_heartbeat_at, 0 FROM runners WHERE session_id = 'leaving'",
    )
    .execute(db.pool())
    .await
    .unwrap();

    assert_eq!(app.service.heartbeats.load_running().await.unwrap(), 1);

    assert_eq!(app.api.heartbeat("leaving").await.status, 404);
    assert_eq!(app.api.heartbeat("arriving").await.status, 200);
}
