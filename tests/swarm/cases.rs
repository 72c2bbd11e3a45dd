//! The swarm tier's tests. Each starts its own service (instance, database
//! and port range of its own) against the one swarm.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::harness::Swarm;
use crate::support::wait::poll_until;

/// How long a runner the service reports may take to answer a client.
pub(crate) const REACH_LIMIT: Duration = Duration::from_secs(10);

pub(crate) fn check(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what()) }
}

/// Waits until the runner at `endpoint` answers the client namespace.
pub(crate) async fn reached(swarm: &Swarm, endpoint: &str) -> Result<(), String> {
    poll_until(
        REACH_LIMIT,
        &format!("{endpoint} answering a client"),
        || async {
            swarm
                .fetch_as_client(endpoint)
                .filter(|answer| answer["runner"] == "ok")
        },
    )
    .await
    .map(drop)
}

pub async fn runners_spread_over_nodes_and_answer_clients(swarm: &Swarm) -> Result<(), String> {
    let instance = swarm.instance("spread");
    let service = swarm
        .spawn(&instance, &[("RUNNER_PORT_RANGE", "30100-30199")])
        .await?;
    let sessions: Vec<String> = (0..6).map(|i| format!("spread-{i}")).collect();
    let endpoints = join_all(sessions.iter().map(|session| service.endpoint(session)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let distinct: HashSet<&String> = endpoints.iter().collect();
    check(distinct.len() == 6, || {
        format!("endpoints repeat: {endpoints:?}")
    })?;
    let mut nodes = BTreeSet::new();
    for endpoint in &endpoints {
        let node = swarm
            .node_of(endpoint)
            .ok_or_else(|| format!("{endpoint} names no node of the swarm"))?;
        nodes.insert(node.hostname.clone());
        reached(swarm, endpoint).await?;
    }
    check(nodes.len() >= 2, || {
        format!("6 runners all on {nodes:?}: not spread")
    })?;
    // The manager agrees on where each runs.
    let services = swarm.services(&instance).await?;
    check(services.len() == 6, || {
        format!("6 services expected: {services:?}")
    })?;
    let placed: BTreeSet<String> = services.into_iter().filter_map(|(_, node)| node).collect();
    check(placed == nodes, || {
        format!("the manager places them on {placed:?}, the endpoints say {nodes:?}")
    })?;
    // Operators see each runner's node.
    let listed = service.runners_list()?;
    check(
        nodes.iter().all(|node| listed.contains(node.as_str())),
        || format!("`runners list` does not show the nodes {nodes:?}:\n{listed}"),
    )
}

pub async fn concurrent_provisions_of_one_session_make_one_service(
    swarm: &Swarm,
) -> Result<(), String> {
    let instance = swarm.instance("same");
    let service = swarm
        .spawn(&instance, &[("RUNNER_PORT_RANGE", "30200-30299")])
        .await?;
    let answers = join_all((0..8).map(|_| service.provision("same-session"))).await;
    let mut created = 0;
    let mut endpoints = HashSet::new();
    for answer in answers {
        let (status, body) = answer?;
        match status {
            201 => created += 1,
            200 => {}
            other => return Err(format!("a provision answered {other}: {body}")),
        }
        endpoints.insert(body["endpoint"].as_str().unwrap_or_default().to_owned());
    }
    check(created == 1, || {
        format!("{created} provisions created a runner")
    })?;
    check(endpoints.len() == 1, || {
        format!("endpoints differ: {endpoints:?}")
    })?;
    let services = swarm.services(&instance).await?;
    check(services.len() == 1, || {
        format!("one service expected: {services:?}")
    })?;
    reached(swarm, endpoints.iter().next().unwrap()).await?;
    // A network mode cannot be applied to a Swarm service: refused plainly.
    let (status, body) = service
        .provision_body(serde_json::json!({ "networkMode": "none" }))
        .await?;
    check(
        status == 400 && body["error"] == "INVALID_NETWORK_MODE",
        || format!("a networkMode on swarm answered {status}: {body}"),
    )?;
    let services = swarm.services(&instance).await?;
    check(services.len() == 1, || {
        format!("a refused provision left {services:?}")
    })
}

pub async fn deprovision_removes_the_service(swarm: &Swarm) -> Result<(), String> {
    let instance = swarm.instance("deprov");
    let service = swarm
        .spawn(&instance, &[("RUNNER_PORT_RANGE", "30300-30399")])
        .await?;
    let endpoint = service.endpoint("leaving").await?;
    reached(swarm, &endpoint).await?;
    let status = service.deprovision("leaving").await?;
    check(status == 200, || format!("deprovision answered {status}"))?;
    let services = swarm.services(&instance).await?;
    check(services.is_empty(), || {
        format!("services left: {services:?}")
    })?;
    let status = service.heartbeat("leaving").await?;
    check(status == 404, || {
        format!("a heartbeat after deprovision answered {status}")
    })?;
    poll_until(
        REACH_LIMIT,
        "the deprovisioned runner to stop answering",
        || async { swarm.fetch_as_client(&endpoint).is_none().then_some(()) },
    )
    .await
}

pub async fn a_kill_9_and_restart_keeps_every_runner(swarm: &Swarm) -> Result<(), String> {
    let instance = swarm.instance("crash");
    let env = [("RUNNER_PORT_RANGE", "30400-30499")];
    let service = swarm.spawn(&instance, &env).await?;
    let sessions: Vec<String> = (0..4).map(|i| format!("crash-{i}")).collect();
    let mut endpoints = Vec::new();
    for session in &sessions {
        endpoints.push(service.endpoint(session).await?);
    }
    service.process.kill_9();
    let service = swarm.spawn(&instance, &env).await?;
    let kept = service
        .process
        .logs
        .field("startup reconcile finished", "summary")
        .unwrap_or_default();
    check(
        kept.starts_with("kept=4 adopted=0 containers_removed=0 rows_dropped=0"),
        || format!("the restart's reconcile: {kept}"),
    )?;
    for (session, endpoint) in sessions.iter().zip(&endpoints) {
        let status = service.heartbeat(session).await?;
        check(status == 200, || {
            format!("{session}'s heartbeat answered {status}")
        })?;
        let again = service.endpoint(session).await?;
        check(&again == endpoint, || {
            format!("{session} moved: {endpoint} → {again}")
        })?;
        reached(swarm, endpoint).await?;
    }
    let services = swarm.services(&instance).await?;
    check(services.len() == 4, || {
        format!("4 services expected: {services:?}")
    })
}

pub async fn the_reaper_removes_idle_services(swarm: &Swarm) -> Result<(), String> {
    let instance = swarm.instance("reap");
    let service = swarm
        .spawn(
            &instance,
            &[
                ("RUNNER_PORT_RANGE", "30500-30599"),
                ("INACTIVITY_TIMEOUT_SECONDS", "2"),
                ("CLEANUP_INTERVAL_SECONDS", "1"),
            ],
        )
        .await?;
    service.endpoint("idle").await?;
    poll_until(
        Duration::from_secs(30),
        "the idle runner's service to go",
        || async {
            swarm
                .services(&instance)
                .await
                .ok()
                .filter(|services| services.is_empty())
        },
    )
    .await?;
    // The row goes (and the audit is written) just after the service.
    let reaped = poll_until(
        Duration::from_secs(10),
        "the reaping in the audit log",
        || async {
            let reasons = service.audit_reasons("idle").await.ok()?;
            reasons
                .iter()
                .any(|reason| reason.contains("INACTIVITY_TIMEOUT_SECONDS"))
                .then_some(())
        },
    )
    .await;
    if let Err(error) = reaped {
        return Err(format!(
            "{error}: {:?}",
            service.audit_reasons("idle").await
        ));
    }
    let status = service.heartbeat("idle").await?;
    check(status == 404, || {
        format!("a reaped runner's heartbeat answered {status}")
    })
}

pub async fn the_warm_pool_and_the_limit_work_on_the_swarm(swarm: &Swarm) -> Result<(), String> {
    let instance = swarm.instance("warm");
    let service = swarm
        .spawn(
            &instance,
            &[
                ("RUNNER_PORT_RANGE", "30900-30999"),
                ("WARM_POOL_SIZE", "2"),
                ("MAX_CONCURRENT_RUNNERS", "3"),
            ],
        )
        .await?;
    poll_until(Duration::from_secs(30), "the warm pool to fill", || async {
        swarm
            .services(&instance)
            .await
            .ok()
            .filter(|services| services.len() == 2)
    })
    .await?;
    // A provision without a session id takes a warm runner at once.
    let started = Instant::now();
    let (status, body) = service.provision_without_session().await?;
    let took = started.elapsed();
    check(status == 201, || {
        format!("warm provision answered {status}: {body}")
    })?;
    let endpoint = body["endpoint"].as_str().unwrap_or_default().to_owned();
    check(swarm.node_of(&endpoint).is_some(), || {
        format!("the warm runner's endpoint {endpoint} names no node")
    })?;
    reached(swarm, &endpoint).await?;
    println!(
        "    warm provision answered in {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    // The pool refills up to the limit of 3 runners in all.
    poll_until(Duration::from_secs(30), "the pool to refill", || async {
        swarm
            .services(&instance)
            .await
            .ok()
            .filter(|services| services.len() == 3)
    })
    .await?;
    let (status, body) = service.provision("over-the-limit").await?;
    check(
        status == 503 && body["error"] == "RUNNER_LIMIT_REACHED",
        || format!("a provision over the limit answered {status}: {body}"),
    )
}

pub async fn an_image_missing_on_the_node_fails_the_provision_cleanly(
    swarm: &Swarm,
) -> Result<(), String> {
    let instance = swarm.instance("noimage");
    // The stubborn image is on the first node only, which runners avoid.
    let placement = format!("node.hostname!={}", swarm.cluster.nodes[0].hostname);
    let service = swarm
        .spawn(
            &instance,
            &[
                ("RUNNER_PORT_RANGE", "30600-30699"),
                ("DOCKER_IMAGE_NAME", swarm.images.stubborn.as_str()),
                ("RUNNER_PLACEMENT", placement.as_str()),
            ],
        )
        .await?;
    let started = Instant::now();
    let (status, body) = service.provision("no-image").await?;
    let took = started.elapsed();
    check(
        status == 500 && body["error"] == "DOCKER_IMAGE_NOT_FOUND",
        || format!("expected 500 DOCKER_IMAGE_NOT_FOUND, got {status}: {body}"),
    )?;
    check(took < Duration::from_secs(30), || {
        format!("the failure took {took:?}")
    })?;
    let services = swarm.services(&instance).await?;
    check(services.is_empty(), || {
        format!("services left behind: {services:?}")
    })?;
    let status = service.heartbeat("no-image").await?;
    check(status == 404, || format!("heartbeat answered {status}"))
}

pub async fn no_node_that_fits_fails_the_provision_within_the_deadline(
    swarm: &Swarm,
) -> Result<(), String> {
    let instance = swarm.instance("nofit");
    let service = swarm
        .spawn(
            &instance,
            &[
                ("RUNNER_PORT_RANGE", "30700-30799"),
                ("RUNNER_PLACEMENT", "node.labels.taylored-test-none==yes"),
                ("RUNNER_START_TIMEOUT_SECONDS", "3"),
            ],
        )
        .await?;
    let started = Instant::now();
    let (status, body) = service.provision("no-fit").await?;
    let took = started.elapsed();
    let details = body["details"].as_str().unwrap_or_default();
    check(
        status == 500 && details.contains("did not start within 3 s"),
        || format!("expected a 500 naming the deadline, got {status}: {body}"),
    )?;
    check(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        || format!("the failure took {took:?}"),
    )?;
    let services = swarm.services(&instance).await?;
    check(services.is_empty(), || {
        format!("services left behind: {services:?}")
    })
}

pub async fn a_lost_node_s_sessions_are_repaired_on_the_others(
    swarm: &Swarm,
) -> Result<(), String> {
    let instance = swarm.instance("lost");
    let service = swarm
        .spawn(&instance, &[("RUNNER_PORT_RANGE", "30800-30899")])
        .await?;
    let lost = swarm.cluster.nodes.last().expect("nodes").clone();
    // Enough runners that some land on the node to lose.
    let mut on_lost = Vec::new();
    let mut elsewhere = Vec::new();
    for i in 0..9 {
        let session = format!("lost-{i}");
        let endpoint = service.endpoint(&session).await?;
        if swarm.node_of(&endpoint).map(|node| &node.hostname) == Some(&lost.hostname) {
            on_lost.push(session);
        } else {
            elsewhere.push(session);
        }
    }
    check(!on_lost.is_empty(), || {
        format!("no runner on {}", lost.hostname)
    })?;
    swarm.cluster.kill(&lost)?;
    let lost_at = Instant::now();
    // Swarm marks it down within its node heartbeat; the drift reconcile
    // (every second here) follows.
    for session in &on_lost {
        poll_until(
            Duration::from_secs(60),
            &format!("{session}'s heartbeat to answer 404"),
            || async { (service.heartbeat(session).await.ok() == Some(404)).then_some(()) },
        )
        .await?;
    }
    println!(
        "    {} sessions on the lost node answered 404 {:.1} s after it died",
        on_lost.len(),
        lost_at.elapsed().as_secs_f64()
    );
    for session in &elsewhere {
        let status = service.heartbeat(session).await?;
        check(status == 200, || {
            format!("{session} on a live node answered {status}")
        })?;
    }
    for session in &on_lost {
        let reasons = service.audit_reasons(session).await?;
        check(reasons.iter().any(|reason| reason.contains("node")), || {
            format!("{session}'s audit log names no lost node: {reasons:?}")
        })?;
        // The next provision makes a fresh runner on a live node.
        let (status, body) = service.provision(session).await?;
        check(status == 201, || {
            format!("re-provision answered {status}: {body}")
        })?;
        let endpoint = body["endpoint"].as_str().unwrap_or_default();
        let node = swarm.node_of(endpoint).map(|node| node.hostname.clone());
        check(
            node.is_some() && node != Some(lost.hostname.clone()),
            || format!("{session} came back on {node:?}"),
        )?;
        reached(swarm, endpoint).await?;
    }
    Ok(())
}

/// `GET /` of a gateway endpoint, sent to the service's port on this host
/// (the gateway's domain has no DNS here); the runner's JSON answer and the
/// status.
pub(crate) async fn through_gateway(
    service_port: u16,
    endpoint: &str,
) -> Result<(u16, serde_json::Value), String> {
    let host = endpoint
        .strip_prefix("http://")
        .and_then(|authority| authority.rsplit_once(':'))
        .map(|(host, _)| host.to_owned())
        .ok_or_else(|| format!("not a gateway endpoint: {endpoint}"))?;
    let client = reqwest::Client::builder()
        .resolve(
            &host,
            std::net::SocketAddr::from(([127, 0, 0, 1], service_port)),
        )
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| error.to_string())?;
    let response = client
        .get(format!("{endpoint}/"))
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or_default()))
}

pub async fn the_gateway_reaches_runners_on_their_nodes(swarm: &Swarm) -> Result<(), String> {
    let instance = swarm.instance("gateway");
    let service = swarm
        .spawn(
            &instance,
            &[
                ("RUNNER_PORT_RANGE", "30800-30899"),
                ("RUNNER_ACCESS", "gateway"),
            ],
        )
        .await?;
    let port = service.process.port;
    let sessions: Vec<String> = (0..4).map(|i| format!("gateway-{i}")).collect();
    for session in &sessions {
        let endpoint = service.endpoint(session).await?;
        check(
            endpoint.ends_with(&format!(".runners.localhost:{port}")),
            || format!("{session}: not a gateway endpoint: {endpoint}"),
        )?;
        // On the task's node at its published port, through the gateway.
        poll_until(REACH_LIMIT, &format!("{endpoint} answering"), || async {
            through_gateway(port, &endpoint)
                .await
                .ok()
                .filter(|(status, body)| *status == 200 && body["runner"] == "ok")
        })
        .await?;
    }
    let endpoint = service.endpoint(&sessions[0]).await?;
    check(service.deprovision(&sessions[0]).await? == 200, || {
        "deprovision refused".to_owned()
    })?;
    let (status, body) = through_gateway(port, &endpoint).await?;
    check(status == 404 && body["error"] == "RUNNER_NOT_FOUND", || {
        format!("a removed runner answered {status} {body}")
    })
}

/// Runner egress on a swarm (docs/swarm.md): each node's rules are its
/// egress agent's (a global service running `orchestrator egress node`).
/// Without one the service is not ready and says why; with agents on two
/// of the four nodes it is, names the other two, places runners on the two
/// only, and their rules block what a runner without rules reaches; a table
/// deleted by hand is put back by the node's agent; without agents the
/// service is not ready again and the nodes lose their label.
pub async fn egress_agents_rule_their_nodes_and_runners_go_only_there(
    swarm: &Swarm,
) -> Result<(), String> {
    let instance = swarm.instance("egress");
    let open_instance = swarm.instance("egress-all");
    let outcome = egress_agents(swarm, &instance, &open_instance).await;
    // Whatever happened: the agents, the runners, their networks and the
    // nodes' tables go.
    let manager = swarm.cluster.manager();
    let _ = swarm.docker_on(
        manager,
        &["service", "rm", &format!("taylored-egress-{instance}")],
    );
    swarm.clean_up().await;
    let table = taylored_orchestrator::egress::ruleset::table_name(&instance);
    for node in &swarm.cluster.nodes {
        let _ = swarm.nft(node, &["delete", "table", "inet", &table]);
    }
    let network = format!("taylored-runners-{instance}");
    poll_until(
        Duration::from_secs(30),
        "the runner network removed",
        || async {
            let removed = swarm.docker_on(manager, &["network", "rm", &network]);
            let gone = swarm.docker_on(manager, &["network", "inspect", &network]);
            (removed.status.success() || !gone.status.success()).then_some(())
        },
    )
    .await
    .ok();
    for node in &swarm.cluster.nodes {
        for config in [
            format!("{network}-config"),
            format!("{network}-none-config"),
        ] {
            let _ = swarm.docker_on(node, &["network", "rm", &config]);
        }
    }
    outcome
}

/// `/readyz`'s 503 body when it names the missing egress agent.
async fn not_ready(service: &crate::harness::Service) -> Option<serde_json::Value> {
    let (status, body) = service.get("/readyz").await.ok()?;
    (status == 503 && body.to_string().contains("egress agent")).then_some(body)
}

async fn egress_agents(swarm: &Swarm, instance: &str, open_instance: &str) -> Result<(), String> {
    let nodes = &swarm.cluster.nodes;
    let (n1, n2, n3, n4) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    let image = crate::agent::image(&swarm.cluster)?;
    let table = taylored_orchestrator::egress::ruleset::table_name(instance);
    let public = [
        ("RUNNER_EGRESS", "public"),
        ("RUNNER_PORT_RANGE", "30600-30649"),
    ];
    let service = swarm.spawn_listening(instance, &public).await?;
    let named = poll_until(
        Duration::from_secs(30),
        "/readyz naming the missing agent",
        || not_ready(&service),
    )
    .await;
    if let Err(error) = named {
        return Err(format!("{error}: {:?}", service.get("/readyz").await));
    }

    crate::agent::deploy(
        &swarm.cluster,
        &image,
        instance,
        &[("RUNNER_EGRESS", "public")],
        &[&n3.hostname, &n4.hostname],
    )?;
    let ready = poll_until(
        Duration::from_secs(90),
        "ready with agents on n1 and n2",
        || async {
            let (status, body) = service.get("/readyz").await.ok()?;
            (status == 200).then_some(body)
        },
    )
    .await?;
    let nodes_said = &ready["egress"]["nodes"];
    check(
        nodes_said["ruled"] == serde_json::json!([n1.hostname, n2.hostname])
            && nodes_said["missing"] == serde_json::json!([n3.hostname, n4.hostname]),
        || format!("/readyz: {ready}"),
    )?;
    let (_, metrics) = service.get("/metrics").await?;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    check(
        metrics.contains("orchestrator_egress_nodes{state=\"ruled\"} 2")
            && metrics.contains("orchestrator_egress_nodes{state=\"missing\"} 2"),
        || format!("metrics: {metrics}"),
    )?;
    for (node, holds) in [(n1, true), (n2, true), (n3, false), (n4, false)] {
        let listed = swarm.nft(node, &["list", "table", "inet", &table]);
        check(listed.status.success() == holds, || {
            format!(
                "table inet {table} on {}: expected {holds}, nft said {}",
                node.hostname,
                String::from_utf8_lossy(&listed.stderr)
            )
        })?;
    }

    // Runners go to the ruled nodes only, and answer clients.
    let sessions: Vec<String> = (0..4).map(|i| format!("egress-{i}")).collect();
    let mut endpoints = Vec::new();
    for session in &sessions {
        endpoints.push(service.endpoint(session).await?);
    }
    for endpoint in &endpoints {
        reached(swarm, endpoint).await?;
    }
    let placed: BTreeSet<String> = swarm
        .services(instance)
        .await?
        .into_iter()
        .filter_map(|(_, node)| node)
        .collect();
    check(
        !placed.contains(&n3.hostname) && !placed.contains(&n4.hostname) && !placed.is_empty(),
        || format!("runners under rules were placed on {placed:?}"),
    )?;

    // The same kind of target from both sides: a runner without rules (an
    // instance under `all`) reaches a runner's published port on a node's
    // (private) address; one under rules cannot.
    let open = swarm
        .spawn(
            open_instance,
            &[
                ("RUNNER_EGRESS", "all"),
                ("RUNNER_PORT_RANGE", "30650-30699"),
            ],
        )
        .await?;
    let open_endpoint = open.endpoint("egress-open").await?;
    reached(swarm, &open_endpoint).await?;
    let authority = |endpoint: &str| endpoint.trim_start_matches("http://").to_owned();
    let probe = |from: &str, target: String| {
        swarm.get_as_client(&format!("{from}/probe/tcp?addr={target}"))
    };
    let reached_from_open = probe(&open_endpoint, authority(&endpoints[0]));
    check(
        reached_from_open
            .as_ref()
            .is_some_and(|answer| answer["ok"] == true),
        || {
            format!(
                "the runner under all could not reach {}: {reached_from_open:?}",
                endpoints[0]
            )
        },
    )?;
    for target in [authority(&open_endpoint), authority(&endpoints[1])] {
        let blocked = probe(&endpoints[0], target.clone());
        check(
            blocked.as_ref().is_some_and(|answer| {
                answer["ok"] == false
                    && answer["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("connect"))
            }),
            || format!("the runner under public reached {target}: {blocked:?}"),
        )?;
    }

    // A table deleted by hand on a node is put back by its agent.
    let deleted = swarm.nft(n1, &["delete", "table", "inet", &table]);
    check(deleted.status.success(), || {
        format!("nft delete: {}", String::from_utf8_lossy(&deleted.stderr))
    })?;
    poll_until(
        Duration::from_secs(20),
        "n1's agent putting its table back",
        || async {
            swarm
                .nft(n1, &["list", "table", "inet", &table])
                .status
                .success()
                .then_some(())
        },
    )
    .await?;

    // Without agents, no node holds the rules: not ready again, no label.
    let removed = swarm.docker_on(
        swarm.cluster.manager(),
        &["service", "rm", &format!("taylored-egress-{instance}")],
    );
    check(removed.status.success(), || "docker service rm".to_owned())?;
    poll_until(Duration::from_secs(30), "/readyz without agents", || {
        not_ready(&service)
    })
    .await?;
    let label = format!("taylored-egress.{instance}");
    for node in nodes {
        let inspected = swarm.docker_on(
            swarm.cluster.manager(),
            &[
                "node",
                "inspect",
                &node.hostname,
                "--format",
                "{{json .Spec.Labels}}",
            ],
        );
        let labels = String::from_utf8_lossy(&inspected.stdout).into_owned();
        check(!labels.contains(&label), || {
            format!("{} still has {label}: {labels}", node.hostname)
        })?;
    }
    let trail = service.audit_reasons("(egress)").await?;
    check(
        trail.iter().any(|r| {
            r.contains(&format!(
                "node {} runs this instance's egress agent",
                n1.hostname
            ))
        }) && trail
            .iter()
            .any(|r| r.contains(&format!("node {} runs no egress agent", n3.hostname))),
        || format!("the egress audit trail: {trail:?}"),
    )?;
    Ok(())
}
