//! Validation and compilation of a policy document into what the kernel
//! maps hold: per-region rules, allow and deny CIDRs, cgroup globs.
use std::{collections::BTreeSet, path::Path};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use ipnetwork::IpNetwork;
use monitor_common::{action, rule, Region, RegionRule};
use sha2::{Digest, Sha256};

use super::model::{
    line_of, Document, Mode, PolicyDoc, PolicyError, Rules, Selector, API_VERSION, KIND,
};
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
    /// The line of `name:` in the file (where a second policy of one name
    /// is reported).
    pub line: usize,
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
    /// The link's own destinations, allowed unless `judgeLinkLocal`
    /// (`LINK_LOCAL`; empty when judged).
    pub link_local: Vec<IpNetwork>,
    pub deny_cidrs: Vec<IpNetwork>,
    /// Domain patterns, normalised (lower case, no trailing dot).
    pub allow_domains: Vec<DomainPattern>,
    pub deny_domains: Vec<DomainPattern>,
    /// Cloud-region patterns (`aws:eu-*`).
    pub allow_cloud: Vec<crate::cloud::RegionPattern>,
    pub deny_cloud: Vec<crate::cloud::RegionPattern>,
    /// Countries that end up allowed / denied (for display).
    pub allowed_countries: BTreeSet<String>,
    pub denied_countries: BTreeSet<String>,
    /// The baseline of `spec.baseline`, as read when the policy was
    /// loaded (see `policy::baseline`; `None` when it names none).
    pub baseline: Option<BaselineText>,
    pub source: PolicyDoc,
}

/// A policy's baseline file as it was read and checked: the text the
/// daemon's drift alerts compare to, never re-read from a file that may
/// have changed since.
#[derive(Debug, Clone)]
pub struct BaselineText {
    /// As `spec.baseline` gives it.
    pub given: String,
    /// The path it was read from.
    pub path: String,
    /// Its `metadata.name`.
    pub name: String,
    pub sha256: String,
    pub text: std::sync::Arc<str>,
}

/// Destinations that never leave the link: IPv4 link-local (169.254/16,
/// the cloud metadata service among them), the local network control
/// block of multicast (224.0.0.0/24: mDNS, IGMP, routing protocols),
/// limited broadcast (DHCP), IPv6 link-local unicast, and interface- and
/// link-local multicast (neighbour discovery, MLD, mDNS). Wider multicast
/// scopes (239/8, ff05::/16, ff0e::/16) can leave the link and are judged.
pub const LINK_LOCAL: [&str; 6] = [
    "169.254.0.0/16",
    "224.0.0.0/24",
    "255.255.255.255/32",
    "fe80::/10",
    "ff01::/16",
    "ff02::/16",
];

impl CompiledPolicy {
    /// The allowed networks the decision uses: the policy's own and the
    /// link's (unless judged).
    pub fn allowed_networks(&self) -> impl Iterator<Item = &IpNetwork> {
        self.allow_cidrs.iter().chain(&self.link_local)
    }

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
    let at = Locator { file, doc };
    check_header(&at, &policy)?;
    let spec = &policy.spec;
    let sel = &spec.selector;
    check_selector_not_empty(&at, sel)?;
    let pods = pod_uids(&at, &sel.pods)?;
    let unit_selector = unit_globs(&at, &sel.systemd_units)?;
    let selector = cgroup_globs(&at, &sel.cgroup_paths)?;
    let allow = Side::of(&at, "allow", &spec.allow)?;
    let deny = Side::of(&at, "deny", &spec.deny)?;
    let decisions = region_decisions(&allow, &deny);
    let (allowed_countries, denied_countries) = display_sets(&decisions);

    Ok(CompiledPolicy {
        name: policy.metadata.name.clone(),
        mode: spec.mode,
        file: file.display().to_string(),
        line: doc.first_line + line_of(doc.text, "metadata", Some(&policy.metadata.name)) - 1,
        sha256: hex::encode(Sha256::digest(doc.text.as_bytes())),
        text: doc.text.into(),
        cgroup_globs: sel.cgroup_paths.clone(),
        selector,
        pods,
        unit_globs: sel.systemd_units.clone(),
        unit_selector,
        region_rules: region_rules(&decisions),
        allow_cidrs: allow.cidrs,
        link_local: if spec.judge_link_local {
            Vec::new()
        } else {
            LINK_LOCAL
                .iter()
                .map(|n| n.parse().expect("a literal network"))
                .collect()
        },
        deny_cidrs: deny.cidrs,
        allow_domains: allow.domains,
        deny_domains: deny.domains,
        allow_cloud: allow.cloud,
        deny_cloud: deny.cloud,
        allowed_countries,
        denied_countries,
        baseline: None,
        source: policy,
    })
}

/// Where a document's problems are reported: its file, and its text for lines.
pub(crate) struct Locator<'a> {
    pub(crate) file: &'a Path,
    pub(crate) doc: &'a Document<'a>,
}

impl Locator<'_> {
    /// The error at `token` after the line of `section:` (or at the section).
    pub(crate) fn err(&self, section: &str, token: Option<&str>, reason: String) -> PolicyError {
        PolicyError {
            file: self.file.display().to_string(),
            line: self.doc.first_line + line_of(self.doc.text, section, token) - 1,
            reason,
        }
    }
}

/// Checks that a document's `apiVersion` is ours and its `kind` is `want`.
pub(crate) fn check_kind(
    at: &Locator,
    api_version: &str,
    kind: &str,
    want: &str,
) -> Result<(), PolicyError> {
    if api_version != API_VERSION {
        return Err(at.err(
            "apiVersion",
            None,
            format!("apiVersion is {api_version:?}, expected {API_VERSION:?}"),
        ));
    }
    if kind != want {
        return Err(at.err("kind", None, format!("kind is {kind:?}, expected {want:?}")));
    }
    Ok(())
}

/// Checks `apiVersion`, `kind` and `metadata.name`.
fn check_header(at: &Locator, policy: &PolicyDoc) -> Result<(), PolicyError> {
    check_kind(at, &policy.api_version, &policy.kind, KIND)?;
    let name = &policy.metadata.name;
    if !is_valid_name(name) {
        return Err(at.err(
            "metadata",
            Some(name),
            format!("metadata.name {name:?} must be 1-63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"),
        ));
    }
    Ok(())
}

/// Whether `name` is 1-63 of `[a-z0-9.-]`, starting and ending alphanumeric.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Rejects a selector that names no cgroup path, pod or unit.
fn check_selector_not_empty(at: &Locator, sel: &Selector) -> Result<(), PolicyError> {
    if sel.cgroup_paths.is_empty() && sel.pods.is_empty() && sel.systemd_units.is_empty() {
        return Err(at.err(
            "selector",
            None,
            "spec.selector is empty: a policy must select cgroupPaths, pods or systemdUnits".into(),
        ));
    }
    Ok(())
}

/// Normalises the selector's pod UIDs (lowercase, dashes), rejecting non-UIDs.
fn pod_uids(at: &Locator, uids: &[String]) -> Result<BTreeSet<String>, PolicyError> {
    let mut pods = BTreeSet::new();
    for uid in uids {
        pods.insert(pod_uid(uid).map_err(|reason| at.err("pods", Some(uid), reason))?);
    }
    Ok(pods)
}

/// A pod UID as selectors and the kernel's attribution spell it (lowercase,
/// dashes), or why it is not one.
pub fn pod_uid(uid: &str) -> Result<String, String> {
    attribution::normalize_uid(&uid.replace('_', "-")).ok_or_else(|| {
        format!("pod UID {uid:?} is not a Kubernetes UID (a UUID such as 1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506, or 32 hex digits for a static pod)")
    })
}

/// Checks the selector's systemd unit patterns and builds their glob set.
fn unit_globs(at: &Locator, patterns: &[String]) -> Result<GlobSet, PolicyError> {
    let mut units = GlobSetBuilder::new();
    for pattern in patterns {
        attribution::check_unit_pattern(pattern)
            .map_err(|reason| at.err("systemdUnits", Some(pattern), reason))?;
        let glob = Glob::new(pattern).map_err(|e| {
            at.err(
                "systemdUnits",
                Some(pattern),
                format!("systemd unit glob {pattern:?}: {e}"),
            )
        })?;
        units.add(glob);
    }
    units
        .build()
        .map_err(|e| at.err("systemdUnits", None, format!("systemd unit globs: {e}")))
}

/// Checks the selector's cgroup path patterns and builds their glob set.
fn cgroup_globs(at: &Locator, patterns: &[String]) -> Result<GlobSet, PolicyError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        if !pattern.starts_with('/') {
            return Err(at.err(
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
                at.err(
                    "cgroupPaths",
                    Some(pattern),
                    format!("cgroup path glob {pattern:?}: {e}"),
                )
            })?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| at.err("cgroupPaths", None, format!("cgroup path globs: {e}")))
}

/// One side of a policy (`allow` or `deny`), its names normalised and checked.
struct Side {
    countries: BTreeSet<String>,
    continents: BTreeSet<String>,
    /// The member countries of the named groups.
    groups: BTreeSet<&'static str>,
    cidrs: Vec<IpNetwork>,
    domains: Vec<DomainPattern>,
    cloud: Vec<crate::cloud::RegionPattern>,
}

impl Side {
    /// Checks one side's lists in document order: countries, continents, groups, CIDRs.
    fn of(at: &Locator, section: &str, rules: &Rules) -> Result<Side, PolicyError> {
        Ok(Side {
            countries: countries(at, section, &rules.countries)?,
            continents: continents(at, section, &rules.continents)?,
            groups: group_members(at, section, &rules.groups)?,
            cidrs: cidrs(at, section, &rules.cidrs)?,
            domains: domains(at, section, &rules.domains)?,
            cloud: cloud_regions(at, section, &rules.cloud_regions)?,
        })
    }
}

/// A domain rule: one name, or (`*.`) every name below `name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DomainPattern {
    /// Lower case, without a trailing dot, without the `*.`.
    pub name: String,
    pub wildcard: bool,
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// The host of what looks like a URL (`https://login.example.com/path`,
/// `login.example.com/path`, `login.example.com:443`), or None.
fn url_host(text: &str) -> Option<&str> {
    let rest = match text.split_once("://") {
        Some((_, rest)) => rest,
        None if text.contains(['/', ':', '?', '#', '@']) => text,
        None => return None,
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host);
    Some(host)
}

impl DomainPattern {
    /// Whether `name` (lower case, no trailing dot) is this name, or for
    /// a wildcard a name below it.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.len() > self.name.len()
                && name.ends_with(&self.name)
                && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
        } else {
            name == self.name
        }
    }

    /// Parses `api.openai.com` or `*.salesforce.com`: RFC 1035 labels
    /// (letters, digits, inner hyphens; a leading digit as RFC 1123 allows),
    /// `*` only as the whole first label, within what the kernel matches.
    pub fn parse(text: &str) -> Result<DomainPattern, String> {
        use monitor_common::dns::{MAX_LABELS, SUFFIXES};
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        if name.is_empty() {
            return Err(format!("{text:?} is not a domain name"));
        }
        if let Some(host) = url_host(name) {
            return Err(format!(
                "{text:?} is a URL; a domain rule takes a DNS name, not a URL (here: {host:?})"
            ));
        }
        if name.len() > 253 {
            return Err(format!("{text:?} is longer than 253 characters"));
        }
        let labels: Vec<&str> = name.split('.').collect();
        for label in &labels {
            if label.contains('*') {
                return Err(format!(
                    "{text:?}: a wildcard may only be the whole first label (`*.example.com`)"
                ));
            }
            if label.is_empty() {
                return Err(format!("{text:?} has an empty label"));
            }
            if label.len() > 63 {
                return Err(format!(
                    "{text:?}: the label {label:?} is longer than 63 characters"
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(format!(
                    "{text:?}: the label {label:?} has a character other than letters, digits and '-'"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!(
                    "{text:?}: the label {label:?} starts or ends with '-'"
                ));
            }
        }
        if labels.len() > MAX_LABELS {
            return Err(format!(
                "{text:?} has {} labels; names of more than {MAX_LABELS} labels are not matched",
                labels.len()
            ));
        }
        if wildcard && labels.len() > SUFFIXES {
            return Err(format!(
                "{text:?}: a wildcard matches below a name of at most {SUFFIXES} labels"
            ));
        }
        Ok(DomainPattern {
            name: name.to_string(),
            wildcard,
        })
    }
}

/// Domain patterns, checked and normalised, without duplicates.
pub(crate) fn domains(
    at: &Locator,
    section: &str,
    list: &[String],
) -> Result<Vec<DomainPattern>, PolicyError> {
    let mut out: Vec<DomainPattern> = list
        .iter()
        .map(|d| DomainPattern::parse(d).map_err(|reason| at.err(section, Some(d), reason)))
        .collect::<Result<_, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Cloud-region patterns, checked.
pub(crate) fn cloud_regions(
    at: &Locator,
    section: &str,
    list: &[String],
) -> Result<Vec<crate::cloud::RegionPattern>, PolicyError> {
    list.iter()
        .map(|r| {
            crate::cloud::RegionPattern::parse(r).map_err(|reason| at.err(section, Some(r), reason))
        })
        .collect()
}

/// Uppercases codes, rejecting any that `valid` refuses with `why`.
fn codes(
    at: &Locator,
    section: &str,
    list: &[String],
    valid: fn(&str) -> bool,
    why: impl Fn(&str) -> String,
) -> Result<BTreeSet<String>, PolicyError> {
    list.iter()
        .map(|c| {
            let up = c.to_ascii_uppercase();
            if valid(&up) {
                Ok(up)
            } else {
                Err(at.err(section, Some(c), why(c)))
            }
        })
        .collect()
}

/// Country codes (ISO 3166-1 alpha-2).
pub(crate) fn countries(
    at: &Locator,
    section: &str,
    list: &[String],
) -> Result<BTreeSet<String>, PolicyError> {
    codes(
        at,
        section,
        list,
        regions::is_country,
        regions::not_a_country,
    )
}

/// Continent codes.
fn continents(
    at: &Locator,
    section: &str,
    list: &[String],
) -> Result<BTreeSet<String>, PolicyError> {
    codes(at, section, list, regions::is_continent, |c| {
        format!(
            "{c:?} is not a continent code (one of {})",
            regions::CONTINENTS.join(" ")
        )
    })
}

/// The member countries of the named groups, rejecting an unknown group.
fn group_members(
    at: &Locator,
    section: &str,
    list: &[String],
) -> Result<BTreeSet<&'static str>, PolicyError> {
    let mut out = BTreeSet::new();
    for g in list {
        let up = g.to_ascii_uppercase();
        let Some(members) = regions::group_members(&up) else {
            return Err(at.err(
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
}

/// Parses CIDRs, rejecting a malformed one or one with host bits set.
pub(crate) fn cidrs(
    at: &Locator,
    section: &str,
    list: &[String],
) -> Result<Vec<IpNetwork>, PolicyError> {
    list.iter()
        .map(|c| {
            let net: IpNetwork = c
                .parse()
                .map_err(|e| at.err(section, Some(c), format!("{c:?} is not a CIDR: {e}")))?;
            if net.network() != net.ip() {
                return Err(at.err(
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
}

/// What the policy decides for one region of the geo trie.
struct Decision {
    /// Empty for a continent without a country.
    country: &'static str,
    continent: &'static str,
    action: u8,
    rule: u8,
}

/// The decision for every region the geo trie can hold (each known country
/// with its continent, and each continent without a country), in that
/// order; regions the policy does not mention are left out.
fn region_decisions(allow: &Side, deny: &Side) -> Vec<Decision> {
    let no_country = regions::CONTINENTS.iter().map(|k| ("", *k));
    regions::countries()
        .chain(no_country)
        .filter_map(|(country, continent)| {
            let (action, rule) = decide(country, continent, allow, deny)?;
            Some(Decision {
                country,
                continent,
                action,
                rule,
            })
        })
        .collect()
}

/// The (action, rule) for one region: deny beats allow, and within each a
/// country beats its continent, which beats a group.
fn decide(country: &str, continent: &str, allow: &Side, deny: &Side) -> Option<(u8, u8)> {
    let has_country = !country.is_empty();
    if has_country && deny.countries.contains(country) {
        Some((action::DENY, rule::COUNTRY))
    } else if deny.continents.contains(continent) {
        Some((action::DENY, rule::CONTINENT))
    } else if has_country && deny.groups.contains(country) {
        Some((action::DENY, rule::GROUP))
    } else if has_country && allow.countries.contains(country) {
        Some((action::ALLOW, rule::COUNTRY))
    } else if allow.continents.contains(continent) {
        Some((action::ALLOW, rule::CONTINENT))
    } else if has_country && allow.groups.contains(country) {
        Some((action::ALLOW, rule::GROUP))
    } else {
        None
    }
}

/// The kernel's rule for each decided region.
fn region_rules(decisions: &[Decision]) -> Vec<(Region, RegionRule)> {
    decisions
        .iter()
        .map(|d| {
            let region = Region {
                country: if d.country.is_empty() {
                    [0, 0]
                } else {
                    code2(d.country)
                },
                continent: code2(d.continent),
            };
            let rule = RegionRule {
                action: d.action,
                rule: d.rule,
                _pad: [0; 2],
            };
            (region, rule)
        })
        .collect()
}

/// The countries that end up allowed and denied (for display).
fn display_sets(decisions: &[Decision]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for d in decisions.iter().filter(|d| !d.country.is_empty()) {
        if d.action == action::ALLOW {
            allowed.insert(d.country.to_string());
        } else {
            denied.insert(d.country.to_string());
        }
    }
    (allowed, denied)
}
