//! A burst of first loads (issue 21): cold starts go to the engine at most
//! `RUNNER_STARTS_AT_ONCE` at a time, in the order the provisions came, and
//! the rest wait in the queue, counted on `/metrics`.

use axum::http::StatusCode;

use super::{Service, held_starts, provision_request, send};

#[tokio::test]
async fn cold_starts_go_to_the_engine_a_bounded_number_at_a_time() {
    let service = Service::new(&["--runner-starts-at-once=2", "--max-concurrent-runners=0"]).await;
    service.backend().hold_starts();
    let provision = |session: &str| {
        tokio::spawn(send(
            service.router.clone(),
            provision_request(Some(session), None),
        ))
    };
    let mut sent = vec![provision("a"), provision("b")];
    held_starts(service.backend(), 2).await;
    // The others wait for a turn.
    for (queued, session) in ["c", "d", "e"].into_iter().enumerate() {
        sent.push(provision(session));
        service
            .runners()
            .starts()
            .wait_for_waiting(queued + 1)
            .await;
    }
    assert_eq!(service.backend().runners().len(), 2, "the bound");
    assert_eq!(
        (
            service.runners().starts().in_flight(),
            service.runners().starts().waiting()
        ),
        (2, 3)
    );
    let text = service.harness.service.metrics.render(&[]);
    assert!(
        text.contains("orchestrator_runner_starts{state=\"in_flight\"} 2")
            && text.contains("orchestrator_runner_starts{state=\"waiting\"} 3"),
        "{text}"
    );

    service.backend().release_starts();
    for answer in sent {
        assert_eq!(answer.await.unwrap().status, StatusCode::CREATED);
    }
    assert_eq!(service.backend().runners().len(), 5);
    assert_eq!(service.runners().starts().waiting(), 0);
}

/// One start at a time: each waits for the one before to finish, so the
/// engine sees them in the order the provisions queued.
#[tokio::test]
async fn queued_starts_reach_the_engine_in_the_order_they_came() {
    let service = Service::new(&["--runner-starts-at-once=1", "--max-concurrent-runners=0"]).await;
    service.backend().hold_starts();
    let provision = |session: &str| {
        tokio::spawn(send(
            service.router.clone(),
            provision_request(Some(session), None),
        ))
    };
    let mut sent = vec![provision("a")];
    held_starts(service.backend(), 1).await;
    for (queued, session) in ["b", "c", "d", "e"].into_iter().enumerate() {
        sent.push(provision(session));
        service
            .runners()
            .starts()
            .wait_for_waiting(queued + 1)
            .await;
    }
    service.backend().release_starts();
    for answer in sent {
        assert_eq!(answer.await.unwrap().status, StatusCode::CREATED);
    }
    let created: Vec<String> = service
        .backend()
        .runners()
        .into_iter()
        .map(|runner| runner.session_id)
        .collect();
    assert_eq!(created, ["a", "b", "c", "d", "e"]);
}
