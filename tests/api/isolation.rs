//! Runners execute untrusted code: their limits, read back from the engine
//! and shown to bite; and admission control on the provisioning endpoint.

use std::time::Duration;

use bollard::query_parameters::InspectNetworkOptions;
use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{TestEnv, assert_runner_answers, eventually, images, spawn_app_with};

#[tokio::test]
async fn every_limit_is_set_on_the_container() {
    let env = TestEnv::new();
    let network = format!("{}-runners", env.instance);
    let app = env
        .spawn(&[
            "--runner-read-only=true",
            "--runner-capabilities=CHOWN",
            &format!("--runner-network={network}"),
        ])
        .await;

    let reply = app.api.provision(Some("confined")).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_runner_answers(reply.endpoint()).await;

    let row = env.row("confined").await.unwrap();
    let host = env
        .inspect(row.container_id.as_deref().unwrap())
        .await
        .host_config
        .unwrap();
    assert_eq!(host.memory, Some(512 << 20));
    assert_eq!(
        host.memory_swap,
        Some(512 << 20),
        "no swap beyond the limit"
    );
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.pids_limit, Some(256));
    let nofile = &host.ulimits.unwrap()[0];
    assert_eq!(
        (nofile.name.as_deref(), nofile.soft, nofile.hard),
        (Some("nofile"), Some(1024), Some(1024))
    );
    assert_eq!(host.security_opt.unwrap(), ["no-new-privileges:true"]);
    assert_eq!(host.cap_drop.unwrap(), ["ALL"]);
    assert_eq!(host.cap_add.unwrap(), ["CHOWN"]);
    assert_eq!(host.readonly_rootfs, Some(true));
    assert!(host.tmpfs.unwrap()["/tmp"].contains("size=67108864"));
    assert_eq!(host.network_mode.as_deref(), Some(network.as_str()));
    let created = env
        .docker
        .inspect_network(&network, None::<InspectNetworkOptions>)
        .await
        .unwrap();
    assert_eq!(
        created.options.unwrap()["com.docker.network.bridge.enable_icc"],
        "false"
    );
}

#[tokio::test]
async fn a_runner_past_its_memory_limit_is_oom_killed_and_replaced() {
    let env = TestEnv::new();
    let hog = format!("--docker-image-name={}", images().memory_hog);
    let app = env.spawn(&[&hog, "--runner-memory=64m"]).await;

    let first = app.api.provision(Some("greedy")).await;
    assert_eq!(first.status, 201, "{first:?}");

    eventually(
        Duration::from_secs(15),
        "the OOM kill being recorded",
        || async { env.row("greedy").await.is_none() },
    )
    .await;
    let trail = env.db().await.audit_trail("greedy").await.unwrap();
    let event = trail
        .iter()
        .find(|record| record.action == "engine_event")
        .expect("an engine_event");
    assert!(
        event.reason.contains("oom") || event.reason.contains("exit code 137"),
        "{trail:?}"
    );
    let again = app.api.provision(Some("greedy")).await;
    assert_eq!(again.status, 201, "{again:?}");
}

#[tokio::test]
async fn a_runner_that_spawns_without_end_stays_contained() {
    let spawner = format!("--docker-image-name={}", images().thread_spawner);
    let app = spawn_app_with(&[&spawner, "--runner-pids-limit=64"]).await;

    let reply = app.api.provision(Some("spawner")).await;
    assert_eq!(reply.status, 201, "{reply:?}");

    let mut report = Value::Null;
    for _ in 0..50 {
        if let Ok(response) = reqwest::get(reply.endpoint()).await {
            report = response.json().await.unwrap_or_default();
            if report["threads_started"].as_u64().unwrap_or(0) > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = report["threads_started"].as_u64().unwrap_or(0);
    assert!(started > 0 && started < 64, "threads started: {report}");
    // Still alive, still tracked, and the service unharmed.
    assert_eq!(app.api.heartbeat("spawner").await.status, 200);
    assert_eq!(app.api.provision(Some("bystander")).await.status, 201);
}

#[tokio::test]
async fn at_most_max_concurrent_runners_even_under_a_stampede() {
    let app = spawn_app_with(&["--max-concurrent-runners=10"]).await;

    let replies = join_all((0..100).map(|i| {
        let api = app.api.clone();
        async move { api.provision(Some(&format!("stampede-{i}"))).await }
    }))
    .await;

    let created = replies.iter().filter(|reply| reply.status == 201).count();
    let refused: Vec<_> = replies.iter().filter(|reply| reply.status == 503).collect();
    assert_eq!((created, refused.len()), (10, 90), "{replies:?}");
    assert!(
        refused
            .iter()
            .all(|reply| reply.error() == "RUNNER_LIMIT_REACHED"
                && reply.headers.contains_key("retry-after"))
    );
    assert_eq!(app.env.containers().await.len(), 10);
    // An existing session is still answered at the limit.
    let existing = replies.iter().find(|reply| reply.status == 201).unwrap();
    let again = app.api.provision(Some(existing.session_id())).await;
    assert_eq!(again.status, 200);
}

#[tokio::test]
async fn provisions_are_rate_limited_per_client() {
    // One a minute (a burst of one): the limit holds however slow the
    // provisions are on a loaded machine.
    let app = spawn_app_with(&[
        "--provision-rate-per-minute=1",
        "--trust-forwarded-for=true",
    ])
    .await;
    let from = |address: &'static str, session: &'static str| {
        app.api
            .post("/api/runner/provision")
            .header("X-Forwarded-For", address)
            .header("X-Session-Id", session)
    };

    assert_eq!(app.api.send(from("203.0.113.7", "a")).await.status, 201);
    let limited = app.api.send(from("203.0.113.7", "b")).await;
    assert_eq!(
        (limited.status, limited.error()),
        (429, "RATE_LIMITED"),
        "{limited:?}"
    );
    assert!(limited.headers.contains_key("retry-after"));
    // Another client is not affected, nor are heartbeats.
    assert_eq!(app.api.send(from("198.51.100.9", "c")).await.status, 201);
    assert_eq!(app.api.heartbeat("a").await.status, 200);
    assert!(app.env.row("b").await.is_none());
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let app = spawn_app_with(&["--provision-rate-per-minute=1"]).await;
    let from = |address: &'static str| {
        app.api
            .post("/api/runner/provision")
            .header("X-Forwarded-For", address)
    };
    assert_eq!(app.api.send(from("203.0.113.1")).await.status, 201);
    // A forged header does not buy a fresh allowance.
    assert_eq!(app.api.send(from("203.0.113.2")).await.status, 429);
}

#[tokio::test]
async fn runners_older_than_the_maximum_age_are_reaped_however_active() {
    let app = spawn_app_with(&["--max-runner-age=2", "--cleanup-interval=1"]).await;
    assert_eq!(app.api.provision(Some("ancient")).await.status, 201);

    let started = std::time::Instant::now();
    while app.env.row("ancient").await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not reaped by age"
        );
        assert!([200, 404].contains(&app.api.heartbeat("ancient").await.status));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert!(app.env.containers().await.is_empty());
    let trail = app.runners.db().audit_trail("ancient").await.unwrap();
    let last = trail.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.reason.as_str()),
        ("reaped", "older than MAX_RUNNER_AGE_SECONDS")
    );
}
