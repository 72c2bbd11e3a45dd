//! The orchestrator's manager lost with its database (docs/swarm.md#failover):
//! a new orchestrator through another manager, on an empty database and the
//! same token key (the stack's Docker secret), serves every session again.

use std::time::{Duration, Instant};

use bollard::models::NodeState;

use crate::cases::{REACH_LIMIT, check, through_gateway};
use crate::harness::{Service, Swarm, engine, services_on};
use crate::support::wait::poll_until;

/// The gateway's public port, the same before and after, as the stack's
/// published port is.
const PUBLIC_PORT: &str = "8443";

/// How long the swarm may take to notice its lost manager: a new raft
/// leader and the node marked down (swarmkit's election and node heartbeat;
/// measured 40-51 s here, docs/swarm.md#failover).
const NOTICE_LIMIT: Duration = Duration::from_secs(90);

/// The bound this test holds the failover to, from the machine's death to
/// every session served by the new orchestrator: the swarm's part above,
/// and the new orchestrator's start and rebuild (under 0.2 s here).
const FAILOVER_LIMIT: Duration = Duration::from_secs(95);

/// A session as the browser holds it.
struct Held {
    session: String,
    endpoint: String,
}

pub async fn a_lost_manager_and_database_fail_over_to_another_manager(
    swarm: &Swarm,
) -> Result<(), String> {
    let managers = swarm.cluster.managers();
    check(managers.len() >= 3, || {
        format!(
            "a failover needs 3 managers, the swarm has {}",
            managers.len()
        )
    })?;
    let (lost, next) = (managers[0].clone(), managers[1].clone());
    let instance = swarm.instance("failover");
    // The key as the stack's secret holds it, on every manager.
    let key_file = swarm.file("failover.token-key");
    let key = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("new-token-key")
        .env_clear()
        .output()
        .map_err(|error| error.to_string())?;
    check(key.status.success() && key.stdout.len() == 65, || {
        format!(
            "new-token-key printed {:?}",
            String::from_utf8_lossy(&key.stdout)
        )
    })?;
    std::fs::write(&key_file, &key.stdout).map_err(|error| error.to_string())?;
    // Runners off the manager to lose: its own runners are a lost node's
    // (a_lost_node_s_sessions_are_repaired_on_the_others).
    let placement = format!("node.hostname!={}", lost.hostname);
    let env = [
        ("RUNNER_ACCESS", "gateway"),
        ("GATEWAY_PUBLIC_PORT", PUBLIC_PORT),
        ("GATEWAY_TOKEN_KEY_FILE", key_file.as_str()),
        ("RUNNER_PLACEMENT", placement.as_str()),
        ("RUNNER_PORT_RANGE", "30900-30949"),
        ("WARM_POOL_SIZE", "1"),
    ];
    let first_db = swarm.file("failover-first.db");
    let first = swarm.spawn_on(&instance, &env, &lost, &first_db).await?;

    // A warm runner claimed (the browser's first provision), sessions of
    // their own, and a warm runner left waiting.
    let pooled = waiting_warm(&first, None).await?;
    let (status, body) = first.provision_without_session().await?;
    check(
        status == 201 && body["sessionId"] == pooled.as_str(),
        || format!("the first provision did not claim {pooled}: {status} {body}"),
    )?;
    let mut held = vec![Held {
        session: pooled.clone(),
        endpoint: body["endpoint"].as_str().unwrap_or_default().to_owned(),
    }];
    for i in 0..3 {
        let session = format!("failover-{i}");
        let endpoint = first.endpoint(&session).await?;
        held.push(Held { session, endpoint });
    }
    for runner in &held {
        reaches(&first, runner).await?;
    }
    let waiting = waiting_warm(&first, Some(&pooled)).await?;
    println!(
        "    {} sessions through the first orchestrator's gateway, {waiting} waiting",
        held.len()
    );

    // The machine of the manager and the database dies.
    swarm.cluster.kill(&lost)?;
    let lost_at = Instant::now();
    first.process.kill_9();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{first_db}{suffix}"));
    }

    // What the swarm does first: another manager leads and marks the node
    // down (only then would it start the stack's orchestrator elsewhere).
    let survivor = engine(&next);
    let led_after = std::sync::OnceLock::new();
    poll_until(
        NOTICE_LIMIT,
        &format!("{} marked down", lost.hostname),
        || async {
            let nodes = survivor.list_nodes(None).await.ok()?;
            led_after.get_or_init(|| lost_at.elapsed());
            nodes
                .iter()
                .find(|node| {
                    node.description
                        .as_ref()
                        .and_then(|d| d.hostname.as_deref())
                        == Some(lost.hostname.as_str())
                })
                .and_then(|node| node.status.as_ref()?.state)
                .filter(|state| *state == NodeState::DOWN)
        },
    )
    .await?;
    let down_after = lost_at.elapsed();

    // The new orchestrator: another manager, an empty database, the key.
    let second_db = swarm.file("failover-second.db");
    let second = swarm.spawn_on(&instance, &env, &next, &second_db).await?;
    let ready_after = lost_at.elapsed();
    let summary = second
        .process
        .logs
        .field("startup reconcile finished", "summary")
        .unwrap_or_default();
    check(
        summary.contains(&format!("adopted={}", held.len() + 1)),
        || {
            format!(
                "the rebuild's reconcile: {summary}\n{}",
                second.runners_list().unwrap_or_default()
            )
        },
    )?;
    for runner in &held {
        let status = second.heartbeat(&runner.session).await?;
        check(status == 200, || {
            format!("{}'s heartbeat answered {status}", runner.session)
        })?;
        let (status, body) = second.provision(&runner.session).await?;
        check(
            status == 200 && body["endpoint"] == runner.endpoint.as_str(),
            || {
                format!(
                    "{}'s provision: {status} {body}, held {}",
                    runner.session, runner.endpoint
                )
            },
        )?;
        if let Err(error) = reaches(&second, runner).await {
            return Err(format!("{error}\n{}", second.runners_list()?));
        }
    }
    let served_after = lost_at.elapsed();
    println!(
        "    failover: a leader after {:.1} s, {} down after {:.1} s, the new orchestrator \
         ready {:.1} s and every session ({}) served {:.1} s after the manager died",
        led_after.get().copied().unwrap_or_default().as_secs_f64(),
        lost.hostname,
        down_after.as_secs_f64(),
        ready_after.as_secs_f64(),
        held.len(),
        served_after.as_secs_f64()
    );
    check(served_after < FAILOVER_LIMIT, || {
        format!("the failover took {served_after:?}, over {FAILOVER_LIMIT:?}")
    })?;

    // What an operator sees: every runner listed, the rebuild audited, the
    // warm runner still waiting (and only it: the claimed one is a session's).
    let listed = second.runners_list()?;
    for runner in &held {
        check(listed.contains(&runner.session), || {
            format!("runners list lacks {}: {listed}", runner.session)
        })?;
        let reasons = second.audit_reasons(&runner.session).await?;
        check(reasons.iter().any(|r| r.contains("without a row")), || {
            format!(
                "{}'s audit does not say it was adopted: {reasons:?}",
                runner.session
            )
        })?;
    }
    let rebuilt = second.audit_reasons("(database)").await?;
    check(
        rebuilt
            .iter()
            .any(|r| r.contains("did not exist; rebuilt from the engine")),
        || format!("the database's audit: {rebuilt:?}"),
    )?;
    check(warm_sessions(&listed) == [waiting.clone()], || {
        format!("the waiting warm runner {waiting} after the rebuild: {listed}")
    })?;
    // The next browser gets the waiting one, never a claimed one.
    let (status, body) = second.provision_without_session().await?;
    check(
        status == 201 && body["sessionId"] == waiting.as_str(),
        || format!("the next browser got {status} {body}, the waiting one is {waiting}"),
    )?;
    let services = services_on(&survivor, &instance).await?;
    check(services.len() > held.len(), || {
        format!("services after the failover: {services:?}")
    })
}

/// The runner answers through `service`'s gateway at the endpoint held
/// (its host, sent to the service's own port: PUBLIC_PORT is a proxy's).
async fn reaches(service: &Service, runner: &Held) -> Result<(), String> {
    let port = service.process.port;
    let local = runner
        .endpoint
        .strip_suffix(&format!(":{PUBLIC_PORT}"))
        .map(|host| format!("{host}:{port}"))
        .ok_or_else(|| format!("not an endpoint at {PUBLIC_PORT}: {}", runner.endpoint))?;
    let answered = poll_until(
        REACH_LIMIT,
        &format!("{} answering through the gateway", runner.endpoint),
        || async {
            through_gateway(port, &local)
                .await
                .ok()
                .filter(|(status, body)| *status == 200 && body["runner"] == "ok")
        },
    )
    .await;
    match answered {
        Ok(_) => Ok(()),
        Err(error) => Err(format!(
            "{error}; {}'s gateway last answered {:?}",
            runner.session,
            through_gateway(port, &local).await
        )),
    }
}

/// Waits until `service`'s pool holds one running warm runner other than
/// `claimed`: its session id.
async fn waiting_warm(service: &Service, claimed: Option<&str>) -> Result<String, String> {
    poll_until(Duration::from_secs(60), "a waiting warm runner", || async {
        let listed = service.runners_list().ok()?;
        listed.lines().find_map(|line| {
            let mut columns = line.split_whitespace();
            let (session, kind, state) = (columns.next()?, columns.next()?, columns.next()?);
            (kind == "warm" && state == "running" && Some(session) != claimed)
                .then(|| session.to_owned())
        })
    })
    .await
}

/// The sessions `runners list` shows as waiting warm runners.
fn warm_sessions(listed: &str) -> Vec<String> {
    listed
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some("warm"))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}
