//! Periodic online backups of the database (`BACKUP_INTERVAL_SECONDS`,
//! `BACKUP_PATH`, `BACKUP_KEEP`); `orchestrator backup PATH` takes one by
//! hand.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::parse_positive_seconds;

#[derive(Debug, Clone, Args)]
pub struct BackupSettings {
    /// Seconds between two backups of the database into `BACKUP_PATH`;
    /// unset: none (`orchestrator backup PATH` still takes one by hand).
    #[arg(long, env = "BACKUP_INTERVAL_SECONDS", value_name = "BACKUP_INTERVAL_SECONDS",
          value_parser = parse_positive_seconds, requires = "backup_path")]
    pub backup_interval: Option<Duration>,

    /// The directory periodic backups are written to
    /// (`orchestrator-<UTC time>.db`), created if missing.
    #[arg(long, env = "BACKUP_PATH", value_name = "BACKUP_PATH")]
    pub backup_path: Option<PathBuf>,

    /// How many periodic backups are kept; older ones are deleted.
    #[arg(long, env = "BACKUP_KEEP", default_value_t = 7, value_name = "BACKUP_KEEP",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub backup_keep: u32,
}
