//! The fast tier's harness: the service's parts over the in-memory backend
//! and a fresh SQLite file, with no Docker Engine anywhere.

use std::sync::Arc;

use crate::backend::memory::MemoryBackend;
use crate::config::Settings;
use crate::db::Db;
use crate::runners::Runners;

/// `Runners` over a [`MemoryBackend`] and a database of its own, which lives
/// as long as this value.
pub struct Harness {
    pub runners: Runners,
    pub backend: Arc<MemoryBackend>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// With the default settings plus `args` (flags, e.g. `--warm-pool-size=2`).
    pub async fn new(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("orchestrator.db").display());
        let settings = Settings::from_env_and_args(
            [
                "orchestrator",
                "--database-url",
                &url,
                "--orchestrator-id=fast-tier",
            ]
            .into_iter()
            .chain(args.iter().copied()),
        )
        .expect("valid settings");
        let db = Db::connect(&settings.database_url)
            .await
            .expect("the database");
        let backend = Arc::new(MemoryBackend::new());
        Self {
            runners: Runners::new(db, backend.clone(), Arc::new(settings)),
            backend,
            _dir: dir,
        }
    }
}
