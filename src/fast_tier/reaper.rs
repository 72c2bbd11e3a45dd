//! The reaper, one sweep (`try_once`) at a time, at a time of the test's
//! choosing: no timer is waited for.

use std::time::Duration;

use axum::http::StatusCode;

use super::{Service, audit, next_millisecond};
use crate::reaper::ReapOutcome;

/// Past the default `INACTIVITY_TIMEOUT_SECONDS` (60).
const IDLE: Duration = Duration::from_secs(61);

const IDLE_REASON: &str = "no heartbeat within INACTIVITY_TIMEOUT_SECONDS";

fn reaped(count: usize) -> ReapOutcome {
    ReapOutcome {
        reaped: count,
        ..ReapOutcome::default()
    }
}

#[tokio::test]
async fn a_runner_without_heartbeats_is_reaped_and_its_session_starts_fresh() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("idle").await;

    assert_eq!(service.sweep(IDLE).await, reaped(1));
    service.assert_gone("idle").await;
    assert_eq!(
        service.audit("idle").await,
        [
            audit("api", "provisioned", "provision request"),
            audit("reaper", "reaped", IDLE_REASON),
        ]
    );
    let fresh = service.provisioned("idle").await;
    assert_ne!(fresh.id, runner.id);
}

#[tokio::test]
async fn a_fresh_runner_is_left_alone() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("fresh").await;
    assert_eq!(
        service.sweep(Duration::from_secs(59)).await,
        ReapOutcome::default()
    );
    assert_eq!(service.running_runner("fresh"), runner);
    assert_eq!(service.heartbeat("fresh").await.status, StatusCode::OK);
    assert_eq!(service.audit("fresh").await.len(), 1);
}

#[tokio::test]
async fn a_heartbeat_after_the_cutoff_spares_its_runner_only() {
    let service = Service::new(&[]).await;
    service.provisioned("quiet").await;
    let alive = service.provisioned("alive").await;
    // The cutoff lies after both provisions, before the heartbeat.
    let cutoff = next_millisecond().await;
    assert_eq!(service.heartbeat("alive").await.status, StatusCode::OK);

    let outcome = service
        .sweep_at(cutoff + chrono::Duration::seconds(60))
        .await;
    assert_eq!(outcome, reaped(1));
    service.assert_gone("quiet").await;
    assert_eq!(service.running_runner("alive"), alive);
    assert_eq!(service.heartbeat("alive").await.status, StatusCode::OK);
    // The sweep wrote the heartbeat before it looked.
    let row = service.existing_row("alive").await;
    assert!(row.last_heartbeat_at >= crate::db::timestamp(cutoff));
}

#[tokio::test]
async fn a_heartbeat_the_database_does_not_show_yet_still_spares_the_runner() {
    // The sweep's query sees a stale row, as when the heartbeat lands after
    // it looked: the heartbeat held in memory decides.
    let service = Service::new(&[]).await;
    let runner = service.provisioned("s-1").await;
    let cutoff = next_millisecond().await;
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::OK);
    service.flush_heartbeats().await.unwrap();
    let stale = service.existing_row("s-1").await.created_at;
    service
        .force_row("s-1", &format!("last_heartbeat_at = '{stale}'"))
        .await;

    let outcome = service
        .sweep_at(cutoff + chrono::Duration::seconds(60))
        .await;
    assert_eq!(
        outcome,
        ReapOutcome {
            spared: 1,
            ..ReapOutcome::default()
        }
    );
    assert_eq!(service.running_runner("s-1"), runner);
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::OK);
    assert_eq!(service.audit("s-1").await.len(), 1);
}

#[tokio::test]
async fn max_runner_age_removes_a_runner_however_active() {
    let service = Service::new(&["--max-runner-age=120", "--inactivity-timeout=3600"]).await;
    service.provisioned("old").await;
    assert_eq!(service.heartbeat("old").await.status, StatusCode::OK);

    assert_eq!(
        service.sweep(Duration::from_secs(100)).await,
        ReapOutcome::default()
    );
    service.running_runner("old");
    assert_eq!(service.sweep(Duration::from_secs(121)).await, reaped(1));
    service.assert_gone("old").await;
    assert_eq!(
        service.audit("old").await.last(),
        Some(&audit(
            "reaper",
            "reaped",
            "older than MAX_RUNNER_AGE_SECONDS"
        ))
    );
}

#[tokio::test]
async fn without_max_runner_age_an_active_runner_lives_on() {
    let service = Service::new(&["--inactivity-timeout=3600"]).await;
    service.provisioned("old").await;
    assert_eq!(
        service.sweep(Duration::from_secs(3599)).await,
        ReapOutcome::default()
    );
    service.running_runner("old");
}

#[tokio::test]
async fn a_removal_the_engine_refused_is_finished_by_a_later_sweep() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("s-1").await;
    service.backend().set_reachable(false);
    let refused = service.deprovision("s-1").await;
    refused.error(StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE");
    // The row stays for the reaper; the runner answers no more heartbeats.
    assert_eq!(
        service.existing_row("s-1").await.state,
        crate::db::RunnerState::Removing
    );
    assert_eq!(service.runners_of("s-1"), [runner]);
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::NOT_FOUND);

    // While the engine is away the sweep keeps the row.
    assert_eq!(
        service.sweep(Duration::ZERO).await,
        ReapOutcome {
            failed: 1,
            ..ReapOutcome::default()
        }
    );
    assert!(service.row("s-1").await.is_some());

    service.backend().set_reachable(true);
    assert_eq!(service.sweep(Duration::ZERO).await, reaped(1));
    service.assert_gone("s-1").await;
    assert_eq!(
        service.audit("s-1").await.last(),
        Some(&audit(
            "reaper",
            "reaped",
            "finishing an earlier removal that failed"
        ))
    );
}

#[tokio::test]
async fn waiting_warm_runners_are_never_reaped() {
    let service = Service::new(&["--warm-pool-size=1"]).await;
    let pool = service.warm_pool(1);
    assert_eq!(pool.try_once(&Default::default()).await.unwrap(), 1);
    assert_eq!(
        service.sweep(Duration::from_secs(24 * 3600)).await,
        ReapOutcome::default()
    );
    let rows = service.rows().await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].pooled);
    assert!(service.backend().runners()[0].running);
}

#[tokio::test]
async fn many_idle_runners_are_reaped_in_one_sweep() {
    let service = Service::new(&[]).await;
    for index in 0..12 {
        service.provisioned(&format!("idle-{index}")).await;
    }
    assert_eq!(service.sweep(IDLE).await, reaped(12));
    assert!(service.rows().await.is_empty());
    assert!(service.backend().runners().is_empty());
}
