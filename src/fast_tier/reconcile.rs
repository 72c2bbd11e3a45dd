//! Applying a reconcile: the one at start (over what a previous process
//! left) and the ones while serving (drift: runners changed behind the
//! service's back).

use axum::http::StatusCode;
use futures_util::StreamExt;

use super::{Service, audit};
use crate::backend::RunnerBackend;
use crate::config::OrphanPolicy;
use crate::db::RunnerState;
use crate::domain::RunnerKind;
use crate::domain::Summary;
use crate::lifecycle::Provisioned;

#[tokio::test]
async fn a_restart_keeps_running_runners_and_their_heartbeats() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("s-1").await;
    let endpoint = service.provision(Some("s-1")).await.endpoint().to_owned();

    let (before, after) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!(
        before,
        Summary {
            kept: 1,
            ..Summary::default()
        }
    );
    assert_eq!(after, Summary::default());
    assert_eq!(service.running_runner("s-1"), runner);
    let row = service.existing_row("s-1").await;
    assert_eq!(row.state, RunnerState::Running);
    assert_eq!(row.container_id, Some(runner.id.clone()));
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::OK);
    let again = service.provision(Some("s-1")).await;
    assert_eq!(
        (again.status, again.endpoint()),
        (StatusCode::OK, endpoint.as_str())
    );
    assert_eq!(
        service.audit("s-1").await.last(),
        Some(&audit(
            "reconciler",
            "kept",
            "runner still running after a restart"
        ))
    );
}

#[tokio::test]
async fn a_restart_adopts_a_running_runner_without_a_row() {
    let service = Service::new(&[]).await;
    let orphan = service
        .start_behind_the_back("orphan", RunnerKind::Session)
        .await;

    let (before, _) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!(before.adopted, 1);
    let row = service.existing_row("orphan").await;
    assert_eq!(row.state, RunnerState::Running);
    assert_eq!(row.container_id, Some(orphan.id.clone()));
    assert_eq!(row.host_port, orphan.host_port);
    // Its age counts from the engine's creation time, not the adoption
    // (MAX_RUNNER_AGE_SECONDS); its heartbeat clock starts now.
    let created = chrono::DateTime::from_timestamp(orphan.created, 0).unwrap();
    assert_eq!(row.created_at, crate::db::timestamp(created));
    assert!(
        row.last_heartbeat_at
            >= crate::db::timestamp(chrono::Utc::now() - chrono::Duration::seconds(5))
    );
    assert_eq!(service.heartbeat("orphan").await.status, StatusCode::OK);
    let again = service.provision(Some("orphan")).await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(
        again.endpoint(),
        format!("http://localhost:{}", orphan.host_port.unwrap())
    );
    assert_eq!(
        service.audit("orphan").await,
        [audit(
            "reconciler",
            "adopted",
            "running runner without a row"
        )]
    );
}

#[tokio::test]
async fn a_restart_with_orphan_policy_remove_removes_orphans() {
    let service = Service::new(&[]).await;
    service
        .start_behind_the_back("orphan", RunnerKind::Session)
        .await;

    let (before, after) = service.restart(OrphanPolicy::Remove).await;
    assert_eq!((before.adopted, after.containers_removed), (0, 1));
    service.assert_gone("orphan").await;
    assert_eq!(
        service.audit("orphan").await,
        [audit(
            "reconciler",
            "container_removed",
            "running runner without a row (ORPHAN_POLICY=remove)"
        )]
    );
}

#[tokio::test]
async fn a_restart_removes_stopped_orphans_under_either_policy() {
    for policy in [OrphanPolicy::Adopt, OrphanPolicy::Remove] {
        let service = Service::new(&[]).await;
        let orphan = service
            .start_behind_the_back("stopped", RunnerKind::Session)
            .await;
        assert!(service.backend().kill(&orphan.id));
        let (_, after) = service.restart(policy).await;
        assert_eq!(after.containers_removed, 1, "{policy:?}");
        service.assert_gone("stopped").await;
        assert_eq!(
            service.audit("stopped").await,
            [audit(
                "reconciler",
                "container_removed",
                "stopped runner without a row"
            )]
        );
    }
}

#[tokio::test]
async fn a_restart_drops_the_row_of_a_runner_that_is_gone() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("gone").await;
    assert!(service.backend().destroy(&runner.id));

    let (before, after) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!((before.rows_dropped, after), (1, Summary::default()));
    service.assert_gone("gone").await;
    assert_eq!(
        service.audit("gone").await.last(),
        Some(&audit(
            "reconciler",
            "dropped",
            "runner container is missing"
        ))
    );
    let fresh = service.provisioned("gone").await;
    assert_ne!(fresh.id, runner.id);
}

#[tokio::test]
async fn a_restart_removes_a_stopped_runner_and_answers_404_before_it_is_done() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("dead").await;
    assert!(service.backend().kill(&runner.id));

    let reconciler = service.reconciler();
    let (_, repairs) = reconciler.run_startup().await.unwrap();
    service.load_running().await.unwrap();
    // The removal is left for after readiness; meanwhile the row is out of
    // `running` and the heartbeat says so.
    assert_eq!(repairs.removals(), 1);
    assert_eq!(
        service.existing_row("dead").await.state,
        RunnerState::Removing
    );
    assert_eq!(
        service.heartbeat("dead").await.status,
        StatusCode::NOT_FOUND
    );

    let after = repairs.run(&reconciler).await;
    assert_eq!((after.containers_removed, after.rows_dropped), (1, 1));
    service.assert_gone("dead").await;
    let trail = service.audit("dead").await;
    assert_eq!(
        trail[trail.len() - 2..],
        [
            audit(
                "reconciler",
                "container_removed",
                "runner container is not running"
            ),
            audit("reconciler", "dropped", "runner container is not running"),
        ]
    );
}

#[tokio::test]
async fn a_restart_finishes_a_provision_whose_runner_started() {
    // Killed after the start, before the row said `running`.
    let service = Service::new(&[]).await;
    let runner = service.provisioned("half").await;
    service
        .force_row(
            "half",
            "state = 'provisioning', container_id = NULL, host_port = NULL",
        )
        .await;
    service.age_row("half").await;
    service.load_running().await.unwrap();
    assert_eq!(
        service.heartbeat("half").await.status,
        StatusCode::NOT_FOUND
    );

    let (before, _) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!(before.kept, 1);
    let row = service.existing_row("half").await;
    assert_eq!(row.state, RunnerState::Running);
    assert_eq!(row.container_id, Some(runner.id.clone()));
    assert_eq!(row.host_port, runner.host_port);
    assert_eq!(service.heartbeat("half").await.status, StatusCode::OK);
    assert_eq!(
        service.audit("half").await.last(),
        Some(&audit(
            "reconciler",
            "kept",
            "finishing an interrupted provision"
        ))
    );
}

#[tokio::test]
async fn a_restart_undoes_a_provision_cut_off_at_the_engine() {
    let service = Service::new(&[]).await;
    service.backend().hold_starts();
    let runners = service.runners().clone();
    let provision = tokio::spawn(async move {
        let session = crate::domain::SessionId::parse("cut").unwrap();
        runners
            .provision(Some(session), &crate::backend::NetworkMode::Default)
            .await
    });
    super::held_starts(service.backend(), 1).await;
    // The process dies here: its container is created, not started.
    provision.abort();
    assert!(provision.await.unwrap_err().is_cancelled());
    service.backend().release_starts();
    assert_eq!(
        service.existing_row("cut").await.state,
        RunnerState::Provisioning
    );
    let created = service.runners_of("cut");
    assert_eq!(created.len(), 1);
    assert!(!created[0].running);
    service.age_row("cut").await;

    let (_, after) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!((after.containers_removed, after.rows_dropped), (1, 1));
    service.assert_gone("cut").await;
    service.provisioned("cut").await;
}

#[tokio::test]
async fn a_restart_drops_a_provision_cut_off_before_its_container_existed() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("early").await;
    assert!(service.backend().destroy(&runner.id));
    service
        .force_row(
            "early",
            "state = 'provisioning', container_id = NULL, host_port = NULL",
        )
        .await;
    service.age_row("early").await;

    let (before, _) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!(before.rows_dropped, 1);
    service.assert_gone("early").await;
    assert_eq!(
        service.audit("early").await.last(),
        Some(&audit(
            "reconciler",
            "dropped",
            "provision interrupted before its container existed"
        ))
    );
}

#[tokio::test]
async fn a_restart_finishes_an_interrupted_removal() {
    let service = Service::new(&[]).await;
    service.provisioned("leaving").await;
    service.backend().set_reachable(false);
    service
        .deprovision("leaving")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE");
    service.backend().set_reachable(true);
    service.age_row("leaving").await;

    let (_, after) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!((after.containers_removed, after.rows_dropped), (1, 1));
    service.assert_gone("leaving").await;
    let trail = service.audit("leaving").await;
    assert_eq!(
        trail.last(),
        Some(&audit(
            "reconciler",
            "dropped",
            "finishing an interrupted removal"
        ))
    );
}

#[tokio::test]
async fn a_restart_keeps_one_runner_of_a_session_with_duplicates() {
    let service = Service::new(&[]).await;
    let tracked = service.provisioned("dup").await;
    let name = "second-dup";
    service
        .backend()
        .start(&crate::backend::RunnerSpec {
            session_id: "dup",
            name,
            network_mode: &crate::backend::NetworkMode::Default,
            kind: RunnerKind::Session,
            pooled: false,
            token: None,
        })
        .await
        .unwrap();
    assert_eq!(service.runners_of("dup").len(), 2);

    let (before, after) = service.restart(OrphanPolicy::Adopt).await;
    assert_eq!((before.kept, after.containers_removed), (1, 1));
    assert_eq!(service.running_runner("dup"), tracked);
    assert_eq!(
        service.existing_row("dup").await.container_id,
        Some(tracked.id)
    );
}

#[tokio::test]
async fn a_restart_with_the_engine_away_fails_and_changes_nothing() {
    let service = Service::new(&[]).await;
    service.provisioned("s-1").await;
    let rows = service.rows().await;
    service.backend().set_reachable(false);
    assert!(service.reconciler().run_startup().await.is_err());
    assert_eq!(service.rows().await, rows);
}

#[tokio::test]
async fn drift_drops_the_row_of_a_runner_killed_behind_the_services_back() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("killed").await;
    let bystander = service.provisioned("bystander").await;
    assert!(service.backend().kill(&runner.id));

    let summary = service.reconciler().run_drift().await.unwrap();
    assert_eq!(
        summary,
        Summary {
            containers_removed: 1,
            rows_dropped: 1,
            ..Summary::default()
        }
    );
    service.assert_gone("killed").await;
    assert_eq!(service.running_runner("bystander"), bystander);
    let fresh = service.provisioned("killed").await;
    assert_ne!(fresh.id, runner.id);
    let trail = service.audit("killed").await;
    assert!(
        trail.contains(&audit(
            "reconciler",
            "dropped",
            "runner container is not running"
        )),
        "{trail:?}"
    );
}

#[tokio::test]
async fn drift_drops_the_row_of_a_runner_destroyed_behind_the_services_back() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("destroyed").await;
    assert!(service.backend().destroy(&runner.id));
    // Until a reconcile notices, the heartbeat is still answered; the drift
    // reconcile is what ends that.
    assert_eq!(service.heartbeat("destroyed").await.status, StatusCode::OK);
    let summary = service.reconciler().run_drift().await.unwrap();
    assert_eq!(
        summary,
        Summary {
            rows_dropped: 1,
            ..Summary::default()
        }
    );
    service.assert_gone("destroyed").await;
    let answer = service.provision(Some("destroyed")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(
        service.audit("destroyed").await.last(),
        Some(&audit("api", "provisioned", "provision request"))
    );
}

#[tokio::test]
async fn a_die_event_is_audited_and_repairs_its_session() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("s-1").await;
    let mut events = service.backend().events(0);
    assert!(service.backend().kill(&runner.id));
    let event = events.next().await.unwrap().unwrap();

    let summary = service.reconciler().on_event(&event).await.unwrap();
    assert_eq!((summary.containers_removed, summary.rows_dropped), (1, 1));
    service.assert_gone("s-1").await;
    let trail = service.audit("s-1").await;
    assert!(
        trail.contains(&audit(
            "reconciler",
            "engine_event",
            "container die (exit code 137)"
        )),
        "{trail:?}"
    );
}

#[tokio::test]
async fn echoes_of_the_services_own_removals_change_nothing() {
    let service = Service::new(&[]).await;
    let old = service.provisioned("s-1").await;
    let mut events = service.backend().events(0);
    assert_eq!(service.deprovision("s-1").await.status, StatusCode::OK);
    let fresh = service.provisioned("s-1").await;
    let trail = service.audit("s-1").await;
    // `die` and `destroy` of the old runner arrive after the new one runs.
    for _ in 0..2 {
        let event = events.next().await.unwrap().unwrap();
        assert_eq!(event.runner_id, old.id);
        let summary = service.reconciler().on_event(&event).await.unwrap();
        assert_eq!(summary, Summary::default());
    }
    assert_eq!(service.running_runner("s-1"), fresh);
    assert_eq!(service.audit("s-1").await, trail);
    assert_eq!(service.heartbeat("s-1").await.status, StatusCode::OK);
}

#[tokio::test]
async fn drift_leaves_agreeing_runners_alone() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("s-1").await;
    let trail = service.audit("s-1").await;
    assert_eq!(
        service.reconciler().run_drift().await.unwrap(),
        Summary::default()
    );
    assert_eq!(service.running_runner("s-1"), runner);
    assert_eq!(service.audit("s-1").await, trail);
    assert!(matches!(
        service
            .runners()
            .provision(
                Some(crate::domain::SessionId::parse("s-1").unwrap()),
                &crate::backend::NetworkMode::Default
            )
            .await,
        Ok(Provisioned::Existing(_))
    ));
}

#[tokio::test]
async fn the_reconciles_cheaper_reads_see_the_same_rows_as_the_operators_list() {
    let service = Service::new(&[]).await;
    for session in ["s-3", "s-1", "s-2"] {
        service.provisioned(session).await;
    }
    let mut all = service.rows().await;
    let mut unordered = service.db().all_unordered().await.unwrap();
    let mut tracked = service.db().all_tracked().await.unwrap();
    for rows in [&mut all, &mut unordered] {
        rows.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    }
    tracked.sort_by(|a, b| a.session_id.cmp(&b.session_id));

    assert_eq!(all.len(), 3);
    assert_eq!(unordered, all);
    let projected: Vec<crate::db::TrackedRunner> = all
        .iter()
        .map(|row| crate::db::TrackedRunner {
            session_id: row.session_id.clone(),
            kind: row.kind,
            state: row.state,
            container_name: row.container_name.clone(),
            container_id: row.container_id.clone(),
            host_port: row.host_port,
        })
        .collect();
    assert_eq!(tracked, projected);
}
