//! Server-side event filters, validated once per stream.
use std::collections::HashSet;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnetwork::IpNetwork;
use tonic::Status;

use super::pb;
use crate::events::Event;

#[derive(Debug, Default)]
pub struct Filter {
    verdicts: HashSet<String>,
    policies: HashSet<String>,
    cgroups: Option<GlobSet>,
    cidrs: Vec<IpNetwork>,
    countries: HashSet<String>,
    ports: HashSet<u16>,
    protocols: HashSet<String>,
    pids: HashSet<u32>,
    comms: HashSet<String>,
    uids: HashSet<u32>,
    pod_uids: HashSet<String>,
    names: Option<GlobSet>,
    /// `-` among the name filters: events without a name match.
    unnamed: bool,
    cloud_regions: Vec<crate::cloud::RegionPattern>,
    exes: Option<ExeGlobs>,
    parent_pids: HashSet<u32>,
    parent_exes: Option<ExeGlobs>,
    images: Option<ExeGlobs>,
    /// Container ID prefixes (4 or more hex digits) and name globs.
    container_ids: Vec<String>,
    container_names: Option<GlobSet>,
}

/// Globs over executables: a pattern with a `/` over the whole path,
/// one without over the file name (`python3` matches `/usr/bin/python3`).
#[derive(Debug)]
struct ExeGlobs {
    paths: GlobSet,
    names: GlobSet,
}

impl ExeGlobs {
    fn compile<'a>(
        field: &str,
        patterns: impl Iterator<Item = (usize, &'a String)>,
    ) -> Result<Option<Self>, Status> {
        let (mut paths, mut names, mut any) = (GlobSetBuilder::new(), GlobSetBuilder::new(), false);
        for (i, p) in patterns {
            if p.is_empty() {
                return Err(bad(field, i, "an empty pattern matches nothing".into()));
            }
            let glob = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| bad(field, i, format!("{p:?}: {e}")))?;
            if p.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
            any = true;
        }
        if !any {
            return Ok(None);
        }
        let built = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Status::invalid_argument(format!("filter.{field}: {e}")))
        };
        Ok(Some(Self {
            paths: built(paths)?,
            names: built(names)?,
        }))
    }

    fn is_match(&self, exe: &str) -> bool {
        if exe.is_empty() {
            return false;
        }
        let name = exe.rsplit('/').next().unwrap_or(exe);
        self.paths.is_match(exe) || self.names.is_match(name)
    }
}

/// The protocols events name (`events::protocol_name`): the sock_addr
/// hooks judge TCP and UDP, the egress backstop also ICMP and ICMPv6 (raw
/// and ping sockets).
pub const PROTOCOLS: [&str; 4] = ["tcp", "udp", "icmp", "icmpv6"];

/// At most this many entries in one filter list (each is checked per event).
pub const MAX_ENTRIES: usize = 1024;
/// At most this many bytes in one filter string (a glob, a name, a CIDR).
pub const MAX_ENTRY_BYTES: usize = 1024;

/// Refuses a list longer than `MAX_ENTRIES` or an entry longer than
/// `MAX_ENTRY_BYTES`, naming the field.
fn bounded<T: AsRef<str>>(field: &str, list: &[T]) -> Result<(), Status> {
    if list.len() > MAX_ENTRIES {
        return Err(Status::invalid_argument(format!(
            "filter.{field}: {} entries, at most {MAX_ENTRIES}",
            list.len()
        )));
    }
    if let Some((i, e)) = list
        .iter()
        .enumerate()
        .find(|(_, e)| e.as_ref().len() > MAX_ENTRY_BYTES)
    {
        return Err(bad(
            field,
            i,
            format!("{} bytes, at most {MAX_ENTRY_BYTES}", e.as_ref().len()),
        ));
    }
    Ok(())
}

fn bad(field: &str, i: usize, reason: String) -> Status {
    Status::invalid_argument(format!("filter.{field}[{i}]: {reason}"))
}

impl Filter {
    /// Validates a request's filter; errors name the field.
    pub fn compile(f: pb::EventFilter) -> Result<Self, Status> {
        let mut out = Filter::default();
        for (field, list) in [
            ("verdicts", &f.verdicts),
            ("policies", &f.policies),
            ("cgroup_globs", &f.cgroup_globs),
            ("dst_cidrs", &f.dst_cidrs),
            ("countries", &f.countries),
            ("protocols", &f.protocols),
            ("comms", &f.comms),
            ("pod_uids", &f.pod_uids),
            ("names", &f.names),
            ("cloud_regions", &f.cloud_regions),
            ("exes", &f.exes),
            ("parents", &f.parents),
            ("images", &f.images),
            ("containers", &f.containers),
        ] {
            bounded(field, list)?;
        }
        out.exes = ExeGlobs::compile("exes", f.exes.iter().enumerate())?;
        out.images = ExeGlobs::compile("images", f.images.iter().enumerate())?;
        let is_id = |c: &str| c.len() >= 4 && c.bytes().all(|b| b.is_ascii_hexdigit());
        out.container_ids = f
            .containers
            .iter()
            .filter(|c| is_id(c))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let mut names = GlobSetBuilder::new();
        let mut any_name = false;
        for (i, c) in f.containers.iter().enumerate() {
            if c.is_empty() {
                return Err(bad(
                    "containers",
                    i,
                    "an empty pattern matches nothing".into(),
                ));
            }
            let glob = GlobBuilder::new(c)
                .literal_separator(true)
                .build()
                .map_err(|e| bad("containers", i, format!("{c:?}: {e}")))?;
            names.add(glob);
            any_name = true;
        }
        if any_name {
            out.container_names = Some(
                names
                    .build()
                    .map_err(|e| Status::invalid_argument(format!("filter.containers: {e}")))?,
            );
        }
        out.parent_pids = f.parents.iter().filter_map(|p| p.parse().ok()).collect();
        out.parent_exes = ExeGlobs::compile(
            "parents",
            f.parents
                .iter()
                .enumerate()
                .filter(|(_, p)| p.parse::<u32>().is_err()),
        )?;
        for (field, n) in [
            ("ports", f.ports.len()),
            ("pids", f.pids.len()),
            ("uids", f.uids.len()),
        ] {
            if n > MAX_ENTRIES {
                return Err(Status::invalid_argument(format!(
                    "filter.{field}: {n} entries, at most {MAX_ENTRIES}"
                )));
            }
        }
        for (i, v) in f.verdicts.iter().enumerate() {
            if !["allowed", "denied", "would_deny", "drift"].contains(&v.as_str()) {
                return Err(bad(
                    "verdicts",
                    i,
                    format!("{v:?} is not one of allowed, denied, would_deny, drift"),
                ));
            }
            out.verdicts.insert(v.clone());
        }
        out.policies = f.policies.into_iter().collect();
        if !f.cgroup_globs.is_empty() {
            let mut b = GlobSetBuilder::new();
            for (i, g) in f.cgroup_globs.iter().enumerate() {
                let glob = GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| bad("cgroup_globs", i, format!("{g:?}: {e}")))?;
                b.add(glob);
            }
            out.cgroups = Some(
                b.build()
                    .map_err(|e| Status::invalid_argument(format!("filter.cgroup_globs: {e}")))?,
            );
        }
        for (i, c) in f.dst_cidrs.iter().enumerate() {
            let net: IpNetwork = c
                .parse()
                .map_err(|e| bad("dst_cidrs", i, format!("{c:?} is not a CIDR: {e}")))?;
            out.cidrs.push(net);
        }
        for (i, c) in f.countries.iter().enumerate() {
            let up = c.to_ascii_uppercase();
            if !crate::geo::regions::is_country(&up) {
                return Err(bad("countries", i, crate::geo::regions::not_a_country(c)));
            }
            out.countries.insert(up);
        }
        for (i, p) in f.ports.iter().enumerate() {
            let port = u16::try_from(*p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("ports", i, format!("{p} is not a port (1-65535)")))?;
            out.ports.insert(port);
        }
        for (i, p) in f.protocols.iter().enumerate() {
            // `ip-proto-6` is `tcp`, as events name it.
            let name = crate::events::known_name(&p.to_ascii_lowercase());
            if !(PROTOCOLS.contains(&name) || name.starts_with("ip-proto-")) {
                return Err(bad(
                    "protocols",
                    i,
                    format!(
                        "{p:?} is not a protocol events carry (one of {}, or ip-proto-N for another IP protocol number)",
                        PROTOCOLS.join(", ")
                    ),
                ));
            }
            out.protocols.insert(name.to_string());
        }
        out.pids = f.pids.into_iter().collect();
        out.comms = f.comms.into_iter().collect();
        out.uids = f.uids.into_iter().collect();
        for (i, u) in f.pod_uids.iter().enumerate() {
            let uid = crate::attribution::normalize_uid(&u.replace('_', "-")).ok_or_else(|| {
                bad(
                    "pod_uids",
                    i,
                    format!("{u:?} is not a Kubernetes UID (a UUID, or 32 hex digits)"),
                )
            })?;
            out.pod_uids.insert(uid);
        }
        if !f.names.is_empty() {
            let mut b = GlobSetBuilder::new();
            for (i, g) in f.names.iter().enumerate() {
                if g == "-" {
                    out.unnamed = true;
                    continue;
                }
                let glob = GlobBuilder::new(&g.to_ascii_lowercase())
                    .build()
                    .map_err(|e| bad("names", i, format!("{g:?}: {e}")))?;
                b.add(glob);
            }
            out.names = Some(
                b.build()
                    .map_err(|e| Status::invalid_argument(format!("filter.names: {e}")))?,
            );
        }
        for (i, r) in f.cloud_regions.iter().enumerate() {
            let pattern = crate::cloud::RegionPattern::parse(r)
                .map_err(|reason| bad("cloud_regions", i, reason))?;
            out.cloud_regions.push(pattern);
        }
        Ok(out)
    }

    /// The rows of the store this filter can match, for the store to read
    /// no more than those.
    pub fn rows(&self) -> crate::store::query::Rows {
        let verdicts: Vec<&str> = self.verdicts.iter().map(String::as_str).collect();
        crate::store::query::Rows::for_verdicts(&verdicts)
    }

    /// The filter as SQL over the flows table (a condition and its
    /// values), when it names only what a flow row holds as it is
    /// (verdicts, policies, countries, ports, protocols); None otherwise.
    pub fn flow_sql(&self) -> Option<crate::store::query::FlowFilter> {
        use rusqlite::types::Value;
        if self.cgroups.is_some()
            || !self.cidrs.is_empty()
            || !self.pids.is_empty()
            || !self.comms.is_empty()
            || !self.uids.is_empty()
            || !self.pod_uids.is_empty()
            || self.names.is_some()
            || self.unnamed
            || !self.cloud_regions.is_empty()
            || self.exes.is_some()
            || self.by_container()
            || self.by_parent()
        {
            return None;
        }
        let mut cond = vec!["1".to_string()];
        let mut values = Vec::new();
        let mut columns = Vec::new();
        let mut any_of = |column: &'static str, list: Vec<Value>| {
            if list.is_empty() {
                return;
            }
            let marks = vec!["?"; list.len()].join(", ");
            cond.push(format!("{column} IN ({marks})"));
            values.extend(list);
            columns.push(column);
        };
        let text = |set: &HashSet<String>| set.iter().cloned().map(Value::Text).collect();
        any_of("verdict", text(&self.verdicts));
        any_of("policy", text(&self.policies));
        any_of("country", text(&self.countries));
        any_of("protocol", text(&self.protocols));
        any_of(
            "dst_port",
            self.ports
                .iter()
                .map(|p| Value::Integer(i64::from(*p)))
                .collect(),
        );
        Some(crate::store::query::FlowFilter {
            sql: cond.join(" AND "),
            values,
            columns,
        })
    }

    /// Whether the filter names processes (pid, uid, parent): flows do
    /// not keep them, so flow queries must read the events.
    pub fn by_process(&self) -> bool {
        !self.pids.is_empty() || !self.uids.is_empty() || self.by_parent()
    }

    /// Whether the filter names containers by what their runtime said.
    fn by_container(&self) -> bool {
        self.images.is_some() || self.container_names.is_some()
    }

    fn by_parent(&self) -> bool {
        !self.parent_pids.is_empty() || self.parent_exes.is_some()
    }

    pub fn matches(&self, e: &Event) -> bool {
        (self.verdicts.is_empty() || self.verdicts.iter().any(|v| v == e.verdict))
            && (self.policies.is_empty() || self.policies.contains(&e.policy))
            && self
                .cgroups
                .as_ref()
                .is_none_or(|g| g.is_match(&e.cgroup_path))
            && (self.cidrs.is_empty()
                || e.dst_ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| self.cidrs.iter().any(|n| n.contains(ip))))
            && (self.countries.is_empty() || self.countries.contains(&e.country))
            && (self.ports.is_empty() || self.ports.contains(&e.dst_port))
            && (self.protocols.is_empty() || self.protocols.iter().any(|p| p == e.protocol))
            && (self.pids.is_empty() || self.pids.contains(&e.pid) || self.pids.contains(&e.tgid))
            && (self.comms.is_empty() || self.comms.contains(&e.comm))
            && (self.uids.is_empty() || self.uids.contains(&e.uid))
            && (self.pod_uids.is_empty() || self.pod_uids.contains(&e.pod_uid))
            && self.names.as_ref().is_none_or(|g| {
                if e.dns_name.is_empty() {
                    self.unnamed
                } else {
                    g.is_match(&e.dns_name)
                }
            })
            && (self.cloud_regions.is_empty()
                || self
                    .cloud_regions
                    .iter()
                    .any(|p| p.matches(&e.cloud, &e.cloud_region)))
            && self.exes.as_ref().is_none_or(|g| g.is_match(&e.exe))
            && self
                .images
                .as_ref()
                .is_none_or(|g| g.is_match(&e.image) || g.is_match(&e.image_digest))
            && (self.container_names.is_none()
                || self
                    .container_ids
                    .iter()
                    .any(|p| !e.container_id.is_empty() && e.container_id.starts_with(p.as_str()))
                || self
                    .container_names
                    .as_ref()
                    .is_some_and(|g| !e.container_name.is_empty() && g.is_match(&e.container_name)))
            && (!self.by_parent()
                || self.parent_pids.contains(&e.ppid)
                || self
                    .parent_exes
                    .as_ref()
                    .is_some_and(|g| g.is_match(&e.parent_exe)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Absurd filters (100k CIDRs, a 10 MB glob) are refused with the
    /// field and the limit, before any of them is compiled.
    #[test]
    fn absurd_filters_are_refused_with_the_limit() {
        let many = pb::EventFilter {
            dst_cidrs: (0..100_000)
                .map(|i| format!("10.{}.{}.0/24", i / 256 % 256, i % 256))
                .collect(),
            ..Default::default()
        };
        let e = Filter::compile(many).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .contains("filter.dst_cidrs: 100000 entries, at most 1024"),
            "{e}"
        );
        let huge = pb::EventFilter {
            cgroup_globs: vec!["*".repeat(10 << 20)],
            ..Default::default()
        };
        let e = Filter::compile(huge).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .contains("filter.cgroup_globs[0]: 10485760 bytes, at most 1024"),
            "{e}"
        );
        let ports = pb::EventFilter {
            ports: vec![443; 5000],
            ..Default::default()
        };
        assert!(Filter::compile(ports)
            .unwrap_err()
            .message()
            .contains("filter.ports: 5000 entries"));
    }

    fn ev() -> Event {
        Event {
            time: String::new(),
            unix_nanos: 0,
            verdict: "denied",
            policy: "p".into(),
            rule: "default",
            hook: "connect4",
            protocol: "tcp",
            family: "ipv4",
            dst_ip: "203.0.113.2".into(),
            dst_port: 443,
            country: "US".into(),
            continent: "NA".into(),
            pid: 10,
            tgid: 9,
            uid: 1000,
            comm: "curl".into(),
            cgroup_id: 1,
            cgroup_path: "/kubepods.slice/pod1/ctr".into(),
            policy_generation: 1,
            pod_uid: "1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506".into(),
            ..Default::default()
        }
    }

    fn f(edit: impl FnOnce(&mut pb::EventFilter)) -> Filter {
        let mut p = pb::EventFilter::default();
        edit(&mut p);
        Filter::compile(p).unwrap()
    }

    #[test]
    fn each_field_filters() {
        let e = ev();
        assert!(f(|_| {}).matches(&e));
        assert!(f(|p| p.verdicts = vec!["denied".into()]).matches(&e));
        assert!(!f(|p| p.verdicts = vec!["allowed".into()]).matches(&e));
        assert!(f(|p| p.cgroup_globs = vec!["/kubepods.slice/**".into()]).matches(&e));
        assert!(!f(|p| p.cgroup_globs = vec!["/kubepods.slice/*".into()]).matches(&e));
        assert!(f(|p| p.dst_cidrs = vec!["203.0.113.0/24".into()]).matches(&e));
        assert!(!f(|p| p.dst_cidrs = vec!["198.51.100.0/24".into()]).matches(&e));
        assert!(f(|p| p.countries = vec!["us".into()]).matches(&e));
        assert!(!f(|p| p.ports = vec![80]).matches(&e));
        assert!(f(|p| p.protocols = vec!["TCP".into()]).matches(&e));
        assert!(f(|p| p.protocols = vec!["ip-proto-6".into()]).matches(&e));
        // The backstop's ICMP events (raw and ping sockets).
        let icmp = Event {
            protocol: "icmp",
            dst_port: 0,
            ..ev()
        };
        assert!(f(|p| p.protocols = vec!["icmp".into()]).matches(&icmp));
        assert!(!f(|p| p.protocols = vec!["icmp".into()]).matches(&e));
        assert!(!f(|p| p.protocols = vec!["icmpv6".into()]).matches(&icmp));
        assert!(f(|p| p.pids = vec![9]).matches(&e));
        assert!(!f(|p| p.comms = vec!["wget".into()]).matches(&e));
        assert!(!f(|p| p.uids = vec![0]).matches(&e));
        assert!(
            f(|p| p.pod_uids = vec!["1B2C3D4E_5F60_4718_9A0B_C1D2E3F40506".into()]).matches(&e)
        );
        assert!(
            !f(|p| p.pod_uids = vec!["00000000-5f60-4718-9a0b-c1d2e3f40506".into()]).matches(&e)
        );
        assert!(!f(|p| {
            p.verdicts = vec!["denied".into()];
            p.policies = vec!["other".into()];
        })
        .matches(&e));
    }

    /// Containers by image (last part, whole reference or digest) and by
    /// name or ID prefix; an event without them matches none of these.
    #[test]
    fn image_and_container_filters() {
        let e = Event {
            container_id: format!("e25a09fd{}", "0".repeat(56)),
            image: "localhost/egress-probe:test".into(),
            image_digest: "sha256:aaa5".into(),
            container_name: "probe-1".into(),
            ..ev()
        };
        for yes in ["egress-probe:*", "*:test", "localhost/*", "sha256:aaa5"] {
            assert!(f(|p| p.images = vec![yes.into()]).matches(&e), "{yes}");
        }
        for no in ["vllm*", "/egress-probe:test", "sha256:bbb*"] {
            assert!(!f(|p| p.images = vec![no.into()]).matches(&e), "{no}");
        }
        for yes in ["probe-*", "e25a09fd", "E25A"] {
            assert!(f(|p| p.containers = vec![yes.into()]).matches(&e), "{yes}");
        }
        for no in ["other", "e25b", "e25"] {
            assert!(!f(|p| p.containers = vec![no.into()]).matches(&e), "{no}");
        }
        // --image alone does not also ask for a container name.
        assert!(f(|p| p.images = vec!["*".into()]).matches(&e));
        assert!(!f(|p| p.images = vec!["*".into()]).matches(&ev()));
        assert!(!f(|p| p.containers = vec!["*".into()]).matches(&ev()));
        assert_eq!(
            Filter::compile(pb::EventFilter {
                containers: vec!["ok".into(), "".into()],
                ..Default::default()
            })
            .unwrap_err()
            .message(),
            "filter.containers[1]: an empty pattern matches nothing"
        );
    }

    /// Executables match by file name or by whole path; parents by ppid
    /// or by their executable; an event without a process matches neither.
    #[test]
    fn exe_and_parent_filters() {
        let e = Event {
            exe: "/tmp/x/evilbin".into(),
            ppid: 7,
            parent_exe: "/usr/bin/bash".into(),
            ..ev()
        };
        assert!(f(|p| p.exes = vec!["evilbin".into()]).matches(&e));
        assert!(f(|p| p.exes = vec!["evil*".into()]).matches(&e));
        assert!(f(|p| p.exes = vec!["/tmp/*/evilbin".into()]).matches(&e));
        assert!(!f(|p| p.exes = vec!["python3".into()]).matches(&e));
        assert!(!f(|p| p.exes = vec!["/evilbin".into()]).matches(&e));
        assert!(f(|p| p.parents = vec!["7".into()]).matches(&e));
        assert!(f(|p| p.parents = vec!["bash".into()]).matches(&e));
        assert!(!f(|p| p.parents = vec!["8".into(), "sh".into()]).matches(&e));
        assert!(!f(|p| p.exes = vec!["*".into()]).matches(&ev()));
        let s = Filter::compile(pb::EventFilter {
            exes: vec!["ok".into(), "".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "filter.exes[1]: an empty pattern matches nothing"
        );
        let s = Filter::compile(pb::EventFilter {
            parents: vec!["[".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(s.message().starts_with("filter.parents[0]: \"[\""), "{s}");
    }

    #[test]
    fn bad_filters_name_the_field() {
        let err = |edit: fn(&mut pb::EventFilter)| {
            let mut p = pb::EventFilter::default();
            edit(&mut p);
            let s = Filter::compile(p).unwrap_err();
            assert_eq!(s.code(), tonic::Code::InvalidArgument);
            s.message().to_string()
        };
        assert!(
            err(|p| p.dst_cidrs = vec!["10.0.0.0/8".into(), "nope".into()])
                .starts_with("filter.dst_cidrs[1]: \"nope\" is not a CIDR")
        );
        assert!(err(|p| p.verdicts = vec!["blocked".into()]).starts_with("filter.verdicts[0]"));
        assert!(err(|p| p.ports = vec![70000]).starts_with("filter.ports[0]: 70000"));
        assert_eq!(
            err(|p| p.protocols = vec!["sctp".into()]),
            "filter.protocols[0]: \"sctp\" is not a protocol events carry (one of tcp, udp, icmp, icmpv6, or ip-proto-N for another IP protocol number)"
        );
        assert!(
            err(|p| p.protocols = vec!["ip-proto-300".into()]).starts_with("filter.protocols[0]")
        );
        assert!(err(|p| p.countries = vec!["USA".into()]).starts_with("filter.countries[0]"));
        assert_eq!(
            err(|p| p.countries = vec!["DE".into(), "uk".into()]),
            "filter.countries[1]: \"uk\" is not an ISO 3166-1 alpha-2 country code; did you mean GB (the United Kingdom)?"
        );
        assert!(err(|p| p.countries = vec!["XX".into()]).starts_with("filter.countries[0]"));
        assert!(err(|p| p.cgroup_globs = vec!["/a/[".into()]).starts_with("filter.cgroup_globs[0]"));
        assert!(err(|p| p.pod_uids = vec!["pod-1".into()]).starts_with("filter.pod_uids[0]"));
    }
}
