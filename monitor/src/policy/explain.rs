//! Why a policy judges a destination as it does, in words: the decision of
//! `simulate` with the policy, the place and the rule behind it. The same
//! answer offline (`policy explain --offline`, from the files) and from the
//! daemon (the `Explain` call, from what it has in force).
use std::net::IpAddr;

use monitor_common::{CountrySource, Rule, Verdict};

use super::{
    simulate::{domain_action, simulate_named},
    CompiledPolicy, DomainPattern,
};
use crate::{cloud::CloudRanges, geo::GeoDb};

/// One policy's judgement of one destination, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub policy: String,
    pub mode: String,
    pub file: String,
    pub line: usize,
    /// The place the decision used: `DE`, `EU`, `??`.
    pub place: String,
    /// `geoip` (the country database) or `cloud` (the provider's region).
    pub place_source: &'static str,
    /// `provider:region` of the address's cloud range; empty: none.
    pub cloud_region: String,
    /// What the policy's domain rules say of the name, when there is one.
    pub name_said: &'static str,
    pub verdict: Verdict,
    pub rule: Rule,
    pub why: String,
}

/// How `p` judges `address` (reached by the name `name`, if any).
pub fn explain(
    p: &CompiledPolicy,
    db: &GeoDb,
    cloud: &CloudRanges,
    address: IpAddr,
    name: Option<&str>,
) -> Explained {
    let sim = simulate_named(p, db, cloud, address, name);
    let place = crate::geo::region_label(&sim.region);
    let cloud_region = cloud.region_label(sim.cloud_region).unwrap_or_default();
    let ip = crate::geo::from_u128(crate::geo::to_u128(address));
    let net_of = |nets: &[ipnetwork::IpNetwork]| {
        nets.iter()
            .filter(|n| n.contains(ip))
            .max_by_key(|n| n.prefix())
            .map(|n| n.to_string())
            .unwrap_or_default()
    };
    let name_rule = |list: &[DomainPattern]| {
        let n = name
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        list.iter()
            .find(|d| {
                if d.wildcard {
                    n.ends_with(&format!(".{}", d.name))
                } else {
                    n == d.name
                }
            })
            .map(|d| d.to_string())
            .unwrap_or_default()
    };
    let allowed = sim.verdict == Verdict::Allowed;
    let why = match sim.rule {
        Rule::Cidr if !allowed => format!("deny CIDR {}", net_of(&p.deny_cidrs)),
        Rule::Cidr => match net_of(&p.allow_cidrs) {
            n if !n.is_empty() => format!("allow CIDR {n}"),
            _ => format!(
                "{} never leaves the link (exempt unless judgeLinkLocal: true)",
                net_of(&p.link_local)
            ),
        },
        Rule::Domain if !allowed => format!(
            "the name matches deny domain {}",
            name_rule(&p.deny_domains)
        ),
        Rule::Domain => format!(
            "the name matches allow domain {}",
            name_rule(&p.allow_domains)
        ),
        Rule::CloudRegion => format!(
            "its cloud region {cloud_region} is {} by cloudRegions",
            if allowed { "allowed" } else { "denied" }
        ),
        Rule::Country | Rule::Continent | Rule::Group => format!(
            "its place {place} is {} by the policy's {} rules",
            if allowed { "allowed" } else { "denied" },
            sim.rule.as_str()
        ),
        _ => format!("nothing in the policy allows {place} (or this address)"),
    };
    let name_said = match name.map(|n| domain_action(p, n)) {
        None => "",
        Some(monitor_common::action::DENY) => "denied by its domain rules",
        Some(monitor_common::action::ALLOW) => "allowed by its domain rules",
        Some(_) => "no domain rule matches",
    };
    Explained {
        policy: p.name.clone(),
        mode: p.mode.to_string(),
        file: p.file.clone(),
        line: p.line,
        place,
        place_source: match sim.source {
            CountrySource::Cloud => "cloud",
            _ => "geoip",
        },
        cloud_region,
        name_said,
        verdict: sim.verdict,
        rule: sim.rule,
        why,
    }
}

/// What a policy uses that the answer had no data for: each is a warning
/// that the kernel may decide otherwise.
pub fn missing_data(p: &CompiledPolicy, cloud: &CloudRanges, name_known: bool) -> Vec<String> {
    let mut out = Vec::new();
    if (!p.allow_cloud.is_empty() || !p.deny_cloud.is_empty()) && cloud.files().is_empty() {
        out.push(format!(
            "policy {} has cloudRegions rules but no cloud ranges are loaded (--cloud-ranges): \
             no address is in a cloud region here",
            p.name
        ));
    }
    if (!p.allow_domains.is_empty() || !p.deny_domains.is_empty()) && !name_known {
        out.push(format!(
            "policy {} has domain rules but no name is known for this address (none given \
             with --name, none resolved by the cgroup): judged as reached without a lookup",
            p.name
        ));
    }
    out
}

/// The policy of `policies` that judges `cgroup` (the nearest ancestor it
/// selects, as the kernel's walk) or the pod `pod` (a normalised UID), and
/// what it selects.
pub fn judging<'p>(
    policies: impl Iterator<Item = &'p CompiledPolicy> + Clone,
    cgroup: Option<&str>,
    pod: Option<&str>,
) -> Option<(&'p CompiledPolicy, String)> {
    if let Some(uid) = pod {
        return policies
            .clone()
            .find(|p| p.pods.contains(uid))
            .map(|p| (p, format!("pod:{uid}")));
    }
    let mut path = cgroup?.trim_end_matches('/').to_string();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    loop {
        let here = if path.is_empty() { "/" } else { path.as_str() };
        let attr = crate::attribution::attribute(here);
        if let Some(p) = policies.clone().find(|p| p.selects(here, &attr)) {
            return Some((p, here.to_string()));
        }
        match path.rfind('/') {
            Some(0) if path.len() > 1 => path.truncate(0),
            Some(i) if i > 0 => path.truncate(i),
            _ => return None,
        }
    }
}
