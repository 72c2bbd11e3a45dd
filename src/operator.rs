//! Operators' commands: read the database (read-only, safe beside a running
//! service) and preview a reconcile without changing anything.

use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::Context;

use crate::backend;
use crate::config::{EgressCommand, RunnersCommand, Settings};
use crate::db::{AuditRecord, Db, RunnerRow};
use crate::egress::{Egress, Nft};
use crate::metrics::Metrics;
use crate::reconcile::{Action, Purpose, plan};

pub async fn runners(command: RunnersCommand, settings: &Settings) -> anyhow::Result<()> {
    let db = Db::connect_read_only(&settings.database_url).await?;
    let output = match command {
        RunnersCommand::List { json } => {
            let rows = db.all().await?;
            if json {
                serde_json::to_string_pretty(&rows)?
            } else {
                runner_table(&rows)
            }
        }
        RunnersCommand::Show { session_id, json } => {
            let row = db.find(&session_id).await?;
            let trail = db.audit_trail(&session_id).await?;
            anyhow::ensure!(
                row.is_some() || !trail.is_empty(),
                "no runner and no history for session `{session_id}`"
            );
            if json {
                serde_json::to_string_pretty(&serde_json::json!({ "runner": row, "audit": trail }))?
            } else {
                runner_details(row.as_ref(), &trail)
            }
        }
    };
    println!("{output}");
    Ok(())
}

/// `orchestrator backup PATH`: a consistent copy of the database, taken
/// beside the running service (read-only: no lock, no migration).
pub async fn backup(path: &std::path::Path, settings: &Settings) -> anyhow::Result<()> {
    let db = Db::connect_read_only(&settings.database_url).await?;
    let backup = db.backup_to(path).await?;
    println!(
        "backed up {} to {} ({} bytes; integrity check ok)",
        settings.database_url,
        backup.path.display(),
        backup.bytes
    );
    Ok(())
}

/// `orchestrator new-token-key`: a fresh key, as its file holds it.
pub fn new_token_key() -> String {
    crate::domain::token::TokenKey::generate().to_file_text()
}

/// `orchestrator egress node`: the egress agent of one swarm node. Its
/// networks are the node's config-only halves of the manager's runner
/// networks, its rules this node's; both are checked every
/// `RECONCILE_INTERVAL_SECONDS` and put back when changed. A failure ends
/// it with an error: its task then stops running, and the manager places
/// no runner under rules on this node until it runs again.
async fn egress_node(settings: &Settings) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal()?;
    let backend = backend::docker::DockerBackend::connect_swarm_node(settings)
        .context("cannot reach this node's engine (DOCKER_HOST)")?;
    let egress = Egress::new(
        settings,
        Arc::new(backend),
        Arc::new(Nft),
        Metrics::shared(),
        None,
    );
    // Every policy's rules from the start, `all`'s narrower ones included:
    // the manager may narrow any provision.
    egress.narrowing().await.map_err(anyhow::Error::msg)?;
    tracing::info!(
        instance = %settings.orchestrator_id,
        policy = %settings.egress.runner_egress,
        table = %crate::egress::ruleset::table_name(&settings.orchestrator_id),
        "egress agent: this node's rules are in place and kept"
    );
    let mut ticks = crate::shutdown::Ticks::new(settings.reconcile_interval, shutdown);
    while ticks.next().await {
        egress.check().await.map_err(anyhow::Error::msg)?;
    }
    tracing::info!(
        "egress agent stopped; the rules stay in place (`orchestrator egress remove` deletes them)"
    );
    Ok(())
}

/// Plans a startup reconcile against the live engine and prints it.
pub async fn reconcile_dry_run(settings: &Settings) -> anyhow::Result<()> {
    let db = Db::connect_read_only(&settings.database_url).await?;
    let backend = backend::from_settings(settings)
        .context("cannot set up the runner backend (DOCKER_HOST, RUNNER_BACKEND)")?;
    let rows = db.all().await?;
    let containers = backend.list().await?;
    let actions = plan(&rows, &containers, settings.orphan_policy, Purpose::Startup);
    println!("{}", describe_plan(rows.len(), containers.len(), &actions));
    Ok(())
}

/// `orchestrator egress show|apply|remove`: this instance's rules, in the
/// network namespace the command runs in (the engine host's).
pub async fn egress(command: EgressCommand, settings: &Settings) -> anyhow::Result<()> {
    if let EgressCommand::Node = command {
        return egress_node(settings).await;
    }
    let backend = backend::from_settings(settings)
        .context("cannot set up the runner backend (DOCKER_HOST, RUNNER_BACKEND)")?;
    let egress = Egress::new(settings, backend, Arc::new(Nft), Metrics::shared(), None);
    match command {
        EgressCommand::Show => {
            let rules = egress.ruleset().await.map_err(anyhow::Error::msg)?;
            print!("{}", rules.script());
        }
        EgressCommand::Apply => {
            let checked = egress.check().await.map_err(anyhow::Error::msg)?;
            println!(
                "egress rules of `{}` ({}): {checked:?}",
                settings.orchestrator_id, settings.egress.runner_egress
            );
        }
        EgressCommand::Node => unreachable!("handled above"),
        EgressCommand::Remove => {
            let table = crate::egress::ruleset::table_name(&settings.orchestrator_id);
            if egress.remove().await? {
                println!("removed table inet {table}");
            } else {
                println!("no table inet {table}: nothing to remove");
            }
        }
    }
    Ok(())
}

fn short(id: Option<&str>) -> &str {
    id.map(|id| &id[..id.len().min(12)]).unwrap_or("-")
}

fn runner_table(rows: &[RunnerRow]) -> String {
    let mut text = format!(
        "{:<38} {:<9} {:<12} {:>5} {:<12} {:<16} {:<24} {:<24}\n",
        "SESSION", "KIND", "STATE", "PORT", "CONTAINER", "NODE", "LAST HEARTBEAT", "CREATED"
    );
    for row in rows {
        let port = row
            .host_port
            .map(|port| port.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            text,
            "{:<38} {:<9} {:<12} {:>5} {:<12} {:<16} {:<24} {:<24}",
            row.session_id,
            if row.pooled {
                "warm".to_owned()
            } else {
                format!("{:?}", row.kind).to_lowercase()
            },
            format!("{:?}", row.state).to_lowercase(),
            port,
            short(row.container_id.as_deref()),
            row.node.as_deref().unwrap_or("-"),
            row.last_heartbeat_at,
            row.created_at
        );
    }
    let _ = write!(text, "{} runner(s)", rows.len());
    text
}

fn runner_details(row: Option<&RunnerRow>, trail: &[AuditRecord]) -> String {
    let mut text = match row {
        Some(row) => serde_json::to_string_pretty(row).unwrap_or_default(),
        None => "no runner (it was removed; its history follows)".to_owned(),
    };
    text.push_str("\n\naudit trail:\n");
    for record in trail {
        let _ = writeln!(
            text,
            "{}  {:<10} {:<17} {:<12} {}",
            record.at,
            record.actor,
            record.action,
            short(record.container_id.as_deref()),
            record.reason
        );
    }
    text
}

fn describe_plan(rows: usize, containers: usize, actions: &[Action]) -> String {
    let mut text = format!("{rows} row(s), {containers} container(s) of this instance\n");
    if actions.is_empty() {
        text.push_str("nothing to do");
    }
    for action in actions {
        let line = match action {
            Action::RemoveContainer { container, reason } => format!(
                "remove container {} (session {}): {reason}",
                short(Some(&container.id)),
                container.session_id
            ),
            Action::DropRow { row, reason } => {
                format!("drop row of session {}: {reason}", row.session_id)
            }
            Action::Keep {
                row,
                container,
                reason,
            } => format!(
                "keep session {} on container {} (port {}): {reason}",
                row.session_id,
                short(Some(&container.id)),
                container
                    .host_port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
            Action::Adopt { container } => format!(
                "adopt container {} for session {} (port {})",
                short(Some(&container.id)),
                container.session_id,
                container
                    .host_port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
        };
        let _ = writeln!(text, "{line}");
    }
    text.trim_end().to_owned()
}
