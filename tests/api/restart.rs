//! The real binary, killed and started again on the same database.

use std::collections::HashMap;
use std::process::Command;

use crate::helpers::{TestEnv, assert_runner_answers};

#[tokio::test]
async fn kill_9_and_restart_loses_and_adds_nothing() {
    let env = TestEnv::stubborn();
    let orchestrator = env.spawn_binary(&[]).await;
    let mut endpoints = HashMap::new();
    for session in ["one", "two", "three"] {
        let reply = orchestrator.api.provision(Some(session)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        endpoints.insert(session, reply.endpoint().to_owned());
    }
    let containers_before = env.running_container_ids().await;
    assert_eq!(containers_before.len(), 3);

    orchestrator.kill_9();
    let orchestrator = env.spawn_binary(&[]).await;

    for (session, endpoint) in &endpoints {
        assert_eq!(
            orchestrator.api.heartbeat(session).await.status,
            200,
            "{session}"
        );
        let reply = orchestrator.api.provision(Some(session)).await;
        assert_eq!((reply.status, reply.endpoint()), (200, endpoint.as_str()));
        assert_runner_answers(endpoint).await;
    }
    assert_eq!(env.running_container_ids().await, containers_before);
    // Deprovisioning still works on the restarted service.
    assert_eq!(orchestrator.api.deprovision("one").await.status, 200);
    assert_eq!(env.running_container_ids().await.len(), 2);
}

#[tokio::test]
async fn sigterm_exits_0_and_leaves_runners_for_the_next_start() {
    let env = TestEnv::stubborn();
    let orchestrator = env.spawn_binary(&[]).await;
    let reply = orchestrator.api.provision(Some("survivor")).await;
    assert_eq!(reply.status, 201);

    let status = orchestrator.terminate().await;

    assert!(status.success(), "exit status {status:?}");
    assert_eq!(env.running_container_ids().await.len(), 1);
    let orchestrator = env.spawn_binary(&[]).await;
    assert_eq!(orchestrator.api.heartbeat("survivor").await.status, 200);
    let again = orchestrator.api.provision(Some("survivor")).await;
    assert_eq!((again.status, again.endpoint()), (200, reply.endpoint()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_ready_before_dead_containers_are_removed_and_kills_them() {
    let env = TestEnv::stubborn();
    let orchestrator = env.spawn_binary(&[]).await;
    let kept = orchestrator.api.provision(Some("survivor")).await;
    assert_eq!(kept.status, 201);
    orchestrator.kill_9();
    // What a crash mid-burst leaves: containers the engine created or
    // started after their client was gone. Running ones ignore SIGTERM.
    let since = chrono::Utc::now().timestamp() - 1;
    let mut dead = Vec::new();
    for i in 0..12 {
        let session = format!("dead-{i}");
        let name = format!("{}-{session}", env.instance);
        let id = env
            .create_runner_container(&session, &name, i % 2 == 0)
            .await;
        dead.push((session, id));
    }

    // A graceful stop would wait 60 s per running container.
    let orchestrator = env
        .spawn_binary(&[
            ("ORPHAN_POLICY", "remove"),
            ("RUNNER_INIT", "false"),
            ("RUNNER_STOP_TIMEOUT_SECONDS", "60"),
        ])
        .await;

    // Ready before any removal: every session answers at once.
    let ready = orchestrator.log_field("ready", "summary");
    assert!(ready.contains("containers_removed=0"), "{ready}");
    let left = orchestrator.log_field("startup reconcile finished", "removals_left");
    assert_eq!(left, "12");
    assert_eq!(orchestrator.api.heartbeat("survivor").await.status, 200);
    for (session, _) in &dead {
        assert_eq!(orchestrator.api.heartbeat(session).await.status, 404);
    }
    // A provision of such a session waits for its repair, then starts anew.
    let fresh = orchestrator.api.provision(Some("dead-0")).await;
    assert_eq!(fresh.status, 201, "{fresh:?}");
    assert_runner_answers(fresh.endpoint()).await;

    let total = orchestrator.wait_repaired().await;
    assert!(total.contains("containers_removed=12"), "{total}");
    let events = env.container_events(since).await;
    for (i, (_, id)) in dead.iter().enumerate() {
        let signals: Vec<&str> = events
            .iter()
            .filter(|(container, action, _)| container == id && action == "kill")
            .filter_map(|(_, _, attributes)| attributes.get("signal").map(String::as_str))
            .collect();
        // Killed at once (the running ones), never asked to stop first.
        let expected: &[&str] = if i % 2 == 0 { &["9"] } else { &[] };
        assert_eq!(signals, expected, "signals sent to {id}");
    }
    let rows = env.db().await.all().await.unwrap();
    let mut sessions: Vec<&str> = rows.iter().map(|row| row.session_id.as_str()).collect();
    sessions.sort();
    assert_eq!(sessions, ["dead-0", "survivor"]);
    assert_eq!(env.running_container_ids().await.len(), 2);
}

#[test]
fn invalid_settings_stop_the_service_naming_the_variable() {
    for (variable, value) in [
        ("INACTIVITY_TIMEOUT_SECONDS", "soon"),
        ("REUSE_RUNNER_MODE", "yes"),
        ("PORT", "-1"),
        ("FREE_DOORS", "99"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .env(variable, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{variable}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}
