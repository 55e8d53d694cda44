//! Drift: the flows outside a baseline, per workload and new destination,
//! with what each was compared to.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Serialize;

use super::{dest_of, workload_of, Baseline, Dest, Seen, Workload};
use crate::api::pb;

/// One destination new to a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct New {
    pub workload: Workload,
    /// `name`, `cloud region`, `cidr` or `country`.
    pub kind: &'static str,
    pub value: String,
    /// The baseline's list of that kind for the workload.
    pub baseline: Vec<String>,
    pub attempts: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// The addresses (`ip:port/protocol`) it was reached at.
    pub destinations: BTreeSet<String>,
}

/// The result of a diff.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    pub new: Vec<New>,
    /// Flows of workloads the baseline does not list, compared to all the
    /// workloads' destinations together, and how many such workloads.
    pub unlisted_flows: usize,
    pub unlisted_workloads: usize,
}

/// The flows outside `baseline`: each workload's compared to its own
/// entry, or (a workload the baseline does not list) to all of them
/// together, as the daemon's drift alerts compare them (`Baseline::known_for`).
pub fn diff(baseline: &Baseline, flows: &[pb::Flow]) -> Drift {
    let mut found: BTreeMap<(Workload, Dest), (Seen, BTreeSet<String>)> = BTreeMap::new();
    let mut unlisted = BTreeSet::new();
    let mut unlisted_flows = 0;
    for f in flows {
        let w = workload_of(f);
        let (known, listed) = baseline.known_for(&w);
        if !listed {
            unlisted_flows += 1;
            unlisted.insert(w.clone());
        }
        let d = dest_of(f);
        if known.covers(&d, f.dst_ip.parse::<IpAddr>().ok()) {
            continue;
        }
        let e = found.entry((w, d)).or_insert((Seen::NONE, BTreeSet::new()));
        e.0.add(Seen::of(f));
        e.1.insert(f.destination());
    }
    let new = found
        .into_iter()
        .map(|((w, d), (seen, destinations))| New {
            baseline: baseline.known_for(&w).0.compared_to(&d),
            workload: w,
            kind: d.kind(),
            value: d.value().to_string(),
            attempts: seen.count,
            first_seen: crate::events::rfc3339_nanos(i128::from(seen.first)),
            last_seen: crate::events::rfc3339_nanos(i128::from(seen.last)),
            destinations,
        })
        .collect();
    Drift {
        new,
        unlisted_flows,
        unlisted_workloads: unlisted.len(),
    }
}
