use futures_util::future::join_all;
use taylored_orchestrator::config::SINGLETON_LABEL;

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
