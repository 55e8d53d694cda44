//! Baselines: the destinations each workload is known to use, recorded
//! from the history store for people to review (`baseline record`), and
//! the flows outside them, drift (`baseline diff`).
//!
//! A destination is known by the most specific thing the store recorded
//! of it: the DNS name the workload resolved, else the cloud region of the
//! address, else (private, loopback and link-local addresses) the range it
//! lies in, else its country, else the address itself.
pub mod diff;
pub mod model;
pub mod record;

use std::{fmt, net::IpAddr};

use ipnetwork::IpNetwork;

use crate::api::pb;

/// A workload as a baseline keys it: the pod of a flow whose cgroup is a
/// pod's, else the cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Pod(String),
    Cgroup(String),
}

impl Workload {
    pub fn of(f: &pb::Flow) -> Self {
        if f.pod_uid.is_empty() {
            Workload::Cgroup(f.cgroup_path.clone())
        } else {
            Workload::Pod(f.pod_uid.clone())
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Pod(uid) => write!(f, "pod {uid}"),
            Workload::Cgroup(path) => write!(f, "cgroup {path}"),
        }
    }
}

/// A destination as a baseline knows it, most specific first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dest {
    Name(String),
    CloudRegion(String),
    /// A private, loopback or link-local range, or an address the
    /// database places nowhere (as a host prefix).
    Cidr(String),
    Country(String),
}

/// Ranges that never reach the internet: a baseline names the range, not
/// each address in it.
const PRIVATE: [&str; 7] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
];

impl Dest {
    pub fn of(f: &pb::Flow) -> Self {
        // A name a baseline could not list (an `_srv` label, say) is
        // passed over for what else is known of the address.
        if let Ok(p) = crate::policy::DomainPattern::parse(&f.dns_name) {
            if !p.wildcard {
                return Dest::Name(p.name);
            }
        }
        if !f.cloud_region.is_empty() {
            return Dest::CloudRegion(f.cloud_region.clone());
        }
        let Ok(ip) = f.dst_ip.parse::<IpAddr>() else {
            // Never matches a baseline's ranges: reported, not passed over.
            return Dest::Cidr(f.dst_ip.clone());
        };
        let local = PRIVATE
            .iter()
            .chain(crate::policy::compile::LINK_LOCAL.iter())
            .filter_map(|c| c.parse::<IpNetwork>().ok())
            .find(|n| n.contains(ip));
        if let Some(net) = local {
            return Dest::Cidr(net.to_string());
        }
        if !f.country.is_empty() {
            return Dest::Country(f.country.clone());
        }
        let host = IpNetwork::from(ip);
        Dest::Cidr(host.to_string())
    }

    /// What kind of destination: `name`, `cloud region`, `cidr`, `country`.
    pub fn kind(&self) -> &'static str {
        match self {
            Dest::Name(_) => "name",
            Dest::CloudRegion(_) => "cloud region",
            Dest::Cidr(_) => "cidr",
            Dest::Country(_) => "country",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Dest::Name(v) | Dest::CloudRegion(v) | Dest::Cidr(v) | Dest::Country(v) => v,
        }
    }
}

/// Attempts to a destination, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub first: i64,
    pub last: i64,
}

impl Seen {
    /// Nothing seen yet (what `add` starts from).
    pub const NONE: Seen = Seen {
        count: 0,
        first: i64::MAX,
        last: i64::MIN,
    };

    pub fn of(f: &pb::Flow) -> Self {
        Seen {
            count: f.count,
            first: f.first_seen_unix_nanos,
            last: f.last_seen_unix_nanos,
        }
    }

    pub fn add(&mut self, o: Seen) {
        self.count += o.count;
        self.first = self.first.min(o.first);
        self.last = self.last.max(o.last);
    }
}

/// Every flow of the window and filter from the store in `state_dir`, one
/// per workload and destination (all pages of `QueryFlows`).
pub fn flows(
    state_dir: &std::path::Path,
    window: pb::TimeWindow,
    filter: pb::EventFilter,
) -> anyhow::Result<Vec<pb::Flow>> {
    let path = crate::store::path_in(state_dir);
    let mut out = Vec::new();
    let mut token = String::new();
    // Bounded: each page moves the token on, and the last has none.
    loop {
        let page = crate::api::history::query_flows(
            &path,
            pb::QueryFlowsRequest {
                window: Some(window.clone()),
                filter: Some(filter.clone()),
                group_by: ["cgroup", "pod", "destination", "port", "protocol", "name"]
                    .map(String::from)
                    .to_vec(),
                sort: "destination".into(),
                limit: crate::api::history::MAX_LIMIT,
                page_token: token,
            },
        )
        .map_err(|s| anyhow::anyhow!("reading the flows of {}: {}", path.display(), s.message()))?;
        out.extend(page.flows);
        token = page.next_page_token;
        if token.is_empty() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests;
