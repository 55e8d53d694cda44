//! The event filter flags shared by `events`, `flows`, `export` and `report`.
use clap::Args;

use crate::api::pb;

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// allowed, denied or would_deny (repeatable).
    #[arg(long)]
    pub verdict: Vec<String>,
    #[arg(long)]
    pub policy: Vec<String>,
    /// ISO 3166-1 alpha-2 code of the destination's country (GB, not UK;
    /// repeatable).
    #[arg(long)]
    pub country: Vec<String>,
    /// Destination inside this CIDR (repeatable).
    #[arg(long)]
    pub to_cidr: Vec<String>,
    #[arg(long)]
    pub port: Vec<u32>,
    /// tcp, udp, icmp or icmpv6 (ICMP: raw and ping sockets, judged by
    /// the egress backstop), or ip-proto-N (repeatable).
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Glob over the cgroup path ('*' one level, '**' any).
    #[arg(long)]
    pub cgroup: Vec<String>,
    #[arg(long)]
    pub pid: Vec<u32>,
    #[arg(long)]
    pub comm: Vec<String>,
    #[arg(long)]
    pub uid: Vec<u32>,
    /// Kubernetes pod UID (repeatable).
    #[arg(long)]
    pub pod: Vec<String>,
    /// Glob over the DNS name the address was resolved from (or its CNAME
    /// target), e.g. '*.openai.com'; '-' for addresses reached without a
    /// lookup (repeatable).
    #[arg(long)]
    pub name: Vec<String>,
    /// Cloud region of the destination: aws:eu-central-1, aws:eu-*, gcp:*
    /// (repeatable).
    #[arg(long)]
    pub cloud_region: Vec<String>,
    /// The process's executable: a glob over its file name (python3,
    /// 'evil*') or, with a '/', over its path ('/usr/bin/*') (repeatable).
    #[arg(long)]
    pub exe: Vec<String>,
    /// The parent process: its pid, or a glob over its executable as
    /// --exe (repeatable).
    #[arg(long)]
    pub parent: Vec<String>,
    /// The container's image: a glob over its last part ('vllm*',
    /// '*:v2') or, with a '/', over the whole reference
    /// ('registry.example/llm/*'); or its digest ('sha256:…') (repeatable).
    #[arg(long)]
    pub image: Vec<String>,
    /// The container: a glob over its name, or 4 or more hex digits of its
    /// ID (repeatable).
    #[arg(long)]
    pub container: Vec<String>,
}

impl FilterArgs {
    pub fn to_pb(&self) -> pb::EventFilter {
        pb::EventFilter {
            verdicts: self.verdict.clone(),
            policies: self.policy.clone(),
            cgroup_globs: self.cgroup.clone(),
            dst_cidrs: self.to_cidr.clone(),
            countries: self.country.clone(),
            ports: self.port.clone(),
            protocols: self.protocol.clone(),
            pids: self.pid.clone(),
            comms: self.comm.clone(),
            uids: self.uid.clone(),
            pod_uids: self.pod.clone(),
            names: self.name.clone(),
            cloud_regions: self.cloud_region.clone(),
            exes: self.exe.clone(),
            parents: self.parent.clone(),
            images: self.image.clone(),
            containers: self.container.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.to_pb() == pb::EventFilter::default()
    }

    /// The filter compiled, and as given for the record (`export`'s
    /// manifest, `report`'s page): null when there is none.
    pub fn compiled(&self) -> anyhow::Result<(crate::api::filter::Filter, serde_json::Value)> {
        let pbf = self.to_pb();
        let filter = crate::api::filter::Filter::compile(pbf.clone())
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let recorded = if self.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&pbf)?
        };
        Ok((filter, recorded))
    }
}
