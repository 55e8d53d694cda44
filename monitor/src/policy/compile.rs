//! Validation and compilation of a policy document into what the kernel
//! maps hold: per-region rules, allow and deny CIDRs, cgroup globs.
use std::{collections::BTreeSet, path::Path};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use ipnetwork::IpNetwork;
use monitor_common::{action, rule, Region, RegionRule};
use sha2::{Digest, Sha256};

use super::model::{line_of, Document, Mode, PolicyDoc, PolicyError, API_VERSION, KIND};
use crate::{
    attribution::{self, Attribution},
    geo::regions,
};

/// A policy ready for the kernel (before it has an id).
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    pub mode: Mode,
    pub file: String,
    /// SHA-256 of the document's text.
    pub sha256: String,
    /// The document's text as compiled (what the store records: never
    /// re-read from a file that may have changed since).
    pub text: std::sync::Arc<str>,
    pub cgroup_globs: Vec<String>,
    /// The cgroup path globs (matches nothing when there are none).
    pub selector: GlobSet,
    /// Pod UIDs, normalised (lowercase, dashes).
    pub pods: BTreeSet<String>,
    pub unit_globs: Vec<String>,
    pub unit_selector: GlobSet,
    /// What the policy says of each region it mentions.
    pub region_rules: Vec<(Region, RegionRule)>,
    pub allow_cidrs: Vec<IpNetwork>,
    pub deny_cidrs: Vec<IpNetwork>,
    /// Countries that end up allowed / denied (for display).
    pub allowed_countries: BTreeSet<String>,
    pub denied_countries: BTreeSet<String>,
    pub source: PolicyDoc,
}

impl CompiledPolicy {
    /// Whether this policy selects the cgroup at `path` (relative to the
    /// cgroup2 mount) with attribution `attr`: a path glob matches it, it
    /// is the cgroup of a listed pod, or the cgroup of a matching unit.
    /// The kernel's ancestor walk extends each selection to the subtree.
    pub fn selects(&self, path: &str, attr: &Attribution) -> bool {
        self.selector.is_match(path)
            || attr.pod_cgroup().is_some_and(|uid| self.pods.contains(uid))
            || attr
                .unit_cgroup()
                .is_some_and(|unit| self.unit_selector.is_match(unit))
    }

    /// The selector for people: globs, `pod:UID`, `unit:NAME`.
    pub fn selector_terms(&self) -> Vec<String> {
        self.cgroup_globs
            .iter()
            .cloned()
            .chain(self.pods.iter().map(|p| format!("pod:{p}")))
            .chain(self.unit_globs.iter().map(|u| format!("unit:{u}")))
            .collect()
    }
}

fn code2(s: &str) -> [u8; 2] {
    let b = s.as_bytes();
    [b[0], b[1]]
}

/// Compiles a parsed document; `doc` gives the text for line numbers.
pub fn compile(
    file: &Path,
    doc: &Document,
    policy: PolicyDoc,
) -> Result<CompiledPolicy, PolicyError> {
    let err = |section: &str, token: Option<&str>, reason: String| PolicyError {
        file: file.display().to_string(),
        line: doc.first_line + line_of(doc.text, section, token) - 1,
        reason,
    };
    if policy.api_version != API_VERSION {
        return Err(err(
            "apiVersion",
            None,
            format!(
                "apiVersion is {:?}, expected {API_VERSION:?}",
                policy.api_version
            ),
        ));
    }
    if policy.kind != KIND {
        return Err(err(
            "kind",
            None,
            format!("kind is {:?}, expected {KIND:?}", policy.kind),
        ));
    }
    let name = &policy.metadata.name;
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(err(
            "metadata",
            Some(name),
            format!("metadata.name {name:?} must be 1-63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"),
        ));
    }

    let spec = &policy.spec;
    let sel = &spec.selector;
    if sel.cgroup_paths.is_empty() && sel.pods.is_empty() && sel.systemd_units.is_empty() {
        return Err(err(
            "selector",
            None,
            "spec.selector is empty: a policy must select cgroupPaths, pods or systemdUnits".into(),
        ));
    }
    let mut pods = BTreeSet::new();
    for uid in &sel.pods {
        let normal = attribution::normalize_uid(&uid.replace('_', "-")).ok_or_else(|| {
            err(
                "pods",
                Some(uid),
                format!("pod UID {uid:?} is not a Kubernetes UID (a UUID such as 1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506, or 32 hex digits for a static pod)"),
            )
        })?;
        pods.insert(normal);
    }
    let mut units = GlobSetBuilder::new();
    for pattern in &sel.systemd_units {
        attribution::check_unit_pattern(pattern)
            .map_err(|reason| err("systemdUnits", Some(pattern), reason))?;
        let glob = Glob::new(pattern).map_err(|e| {
            err(
                "systemdUnits",
                Some(pattern),
                format!("systemd unit glob {pattern:?}: {e}"),
            )
        })?;
        units.add(glob);
    }
    let unit_selector = units
        .build()
        .map_err(|e| err("systemdUnits", None, format!("systemd unit globs: {e}")))?;
    let mut builder = GlobSetBuilder::new();
    for pattern in &spec.selector.cgroup_paths {
        if !pattern.starts_with('/') {
            return Err(err(
                "cgroupPaths",
                Some(pattern),
                format!("cgroup path {pattern:?} must start with '/' (it is relative to the cgroup2 mount)"),
            ));
        }
        let trimmed = match pattern.trim_end_matches('/') {
            "" => "/",
            t => t,
        };
        let glob: Glob = GlobBuilder::new(trimmed)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                err(
                    "cgroupPaths",
                    Some(pattern),
                    format!("cgroup path glob {pattern:?}: {e}"),
                )
            })?;
        builder.add(glob);
    }
    let selector = builder
        .build()
        .map_err(|e| err("cgroupPaths", None, format!("cgroup path globs: {e}")))?;

    // Normalise and check region names.
    let countries = |section: &str, list: &[String]| -> Result<BTreeSet<String>, PolicyError> {
        list.iter()
            .map(|c| {
                let up = c.to_ascii_uppercase();
                if regions::is_country(&up) {
                    Ok(up)
                } else {
                    Err(err(
                        section,
                        Some(c),
                        format!("{c:?} is not an ISO 3166-1 alpha-2 country code"),
                    ))
                }
            })
            .collect()
    };
    let continents = |section: &str, list: &[String]| -> Result<BTreeSet<String>, PolicyError> {
        list.iter()
            .map(|c| {
                let up = c.to_ascii_uppercase();
                if regions::is_continent(&up) {
                    Ok(up)
                } else {
                    Err(err(
                        section,
                        Some(c),
                        format!(
                            "{c:?} is not a continent code (one of {})",
                            regions::CONTINENTS.join(" ")
                        ),
                    ))
                }
            })
            .collect()
    };
    let groups = |section: &str, list: &[String]| -> Result<BTreeSet<&'static str>, PolicyError> {
        let mut out = BTreeSet::new();
        for g in list {
            let up = g.to_ascii_uppercase();
            let Some(members) = regions::group_members(&up) else {
                return Err(err(
                    section,
                    Some(g),
                    format!(
                        "{g:?} is not a known group (one of {})",
                        regions::GROUPS.join(" ")
                    ),
                ));
            };
            out.extend(members);
        }
        Ok(out)
    };
    let cidrs = |section: &str, list: &[String]| -> Result<Vec<IpNetwork>, PolicyError> {
        list.iter()
            .map(|c| {
                let net: IpNetwork = c
                    .parse()
                    .map_err(|e| err(section, Some(c), format!("{c:?} is not a CIDR: {e}")))?;
                if net.network() != net.ip() {
                    return Err(err(
                        section,
                        Some(c),
                        format!(
                            "{c:?} has host bits set; did you mean {}/{}?",
                            net.network(),
                            net.prefix()
                        ),
                    ));
                }
                Ok(net)
            })
            .collect()
    };

    let allow_countries = countries("allow", &spec.allow.countries)?;
    let allow_continents = continents("allow", &spec.allow.continents)?;
    let allow_groups = groups("allow", &spec.allow.groups)?;
    let allow_cidrs = cidrs("allow", &spec.allow.cidrs)?;
    let deny_countries = countries("deny", &spec.deny.countries)?;
    let deny_continents = continents("deny", &spec.deny.continents)?;
    let deny_groups = groups("deny", &spec.deny.groups)?;
    let deny_cidrs = cidrs("deny", &spec.deny.cidrs)?;

    // Every region the geo trie can hold: each known country with its
    // continent, and each continent without a country.
    let mut region_rules = Vec::new();
    let mut allowed_countries = BTreeSet::new();
    let mut denied_countries = BTreeSet::new();
    let no_country = regions::CONTINENTS.iter().map(|k| ("", *k));
    for (country, continent) in regions::countries().chain(no_country) {
        let has_country = !country.is_empty();
        let decided = if has_country && deny_countries.contains(country) {
            Some((action::DENY, rule::COUNTRY))
        } else if deny_continents.contains(continent) {
            Some((action::DENY, rule::CONTINENT))
        } else if has_country && deny_groups.contains(country) {
            Some((action::DENY, rule::GROUP))
        } else if has_country && allow_countries.contains(country) {
            Some((action::ALLOW, rule::COUNTRY))
        } else if allow_continents.contains(continent) {
            Some((action::ALLOW, rule::CONTINENT))
        } else if has_country && allow_groups.contains(country) {
            Some((action::ALLOW, rule::GROUP))
        } else {
            None
        };
        let Some((act, why)) = decided else { continue };
        if has_country {
            if act == action::ALLOW {
                allowed_countries.insert(country.to_string());
            } else {
                denied_countries.insert(country.to_string());
            }
        }
        let region = Region {
            country: if has_country { code2(country) } else { [0, 0] },
            continent: code2(continent),
        };
        region_rules.push((
            region,
            RegionRule {
                action: act,
                rule: why,
                _pad: [0; 2],
            },
        ));
    }

    Ok(CompiledPolicy {
        name: name.clone(),
        mode: spec.mode,
        file: file.display().to_string(),
        sha256: hex::encode(Sha256::digest(doc.text.as_bytes())),
        text: doc.text.into(),
        cgroup_globs: spec.selector.cgroup_paths.clone(),
        selector,
        pods,
        unit_globs: spec.selector.systemd_units.clone(),
        unit_selector,
        region_rules,
        allow_cidrs,
        deny_cidrs,
        allowed_countries,
        denied_countries,
        source: policy,
    })
}
