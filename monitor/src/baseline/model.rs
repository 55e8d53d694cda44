//! The YAML of an `EgressBaseline`, read back with validation: every
//! problem with its file and line, as for policies (the same screen
//! against anchors, aliases and deep nesting).
use std::{collections::BTreeMap, net::IpAddr, path::Path};

use ipnetwork::IpNetwork;
use serde::Deserialize;

use super::{Dest, Workload};
use crate::{
    cloud::RegionPattern,
    policy::{
        compile::{self, Locator},
        model::{self, Document, Metadata, PolicyError, YamlKind},
        DomainPattern,
    },
};

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
}

/// The destinations one workload is known to use.
#[derive(Debug, Default)]
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
    Ok(Baseline {
        name: raw.metadata.name,
        workloads,
    })
}
