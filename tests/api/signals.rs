//! Runners and signals, with a stand-in that ignores SIGTERM as the real
//! (Node.js) runner does as PID 1: an init process makes it stop at once
//! and reaps its orphans, and containers nobody uses are killed without a
//! grace period.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestEnv, assert_runner_answers, eventually};

/// The exit code the engine reported when `container` died.
async fn exit_code(env: &TestEnv, since: i64, container: &str) -> String {
    let events = env.container_events(since).await;
    events
        .iter()
        .find(|(id, action, _)| id == container && action == "die")
        .and_then(|(_, _, attributes)| attributes.get("exitCode").cloned())
        .unwrap_or_else(|| panic!("no die event for {container}: {events:?}"))
}

#[tokio::test]
async fn with_an_init_process_a_runner_that_ignores_sigterm_stops_on_it() {
    let env = TestEnv::stubborn();
    let since = chrono::Utc::now().timestamp() - 1;
    // A grace far longer than the test: if SIGTERM were ignored, only the
    // stop's own timeout would end the runner.
    let app = env.spawn(&["--runner-stop-timeout-seconds=30"]).await;
    let reply = app.api.provision(Some("init")).await;
    assert_eq!(reply.status, 201);
    assert_runner_answers(reply.endpoint()).await;
    let container = env.row("init").await.unwrap().container_id.unwrap();
    let inspected = env.inspect(&container).await;
    assert_eq!(inspected.host_config.unwrap().init, Some(true));

    assert_eq!(app.api.deprovision("init").await.status, 200);

    // 143 = 128 + SIGTERM: the runner ended on the signal, not on a kill.
    assert_eq!(exit_code(&env, since, &container).await, "143");
}

#[tokio::test]
async fn without_an_init_process_the_stand_in_ignores_sigterm_like_node() {
    let env = TestEnv::stubborn();
    let since = chrono::Utc::now().timestamp() - 1;
    let app = env
        .spawn(&["--runner-init=false", "--runner-stop-timeout-seconds=1"])
        .await;
    let reply = app.api.provision(Some("no-init")).await;
    assert_eq!(reply.status, 201);
    assert_runner_answers(reply.endpoint()).await;
    let container = env.row("no-init").await.unwrap().container_id.unwrap();
    assert_eq!(
        env.inspect(&container).await.host_config.unwrap().init,
        Some(false)
    );

    assert_eq!(app.api.deprovision("no-init").await.status, 200);

    // 137 = 128 + SIGKILL: SIGTERM was ignored and the grace ran out.
    assert_eq!(exit_code(&env, since, &container).await, "137");
}

/// The stand-in runner's JSON answer to `GET <endpoint><path>`.
async fn runner_json(endpoint: &str, path: &str) -> Value {
    reqwest::get(format!("{endpoint}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Leaves an orphaned zombie in the runner and returns its PID.
async fn orphan(endpoint: &str) -> u64 {
    let body = runner_json(endpoint, "/orphan").await;
    let pid = body["orphan_pid"].as_u64().unwrap_or(0);
    assert!(pid > 1, "the runner did not start an orphan: {body}");
    pid
}

async fn process_state(endpoint: &str, pid: u64) -> String {
    let body = runner_json(endpoint, &format!("/process/{pid}")).await;
    body["state"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_init_process_reaps_orphaned_zombies() {
    let env = TestEnv::stubborn();
    let app = env.spawn(&[]).await;
    let reply = app.api.provision(Some("reaped")).await;
    assert_runner_answers(reply.endpoint()).await;
    let pid = orphan(reply.endpoint()).await;
    eventually(Duration::from_secs(10), "the orphan reaped", || async {
        process_state(reply.endpoint(), pid).await == "gone"
    })
    .await;

    // Without it, the zombie stays (the stand-in, as PID 1, never waits).
    let env = TestEnv::stubborn();
    let app = env.spawn(&["--runner-init=false"]).await;
    let reply = app.api.provision(Some("unreaped")).await;
    assert_runner_answers(reply.endpoint()).await;
    let pid = orphan(reply.endpoint()).await;
    eventually(Duration::from_secs(10), "the orphan a zombie", || async {
        process_state(reply.endpoint(), pid).await == "Z"
    })
    .await;
}
