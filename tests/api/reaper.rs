use std::time::Duration;

use chrono::Utc;
use taylored_orchestrator::reaper::ReapOutcome;
use taylored_orchestrator::supervise::Supervisor;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEnv, eventually, spawn_app, spawn_app_with};

#[tokio::test]
async fn idle_runners_are_reaped_and_heartbeating_ones_kept() {
    let app = spawn_app_with(&["--inactivity-timeout=2", "--cleanup-interval=1"]).await;
    // `alive` first: a sweep whose cutoff is past `idle`'s start is past
    // `alive`'s too, so only its heartbeats can keep it.
    let alive = app.api.provision(Some("alive")).await;
    let idle = app.api.provision(Some("idle")).await;
    assert_eq!((idle.status, alive.status), (201, 201));

    eventually(
        Duration::from_secs(30),
        "the idle runner reaped",
        || async {
            assert_eq!(app.api.heartbeat("alive").await.status, 200);
            app.env.row("idle").await.is_none()
        },
    )
    .await;

    assert!(
        app.env.row("idle").await.is_none(),
        "idle runner still has a row"
    );
    assert_eq!(app.api.heartbeat("idle").await.status, 404);
    let remaining = app.env.containers().await;
    assert_eq!(remaining.len(), 1);
    assert_eq!(
        remaining[0].labels.as_ref().unwrap()["taylored-runner-session-id"],
        "alive"
    );
    let trail = app.service.db.audit_trail("idle").await.unwrap();
    let last = trail.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.action.as_str()),
        ("reaper", "reaped")
    );
}

#[tokio::test]
async fn one_sweep_can_be_stepped() {
    let app = spawn_app().await;
    for session in ["a", "b"] {
        assert_eq!(app.api.provision(Some(session)).await.status, 201);
    }
    let reaper = app.reaper(Duration::from_secs(60));

    let now = reaper.try_once(Utc::now()).await.unwrap();
    assert_eq!(
        now,
        ReapOutcome::default(),
        "fresh runners must not be reaped"
    );

    let later = reaper
        .try_once(Utc::now() + chrono::Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(later.reaped, 2);
    assert!(app.env.containers().await.is_empty());
    assert!(app.service.db.all().await.unwrap().is_empty());
}

#[tokio::test]
async fn one_sweep_stops_its_runners_side_by_side() {
    // Runners that ignore SIGTERM without an init process: each stop waits
    // out its grace, so a sweep stopping them one by one would take 18 s.
    let env = TestEnv::stubborn();
    let app = env
        .spawn(&["--runner-init=false", "--runner-stop-timeout-seconds=3"])
        .await;
    let since = Utc::now().timestamp() - 1;
    for i in 0..6 {
        let reply = app.api.provision(Some(&format!("idle-{i}"))).await;
        assert_eq!(reply.status, 201);
    }

    let swept = app
        .reaper(Duration::from_secs(60))
        .try_once(Utc::now() + chrono::Duration::seconds(61))
        .await
        .unwrap();

    assert_eq!(swept.reaped, 6);
    // Every runner was asked to stop before the first one's grace ran out.
    let events = env.container_events(since).await;
    let actions: Vec<&str> = events
        .iter()
        .filter_map(|(_, action, attributes)| match action.as_str() {
            "kill" if attributes.get("signal").is_some_and(|s| s == "15") => Some("term"),
            "die" => Some("die"),
            _ => None,
        })
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "term").count(), 6);
    let first_death = actions.iter().position(|a| *a == "die").unwrap();
    assert!(
        actions[first_death..].iter().all(|a| *a == "die"),
        "a stop waited for another: {actions:?}"
    );
}

#[tokio::test]
async fn a_reaper_that_panicked_is_started_again_and_reaps() {
    let app = spawn_app().await;
    assert_eq!(app.api.provision(Some("idle")).await.status, 201);
    let shutdown = CancellationToken::new();
    let supervisor = Supervisor::new(shutdown.clone(), app.readiness.clone());
    // Everything is stale for it; its first run fails before it sweeps.
    let reaper = app
        .service
        .reaper_with(Duration::ZERO, Duration::from_millis(100));
    let mut starts = 0;
    let supervised = tokio::spawn({
        let supervisor = supervisor.clone();
        let stop = shutdown.clone();
        async move {
            supervisor
                .supervise("reaper", move || {
                    starts += 1;
                    let first = starts == 1;
                    let (reaper, stop) = (reaper.clone(), stop.clone());
                    async move {
                        assert!(!first, "injected failure of the reaper's first run");
                        reaper.run_until_stopped(stop).await
                    }
                })
                .await
        }
    });

    app.env
        .until_row_dropped("idle", Duration::from_secs(30))
        .await;

    assert!(!supervisor.gave_up().is_cancelled());
    shutdown.cancel();
    supervised.await.unwrap();
    assert_eq!(
        app.env.audit_actions_by_actor("idle").await.last().unwrap(),
        "reaper:reaped"
    );
}
