//! What runners may connect to: the policy (`RUNNER_EGRESS`), the ranges that
//! are never "public", and the allow-list (`RUNNER_EGRESS_ALLOW`). Pure: the
//! rules are rendered from these in `ruleset`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Where a runner's outbound connections may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum EgressPolicy {
    /// No outbound connection at all (replies to inbound ones still flow).
    None,
    /// Public addresses (and DNS through them), never the host, loopback,
    /// private, link-local (the cloud metadata service), CGNAT, multicast or
    /// reserved ranges, nor other runners.
    #[default]
    Public,
    /// No rule at all: the engine's own behaviour, chosen explicitly.
    All,
}

impl EgressPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressPolicy::None => "none",
            EgressPolicy::Public => "public",
            EgressPolicy::All => "all",
        }
    }

    /// Whether a runner of this policy may be given `other` instead: only
    /// the same or a narrower one (`none` < `public` < `all`).
    pub fn allows(self, other: EgressPolicy) -> bool {
        other <= self
    }

    /// Whether rules enforce it (every policy but `all`).
    pub fn is_enforced(self) -> bool {
        self != EgressPolicy::All
    }

    pub const ALL: [EgressPolicy; 3] =
        [EgressPolicy::None, EgressPolicy::Public, EgressPolicy::All];
}

impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EgressPolicy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim() {
            "none" => Ok(EgressPolicy::None),
            "public" => Ok(EgressPolicy::Public),
            "all" => Ok(EgressPolicy::All),
            other => Err(format!("expected `public`, `none` or `all`, got `{other}`")),
        }
    }
}

/// An address range in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Self {
            address: IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    const fn v6(segments: [u16; 8], prefix: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self {
            address: IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.address.is_ipv4()
    }

    /// Whether `other` lies (at least partly) inside this range.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let prefix = self.prefix.min(other.prefix);
        match (self.address, other.address) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match value.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (value, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{value}` is not an address or CIDR range"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{value}`: the prefix must be 0-{max}"))?,
            None => max,
        };
        let cidr = Cidr { address, prefix };
        // nft refuses a range with host bits set; say so here instead.
        if cidr.network_address() != address {
            return Err(format!(
                "`{value}` has bits set beyond its prefix (the range is {}/{prefix})",
                cidr.network_address()
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    fn network_address(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

/// Everything that is not a public address: runners under `public` reach
/// none of it (IANA's special-purpose registries, plus the cloud metadata
/// addresses they include).
pub const NOT_PUBLIC: &[Cidr] = &[
    Cidr::v4(0, 0, 0, 0, 8),                         // "this network"
    Cidr::v4(10, 0, 0, 0, 8),                        // private
    Cidr::v4(100, 64, 0, 0, 10),                     // CGNAT
    Cidr::v4(127, 0, 0, 0, 8),                       // loopback
    Cidr::v4(169, 254, 0, 0, 16),                    // link-local, the metadata service
    Cidr::v4(172, 16, 0, 0, 12),                     // private (Docker's bridges)
    Cidr::v4(192, 0, 0, 0, 24),                      // IETF protocol assignments
    Cidr::v4(192, 0, 2, 0, 24),                      // documentation
    Cidr::v4(192, 88, 99, 0, 24),                    // 6to4 relay
    Cidr::v4(192, 168, 0, 0, 16),                    // private
    Cidr::v4(198, 18, 0, 0, 15),                     // benchmarking
    Cidr::v4(198, 51, 100, 0, 24),                   // documentation
    Cidr::v4(203, 0, 113, 0, 24),                    // documentation
    Cidr::v4(224, 0, 0, 0, 4),                       // multicast
    Cidr::v4(240, 0, 0, 0, 4),                       // reserved, broadcast
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 127),         // unspecified, loopback
    Cidr::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),     // IPv4-mapped
    Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96),  // NAT64
    Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local NAT64
    Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard
    Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments
    Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),     // 6to4
    Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local (fd00:ec2::254 too)
    Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
    Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// Ranges an allow-list entry may open only for one port: loopback and
/// link-local (where the metadata service answers on port 80; a resolver on
/// 169.254.169.253:53 or 169.254.169.254:53 is a reason to open port 53).
const PORT_REQUIRED: &[Cidr] = &[
    Cidr::v4(127, 0, 0, 0, 8),
    Cidr::v4(169, 254, 0, 0, 16),
    Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
    Cidr::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
];

/// One `RUNNER_EGRESS_ALLOW` entry: a range, and optionally one port (TCP
/// and UDP), let through beyond `public`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    pub range: Cidr,
    pub port: Option<u16>,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.range.is_ipv4()) {
            (None, _) => write!(f, "{}", self.range),
            (Some(port), true) => write!(f, "{}:{port}", self.range),
            (Some(port), false) => write!(f, "[{}]:{port}", self.range),
        }
    }
}

impl FromStr for Allowed {
    type Err = String;

    /// `10.1.2.0/24`, `10.1.2.3:3128`, `10.1.2.0/24:443`, `fd00::/8`,
    /// `[fd00::1]:443`, `[fd00::/8]:443`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        let (range, port) = if let Some(rest) = value.strip_prefix('[') {
            let (range, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{value}`: a `[` without its `]`"))?;
            let port = match after {
                "" => None,
                after => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("`{value}`: expected `:PORT` after `]`"))?,
                ),
            };
            (range, port)
        } else if value.matches(':').count() == 1 {
            let (range, port) = value.split_once(':').expect("one colon");
            (range, Some(port))
        } else {
            (value, None)
        };
        let range: Cidr = range.parse()?;
        let port = port
            .map(|port| {
                port.parse::<u16>()
                    .ok()
                    .filter(|&port| port > 0)
                    .ok_or_else(|| format!("`{value}`: `{port}` is not a port (1-65535)"))
            })
            .transpose()?;
        if port.is_none() && PORT_REQUIRED.iter().any(|danger| danger.overlaps(&range)) {
            return Err(format!(
                "`{value}` opens loopback or link-local addresses (the cloud metadata \
                 service among them) to runners; name one port (e.g. `{range}:53`)"
            ));
        }
        Ok(Allowed { range, port })
    }
}

/// `RUNNER_EGRESS_ALLOW`: comma-separated entries, empty ones ignored.
pub fn parse_allow_list(value: &str) -> Result<AllowList, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(AllowList)
}

/// The parsed `RUNNER_EGRESS_ALLOW`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<Allowed>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_narrow_but_never_widen() {
        use EgressPolicy::*;
        assert!(Public.allows(None) && Public.allows(Public) && !Public.allows(All));
        assert!(All.allows(Public) && All.allows(None));
        assert!(None.allows(None) && !None.allows(Public));
        assert_eq!("public".parse(), Ok(Public));
        assert!("open".parse::<EgressPolicy>().is_err());
    }

    #[test]
    fn allow_list_entries_parse_with_and_without_ports() {
        let list = parse_allow_list("10.1.2.0/24, 10.9.9.9:3128,[fd00::/8]:443, fd12::1").unwrap();
        let shown: Vec<String> = list.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "10.1.2.0/24",
                "10.9.9.9/32:3128",
                "[fd00::/8]:443",
                "fd12::1/128"
            ]
        );
        assert_eq!(parse_allow_list(" , ").unwrap(), AllowList::default());
    }

    #[test]
    fn bad_or_dangerous_allow_entries_are_refused_with_a_reason() {
        for (entry, says) in [
            ("10.1.2.3/24", "beyond its prefix"),
            ("10.1.2.0/33", "prefix"),
            ("nope", "not an address"),
            ("10.0.0.1:0", "not a port"),
            ("10.0.0.1:http", "not a port"),
            ("169.254.169.254", "metadata"),
            ("169.254.0.0/16", "metadata"),
            ("0.0.0.0/0", "metadata"),
            ("[fd00:ec2::254]", "metadata"),
            ("127.0.0.1", "loopback"),
        ] {
            let error = parse_allow_list(entry).unwrap_err();
            assert!(error.contains(says), "`{entry}`: {error}");
        }
        // One port is a deliberate choice (a link-local resolver).
        assert!(parse_allow_list("169.254.169.253:53").is_ok());
    }

    #[test]
    fn the_metadata_service_and_private_ranges_are_not_public() {
        let covered = |address: &str| {
            let target: Cidr = address.parse().unwrap();
            NOT_PUBLIC.iter().any(|range| range.overlaps(&target))
        };
        for blocked in [
            "169.254.169.254",
            "fd00:ec2::254",
            "10.1.2.3",
            "172.17.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "127.0.0.1",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(covered(blocked), "{blocked} must not be public");
        }
        for public in ["11.11.11.11", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!covered(public), "{public} is public");
        }
    }
}
