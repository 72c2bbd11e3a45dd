//! Warm runners: started ahead of demand and handed out at once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;

use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, TestEnv, assert_runner_answers, eventually};

async fn wait_for_pool(app: &TestApp, size: i64) {
    eventually(Duration::from_secs(30), "the pool filled", || async {
        app.service.db.count_pooled().await.unwrap() >= size && warm_running(app).await >= size
    })
    .await;
}

async fn warm_running(app: &TestApp) -> i64 {
    app.service
        .db
        .all()
        .await
        .unwrap()
        .iter()
        .filter(|row| row.pooled && row.state == taylored_orchestrator::db::RunnerState::Running)
        .count() as i64
}

/// Waits until the database of a service run as its binary holds `count`
/// waiting warm runners.
async fn wait_for_warm_rows(env: &TestEnv, count: usize) {
    eventually(
        Duration::from_secs(30),
        "the waiting warm runners",
        || async {
            let rows = env.db().await.all().await.unwrap();
            rows.iter()
                .filter(|row| {
                    row.pooled && row.state == taylored_orchestrator::db::RunnerState::Running
                })
                .count()
                == count
        },
    )
    .await;
}

#[tokio::test]
async fn a_provision_without_session_id_claims_a_warm_runner_and_the_pool_refills() {
    let app = TestEnv::new().spawn(&["--warm-pool-size=2"]).await;
    wait_for_pool(&app, 2).await;
    let warm: HashSet<String> = app
        .service
        .db
        .all()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.session_id)
        .collect();

    let started = Instant::now();
    let reply = app.api.provision(None).await;
    eprintln!("warm provision answered in {:?}", started.elapsed());

    assert_eq!(
        (reply.status, reply.message()),
        (201, "Runner provisioned successfully.")
    );
    assert!(
        warm.contains(reply.session_id()),
        "not a warm runner: {reply:?}"
    );
    assert_runner_answers(reply.endpoint()).await;
    assert_eq!(app.api.heartbeat(reply.session_id()).await.status, 200);
    let row = app.env.row(reply.session_id()).await.unwrap();
    assert!(!row.pooled);
    wait_for_pool(&app, 2).await;
    assert_eq!(app.env.running_container_ids().await.len(), 3);

    // A client-chosen id takes the cold path.
    let cold = app.api.provision(Some("chosen")).await;
    assert_eq!((cold.status, cold.session_id()), (201, "chosen"));
    assert_eq!(app.service.db.count_pooled().await.unwrap(), 2);
}

#[tokio::test]
async fn concurrent_claims_never_share_a_runner() {
    let app = TestEnv::new().spawn(&["--warm-pool-size=3"]).await;
    wait_for_pool(&app, 3).await;

    let replies = join_all((0..3).map(|_| app.api.provision(None))).await;

    let sessions: HashSet<&str> = replies.iter().map(|reply| reply.session_id()).collect();
    assert!(
        replies.iter().all(|reply| reply.status == 201),
        "{replies:?}"
    );
    assert_eq!(sessions.len(), 3);
    let endpoints: HashSet<&str> = replies.iter().map(|reply| reply.endpoint()).collect();
    assert_eq!(endpoints.len(), 3);
}

#[tokio::test]
async fn warm_runners_are_not_reaped_survive_a_restart_and_count_against_the_limit() {
    let env = TestEnv::new();
    let app = env
        .spawn(&["--warm-pool-size=2", "--max-concurrent-runners=3"])
        .await;
    wait_for_pool(&app, 2).await;
    let claimed = app.api.provision(None).await;
    assert_eq!(claimed.status, 201);
    wait_for_pool(&app, 2).await;

    // At the limit (1 claimed + 2 warm): a cold provision is refused.
    let refused = app.api.provision(Some("over")).await;
    assert_eq!(
        (refused.status, refused.error()),
        (503, "RUNNER_LIMIT_REACHED")
    );

    let reaper = app.reaper(Duration::from_secs(60));
    let outcome = reaper
        .try_once(Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        outcome.reaped, 1,
        "only the claimed runner idles: {outcome:?}"
    );
    assert_eq!(app.service.db.count_pooled().await.unwrap(), 2);

    drop(reaper); // it shares the service's database handle (and lock)
    let before = env.running_container_ids().await;
    let env = app.stop().await;
    let app = env
        .spawn(&["--warm-pool-size=2", "--max-concurrent-runners=3"])
        .await;
    assert_eq!(app.reconciled.kept, 2);
    assert_eq!(app.service.db.count_pooled().await.unwrap(), 2);
    // A pass of the pool, as its worker makes at start, finds it full.
    let pool = app.service.warm_pool(2);
    let started = pool.try_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(started, 0, "the kept runners did not fill the pool");
    assert_eq!(
        env.running_container_ids().await,
        before,
        "the pool was not kept as it was"
    );

    let text = app.api.metrics().await;
    assert!(
        text.contains("orchestrator_runners{state=\"warm_running\"} 2"),
        "{text}"
    );
}

/// A claimed warm container is renamed `<name>-claimed` before its row is
/// written: with the database lost after the claim, the start rebuilds it
/// as its session's runner (same endpoint, heartbeats answered), never as a
/// waiting one, and the pool hands out another.
#[tokio::test]
async fn a_claimed_warm_runner_is_still_claimed_after_a_lost_database() {
    let env = TestEnv::new();
    let app = env.spawn(&["--warm-pool-size=1"]).await;
    wait_for_pool(&app, 1).await;
    let claimed = app.api.provision(None).await;
    assert_eq!(claimed.status, 201, "{claimed:?}");
    let session = claimed.session_id().to_owned();
    // The claim is on the engine: its runner's start for the pool is at or
    // below the claim watermark.
    let pooled_at: Vec<i64> = env
        .containers()
        .await
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels?;
            (labels.get("taylored-runner-session-id") == Some(&session))
                .then(|| labels.get("taylored-runner-pooled-at")?.parse().ok())?
        })
        .collect();
    let watermark = env.claim_watermark().await.expect("a claim record");
    assert!(
        pooled_at.len() == 1 && pooled_at[0] <= watermark,
        "{pooled_at:?} above {watermark}"
    );
    wait_for_pool(&app, 1).await;
    app.stop().await;

    // The database lost: the file, its WAL and its shared memory.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db_path.display()));
    }
    let app = env.spawn(&["--warm-pool-size=1"]).await;
    let trail = env.db().await.audit_trail("(database)").await.unwrap();
    assert!(
        trail.len() == 1
            && trail[0].action == "rebuilt"
            && trail[0]
                .reason
                .contains("did not exist; rebuilt from the engine"),
        "{trail:?}"
    );
    let row = env.row(&session).await.expect("the claimed runner adopted");
    assert!(!row.pooled, "{row:?}");
    assert_eq!(app.api.heartbeat(&session).await.status, 200);
    let again = app.api.provision(Some(&session)).await;
    assert_eq!((again.status, again.endpoint()), (200, claimed.endpoint()));
    wait_for_pool(&app, 1).await;
    let next = app.api.provision(None).await;
    assert_eq!(next.status, 201, "{next:?}");
    assert_ne!(next.session_id(), session);
}

/// A kill -9 after a warm claim was marked on the engine and before its row
/// said so, then a deleted database: the start adopts the runner as its
/// session's, and no browser that comes next gets it. The test makes the
/// killed process's half-step itself, through the service's own backend
/// (no signal can be timed into a window of a millisecond): the process is
/// killed with both runners waiting, one is then marked claimed.
#[tokio::test]
async fn a_kill_9_between_a_claim_and_its_row_then_a_lost_database_hands_it_out_once() {
    use taylored_orchestrator::backend::RunnerBackend;
    use taylored_orchestrator::backend::docker::DockerBackend;
    let env = TestEnv::new();
    let warm = [("WARM_POOL_SIZE", "2")];
    let app = env.spawn_binary(&warm).await;
    wait_for_warm_rows(&env, 2).await;
    app.kill_9();
    let rows = env.db().await.all().await.unwrap();
    let half = rows.iter().find(|row| row.pooled).unwrap().clone();
    let backend = DockerBackend::connect(&env.settings(&[])).unwrap();
    backend
        .mark_claimed(half.container_id.as_deref().unwrap(), &half.container_name)
        .await
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db_path.display()));
    }

    let app = env.spawn_binary(&warm).await;
    let row = env
        .row(&half.session_id)
        .await
        .expect("the claimed runner adopted");
    assert!(!row.pooled, "{row:?}");
    assert_eq!(app.api.heartbeat(&half.session_id).await.status, 200);
    // The other waiting one, then fresh or refilled ones: never the claimed.
    let mut given = HashSet::new();
    for _ in 0..3 {
        let next = app.api.provision(None).await;
        assert_eq!(next.status, 201, "{next:?}");
        assert_ne!(next.session_id(), half.session_id, "handed out twice");
        assert!(given.insert(next.session_id().to_owned()), "{next:?}");
    }
}

/// A restore from a backup taken before a warm claim: the restored rows call
/// the claimed runner warm, but the engine's claim record says it may have
/// been handed out, so the start keeps it as its session's (heartbeats
/// answered) and never hands it to the next browser.
#[tokio::test]
async fn a_restore_older_than_a_warm_claim_never_hands_the_runner_out_again() {
    let env = TestEnv::new();
    let warm = [("WARM_POOL_SIZE", "2")];
    let app = env.spawn_binary(&warm).await;
    wait_for_warm_rows(&env, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("before-the-claim.db");
    let (ok, _, stderr) =
        crate::operator::operator(&env, &["backup", &backup.display().to_string()]);
    assert!(ok, "{stderr}");
    let claimed = app.api.provision(None).await;
    assert_eq!(claimed.status, 201, "{claimed:?}");
    let session = claimed.session_id().to_owned();
    assert!(app.terminate().await.success());

    for stale in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{stale}", env.db_path.display()));
    }
    std::fs::copy(&backup, &env.db_path).unwrap();
    let app = env.spawn_binary(&warm).await;
    let row = env.row(&session).await.expect("the claimed runner kept");
    assert!(!row.pooled, "restored as waiting: {row:?}");
    assert_eq!(app.api.heartbeat(&session).await.status, 200);
    let again = app.api.provision(Some(&session)).await;
    assert_eq!((again.status, again.endpoint()), (200, claimed.endpoint()));
    let mut given = HashSet::new();
    for _ in 0..3 {
        let next = app.api.provision(None).await;
        assert_eq!(next.status, 201, "{next:?}");
        assert_ne!(next.session_id(), session, "handed out twice");
        assert!(given.insert(next.session_id().to_owned()), "{next:?}");
    }
}
