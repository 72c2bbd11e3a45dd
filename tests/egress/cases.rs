//! The egress tier's tests: what code inside a runner reaches, with real
//! packets, under each policy; the table's repair, restarts and neighbours;
//! and the refusal to serve without nftables.

use std::time::Duration;

use serde_json::json;

use crate::harness::{
    Egress, Expect, Probe, REPAIR_LIMIT, Rule, Runner, Service, dns, table_name, tcp,
};
use crate::support::wait::poll_until;

/// The engine host's own addresses as a runner may try them: the uplink,
/// the door, the runner network's gateway, on the `host` listener's port and
/// on the service's own port.
fn engine_host_probes(
    egress: &Egress,
    service: &Service,
    runner: &Runner,
    expect: Expect,
) -> Vec<Probe> {
    let world = &egress.world;
    let listener_port = world.host_listener.rsplit(':').next().unwrap_or("8080");
    let reach_listener = match expect {
        Expect::Block => Expect::Block,
        _ => Expect::Reach("host"),
    };
    let reach_service = match expect {
        Expect::Block => Expect::Block,
        _ => Expect::Connect,
    };
    let port = service.process.port;
    let mut probes = vec![
        tcp(
            "the engine host's uplink address",
            world.host_listener.clone(),
            reach_listener.clone(),
        ),
        tcp(
            "the engine host's door address",
            format!("{}:{listener_port}", world.door_address),
            reach_listener.clone(),
        ),
        tcp(
            "the runner network's gateway",
            format!("{}:{listener_port}", runner.gateway),
            reach_listener,
        ),
        tcp(
            "the service's own port at the gateway",
            format!("{}:{port}", runner.gateway),
            reach_service.clone(),
        ),
        tcp(
            "the service's own port at the uplink address",
            format!("{}:{port}", world.uplink_address),
            reach_service,
        ),
    ];
    if runner.gateway.is_empty() {
        // A network without a gateway (internal): nothing to probe there.
        probes.retain(|probe| !probe.what.contains("gateway"));
    }
    probes
}

fn outside(egress: &Egress, public: Expect, private: Expect, metadata: Expect) -> Vec<Probe> {
    let world = &egress.world;
    vec![
        tcp("the public host", format!("{}:80", world.public), public),
        tcp("the private host", format!("{}:80", world.private), private),
        tcp(
            "the metadata service",
            format!("{}:80", world.metadata),
            metadata,
        ),
    ]
}

fn nothing(egress: &Egress, service: &Service, runner: &Runner) -> Vec<Probe> {
    let mut probes = outside(egress, Expect::Block, Expect::Block, Expect::Block);
    probes.push(tcp(
        "the public resolver over TCP",
        format!("{}:53", egress.world.dns),
        Expect::Block,
    ));
    probes.push(dns(Expect::Block));
    probes.extend(engine_host_probes(egress, service, runner, Expect::Block));
    probes
}

pub async fn public_reaches_the_public_host_only(egress: &Egress) -> Result<(), String> {
    let instance = egress.instance("pub");
    let service = egress
        .spawn(&instance, &[("RUNNER_EGRESS", "public")])
        .await?;
    let policy = service
        .metric("orchestrator_egress_policy{policy=\"public\"}")
        .await?;
    if policy != Some(1.0) {
        return Err(format!(
            "orchestrator_egress_policy{{policy=\"public\"}} is {policy:?}, not 1"
        ));
    }
    let runner = egress.provision(&service, "pub-1", json!({})).await?;
    let network = format!("taylored-runners-{instance}");
    if runner.network != network {
        return Err(format!(
            "the runner is on {}, not {network}",
            runner.network
        ));
    }
    let mut probes = outside(
        egress,
        Expect::Reach("public"),
        Expect::Block,
        Expect::Block,
    );
    probes.push(dns(Expect::Reach("public")));
    probes.extend(engine_host_probes(egress, &service, &runner, Expect::Block));
    egress.check_probes(&runner, &probes, None).await
}

pub async fn none_reaches_nothing(egress: &Egress) -> Result<(), String> {
    let instance = egress.instance("none");
    let service = egress
        .spawn(&instance, &[("RUNNER_EGRESS", "none")])
        .await?;
    let runner = egress.provision(&service, "none-1", json!({})).await?;
    // The pairing: the runner's own published port answers every probe
    // request (checked by check_probes), so the blocks below are the
    // runner's, not a dead probe's.
    egress
        .check_probes(
            &runner,
            &nothing(egress, &service, &runner),
            Some("the runner's own published port answered"),
        )
        .await
}

pub async fn a_provision_narrowed_to_none_reaches_nothing(egress: &Egress) -> Result<(), String> {
    let instance = egress.instance("narrow");
    let service = egress
        .spawn(&instance, &[("RUNNER_EGRESS", "public")])
        .await?;
    let open = egress.provision(&service, "narrow-open", json!({})).await?;
    let closed = egress
        .provision(&service, "narrow-none", json!({ "egress": "none" }))
        .await?;
    let network = format!("taylored-runners-{instance}-none");
    if closed.network != network {
        return Err(format!(
            "the narrowed runner is on {}, not {network}",
            closed.network
        ));
    }
    // The same run reaches the public host from its sibling.
    let mut probes = outside(
        egress,
        Expect::Reach("public"),
        Expect::Block,
        Expect::Block,
    );
    probes.push(dns(Expect::Reach("public")));
    egress.check_probes(&open, &probes, None).await?;
    egress
        .check_probes(
            &closed,
            &nothing(egress, &service, &closed),
            Some("its sibling under public reached the public host"),
        )
        .await
}

pub async fn all_reaches_everything(egress: &Egress) -> Result<(), String> {
    let instance = egress.instance("all");
    let service = egress.spawn(&instance, &[("RUNNER_EGRESS", "all")]).await?;
    let runner = egress.provision(&service, "all-1", json!({})).await?;
    let mut probes = outside(
        egress,
        Expect::Reach("public"),
        Expect::Reach("private"),
        Expect::Reach("metadata"),
    );
    probes.push(dns(Expect::Reach("public")));
    probes.extend(engine_host_probes(
        egress,
        &service,
        &runner,
        Expect::Connect,
    ));
    egress.check_probes(&runner, &probes, None).await?;
    // Under `all`, a provision may narrow to `public`.
    let narrowed = egress
        .provision(&service, "all-public", json!({ "egress": "public" }))
        .await?;
    let mut probes = outside(
        egress,
        Expect::Reach("public"),
        Expect::Block,
        Expect::Block,
    );
    probes.extend(engine_host_probes(
        egress,
        &service,
        &narrowed,
        Expect::Block,
    ));
    egress.check_probes(&narrowed, &probes, None).await
}

pub async fn the_allow_list_opens_one_private_port(egress: &Egress) -> Result<(), String> {
    let instance = egress.instance("allow");
    let allowed = format!("{}/32:80", egress.world.private);
    let service = egress
        .spawn(
            &instance,
            &[
                ("RUNNER_EGRESS", "public"),
                ("RUNNER_EGRESS_ALLOW", &allowed),
            ],
        )
        .await?;
    let runner = egress.provision(&service, "allow-1", json!({})).await?;
    let mut probes = outside(
        egress,
        Expect::Reach("public"),
        Expect::Reach("private"),
        Expect::Block,
    );
    // Only port 80 of it.
    probes.push(tcp(
        "the private host on another port",
        format!("{}:8080", egress.world.private),
        Expect::Block,
    ));
    egress.check_probes(&runner, &probes, None).await
}

pub async fn widening_and_garbage_are_refused(egress: &Egress) -> Result<(), String> {
    let instance = egress.instance("wide");
    let service = egress
        .spawn(&instance, &[("RUNNER_EGRESS", "public")])
        .await?;
    for (session, value) in [
        ("wide-all", json!("all")),
        ("wide-junk", json!("everything!")),
        ("wide-num", json!(7)),
    ] {
        let (status, body) = service
            .provision(session, json!({ "egress": value }))
            .await?;
        let code = body["error"].as_str().or(body["code"].as_str());
        if status != 400 || code != Some("INVALID_EGRESS") {
            return Err(format!(
                "a provision with egress {value} answered {status} {body}, not 400 INVALID_EGRESS"
            ));
        }
    }
    let label = format!("label=taylored-orchestrator-id={instance}");
    let left = egress.world.docker(&["ps", "-aq", "--filter", &label])?;
    if !left.trim().is_empty() {
        return Err(format!("refused provisions left containers: {left}"));
    }
    // And the instance still provisions.
    egress
        .provision(&service, "wide-ok", json!({}))
        .await
        .map(|_| ())
}

fn count(rules: &Option<Vec<Rule>>) -> usize {
    rules.as_ref().map_or(0, Vec::len)
}

fn ours(egress: &Egress, instance: &str) -> Result<Vec<Rule>, String> {
    let rules = egress
        .rules(instance)?
        .ok_or_else(|| format!("no table {}", table_name(instance)))?;
    if rules.is_empty() {
        return Err(format!("table {} has no rules", table_name(instance)));
    }
    if let Some(rule) = rules
        .iter()
        .find(|(_, _, comment)| !comment.starts_with("taylored:"))
    {
        return Err(format!("a rule without a `taylored:` comment: {rule:?}"));
    }
    Ok(rules)
}

pub async fn a_deleted_rule_is_repaired_and_a_restart_adds_none(
    egress: &Egress,
) -> Result<(), String> {
    let instance = egress.instance("rep");
    let service = egress
        .spawn(&instance, &[("RUNNER_EGRESS", "public")])
        .await?;
    let before = ours(egress, &instance)?;
    let repaired_before = service
        .metric("orchestrator_egress_rules_repaired_total")
        .await?
        .unwrap_or(0.0);
    let applied = service
        .metric("orchestrator_egress_rules_applied_total")
        .await?;
    if applied.unwrap_or(0.0) < 1.0 {
        return Err(format!(
            "orchestrator_egress_rules_applied_total is {applied:?} after start"
        ));
    }
    let (chain, handle, comment) = before[before.len() / 2].clone();
    println!("    deleting rule {handle} of chain {chain} ({comment})");
    let status = egress
        .world
        .in_engine_host("nft")
        .args([
            "delete",
            "rule",
            "inet",
            &egress.table_of(&instance)?,
            &chain,
            "handle",
            &handle.to_string(),
        ])
        .status()
        .map_err(|error| error.to_string())?;
    if !status.success() {
        return Err(format!("nft delete rule failed: {status}"));
    }
    if count(&egress.rules(&instance)?) != before.len() - 1 {
        return Err("the rule was not deleted".to_owned());
    }
    poll_until(REPAIR_LIMIT, "the table repaired and counted", || async {
        let rules = egress.rules(&instance).ok()?;
        let repaired = service
            .metric("orchestrator_egress_rules_repaired_total")
            .await
            .ok()??;
        (count(&rules) == before.len() && repaired > repaired_before).then_some(())
    })
    .await?;
    let shown = egress.operator(
        &instance,
        &service.env,
        &["runners", "show", "(egress)", "--json"],
    )?;
    let shown: serde_json::Value =
        serde_json::from_str(&shown).map_err(|error| format!("runners show: {error}"))?;
    let repairs: Vec<&serde_json::Value> = shown["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|record| record["action"] == "egress_repaired")
        .collect();
    if repairs.is_empty() {
        return Err(format!(
            "the audit trail has no egress_repaired entry: {shown}"
        ));
    }
    println!("    audit: {}", repairs[repairs.len() - 1]);
    let service = egress.restart(service).await?;
    // Over several reconcile passes (one a second), never a duplicate.
    let window = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < window {
        let now = count(&egress.rules(&instance)?);
        if now != before.len() {
            return Err(format!(
                "{now} rules after the restart, {} before",
                before.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The restarted service still enforces it.
    let runner = egress.provision(&service, "rep-1", json!({})).await?;
    let probes = outside(
        egress,
        Expect::Reach("public"),
        Expect::Block,
        Expect::Block,
    );
    egress.check_probes(&runner, &probes, None).await
}

pub async fn two_instances_keep_their_own_tables(egress: &Egress) -> Result<(), String> {
    let first = egress.instance("one");
    let second = egress.instance("two");
    let a = egress.spawn(&first, &[("RUNNER_EGRESS", "public")]).await?;
    let b = egress
        .spawn(&second, &[("RUNNER_EGRESS", "public")])
        .await?;
    let a_rules = ours(egress, &first)?;
    let a_table = egress.table_of(&first)?;
    let b_table = egress.table_of(&second)?;
    let b_rules = ours(egress, &second)?;
    println!(
        "    {} has {} rules, {} has {}",
        a_table,
        a_rules.len(),
        b_table,
        b_rules.len()
    );
    let shown = egress.operator(&second, &b.env, &["egress", "show"])?;
    if !shown.contains(&b_table) {
        return Err(format!("`egress show` does not name {}: {shown}", b_table));
    }
    // Stopped first, or its reconcile would put the table back.
    let a_env = a.env.clone();
    let status = a.process.terminate(Duration::from_secs(30)).await?;
    if !status.success() {
        return Err(format!("the first instance exited {status} on SIGTERM"));
    }
    egress.operator(&first, &a_env, &["egress", "remove"])?;
    if let Some(rules) = egress.rules(&first)? {
        return Err(format!(
            "{} is still there after `egress remove`: {rules:?}",
            a_table
        ));
    }
    if egress.tables()?.contains(&a_table) {
        return Err(format!("{a_table} is still listed"));
    }
    let b_after = ours(egress, &second)?;
    if b_after != b_rules {
        return Err(format!(
            "removing {first} changed {second}'s table: {b_rules:?} -> {b_after:?}"
        ));
    }
    // And the other still enforces its own.
    let runner = egress.provision(&b, "two-1", json!({})).await?;
    let probes = outside(
        egress,
        Expect::Reach("public"),
        Expect::Block,
        Expect::Block,
    );
    egress.check_probes(&runner, &probes, None).await
}

pub async fn without_nft_it_refuses_unless_all(egress: &Egress) -> Result<(), String> {
    let instance = egress.instance("nonft");
    let env = [("RUNNER_EGRESS", "public"), ("PATH", "/nonexistent")];
    let service = egress.spawn_listening(&instance, &env).await?;
    let (status, body) = poll_until(Duration::from_secs(30), "/readyz naming egress", || async {
        let (status, body) = service.get("/readyz").await.ok()?;
        (status == 503 && body.to_lowercase().contains("egress")).then_some((status, body))
    })
    .await?;
    println!("    /readyz: {status} {body}");
    let (status, body) = service.provision("nonft-1", json!({})).await?;
    if status != 503 {
        return Err(format!(
            "a provision without nft answered {status} {body}, not 503"
        ));
    }
    let label = format!("label=taylored-orchestrator-id={instance}");
    let left = egress.world.docker(&["ps", "-aq", "--filter", &label])?;
    if !left.trim().is_empty() {
        return Err(format!("the refused provision left containers: {left}"));
    }
    drop(service);
    let instance = egress.instance("nonftall");
    let env = [("RUNNER_EGRESS", "all"), ("PATH", "/nonexistent")];
    let service = egress.spawn_listening(&instance, &env).await?;
    poll_until(
        Duration::from_secs(30),
        "/readyz 200 under all without nft",
        || async {
            let (status, _) = service.get("/readyz").await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await?;
    egress
        .provision(&service, "nonftall-1", json!({}))
        .await
        .map(|_| ())
}

/// In gateway mode runners publish no port: the service reaches them on
/// their network, and that way in stays open under every policy, also
/// where nothing may go out.
pub async fn the_gateway_reaches_runners_under_every_policy(egress: &Egress) -> Result<(), String> {
    for policy in ["public", "none", "all"] {
        let instance = egress.instance(&format!("gw{policy}"));
        let service = egress
            .spawn(
                &instance,
                &[("RUNNER_EGRESS", policy), ("RUNNER_ACCESS", "gateway")],
            )
            .await?;
        let session = format!("gw-{policy}");
        let runner = egress.provision(&service, &session, json!({})).await?;
        if runner.host.is_none() {
            return Err(format!("under {policy} the endpoint is not a gateway host"));
        }
        let public = match policy {
            "none" => Expect::Block,
            _ => Expect::Reach("public"),
        };
        let metadata = match policy {
            "all" => Expect::Reach("metadata"),
            _ => Expect::Block,
        };
        let probes = [
            tcp(
                "the public host",
                format!("{}:80", egress.world.public),
                public,
            ),
            tcp(
                "the metadata service",
                format!("{}:80", egress.world.metadata),
                metadata,
            ),
        ];
        // Every probe request went in through the gateway.
        egress
            .check_probes(&runner, &probes, Some("the gateway reached the runner"))
            .await?;
    }
    Ok(())
}
