//! Races, made deterministic by parking the backend's starts and removals
//! (`hold_starts`, `hold_removes`) at the moment the engine has them.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::future::join_all;

use super::{Answer, Service, audit, deprovision_request, provision_request, send};
use crate::db::RunnerState;
use crate::reaper::ReapOutcome;

/// A provision of `session` sent on its own task, to race with others.
fn in_flight_provision(service: &Service, session: &str) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(send(
        service.router.clone(),
        provision_request(Some(session), None),
    ))
}

/// A deprovision of `session` sent on its own task.
fn in_flight_deprovision(service: &Service, session: &str) -> tokio::task::JoinHandle<Answer> {
    tokio::spawn(send(service.router.clone(), deprovision_request(session)))
}

#[tokio::test]
async fn concurrent_provisions_of_one_session_get_one_runner() {
    let service = Service::new(&[]).await;
    service.backend().hold_starts();
    let requests: Vec<_> = (0..20)
        .map(|_| in_flight_provision(&service, "s-1"))
        .collect();
    super::held_starts(service.backend(), 1).await;
    assert_eq!(
        service.existing_row("s-1").await.state,
        RunnerState::Provisioning
    );
    service.backend().release_starts();
    let answers: Vec<_> = join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let created = answers
        .iter()
        .filter(|answer| answer.status == StatusCode::CREATED)
        .count();
    let existing = answers
        .iter()
        .filter(|answer| {
            answer.status == StatusCode::OK
                && answer.body["message"] == "Runner already exists for this session."
        })
        .count();
    assert_eq!((created, existing), (1, 19), "{answers:?}");
    let runner = service.running_runner("s-1");
    let endpoint = format!("http://localhost:{}", runner.host_port.unwrap());
    assert!(answers.iter().all(|answer| answer.endpoint() == endpoint));
    assert_eq!(service.backend().calls().start, 1);
    assert_eq!(service.rows().await.len(), 1);
    assert_eq!(
        service.audit("s-1").await,
        [audit("api", "provisioned", "provision request")]
    );
}

#[tokio::test]
async fn concurrent_claims_of_the_warm_pool_get_distinct_runners() {
    let service = Service::new(&["--warm-pool-size=2"]).await;
    let pool = service.warm_pool(2);
    pool.try_once(&Default::default()).await.unwrap();
    let requests: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send(service.router.clone(), provision_request(None, None))))
        .collect();
    let mut sessions: Vec<String> = join_all(requests)
        .await
        .into_iter()
        .map(|answer| {
            let answer = answer.unwrap();
            assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
            answer.session()
        })
        .collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions.len(), 3);
    // Two were claimed, one started cold.
    assert_eq!(service.backend().calls().start, 3);
    assert!(service.rows().await.iter().all(|row| !row.pooled));
}

#[tokio::test]
async fn a_heartbeat_during_a_provision_is_404_until_the_runner_runs() {
    let service = Service::new(&[]).await;
    service.backend().hold_starts();
    let provision = in_flight_provision(&service, "s-1");
    super::held_starts(service.backend(), 1).await;
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::NOT_FOUND);
    service.backend().release_starts();
    assert_eq!(provision.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_heartbeat_during_the_reapers_removal_is_404_and_the_next_provision_is_fresh() {
    let service = Service::new(&[]).await;
    let old = service.provisioned("s-1").await;
    service.backend().hold_removes();
    let reaper = service.reaper();
    let sweep = tokio::spawn(async move {
        reaper
            .try_once(chrono::Utc::now() + Duration::from_secs(61))
            .await
    });
    super::held_removes(service.backend(), 1).await;

    // The removal is with the engine: the runner still runs, its heartbeat
    // is refused, and a provision waits for the removal to finish.
    assert_eq!(service.running_runner("s-1"), old);
    service.heartbeat("s-1").await.assert_error(
        StatusCode::NOT_FOUND,
        "RUNNER_NOT_FOUND",
        "No active runner found for this session ID.",
    );
    assert_eq!(
        service.existing_row("s-1").await.state,
        RunnerState::Removing
    );
    let provision = in_flight_provision(&service, "s-1");
    service.backend().release_removes();

    let outcome = sweep.await.unwrap().unwrap();
    assert_eq!(
        outcome,
        ReapOutcome {
            reaped: 1,
            ..ReapOutcome::default()
        }
    );
    let answer = provision.await.unwrap();
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    let fresh = service.running_runner("s-1");
    assert_ne!(fresh.id, old.id);
    assert_eq!(
        service.existing_row("s-1").await.container_id,
        Some(fresh.id)
    );
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::OK);
    assert_eq!(
        service.audit("s-1").await,
        [
            audit("api", "provisioned", "provision request"),
            audit(
                "reaper",
                "reaped",
                "no heartbeat within INACTIVITY_TIMEOUT_SECONDS"
            ),
            audit("api", "provisioned", "provision request"),
        ]
    );
}

#[tokio::test]
async fn a_heartbeat_before_the_reapers_removal_spares_the_runner() {
    // Nine idle runners: the sweep removes eight at a time, and holding
    // their removals at the engine leaves the ninth queried as idle but not
    // yet removed when its heartbeat arrives.
    let service = Service::new(&[]).await;
    for index in 0..9 {
        service.provisioned(&format!("idle-{index}")).await;
    }
    let sweep_now = super::next_millisecond().await + chrono::Duration::seconds(60);
    service.backend().hold_removes();
    let reaper = service.reaper();
    let sweep = tokio::spawn(async move { reaper.try_once(sweep_now).await });
    super::held_removes(service.backend(), 8).await;

    let waiting: Vec<_> = service
        .rows()
        .await
        .into_iter()
        .filter(|row| row.state == RunnerState::Running)
        .collect();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let spared = waiting[0].session_id.clone();
    let runner = service.running_runner(&spared);
    assert_eq!(service.heartbeat(&spared).await.status, StatusCode::OK);
    service.backend().release_removes();

    let outcome = sweep.await.unwrap().unwrap();
    assert_eq!(
        outcome,
        ReapOutcome {
            reaped: 8,
            spared: 1,
            failed: 0
        }
    );
    let rows = service.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].session_id.as_str(), rows[0].state),
        (spared.as_str(), RunnerState::Running)
    );
    assert_eq!(service.backend().runners(), [runner]);
    assert_eq!(service.heartbeat(&spared).await.status, StatusCode::OK);
    assert_eq!(service.audit(&spared).await.len(), 1);
}

#[tokio::test]
async fn a_deprovision_during_a_provision_of_the_session_removes_what_it_made() {
    let service = Service::new(&[]).await;
    service.backend().hold_starts();
    let provision = in_flight_provision(&service, "s-1");
    super::held_starts(service.backend(), 1).await;
    let deprovision = in_flight_deprovision(&service, "s-1");
    service.backend().release_starts();

    let provisioned = provision.await.unwrap();
    assert_eq!(provisioned.status, StatusCode::CREATED, "{provisioned:?}");
    let deprovisioned = deprovision.await.unwrap();
    assert_eq!(deprovisioned.status, StatusCode::OK, "{deprovisioned:?}");
    service.assert_gone("s-1").await;
    assert_eq!(
        service.audit("s-1").await,
        [
            audit("api", "provisioned", "provision request"),
            audit("api", "deprovisioned", "deprovision request"),
        ]
    );
    service.provisioned("s-1").await;
}

#[tokio::test]
async fn a_provision_during_a_deprovision_of_the_session_gets_a_fresh_runner() {
    let service = Service::new(&[]).await;
    let old = service.provisioned("s-1").await;
    service.backend().hold_removes();
    let deprovision = in_flight_deprovision(&service, "s-1");
    super::held_removes(service.backend(), 1).await;
    let provision = in_flight_provision(&service, "s-1");
    service.backend().release_removes();

    assert_eq!(deprovision.await.unwrap().status, StatusCode::OK);
    let answer = provision.await.unwrap();
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    let fresh = service.running_runner("s-1");
    assert_ne!(fresh.id, old.id);
    assert_eq!(
        service.existing_row("s-1").await.state,
        RunnerState::Running
    );
}

#[tokio::test]
async fn concurrent_deprovisions_remove_once() {
    let service = Service::new(&[]).await;
    service.provisioned("s-1").await;
    service.backend().hold_removes();
    let first = in_flight_deprovision(&service, "s-1");
    super::held_removes(service.backend(), 1).await;
    let second = in_flight_deprovision(&service, "s-1");
    service.backend().release_removes();

    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    second.await.unwrap().assert_error(
        StatusCode::NOT_FOUND,
        "RUNNER_NOT_FOUND",
        "No active runner found for this session ID.",
    );
    assert_eq!(service.backend().calls().remove, 1);
    service.assert_gone("s-1").await;
}

#[tokio::test]
async fn the_engine_going_away_mid_start_is_503_and_nothing_leaks() {
    let service = Service::new(&[]).await;
    service.backend().hold_starts();
    let provision = in_flight_provision(&service, "s-1");
    super::held_starts(service.backend(), 1).await;
    service.backend().set_reachable(false);
    service.backend().release_starts();

    let answer = provision.await.unwrap();
    answer.error(StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE");
    assert_eq!(answer.headers["retry-after"], "5");
    // The created container could not be removed either: its row stays
    // `removing` for the reaper, and the session has no runner meanwhile.
    assert_eq!(
        service.existing_row("s-1").await.state,
        RunnerState::Removing
    );
    assert_eq!(service.runners_of("s-1").len(), 1);
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::NOT_FOUND);
    service
        .provision(Some("other"))
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE");

    service.backend().set_reachable(true);
    assert_eq!(
        service.sweep(Duration::ZERO).await,
        ReapOutcome {
            reaped: 1,
            ..ReapOutcome::default()
        }
    );
    service.assert_gone("s-1").await;
    // The sweep reached the engine, but only a health check clears the flag.
    let ready = service
        .send(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(ready.status, StatusCode::OK);
    service.provisioned("s-1").await;
}
