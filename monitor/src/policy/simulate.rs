//! The decision for one destination, made in userspace from a compiled
//! policy, the country database and the cloud ranges: the kernel's order
//! (`monitor_common::decide`) over the policy's own lists rather than the
//! kernel maps built from them. The differential test (`tests/oracle.rs`)
//! holds the kernel to it.
//!
//! `simulate` judges an address reached without a name (names are the
//! kernel's: what a cgroup resolved); `simulate_named` with the name the
//! address was resolved from, as the kernel's domain rules see it.
use std::net::IpAddr;

use monitor_common::{CountrySource, Region, RegionRule, Rule, Verdict};

use super::{CompiledPolicy, Mode};
use crate::{
    cloud::CloudRanges,
    geo::{network_to_u128, to_u128, GeoDb},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Simulated {
    pub verdict: Verdict,
    pub rule: Rule,
    pub region: Region,
    pub source: CountrySource,
    /// `cloud::region_id` of the address, 0 outside every published range.
    pub cloud_region: u32,
}

fn contains(nets: &[ipnetwork::IpNetwork], addr: u128) -> bool {
    nets.iter().any(|n| {
        let (first, len) = network_to_u128(*n);
        let host = 128 - u32::from(len);
        let mask = if host == 128 { 0 } else { u128::MAX << host };
        addr & mask == first & mask
    })
}

/// What the policy's domain rules say of `name` (an `Action` byte, 0 for
/// nothing), as the kernel's `domain_action`: any matching deny (exact, or
/// a wildcard over a suffix) denies, else any matching allow allows.
pub fn domain_action(policy: &CompiledPolicy, name: &str) -> u8 {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let hit = |list: &[super::DomainPattern]| list.iter().any(|d| d.matches(&name));
    if hit(&policy.deny_domains) {
        monitor_common::action::DENY
    } else if hit(&policy.allow_domains) {
        monitor_common::action::ALLOW
    } else {
        0
    }
}

/// How `policy` judges `ip` (IPv4-mapped IPv6 is IPv4, as in the kernel).
pub fn simulate(
    policy: &CompiledPolicy,
    geo: &GeoDb,
    cloud: &CloudRanges,
    ip: IpAddr,
) -> Simulated {
    simulate_named(policy, geo, cloud, ip, None)
}

/// `simulate` for an address resolved from `name`.
pub fn simulate_named(
    policy: &CompiledPolicy,
    geo: &GeoDb,
    cloud: &CloudRanges,
    ip: IpAddr,
    name: Option<&str>,
) -> Simulated {
    let addr = to_u128(ip);
    let ip = crate::geo::from_u128(addr);
    let entry = cloud.lookup(ip);
    let cloud_region = entry.map_or(0, |e| e.region);
    let (region, source) = match entry.and_then(|e| e.location) {
        Some(l) => (
            Region {
                country: l.country,
                continent: l.continent,
            },
            CountrySource::Cloud,
        ),
        None => (geo.lookup(ip).unwrap_or_default(), CountrySource::Geoip),
    };
    let (verdict, rule) = decide_at(policy, addr, name, region, cloud_region, &cloud.regions());
    Simulated {
        verdict,
        rule,
        region,
        source,
        cloud_region,
    }
}

/// How `policy` judges the address `addr` (`to_u128`) reached by `name`,
/// whose place is `region` and cloud region `cloud_region` (0: none), with
/// `regions` the cloud regions known: the kernel's order
/// (`monitor_common::decide`). `simulate_named` looks the place up;
/// replaying recorded flows gives it as recorded.
pub fn decide_at(
    policy: &CompiledPolicy,
    addr: u128,
    name: Option<&str>,
    region: Region,
    cloud_region: u32,
    regions: &[(&str, &str)],
) -> (Verdict, Rule) {
    let has_cloud_rules = !policy.allow_cloud.is_empty() || !policy.deny_cloud.is_empty();
    let decision = monitor_common::decide(
        || contains(&policy.deny_cidrs, addr),
        || name.map_or(0, |n| domain_action(policy, n)),
        || {
            let by_region = policy
                .region_rules
                .iter()
                .find(|(r, _)| *r == region)
                .map(|(_, rule)| *rule)
                .unwrap_or_default();
            let by_cloud = if cloud_region != 0 && has_cloud_rules {
                let hit = |list: &[crate::cloud::RegionPattern]| {
                    list.iter()
                        .any(|p| p.expand(regions.iter().copied()).contains(&cloud_region))
                };
                let action = if hit(&policy.deny_cloud) {
                    monitor_common::action::DENY
                } else if hit(&policy.allow_cloud) {
                    monitor_common::action::ALLOW
                } else {
                    0
                };
                RegionRule {
                    action,
                    rule: if action == 0 {
                        0
                    } else {
                        Rule::CloudRegion as u8
                    },
                    _pad: [0; 2],
                }
            } else {
                RegionRule::default()
            };
            monitor_common::stronger(by_cloud, by_region)
        },
        || contains(&policy.allow_cidrs, addr) || contains(&policy.link_local, addr),
    );
    let verdict = match (decision.allowed, policy.mode) {
        (true, _) => Verdict::Allowed,
        (false, Mode::Enforce) => Verdict::Denied,
        (false, Mode::Monitor) => Verdict::WouldDeny,
    };
    (
        verdict,
        Rule::from_u8(decision.rule).unwrap_or(Rule::Default),
    )
}
