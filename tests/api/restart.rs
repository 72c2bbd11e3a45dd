//! The real binary, killed and started again on the same database.

use std::collections::HashMap;
use std::process::Command;

use crate::helpers::{TestEnv, assert_runner_answers};

#[tokio::test]
async fn kill_9_and_restart_loses_and_adds_nothing() {
    let env = TestEnv::new();
    let orchestrator = env.spawn_binary(&[]);
    let mut endpoints = HashMap::new();
    for session in ["one", "two", "three"] {
        let reply = orchestrator.api.provision(Some(session)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        endpoints.insert(session, reply.endpoint().to_owned());
    }
    let containers_before = env.running_container_ids().await;
    assert_eq!(containers_before.len(), 3);

    orchestrator.kill_9();
    let orchestrator = env.spawn_binary(&[]);

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
    let env = TestEnv::new();
    let orchestrator = env.spawn_binary(&[]);
    let reply = orchestrator.api.provision(Some("survivor")).await;
    assert_eq!(reply.status, 201);

    let status = orchestrator.terminate();

    assert!(status.success(), "exit status {status:?}");
    assert_eq!(env.running_container_ids().await.len(), 1);
    let orchestrator = env.spawn_binary(&[]);
    assert_eq!(orchestrator.api.heartbeat("survivor").await.status, 200);
    let again = orchestrator.api.provision(Some("survivor")).await;
    assert_eq!((again.status, again.endpoint()), (200, reply.endpoint()));
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
