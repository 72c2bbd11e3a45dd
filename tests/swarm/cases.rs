//! The swarm tier's tests. Each starts its own service (instance, database
//! and port range of its own) against the one swarm.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::harness::Swarm;
use crate::support::wait::poll_until;

/// How long a runner the service reports may take to answer a client.
const REACH_LIMIT: Duration = Duration::from_secs(10);

fn check(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what()) }
}

/// Waits until the runner at `endpoint` answers the client namespace.
async fn reached(swarm: &Swarm, endpoint: &str) -> Result<(), String> {
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
    let status = service.heartbeat("idle").await?;
    check(status == 404, || {
        format!("a reaped runner's heartbeat answered {status}")
    })?;
    let reasons = service.audit_reasons("idle").await?;
    check(
        reasons
            .iter()
            .any(|reason| reason.contains("INACTIVITY_TIMEOUT_SECONDS")),
        || format!("no reaping in the audit log: {reasons:?}"),
    )
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
    // Its link down and its engine killed, as a machine that died.
    let down = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lost.netns,
            "ip",
            "link",
            "set",
            "eth0",
            "down",
        ])
        .status()
        .map_err(|error| error.to_string())?;
    check(down.success(), || {
        "could not take the node's link down".to_owned()
    })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lost.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|error| error.to_string())?;
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
async fn through_gateway(
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
