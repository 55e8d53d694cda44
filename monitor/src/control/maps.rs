//! A policy set as the kernel holds it: the contents of one map slot.
use std::collections::{BTreeMap, HashMap};

use monitor_common::{
    action, dns, rule, CloudKey, DomainKey, PolicyAddr, RegionKey, RegionRule, Selection,
    DOMAIN_EXACT, DOMAIN_WILDCARD,
};

use crate::{
    cgroups::Selected,
    cloud::{CloudRanges, RegionPattern},
    geo,
    kernel::PolicyMaps,
    policy::{CompiledPolicy, DomainPattern, Mode, PolicyIds},
};

/// The kernel's view of a policy set. Cloud-region patterns are expanded
/// against the regions `cloud` knows (its snapshot and the location table).
pub fn build_maps(
    policies: &[CompiledPolicy],
    selection: &BTreeMap<u64, Selected>,
    watched: &BTreeMap<u64, Mode>,
    ids: &mut PolicyIds,
    cloud: &CloudRanges,
    name_key: u64,
) -> PolicyMaps {
    let mut maps = PolicyMaps::default();
    let mut flags: HashMap<&str, u8> = HashMap::new();
    for p in policies {
        let mut f = 0;
        if !p.allow_domains.is_empty() || !p.deny_domains.is_empty() {
            f |= Selection::HAS_DOMAINS;
        }
        if !p.allow_cloud.is_empty() || !p.deny_cloud.is_empty() {
            f |= Selection::HAS_CLOUD_RULES;
        }
        flags.insert(p.name.as_str(), f);
    }
    for (cg, sel) in selection {
        maps.selections.push((
            *cg,
            Selection {
                policy_id: ids.id(&sel.policy),
                mode: match sel.mode {
                    Mode::Enforce => monitor_common::mode::ENFORCE,
                    Mode::Monitor => monitor_common::mode::MONITOR,
                },
                flags: flags.get(sel.policy.as_str()).copied().unwrap_or(0),
                _pad: [0; 2],
            },
        ));
    }
    for (cg, mode) in watched {
        let w = match mode {
            Mode::Enforce => 2,
            Mode::Monitor => 1,
        };
        maps.watched.push((*cg, w));
    }
    for p in policies {
        let policy_id = ids.id(&p.name);
        for (region, rule) in &p.region_rules {
            maps.region_rules.push((
                RegionKey {
                    policy_id,
                    region: *region,
                },
                *rule,
            ));
        }
        let cidr = |net: &ipnetwork::IpNetwork| {
            let (addr, len) = geo::network_to_u128(*net);
            (
                PolicyAddr {
                    policy_id_be: policy_id.to_be_bytes(),
                    addr: addr.to_be_bytes(),
                },
                32 + u32::from(len),
            )
        };
        maps.allow_cidrs.extend(p.allowed_networks().map(cidr));
        maps.deny_cidrs.extend(p.deny_cidrs.iter().map(cidr));
        maps.domains.extend(domain_rules(
            policy_id,
            &p.allow_domains,
            &p.deny_domains,
            name_key,
        ));
        maps.cloud_rules
            .extend(cloud_rules(policy_id, &p.allow_cloud, &p.deny_cloud, cloud));
    }
    maps
}

/// Domain rules of one policy; a name both allowed and denied is denied.
fn domain_rules(
    policy_id: u32,
    allow: &[DomainPattern],
    deny: &[DomainPattern],
    name_key: u64,
) -> Vec<(DomainKey, RegionRule)> {
    let mut out: BTreeMap<(u32, u64), u8> = BTreeMap::new();
    for (list, act) in [(allow, action::ALLOW), (deny, action::DENY)] {
        for d in list {
            let Some(hashes) = dns::name_hashes(d.name.as_bytes(), name_key) else {
                // The policy check refuses names the kernel cannot match.
                continue;
            };
            let kind = if d.wildcard {
                DOMAIN_WILDCARD
            } else {
                DOMAIN_EXACT
            };
            out.insert((kind, hashes.full), act);
        }
    }
    out.into_iter()
        .map(|((kind, hash), act)| {
            (
                DomainKey {
                    policy_id,
                    kind,
                    hash,
                },
                RegionRule {
                    action: act,
                    rule: rule::DOMAIN,
                    _pad: [0; 2],
                },
            )
        })
        .collect()
}

/// Cloud-region rules of one policy, expanded over the regions `cloud`
/// knows (its snapshot's and the location table's); deny wins over allow.
fn cloud_rules(
    policy_id: u32,
    allow: &[RegionPattern],
    deny: &[RegionPattern],
    cloud: &CloudRanges,
) -> Vec<(CloudKey, RegionRule)> {
    let mut out: BTreeMap<u32, u8> = BTreeMap::new();
    for (list, act) in [(allow, action::ALLOW), (deny, action::DENY)] {
        for pattern in list {
            for id in pattern.expand(cloud.regions()) {
                out.insert(id, act);
            }
        }
    }
    out.into_iter()
        .map(|(region, act)| {
            (
                CloudKey { policy_id, region },
                RegionRule {
                    action: act,
                    rule: rule::CLOUD_REGION,
                    _pad: [0; 2],
                },
            )
        })
        .collect()
}
