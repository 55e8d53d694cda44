//! A policy set as the kernel holds it: the contents of one map slot.
use std::collections::BTreeMap;

use monitor_common::{PolicyAddr, RegionKey, Selection};

use crate::{
    cgroups::Selected,
    geo,
    kernel::PolicyMaps,
    policy::{CompiledPolicy, Mode, PolicyIds},
};

/// The kernel's view of a policy set.
pub fn build_maps(
    policies: &[CompiledPolicy],
    selection: &BTreeMap<u64, Selected>,
    ids: &mut PolicyIds,
) -> PolicyMaps {
    let mut maps = PolicyMaps::default();
    for (cg, sel) in selection {
        maps.selections.push((
            *cg,
            Selection {
                policy_id: ids.id(&sel.policy),
                mode: match sel.mode {
                    Mode::Enforce => monitor_common::mode::ENFORCE,
                    Mode::Monitor => monitor_common::mode::MONITOR,
                },
                flags: 0,
                _pad: [0; 2],
            },
        ));
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
        maps.allow_cidrs.extend(p.allow_cidrs.iter().map(cidr));
        maps.deny_cidrs.extend(p.deny_cidrs.iter().map(cidr));
    }
    maps
}
