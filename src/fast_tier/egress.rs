//! The egress policy through the API and the guard's checks, over the
//! memory backend and a firewall in memory (the real rules are proven with
//! real packets in the egress tier, `tests/egress`).

use axum::http::StatusCode;
use serde_json::json;

use super::Service;
use crate::backend::NetworkMode;
use crate::egress::{AUDIT_SUBJECT, Checked};

/// The instance `fast-tier`'s table (its `-` is not a table name's).
const TABLE: &str = "taylored_egress_fast_tier_8aac8fdc";

#[tokio::test]
async fn a_provision_may_narrow_egress_to_none_on_a_network_of_its_own() {
    let service = Service::new(&[]).await;
    service.harness.service.egress.check().await.unwrap();
    let answer = service
        .provision_with(Some("n-1"), json!({ "egress": "none" }))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(
        service.running_runner("n-1").network_mode,
        NetworkMode::Named("taylored-runners-fast-tier-none".into())
    );
    // Without `egress`, the instance's network (the spec's default).
    let plain = service.provision(Some("p-1")).await;
    assert_eq!(plain.status, StatusCode::CREATED, "{plain:?}");
    assert_eq!(
        service.running_runner("p-1").network_mode,
        NetworkMode::Default
    );
    // `public` is the policy itself: the same as saying nothing.
    let same = service
        .provision_with(Some("p-2"), json!({ "egress": "public" }))
        .await;
    assert_eq!(same.status, StatusCode::CREATED, "{same:?}");
    assert_eq!(
        service.running_runner("p-2").network_mode,
        NetworkMode::Default
    );
}

#[tokio::test]
async fn widening_or_unknown_egress_and_named_networks_are_refused_before_the_engine() {
    let service = Service::new(&[]).await;
    let widen = service
        .provision_with(Some("w-1"), json!({ "egress": "all" }))
        .await;
    assert!(
        widen
            .error(StatusCode::BAD_REQUEST, "INVALID_EGRESS")
            .contains("never widen"),
        "{widen:?}"
    );
    let unknown = service
        .provision_with(Some("w-1"), json!({ "egress": "internet" }))
        .await;
    assert!(
        unknown
            .error(StatusCode::BAD_REQUEST, "INVALID_EGRESS")
            .contains("`internet`"),
        "{unknown:?}"
    );
    let wrong_type = service
        .provision_with(Some("w-1"), json!({ "egress": 3 }))
        .await;
    assert!(
        wrong_type
            .error(StatusCode::BAD_REQUEST, "INVALID_EGRESS")
            .contains("must be a string"),
        "{wrong_type:?}"
    );
    service.backend().add_network("lab");
    let named = service
        .provision_with(Some("w-1"), json!({ "networkMode": "lab" }))
        .await;
    assert!(
        named
            .error(StatusCode::BAD_REQUEST, "INVALID_EGRESS")
            .contains("escape"),
        "{named:?}"
    );
    // No network at all is narrower than any policy.
    let isolated = service
        .provision_with(
            Some("i-1"),
            json!({ "networkMode": "none", "egress": "none" }),
        )
        .await;
    assert_eq!(isolated.status, StatusCode::CREATED, "{isolated:?}");
    assert_eq!(service.backend().calls().start, 1);
    assert_eq!(service.rows().await.len(), 1);
}

#[tokio::test]
async fn under_all_a_provision_may_narrow_to_public_or_none() {
    let service = Service::new(&["--runner-egress=all"]).await;
    // Nothing to install until a provision narrows the policy.
    service.harness.service.egress.check().await.unwrap();
    assert_eq!(service.harness.firewall.times_applied(), 0);
    for (session, egress, network) in [
        ("a-1", "public", "taylored-runners-fast-tier-public"),
        ("a-2", "none", "taylored-runners-fast-tier-none"),
    ] {
        let answer = service
            .provision_with(Some(session), json!({ "egress": egress }))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        assert_eq!(
            service.running_runner(session).network_mode,
            NetworkMode::Named(network.into())
        );
    }
    assert_eq!(service.harness.firewall.times_applied(), 1);
}

#[tokio::test]
async fn narrowing_is_refused_while_its_rules_cannot_be_installed() {
    let service = Service::new(&["--runner-egress=all"]).await;
    service.harness.firewall.fail_with(Some("no nft here"));
    let answer = service
        .provision_with(Some("a-1"), json!({ "egress": "none" }))
        .await;
    assert!(
        answer
            .error(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY")
            .contains("no nft here"),
        "{answer:?}"
    );
    // Without narrowing, `all` serves as before.
    let plain = service.provision(Some("a-2")).await;
    assert_eq!(plain.status, StatusCode::CREATED, "{plain:?}");
}

#[tokio::test]
async fn rules_are_applied_once_kept_and_repaired_with_an_audit() {
    let service = Service::new(&[]).await;
    let (egress, firewall) = (&service.harness.service.egress, &service.harness.firewall);
    assert_eq!(egress.check().await, Ok(Checked::Applied));
    assert_eq!(egress.check().await, Ok(Checked::Intact));
    assert_eq!(firewall.times_applied(), 1);
    let rules = firewall.rules(TABLE).expect("the instance's table");
    // Both networks are bound: the instance's and the narrowed one.
    for network in [
        "taylored-runners-fast-tier",
        "taylored-runners-fast-tier-none",
    ] {
        let bridge = crate::backend::bridge::bridge_name(network);
        assert!(
            rules.iter().any(|rule| rule.contains(&bridge)),
            "{bridge} in {rules:?}"
        );
    }
    firewall.delete_rule(TABLE, &rules[0]);
    assert_eq!(egress.check().await, Ok(Checked::Repaired));
    assert_eq!(firewall.rules(TABLE), Some(rules));
    let trail = service.audit(AUDIT_SUBJECT).await;
    let actions: Vec<&str> = trail.iter().map(|(_, action, _)| action.as_str()).collect();
    assert_eq!(actions, ["egress_applied", "egress_repaired"]);
    assert!(trail[1].2.contains("put back"), "{trail:?}");
    let metrics = service.harness.service.metrics.render(&[]);
    for counted in [
        "orchestrator_egress_rules_applied_total 1",
        "orchestrator_egress_rules_repaired_total 1",
        "orchestrator_egress_enforced 1",
        "orchestrator_egress_policy{policy=\"public\"} 1",
    ] {
        assert!(metrics.contains(counted), "no `{counted}` in\n{metrics}");
    }
}

#[tokio::test]
async fn readyz_names_the_policy_and_refuses_while_it_cannot_be_enforced() {
    let service = Service::new(&[]).await;
    service.harness.service.egress.check().await.unwrap();
    let ready = service.send(super::get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["egress"]["policy"], "public");
    assert_eq!(ready.body["egress"]["enforced"], true);
    assert_eq!(ready.body["egress"]["table"], TABLE);
    assert_eq!(TABLE, crate::egress::ruleset::table_name("fast-tier"));

    service
        .harness
        .firewall
        .fail_with(Some("`nft` is not on PATH"));
    assert!(service.harness.service.egress.check().await.is_err());
    let refused = service.send(super::get("/readyz")).await;
    let message = refused.error(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY");
    assert!(
        message.contains("RUNNER_EGRESS=public cannot be enforced")
            && message.contains("nft")
            && message.contains("RUNNER_EGRESS=all"),
        "{message}"
    );
}

#[tokio::test]
async fn all_is_named_with_its_warning_on_readyz() {
    let service = Service::new(&["--runner-egress=all"]).await;
    service.harness.service.egress.check().await.unwrap();
    let ready = service.send(super::get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["egress"]["policy"], "all");
    assert!(
        ready.body["egress"]["warning"]
            .as_str()
            .unwrap()
            .contains("169.254.169.254"),
        "{ready:?}"
    );
}

/// On a swarm the rules are each node's agent's: the guard reads which
/// nodes run one. None: not enforced, and the problem names the agent;
/// some: enforced, the others named on `/readyz`, every change audited.
#[tokio::test]
async fn on_a_swarm_the_nodes_whose_agent_runs_are_what_enforces_the_policy() {
    use crate::backend::NodeCoverage;
    let service = Service::new(&[]).await;
    let egress = &service.harness.service.egress;
    let coverage = |ruled: &[&str], missing: &[&str]| NodeCoverage {
        ruled: ruled.iter().map(|node| node.to_string()).collect(),
        missing: missing.iter().map(|node| node.to_string()).collect(),
    };
    service
        .backend()
        .set_egress_nodes(coverage(&[], &["n1", "n2"]));
    let problem = egress.check().await.unwrap_err();
    assert!(
        problem.contains("no swarm node runs this instance's egress agent")
            && problem.contains("taylored-egress-agent=fast-tier"),
        "{problem}"
    );
    assert!(!egress.status().enforced);
    // No local table: the nodes hold the rules, not the manager's host.
    assert_eq!(service.harness.firewall.times_applied(), 0);
    assert_eq!(service.harness.firewall.rules(TABLE), None);

    service
        .backend()
        .set_egress_nodes(coverage(&["n1"], &["n2"]));
    assert_eq!(egress.check().await, Ok(Checked::Applied));
    assert_eq!(egress.check().await, Ok(Checked::Intact));
    let status = egress.status();
    assert!(status.enforced && status.problem.is_none(), "{status:?}");
    assert_eq!(status.nodes, Some(coverage(&["n1"], &["n2"])));
    let ready = service.send(super::get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    assert_eq!(ready.body["egress"]["nodes"]["missing"], json!(["n2"]));

    let trail = service.audit(AUDIT_SUBJECT).await;
    let actions: Vec<&str> = trail.iter().map(|(_, action, _)| action.as_str()).collect();
    assert_eq!(
        actions,
        ["egress_missing", "egress_missing", "egress_applied"],
        "{trail:?}"
    );
    assert!(
        trail[2]
            .2
            .contains("node n1 runs this instance's egress agent"),
        "{trail:?}"
    );
}
