//! The Docker labels runners carry (the session label is the seed's), and
//! the instance that owns runners without an instance label.

/// The Docker label that marks a runner and names its session (from the seed).
pub const SESSION_LABEL: &str = "taylored-runner-session-id";
/// The Docker label that scopes a runner to one orchestrator instance.
pub const INSTANCE_LABEL: &str = "taylored-orchestrator-id";
/// The Docker label that marks a runner started for the warm pool.
pub const POOLED_LABEL: &str = "taylored-runner-pooled";
/// The Docker label of a warm runner's start for the pool, in microseconds
/// since the epoch: claimed as soon as the claim watermark reaches it (see
/// `backend::docker::claims`).
pub const POOLED_AT_LABEL: &str = "taylored-runner-pooled-at";
/// The Docker label of the container that holds an instance's claim
/// watermark in its name (created, never started).
pub const CLAIMS_LABEL: &str = "taylored-runner-claims";
/// The Docker label that marks the shared runner of `REUSE_RUNNER_MODE`.
pub const SINGLETON_LABEL: &str = "taylored-runner-singleton";
/// The Docker label of a runner's token nonce: with the token key, it
/// derives the runner's gateway token again (see `domain::token`).
pub const TOKEN_NONCE_LABEL: &str = "taylored-runner-token-nonce";
/// The Docker label of the SHA-256 digest of a runner's gateway token, by
/// which the gateway routes (the token itself is in no label).
pub const TOKEN_DIGEST_LABEL: &str = "taylored-runner-token-sha256";
/// The Docker label of an instance's egress agent service on a swarm
/// (`orchestrator egress node` on every node), valued with its instance.
pub const EGRESS_AGENT_LABEL: &str = "taylored-egress-agent";
/// The instance that owns runners carrying only the session label (those the
/// first orchestrator started).
pub const DEFAULT_INSTANCE: &str = "default";
