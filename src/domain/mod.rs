//! The types every layer shares, below all of them: a session and its
//! runner's kind, a runner's gateway route and token, and what a reconcile
//! did. Nothing here reaches the engine, the database or the network.

pub mod egress;
pub mod route;
pub mod session;
pub mod summary;
pub mod token;

pub use route::{Route, RunnerAddress};
pub use session::{InvalidSessionId, RunnerKind, SessionId};
pub use summary::Summary;
