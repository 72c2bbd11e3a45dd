//! Where rules are installed: the kernel's nftables through the `nft`
//! command ([`Nft`]), or a table in memory for tests ([`MemoryFirewall`]).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::ruleset::Ruleset;

/// Why rules could not be read or written, with what an operator does
/// about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FirewallError(pub String);

#[async_trait]
pub trait Firewall: Send + Sync + std::fmt::Debug {
    /// Installs the ruleset, replacing the table's earlier version at once.
    async fn apply(&self, rules: &Ruleset) -> Result<(), FirewallError>;

    /// The comments of the table's rules, or `None` when
    /// there is no such table.
    async fn installed(&self, table: &str) -> Result<Option<Vec<String>>, FirewallError>;

    /// Deletes the table; `false` if there was none.
    async fn remove(&self, table: &str) -> Result<bool, FirewallError>;
}

/// nftables through the `nft` command on `PATH`, in this process's network
/// namespace (which must be the engine's: see docs/egress.md).
#[derive(Debug, Clone, Default)]
pub struct Nft;

impl Nft {
    async fn run(&self, args: &[&str], input: Option<&str>) -> Result<String, FirewallError> {
        let mut command = Command::new("nft");
        command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|error| {
            FirewallError(if error.kind() == std::io::ErrorKind::NotFound {
                "the `nft` command is not on PATH: install nftables (Debian: \
                 `apt-get install nftables`), or run the orchestrator image, which carries it"
                    .to_owned()
            } else {
                format!("cannot run `nft`: {error}")
            })
        })?;
        if let (Some(script), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|error| FirewallError(format!("cannot write to `nft`: {error}")))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|error| FirewallError(format!("`nft` did not finish: {error}")))?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(FirewallError(
            if stderr.contains("Operation not permitted") {
                format!(
                    "`nft {}` was refused ({stderr}): the service needs CAP_NET_ADMIN in the \
                 engine host's network namespace (run it as root on the host, or in its \
                 container with `network_mode: host` and `cap_add: [NET_ADMIN]`)",
                    args.join(" ")
                )
            } else {
                format!("`nft {}` failed: {stderr}", args.join(" "))
            },
        ))
    }
}

#[async_trait]
impl Firewall for Nft {
    async fn apply(&self, rules: &Ruleset) -> Result<(), FirewallError> {
        self.run(&["-f", "-"], Some(rules.script())).await.map(drop)
    }

    async fn installed(&self, table: &str) -> Result<Option<Vec<String>>, FirewallError> {
        match self
            .run(&["-j", "list", "table", "inet", table], None)
            .await
        {
            Ok(json) => rule_comments(&json).map(Some),
            Err(FirewallError(message)) if missing_table(&message) => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn remove(&self, table: &str) -> Result<bool, FirewallError> {
        match self.run(&["delete", "table", "inet", table], None).await {
            Ok(_) => Ok(true),
            Err(FirewallError(message)) if missing_table(&message) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

fn missing_table(message: &str) -> bool {
    message.contains("No such file or directory")
}

/// The comments of every rule in `nft -j list table`'s answer (empty for a
/// rule without one): a rule added by hand makes the table stale too.
fn rule_comments(json: &str) -> Result<Vec<String>, FirewallError> {
    let listing: serde_json::Value = serde_json::from_str(json)
        .map_err(|error| FirewallError(format!("`nft -j` answered no JSON: {error}")))?;
    let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
    Ok(objects
        .iter()
        .filter_map(|object| object.get("rule"))
        .map(|rule| {
            rule.get("comment")
                .and_then(|comment| comment.as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect())
}

/// Tables in memory, for tests: `delete_rule` stands for an operator's
/// hand, `fail_with` for a host without nft.
#[derive(Debug, Clone, Default)]
pub struct MemoryFirewall {
    tables: Arc<Mutex<HashMap<String, Vec<String>>>>,
    failure: Arc<Mutex<Option<String>>>,
    applied: Arc<Mutex<u32>>,
}

impl MemoryFirewall {
    pub fn delete_rule(&self, table: &str, comment: &str) {
        if let Some(rules) = self.tables.lock().unwrap().get_mut(table) {
            rules.retain(|rule| rule != comment);
        }
    }

    pub fn fail_with(&self, reason: Option<&str>) {
        *self.failure.lock().unwrap() = reason.map(str::to_owned);
    }

    pub fn rules(&self, table: &str) -> Option<Vec<String>> {
        self.tables.lock().unwrap().get(table).cloned()
    }

    pub fn times_applied(&self) -> u32 {
        *self.applied.lock().unwrap()
    }

    fn check(&self) -> Result<(), FirewallError> {
        match &*self.failure.lock().unwrap() {
            Some(reason) => Err(FirewallError(reason.clone())),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Firewall for MemoryFirewall {
    async fn apply(&self, rules: &Ruleset) -> Result<(), FirewallError> {
        self.check()?;
        self.tables
            .lock()
            .unwrap()
            .insert(rules.table.clone(), rules.comments().to_vec());
        *self.applied.lock().unwrap() += 1;
        Ok(())
    }

    async fn installed(&self, table: &str) -> Result<Option<Vec<String>>, FirewallError> {
        self.check()?;
        Ok(self.rules(table))
    }

    async fn remove(&self, table: &str) -> Result<bool, FirewallError> {
        self.check()?;
        Ok(self.tables.lock().unwrap().remove(table).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::ruleset::COMMENT_PREFIX;

    #[test]
    fn only_this_service_s_rule_comments_are_read_from_nft_s_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {"chain": {"family": "inet", "table": "t", "name": "forward", "handle": 1}},
            {"rule": {"family": "inet", "table": "t", "chain": "forward", "handle": 3,
                      "comment": "taylored:forward:x", "expr": []}},
            {"rule": {"family": "inet", "table": "t", "chain": "forward", "handle": 4, "expr": []}},
            {"rule": {"family": "inet", "table": "t", "chain": "forward", "handle": 5,
                      "comment": "added by hand", "expr": []}}]}"#;
        let comments = rule_comments(json).unwrap();
        assert_eq!(comments, ["taylored:forward:x", "", "added by hand"]);
        assert!(comments[0].starts_with(COMMENT_PREFIX));
        assert!(rule_comments("nope").is_err());
    }
}
