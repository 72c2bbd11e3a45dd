//! A burst of first loads (issue 21): cold starts go to the engine at most
//! `RUNNER_STARTS_AT_ONCE` at a time, in the order the provisions came, and
//! the rest wait in the queue, counted on `/metrics`.

use axum::http::StatusCode;

use super::{Service, held_starts, provision_request, send};

#[tokio::test]
async fn cold_starts_go_to_the_engine_a_bounded_number_at_a_time_in_arrival_order() {
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
    // Each of the others queued before the next is sent: their order is
    // the order of arrival.
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
    let created: Vec<String> = service
        .backend()
        .runners()
        .into_iter()
        .map(|runner| runner.session_id)
        .collect();
    assert_eq!(&created[2..], ["c", "d", "e"], "{created:?}");
    assert_eq!(service.runners().starts().waiting(), 0);
}
