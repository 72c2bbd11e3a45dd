//! Each startup reconciler case, set up behind a stopped service's back and
//! checked after it starts again on the same database.

use chrono::Utc;
use taylored_orchestrator::backend::NetworkMode;
use taylored_orchestrator::db::{Claim, NewRunner, RunnerState, timestamp};
use taylored_orchestrator::domain::{RunnerKind, SessionId};

use crate::helpers::{TestEnv, assert_runner_answers};

#[tokio::test]
async fn running_runner_is_kept_with_a_fresh_grace_period() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    let first = app.api.provision(Some("kept")).await;
    let env = app.stop().await;
    // The service was down long enough for the runner to look stale.
    sqlx::query("UPDATE runners SET last_heartbeat_at = '2000-01-01T00:00:00.000Z'")
        .execute(env.db().await.pool())
        .await
        .unwrap();

    let restarted_at = timestamp(Utc::now());
    let app = env.spawn(&[]).await;

    assert_eq!(app.reconciled.kept, 1);
    let row = env.row("kept").await.unwrap();
    assert!(row.last_heartbeat_at >= restarted_at, "{row:?}");
    let again = app.api.provision(Some("kept")).await;
    assert_eq!((again.status, again.endpoint()), (200, first.endpoint()));
    assert_eq!(app.api.heartbeat("kept").await.status, 200);
    assert_runner_answers(first.endpoint()).await;
    assert_eq!(
        env.audit_actions_by_actor("kept").await,
        ["api:provisioned", "reconciler:kept"]
    );
}

#[tokio::test]
async fn row_with_a_stopped_container_is_dropped_and_the_container_removed() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    app.api.provision(Some("stopped")).await;
    let env = app.stop().await;
    let container = env.row("stopped").await.unwrap().container_id.unwrap();
    env.docker.stop_container(&container, None).await.unwrap();

    let app = env.spawn(&[]).await;

    assert_eq!(
        (
            app.reconciled.containers_removed,
            app.reconciled.rows_dropped
        ),
        (1, 1)
    );
    assert!(env.row("stopped").await.is_none());
    assert!(env.containers().await.is_empty());
    assert_eq!(
        env.audit_actions_by_actor("stopped").await,
        [
            "api:provisioned",
            "reconciler:container_removed",
            "reconciler:dropped"
        ]
    );
    // A fresh runner for the session, not a dead endpoint.
    assert_eq!(app.api.provision(Some("stopped")).await.status, 201);
}

#[tokio::test]
async fn row_with_a_missing_container_is_dropped() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    app.api.provision(Some("missing")).await;
    let env = app.stop().await;
    let container = env.row("missing").await.unwrap().container_id.unwrap();
    env.docker
        .remove_container(
            &container,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .unwrap();

    let app = env.spawn(&[]).await;

    assert_eq!(app.reconciled.rows_dropped, 1);
    assert!(env.row("missing").await.is_none());
    assert_eq!(app.api.heartbeat("missing").await.status, 404);
}

#[tokio::test]
async fn running_orphan_is_adopted_by_default() {
    let env = TestEnv::new();
    let id = env
        .create_runner_container("orphan", &format!("{}-orphan", env.instance), true)
        .await;

    let app = env.spawn(&[]).await;

    assert_eq!(app.reconciled.adopted, 1);
    let row = env.row("orphan").await.unwrap();
    assert_eq!(row.state, RunnerState::Running);
    assert_eq!(row.container_id.as_deref(), Some(id.as_str()));
    let reply = app.api.provision(Some("orphan")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.endpoint(),
        format!("http://127.0.0.1:{}", row.host_port.unwrap())
    );
    assert_runner_answers(reply.endpoint()).await;
    assert_eq!(app.api.heartbeat("orphan").await.status, 200);
    assert_eq!(
        env.audit_actions_by_actor("orphan").await,
        ["reconciler:adopted"]
    );
}

#[tokio::test]
async fn running_orphan_is_removed_when_the_policy_says_so() {
    let env = TestEnv::new();
    env.create_runner_container("orphan", &format!("{}-orphan-rm", env.instance), true)
        .await;

    let app = env.spawn(&["--orphan-policy=remove"]).await;

    assert_eq!(
        (app.reconciled.adopted, app.reconciled.containers_removed),
        (0, 1)
    );
    assert!(env.containers().await.is_empty());
    assert!(env.row("orphan").await.is_none());
}

#[tokio::test]
async fn stopped_orphan_is_removed() {
    let env = TestEnv::new();
    env.create_runner_container("created-only", &format!("{}-created", env.instance), false)
        .await;

    let app = env.spawn(&[]).await;

    assert_eq!(
        (app.reconciled.adopted, app.reconciled.containers_removed),
        (0, 1)
    );
    assert!(env.containers().await.is_empty());
}

#[tokio::test]
async fn duplicate_containers_keep_the_tracked_one() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    let first = app.api.provision(Some("dup")).await;
    let env = app.stop().await;
    let tracked = env.row("dup").await.unwrap().container_id.unwrap();
    env.create_runner_container("dup", &format!("{}-dup-extra", env.instance), true)
        .await;

    let app = env.spawn(&[]).await;

    assert_eq!(
        (app.reconciled.kept, app.reconciled.containers_removed),
        (1, 1)
    );
    assert_eq!(env.running_container_ids().await, [tracked]);
    assert_eq!(
        app.api.provision(Some("dup")).await.endpoint(),
        first.endpoint()
    );
}

#[tokio::test]
async fn interrupted_provisions_are_finished_or_undone() {
    let env = TestEnv::new();
    let db = env.db().await;
    // Crash after start, before the row said `running`.
    let finished = SessionId::parse("finished").unwrap();
    let finished_name = finished.container_name(&env.instance);
    claim(&db, &finished, &finished_name).await;
    env.create_runner_container("finished", &finished_name, true)
        .await;
    // Crash before the container was created.
    let undone = SessionId::parse("undone").unwrap();
    claim(&db, &undone, &undone.container_name(&env.instance)).await;

    let app = env.spawn(&[]).await;

    assert_eq!((app.reconciled.kept, app.reconciled.rows_dropped), (1, 1));
    let row = env.row("finished").await.unwrap();
    assert_eq!(row.state, RunnerState::Running);
    assert!(row.host_port.is_some());
    assert_eq!(app.api.heartbeat("finished").await.status, 200);
    assert!(env.row("undone").await.is_none());
    assert_eq!(app.api.provision(Some("undone")).await.status, 201);
}

async fn claim(db: &taylored_orchestrator::db::Db, session: &SessionId, name: &str) {
    let claimed = db
        .claim(
            &NewRunner {
                session_id: session,
                kind: RunnerKind::Session,
                container_name: name,
                network_mode: &NetworkMode::Default,
                pooled: false,
                token: &taylored_orchestrator::domain::token::generate(),
            },
            0,
            Utc::now(),
        )
        .await
        .unwrap();
    assert!(matches!(claimed, Claim::Claimed));
}

#[tokio::test]
async fn interrupted_removal_is_finished() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    app.api.provision(Some("half-removed")).await;
    let env = app.stop().await;
    let db = env.db().await;
    assert!(
        db.mark_removing("half-removed", None, Utc::now())
            .await
            .unwrap()
    );

    let app = env.spawn(&[]).await;

    assert_eq!(
        (
            app.reconciled.containers_removed,
            app.reconciled.rows_dropped
        ),
        (1, 1)
    );
    assert!(env.containers().await.is_empty());
    assert!(env.row("half-removed").await.is_none());
}
