//! Runners execute untrusted code: their limits, read back from the engine
//! and shown to bite; and admission control on the provisioning endpoint.

use std::time::{Duration, Instant};

use bollard::query_parameters::InspectNetworkOptions;
use futures_util::future::join_all;
use serde_json::Value;
use taylored_orchestrator::capacity::derived_limit;
use taylored_orchestrator::config::Settings;

use crate::helpers::{
    TestEnv, assert_runner_answers, eventually, images, spawn_app_with, wait_for,
};

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

    let report: Value = wait_for(
        Duration::from_secs(5),
        "the runner reporting threads",
        || async {
            let response = reqwest::get(reply.endpoint()).await.ok()?;
            let report: Value = response.json().await.ok()?;
            (report["threads_started"].as_u64().unwrap_or(0) > 0).then_some(report)
        },
    )
    .await;
    let started = report["threads_started"].as_u64().unwrap_or(0);
    assert!(started < 64, "threads started: {report}");
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
    // One a minute, a burst of one: the limit holds however slow the
    // provisions are on a loaded machine.
    let app = spawn_app_with(&[
        "--provision-rate-per-minute=1",
        "--provision-burst=1",
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
    let app = spawn_app_with(&["--provision-rate-per-minute=1", "--provision-burst=1"]).await;
    let from = |address: &'static str| {
        app.api
            .post("/api/runner/provision")
            .header("X-Forwarded-For", address)
    };
    assert_eq!(app.api.send(from("203.0.113.1")).await.status, 201);
    // A forged header does not buy a fresh allowance.
    assert_eq!(app.api.send(from("203.0.113.2")).await.status, 429);
}

/// The service's defaults (no setting in this process's environment).
fn defaults() -> Settings {
    Settings::from_env_and_args(["orchestrator"]).unwrap()
}

/// The default per-address limit, as a flag: the test harness turns it off
/// (tests provision in bursts from one address), and these tests put it
/// back. `MAX_CONCURRENT_RUNNERS` and `PROVISION_BURST` are not set by the
/// harness, so they are the defaults.
fn default_provision_rate() -> String {
    format!(
        "--provision-rate-per-minute={}",
        defaults().admission.provision_rate_per_minute
    )
}

/// The `orchestrator_runner_limit` gauge.
/// It is worked out right after ready, so it may read 0 (unknown) at first.
async fn runner_limit_gauge(app: &crate::helpers::TestApp) -> u64 {
    let what = "the runner limit known (10 s after ready)";
    wait_for(Duration::from_secs(10), what, || async {
        let text = app.api.metrics().await;
        let limit: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix("orchestrator_runner_limit "))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no runner limit in:\n{text}"));
        (limit != 0).then_some(limit)
    })
    .await
}

/// What the engine reports as its memory (`MemTotal`).
async fn engine_memory(env: &TestEnv) -> u64 {
    let info = env.docker.info().await.unwrap();
    info.mem_total.unwrap().try_into().unwrap()
}

#[tokio::test]
async fn a_class_behind_one_address_is_admitted_with_the_defaults() {
    // Every setting that admission depends on at its default (the request
    // timeout too: the service starts 8 runners at a time, and the last of
    // the class waits its turn).
    let app = spawn_app_with(&[&default_provision_rate()]).await;
    // The host is still protected: the limit derived from the engine's
    // memory is in force, and it has room for the class.
    let limit = runner_limit_gauge(&app).await;
    let expected = derived_limit(
        engine_memory(&app.env).await,
        defaults().limits.runner_memory,
    );
    assert_eq!(limit, u64::from(expected));
    assert!(limit >= 100, "this host holds only {limit} runners");

    let sessions: Vec<String> = (0..100).map(|i| format!("pupil-{i}")).collect();
    let started = Instant::now();
    let replies = join_all(
        sessions
            .iter()
            .map(|session| app.api.provision(Some(session))),
    )
    .await;
    let refused: Vec<_> = replies.iter().filter(|reply| reply.status != 201).collect();
    assert!(refused.is_empty(), "{} refused: {refused:?}", refused.len());
    eprintln!("100 provisions from one address: {:?}", started.elapsed());
    assert_eq!(app.env.containers().await.len(), 100);

    let gone = join_all(sessions.iter().map(|session| app.api.deprovision(session))).await;
    assert!(gone.iter().all(|reply| reply.status == 200), "{gone:?}");
    assert!(app.env.containers().await.is_empty());
}

#[tokio::test]
async fn one_address_is_still_limited_by_default() {
    let admission = defaults().admission;
    let burst = admission.provision_burst as usize;
    let period = 60.0 / f64::from(admission.provision_rate_per_minute);
    let app = spawn_app_with(&[&default_provision_rate(), "--trust-forwarded-for=true"]).await;
    // Requests refused before provisioning (a malformed session id) count
    // against the limit like any other, and start nothing, so the burst can
    // be spent in well under a second, before the sustained rate (one
    // every `period`) gives much back.
    let malformed = || {
        app.api
            .post("/api/runner/provision")
            .header("X-Forwarded-For", "203.0.113.7")
            .header("X-Session-Id", "not a session id")
    };
    let sent = burst + 40;
    let started = Instant::now();
    let replies = join_all((0..sent).map(|_| app.api.send(malformed()))).await;
    let elapsed = started.elapsed();

    let admitted = replies.iter().filter(|reply| reply.status == 400).count();
    let limited: Vec<_> = replies.iter().filter(|reply| reply.status == 429).collect();
    assert_eq!(admitted + limited.len(), sent, "{replies:?}");
    let refilled = (elapsed.as_secs_f64() / period).ceil() as usize;
    assert!(
        (burst..=burst + refilled).contains(&admitted),
        "{admitted} admitted of {sent} in {elapsed:?} with a burst of {burst}"
    );
    assert!(!limited.is_empty());
    assert!(
        limited
            .iter()
            .all(|reply| reply.error() == "RATE_LIMITED"
                && reply.headers.contains_key("retry-after"))
    );
    // Another address is not affected.
    let other = app
        .api
        .post("/api/runner/provision")
        .header("X-Forwarded-For", "198.51.100.9")
        .header("X-Session-Id", "next-door");
    assert_eq!(app.api.send(other).await.status, 201);
    assert_eq!(app.env.containers().await.len(), 1);
}

#[tokio::test]
async fn the_derived_limit_refuses_provisions_beyond_the_engines_memory() {
    let env = TestEnv::new();
    let memory = engine_memory(&env).await;
    // Runners so large that the engine's memory holds two and a half.
    let runner_memory = memory * 4 * 2 / 5;
    assert_eq!(derived_limit(memory, runner_memory as i64), 2);
    let app = env
        .spawn(&[&format!("--runner-memory={runner_memory}")])
        .await;
    assert_eq!(runner_limit_gauge(&app).await, 2);

    for session in ["first", "second"] {
        let reply = app.api.provision(Some(session)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    let beyond = app.api.provision(Some("third")).await;
    assert_eq!(
        (beyond.status, beyond.error()),
        (503, "RUNNER_LIMIT_REACHED"),
        "{beyond:?}"
    );
    assert!(beyond.headers.contains_key("retry-after"));
    assert!(env.row("third").await.is_none());
    assert_eq!(env.containers().await.len(), 2);
    // A place freed is a place taken.
    assert_eq!(app.api.deprovision("first").await.status, 200);
    assert_eq!(app.api.provision(Some("third")).await.status, 201);
}

#[tokio::test]
async fn runners_older_than_the_maximum_age_are_reaped_however_active() {
    let app = spawn_app_with(&["--max-runner-age=2", "--cleanup-interval=1"]).await;
    assert_eq!(app.api.provision(Some("ancient")).await.status, 201);

    eventually(
        Duration::from_secs(10),
        "the runner reaped by age",
        || async {
            assert!([200, 404].contains(&app.api.heartbeat("ancient").await.status));
            app.env.row("ancient").await.is_none()
        },
    )
    .await;

    assert!(app.env.containers().await.is_empty());
    let trail = app.service.db.audit_trail("ancient").await.unwrap();
    let last = trail.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.reason.as_str()),
        ("reaped", "older than MAX_RUNNER_AGE_SECONDS")
    );
}
