//! The warm pool, filled one step (`try_once`) at a time.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::FutureExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Service, audit};
use crate::db::RunnerState;
use crate::warm_pool::WarmPool;

async fn pooled(service: &Service) -> Vec<String> {
    service
        .rows()
        .await
        .into_iter()
        .filter(|row| row.pooled && row.state == RunnerState::Running)
        .map(|row| row.session_id)
        .collect()
}

async fn filled(size: u32) -> (Service, WarmPool) {
    let service = Service::new(&[&format!("--warm-pool-size={size}")]).await;
    let pool = service.warm_pool(size);
    let started = pool.try_once(&CancellationToken::new()).await.unwrap();
    assert_eq!(started, size);
    (service, pool)
}

#[tokio::test]
async fn the_pool_fills_to_its_size_and_no_further() {
    let (service, pool) = filled(3).await;
    let waiting = pooled(&service).await;
    assert_eq!(waiting.len(), 3);
    let runners = service.backend().runners();
    assert_eq!(runners.len(), 3);
    assert!(runners.iter().all(|runner| runner.running && runner.pooled));
    for session in &waiting {
        assert_eq!(
            service.audit(session).await,
            [audit("api", "provisioned", "warm pool refill")]
        );
    }
    assert_eq!(pool.try_once(&CancellationToken::new()).await.unwrap(), 0);
    assert_eq!(service.backend().calls().start, 3);
}

#[tokio::test]
async fn a_provision_without_a_session_claims_a_warm_runner_and_the_pool_refills() {
    let (service, pool) = filled(2).await;
    let waiting = pooled(&service).await;
    let starts = service.backend().calls().start;

    let answer = service.provision_with(None, json!({})).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(answer.body["message"], "Runner provisioned successfully.");
    let session = answer.session();
    assert!(waiting.contains(&session), "{session} not in {waiting:?}");
    assert_eq!(service.backend().calls().start, starts);
    let runner = service.running_runner(&session);
    assert_eq!(
        answer.endpoint(),
        format!("http://localhost:{}", runner.host_port.unwrap())
    );
    let row = service.existing_row(&session).await;
    assert!(!row.pooled);
    assert_eq!(
        service.audit(&session).await.last(),
        Some(&audit(
            "api",
            "claimed_from_pool",
            "provision without a session id"
        ))
    );
    assert_eq!(service.heartbeat(&session).await.status, StatusCode::OK);
    // The claim woke the pool, which starts one to replace it.
    assert!(
        service
            .harness
            .service
            .warm_pool_refill()
            .notified()
            .now_or_never()
            .is_some()
    );
    assert_eq!(pool.try_once(&CancellationToken::new()).await.unwrap(), 1);
    assert_eq!(pooled(&service).await.len(), 2);
    // A claimed runner is a client's: the reaper treats it as one.
    assert_eq!(
        service
            .sweep(std::time::Duration::from_secs(61))
            .await
            .reaped,
        1
    );
    service.assert_gone(&session).await;
}

#[tokio::test]
async fn provisions_with_a_session_or_another_network_take_the_cold_path() {
    let (service, _pool) = filled(1).await;
    let waiting = pooled(&service).await;
    service.provisioned("mine").await;
    let isolated = service
        .provision_with(None, json!({ "networkMode": "none" }))
        .await;
    assert_eq!(isolated.status, StatusCode::CREATED);
    assert!(!waiting.contains(&isolated.session()));
    assert_eq!(pooled(&service).await, waiting);
    assert_eq!(service.backend().calls().start, 3);
}

#[tokio::test]
async fn an_empty_pool_falls_back_to_a_cold_start() {
    let (service, _pool) = filled(1).await;
    let first = service.provision(None).await;
    let second = service.provision(None).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(first.session(), second.session());
    service.running_runner(&second.session());
    assert_eq!(service.backend().calls().start, 2);
    assert!(pooled(&service).await.is_empty());
}

#[tokio::test]
async fn a_failed_refill_leaves_no_row_and_the_next_step_retries() {
    use crate::backend::memory::StartFailure::ImageMissing;
    let service = Service::new(&["--warm-pool-size=2"]).await;
    let pool = service.warm_pool(2);
    // Every start of the step fails: the step says so.
    service
        .backend()
        .fail_next_starts([ImageMissing, ImageMissing]);
    assert!(pool.try_once(&CancellationToken::new()).await.is_err());
    assert!(service.rows().await.is_empty());
    assert_eq!(pool.try_once(&CancellationToken::new()).await.unwrap(), 2);
    assert_eq!(pooled(&service).await.len(), 2);
    // One of two fails: the other is kept, the next step starts the missing one.
    for _ in 0..2 {
        service.provision_with(None, json!({})).await;
    }
    service.backend().fail_next_starts([ImageMissing]);
    assert_eq!(pool.try_once(&CancellationToken::new()).await.unwrap(), 1);
    assert_eq!(pooled(&service).await.len(), 1);
    assert_eq!(pool.try_once(&CancellationToken::new()).await.unwrap(), 1);
    assert_eq!(pooled(&service).await.len(), 2);
}

#[tokio::test]
async fn a_cancelled_step_starts_nothing() {
    let service = Service::new(&["--warm-pool-size=2"]).await;
    let pool = service.warm_pool(2);
    let stopped = CancellationToken::new();
    stopped.cancel();
    assert_eq!(pool.try_once(&stopped).await.unwrap(), 0);
    assert_eq!(service.backend().calls().start, 0);
}

/// A claim is marked on the engine before its row: a crash between the two
/// followed by a lost database rebuilds the runner as claimed (its session's,
/// not the pool's), so it is never handed to a second client.
#[tokio::test]
async fn a_claim_marked_on_the_engine_survives_a_lost_database() {
    use crate::backend::RunnerBackend;
    let (service, _pool) = filled(2).await;
    let waiting = pooled(&service).await;

    // A claim through the API renames the container first.
    let claimed = service.provision_with(None, json!({})).await.session();
    let runner = service.running_runner(&claimed);
    assert!(
        !runner.pooled && runner.name.ends_with("-claimed"),
        "{runner:?}"
    );

    // The other is claimed on the engine and the process dies before the
    // row is written: the row still says waiting, the engine says claimed.
    let half: String = waiting.iter().find(|s| **s != claimed).unwrap().clone();
    let row = service.existing_row(&half).await;
    service
        .backend()
        .mark_claimed(row.container_id.as_deref().unwrap(), &row.container_name)
        .await
        .unwrap();
    assert!(service.existing_row(&half).await.pooled);

    // Then the database is lost: every row rebuilt from the engine.
    sqlx::query("DELETE FROM runners")
        .execute(service.db().pool())
        .await
        .unwrap();
    let (rebuilt, _) = service.restart(crate::config::OrphanPolicy::Adopt).await;
    assert_eq!(rebuilt.adopted, 2, "{rebuilt}");
    for session in [&claimed, &half] {
        let row = service.existing_row(session).await;
        assert!(!row.pooled && row.state == RunnerState::Running, "{row:?}");
    }
    // Neither is handed out again: with no waiting runner a provision
    // without a session starts a new one.
    service.load_running().await.unwrap();
    let fresh = service.provision_with(None, json!({})).await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{fresh:?}");
    assert!(![&claimed, &half].contains(&&fresh.session()), "{fresh:?}");
    assert_eq!(service.heartbeat(&half).await.status, StatusCode::OK);
}

/// Claims of a burst are picked in batches and marked on the engine
/// together: each concurrent provision gets a waiting runner of its own,
/// none gets one twice, and none is sent to the cold path while one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_each_take_a_waiting_runner_of_their_own() {
    let (service, _pool) = filled(6).await;
    let mut waiting = pooled(&service).await;
    let answers =
        futures_util::future::join_all((0..6).map(|_| service.provision_with(None, json!({}))))
            .await;
    let mut claimed: Vec<String> = answers
        .iter()
        .map(|answer| {
            assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
            answer.session()
        })
        .collect();
    claimed.sort();
    waiting.sort();
    assert_eq!(claimed, waiting);
    assert_eq!(
        service.backend().runners().len(),
        6,
        "a cold start was made"
    );
    assert!(pooled(&service).await.is_empty());
}

/// `WARM_POOL_SIZE=auto`: provisions that find the pool empty grow it (one
/// per miss, up to `WARM_POOL_MAX`), its refill goes to the engine through
/// the start queue (`RUNNER_STARTS_AT_ONCE` at a time), and after
/// `WARM_POOL_QUIET_SECONDS` without demand it retires waiting runners
/// down to `WARM_POOL_MIN`. Time moves with tokio's paused clock only.
#[tokio::test]
async fn an_auto_pool_grows_with_misses_up_to_its_cap_and_shrinks_after_a_quiet_period() {
    use crate::warm_pool::Step;
    let service = Service::new(&[
        "--warm-pool-size=auto",
        "--warm-pool-min=1",
        "--warm-pool-max=4",
        "--warm-pool-quiet=60",
        "--runner-starts-at-once=2",
        "--max-concurrent-runners=0",
    ])
    .await;
    let pool = service.harness.warm_pool();
    let mut sizer = pool.sizer();
    let running = CancellationToken::new();
    let step = pool.step(&mut sizer, &running).await.unwrap();
    assert_eq!(
        step,
        Step {
            target: 1,
            started: 1,
            retired: 0
        }
    );

    // A class of 6 arrives: one claims the waiting runner, 5 go cold.
    for _ in 0..6 {
        let answer = service.provision_with(None, json!({})).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    }
    assert_eq!(service.runners().warm_demand().claims, 1);
    assert_eq!(service.runners().warm_demand().misses, 5);

    // The next step grows to the cap; its 4 starts queue 2 at a time.
    service.backend().hold_starts();
    let stepping = {
        let (pool, running) = (pool.clone(), running.clone());
        tokio::spawn(async move {
            let step = pool.step(&mut sizer, &running).await;
            (step, sizer)
        })
    };
    super::held_starts(service.backend(), 2).await;
    service.runners().starts().wait_for_waiting(2).await;
    assert_eq!(service.runners().starts().in_flight(), 2);
    service.backend().release_starts();
    let (step, mut sizer) = stepping.await.unwrap();
    assert_eq!(
        step.unwrap(),
        Step {
            target: 4,
            started: 4,
            retired: 0
        }
    );
    assert_eq!(pooled(&service).await.len(), 4);
    let text = service.harness.service.metrics.render(&[]);
    assert!(
        text.contains("orchestrator_warm_pool_target 4")
            && text.contains("orchestrator_warm_pool_resizes_total{state=\"grew\"} 1"),
        "{text}"
    );

    // Quiet: not yet at 59 s, back to the minimum at 60 s.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(59)).await;
    tokio::time::resume();
    let step = pool.step(&mut sizer, &running).await.unwrap();
    assert_eq!(
        step,
        Step {
            target: 4,
            started: 0,
            retired: 0
        }
    );
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::time::resume();
    let waiting = pooled(&service).await;
    let step = pool.step(&mut sizer, &running).await.unwrap();
    assert_eq!(
        step,
        Step {
            target: 1,
            started: 0,
            retired: 3
        }
    );
    let left = pooled(&service).await;
    assert_eq!(left.len(), 1);
    let retired: Vec<&String> = waiting.iter().filter(|s| !left.contains(s)).collect();
    assert_eq!(retired.len(), 3);
    for session in retired {
        assert!(
            service
                .backend()
                .runners()
                .iter()
                .all(|r| &r.session_id != session)
        );
        let trail = service.db().audit_trail(session).await.unwrap();
        assert!(
            trail
                .iter()
                .any(|entry| entry.reason.contains("WARM_POOL_MIN")),
            "{trail:?}"
        );
    }
    let text = service.harness.service.metrics.render(&[]);
    assert!(
        text.contains("orchestrator_warm_pool_target 1")
            && text.contains("orchestrator_warm_pool_resizes_total{state=\"shrank\"} 1"),
        "{text}"
    );
}
