//! Faults: runners changing behind the service's back, the engine going
//! away and coming back, a bad database, and SIGTERM under load.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use taylored_orchestrator::db::RunnerState;
use taylored_orchestrator::readiness::Phase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
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

    let reconciler = app.service.reconciler();
    let summary = reconciler.run_drift().await.unwrap();

    assert_eq!(summary.adopted, 1, "{summary:?}");
    assert!(env.row("late-orphan").await.is_some());
    assert_eq!(app.api.heartbeat("late-orphan").await.status, 200);
    // A second pass finds nothing to do.
    assert_eq!(reconciler.run_drift().await.unwrap(), Default::default());
}

/// A TCP front for the engine's socket that a test can cut and restore, so
/// the service sees the engine vanish and come back for real, or hold, so
/// that the service's requests wait at the engine for as long as the test
/// needs them in flight.
struct EngineProxy {
    port: u16,
    connections: Option<JoinSet<()>>,
    /// While true, nothing the service sends reaches the engine.
    held: watch::Sender<bool>,
}

impl EngineProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut proxy = Self {
            port,
            connections: None,
            held: watch::Sender::new(false),
        };
        proxy.serve(listener);
        proxy
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn docker_host(&self) -> String {
        format!("--docker-host={}", self.url())
    }

    fn serve(&mut self, listener: TcpListener) {
        let mut connections = JoinSet::new();
        let socket = engine_socket();
        let held = self.held.clone();
        connections.spawn(async move {
            let mut tunnels = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (socket, held) = (socket.clone(), held.subscribe());
                tunnels.spawn(async move {
                    if let Ok(engine) = UnixStream::connect(&socket).await {
                        tunnel(client, engine, held).await;
                    }
                });
            }
        });
        self.connections = Some(connections);
    }

    /// Holds every request to the engine (answers already on their way
    /// still arrive) until [`EngineProxy::release`].
    fn hold(&self) {
        self.held.send_replace(true);
    }

    fn release(&self) {
        self.held.send_replace(false);
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

/// Copies both ways; what the client sends waits while `held` is true.
async fn tunnel(client: TcpStream, engine: UnixStream, mut held: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut engine_read, mut engine_write) = engine.into_split();
    let requests = async {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = client_read.read(&mut buffer).await {
            if held.wait_for(|held| !held).await.is_err()
                || engine_write.write_all(&buffer[..read]).await.is_err()
            {
                break;
            }
        }
    };
    let answers = tokio::io::copy(&mut engine_read, &mut client_write);
    tokio::select! {
        () = requests => {}
        _ = answers => {}
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
        || async { !app.service.health.is_reachable() },
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
    // The two runners' rows, and the refused provision's claim if it got
    // as far as the engine before the health check noticed (then it is kept
    // `removing`: the engine could not confirm no container exists); a
    // provision refused by the health check writes nothing.
    let refused_claim = app.service.db.find("during-outage").await.unwrap();
    if let Some(row) = &refused_claim {
        assert_eq!(row.state, RunnerState::Removing, "{row:?}");
    }
    let rows = 2 + usize::from(refused_claim.is_some());
    let outcome = reaper.try_once(later).await.unwrap();
    assert_eq!((outcome.reaped, outcome.failed), (0, rows), "{outcome:?}");
    assert_eq!(app.service.db.all().await.unwrap().len(), rows);
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
    assert!(app.service.db.all().await.unwrap().is_empty());
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
    // Not ready because an attempt failed, not because none was made yet.
    eventually(
        Duration::from_secs(10),
        "a failed attempt of the startup reconcile",
        || async {
            matches!(app.readiness.phase(), Phase::Starting(reason) if reason.contains("failed"))
        },
    )
    .await;

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

#[tokio::test]
async fn a_request_during_the_startup_reconcile_waits_for_it_instead_of_503() {
    let proxy = EngineProxy::start().await;
    let env = TestEnv::new();
    let app = env.spawn(&[&proxy.docker_host()]).await;
    assert_eq!(app.api.provision(Some("kept")).await.status, 201);
    let env = app.stop().await;

    // The engine does not answer yet: the startup reconcile waits for its
    // list, and a heartbeat that arrives meanwhile waits for the reconcile.
    proxy.hold();
    let app = env.start(&[&proxy.docker_host()]).await;
    let api = app.api.clone();
    let mut heartbeat = tokio::spawn(async move { api.heartbeat("kept").await });
    let ready = app.api.get("/readyz").await;
    assert_eq!((ready.status, ready.error()), (503, "NOT_READY"));
    assert!(
        ready.message().contains("startup reconcile is running"),
        "{ready:?}"
    );
    assert_eq!(app.readiness.phase(), Phase::Reconciling);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut heartbeat)
            .await
            .is_err(),
        "answered before the startup reconcile"
    );

    proxy.release();
    let answered = heartbeat.await.unwrap();
    assert_eq!(answered.status, 200, "{answered:?}");
    assert_eq!(app.readiness.wait_ready().await.kept, 1);
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

/// The damaged files next to `database`, moved aside by a start.
pub(crate) fn moved_aside(database: &std::path::Path) -> Vec<PathBuf> {
    let name = database.file_name().unwrap().to_string_lossy().into_owned();
    let mut found: Vec<PathBuf> = std::fs::read_dir(database.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.damaged-"))
        })
        .collect();
    found.sort();
    found
}

/// The three kinds of damage a start moves aside instead of refusing:
/// bytes that are not SQLite, a file that fails SQLite's integrity check,
/// and a schema written by a newer orchestrator.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Damage {
    NotSqlite,
    Corrupt,
    Newer,
}

impl Damage {
    /// Damages the (stopped) service's database this way; returns what
    /// the file then holds.
    pub(crate) async fn inflict(self, env: &TestEnv) -> Vec<u8> {
        let path = &env.db_path;
        match self {
            Damage::NotSqlite => {
                for stale in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{stale}", path.display()));
                }
                std::fs::write(
                    path,
                    b"these are not the bytes of a SQLite database".repeat(200),
                )
                .unwrap();
            }
            Damage::Corrupt => {
                // Everything in the main file, then garbage over every page
                // but the first (the header stays valid, the b-trees do not).
                let db = env.db().await;
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(db.pool())
                    .await
                    .unwrap();
                db.pool().close().await;
                let mut bytes = std::fs::read(path).unwrap();
                let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
                assert!(bytes.len() > page, "a database of one page");
                for (i, byte) in bytes[page..].iter_mut().enumerate() {
                    *byte = (i * 31 % 251) as u8;
                }
                std::fs::write(path, &bytes).unwrap();
            }
            Damage::Newer => {
                let db = env.db().await;
                sqlx::query(
                    "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                     VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '42')",
                )
                .execute(db.pool())
                .await
                .unwrap();
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(db.pool())
                    .await
                    .unwrap();
                db.pool().close().await;
            }
        }
        std::fs::read(path).unwrap()
    }
}

/// Provisions, stops the service, damages its database, starts it again:
/// the damaged file is moved aside as it was, the log and the audit trail
/// say so, and every session answers as before (heartbeat 200, provision
/// 200 with the same endpoint).
async fn a_damaged_database_is_moved_aside_and_rebuilt(damage: Damage) {
    let env = TestEnv::new();
    let app = env.spawn_binary(&[("ORPHAN_POLICY", "remove")]).await;
    let sessions = ["rebuilt-1", "rebuilt-2"];
    let mut endpoints = Vec::new();
    for session in sessions {
        let reply = app.api.provision(Some(session)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        endpoints.push(reply.endpoint().to_owned());
    }
    assert!(app.terminate().await.success());
    let damaged = damage.inflict(&env).await;

    // ORPHAN_POLICY=remove would remove every runner of an empty database:
    // a rebuild adopts them whatever it says.
    let app = env.spawn_binary(&[("ORPHAN_POLICY", "remove")]).await;
    let aside = moved_aside(&env.db_path);
    assert_eq!(aside.len(), 1, "{damage:?}: {aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), damaged, "{damage:?}");
    let line = app
        .logs
        .lines()
        .into_iter()
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the database is damaged ("))
        })
        .unwrap_or_else(|| panic!("{damage:?}: no `the database is damaged` log line"));
    assert_eq!(
        line["moved_to"].as_str(),
        Some(aside[0].display().to_string().as_str()),
        "{line}"
    );
    let why = line["message"].as_str().unwrap_or_default();
    let said = match damage {
        Damage::NotSqlite => why.contains("file is not a database"),
        Damage::Corrupt => why.contains("integrity check") || why.contains("malformed"),
        Damage::Newer => why.contains("newer orchestrator"),
    };
    assert!(said, "{damage:?}: {why}");
    for (session, endpoint) in sessions.iter().zip(&endpoints) {
        assert_eq!(app.api.heartbeat(session).await.status, 200, "{damage:?}");
        let again = app.api.provision(Some(session)).await;
        assert_eq!(
            (again.status, again.endpoint()),
            (200, endpoint.as_str()),
            "{damage:?}"
        );
    }
    let trail = env.db().await.audit_trail("(database)").await.unwrap();
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(trail[0].action, "rebuilt");
    assert!(
        trail[0].reason.contains("rebuilt from the engine")
            && trail[0].reason.contains(&aside[0].display().to_string()),
        "{trail:?}"
    );
    assert!(app.terminate().await.success());
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_moved_aside_and_rebuilt() {
    a_damaged_database_is_moved_aside_and_rebuilt(Damage::NotSqlite).await;
}

#[tokio::test]
async fn a_database_that_fails_its_integrity_check_is_moved_aside_and_rebuilt() {
    a_damaged_database_is_moved_aside_and_rebuilt(Damage::Corrupt).await;
}

#[tokio::test]
async fn a_database_of_a_newer_orchestrator_is_moved_aside_and_rebuilt() {
    a_damaged_database_is_moved_aside_and_rebuilt(Damage::Newer).await;
}

#[test]
fn a_directory_in_place_of_the_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orchestrator.db");
    std::fs::create_dir(&path).unwrap();
    refuses_to_start(path.to_str().unwrap(), "cannot open the database");
    assert!(path.is_dir());
    assert!(moved_aside(&path).is_empty());
}

#[tokio::test]
async fn a_mismatched_schema_is_refused_and_left_alone() {
    let env = TestEnv::new();
    let db = env.db().await;
    let path = env.db_path.to_str().unwrap().to_owned();
    sqlx::query("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1")
        .execute(db.pool())
        .await
        .unwrap();
    refuses_to_start(&path, "differs from this binary's");
    assert!(moved_aside(&env.db_path).is_empty());
}

#[tokio::test]
async fn a_second_service_on_the_same_database_refuses_to_start() {
    let env = TestEnv::new();
    let first = env.spawn_binary(&[]).await;
    refuses_to_start(
        env.db_path.to_str().unwrap(),
        "another orchestrator is already using the database",
    );
    assert!(moved_aside(&env.db_path).is_empty());
    // The first one is unaffected.
    assert_eq!(first.api.provision(Some("still-fine")).await.status, 201);
}

/// SIGTERM while provisions are with the engine: the engine is held, so
/// they are in flight when the signal arrives (their rows claimed, their
/// starts unanswered), and released only after it. The service finishes
/// them all, exits 0, and leaves the next start nothing to repair.
#[tokio::test]
async fn sigterm_under_load_finishes_every_provision_in_flight() {
    let proxy = EngineProxy::start().await;
    let env = TestEnv::new();
    let orchestrator = env.spawn_binary(&[("DOCKER_HOST", &proxy.url())]).await;
    let api = orchestrator.api.clone();
    proxy.hold();
    let load = tokio::spawn(async move {
        join_all((0..12).map(|i| {
            let api = api.clone();
            async move { (i, api.provision(Some(&format!("inflight-{i}"))).await) }
        }))
        .await
    });
    // The engine takes 8 starts at once; the other 4 wait their turn.
    let starting = |event: &serde_json::Value| event["message"] == "starting runner";
    eventually(
        Duration::from_secs(30),
        "8 starts sent to the engine",
        || {
            let sent = orchestrator
                .logs
                .lines()
                .iter()
                .filter(|e| starting(e))
                .count();
            std::future::ready(sent == 8)
        },
    )
    .await;

    orchestrator.send_sigterm();
    let in_flight = env.db().await.all().await.unwrap();
    assert_eq!(in_flight.len(), 8, "{in_flight:?}");
    assert!(
        in_flight
            .iter()
            .all(|row| row.state == RunnerState::Provisioning),
        "a provision ended before SIGTERM: {in_flight:?}"
    );
    assert!(
        !load.is_finished(),
        "a provision was answered before SIGTERM"
    );
    proxy.release();

    let started = Instant::now();
    let status = orchestrator.wait_exit().await;
    eprintln!(
        "exited {:?} after the engine was released",
        started.elapsed()
    );
    assert!(status.success(), "{status:?}");
    let replies = load.await.unwrap();
    for (i, reply) in &replies {
        assert_eq!(reply.status, 201, "inflight-{i}: {reply:?}");
    }

    let orchestrator = env.spawn_binary(&[]).await;
    let summary = orchestrator.log_field("startup reconcile finished", "summary");
    eprintln!("next start: {summary}");
    assert!(
        summary.contains("kept=12 ")
            && summary.contains("containers_removed=0 rows_dropped=0 failed=0"),
        "{summary}"
    );
    assert_eq!(env.running_container_ids().await.len(), 12);
    for (i, _) in replies {
        let session = format!("inflight-{i}");
        let heartbeat = orchestrator.api.heartbeat(&session).await;
        assert_eq!(heartbeat.status, 200, "{session}");
    }
}

#[tokio::test]
async fn a_first_run_without_the_runner_image_says_what_is_missing() {
    let image = format!("taylored-test-missing:{}", uuid::Uuid::new_v4().simple());
    let env = TestEnv::with_image(&image);
    let orchestrator = env.spawn_binary(&[]).await;

    let ready = orchestrator.api.get("/readyz").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready.message().contains(&image) && ready.message().contains("build"),
        "{ready:?}"
    );
    let names_image = |event: &serde_json::Value| {
        event["level"] == "WARN"
            && event["message"]
                .as_str()
                .is_some_and(|text| text.contains(&image))
    };
    orchestrator
        .logs
        .wait_for_line(
            Duration::from_secs(10),
            "a warning naming the image",
            names_image,
        )
        .await
        .unwrap();
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
