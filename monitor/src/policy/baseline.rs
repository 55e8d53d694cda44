//! An `EgressBaseline`: the destinations each workload is known to use,
//! as people reviewed them. Its YAML is read back with validation (every
//! problem with its file and line, the same screen against anchors,
//! aliases and deep nesting as policies), and it answers whether it covers
//! a destination (`Known::covers`). A policy refers to one by
//! `spec.baseline`; `baseline record` writes one, `baseline diff` and the
//! daemon's drift alerts compare flows and events to it.
//!
//! A destination is known by the most specific thing recorded of it: the
//! DNS name the workload resolved, else the cloud region of the address,
//! else (private, loopback and link-local addresses) the range it lies in,
//! else its country, else the address itself.
use std::{collections::BTreeMap, fmt, net::IpAddr, path::Path};

use ipnetwork::IpNetwork;
use serde::Deserialize;

use super::{
    compile::{self, DomainPattern, Locator},
    model::{self, Document, Metadata, PolicyError, YamlKind},
};
use crate::cloud::RegionPattern;

/// A workload as a baseline keys it: the pod of a cgroup that is a pod's,
/// else the cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Pod(String),
    Cgroup(String),
}

impl Workload {
    /// The workload of a cgroup at `cgroup_path`, in pod `pod_uid` (empty:
    /// none).
    pub fn new(pod_uid: &str, cgroup_path: &str) -> Self {
        if pod_uid.is_empty() {
            Workload::Cgroup(cgroup_path.to_string())
        } else {
            Workload::Pod(pod_uid.to_string())
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// What was recorded of a destination (a flow's or an event's fields).
#[derive(Debug, Clone, Copy, Default)]
pub struct Place<'a> {
    pub dns_name: &'a str,
    /// `provider:region`.
    pub cloud_region: &'a str,
    pub dst_ip: &'a str,
    pub country: &'a str,
}

impl Dest {
    pub fn of(p: Place<'_>) -> Self {
        // A name a baseline could not list (an `_srv` label, say) is
        // passed over for what else is known of the address.
        if let Ok(d) = DomainPattern::parse(p.dns_name) {
            if !d.wildcard {
                return Dest::Name(d.name);
            }
        }
        if !p.cloud_region.is_empty() {
            return Dest::CloudRegion(p.cloud_region.to_string());
        }
        let Ok(ip) = p.dst_ip.parse::<IpAddr>() else {
            // Never matches a baseline's ranges: reported, not passed over.
            return Dest::Cidr(p.dst_ip.to_string());
        };
        let local = PRIVATE
            .iter()
            .chain(compile::LINK_LOCAL.iter())
            .filter_map(|c| c.parse::<IpNetwork>().ok())
            .find(|n| n.contains(ip));
        if let Some(net) = local {
            return Dest::Cidr(net.to_string());
        }
        if !p.country.is_empty() {
            return Dest::Country(p.country.to_string());
        }
        Dest::Cidr(IpNetwork::from(ip).to_string())
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

pub const KIND: &str = "EgressBaseline";

const BASELINE: YamlKind = YamlKind {
    noun: "a baseline",
    needs_depth: 4,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BaselineDoc {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    workloads: Vec<WorkloadDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadDoc {
    cgroup: Option<String>,
    pod: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    cloud_regions: Vec<String>,
    #[serde(default)]
    cidrs: Vec<String>,
    #[serde(default)]
    countries: Vec<String>,
}

/// A baseline, checked.
#[derive(Debug)]
pub struct Baseline {
    pub name: String,
    pub workloads: BTreeMap<Workload, Known>,
    /// Every workload's destinations together: what a workload the
    /// baseline does not list (a new replica, a pod recreated with a new
    /// UID) is compared to.
    pub all: Known,
}

impl Baseline {
    /// What `w` is compared to: its own entry, else (`false`) the
    /// destinations of all the workloads listed.
    pub fn known_for(&self, w: &Workload) -> (&Known, bool) {
        match self.workloads.get(w) {
            Some(k) => (k, true),
            None => (&self.all, false),
        }
    }
}

/// The destinations one workload is known to use.
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub names: Vec<DomainPattern>,
    pub cloud_regions: Vec<(String, RegionPattern)>,
    pub cidrs: Vec<IpNetwork>,
    pub countries: Vec<String>,
}

impl Known {
    /// Whether the baseline covers `dest`, a destination at `ip`: a name
    /// by its names (`*.` wildcards too), a cloud region by its regions
    /// (`aws:eu-*` too), a range or unplaced address by whether its
    /// ranges hold the address, a country by its countries.
    pub fn covers(&self, dest: &Dest, ip: Option<IpAddr>) -> bool {
        match dest {
            Dest::Name(n) => self.names.iter().any(|p| p.matches(n)),
            Dest::CloudRegion(r) => {
                let (provider, region) = r.split_once(':').unwrap_or((r, ""));
                self.cloud_regions
                    .iter()
                    .any(|(_, p)| p.matches(provider, region))
            }
            Dest::Cidr(_) => ip.is_some_and(|ip| self.cidrs.iter().any(|n| n.contains(ip))),
            Dest::Country(c) => self.countries.iter().any(|k| k == c),
        }
    }

    /// What `dest` was compared to: the baseline's list of its kind.
    pub fn compared_to(&self, dest: &Dest) -> Vec<String> {
        match dest {
            Dest::Name(_) => self.names.iter().map(ToString::to_string).collect(),
            Dest::CloudRegion(_) => self.cloud_regions.iter().map(|(s, _)| s.clone()).collect(),
            Dest::Cidr(_) => self.cidrs.iter().map(ToString::to_string).collect(),
            Dest::Country(_) => self.countries.clone(),
        }
    }

    /// Adds `other`'s destinations (each once).
    fn merge(&mut self, other: &Known) {
        fn add<T: Clone>(to: &mut Vec<T>, from: &[T], same: impl Fn(&T, &T) -> bool) {
            for x in from {
                if !to.iter().any(|y| same(x, y)) {
                    to.push(x.clone());
                }
            }
        }
        add(&mut self.names, &other.names, PartialEq::eq);
        add(&mut self.cloud_regions, &other.cloud_regions, |a, b| {
            a.0 == b.0
        });
        add(&mut self.cidrs, &other.cidrs, PartialEq::eq);
        add(&mut self.countries, &other.countries, PartialEq::eq);
    }
}

/// Reads and checks the baseline file at `path`.
pub fn load(path: &Path) -> Result<Baseline, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
        file: path.display().to_string(),
        line: 0,
        reason: format!("cannot read the baseline: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and checks a baseline's text (`file` names it in errors).
pub fn parse(file: &Path, text: &str) -> Result<Baseline, PolicyError> {
    let docs = model::documents(text);
    if docs.len() > 1 {
        return Err(PolicyError {
            file: file.display().to_string(),
            line: docs[1].first_line.saturating_sub(1).max(1),
            reason: "a baseline file holds one document; this `---` starts a second".into(),
        });
    }
    let doc = Document {
        text: docs.first().map_or("", |d| d.text),
        first_line: docs.first().map_or(1, |d| d.first_line),
    };
    let raw: BaselineDoc = model::parse_as(file, &doc, &BASELINE)?;
    let at = Locator { file, doc: &doc };
    compile::check_kind(&at, &raw.api_version, &raw.kind, KIND)?;
    if raw.metadata.name.trim().is_empty() {
        return Err(at.err("name", None, "metadata.name is empty".into()));
    }
    let mut workloads = BTreeMap::new();
    for (i, w) in raw.spec.workloads.into_iter().enumerate() {
        let key = match (w.cgroup, w.pod) {
            (Some(c), None) if !c.is_empty() => Workload::Cgroup(c),
            (None, Some(p)) if !p.is_empty() => Workload::Pod(p),
            (Some(c), Some(_)) => {
                return Err(at.err(
                    "workloads",
                    Some(&c),
                    format!("workloads[{i}] has both cgroup and pod; a workload is one of them"),
                ))
            }
            _ => {
                return Err(at.err(
                    "workloads",
                    None,
                    format!("workloads[{i}] names no workload: give `cgroup: PATH` or `pod: UID` (not empty)"),
                ))
            }
        };
        let token = match &key {
            Workload::Cgroup(v) | Workload::Pod(v) => v.clone(),
        };
        let known = Known {
            names: compile::domains(&at, "names", &w.names)?,
            cloud_regions: compile::cloud_regions(&at, "cloudRegions", &w.cloud_regions)?
                .into_iter()
                .zip(w.cloud_regions.iter().cloned())
                .map(|(p, s)| (s, p))
                .collect(),
            cidrs: compile::cidrs(&at, "cidrs", &w.cidrs)?,
            countries: compile::countries(&at, "countries", &w.countries)?
                .into_iter()
                .collect(),
        };
        if workloads.insert(key.clone(), known).is_some() {
            return Err(at.err(
                "workloads",
                Some(&token),
                format!("{key} is listed twice; give each workload once"),
            ));
        }
    }
    let mut all = Known::default();
    for k in workloads.values() {
        all.merge(k);
    }
    Ok(Baseline {
        name: raw.metadata.name,
        workloads,
        all,
    })
}
