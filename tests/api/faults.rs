//! Faults: runners changing behind the service's back, the engine going
//! away and coming back, a bad database, and SIGTERM under load.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use taylored_orchestrator::config::OrphanPolicy;
use taylored_orchestrator::reconcile::Reconciler;
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinSet;

use crate::helpers::{TestEnv, assert_runner_answers, eventually};

#[tokio::test]
async fn a_runner_killed_behind_the_services_back_is_noticed_at_once() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    let first = app.api.provision(Some("victim")).await;

    env.kill_runner("victim").await;
    let latency = env
        .until_row_dropped("victim", Duration::from_secs(5))
        .await;
    eprintln!("drift detection latency (kill to row dropped): {latency:?}");

    assert!(
        env.containers().await.is_empty(),
        "the dead container was not removed"
    );
    let actions = env.audit_actions("victim").await;
    assert_eq!(
        actions,
        [
            "provisioned",
            "engine_event",
            "container_removed",
            "dropped"
        ]
    );
    let trail = env.db().await.audit_trail("victim").await.unwrap();
    assert!(trail[1].reason.contains("die"), "{trail:?}");
    let again = app.api.provision(Some("victim")).await;
    assert_eq!(again.status, 201, "a dead endpoint was returned: {again:?}");
    assert_ne!(again.endpoint(), first.endpoint());
    assert_runner_answers(again.endpoint()).await;
}

#[tokio::test]
async fn a_runner_removed_behind_the_services_back_is_noticed_at_once() {
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    app.api.provision(Some("removed")).await;
    let container = env.row("removed").await.unwrap().container_id.unwrap();

    let force = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
        .force(true)
        .build();
    env.docker
        .remove_container(&container, Some(force))
        .await
        .unwrap();

    env.until_row_dropped("removed", Duration::from_secs(5))
        .await;
    assert_eq!(app.api.heartbeat("removed").await.status, 404);
    assert_eq!(app.api.provision(Some("removed")).await.status, 201);
}

#[tokio::test]
async fn the_timer_reconcile_catches_what_events_miss() {
    // An orphan started while the service runs makes no die/destroy event;
    // the drift reconcile the timer runs adopts it. The pass is stepped here:
    // a timer could look between the container's create and its start and
    // rightly remove it as a stopped orphan.
    let env = TestEnv::new();
    let app = env.spawn(&[]).await;
    env.create_runner_container("late-orphan", &format!("{}-late", env.instance), true)
        .await;

    let reconciler = Reconciler::new(app.runners.clone(), OrphanPolicy::Adopt);
    let summary = reconciler.run_drift().await.unwrap();

    assert_eq!(summary.adopted, 1, "{summary:?}");
    assert!(env.row("late-orphan").await.is_some());
    assert_eq!(app.api.heartbeat("late-orphan").await.status, 200);
    // A second pass finds nothing to do.
    assert_eq!(reconciler.run_drift().await.unwrap(), Default::default());
}

/// A TCP front for the engine's socket that a test can cut and restore, so
/// the service sees the engine vanish and come back for real.
struct EngineProxy {
    port: u16,
    connections: Option<JoinSet<()>>,
}

impl EngineProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Self {
            port,
            connections: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn docker_host(&self) -> String {
        format!("--docker-host=tcp://127.0.0.1:{}", self.port)
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut connections = JoinSet::new();
        let socket = engine_socket();
        connections.spawn(async move {
            let mut tunnels = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let socket = socket.clone();
                tunnels.spawn(async move {
                    if let Ok(mut engine) = UnixStream::connect(&socket).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        self.connections = Some(connections);
    }

    /// Closes the listener and every open connection.
    fn cut(&mut self) {
        // Dropping the set aborts the accept loop, which drops the tunnels.
        self.connections = None;
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

fn engine_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => {
            PathBuf::from(host.trim_start_matches("unix://"))
        }
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

#[tokio::test]
async fn engine_outage_while_serving_fails_fast_keeps_heartbeats_and_converges() {
    let mut proxy = EngineProxy::start().await;
    let env = TestEnv::new();
    let app = env.spawn(&[&proxy.docker_host()]).await;
    let kept = app.api.provision(Some("kept")).await;
    assert_eq!(kept.status, 201);
    assert_eq!(app.api.provision(Some("idle")).await.status, 201);

    proxy.cut();

    let started = Instant::now();
    let refused = app.api.provision(Some("during-outage")).await;
    eprintln!(
        "provision during the outage answered in {:?}",
        started.elapsed()
    );
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.error(), "DOCKER_UNAVAILABLE");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Heartbeats are answered from the database.
    assert_eq!(app.api.heartbeat("kept").await.status, 200);
    let ready = app.api.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.message().contains("Docker Engine"), "{ready:?}");
    // Once the health check has noticed, provisions fail without waiting.
    eventually(
        Duration::from_secs(5),
        "the health check noticing",
        || async { !app.runners.health().is_reachable() },
    )
    .await;
    let started = Instant::now();
    assert_eq!(app.api.provision(None).await.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The reaper keeps what it cannot remove.
    let reaper = app.reaper(Duration::from_secs(60));
    let later = Utc::now() + chrono::Duration::seconds(120);
    // Three rows: the two runners, and the refused provision's claim, kept
    // `removing` because the engine could not confirm no container exists.
    let outcome = reaper.try_once(later).await.unwrap();
    assert_eq!((outcome.reaped, outcome.failed), (0, 3), "{outcome:?}");
    assert_eq!(app.runners.db().all().await.unwrap().len(), 3);
    assert_eq!(env.running_container_ids().await.len(), 2);

    proxy.restore().await;

    eventually(
        Duration::from_secs(10),
        "the engine being reachable again",
        || async { app.api.get("/readyz").await.status == 200 },
    )
    .await;
    let provisioned = app.api.provision(Some("after-outage")).await;
    assert_eq!(provisioned.status, 201, "{provisioned:?}");
    let outcome = reaper.try_once(later).await.unwrap();
    // The drift reconcile after the event stream reconnects may finish the
    // refused claim's removal first; the reaper then spares it.
    assert_eq!(outcome.failed, 0, "{outcome:?}");
    assert!(app.runners.db().all().await.unwrap().is_empty());
    assert_eq!(env.containers().await.len(), 0);
}

#[tokio::test]
async fn engine_down_at_start_delays_readiness_until_it_returns() {
    let mut proxy = EngineProxy::start().await;
    let env = TestEnv::new();
    // A runner from an earlier life, to be kept once the engine is back.
    let app = env.spawn(&[&proxy.docker_host()]).await;
    let survivor = app.api.provision(Some("survivor")).await;
    let env = app.stop().await;

    proxy.cut();
    let app = env.start(&[&proxy.docker_host()]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let ready = app.api.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.error()),
        (503, "NOT_READY"),
        "{ready:?}"
    );
    assert!(ready.message().contains("startup reconcile"), "{ready:?}");
    let refused = app.api.heartbeat("survivor").await;
    assert_eq!((refused.status, refused.error()), (503, "NOT_READY"));
    let live = app.api.get("/healthz").await;
    assert_eq!(live.status, 200);

    proxy.restore().await;

    let summary = tokio::time::timeout(Duration::from_secs(20), app.readiness.wait_ready())
        .await
        .expect("ready after the engine returned");
    assert_eq!(summary.kept, 1);
    assert_eq!(app.api.heartbeat("survivor").await.status, 200);
    assert_eq!(
        app.api.provision(Some("survivor")).await.endpoint(),
        survivor.endpoint()
    );
}

/// Runs the binary on `database_url` and expects it to refuse to start.
fn refuses_to_start(database_url: &str, expected: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .env("DATABASE_URL", database_url)
        .env("PORT", "0")
        .env("LISTEN_ADDRESS", "127.0.0.1")
        .env(
            "ORCHESTRATOR_ID",
            format!("db-fault-{}", uuid::Uuid::new_v4().simple()),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started on {database_url}: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected `{expected}` in: {stderr}"
    );
}

#[test]
fn a_database_path_that_cannot_be_created_is_refused() {
    refuses_to_start(
        "/nonexistent-dir/orchestrator.db",
        "cannot create the database lock file",
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db");
    let content = b"these are not the bytes of a SQLite database".repeat(200);
    std::fs::write(&path, &content).unwrap();
    refuses_to_start(path.to_str().unwrap(), "cannot open the database");
    assert_eq!(std::fs::read(&path).unwrap(), content);
}

#[tokio::test]
async fn a_mismatched_or_newer_schema_is_refused() {
    let env = TestEnv::new();
    let db = env.db().await;
    let path = env.db_path.to_str().unwrap().to_owned();
    let history = |sql: &'static str| sqlx::query(sql).execute(db.pool());
    let original: String =
        sqlx::query_scalar("SELECT checksum FROM refinery_schema_history WHERE version = 1")
            .fetch_one(db.pool())
            .await
            .unwrap();

    history("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1")
        .await
        .unwrap();
    refuses_to_start(&path, "differs from this binary's");

    sqlx::query("UPDATE refinery_schema_history SET checksum = ? WHERE version = 1")
        .bind(&original)
        .execute(db.pool())
        .await
        .unwrap();
    history(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '42')",
    )
    .await
    .unwrap();
    refuses_to_start(&path, "written by a newer orchestrator");
}

#[tokio::test]
async fn a_second_service_on_the_same_database_refuses_to_start() {
    let env = TestEnv::new();
    let first = env.spawn_binary(&[]);
    refuses_to_start(
        env.db_path.to_str().unwrap(),
        "another orchestrator is already using the database",
    );
    // The first one is unaffected.
    assert_eq!(first.api.provision(Some("still-fine")).await.status, 201);
}

#[tokio::test]
async fn sigterm_under_load_finishes_or_undoes_every_provision() {
    let env = TestEnv::new();
    let orchestrator = env.spawn_binary(&[]);
    let api = orchestrator.api.clone();
    let load = tokio::spawn(async move {
        join_all((0..12).map(|i| {
            let api = api.clone();
            async move { (i, api.provision(Some(&format!("inflight-{i}"))).await) }
        }))
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let started = Instant::now();
    let status = orchestrator.terminate();
    eprintln!("exited {:?} after SIGTERM under load", started.elapsed());
    assert!(status.success(), "{status:?}");
    let replies = load.await.unwrap();

    let orchestrator = env.spawn_binary(&[]);
    let logs = orchestrator.logs.lock().unwrap().clone();
    let summary = logs
        .iter()
        .find(|event| event["message"] == "startup reconcile finished")
        .expect("summary line")["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("next start: {summary}");
    assert!(
        summary.contains("containers_removed=0 rows_dropped=0 failed=0"),
        "{summary}"
    );
    let rows = env.db().await.all().await.unwrap();
    assert_eq!(rows.len(), env.running_container_ids().await.len());
    for (i, reply) in replies {
        let session = format!("inflight-{i}");
        if reply.status == 201 {
            assert_eq!(
                orchestrator.api.heartbeat(&session).await.status,
                200,
                "{session}"
            );
        }
    }
}

#[tokio::test]
async fn a_first_run_without_the_runner_image_says_what_is_missing() {
    let image = format!("taylored-test-missing:{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::with_image(&image);
    let orchestrator = env.spawn_binary(&[]);

    let ready = orchestrator.api.get("/readyz").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.message().contains(&image) && ready.message().contains("build"),
        "{ready:?}"
    );
    eventually(
        Duration::from_secs(10),
        "a log line naming the image",
        || {
            let logged = orchestrator.logs.lock().unwrap().iter().any(|event| {
                event["level"] == "WARN"
                    && event["message"]
                        .as_str()
                        .is_some_and(|text| text.contains(&image))
            });
            std::future::ready(logged)
        },
    )
    .await;
    // The service stays up and says the same to a provision.
    assert_eq!(orchestrator.api.get("/").await.status, 200);
    let refused = orchestrator.api.provision(Some("first")).await;
    assert_eq!(refused.error(), "DOCKER_IMAGE_NOT_FOUND", "{refused:?}");

    // Once the image is there, the service is ready without a restart.
    let tagged = Command::new("docker")
        .args(["tag", &crate::helpers::images().runner, &image])
        .status()
        .unwrap();
    assert!(tagged.success());
    let ready = orchestrator.api.get("/readyz").await;
    let provisioned = orchestrator.api.provision(Some("first")).await;
    let _ = Command::new("docker").args(["rmi", &image]).output();
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(provisioned.status, 201, "{provisioned:?}");
}
