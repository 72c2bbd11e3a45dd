//! The reconcile's plan case by case, and its drivers over the memory
//! backend.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;

use super::plan::*;
use super::startup::*;
use super::*;
use crate::backend::{NetworkMode, ObservedRunner};
use crate::db::{RunnerRow, RunnerState};
use crate::domain::RunnerKind;
use crate::domain::SessionId;
use crate::lifecycle::Provisioned;
use crate::test_support::Harness;

#[tokio::test]
async fn a_runner_killed_behind_the_services_back_is_repaired_from_its_event() {
    let harness = Harness::new(&[]).await;
    let reconciler = harness.reconciler();
    let session = SessionId::parse("s-1").unwrap();
    let provisioned = harness
        .runners
        .provision(Some(session.clone()), &NetworkMode::Default)
        .await
        .unwrap();
    assert!(matches!(provisioned, Provisioned::Created(_)));
    let mut events = harness.backend.events(0);
    let id = harness.backend.runners()[0].id.clone();
    assert!(harness.backend.kill(&id));

    let event = events.next().await.unwrap().unwrap();
    assert_eq!(event.runner_id, id);
    let summary = reconciler.on_event(&event).await.unwrap();
    assert_eq!((summary.containers_removed, summary.rows_dropped), (1, 1));
    assert!(harness.backend.runners().is_empty());
    assert!(harness.db().find("s-1").await.unwrap().is_none());
    let trail = harness.db().audit_trail("s-1").await.unwrap();
    assert!(
        trail
            .iter()
            .any(|record| record.reason == "container die (exit code 137)")
    );
}

#[tokio::test]
async fn the_startup_reconcile_adopts_a_running_orphan() {
    let harness = Harness::new(&[]).await;
    let orphan = harness
        .backend
        .start(&crate::backend::RunnerSpec {
            session_id: "orphan",
            name: "runner-orphan",
            network_mode: &NetworkMode::Default,
            kind: RunnerKind::Singleton,
            pooled: false,
            token: None,
        })
        .await
        .unwrap();
    let reconciler = harness.reconciler();
    let (summary, repairs) = reconciler.run_startup().await.unwrap();
    assert_eq!((summary.adopted, repairs.removals()), (1, 0));
    let row = harness.db().find("orphan").await.unwrap().unwrap();
    assert_eq!(row.kind, RunnerKind::Singleton);
    assert_eq!(row.container_id, Some(orphan.id));
    assert_eq!(row.host_port, orphan.host_port);
    // An adopted runner gets a token, and the gateway a route to it.
    assert!(crate::domain::token::is_token(&row.token), "{row:?}");
    let routes = harness.service.heartbeats.running();
    let key = crate::domain::token::digest(&row.token);
    let address = routes.visit(&key, Utc::now()).unwrap();
    assert_eq!(
        address.to_string(),
        format!("127.0.0.1:{}", row.host_port.unwrap())
    );
    // Kept by the next start: the same token.
    let (summary, _) = reconciler.run_startup().await.unwrap();
    assert_eq!(summary.kept, 1);
    let kept = harness.db().find("orphan").await.unwrap().unwrap();
    assert_eq!(kept.token, row.token);
    assert!(routes.visit(&key, Utc::now()).is_some());
}

fn row(session: &str, state: RunnerState, container: Option<&str>) -> RunnerRow {
    RunnerRow {
        session_id: session.into(),
        kind: RunnerKind::Session,
        state,
        container_name: format!("name-{session}"),
        container_id: container.map(Into::into),
        host_port: Some(40000),
        network_mode: NetworkMode::Default,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
        last_heartbeat_at: "2026-01-01T00:00:00.000Z".into(),
        pooled: false,
        node: None,
        node_host: None,
        token: format!("token-{session}"),
    }
}

fn container(id: &str, session: &str, running: bool, created: i64) -> ObservedRunner {
    ObservedRunner {
        id: id.into(),
        name: format!("other-{id}"),
        session_id: session.into(),
        running,
        kind: RunnerKind::Session,
        pooled: false,
        host_port: running.then_some(41000),
        network_mode: NetworkMode::Default,
        created,
        node: None,
        address: None,
        token: None,
    }
}

fn removed_ids(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::RemoveContainer { container, .. } => Some(container.id.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn row_with_running_container_is_kept_with_the_observed_port() {
    let rows = [row("s", RunnerState::Running, Some("c1"))];
    let containers = [container("c1", "s", true, 1)];
    let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
    assert_eq!(actions.len(), 1);
    let Action::Keep { container, .. } = &actions[0] else {
        panic!("expected keep, got {actions:?}")
    };
    assert_eq!(container.host_port, Some(41000));
}

#[test]
fn a_runner_on_a_lost_node_is_removed_and_its_row_dropped_naming_the_node() {
    let rows = [row("s", RunnerState::Running, Some("c1"))];
    let mut lost = container("c1", "s", false, 1);
    lost.node = Some(crate::backend::RunnerNode {
        name: "node-3".into(),
        host: "10.0.0.3".into(),
        ready: false,
    });
    let actions = plan(&rows, &[lost], OrphanPolicy::Remove, Purpose::Drift);
    assert_eq!(removed_ids(&actions), ["c1"]);
    let reasons: Vec<&str> = actions
        .iter()
        .map(|action| match action {
            Action::RemoveContainer { reason, .. } | Action::DropRow { reason, .. } => *reason,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(reasons, [NODE_LOST, NODE_LOST]);
}

#[test]
fn row_with_stopped_container_removes_it_then_drops_the_row() {
    let rows = [row("s", RunnerState::Running, Some("c1"))];
    let containers = [container("c1", "s", false, 1)];
    let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
    assert_eq!(removed_ids(&actions), ["c1"]);
    assert!(matches!(
        &actions[1],
        Action::DropRow {
            reason: "runner container is not running",
            ..
        }
    ));
    assert_eq!(actions.len(), 2);
}

#[test]
fn row_without_container_is_dropped() {
    let rows = [row("s", RunnerState::Running, Some("c1"))];
    let actions = plan(&rows, &[], OrphanPolicy::Adopt, Purpose::Startup);
    assert!(matches!(
        &actions[..],
        [Action::DropRow {
            reason: "runner container is missing",
            ..
        }]
    ));
}

#[test]
fn running_orphan_is_adopted_or_removed_by_policy() {
    let containers = [container("c1", "s", true, 1)];
    assert!(matches!(
        &plan::<RunnerRow>(&[], &containers, OrphanPolicy::Adopt, Purpose::Startup)[..],
        [Action::Adopt { container }] if container.id == "c1"
    ));
    assert_eq!(
        removed_ids(&plan(
            &[],
            &containers,
            OrphanPolicy::Remove,
            Purpose::Startup
        )),
        ["c1"]
    );
}

#[test]
fn stopped_orphan_is_removed_under_either_policy() {
    let containers = [container("c1", "s", false, 1)];
    for policy in [OrphanPolicy::Adopt, OrphanPolicy::Remove] {
        let actions = plan(&[], &containers, policy, Purpose::Startup);
        assert_eq!(removed_ids(&actions), ["c1"]);
        assert_eq!(actions.len(), 1);
    }
}

#[test]
fn duplicates_keep_the_tracked_container() {
    let rows = [row("s", RunnerState::Running, Some("old"))];
    let containers = [
        container("old", "s", true, 1),
        container("new", "s", true, 9),
    ];
    let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
    assert_eq!(removed_ids(&actions), ["new"]);
    assert!(
        matches!(actions.last(), Some(Action::Keep { container, .. }) if container.id == "old")
    );
}

#[test]
fn duplicate_orphans_adopt_the_newest_running_one() {
    let containers = [
        container("a", "s", true, 1),
        container("b", "s", true, 5),
        container("c", "s", false, 9),
    ];
    let actions = plan(&[], &containers, OrphanPolicy::Adopt, Purpose::Startup);
    let mut removed = removed_ids(&actions);
    removed.sort();
    assert_eq!(removed, ["a", "c"]);
    assert!(matches!(actions.last(), Some(Action::Adopt { container }) if container.id == "b"));
}

#[test]
fn interrupted_provision_is_finished_or_undone() {
    // Crash after the container was created and started, before the row
    // said so: the container is found by its deterministic name.
    let mut provisioning = row("s", RunnerState::Provisioning, None);
    let mut started = container("c1", "s", true, 1);
    started.name = provisioning.container_name.clone();
    let actions = plan(
        std::slice::from_ref(&provisioning),
        &[started],
        OrphanPolicy::Adopt,
        Purpose::Startup,
    );
    assert!(matches!(
        &actions[..],
        [Action::Keep {
            reason: "finishing an interrupted provision",
            ..
        }]
    ));

    // Crash before start: the created container is removed, the row dropped.
    let mut created = container("c1", "s", false, 1);
    created.name = provisioning.container_name.clone();
    let actions = plan(
        std::slice::from_ref(&provisioning),
        &[created],
        OrphanPolicy::Adopt,
        Purpose::Startup,
    );
    assert_eq!(removed_ids(&actions), ["c1"]);
    assert!(matches!(actions.last(), Some(Action::DropRow { .. })));

    // Crash before create.
    provisioning.container_name = "never-created".into();
    let actions = plan(&[provisioning], &[], OrphanPolicy::Adopt, Purpose::Startup);
    assert!(matches!(
        &actions[..],
        [Action::DropRow {
            reason: "provision interrupted before its container existed",
            ..
        }]
    ));
}

#[test]
fn interrupted_removal_is_finished() {
    let rows = [row("s", RunnerState::Removing, Some("c1"))];
    let containers = [container("c1", "s", true, 1)];
    let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
    assert_eq!(removed_ids(&actions), ["c1"]);
    assert!(matches!(
        actions.last(),
        Some(Action::DropRow {
            reason: "finishing an interrupted removal",
            ..
        })
    ));
}

#[test]
fn at_most_one_shared_runner() {
    let mut tracked = row("s1", RunnerState::Running, Some("c1"));
    tracked.kind = RunnerKind::Singleton;
    let mut kept = container("c1", "s1", true, 1);
    kept.kind = RunnerKind::Singleton;
    let mut second = container("c2", "s2", true, 2);
    second.kind = RunnerKind::Singleton;
    let actions = plan(
        &[tracked],
        &[kept, second],
        OrphanPolicy::Adopt,
        Purpose::Startup,
    );
    assert_eq!(removed_ids(&actions), ["c2"]);
    assert!(
        !actions
            .iter()
            .any(|action| matches!(action, Action::Adopt { .. }))
    );
}

#[test]
fn only_young_unfinished_rows_wait_for_the_engine_to_settle() {
    let now = Utc::now();
    let at = |seconds_ago: i64| crate::db::timestamp(now - chrono::Duration::seconds(seconds_ago));
    let mut young = row("young", RunnerState::Provisioning, None);
    young.updated_at = at(0);
    let mut old = row("old", RunnerState::Removing, None);
    old.updated_at = at(10);
    let mut running = row("running", RunnerState::Running, None);
    running.updated_at = at(0);

    let wait = settle_wait(&young, now).unwrap();
    assert!(
        wait > Duration::from_millis(1900) && wait <= ENGINE_SETTLE,
        "{wait:?}"
    );
    assert_eq!(settle_wait(&old, now), None);
    assert_eq!(settle_wait(&running, now), None);
}

#[test]
fn startup_defers_container_removals_with_their_rows() {
    let rows = [
        row("kept", RunnerState::Running, Some("k1")),
        row("dead", RunnerState::Running, Some("d1")),
        row("gone", RunnerState::Running, Some("g1")),
    ];
    let containers = [
        container("k1", "kept", true, 1),
        container("k2", "kept", true, 2),
        container("d1", "dead", false, 1),
        container("o1", "orphan", false, 1),
    ];
    let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
    let mut later = BTreeMap::new();
    let now = defer_removals(actions, &mut later);
    // Applied at once: the kept row and the drop of a row without any
    // container; everything that waits for the engine is deferred.
    assert!(
        matches!(&now[..], [Action::DropRow { row, .. }, Action::Keep { .. }] if row.session_id == "gone")
    );
    let deferred: Vec<(&str, usize)> = later
        .iter()
        .map(|((session, _), work)| (session.as_str(), work.actions.len()))
        .collect();
    assert_eq!(deferred, [("dead", 2), ("kept", 1), ("orphan", 1)]);
}

#[test]
fn drift_leaves_agreeing_rows_alone() {
    let rows = [row("s", RunnerState::Running, Some("c1"))];
    let mut containers = [container("c1", "s", true, 1)];
    containers[0].host_port = Some(40000);
    assert!(plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Drift).is_empty());
    assert_eq!(
        plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup).len(),
        1
    );
}

#[test]
fn removals_come_before_everything_else() {
    let rows = [
        row("a", RunnerState::Running, Some("a1")),
        row("b", RunnerState::Running, None),
    ];
    let containers = [
        container("a1", "a", true, 1),
        container("o1", "orphan", true, 1),
        container("o2", "stopped", false, 1),
    ];
    let actions = plan(&rows, &containers, OrphanPolicy::Adopt, Purpose::Startup);
    let order: Vec<u8> = actions
        .iter()
        .map(|action| match action {
            Action::RemoveContainer { .. } => 0,
            Action::DropRow { .. } => 1,
            Action::Keep { .. } => 2,
            Action::Adopt { .. } => 3,
        })
        .collect();
    assert_eq!(order, [0, 1, 2, 3]);
}

/// A database lost with every runner still running: the rebuild reads each
/// one's kind, warm state and token from its labels alone, and each gateway
/// host routes as before; with the token key lost too, the old host still
/// routes (by the labels' digest) and the row gets a token of its own.
#[tokio::test]
async fn a_rebuild_takes_every_kind_and_its_token_from_the_labels_alone() {
    use crate::domain::token::{self, TokenKey};
    let harness = Harness::new(&[]).await;
    let key = harness.service.lifecycle.token_key().clone();
    let kinds = [
        ("session", RunnerKind::Session, false),
        ("shared", RunnerKind::Singleton, false),
        ("warm", RunnerKind::Session, true),
    ];
    let mut issued = Vec::new();
    for (session, kind, pooled) in kinds {
        let (token, labels) = key.issue();
        start_labelled(&harness, session, kind, pooled, &labels).await;
        issued.push((session, kind, pooled, token));
    }
    let (summary, _) = harness.reconciler().run_startup().await.unwrap();
    assert_eq!(summary.adopted, 3);
    let routes = harness.service.heartbeats.running();
    for (session, kind, pooled, token) in &issued {
        let row = harness.db().find(session).await.unwrap().unwrap();
        assert_eq!((row.kind, row.pooled), (*kind, *pooled), "{session}");
        assert_eq!(
            &row.token, token,
            "{session}: the same token, so the same endpoint"
        );
        assert!(routes.visit(&token::digest(token), Utc::now()).is_some());
    }

    // The key lost as well: another service, another key, the same engine.
    let (token, labels) = TokenKey::generate().issue();
    start_labelled(&harness, "other-key", RunnerKind::Session, false, &labels).await;
    let (summary, _) = harness.reconciler().run_startup().await.unwrap();
    assert_eq!(summary.adopted, 1);
    let row = harness.db().find("other-key").await.unwrap().unwrap();
    assert_ne!(row.token, token);
    assert!(token::is_token(&row.token));
    for reached_by in [&token, &row.token] {
        assert!(
            routes
                .visit(&token::digest(reached_by), Utc::now())
                .is_some()
        );
    }
}

/// A database restored from a backup older than a warm claim: its row says
/// the runner waits, the engine says it was claimed. The start keeps the
/// runner as its session's and never back in the pool.
#[tokio::test]
async fn a_restored_row_never_puts_a_runner_the_engine_calls_claimed_back_in_the_pool() {
    let harness = Harness::new(&[]).await;
    let key = harness.service.lifecycle.token_key().clone();
    for session in ["warm-claimed", "warm-waiting"] {
        let (_, labels) = key.issue();
        start_labelled(&harness, session, RunnerKind::Session, true, &labels).await;
    }
    let (summary, _) = harness.reconciler().run_startup().await.unwrap();
    assert_eq!(summary.adopted, 2);
    // The claim reached the engine; the row that recorded it is not in the
    // restored copy.
    let row = harness.db().find("warm-claimed").await.unwrap().unwrap();
    assert!(row.pooled);
    harness
        .backend
        .mark_claimed(row.container_id.as_deref().unwrap(), &row.container_name)
        .await
        .unwrap();

    harness.reconciler().run_startup().await.unwrap();
    let claimed = harness.db().find("warm-claimed").await.unwrap().unwrap();
    assert!(!claimed.pooled, "{claimed:?}");
    assert_eq!(claimed.state, RunnerState::Running);
    let waiting = harness.db().find("warm-waiting").await.unwrap().unwrap();
    assert!(waiting.pooled, "{waiting:?}");
}

/// Starts a runner behind the service's back, labelled as the service
/// labels its own (token nonce and digest included).
async fn start_labelled(
    harness: &Harness,
    session: &str,
    kind: RunnerKind,
    pooled: bool,
    token: &crate::domain::token::TokenLabels,
) {
    let name = format!("runner-{session}");
    harness
        .backend
        .start(&crate::backend::RunnerSpec {
            session_id: session,
            name: &name,
            network_mode: &NetworkMode::Default,
            kind,
            pooled,
            token: Some(token),
        })
        .await
        .unwrap();
}
