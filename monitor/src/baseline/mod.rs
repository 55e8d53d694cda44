//! Baselines over the store: recorded from the history store for people
//! to review (`baseline record`), and the flows outside one (`baseline
//! diff`). The file format and what it covers are `policy::baseline`'s;
//! the daemon's drift alerts are `pipeline::drift`'s.
pub mod diff;
pub mod record;

use crate::api::pb;
pub use crate::policy::baseline::{load, parse, Baseline, Dest, Known, Place, Workload, KIND};

/// The workload of a flow.
pub fn workload_of(f: &pb::Flow) -> Workload {
    Workload::new(&f.pod_uid, &f.cgroup_path)
}

/// The destination of a flow, as a baseline knows it.
pub fn dest_of(f: &pb::Flow) -> Dest {
    Dest::of(Place {
        dns_name: &f.dns_name,
        cloud_region: &f.cloud_region,
        dst_ip: &f.dst_ip,
        country: &f.country,
    })
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
/// per workload and destination (all pages of `QueryFlows`); `read` is
/// told how many so far after each page.
pub fn flows(
    state_dir: &std::path::Path,
    window: pb::TimeWindow,
    filter: pb::EventFilter,
    read: &dyn Fn(u64),
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
        read(out.len() as u64);
        token = page.next_page_token;
        if token.is_empty() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests;
