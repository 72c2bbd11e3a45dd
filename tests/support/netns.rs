//! What the tiers built in network namespaces share (the swarm tier's
//! cluster, the egress tier's world): their prerequisites, the facts their
//! set-up scripts print, and taking them down.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Where `tool` is on the `PATH`, if it is.
pub fn which(tool: &str) -> Option<String> {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !path.is_empty()).then_some(path)
}

/// What running Docker Engines in namespaces of their own takes.
const ENGINE_TOOLS: &[&str] = &[
    "ip",
    "nsenter",
    "unshare",
    "dockerd",
    "docker",
    "fuse-overlayfs",
];

/// Root (`why` says what for), the engine tools and every one of `tools`,
/// said plainly when missing.
pub fn check_prerequisites(why: &str, tools: &[&str]) -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("id -u: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err(format!("it needs root ({why})"));
    }
    match ENGINE_TOOLS
        .iter()
        .chain(tools)
        .find(|tool| which(tool).is_none())
    {
        Some(tool) => Err(format!("`{tool}` is not installed")),
        None => Ok(()),
    }
}

/// The `KEY=value` lines a set-up script printed.
pub struct Facts {
    script: String,
    facts: HashMap<String, String>,
}

impl Facts {
    pub fn parse(script: &str, stdout: &[u8]) -> Self {
        let facts = String::from_utf8_lossy(stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Self {
            script: script.to_owned(),
            facts,
        }
    }

    pub fn get(&self, key: &str) -> Result<String, String> {
        self.facts
            .get(key)
            .cloned()
            .ok_or_else(|| format!("{} did not say {key}", self.script))
    }
}

/// Runs `script down name`, saying so when it fails (from a `Drop`, which
/// cannot fail).
pub fn take_down(script: &Path, name: &str) {
    let status = Command::new(script)
        .args(["down", name])
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|status| status.success()) {
        let file = script.file_name().unwrap_or_default().to_string_lossy();
        eprintln!("{file} down {name} failed; run it by hand");
    }
}
