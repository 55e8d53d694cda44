//! The gRPC API: generated types, the service, access control, transports,
//! and the client side the CLI uses.
pub mod auth;
pub mod backend;
pub mod client;
pub mod explain;
pub mod filter;
pub mod history;
pub mod server;
pub mod service;
pub mod simulate;

pub mod pb {
    tonic::include_proto!("egress_monitor.v1");
    /// Encoded descriptors, for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("egress_monitor_descriptor");
}

use crate::events::Event;

impl pb::Flow {
    /// Where the flow went: `ip:port/protocol`, `[v6]:port/protocol`.
    pub fn destination(&self) -> String {
        let addr = if self.dst_ip.contains(':') {
            format!("[{}]", self.dst_ip)
        } else {
            self.dst_ip.clone()
        };
        format!("{addr}:{}/{}", self.dst_port, self.protocol)
    }
}

impl From<crate::store::query::Flow> for pb::Flow {
    fn from(f: crate::store::query::Flow) -> Self {
        pb::Flow {
            first_seen: crate::events::rfc3339_nanos(i128::from(f.first_seen)),
            last_seen: crate::events::rfc3339_nanos(i128::from(f.last_seen)),
            first_seen_unix_nanos: f.first_seen,
            last_seen_unix_nanos: f.last_seen,
            cgroup_path: f.cgroup_path,
            pod_uid: f.pod_uid,
            comm: f.comm,
            dst_ip: f.dst_ip,
            dst_port: u32::from(f.dst_port),
            protocol: f.protocol,
            verdict: f.verdict,
            policy: f.policy,
            country: f.country,
            continent: f.continent,
            count: f.count,
            dns_name: f.dns_name,
            cloud_region: f.cloud_region,
            packets: f.packets,
            bytes: f.bytes,
            node: String::new(),
            exe: f.exe,
            image: f.image,
        }
    }
}

impl From<&pb::Flow> for crate::store::query::Flow {
    fn from(f: &pb::Flow) -> Self {
        crate::store::query::Flow {
            cgroup_path: f.cgroup_path.clone(),
            pod_uid: f.pod_uid.clone(),
            comm: f.comm.clone(),
            exe: f.exe.clone(),
            image: f.image.clone(),
            dst_ip: f.dst_ip.clone(),
            dst_port: u16::try_from(f.dst_port).unwrap_or(u16::MAX),
            protocol: f.protocol.clone(),
            verdict: f.verdict.clone(),
            policy: f.policy.clone(),
            country: f.country.clone(),
            continent: f.continent.clone(),
            dns_name: f.dns_name.clone(),
            cloud_region: f.cloud_region.clone(),
            first_seen: f.first_seen_unix_nanos,
            last_seen: f.last_seen_unix_nanos,
            count: f.count,
            packets: f.packets,
            bytes: f.bytes,
        }
    }
}

impl From<&Event> for pb::Event {
    fn from(e: &Event) -> Self {
        pb::Event {
            time: e.time.clone(),
            unix_nanos: e.unix_nanos as i64,
            verdict: e.verdict.into(),
            policy: e.policy.clone(),
            rule: e.rule.into(),
            hook: e.hook.into(),
            protocol: e.protocol.into(),
            family: e.family.into(),
            dst_ip: e.dst_ip.clone(),
            dst_port: u32::from(e.dst_port),
            country: e.country.clone(),
            continent: e.continent.clone(),
            pid: e.pid,
            tgid: e.tgid,
            uid: e.uid,
            comm: e.comm.clone(),
            cgroup_id: e.cgroup_id,
            cgroup_path: e.cgroup_path.clone(),
            policy_generation: e.policy_generation,
            pod_uid: e.pod_uid.clone(),
            qos: e.qos.clone(),
            container_id: e.container_id.clone(),
            runtime: e.runtime.clone(),
            systemd_unit: e.systemd_unit.clone(),
            country_source: e.country_source.into(),
            dns_name: e.dns_name.clone(),
            dns_cname: e.dns_cname.clone(),
            cloud: e.cloud.clone(),
            cloud_region: e.cloud_region.clone(),
            kernel_seq: e.kernel_seq,
            kernel_cpu: e.kernel_cpu,
            seq: 0,
            drift: e.drift.as_deref().map(|d| pb::Drift {
                attempt: d.attempt.clone(),
                baseline: d.baseline.clone(),
                baseline_sha256: d.baseline_sha256.clone(),
                kind: d.kind.clone(),
                value: d.value.clone(),
                known: d.known.clone(),
                listed: d.listed,
            }),
            node: String::new(),
            exe: e.exe.clone(),
            args: e.args.clone(),
            args_truncated: e.args_truncated,
            ppid: e.ppid,
            parent_exe: e.parent_exe.clone(),
            chain_prev: String::new(),
            image: e.image.clone(),
            image_digest: e.image_digest.clone(),
            container_name: e.container_name.clone(),
            pod_name: e.pod_name.clone(),
            pod_namespace: e.pod_namespace.clone(),
            pod_labels: e.pod_labels.clone().into_iter().collect(),
        }
    }
}

impl From<pb::Event> for Event {
    fn from(e: pb::Event) -> Self {
        Event {
            time: e.time,
            unix_nanos: i128::from(e.unix_nanos),
            verdict: crate::events::known_name(&e.verdict),
            policy: e.policy,
            rule: crate::events::known_name(&e.rule),
            hook: crate::events::known_name(&e.hook),
            protocol: crate::events::known_name(&e.protocol),
            family: crate::events::known_name(&e.family),
            dst_ip: e.dst_ip,
            dst_port: u16::try_from(e.dst_port).unwrap_or(u16::MAX),
            country: e.country,
            continent: e.continent,
            pid: e.pid,
            tgid: e.tgid,
            uid: e.uid,
            comm: e.comm,
            cgroup_id: e.cgroup_id,
            cgroup_path: e.cgroup_path,
            policy_generation: e.policy_generation,
            pod_uid: e.pod_uid,
            qos: e.qos,
            container_id: e.container_id,
            runtime: e.runtime,
            systemd_unit: e.systemd_unit,
            exe: e.exe,
            args: e.args,
            args_truncated: e.args_truncated,
            ppid: e.ppid,
            parent_exe: e.parent_exe,
            image: e.image,
            image_digest: e.image_digest,
            container_name: e.container_name,
            pod_name: e.pod_name,
            pod_namespace: e.pod_namespace,
            pod_labels: e.pod_labels.into_iter().collect(),
            country_source: crate::events::known_name(&e.country_source),
            dns_name: e.dns_name,
            dns_cname: e.dns_cname,
            cloud: e.cloud,
            cloud_region: e.cloud_region,
            kernel_seq: e.kernel_seq,
            kernel_cpu: e.kernel_cpu,
            drift: e.drift.map(|d| {
                Box::new(crate::events::Drift {
                    attempt: d.attempt,
                    baseline: d.baseline,
                    baseline_sha256: d.baseline_sha256,
                    kind: d.kind,
                    value: d.value,
                    known: d.known,
                    listed: d.listed,
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::chain;

    /// An event through the proto and back hashes as before: `fleet
    /// export` rebuilds each record's canonical form from the stream's
    /// messages, and a field the conversion dropped would make a node's
    /// chain look rewritten.
    #[test]
    fn an_event_through_the_proto_keeps_its_canonical_record() {
        let full = chain::tests::every_field();
        let mut bare = full.clone();
        bare.drift = None;
        bare.cloud.clear();
        bare.cloud_region.clear();
        bare.dns_cname.clear();
        for e in [full, bare, Event::default()] {
            let back = Event::from(pb::Event::from(&e));
            assert_eq!(chain::canonical(7, &back), chain::canonical(7, &e));
        }
    }
}
