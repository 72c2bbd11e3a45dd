//! Crash consistency: a mixed load of provisions, heartbeats and
//! deprovisions against the real binary, which is SIGKILLed at pseudo-random
//! moments and started again on the same database; after every restart the
//! invariants of the reconcile rules of docs/how-it-works.md are checked.
//!
//! Every session is owned by one client task, which sends its requests one
//! after the other (a "double provision" sends two provisions of the session
//! at once, whose outcome does not depend on their order). So the answers a
//! session got say exactly what must exist after a restart, except for a
//! request that was in flight at the kill: its outcome is unknown, and its
//! session is left out of the per-session checks until a later answer says
//! again what exists. The whole-instance checks (one row per container, one
//! running container per row, one container per session) hold for all.
//!
//! The default run fits the CI budget. The soak variant, and how to replay a
//! schedule, are in docs/testing.md ("Crash soak"):
//! `CRASH_KILL_POINTS=200 CRASH_SESSIONS=64 cargo test --test api crash -- --nocapture`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::InspectContainerOptions;
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use taylored_orchestrator::config::SESSION_LABEL;
use taylored_orchestrator::db::{RunnerRow, RunnerState};

use crate::helpers::{Api, BinaryApp, Reply, TestEnv, runner_answers};

/// The run's size, from the environment (defaults fit the CI budget).
#[derive(Debug, Clone, Copy)]
struct Config {
    kill_points: usize,
    sessions: usize,
    clients: usize,
    /// Longest wait between launching a burst and the kill. Provisions take
    /// seconds on a busy 2-core machine (the engine's start is the slow
    /// part), so this reaches past their start.
    max_delay_ms: u64,
    /// The same for a burst of deprovisions, which take a few hundred ms.
    max_deprovision_delay_ms: u64,
    /// Pause between the kill and the restart. 0 (the default) restarts at
    /// once, like a supervisor; a few seconds let the engine finish what
    /// the killed process had asked of it, which tells races with those
    /// late engine operations apart from other faults.
    restart_delay_ms: u64,
    seed: u64,
}

impl Config {
    fn from_env() -> Self {
        let sessions = env_number("CRASH_SESSIONS", 16).max(1) as usize;
        let default_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Self {
            kill_points: env_number("CRASH_KILL_POINTS", 20).max(1) as usize,
            sessions,
            // 8 to 16 clients, about one per 4 sessions.
            clients: (env_number("CRASH_CLIENTS", (sessions as u64 / 4).clamp(8, 16)).max(1)
                as usize)
                .min(sessions),
            max_delay_ms: env_number("CRASH_MAX_DELAY_MS", 2500),
            max_deprovision_delay_ms: env_number("CRASH_MAX_DEPROVISION_DELAY_MS", 600),
            restart_delay_ms: env_number("CRASH_RESTART_DELAY_MS", 0),
            seed: env_number("CRASH_SEED", default_seed),
        }
    }

    /// The environment that replays this run's schedule.
    fn replay(&self) -> String {
        format!(
            "CRASH_SEED={:#x} CRASH_KILL_POINTS={} CRASH_SESSIONS={} CRASH_CLIENTS={} \
             CRASH_MAX_DELAY_MS={} CRASH_MAX_DEPROVISION_DELAY_MS={} CRASH_RESTART_DELAY_MS={}",
            self.seed,
            self.kill_points,
            self.sessions,
            self.clients,
            self.max_delay_ms,
            self.max_deprovision_delay_ms,
            self.restart_delay_ms
        )
    }
}

/// A decimal or `0x` hexadecimal number from the environment.
fn env_number(name: &str, default: u64) -> u64 {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
}

/// xorshift64*: small, seedable, and good enough to pick operations and
/// delays reproducibly.
struct XorShift(u64);

impl XorShift {
    /// Seeds through one splitmix64 step, so that nearby seeds (run seed,
    /// round, client) give unrelated streams and the state is never 0.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the answers a session got say about its runner.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// A deprovision answered (200 or 404) or the session never had one.
    Absent,
    /// A provision answered with this endpoint.
    Running(String),
    /// A provision or deprovision was in flight at a kill, or an answer
    /// broke an invariant (already reported).
    Unknown,
}

struct Session {
    id: String,
    known: Known,
}

/// What a kill point's burst is mostly made of, so that kills land in
/// provisions and in removals alike (a removal needs a running runner,
/// which a burst of provisions cut early never leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Burst {
    /// Provisions of the sessions that have no runner.
    Provisions,
    /// Deprovisions of the sessions that have one.
    Deprovisions,
    /// Everything, in proportions like a browser's.
    Mixed,
}

impl Burst {
    fn choose(rng: &mut XorShift) -> Self {
        match rng.below(3) {
            0 => Burst::Provisions,
            1 => Burst::Deprovisions,
            _ => Burst::Mixed,
        }
    }

    /// The session a client works on next: one the burst is about if it
    /// has any, else any of its sessions.
    fn pick(self, sessions: &[Session], rng: &mut XorShift) -> usize {
        let wanted: Vec<usize> = (0..sessions.len())
            .filter(|&index| {
                let running = matches!(sessions[index].known, Known::Running(_));
                match self {
                    Burst::Provisions => !running,
                    Burst::Deprovisions => running,
                    Burst::Mixed => true,
                }
            })
            .collect();
        if wanted.is_empty() {
            rng.below(sessions.len() as u64) as usize
        } else {
            wanted[rng.below(wanted.len() as u64) as usize]
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Provision,
    DoubleProvision,
    Heartbeat,
    Deprovision,
}

impl Op {
    /// Mostly provisions and deprovisions, which are what a kill can cut in
    /// half; heartbeats and repeated provisions check the answers between.
    fn choose(known: &Known, burst: Burst, rng: &mut XorShift) -> Self {
        let roll = rng.below(100);
        match (known, burst) {
            (Known::Absent, _) => match roll {
                0..80 => Op::Provision,
                80..95 => Op::DoubleProvision,
                _ => Op::Deprovision,
            },
            (Known::Unknown, _) => match roll {
                0..80 => Op::Provision,
                _ => Op::Deprovision,
            },
            (Known::Running(_), Burst::Deprovisions) => match roll {
                0..85 => Op::Deprovision,
                _ => Op::Heartbeat,
            },
            (Known::Running(_), _) => match roll {
                0..40 => Op::Deprovision,
                40..70 => Op::Heartbeat,
                70..90 => Op::Provision,
                _ => Op::DoubleProvision,
            },
        }
    }
}

/// What the load of one kill point got: answers (and how long they took)
/// and requests cut by the kill.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    provisions: Answered,
    deprovisions: Answered,
    heartbeats: Answered,
}

#[derive(Debug, Default, Clone, Copy)]
struct Answered {
    answered: usize,
    in_flight: usize,
    total: Duration,
}

impl Answered {
    fn add(&mut self, other: Answered) {
        self.answered += other.answered;
        self.in_flight += other.in_flight;
        self.total += other.total;
    }

    fn record<T, E>(&mut self, result: &Result<T, E>, took: Duration) {
        match result {
            Ok(_) => {
                self.answered += 1;
                self.total += took;
            }
            Err(_) => self.in_flight += 1,
        }
    }
}

impl std::fmt::Display for Answered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mean = self.total.as_millis() / self.answered.max(1) as u128;
        write!(
            f,
            "{:>2} answered (mean {mean:>4} ms), {:>2} cut",
            self.answered, self.in_flight
        )
    }
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.provisions.add(other.provisions);
        self.deprovisions.add(other.deprovisions);
        self.heartbeats.add(other.heartbeats);
    }
}

/// One client task's share of the load.
struct Client {
    api: Api,
    sessions: Vec<Session>,
    rng: XorShift,
    burst: Burst,
    kill_point: usize,
    tally: Tally,
    violations: Vec<String>,
}

impl Client {
    /// Gets ready for the burst (before a deprovision burst: makes sure one
    /// of its sessions has a runner to remove, with a provision that is
    /// awaited), waits for every other client at `ready`, then loops over its
    /// own sessions until `stop`, one request (or one pair of provisions)
    /// at a time.
    async fn run(
        mut self,
        ready: Arc<tokio::sync::Barrier>,
        stop: Arc<AtomicBool>,
    ) -> (Vec<Session>, Tally, Vec<String>) {
        let has_runner = |sessions: &[Session]| {
            sessions
                .iter()
                .any(|session| matches!(session.known, Known::Running(_)))
        };
        if self.burst == Burst::Deprovisions && !has_runner(&self.sessions) {
            let index = self.rng.below(self.sessions.len() as u64) as usize;
            self.step(index, Op::Provision).await;
        }
        ready.wait().await;
        while !stop.load(Ordering::SeqCst) {
            let index = self.burst.pick(&self.sessions, &mut self.rng);
            let op = Op::choose(&self.sessions[index].known, self.burst, &mut self.rng);
            self.step(index, op).await;
        }
        (self.sessions, self.tally, self.violations)
    }

    /// Sends one operation and updates what is known from its answers.
    async fn step(&mut self, index: usize, op: Op) {
        let api = &self.api;
        let tally = &mut self.tally;
        let session = &mut self.sessions[index];
        let known = session.known.clone();
        let sent = Instant::now();
        let outcome = match op {
            Op::Provision => {
                let result = api.try_provision(Some(&session.id)).await;
                tally.provisions.record(&result, sent.elapsed());
                match result {
                    Ok(reply) => check_provision(&known, &reply, true),
                    Err(_) => Ok(after_provision_in_flight(known)),
                }
            }
            Op::DoubleProvision => {
                let (first, second) = tokio::join!(
                    api.try_provision(Some(&session.id)),
                    api.try_provision(Some(&session.id))
                );
                tally.provisions.record(&first, sent.elapsed());
                tally.provisions.record(&second, sent.elapsed());
                let replies: Vec<Reply> = [first, second].into_iter().flatten().collect();
                match check_double_provision(&known, &replies) {
                    Ok(Some(known)) => Ok(known),
                    Ok(None) => Ok(after_provision_in_flight(known)),
                    Err(what) => Err(what),
                }
            }
            Op::Heartbeat => {
                let result = api.try_heartbeat(&session.id).await;
                tally.heartbeats.record(&result, sent.elapsed());
                match result {
                    Ok(reply) => check_heartbeat(known, &reply),
                    Err(_) => Ok(known),
                }
            }
            Op::Deprovision => {
                let result = api.try_deprovision(&session.id).await;
                tally.deprovisions.record(&result, sent.elapsed());
                match result {
                    Ok(reply) => check_deprovision(&known, &reply),
                    // A removal cut half-way may have happened or not; one
                    // of nothing leaves nothing.
                    Err(_) if known == Known::Absent => Ok(Known::Absent),
                    Err(_) => Ok(Known::Unknown),
                }
            }
        };
        session.known = outcome.unwrap_or_else(|what| {
            self.violations.push(format!(
                "kill point {}, under load: session {}: {what}",
                self.kill_point, session.id
            ));
            Known::Unknown
        });
    }
}

fn check_heartbeat(known: Known, reply: &Reply) -> Result<Known, String> {
    let expected = match known {
        Known::Running(_) => 200,
        _ => 404,
    };
    if reply.status == expected {
        Ok(known)
    } else {
        Err(format!(
            "heartbeat answered {} {} although the session was {known:?}",
            reply.status, reply.body
        ))
    }
}

/// A deprovision answered 200 (removed) or 404 (there was none): either way
/// the session has no runner now.
fn check_deprovision(known: &Known, reply: &Reply) -> Result<Known, String> {
    let expected: &[u16] = match known {
        Known::Running(_) => &[200],
        Known::Absent => &[404],
        Known::Unknown => &[200, 404],
    };
    if expected.contains(&reply.status) {
        Ok(Known::Absent)
    } else {
        Err(format!(
            "deprovision answered {} {} although the session was {known:?}",
            reply.status, reply.body
        ))
    }
}

/// A provision of a running session must answer it unchanged, so only a
/// provision in flight on a session that had none leaves it unknown.
fn after_provision_in_flight(known: Known) -> Known {
    match known {
        Known::Running(endpoint) => Known::Running(endpoint),
        _ => Known::Unknown,
    }
}

/// Checks one answered provision against what the session had; returns what
/// it has now. `alone` is false for half of a double provision, where a 200
/// for a session without a runner may follow the other half's 201.
fn check_provision(known: &Known, reply: &Reply, alone: bool) -> Result<Known, String> {
    let endpoint = reply.endpoint();
    let ok = match (known, reply.status) {
        (Known::Running(before), 200) => endpoint == before,
        (Known::Absent, 201) => true,
        (Known::Absent, 200) => !alone,
        (Known::Unknown, 200 | 201) => true,
        _ => false,
    };
    if ok && endpoint.starts_with("http://") {
        Ok(Known::Running(endpoint.to_owned()))
    } else {
        Err(format!(
            "provision answered {} {} although the session was {known:?}",
            reply.status, reply.body
        ))
    }
}

/// Both answers of a double provision (one may be missing, cut by the
/// kill): one runner, at most one 201, the same endpoint. `None` if neither
/// answered.
fn check_double_provision(known: &Known, replies: &[Reply]) -> Result<Option<Known>, String> {
    let mut now = None;
    for reply in replies {
        let after = check_provision(known, reply, false)?;
        if now.as_ref().is_some_and(|now| *now != after) {
            return Err(format!(
                "two provisions at once named two runners: {:?}",
                replies
                    .iter()
                    .map(|reply| (reply.status, reply.endpoint()))
                    .collect::<Vec<_>>()
            ));
        }
        now = Some(after);
    }
    let created = replies.iter().filter(|reply| reply.status == 201).count();
    let both_answered = replies.len() == 2;
    if created > 1 || (both_answered && *known == Known::Absent && created != 1) {
        return Err(format!(
            "two provisions at once of a session that was {known:?} answered {:?}",
            replies.iter().map(|reply| reply.status).collect::<Vec<_>>()
        ));
    }
    Ok(now)
}

fn session_of(container: &ContainerSummary) -> Option<&str> {
    container
        .labels
        .as_ref()?
        .get(SESSION_LABEL)
        .map(String::as_str)
}

fn short(id: Option<&str>) -> &str {
    id.map(|id| &id[..id.len().min(12)]).unwrap_or("-")
}

/// What the database and the engine show for one session, for a violation.
fn describe(session: &str, rows: &[RunnerRow], containers: &[ContainerSummary]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .filter(|row| row.session_id == session)
        .map(|row| {
            format!(
                "row {:?} container {} port {:?}",
                row.state,
                short(row.container_id.as_deref()),
                row.host_port
            )
        })
        .collect();
    let containers: Vec<String> = containers
        .iter()
        .filter(|container| session_of(container) == Some(session))
        .map(|container| {
            format!(
                "container {} {:?} {}",
                short(container.id.as_deref()),
                container.state,
                container.status.as_deref().unwrap_or_default()
            )
        })
        .collect();
    format!(
        "DB: [{}]; Docker: [{}]",
        rows.join(", "),
        containers.join(", ")
    )
}

/// The last entries of a session's audit trail, for a violation: what the
/// API, the reconciler and the reaper did to it, in order.
async fn history(env: &TestEnv, session: &str) -> String {
    let db = env.db().await;
    let trail = db.audit_trail(session).await.unwrap_or_default();
    db.pool().close().await;
    let entries: Vec<String> = trail
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(|entry| {
            format!(
                "{} {}:{} ({}) {}",
                entry.at,
                entry.actor,
                entry.action,
                entry.reason,
                short(entry.container_id.as_deref())
            )
        })
        .collect();
    format!("audit: [{}]", entries.join(", "))
}

/// When the service was killed and when its successor was up (listening
/// and done with its startup reconcile), to place what the checks find in
/// time.
struct Restart {
    /// Names the kill point in violations.
    label: String,
    killed_at: DateTime<Utc>,
    up_at: DateTime<Utc>,
}

impl Restart {
    /// When the engine created a container, relative to the kill and the
    /// restart. The engine stamps a container when a create begins but lists
    /// it only once the create is done, so a container without a row
    /// stamped before the kill comes from a create of the killed process
    /// that the engine finished after the startup reconcile had looked.
    async fn created(&self, env: &TestEnv, container: &str) -> String {
        let inspected = env
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await;
        let created = inspected
            .ok()
            .and_then(|inspected| inspected.created)
            .and_then(|created| DateTime::parse_from_rfc3339(&created).ok());
        match created {
            Some(created) => format!(
                "created {} ms after the kill, the restarted service was up {} ms after it",
                (created.with_timezone(&Utc) - self.killed_at).num_milliseconds(),
                (self.up_at - self.killed_at).num_milliseconds()
            ),
            None => "creation time unknown".to_owned(),
        }
    }
}

/// The invariants, checked on a freshly restarted service before any load.
/// Sessions whose check failed become unknown, so that one fault is reported
/// once rather than at every later restart.
async fn check_invariants(
    env: &TestEnv,
    api: &Api,
    sessions: &mut [&mut Session],
    restart: &Restart,
) -> Vec<String> {
    let after = restart.label.as_str();
    let mut violations = Vec::new();
    let containers = env.containers().await;
    let db = env.db().await;
    let rows = db.all().await.unwrap();
    db.pool().close().await;

    // 1. Every container runs and has exactly one row, which names it; every
    // row is running, has one running container, and its port answers.
    let mut by_session: BTreeMap<&str, Vec<&ContainerSummary>> = BTreeMap::new();
    for container in &containers {
        let id = short(container.id.as_deref());
        let Some(session) = session_of(container) else {
            violations.push(format!("{after}: container {id} has no session label"));
            continue;
        };
        by_session.entry(session).or_default().push(container);
        let mut wrong = Vec::new();
        if container.state != Some(ContainerSummaryStateEnum::RUNNING) {
            wrong.push("is not running");
        }
        let own_rows: Vec<_> = rows
            .iter()
            .filter(|row| row.session_id == session)
            .collect();
        if own_rows.len() != 1 || own_rows[0].container_id != container.id {
            wrong.push("is not named by exactly one row");
        }
        if !wrong.is_empty() {
            violations.push(format!(
                "{after}: session {session}: container {id} {} ({}); {}; {}",
                wrong.join(" and "),
                restart.created(env, id).await,
                describe(session, &rows, &containers),
                history(env, session).await
            ));
        }
    }
    let mut probes = Vec::new();
    for row in &rows {
        let session = row.session_id.as_str();
        let running = by_session.get(session).map_or(0, |found| {
            found
                .iter()
                .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
                .count()
        });
        if row.state != RunnerState::Running || running != 1 {
            violations.push(format!(
                "{after}: session {session}: row is not one running runner; {}",
                describe(session, &rows, &containers)
            ));
        }
        match row.host_port {
            Some(port) => probes.push((session, format!("http://127.0.0.1:{port}"))),
            None => violations.push(format!("{after}: session {session}: row has no port")),
        }
    }
    let answers = join_all(probes.iter().map(|(_, endpoint)| runner_answers(endpoint))).await;
    for ((session, _), answer) in probes.iter().zip(answers) {
        if let Err(error) = answer {
            violations.push(format!("{after}: session {session}: row's {error}"));
        }
    }

    // 2. No session has two containers.
    for (session, found) in &by_session {
        if found.len() > 1 {
            violations.push(format!(
                "{after}: session {session} has {} containers; {}",
                found.len(),
                describe(session, &rows, &containers)
            ));
        }
    }

    // 3 and 4, per session, through the API.
    let checks = sessions.iter().map(|session| {
        let containers = &containers;
        let rows = &rows;
        async move {
            let id = session.id.as_str();
            let mut wrong = Vec::new();
            match &session.known {
                Known::Running(endpoint) => {
                    // 3. A runner that was answered and not removed survives.
                    match api.try_heartbeat(id).await {
                        Ok(reply) if reply.status == 200 => {}
                        reply => wrong.push(format!("heartbeat answered {:?}", status(&reply))),
                    }
                    match api.try_provision(Some(id)).await {
                        Ok(reply) if reply.status == 200 && reply.endpoint() == endpoint => {}
                        reply => wrong.push(format!(
                            "provision answered {:?} instead of 200 {endpoint}",
                            reply
                                .as_ref()
                                .map(|reply| (reply.status, reply.body.to_string()))
                        )),
                    }
                    if let Err(error) = runner_answers(endpoint).await {
                        wrong.push(error);
                    }
                }
                Known::Absent => {
                    // 4. A runner whose removal was answered is gone.
                    let left = containers
                        .iter()
                        .filter(|container| session_of(container) == Some(id))
                        .count();
                    if left > 0 || rows.iter().any(|row| row.session_id == id) {
                        wrong.push("a deprovisioned runner is still there".to_owned());
                    }
                    match api.try_heartbeat(id).await {
                        Ok(reply) if reply.status == 404 => {}
                        reply => wrong.push(format!("heartbeat answered {:?}", status(&reply))),
                    }
                }
                Known::Unknown => {
                    // Not a check: a session whose runner survived (or was
                    // adopted) is known again once a provision names it.
                    // One without stays unknown: the next burst provisions it.
                    if let Ok(reply) = api.try_heartbeat(id).await
                        && reply.status == 200
                    {
                        match api.try_provision(Some(id)).await {
                            Ok(reply) if reply.status == 200 => {
                                return (wrong, Some(Known::Running(reply.endpoint().to_owned())));
                            }
                            reply => wrong.push(format!(
                                "heartbeat answered 200 but provision answered {:?}",
                                reply
                                    .as_ref()
                                    .map(|reply| (reply.status, reply.body.to_string()))
                            )),
                        }
                    }
                }
            }
            (wrong, None)
        }
    });
    let results = join_all(checks).await;
    for (session, (wrong, resolved)) in sessions.iter_mut().zip(results) {
        if let Some(known) = resolved {
            session.known = known;
        }
        if wrong.is_empty() {
            continue;
        }
        violations.push(format!(
            "{after}: session {} (known {:?}): {}; {}",
            session.id,
            session.known,
            wrong.join("; "),
            describe(&session.id, &rows, &containers)
        ));
        session.known = Known::Unknown;
    }
    violations
}

fn status(reply: &Result<Reply, reqwest::Error>) -> Result<u16, String> {
    reply
        .as_ref()
        .map(|reply| reply.status)
        .map_err(|error| error.to_string())
}

/// What the startup reconcile of the last start did, read from the audit
/// log (entries after `since`): shows whether the kill cut provisions and
/// removals in half. Returns the counts by action and reason, and the last id.
async fn reconcile_actions(env: &TestEnv, since: i64) -> (BTreeMap<String, usize>, i64) {
    let db = env.db().await;
    let entries: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT id, action, reason FROM audit_log WHERE actor = 'reconciler' AND id > ? ORDER BY id",
    )
    .bind(since)
    .fetch_all(db.pool())
    .await
    .unwrap();
    db.pool().close().await;
    let mut counts = BTreeMap::new();
    let mut last = since;
    for (id, action, reason) in entries {
        last = id;
        *counts.entry(format!("{action} ({reason})")).or_default() += 1;
    }
    (counts, last)
}

async fn start(env: &Arc<TestEnv>) -> BinaryApp {
    env.spawn_binary(&[
        // Nothing may be reaped during the run: only kills change state.
        ("INACTIVITY_TIMEOUT_SECONDS", "3600"),
        ("CLEANUP_INTERVAL_SECONDS", "3600"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_keeps_db_and_docker_consistent() {
    let config = Config::from_env();
    let started = Instant::now();
    eprintln!("crash harness: {}", config.replay());
    let env = TestEnv::stubborn();
    let mut rng = XorShift::new(config.seed);
    // Session i belongs to client i % clients for the whole run.
    let mut shares: Vec<Vec<Session>> = (0..config.clients).map(|_| Vec::new()).collect();
    for i in 0..config.sessions {
        shares[i % config.clients].push(Session {
            id: format!("crash-{i:03}"),
            known: Known::Absent,
        });
    }
    let mut violations: Vec<String> = Vec::new();
    let mut totals = Tally::default();
    let mut repairs: BTreeMap<String, usize> = BTreeMap::new();
    let mut audit_seen = 0;

    let mut orchestrator = start(&env).await;
    for kill_point in 1..=config.kill_points {
        let burst = Burst::choose(&mut rng);
        let max_delay = match burst {
            Burst::Deprovisions => config.max_deprovision_delay_ms,
            _ => config.max_delay_ms,
        };
        let delay = Duration::from_millis(rng.below(max_delay + 1));
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(tokio::sync::Barrier::new(config.clients + 1));
        let clients: Vec<_> = std::mem::take(&mut shares)
            .into_iter()
            .enumerate()
            .map(|(index, sessions)| {
                let seed = config.seed ^ ((kill_point as u64) << 32) ^ index as u64;
                let client = Client {
                    api: orchestrator.api.clone(),
                    sessions,
                    rng: XorShift::new(seed),
                    burst,
                    kill_point,
                    tally: Tally::default(),
                    violations: Vec::new(),
                };
                tokio::spawn(client.run(ready.clone(), stop.clone()))
            })
            .collect();
        // The burst starts when every client is ready; the kill follows.
        ready.wait().await;
        // The kill point's random moment inside the burst: what the soak
        // varies, not a wait for the service.
        tokio::time::sleep(delay).await;
        stop.store(true, Ordering::SeqCst);
        orchestrator.kill_9();
        let killed_at = Utc::now();
        let mut tally = Tally::default();
        for task in clients {
            let (share, client_tally, client_violations) = task.await.unwrap();
            shares.push(share);
            tally.add(client_tally);
            violations.extend(client_violations);
        }
        totals.add(tally);

        // CRASH_RESTART_DELAY_MS (0 by default): a deliberate pause, to tell
        // a race with the killed process's engine requests from other faults.
        tokio::time::sleep(Duration::from_millis(config.restart_delay_ms)).await;
        orchestrator = start(&env).await;
        let restart = Restart {
            label: format!(
                "after kill point {kill_point} ({burst:?} burst, {} ms)",
                delay.as_millis()
            ),
            killed_at,
            up_at: Utc::now(),
        };
        orchestrator.wait_repaired().await;
        let (actions, last) = reconcile_actions(&env, audit_seen).await;
        audit_seen = last;
        let mut sessions: Vec<&mut Session> = shares.iter_mut().flatten().collect();
        let checking = Instant::now();
        let found = check_invariants(&env, &orchestrator.api, &mut sessions, &restart).await;
        eprintln!(
            "kill point {kill_point:>3}, {burst:?} burst, at {:>4} ms: provisions {}, \
             deprovisions {}, heartbeats {}; restart {} ms, reconcile: {}; checks {} ms, \
             violations: {}",
            delay.as_millis(),
            tally.provisions,
            tally.deprovisions,
            tally.heartbeats,
            (restart.up_at - restart.killed_at).num_milliseconds(),
            summarize(&actions),
            checking.elapsed().as_millis(),
            found.len()
        );
        for (action, count) in actions {
            *repairs.entry(action).or_default() += count;
        }
        violations.extend(found);
    }

    // Finally everything can still be removed, and then nothing is left.
    let sessions: Vec<&Session> = shares.iter().flatten().collect();
    let replies = join_all(
        sessions
            .iter()
            .map(|session| orchestrator.api.try_deprovision(&session.id)),
    )
    .await;
    for (session, reply) in sessions.iter().zip(replies) {
        if !matches!(status(&reply), Ok(200 | 404)) {
            violations.push(format!(
                "final cleanup: deprovision of {} answered {:?}",
                session.id,
                status(&reply)
            ));
        }
    }
    let left = env.containers().await.len();
    let db = env.db().await;
    let rows = db.all().await.unwrap().len();
    db.pool().close().await;
    if left > 0 || rows > 0 {
        violations.push(format!(
            "final cleanup: {left} containers and {rows} rows left after deprovisioning every session"
        ));
    }
    let exit = orchestrator.terminate().await;
    if !exit.success() {
        violations.push(format!("final SIGTERM: exit status {exit:?}"));
    }

    eprintln!(
        "crash harness: {} kill points in {:.1?}; provisions {}, deprovisions {}, heartbeats {}",
        config.kill_points,
        started.elapsed(),
        totals.provisions,
        totals.deprovisions,
        totals.heartbeats
    );
    eprintln!("startup reconciles did, in total:");
    for (action, count) in &repairs {
        eprintln!("  {count:>4}  {action}");
    }
    eprintln!("violations: {}", violations.len());
    for violation in &violations {
        eprintln!("  {violation}");
    }
    assert!(
        violations.is_empty(),
        "{} invariant violations (replay the schedule with {}):\n{}",
        violations.len(),
        config.replay(),
        violations.join("\n")
    );
}

/// The reconcile actions of one start, short: `kept` counted alone, the
/// repairs by reason.
fn summarize(actions: &BTreeMap<String, usize>) -> String {
    let mut kept = 0;
    let mut repairs = Vec::new();
    for (action, count) in actions {
        if action == "kept (runner still running after a restart)" {
            kept += count;
        } else {
            repairs.push(format!("{count}x {action}"));
        }
    }
    if repairs.is_empty() {
        format!("kept {kept}")
    } else {
        format!("kept {kept}, {}", repairs.join(", "))
    }
}
