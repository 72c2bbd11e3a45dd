//! Prometheus metrics, kept in a registry per service (not a global one), so
//! that several services in one process (as in the tests) count separately.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label's values as an enum, each with the text it is exported as.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_values! {
    /// How a provision ended.
    ProvisionResult {
        Created => "created",
        Warm => "warm",
        Existing => "existing",
        LimitReached => "limit_reached",
        ImageNotFound => "image_not_found",
        EngineUnavailable => "engine_unavailable",
        Error => "error",
    }
}

label_values! {
    /// What a heartbeat found.
    HeartbeatResult {
        Ok => "ok",
        NotFound => "not_found",
    }
}

label_values! {
    /// Whether a batched write of heartbeat times went through.
    WriteResult {
        Ok => "ok",
        Error => "error",
    }
}

label_values! {
    /// What a reconcile did to one runner.
    ReconcileAction {
        Kept => "kept",
        Adopted => "adopted",
        ContainerRemoved => "container_removed",
        RowDropped => "row_dropped",
        Failed => "failed",
    }
}

label_values! {
    /// How the engine failed: not reached, or refused the request.
    EngineErrorKind {
        Unavailable => "unavailable",
        Error => "error",
    }
}

label_values! {
    /// How the gateway answered a request for a runner's host.
    GatewayResult {
        Proxied => "proxied",
        WebSocket => "websocket",
        NotFound => "not_found",
        Unreachable => "unreachable",
        NotReady => "not_ready",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabel {
    result: GatewayResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProvisionLabel {
    result: ProvisionResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeartbeatLabel {
    result: HeartbeatResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabel {
    result: WriteResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabel {
    action: ReconcileAction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: EngineErrorKind,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runners: Family<StateLabel, Gauge>,
    provisions: Family<ProvisionLabel, Counter>,
    provision_seconds: Histogram,
    /// The two children of the heartbeat family, taken once: a heartbeat
    /// then counts without looking its label up.
    heartbeats_ok: Counter,
    heartbeats_not_found: Counter,
    heartbeat_writes: Family<WriteLabel, Counter>,
    reaped: Counter,
    reconcile_actions: Family<ActionLabel, Counter>,
    engine_errors: Family<KindLabel, Counter>,
    runner_limit: Gauge,
    runner_starts: Family<NodeStateLabel, Gauge>,
    warm_pool_target: Gauge,
    warm_pool_resizes: Family<NodeStateLabel, Counter>,
    gateway_requests: Family<GatewayLabel, Counter>,
    gateway_tunnels: Gauge,
    egress_policy: Family<PolicyLabel, Gauge>,
    egress_enforced: Gauge,
    egress_nodes: Family<NodeStateLabel, Gauge>,
    backups: Family<BackupLabel, Counter>,
    backup_last_success: Gauge,
    egress_applied: Counter,
    egress_repaired: Counter,
}

/// A `state` label: of egress nodes, of runner starts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("orchestrator");
        let runners = Family::<StateLabel, Gauge>::default();
        registry.register(
            "runners",
            "Runners by state, as recorded in the database",
            runners.clone(),
        );
        let provisions = Family::<ProvisionLabel, Counter>::default();
        registry.register(
            "provisions",
            "Provision requests by result",
            provisions.clone(),
        );
        // 10 ms to about 20 s: a cold start takes a few hundred milliseconds.
        let provision_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "provision_duration_seconds",
            "Time to create and start a new runner",
            provision_seconds.clone(),
        );
        let heartbeats = Family::<HeartbeatLabel, Counter>::default();
        registry.register("heartbeats", "Heartbeats by result", heartbeats.clone());
        let heartbeats_ok = heartbeats
            .get_or_create(&HeartbeatLabel {
                result: HeartbeatResult::Ok,
            })
            .clone();
        let heartbeats_not_found = heartbeats
            .get_or_create(&HeartbeatLabel {
                result: HeartbeatResult::NotFound,
            })
            .clone();
        let heartbeat_writes = Family::<WriteLabel, Counter>::default();
        registry.register(
            "heartbeat_writes",
            "Batched writes of heartbeat times by result (ok, error)",
            heartbeat_writes.clone(),
        );
        let reaped = Counter::default();
        registry.register(
            "reaped_runners",
            "Runners removed by the reaper",
            reaped.clone(),
        );
        let reconcile_actions = Family::<ActionLabel, Counter>::default();
        registry.register(
            "reconcile_actions",
            "Reconciler actions (kept, adopted, container_removed, row_dropped, failed)",
            reconcile_actions.clone(),
        );
        let engine_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "engine_errors",
            "Docker Engine failures (unavailable: not reached; error: refused the request)",
            engine_errors.clone(),
        );
        let runner_limit = Gauge::default();
        registry.register(
            "runner_limit",
            "MAX_CONCURRENT_RUNNERS in force (0: no limit), set once the engine was first reached",
            runner_limit.clone(),
        );
        let runner_starts = Family::<NodeStateLabel, Gauge>::default();
        registry.register(
            "runner_starts",
            "Runner starts with the engine now (in_flight, at most RUNNER_STARTS_AT_ONCE) \
             and waiting for their turn (waiting)",
            runner_starts.clone(),
        );
        let warm_pool_target = Gauge::default();
        registry.register(
            "warm_pool_target",
            "The warm pool's size now (WARM_POOL_SIZE, or under auto what it sized itself to)",
            warm_pool_target.clone(),
        );
        let warm_pool_resizes = Family::<NodeStateLabel, Counter>::default();
        registry.register(
            "warm_pool_resizes",
            "Changes of the auto warm pool's size: grew (provisions found it empty), shrank \
             (a quiet period)",
            warm_pool_resizes.clone(),
        );
        let gateway_requests = Family::<GatewayLabel, Counter>::default();
        registry.register(
            "gateway_requests",
            "Requests for runners' hosts by how the gateway answered (proxied, websocket, \
             not_found, unreachable, not_ready)",
            gateway_requests.clone(),
        );
        let gateway_tunnels = Gauge::default();
        registry.register(
            "gateway_open_websockets",
            "WebSocket tunnels the gateway carries now",
            gateway_tunnels.clone(),
        );
        let egress_policy = Family::<PolicyLabel, Gauge>::default();
        registry.register(
            "egress_policy",
            "RUNNER_EGRESS in force (1 for the policy's label)",
            egress_policy.clone(),
        );
        let egress_enforced = Gauge::default();
        registry.register(
            "egress_enforced",
            "Whether the egress rules were in place at their last check (1) or not (0)",
            egress_enforced.clone(),
        );
        let egress_applied = Counter::default();
        registry.register(
            "egress_rules_applied",
            "Egress rule tables installed where there were none",
            egress_applied.clone(),
        );
        let egress_repaired = Counter::default();
        registry.register(
            "egress_rules_repaired",
            "Egress rule tables put back after they were changed by hand",
            egress_repaired.clone(),
        );
        let egress_nodes = Family::<NodeStateLabel, Gauge>::default();
        registry.register(
            "egress_nodes",
            "Swarm nodes by whether their egress agent runs (ruled) or not (missing)",
            egress_nodes.clone(),
        );
        let backups = Family::<BackupLabel, Counter>::default();
        registry.register(
            "backups",
            "Periodic database backups, by result (ok, failed)",
            backups.clone(),
        );
        let backup_last_success = Gauge::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last periodic backup was written (Unix time; 0: none yet)",
            backup_last_success.clone(),
        );
        Self {
            egress_nodes,
            backups,
            backup_last_success,
            egress_policy,
            egress_enforced,
            egress_applied,
            egress_repaired,
            gateway_requests,
            gateway_tunnels,
            registry,
            runners,
            provisions,
            provision_seconds,
            heartbeats_ok,
            heartbeats_not_found,
            heartbeat_writes,
            reaped,
            reconcile_actions,
            engine_errors,
            runner_limit,
            runner_starts,
            warm_pool_target,
            warm_pool_resizes,
        }
    }
}

impl Metrics {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn provision(&self, result: ProvisionResult) {
        self.provisions
            .get_or_create(&ProvisionLabel { result })
            .inc();
    }

    pub fn provision_duration(&self, elapsed: Duration) {
        self.provision_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn heartbeat(&self, result: HeartbeatResult) {
        let counter = match result {
            HeartbeatResult::Ok => &self.heartbeats_ok,
            HeartbeatResult::NotFound => &self.heartbeats_not_found,
        };
        counter.inc();
    }

    pub fn heartbeat_write(&self, result: WriteResult) {
        self.heartbeat_writes
            .get_or_create(&WriteLabel { result })
            .inc();
    }

    pub fn reaped(&self) {
        self.reaped.inc();
    }

    pub fn reconcile_action(&self, action: ReconcileAction) {
        self.reconcile_actions
            .get_or_create(&ActionLabel { action })
            .inc();
    }

    pub fn engine_error(&self, kind: EngineErrorKind) {
        self.engine_errors.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn gateway_request(&self, result: GatewayResult) {
        self.gateway_requests
            .get_or_create(&GatewayLabel { result })
            .inc();
    }

    /// Counts an open WebSocket tunnel until the returned guard is dropped.
    pub fn gateway_tunnel(&self) -> TunnelOpen {
        self.gateway_tunnels.inc();
        TunnelOpen(self.gateway_tunnels.clone())
    }

    pub fn egress_policy(&self, policy: &'static str) {
        self.egress_policy
            .get_or_create(&PolicyLabel { policy })
            .set(1);
    }

    pub fn egress_enforced(&self, enforced: bool) {
        self.egress_enforced.set(i64::from(enforced));
    }

    pub fn egress_applied(&self) {
        self.egress_applied.inc();
    }

    pub fn egress_repaired(&self) {
        self.egress_repaired.inc();
    }

    /// On a swarm: how many nodes run the egress agent, and how many not.
    pub fn egress_nodes(&self, ruled: usize, missing: usize) {
        for (state, count) in [("ruled", ruled), ("missing", missing)] {
            self.egress_nodes
                .get_or_create(&NodeStateLabel { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// A periodic backup was written at `at` (Unix seconds).
    pub fn backup_written(&self, at: i64) {
        self.backups
            .get_or_create(&BackupLabel { result: "ok" })
            .inc();
        self.backup_last_success.set(at);
    }

    pub fn backup_failed(&self) {
        self.backups
            .get_or_create(&BackupLabel { result: "failed" })
            .inc();
    }

    pub fn runner_limit(&self, limit: u32) {
        self.runner_limit.set(i64::from(limit));
    }

    pub fn warm_pool_target(&self, target: u32) {
        self.warm_pool_target.set(i64::from(target));
    }

    /// The auto warm pool's size changed: up (`grew`) or down.
    pub fn warm_pool_resized(&self, grew: bool) {
        let state = if grew { "grew" } else { "shrank" };
        self.warm_pool_resizes
            .get_or_create(&NodeStateLabel { state })
            .inc();
    }

    /// The start queue's state (see `lifecycle::start_queue`).
    pub fn runner_starts(&self, in_flight: usize, waiting: usize) {
        for (state, count) in [("in_flight", in_flight), ("waiting", waiting)] {
            self.runner_starts
                .get_or_create(&NodeStateLabel { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition, with the runner gauge set from `counts` (state,
    /// number) as read from the database at scrape time.
    pub fn render(&self, counts: &[(String, i64)]) -> String {
        self.runners.clear();
        for (state, count) in counts {
            self.runners
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*count);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// An open gateway tunnel, counted in `orchestrator_gateway_open_websockets`
/// for as long as it lives.
#[derive(Debug)]
pub struct TunnelOpen(Gauge);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_its_labels() {
        let metrics = Metrics::default();
        metrics.provision(ProvisionResult::Created);
        metrics.provision_duration(Duration::from_millis(250));
        metrics.heartbeat(HeartbeatResult::Ok);
        metrics.heartbeat_write(WriteResult::Error);
        metrics.reaped();
        metrics.reconcile_action(ReconcileAction::Adopted);
        metrics.engine_error(EngineErrorKind::Unavailable);
        metrics.runner_limit(188);
        metrics.egress_policy("public");
        metrics.egress_enforced(true);
        metrics.egress_applied();
        metrics.egress_repaired();
        let text = metrics.render(&[("running".to_owned(), 3)]);
        for expected in [
            "orchestrator_runners{state=\"running\"} 3",
            "orchestrator_provisions_total{result=\"created\"} 1",
            "orchestrator_provision_duration_seconds_count 1",
            "orchestrator_heartbeats_total{result=\"ok\"} 1",
            "orchestrator_heartbeat_writes_total{result=\"error\"} 1",
            "orchestrator_reaped_runners_total 1",
            "orchestrator_reconcile_actions_total{action=\"adopted\"} 1",
            "orchestrator_engine_errors_total{kind=\"unavailable\"} 1",
            "orchestrator_runner_limit 188",
            "orchestrator_egress_policy{policy=\"public\"} 1",
            "orchestrator_egress_enforced 1",
            "orchestrator_egress_rules_applied_total 1",
            "orchestrator_egress_rules_repaired_total 1",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }
}
