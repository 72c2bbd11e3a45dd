//! Operators' view: health and readiness, metrics, and the read-only
//! commands run against a live service's database.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{TestEnv, spawn_app};

/// Runs `orchestrator <args>` on the environment's database and instance.
pub(crate) fn operator(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
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

/// Online backups of the real binary's database: `orchestrator backup PATH`
/// beside it while heartbeats pour in, and the periodic ones
/// (`BACKUP_INTERVAL_SECONDS`) keeping the newest `BACKUP_KEEP`; then a
/// restore as docs/operating.md says (stop, copy, start) serves every
/// session as before, with the same endpoints.
#[tokio::test]
async fn backups_are_taken_online_and_a_restore_serves_every_session() {
    let env = TestEnv::new();
    let dir = tempfile::tempdir().unwrap();
    let periodic = dir.path().join("periodic");
    let app = env
        .spawn_binary(&[
            ("BACKUP_INTERVAL_SECONDS", "1"),
            ("BACKUP_PATH", &periodic.display().to_string()),
            ("BACKUP_KEEP", "2"),
            ("HEARTBEAT_FLUSH_INTERVAL_MS", "10"),
        ])
        .await;
    let sessions = ["backup-1", "backup-2", "backup-3"];
    let mut endpoints = Vec::new();
    for session in sessions {
        let reply = app.api.provision(Some(session)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        endpoints.push(reply.endpoint().to_owned());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = tokio::spawn({
        let (api, stop) = (app.api.clone(), stop.clone());
        async move {
            let mut beats = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                for session in sessions {
                    assert_eq!(api.heartbeat(session).await.status, 200);
                    beats += 1;
                }
            }
            beats
        }
    });

    let manual = dir.path().join("manual.db");
    let (ok, stdout, stderr) = operator(&env, &["backup", &manual.display().to_string()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("integrity check ok"), "{stdout}");
    let (ok, _, stderr) = operator(&env, &["backup", &manual.display().to_string()]);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");

    // Three periodic backups, of which the newest two are kept.
    app.logs
        .wait_for_count("database backed up", 3, std::time::Duration::from_secs(30))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let metrics = reqwest::get(app.api.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("orchestrator_backups_total{result=\"ok\"}")
            && !metrics.contains("orchestrator_backup_last_success_timestamp_seconds 0\n"),
        "{metrics}"
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert!(flood.await.unwrap() > 0);
    assert!(app.terminate().await.success());
    let kept: Vec<_> = std::fs::read_dir(&periodic)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter()
            .all(|name| name.starts_with("orchestrator-") && name.ends_with(".db")),
        "{kept:?}"
    );

    // The restore: the service stopped, the copy in place of the database
    // (and of its WAL), the service started again.
    let database = env.db_path.display().to_string();
    for stale in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{database}{stale}"));
    }
    std::fs::copy(&manual, &env.db_path).unwrap();
    let restored = env.spawn_binary(&[]).await;
    for (session, endpoint) in sessions.iter().zip(&endpoints) {
        assert_eq!(restored.api.heartbeat(session).await.status, 200);
        let again = restored.api.provision(Some(session)).await;
        assert_eq!((again.status, again.endpoint()), (200, endpoint.as_str()));
    }
    assert!(restored.terminate().await.success());
}
