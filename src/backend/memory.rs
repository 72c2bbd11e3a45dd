//! A [`RunnerBackend`] held in memory, for tests that need no engine (the
//! fast tier: `cargo test --lib`). It behaves like the Docker backend where
//! the service depends on it:
//!
//! - a start under a name already taken removes the leftover (with its
//!   events) and starts again, as the Docker backend does on a 409;
//! - removing an unknown runner counts as removed; `is_running` of one is
//!   `false`; lists include stopped runners;
//! - the event stream reports `die` and `destroy` for removals the service
//!   makes too, replays what happened from `since` on (the last 256 events,
//!   as the engine keeps), and ends with an error when the engine becomes
//!   unreachable;
//! - a named network must exist (`bridge` does; see [`MemoryBackend::add_network`]).
//!
//! Test controls, all callable while the service runs:
//! [`kill`](MemoryBackend::kill) and [`destroy`](MemoryBackend::destroy) act
//! behind the service's back; [`set_reachable`](MemoryBackend::set_reachable)
//! takes the engine away and back; [`fail_next_starts`](MemoryBackend::fail_next_starts)
//! and [`set_image_present`](MemoryBackend::set_image_present) make starts
//! fail; [`hold_starts`](MemoryBackend::hold_starts) parks starts with their
//! container created until [`release_starts`](MemoryBackend::release_starts)
//! (with [`wait_for_held_starts`](MemoryBackend::wait_for_held_starts) to
//! know they got there), and [`hold_removes`](MemoryBackend::hold_removes)
//! does the same for removals; [`calls`](MemoryBackend::calls) counts what the
//! service asked; [`runners`](MemoryBackend::runners) is what runs.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream;
use tokio::sync::{broadcast, watch};

use super::{
    EngineError, NetworkMode, NodeCoverage, ObservedRunner, RunnerBackend, RunnerEvent,
    RunnerEvents, RunnerSpec, StartedRunner, Stop,
};

/// The image name in messages (the memory backend has no images).
const IMAGE: &str = "runner-image";
/// Events kept for replay, as many as the Docker Engine keeps.
const EVENTS_KEPT: usize = 256;
/// The first host port handed out.
const FIRST_PORT: u16 = 32768;
/// What `memory_total` reports unless set: 16 GiB.
const DEFAULT_MEMORY: u64 = 16 << 30;
/// Exit codes in `die` events: SIGTERM's for a graceful stop, SIGKILL's
/// otherwise.
const EXIT_TERM: i32 = 143;
const EXIT_KILL: i32 = 137;

/// How a start made to fail by [`MemoryBackend::fail_next_starts`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// `EngineError::ImageNotFound`, nothing created.
    ImageMissing,
    /// `EngineError::Unavailable`, nothing created (the engine itself stays
    /// reachable).
    Unavailable,
}

/// How many times the service called each backend method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub start: usize,
    pub is_running: usize,
    pub list: usize,
    pub list_session: usize,
    pub remove: usize,
    pub events: usize,
    pub ping: usize,
    pub image_present: usize,
    pub memory_total: usize,
    pub ensure_network: usize,
}

#[derive(Debug)]
pub struct MemoryBackend {
    state: Mutex<State>,
    /// Seconds since the epoch when it was made: runners' creation times
    /// count from it, one second apart.
    epoch: i64,
    events: broadcast::Sender<Message>,
    /// `true` while starts are held (see [`MemoryBackend::hold_starts`]).
    held: watch::Sender<bool>,
    /// How many starts wait at the hold now.
    waiting: watch::Sender<usize>,
    /// The same for removals (see [`MemoryBackend::hold_removes`]).
    removes_held: watch::Sender<bool>,
    removes_waiting: watch::Sender<usize>,
}

#[derive(Debug, Clone)]
enum Message {
    Event(RunnerEvent),
    /// The engine went away: open streams end with an error.
    Disconnect,
}

#[derive(Debug)]
struct State {
    /// By id; ids sort in creation order.
    runners: BTreeMap<String, ObservedRunner>,
    next: u64,
    next_port: u16,
    reachable: bool,
    image_present: bool,
    memory_total: u64,
    networks: HashSet<String>,
    failures: VecDeque<StartFailure>,
    history: VecDeque<RunnerEvent>,
    calls: Calls,
    /// What `egress_nodes` reports: `None`, one engine (the default).
    egress_nodes: Option<NodeCoverage>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// Reachable, with the image present and no runner.
    pub fn new() -> Self {
        Self {
            epoch: chrono::Utc::now().timestamp(),
            state: Mutex::new(State {
                runners: BTreeMap::new(),
                next: 1,
                next_port: FIRST_PORT,
                reachable: true,
                image_present: true,
                memory_total: DEFAULT_MEMORY,
                networks: HashSet::from(["bridge".to_owned()]),
                failures: VecDeque::new(),
                history: VecDeque::new(),
                calls: Calls::default(),
                egress_nodes: None,
            }),
            events: broadcast::channel(1024).0,
            held: watch::Sender::new(false),
            waiting: watch::Sender::new(0),
            removes_held: watch::Sender::new(false),
            removes_waiting: watch::Sender::new(0),
        }
    }

    /// Every runner, running or not, oldest first.
    pub fn runners(&self) -> Vec<ObservedRunner> {
        self.lock().runners.values().cloned().collect()
    }

    pub fn calls(&self) -> Calls {
        self.lock().calls
    }

    /// Stops a runner (by id or name) behind the service's back, as if its
    /// process died: it stays listed, not running, and a `die` event is
    /// sent. `false` if there is no such runner.
    pub fn kill(&self, runner: &str) -> bool {
        let mut state = self.lock();
        let Some(id) = state.find(runner) else {
            return false;
        };
        if let Some(found) = state.runners.get_mut(&id).filter(|found| found.running) {
            found.running = false;
            let found = found.clone();
            self.emit(&mut state, &found, format!("die (exit code {EXIT_KILL})"));
        }
        true
    }

    /// Removes a runner (by id or name) behind the service's back, as
    /// `docker rm -f` would: `die` if it ran, then `destroy`. `false` if
    /// there is no such runner.
    pub fn destroy(&self, runner: &str) -> bool {
        let mut state = self.lock();
        state
            .find(runner)
            .map(|id| self.remove_locked(&mut state, &id, EXIT_KILL))
            .is_some()
    }

    /// Takes the engine away (every call fails as unavailable and open
    /// event streams end) or brings it back.
    pub fn set_reachable(&self, reachable: bool) {
        self.lock().reachable = reachable;
        if !reachable {
            let _ = self.events.send(Message::Disconnect);
        }
    }

    /// Makes the next starts fail, one per entry, in order.
    pub fn fail_next_starts(&self, failures: impl IntoIterator<Item = StartFailure>) {
        self.lock().failures.extend(failures);
    }

    /// Whether the runner image is there; without it every start fails with
    /// `ImageNotFound` and `/readyz` names it.
    pub fn set_image_present(&self, present: bool) {
        self.lock().image_present = present;
    }

    /// What `memory_total` reports (the `auto` runner limit's base).
    pub fn set_memory_total(&self, bytes: u64) {
        self.lock().memory_total = bytes;
    }

    /// Plays a swarm whose nodes hold their own egress rules: `egress_nodes`
    /// reports `coverage` from now on.
    pub fn set_egress_nodes(&self, coverage: NodeCoverage) {
        self.lock().egress_nodes = Some(coverage);
    }

    /// Makes a named network exist, so that runners may join it.
    pub fn add_network(&self, name: &str) {
        self.lock().networks.insert(name.to_owned());
    }

    /// Parks every start from now on after its runner is created (named, not
    /// running, no port yet) until [`MemoryBackend::release_starts`]: the
    /// moment a provision is with the engine.
    pub fn hold_starts(&self) {
        self.held.send_replace(true);
    }

    /// Lets held starts go on, and later ones through.
    pub fn release_starts(&self) {
        self.held.send_replace(false);
    }

    /// Returns once at least `count` starts wait at the hold.
    pub async fn wait_for_held_starts(&self, count: usize) {
        let mut waiting = self.waiting.subscribe();
        let _ = waiting.wait_for(|waiting| *waiting >= count).await;
    }

    /// Parks every removal from now on before its runner is touched (still
    /// there, still running) until [`MemoryBackend::release_removes`]: the
    /// moment a removal is with the engine.
    pub fn hold_removes(&self) {
        self.removes_held.send_replace(true);
    }

    /// Lets held removals go on, and later ones through.
    pub fn release_removes(&self) {
        self.removes_held.send_replace(false);
    }

    /// Returns once at least `count` removals wait at the hold.
    pub async fn wait_for_held_removes(&self, count: usize) {
        let mut waiting = self.removes_waiting.subscribe();
        let _ = waiting.wait_for(|waiting| *waiting >= count).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a call and fails it if the engine is away.
    fn call(&self, count: impl FnOnce(&mut Calls) -> &mut usize) -> Result<(), EngineError> {
        let mut state = self.lock();
        *count(&mut state.calls) += 1;
        state.reachable_or_fail()
    }

    fn emit(&self, state: &mut State, runner: &ObservedRunner, description: String) {
        let event = RunnerEvent {
            session_id: runner.session_id.clone(),
            runner_id: runner.id.clone(),
            kind: runner.kind,
            description,
            time: Utc::now().timestamp(),
        };
        if state.history.len() == EVENTS_KEPT {
            state.history.pop_front();
        }
        state.history.push_back(event.clone());
        let _ = self.events.send(Message::Event(event));
    }

    fn remove_locked(&self, state: &mut State, id: &str, exit_code: i32) {
        if let Some(runner) = state.runners.remove(id) {
            if runner.running {
                self.emit(state, &runner, format!("die (exit code {exit_code})"));
            }
            self.emit(state, &runner, "destroy".to_owned());
        }
    }

    /// Creates the runner, removing a leftover under its name first.
    fn create(&self, spec: &RunnerSpec<'_>) -> Result<String, EngineError> {
        let mut state = self.lock();
        if let Some(failure) = state.failures.pop_front() {
            return Err(match failure {
                StartFailure::ImageMissing => EngineError::ImageNotFound(IMAGE.to_owned()),
                StartFailure::Unavailable => {
                    EngineError::Unavailable("a start made to fail".to_owned())
                }
            });
        }
        if !state.image_present {
            return Err(EngineError::ImageNotFound(IMAGE.to_owned()));
        }
        if let NetworkMode::Named(name) = spec.network_mode
            && !state.networks.contains(name)
        {
            return Err(EngineError::NetworkNotFound(name.clone()));
        }
        if let Some(leftover) = state.find(spec.name) {
            tracing::warn!(
                container = spec.name,
                "removing a leftover container with this session's name"
            );
            self.remove_locked(&mut state, &leftover, EXIT_KILL);
        }
        let sequence = state.next;
        state.next += 1;
        let id = format!("mem{sequence:013}");
        state.runners.insert(
            id.clone(),
            ObservedRunner {
                id: id.clone(),
                name: spec.name.to_owned(),
                session_id: spec.session_id.to_owned(),
                running: false,
                kind: spec.kind,
                pooled: spec.pooled,
                host_port: None,
                network_mode: spec.network_mode.clone(),
                // Creation order, in seconds from when the backend was made,
                // as an engine's clock would say.
                created: self.epoch + i64::try_from(sequence).unwrap_or(0),
                node: None,
                address: None,
                token: spec.token.cloned(),
            },
        );
        Ok(id)
    }

    async fn wait_while_held(&self) {
        wait_while(&self.held, &self.waiting).await;
    }
}

/// Waits while `held` is set, counted in `waiting` meanwhile.
async fn wait_while(held: &watch::Sender<bool>, waiting: &watch::Sender<usize>) {
    let mut held = held.subscribe();
    if !*held.borrow_and_update() {
        return;
    }
    waiting.send_modify(|waiting| *waiting += 1);
    let _ = held.wait_for(|held| !held).await;
    waiting.send_modify(|waiting| *waiting -= 1);
}

impl State {
    fn reachable_or_fail(&self) -> Result<(), EngineError> {
        if self.reachable {
            Ok(())
        } else {
            Err(EngineError::Unavailable(
                "the memory backend is set unreachable".to_owned(),
            ))
        }
    }

    /// The id of the runner with this id or name.
    fn find(&self, runner: &str) -> Option<String> {
        if self.runners.contains_key(runner) {
            return Some(runner.to_owned());
        }
        self.runners
            .values()
            .find(|found| found.name == runner)
            .map(|found| found.id.clone())
    }

    fn observed(&self, session_id: Option<&str>) -> Vec<ObservedRunner> {
        self.runners
            .values()
            .filter(|runner| session_id.is_none_or(|session| runner.session_id == session))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl RunnerBackend for MemoryBackend {
    async fn start(&self, spec: &RunnerSpec<'_>) -> Result<StartedRunner, EngineError> {
        self.call(|calls| &mut calls.start)?;
        let id = self.create(spec)?;
        self.wait_while_held().await;
        let mut state = self.lock();
        state.reachable_or_fail()?;
        let port = (!spec.network_mode.is_isolated()).then_some(state.next_port);
        let Some(runner) = state.runners.get_mut(&id) else {
            // Removed while it was being started, as the engine answers.
            return Err(EngineError::Refused(format!("No such container: {id}")));
        };
        runner.running = true;
        runner.host_port = port;
        if port.is_some() {
            state.next_port = state.next_port.wrapping_add(1).max(FIRST_PORT);
        }
        Ok(StartedRunner {
            id,
            host_port: port,
            node: None,
            address: None,
        })
    }

    async fn is_running(&self, runner: &str) -> Result<bool, EngineError> {
        self.call(|calls| &mut calls.is_running)?;
        let state = self.lock();
        Ok(state
            .find(runner)
            .is_some_and(|id| state.runners[&id].running))
    }

    async fn list(&self) -> Result<Vec<ObservedRunner>, EngineError> {
        self.call(|calls| &mut calls.list)?;
        Ok(self.lock().observed(None))
    }

    async fn list_session(&self, session_id: &str) -> Result<Vec<ObservedRunner>, EngineError> {
        self.call(|calls| &mut calls.list_session)?;
        Ok(self.lock().observed(Some(session_id)))
    }

    async fn remove(&self, runner: &str, stop: Stop) -> Result<(), EngineError> {
        self.call(|calls| &mut calls.remove)?;
        wait_while(&self.removes_held, &self.removes_waiting).await;
        let mut state = self.lock();
        state.reachable_or_fail()?;
        if let Some(id) = state.find(runner) {
            let exit_code = match stop {
                Stop::Graceful => EXIT_TERM,
                Stop::Kill => EXIT_KILL,
            };
            self.remove_locked(&mut state, &id, exit_code);
        }
        Ok(())
    }

    fn events(&self, since: i64) -> RunnerEvents {
        // Subscribed under the lock that events are sent under, so that
        // nothing falls between the replay and the live events.
        let (replay, receiver) = {
            let mut state = self.lock();
            state.calls.events += 1;
            if let Err(error) = state.reachable_or_fail() {
                return stream::once(async { Err(error) }).boxed();
            }
            let replay: VecDeque<RunnerEvent> = state
                .history
                .iter()
                .filter(|event| event.time >= since)
                .cloned()
                .collect();
            (replay, self.events.subscribe())
        };
        stream::unfold(Some((replay, receiver)), |open| async move {
            let (mut replay, mut receiver) = open?;
            if let Some(event) = replay.pop_front() {
                return Some((Ok(event), Some((replay, receiver))));
            }
            match receiver.recv().await {
                Ok(Message::Event(event)) => Some((Ok(event), Some((replay, receiver)))),
                Ok(Message::Disconnect) => Some((
                    Err(EngineError::Unavailable("the engine went away".to_owned())),
                    None,
                )),
                Err(broadcast::error::RecvError::Lagged(missed)) => Some((
                    Err(EngineError::Unavailable(format!("{missed} events missed"))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .boxed()
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.call(|calls| &mut calls.ping)
    }

    async fn image_present(&self) -> Result<bool, EngineError> {
        self.call(|calls| &mut calls.image_present)?;
        Ok(self.lock().image_present)
    }

    fn missing_image_hint(&self) -> String {
        format!("the runner image {IMAGE} is not on the (in-memory) engine")
    }

    async fn memory_total(&self) -> Result<u64, EngineError> {
        self.call(|calls| &mut calls.memory_total)?;
        Ok(self.lock().memory_total)
    }

    async fn ensure_network(&self) -> Result<(), EngineError> {
        self.call(|calls| &mut calls.ensure_network)
    }

    /// The name the Docker backend gives a bridge it creates.
    async fn runner_bridge(&self, network: &str) -> Result<String, EngineError> {
        self.call(|calls| &mut calls.ensure_network)?;
        self.add_network(network);
        Ok(crate::backend::bridge::bridge_name(network))
    }

    async fn mark_claimed(&self, runner: &str, name: &str) -> Result<(), EngineError> {
        let mut state = self.lock();
        state.reachable_or_fail()?;
        let id = state
            .find(runner)
            .ok_or_else(|| EngineError::Refused(format!("no runner {runner}")))?;
        let observed = state.runners.get_mut(&id).expect("found");
        observed.pooled = false;
        if !name.ends_with(crate::backend::labels::CLAIMED_SUFFIX) {
            observed.name = format!("{name}{}", crate::backend::labels::CLAIMED_SUFFIX);
        }
        Ok(())
    }

    async fn egress_nodes(&self) -> Result<Option<NodeCoverage>, EngineError> {
        Ok(self.lock().egress_nodes.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::RunnerKind;

    fn spec<'a>(session_id: &'a str, name: &'a str) -> RunnerSpec<'a> {
        RunnerSpec {
            session_id,
            name,
            network_mode: &NetworkMode::Default,
            kind: RunnerKind::Session,
            pooled: false,
            token: None,
        }
    }

    async fn descriptions(events: &mut RunnerEvents, count: usize) -> Vec<String> {
        events
            .take(count)
            .map(|event| event.unwrap().description)
            .collect()
            .await
    }

    #[tokio::test]
    async fn a_taken_name_is_a_leftover_that_is_removed_first() {
        let backend = MemoryBackend::new();
        let first = backend.start(&spec("s", "runner-s")).await.unwrap();
        let mut events = backend.events(0);
        let second = backend.start(&spec("s", "runner-s")).await.unwrap();
        assert_ne!(first.id, second.id);
        assert_ne!(first.host_port, second.host_port);
        let runners = backend.runners();
        assert_eq!(runners.len(), 1);
        assert_eq!(runners[0].id, second.id);
        assert_eq!(
            descriptions(&mut events, 2).await,
            ["die (exit code 137)", "destroy"]
        );
    }

    #[tokio::test]
    async fn stopped_runners_are_listed_and_unknown_ones_count_as_removed() {
        let backend = MemoryBackend::new();
        let started = backend.start(&spec("s", "runner-s")).await.unwrap();
        assert!(backend.kill("runner-s"));
        let listed = backend.list_session("s").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].running);
        assert!(!backend.is_running(&started.id).await.unwrap());
        assert!(!backend.is_running("unknown").await.unwrap());
        backend.remove("unknown", Stop::Graceful).await.unwrap();
        backend.remove(&started.id, Stop::Kill).await.unwrap();
        assert!(backend.list().await.unwrap().is_empty());
        assert_eq!(backend.calls().remove, 2);
    }

    #[tokio::test]
    async fn events_replay_from_since_and_end_when_the_engine_goes() {
        let backend = MemoryBackend::new();
        backend.start(&spec("a", "runner-a")).await.unwrap();
        backend.start(&spec("b", "runner-b")).await.unwrap();
        assert!(backend.destroy("runner-a"));
        let mut replayed = backend.events(0);
        assert_eq!(
            descriptions(&mut replayed, 2).await,
            ["die (exit code 137)", "destroy"]
        );
        let future = Utc::now().timestamp() + 3600;
        let mut live = backend.events(future);
        assert!(backend.kill("runner-b"));
        let event = live.next().await.unwrap().unwrap();
        assert_eq!(
            (event.session_id.as_str(), event.kind),
            ("b", RunnerKind::Session)
        );

        backend.set_reachable(false);
        assert!(live.next().await.unwrap().unwrap_err().is_unavailable());
        assert!(live.next().await.is_none());
        assert!(backend.ping().await.is_err());
        let mut refused = backend.events(0);
        assert!(refused.next().await.unwrap().is_err());
        backend.set_reachable(true);
        backend.ping().await.unwrap();
    }

    #[tokio::test]
    async fn starts_fail_as_told() {
        let backend = MemoryBackend::new();
        backend.fail_next_starts([StartFailure::ImageMissing, StartFailure::Unavailable]);
        let image = backend.start(&spec("s", "runner-s")).await.unwrap_err();
        assert!(matches!(image, EngineError::ImageNotFound(_)));
        let unavailable = backend.start(&spec("s", "runner-s")).await.unwrap_err();
        assert!(unavailable.is_unavailable());
        assert!(backend.runners().is_empty());
        let mode = NetworkMode::Named("elsewhere".into());
        let named = RunnerSpec {
            network_mode: &mode,
            ..spec("s", "runner-s")
        };
        let network = backend.start(&named).await.unwrap_err();
        assert!(matches!(network, EngineError::NetworkNotFound(name) if name == "elsewhere"));
        backend.add_network("elsewhere");
        backend.start(&named).await.unwrap();
        backend.set_image_present(false);
        assert!(!backend.image_present().await.unwrap());
        assert!(backend.start(&spec("t", "runner-t")).await.is_err());
        assert_eq!(backend.calls().start, 5);
    }

    #[tokio::test]
    async fn held_starts_have_their_runner_created_until_released() {
        let backend = Arc::new(MemoryBackend::new());
        backend.hold_starts();
        let starting = tokio::spawn({
            let backend = Arc::clone(&backend);
            async move { backend.start(&spec("s", "runner-s")).await }
        });
        backend.wait_for_held_starts(1).await;
        let created = backend.runners();
        assert_eq!((created.len(), created[0].running), (1, false));
        backend.release_starts();
        let started = starting.await.unwrap().unwrap();
        assert!(backend.is_running(&started.id).await.unwrap());

        // A runner removed while its start is held fails the start.
        backend.hold_starts();
        let starting = tokio::spawn({
            let backend = Arc::clone(&backend);
            async move { backend.start(&spec("t", "runner-t")).await }
        });
        backend.wait_for_held_starts(1).await;
        assert!(backend.destroy("runner-t"));
        backend.release_starts();
        assert!(starting.await.unwrap().is_err());
    }
}
