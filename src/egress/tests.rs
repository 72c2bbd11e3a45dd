//! Which network a provision's runner joins under each policy.

use super::*;

fn networks(policy: EgressPolicy, runner_network: Option<&str>) -> EgressNetworks {
    EgressNetworks::new(policy, runner_network, "ci")
}

#[test]
fn each_enforced_policy_has_networks_of_the_instance() {
    let public = networks(EgressPolicy::Public, None);
    assert_eq!(public.default.as_deref(), Some("taylored-runners-ci"));
    assert_eq!(
        public.enforced(),
        [
            (EgressPolicy::Public, "taylored-runners-ci".to_owned()),
            (EgressPolicy::None, "taylored-runners-ci-none".to_owned()),
        ]
    );
    let none = networks(EgressPolicy::None, Some("lab"));
    assert_eq!(none.enforced(), [(EgressPolicy::None, "lab".to_owned())]);
    // `all` keeps the default bridge, and rules only for narrowed runners.
    let all = networks(EgressPolicy::All, None);
    assert_eq!(all.default, None);
    assert_eq!(
        all.enforced(),
        [
            (EgressPolicy::None, "taylored-runners-ci-none".to_owned()),
            (
                EgressPolicy::Public,
                "taylored-runners-ci-public".to_owned()
            ),
        ]
    );
}

#[test]
fn a_provision_narrows_never_widens_and_names_no_network_under_rules() {
    let public = networks(EgressPolicy::Public, None);
    let named = || NetworkMode::Named("lab".into());
    assert_eq!(
        public.network_for(None, NetworkMode::Default),
        Ok(NetworkMode::Default)
    );
    assert_eq!(
        public.network_for(Some(EgressPolicy::None), NetworkMode::Default),
        Ok(NetworkMode::Named("taylored-runners-ci-none".into()))
    );
    assert_eq!(
        public.network_for(Some(EgressPolicy::All), NetworkMode::Default),
        Err(EgressRefusal::Widens(EgressPolicy::Public))
    );
    assert_eq!(
        public.network_for(None, named()),
        Err(EgressRefusal::NamedNetwork(EgressPolicy::Public))
    );
    assert_eq!(
        public.network_for(Some(EgressPolicy::None), NetworkMode::Isolated),
        Ok(NetworkMode::Isolated)
    );
    let all = networks(EgressPolicy::All, None);
    assert_eq!(all.network_for(None, named()), Ok(named()));
    assert_eq!(
        all.network_for(Some(EgressPolicy::None), named()),
        Err(EgressRefusal::NamedNetwork(EgressPolicy::All))
    );
    let none = networks(EgressPolicy::None, None);
    assert_eq!(
        none.network_for(Some(EgressPolicy::Public), NetworkMode::Default),
        Err(EgressRefusal::Widens(EgressPolicy::None))
    );
}
