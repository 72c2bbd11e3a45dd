use futures_util::future::join_all;
use taylored_orchestrator::config::SINGLETON_LABEL;
use taylored_orchestrator::domain::RunnerKind;

use crate::helpers::{TestEnv, assert_runner_answers};

const REUSE: &str = "--reuse-runner-mode=true";

#[tokio::test]
async fn one_shared_runner_for_everyone_across_a_restart() {
    let env = TestEnv::new();
    let app = env.spawn(&[REUSE]).await;

    let first = app.api.provision(None).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.message(), "Runner provisioned successfully.");
    let shared = first.session_id().to_owned();
    assert_runner_answers(first.endpoint()).await;

    let others =
        join_all([Some("someone-else"), None, Some(shared.as_str())].map(|s| app.api.provision(s)))
            .await;
    for reply in &others {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.message(), "Returning existing singleton runner.");
        assert_eq!(
            (reply.endpoint(), reply.session_id()),
            (first.endpoint(), shared.as_str())
        );
    }

    let heartbeat = app.api.heartbeat(&shared).await;
    assert_eq!(
        (heartbeat.status, heartbeat.message()),
        (200, "Heartbeat received for singleton runner.")
    );
    let mismatch = app.api.heartbeat("someone-else").await;
    assert_eq!(mismatch.status, 404);
    assert_eq!(mismatch.error(), "RUNNER_NOT_FOUND");
    assert_eq!(
        mismatch.message(),
        "Singleton runner not found or session ID mismatch."
    );

    let deprovision = app.api.deprovision(&shared).await;
    assert_eq!(
        (deprovision.status, deprovision.message()),
        (200, "Deprovisioning is disabled in REUSE_RUNNER_MODE.")
    );
    let containers = env.containers().await;
    assert_eq!(containers.len(), 1);
    assert_eq!(
        containers[0].labels.as_ref().unwrap()[SINGLETON_LABEL],
        "true"
    );

    let env = app.stop().await;
    let app = env.spawn(&[REUSE]).await;

    let after = app.api.provision(None).await;
    assert_eq!(after.status, 200);
    assert_eq!(
        (after.endpoint(), after.session_id()),
        (first.endpoint(), shared.as_str())
    );
    assert_eq!(
        app.api.heartbeat(&shared).await.message(),
        "Heartbeat received for singleton runner."
    );
    assert_eq!(env.containers().await.len(), 1);
}

#[tokio::test]
async fn concurrent_first_provisions_share_one_runner() {
    let env = TestEnv::new();
    let app = env.spawn(&[REUSE]).await;

    let replies = join_all((0..10).map(|_| app.api.provision(None))).await;

    assert_eq!(
        replies.iter().filter(|r| r.status == 201).count(),
        1,
        "{replies:?}"
    );
    assert!(
        replies
            .iter()
            .all(|r| r.endpoint() == replies[0].endpoint())
    );
    assert_eq!(env.containers().await.len(), 1);
}

/// The shared runner after its database is deleted: the start rebuilds its
/// row from the labels (a singleton, not a session's runner), audits it, and
/// every client gets the same runner, session and endpoint as before.
#[tokio::test]
async fn a_deleted_database_keeps_the_shared_runner() {
    let env = TestEnv::new();
    let app = env.spawn(&[REUSE]).await;
    let first = app.api.provision(None).await;
    assert_eq!(first.status, 201, "{first:?}");
    let shared = first.session_id().to_owned();
    let env = app.stop().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db_path.display()));
    }

    let app = env.spawn(&[REUSE]).await;
    assert_eq!(app.reconciled.adopted, 1);
    let row = env.row(&shared).await.expect("the shared runner adopted");
    assert_eq!(row.kind, RunnerKind::Singleton, "{row:?}");
    let trail = env.db().await.audit_trail("(database)").await.unwrap();
    assert!(
        trail.len() == 1
            && trail[0].action == "rebuilt"
            && trail[0].reason.contains("rebuilt from the engine"),
        "{trail:?}"
    );
    for asked in [None, Some("someone-else"), Some(shared.as_str())] {
        let reply = app.api.provision(asked).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.message(), "Returning existing singleton runner.");
        assert_eq!(
            (reply.endpoint(), reply.session_id()),
            (first.endpoint(), shared.as_str())
        );
    }
    assert_eq!(
        app.api.heartbeat(&shared).await.message(),
        "Heartbeat received for singleton runner."
    );
    assert_runner_answers(first.endpoint()).await;
    assert_eq!(env.containers().await.len(), 1);
    let (ok, listed, _) = crate::operator::operator(&env, &["runners", "list"]);
    assert!(
        ok && listed
            .lines()
            .any(|line| line.starts_with(&shared) && line.contains("singleton")),
        "{listed}"
    );
}
