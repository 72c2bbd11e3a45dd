//! The nftables rules of one instance, rendered from its policy: a table of
//! its own (`inet taylored_egress_<instance>`), replaced as a whole in one
//! transaction, so that applying is idempotent and two instances on one
//! host never touch each other's rules. Pure: unit-tested without a kernel.
//!
//! Packets from a runner's bridge take two paths through the host:
//! - `forward` (to anywhere beyond the host): checked against the policy,
//!   on the destination after DNAT and on the original one;
//! - `input` (to the host itself: its addresses, the bridge's gateway, a
//!   published port of another runner through the host): refused, but for
//!   replies and what the allow-list names.
//!
//! Replies (`ct state established,related`) always pass, so that clients,
//! published ports and the gateway still reach every runner.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::domain::egress::{AllowList, Allowed, EgressPolicy, NOT_PUBLIC};

/// Every rule's comment starts so; the check counts the rules by it.
pub const COMMENT_PREFIX: &str = "taylored:";

/// Runs before Docker's own filter chains (priority 0), though a drop in
/// any base chain drops the packet whatever the order.
const PRIORITY: i32 = -10;

/// A runner network's bridge and the policy its runners get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub interface: String,
    pub policy: EgressPolicy,
}

/// The table an instance's rules live in.
pub fn table_name(instance: &str) -> String {
    let sanitized: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if sanitized == instance {
        format!("taylored_egress_{sanitized}")
    } else {
        // `a-b` and `a_b` must not share a table.
        format!("taylored_egress_{sanitized}_{}", &hex(instance)[..8])
    }
}

fn hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The rules, as an `nft -f` script and the comments of every rule in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub table: String,
    script: String,
    comments: Vec<String>,
}

impl Ruleset {
    pub fn new(instance: &str, bindings: &[Binding], allow: &AllowList) -> Self {
        let table = table_name(instance);
        let mut rules = Rules::default();
        for binding in bindings.iter().filter(|b| b.policy.is_enforced()) {
            let (iface, policy) = (&binding.interface, binding.policy);
            rules.add(
                "forward",
                format!("iifname \"{iface}\" jump out_{policy}"),
                iface,
            );
            rules.add(
                "input",
                format!("iifname \"{iface}\" jump host_{policy}"),
                iface,
            );
        }
        for policy in [EgressPolicy::Public, EgressPolicy::None] {
            let (out, host) = (format!("out_{policy}"), format!("host_{policy}"));
            for chain in [&out, &host] {
                rules.add(
                    chain,
                    "ct state established,related accept".into(),
                    "replies",
                );
            }
            // Neighbour discovery: IPv6 on the bridge needs it (ARP, its
            // IPv4 counterpart, is not IP and never reaches these chains).
            rules.add(
                &host,
                "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept"
                    .into(),
                "neighbour-discovery",
            );
            if policy == EgressPolicy::Public {
                for (index, allowed) in allow.0.iter().enumerate() {
                    for chain in [&out, &host] {
                        rules.add(chain, allow_rule(allowed), &format!("allow-{index}"));
                    }
                }
                for (family, v4) in [("ip", true), ("ip6", false)] {
                    let ranges = not_public(v4);
                    rules.add(
                        &out,
                        format!("{family} daddr {ranges} drop"),
                        &format!("not-public-{family}"),
                    );
                    rules.add(
                        &out,
                        format!("ct original {family} daddr {ranges} drop"),
                        &format!("not-public-original-{family}"),
                    );
                }
                rules.add(&out, "accept".into(), "public");
            } else {
                rules.add(&out, "drop".into(), "nothing");
            }
            rules.add(&host, "drop".into(), "not-the-host");
        }
        let mut script = format!(
            "# The egress rules of orchestrator instance `{instance}` (RUNNER_EGRESS).\n\
             # Replaced as a whole by the service; `orchestrator egress remove` deletes it.\n\
             table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n"
        );
        for (chain, lines) in &rules.chains {
            let _ = writeln!(script, "  chain {chain} {{");
            if let Some(hook) = ["forward", "input"].iter().find(|hook| *hook == chain) {
                let _ = writeln!(
                    script,
                    "    type filter hook {hook} priority {PRIORITY}; policy accept;"
                );
            }
            for line in lines {
                let _ = writeln!(script, "    {line}");
            }
            script.push_str("  }\n");
        }
        script.push_str("}\n");
        Self {
            table,
            script,
            comments: rules.comments(),
        }
    }

    /// The `nft -f` script: the table's old version (if any) and its new one
    /// in one transaction.
    pub fn script(&self) -> &str {
        &self.script
    }

    /// The comments of every rule, in order; an installed table whose rules
    /// carry other comments (a rule deleted or added by hand) is stale.
    pub fn comments(&self) -> &[String] {
        &self.comments
    }
}

/// Chains in order (hooks first), each with its rules.
#[derive(Default)]
struct Rules {
    chains: Vec<(String, Vec<String>)>,
}

impl Rules {
    fn add(&mut self, chain: &str, rule: String, what: &str) {
        let line = format!("{rule} comment \"{}\"", comment(chain, what));
        match self.chains.iter_mut().find(|(name, _)| name == chain) {
            Some((_, lines)) => lines.push(line),
            None => self.chains.push((chain.to_owned(), vec![line])),
        }
    }

    /// Chain by chain, as `nft` lists them.
    fn comments(&self) -> Vec<String> {
        self.chains
            .iter()
            .flat_map(|(_, lines)| lines.iter())
            .filter_map(|line| {
                let start = line.rfind(" comment \"")? + " comment \"".len();
                Some(line[start..line.len() - 1].to_owned())
            })
            .collect()
    }
}

fn comment(chain: &str, what: &str) -> String {
    format!("{COMMENT_PREFIX}{chain}:{what}")
}

fn not_public(v4: bool) -> String {
    let ranges: Vec<String> = NOT_PUBLIC
        .iter()
        .filter(|range| range.is_ipv4() == v4)
        .map(ToString::to_string)
        .collect();
    format!("{{ {} }}", ranges.join(", "))
}

fn allow_rule(allowed: &Allowed) -> String {
    let family = if allowed.range.is_ipv4() { "ip" } else { "ip6" };
    match allowed.port {
        None => format!("{family} daddr {} accept", allowed.range),
        Some(port) => format!(
            "{family} daddr {} meta l4proto {{ tcp, udp }} th dport {port} accept",
            allowed.range
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::egress::parse_allow_list;

    fn bindings() -> Vec<Binding> {
        vec![
            Binding {
                interface: "trpublic".into(),
                policy: EgressPolicy::Public,
            },
            Binding {
                interface: "trnone".into(),
                policy: EgressPolicy::None,
            },
        ]
    }

    #[test]
    fn each_instance_has_a_table_of_its_own() {
        assert_eq!(table_name("default"), "taylored_egress_default");
        assert_ne!(table_name("a-b"), table_name("a_b"));
        assert!(table_name("a.b").starts_with("taylored_egress_a_b_"));
    }

    #[test]
    fn the_script_replaces_the_table_in_one_go() {
        let rules = Ruleset::new("ci", &bindings(), &AllowList::default());
        let script = rules.script();
        let table = "table inet taylored_egress_ci";
        assert!(script.contains(&format!("{table}\ndelete {table}\n{table} {{")));
        assert!(script.contains("iifname \"trpublic\" jump out_public"));
        assert!(script.contains("iifname \"trnone\" jump host_none"));
        assert!(script.contains("type filter hook forward priority -10; policy accept;"));
        // Every rule is counted by its comment, chain by chain as `nft`
        // lists them, and each is unique.
        assert_eq!(rules.comments()[0], "taylored:forward:trpublic");
        assert_eq!(rules.comments()[2], "taylored:input:trpublic");
        let mut comments = rules.comments().to_vec();
        assert_eq!(script.matches(COMMENT_PREFIX).count(), comments.len());
        comments.sort();
        comments.dedup();
        assert_eq!(comments.len(), rules.comments().len());
    }

    #[test]
    fn public_drops_what_is_not_public_after_the_allow_list_and_replies() {
        let allow = parse_allow_list("10.77.0.10/32:80,10.8.0.0/16").unwrap();
        let script = Ruleset::new("ci", &bindings(), &allow).script().to_owned();
        let at = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("no `{needle}` in\n{script}"))
        };
        let replies = at("chain out_public {\n    ct state established,related accept");
        let allowed = at("ip daddr 10.77.0.10/32 meta l4proto { tcp, udp } th dport 80 accept");
        let metadata =
            at("ip daddr { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16");
        assert!(replies < allowed && allowed < metadata);
        assert!(script.contains("ct original ip daddr {"));
        assert!(script.contains("ip6 daddr { ::/127"));
        assert!(script.contains("fc00::/7"));
        assert!(script.contains("ip daddr 10.8.0.0/16 accept"));
    }

    #[test]
    fn none_and_the_host_chains_drop_everything_but_replies() {
        let script = Ruleset::new("ci", &bindings(), &AllowList::default())
            .script()
            .to_owned();
        let chain = |name: &str| {
            let start = script.find(&format!("chain {name} {{")).unwrap();
            script[start..][..script[start..].find("  }").unwrap()].to_owned()
        };
        let none = chain("out_none");
        assert!(none.contains("ct state established,related accept"));
        assert!(none.contains("    drop comment"));
        assert!(!none.contains("accept comment \"taylored:out_none:public"));
        for host in ["host_public", "host_none"] {
            assert!(chain(host).contains("    drop comment \"taylored:"));
        }
    }

    #[test]
    fn all_binds_nothing() {
        let rules = Ruleset::new(
            "ci",
            &[Binding {
                interface: "docker0".into(),
                policy: EgressPolicy::All,
            }],
            &AllowList::default(),
        );
        assert!(!rules.script().contains("docker0"));
    }
}
