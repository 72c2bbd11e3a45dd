//! Which requests are for a runner: those whose host is under
//! `GATEWAY_DOMAIN`.

use crate::domain::token;

/// Where a request's host sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Any host not under the gateway's domain (the domain itself too).
    Api,
    /// `<token>.<domain>`: the runner with this token, if there is one.
    Runner(String),
    /// Under the domain but no token's shape (more labels, other
    /// characters): no runner can have it.
    NoRunner,
}

/// Routes by `host` (a `Host` header or a URI's authority: a name with an
/// optional port), comparing names without regard to case and to a final
/// dot. `domain` is lowercase (see `config`).
pub fn destination(host: Option<&str>, domain: &str) -> Destination {
    let Some(name) = host.map(strip_port) else {
        return Destination::Api;
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let Some(label) = name
        .len()
        .checked_sub(domain.len() + 1)
        .filter(|&end| name.is_char_boundary(end))
        .filter(|&end| name.as_bytes()[end] == b'.' && name[end + 1..].eq_ignore_ascii_case(domain))
        .map(|end| &name[..end])
    else {
        return Destination::Api;
    };
    let label = label.to_ascii_lowercase();
    if token::is_token(&label) {
        Destination::Runner(label)
    } else {
        Destination::NoRunner
    }
}

/// `name:port` to `name`; an IPv6 literal (`[::1]:80`) is left whole (it is
/// never under a domain).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "runners.localhost";
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn at(host: &str) -> Destination {
        destination(Some(host), DOMAIN)
    }

    #[test]
    fn a_token_under_the_domain_names_a_runner_with_or_without_port_and_case() {
        let runner = Destination::Runner(TOKEN.to_owned());
        assert_eq!(at(&format!("{TOKEN}.runners.localhost:3001")), runner);
        assert_eq!(at(&format!("{TOKEN}.runners.localhost")), runner);
        assert_eq!(at(&format!("{TOKEN}.Runners.LOCALHOST.:80")), runner);
        assert_eq!(
            at(&format!("{}.runners.localhost", TOKEN.to_uppercase())),
            runner
        );
    }

    #[test]
    fn other_hosts_go_to_the_api() {
        for host in [
            "localhost:3001",
            "127.0.0.1",
            "[::1]:3001",
            "runners.localhost",
            "runners.localhost:3001",
            &format!("{TOKEN}.other.localhost"),
            &format!("{TOKEN}xrunners.localhost"),
            &format!("{TOKEN}.runners.localhost.evil.example"),
            "",
        ] {
            assert_eq!(at(host), Destination::Api, "{host}");
        }
        assert_eq!(destination(None, DOMAIN), Destination::Api);
    }

    #[test]
    fn names_under_the_domain_that_are_no_token_reach_no_runner() {
        for host in [
            "www.runners.localhost",
            "a.b.runners.localhost",
            &format!("x.{TOKEN}.runners.localhost"),
            &format!("{TOKEN}0.runners.localhost"),
            ".runners.localhost",
            "é.runners.localhost",
        ] {
            assert_eq!(at(host), Destination::NoRunner, "{host}");
        }
    }
}
