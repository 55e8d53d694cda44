//! A flow (decisions with one key, counted), as rows of the flow table and
//! the hourly sums read it, and the SQL condition on flow rows. Below both
//! `query` and `rollup`, so neither reads the other's types.
use rusqlite::Row;

use crate::events::{known_name, CgroupInfo, Event};

/// A flow: decisions with the same key, and when they were seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Flow {
    pub cgroup_path: String,
    pub pod_uid: String,
    pub comm: String,
    /// The executable (empty: not known, or flows recorded before).
    pub exe: String,
    /// The container's image, as its runtime said (empty: none).
    pub image: String,
    pub dst_ip: String,
    pub dst_port: u16,
    pub protocol: String,
    pub verdict: String,
    pub policy: String,
    pub country: String,
    pub continent: String,
    /// The name the workload resolved the address from; empty: none.
    pub dns_name: String,
    /// `provider:region` of the address, or empty.
    pub cloud_region: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Attempts: the events, and the repeats the kernel counted.
    pub count: u64,
    /// Packets and transport payload bytes the egress program passed or
    /// refused for the flow (0 where it saw none).
    pub packets: u64,
    pub bytes: u64,
}

impl Flow {
    /// The flow as an event for a filter, its path attributed as `info`.
    pub(crate) fn as_event(&self, info: &CgroupInfo) -> Event {
        let mut e = Event {
            cgroup_path: self.cgroup_path.clone(),
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            dst_ip: self.dst_ip.clone(),
            dst_port: self.dst_port,
            protocol: known_name(&self.protocol),
            verdict: known_name(&self.verdict),
            policy: self.policy.clone(),
            country: self.country.clone(),
            continent: self.continent.clone(),
            dns_name: self.dns_name.clone(),
            ..Default::default()
        };
        if !self.cloud_region.is_empty() {
            let (provider, region) = crate::cloud::split_place(&self.cloud_region);
            e.cloud = provider.into();
            e.cloud_region = region.into();
        }
        info.attribute(&mut e);
        e
    }
}

/// A flow from a row of the usual 16 columns (path first).
pub(crate) fn flow_of(r: &Row<'_>) -> rusqlite::Result<Flow> {
    flow_row(r, r.get(0)?)
}

/// A flow from a row whose first column the caller resolved (a path by
/// id): columns 1.. are comm, destination, port, protocol, verdict,
/// policy, country, continent, name, cloud region, first and last seen,
/// count, packets, bytes, executable (`FLOW_EXE`; NULL reads as none).
pub(crate) fn flow_row(r: &Row<'_>, cgroup_path: String) -> rusqlite::Result<Flow> {
    Ok(Flow {
        cgroup_path,
        comm: r.get(1)?,
        dst_ip: r.get(2)?,
        dst_port: r.get(3)?,
        protocol: r.get(4)?,
        verdict: r.get(5)?,
        policy: r.get(6)?,
        country: r.get(7)?,
        continent: r.get(8)?,
        dns_name: r.get(9)?,
        cloud_region: {
            // Rows of earlier versions: `cloudflare:` for no region.
            let place: String = r.get(10)?;
            match place.strip_suffix(':') {
                Some(provider) => provider.to_string(),
                None => place,
            }
        },
        first_seen: r.get(11)?,
        last_seen: r.get(12)?,
        count: r.get::<_, i64>(13)? as u64,
        packets: r.get::<_, i64>(14)? as u64,
        bytes: r.get::<_, i64>(15)? as u64,
        exe: r.get::<_, Option<String>>(16)?.unwrap_or_default(),
        // Filled by the reader from the cgroup's container (`cgroup_info`).
        image: String::new(),
        pod_uid: String::new(),
    })
}

/// A flow row's executable path (column 16 of `flow_row`).
pub(crate) const FLOW_EXE: &str = "(SELECT path FROM executables WHERE id = exe)";

/// A condition on flow rows for SQL (see `api::Filter::flow_sql`): the
/// text with `?` for its values, and the flow columns it reads.
#[derive(Debug, Clone)]
pub struct FlowFilter {
    pub sql: String,
    pub values: Vec<rusqlite::types::Value>,
    pub columns: Vec<&'static str>,
}

impl FlowFilter {
    /// Every row.
    pub fn all() -> Self {
        Self {
            sql: "1".into(),
            values: Vec::new(),
            columns: Vec::new(),
        }
    }
}
