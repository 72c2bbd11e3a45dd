use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;

use crate::helpers::{TestEnv, assert_runner_answers, eventually, spawn_app};

#[tokio::test]
async fn twenty_concurrent_provisions_of_one_session_make_one_runner() {
    let app = spawn_app().await;

    let replies = join_all((0..20).map(|_| app.api.provision(Some("contended")))).await;

    let created = replies.iter().filter(|reply| reply.status == 201).count();
    let existing = replies.iter().filter(|reply| reply.status == 200).count();
    assert_eq!((created, existing), (1, 19), "{replies:?}");
    let endpoints: HashSet<&str> = replies.iter().map(|reply| reply.endpoint()).collect();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert_eq!(app.env.containers().await.len(), 1);
    assert_runner_answers(replies[0].endpoint()).await;
}

#[tokio::test]
async fn thirty_concurrent_provisions_of_distinct_sessions() {
    let app = spawn_app().await;

    let started = std::time::Instant::now();
    let replies = join_all((0..30).map(|_| app.api.provision(None))).await;
    eprintln!("30 concurrent provisions took {:?}", started.elapsed());

    assert!(
        replies.iter().all(|reply| reply.status == 201),
        "{replies:?}"
    );
    let endpoints: HashSet<&str> = replies.iter().map(|reply| reply.endpoint()).collect();
    assert_eq!(endpoints.len(), 30);
    assert_eq!(app.env.running_container_ids().await.len(), 30);
    assert_eq!(app.service.db.all().await.unwrap().len(), 30);
    for reply in &replies {
        assert_runner_answers(reply.endpoint()).await;
    }
}

#[tokio::test]
async fn racing_provision_heartbeat_and_deprovision_end_consistent() {
    let app = spawn_app().await;
    for round in 0..5 {
        let session = format!("race-{round}");
        let (provisions, heartbeats, deprovisions) = tokio::join!(
            join_all((0..4).map(|_| app.api.provision(Some(&session)))),
            join_all((0..4).map(|_| app.api.heartbeat(&session))),
            join_all((0..4).map(|_| app.api.deprovision(&session))),
        );
        for reply in provisions.iter().chain(&heartbeats).chain(&deprovisions) {
            assert!([200, 201, 404].contains(&reply.status), "{reply:?}");
        }
        // Whatever the interleaving: a row exists exactly when a running
        // container does, and then it answers.
        let row = app.env.row(&session).await;
        let containers = app.env.containers().await;
        let mine: Vec<_> = containers
            .iter()
            .filter(|c| c.labels.as_ref().unwrap()["taylored-runner-session-id"] == session)
            .collect();
        match row {
            Some(row) => {
                assert_eq!(mine.len(), 1, "{row:?} {mine:?}");
                assert_eq!(mine[0].id, row.container_id);
                assert_eq!(app.api.heartbeat(&session).await.status, 200);
            }
            None => assert!(mine.is_empty(), "{mine:?}"),
        }
    }
}

/// A class opening the page together (issue 21): 40 first provisions at
/// once from one address, each on a connection of its own, with the
/// service's default admission (`PROVISION_BURST`, the rate, the `auto`
/// limit, `RUNNER_STARTS_AT_ONCE`) and a pool that sizes itself
/// (`WARM_POOL_SIZE=auto`, its minimum of 1 waiting at the start): every one
/// gets `201` and a runner of its own; the pool grows on the misses, and
/// after its quiet period is back at its minimum.
#[tokio::test]
async fn a_class_of_40_first_loads_from_one_address_all_get_a_runner() {
    let env = TestEnv::new();
    let app = env
        .spawn_binary_without(
            &[("WARM_POOL_SIZE", "auto"), ("WARM_POOL_QUIET_SECONDS", "2")],
            &["PROVISION_RATE_PER_MINUTE", "MAX_CONCURRENT_RUNNERS"],
        )
        .await;
    let db = env.db().await;
    eventually(
        Duration::from_secs(30),
        "the pool's minimum waiting",
        || async { db.count_pooled().await.unwrap() == 1 },
    )
    .await;
    let clients: Vec<reqwest::Client> = (0..40).map(|_| reqwest::Client::new()).collect();
    let replies = join_all(clients.iter().map(|client| async {
        let response = client
            .post(format!("{}/api/runner/provision", app.api.base))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    }))
    .await;
    assert!(
        replies.iter().all(|(status, _)| *status == 201),
        "{replies:?}"
    );
    let sessions: HashSet<String> = replies
        .iter()
        .map(|(_, body)| body["sessionId"].as_str().unwrap().to_owned())
        .collect();
    let endpoints: HashSet<&str> = replies
        .iter()
        .map(|(_, body)| body["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!((sessions.len(), endpoints.len()), (40, 40));
    for (_, body) in replies.iter().take(3) {
        assert_runner_answers(body["endpoint"].as_str().unwrap()).await;
    }

    // It grew on the 39 misses, refilled, and, quiet, went back to 1.
    eventually(
        Duration::from_secs(90),
        "the pool back at its minimum",
        || async {
            let metrics = app.api.metrics().await;
            metrics.contains("orchestrator_warm_pool_resizes_total{state=\"shrank\"} 1")
                && metrics.contains("orchestrator_warm_pool_target 1")
                && db.count_pooled().await.unwrap() == 1
                // The last retired one's removal done too.
                && db.all().await.unwrap().len() == 41
        },
    )
    .await;
    let metrics = app.api.metrics().await;
    assert!(
        metrics.contains("orchestrator_warm_pool_resizes_total{state=\"grew\"} 1")
            && metrics.contains("orchestrator_runner_starts{state=\"waiting\"} 0"),
        "{metrics}"
    );
    // One runner per session, each labelled with its own, and the one
    // waiting warm runner.
    let labelled: Vec<String> = env
        .containers()
        .await
        .into_iter()
        .filter_map(|c| c.labels?.get("taylored-runner-session-id").cloned())
        .collect();
    let rows = db.all().await.unwrap();
    let described: Vec<String> = rows
        .iter()
        .map(|row| format!("{} pooled={} {:?}", row.session_id, row.pooled, row.state))
        .collect();
    let unrecorded: Vec<&String> = labelled
        .iter()
        .filter(|session| rows.iter().all(|row| &row.session_id != *session))
        .collect();
    assert_eq!(
        labelled.len(),
        41,
        "without rows: {unrecorded:?}; rows: {described:?}"
    );
    let claimed: HashSet<String> = rows
        .iter()
        .filter(|row| !row.pooled)
        .map(|row| row.session_id.clone())
        .collect();
    assert_eq!(claimed, sessions);
    assert_eq!(
        labelled.into_iter().collect::<HashSet<_>>().len(),
        41,
        "a session with two runners"
    );
}
