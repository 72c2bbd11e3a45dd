//! Operators' view: health and readiness, metrics, and the read-only
//! commands run against a live service's database.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{TestEnv, spawn_app};

/// Runs `orchestrator <args>` on the environment's database and instance.
fn operator(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .env("DATABASE_URL", &env.db_path)
        .env("ORCHESTRATOR_ID", &env.instance)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app.api.get("/healthz").await;
    assert_eq!(
        (health.status, &health.body["status"]),
        (200, &Value::from("ok"))
    );
    let ready = app.api.get("/readyz").await;
    assert_eq!(
        (ready.status, &ready.body["status"]),
        (200, &Value::from("ready"))
    );
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let app = spawn_app().await;
    app.api.provision(Some("m1")).await;
    app.api.provision(Some("m1")).await;
    app.api.heartbeat("m1").await;
    app.api.heartbeat("nobody").await;

    let response = reqwest::get(app.api.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics")
    );
    let text = response.text().await.unwrap();
    for expected in [
        "orchestrator_runners{state=\"running\"} 1",
        "orchestrator_provisions_total{result=\"created\"} 1",
        "orchestrator_provisions_total{result=\"existing\"} 1",
        "orchestrator_provision_duration_seconds_count 1",
        "orchestrator_heartbeats_total{result=\"ok\"} 1",
        "orchestrator_heartbeats_total{result=\"not_found\"} 1",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[tokio::test]
async fn runners_list_and_show_read_a_live_database() {
    let app = spawn_app().await;
    for session in ["listed-1", "listed-2"] {
        assert_eq!(app.api.provision(Some(session)).await.status, 201);
    }

    let (ok, stdout, stderr) = operator(&app.env, &["runners", "list", "--json"]);
    assert!(ok, "{stderr}");
    let rows: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let mut sessions: Vec<&str> = rows
        .iter()
        .map(|row| row["session_id"].as_str().unwrap())
        .collect();
    sessions.sort();
    assert_eq!(sessions, ["listed-1", "listed-2"]);
    assert!(rows.iter().all(|row| row["state"] == "running"));

    let (ok, table, _) = operator(&app.env, &["runners", "list"]);
    assert!(
        ok && table.contains("listed-1") && table.contains("2 runner(s)"),
        "{table}"
    );

    let (ok, shown, stderr) = operator(&app.env, &["runners", "show", "listed-1", "--json"]);
    assert!(ok, "{stderr}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["runner"]["session_id"], "listed-1");
    assert_eq!(shown["audit"][0]["action"], "provisioned");

    let (ok, _, stderr) = operator(&app.env, &["runners", "show", "never-seen"]);
    assert!(
        !ok && stderr.contains("no runner and no history"),
        "{stderr}"
    );
    // The service was not disturbed.
    assert_eq!(app.api.heartbeat("listed-1").await.status, 200);
}

#[tokio::test]
async fn reconcile_dry_run_reports_and_changes_nothing() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    app.api.provision(Some("stopping")).await;
    let container = env.row("stopping").await.unwrap().container_id.unwrap();
    let env = app.stop().await;
    env.docker.stop_container(&container, None).await.unwrap();
    env.create_runner_container("orphan", &format!("{}-dry-orphan", env.instance), true)
        .await;

    let (ok, plan, stderr) = operator(&env, &["reconcile", "--dry-run"]);

    assert!(ok, "{stderr}");
    assert!(
        plan.contains("remove container") && plan.contains("stopping"),
        "{plan}"
    );
    assert!(plan.contains("drop row of session stopping"), "{plan}");
    assert!(
        plan.contains("adopt container") && plan.contains("orphan"),
        "{plan}"
    );
    assert_eq!(
        env.containers().await.len(),
        2,
        "the dry run removed a container"
    );
    assert!(
        env.row("stopping").await.is_some(),
        "the dry run dropped a row"
    );
    assert!(env.row("orphan").await.is_none(), "the dry run adopted");
}
