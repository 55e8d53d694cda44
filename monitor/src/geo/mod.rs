//! The country database: reading a MaxMind-format file in either schema,
//! and turning it into merged ranges for the kernel's country table.
//!
//! Two schemas are read:
//! - MaxMind GeoIP2/GeoLite2 Country/City: `country.iso_code`,
//!   `registered_country.iso_code`, `continent.code`;
//! - ip-location-db: `country_code`.
//!
//! Adjacent networks with the same region are merged before loading: the
//! kernel's LPM trie costs grow with its size, and a country database holds
//! many neighbouring networks of one country.
pub mod regions;
pub mod table;
mod tree;
pub mod writer;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;
use monitor_common::Region;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tree::Tree;

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read GeoIP database {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a MaxMind-format database: {source}")]
    Format {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("{path}: cannot decode the record of {network}: {source}")]
    Record {
        path: PathBuf,
        network: String,
        source: maxminddb::MaxMindDbError,
    },
    #[error("{path}: the search tree is damaged: {reason}")]
    Tree { path: PathBuf, reason: String },
    #[error("{path} holds no network with a country or continent (neither the GeoIP2 nor the ip-location-db country_code schema)")]
    Empty { path: PathBuf },
}

/// What identifies the database in force (for status and evidence).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GeoIdentity {
    pub path: PathBuf,
    pub database_type: String,
    pub build_epoch: u64,
    pub sha256: String,
    /// `geoip2` or `country_code`.
    pub schema: String,
    pub networks: usize,
    pub prefixes: usize,
}

/// A range of addresses in the 128-bit space (IPv4 as ::ffff:a.b.c.d).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionRange {
    pub start: u128,
    pub end: u128,
    pub region: Region,
}

/// A loaded database, reduced to merged ranges.
#[derive(Debug, Clone)]
pub struct GeoDb {
    pub identity: GeoIdentity,
    /// Sorted, non-overlapping, adjacent ranges of one region merged.
    pub ranges: Vec<RegionRange>,
}

#[derive(Deserialize)]
struct Names<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// The fields of both schemas that matter here.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country_code: Option<&'a str>,
    #[serde(borrow)]
    country: Option<Names<'a>>,
    #[serde(borrow)]
    registered_country: Option<Names<'a>>,
    #[serde(borrow)]
    continent: Option<Continent<'a>>,
}

fn code2(s: &str) -> Option<[u8; 2]> {
    let b = s.as_bytes();
    (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
        .then(|| [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
}

/// The region of a record: its country, with the continent from our table
/// (so every policy judges a country the same, whatever the database says);
/// the database's continent only where it names no known country.
fn region_of(record: &Record) -> Option<(Region, &'static str)> {
    let (country, schema) = match (
        record.country_code,
        &record.country,
        &record.registered_country,
    ) {
        (Some(c), _, _) => (code2(c), "country_code"),
        (None, Some(Names { iso_code: Some(c) }), _) => (code2(c), "geoip2"),
        (None, _, Some(Names { iso_code: Some(c) })) => (code2(c), "geoip2"),
        _ => (None, "geoip2"),
    };
    let table_continent = country
        .and_then(|c| regions::continent_of(std::str::from_utf8(&c).ok()?))
        .and_then(code2);
    let db_continent = record
        .continent
        .as_ref()
        .and_then(|c| c.code)
        .and_then(code2);
    let region = Region {
        country: country.unwrap_or_default(),
        continent: table_continent.or(db_continent).unwrap_or_default(),
    };
    (region != Region::default()).then_some((region, schema))
}

/// An address in the 128-bit space the kernel tries use.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A network as (first address, prefix length) in the 128-bit space.
pub fn network_to_u128(net: IpNetwork) -> (u128, u8) {
    match net {
        IpNetwork::V4(n) => (to_u128(IpAddr::V4(n.network())), 96 + n.prefix()),
        IpNetwork::V6(n) => (to_u128(IpAddr::V6(n.network())), n.prefix()),
    }
}

/// Back from the 128-bit space: IPv4-mapped addresses become IPv4.
pub fn from_u128(addr: u128) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The fewest prefixes that cover exactly `start..=end`.
pub fn range_to_prefixes(mut start: u128, end: u128, out: &mut Vec<(u128, u8)>) {
    loop {
        // Largest block aligned at `start` that does not pass `end`.
        let mut host_bits = if start == 0 {
            128
        } else {
            start.trailing_zeros()
        };
        while host_bits > 0 {
            let last = if host_bits == 128 {
                u128::MAX
            } else {
                start | ((1u128 << host_bits) - 1)
            };
            if last <= end {
                break;
            }
            host_bits -= 1;
        }
        out.push((start, (128 - host_bits) as u8));
        let last = if host_bits == 128 {
            u128::MAX
        } else {
            start | ((1u128 << host_bits) - 1)
        };
        if last >= end {
            return;
        }
        start = last + 1;
    }
}

/// Whether `next` goes on where `last` ends, in the same region.
fn continues(last: &RegionRange, next: &RegionRange) -> bool {
    last.region == next.region && last.end.checked_add(1) == Some(next.start)
}

/// Sorts ranges and merges neighbours of one region, in place: a database
/// of a million networks is 48 MB of ranges, and a sorted copy beside it
/// (or a stable sort's scratch) was most of the daemon's peak memory at
/// its start. The ranges are disjoint, so an unstable sort orders them the
/// same way; the memory the merge frees is given back.
pub fn merge_ranges(mut ranges: Vec<RegionRange>) -> Vec<RegionRange> {
    ranges.sort_unstable_by_key(|r| r.start);
    ranges.dedup_by(|next, last| {
        let merged = continues(last, next);
        if merged {
            last.end = next.end;
        }
        merged
    });
    ranges.shrink_to_fit();
    ranges
}

/// Networks read between two calls of `open_with`'s progress.
const PROGRESS_EVERY: usize = 1 << 16;

/// The largest database file read (a country database is 5-100 MB).
pub const MAX_DB_BYTES: u64 = 1 << 30;

impl GeoDb {
    /// Reads and reduces a database file.
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        Self::open_with(path, &|_| {})
    }

    /// `open`, telling `progress` how many networks were read so far
    /// (every `PROGRESS_EVERY`).
    pub fn open_with(path: &Path, progress: &dyn Fn(u64)) -> Result<Self, GeoError> {
        let read = |source| GeoError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_DB_BYTES {
            return Err(GeoError::Tree {
                path: path.to_path_buf(),
                reason: format!(
                    "{size} bytes is more than the {MAX_DB_BYTES} a country database can need (the largest known is under 100 MB); not read"
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        // The maxminddb crate's decoder indexes out of bounds on some
        // damaged data sections (found by the mutation test in
        // geo/tests.rs): a damaged file is an error, not a dead daemon.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::reduce(path, &bytes, progress)
        }))
        .unwrap_or_else(|_| {
            Err(GeoError::Tree {
                path: path.to_path_buf(),
                reason: "the data section is damaged (the MaxMind decoder failed on it)".into(),
            })
        })
    }

    fn reduce(path: &Path, bytes: &[u8], progress: &dyn Fn(u64)) -> Result<Self, GeoError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let reader = maxminddb::Reader::from_source(bytes).map_err(|source| GeoError::Format {
            path: path.to_path_buf(),
            source,
        })?;
        let tree = Tree::new(bytes, &reader.metadata).map_err(|reason| GeoError::Tree {
            path: path.to_path_buf(),
            reason,
        })?;
        // A country database holds a few hundred distinct records for a
        // million networks: each is decoded once, by the crate's own
        // decoder, through a lookup of the first address that points to it.
        let mut decoded: HashMap<usize, Option<(Region, &'static str)>> = HashMap::new();
        let mut ranges = Vec::new();
        let mut schemas: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut networks = 0usize;
        let mut failure = None;
        tree.walk(|start, end, pointer| {
            networks += 1;
            if networks.is_multiple_of(PROGRESS_EVERY) {
                progress(networks as u64);
            }
            let found = match decoded.get(&pointer) {
                Some(found) => *found,
                None => {
                    let ip = tree.address_in_db(start);
                    let found = match reader.lookup::<Record>(ip) {
                        Ok(Some(record)) => region_of(&record),
                        Ok(None) => None,
                        Err(source) => {
                            failure.get_or_insert(GeoError::Record {
                                path: path.to_path_buf(),
                                network: ip.to_string(),
                                source,
                            });
                            None
                        }
                    };
                    decoded.insert(pointer, found);
                    found
                }
            };
            if let Some((region, schema)) = found {
                *schemas.entry(schema).or_default() += 1;
                let range = RegionRange { start, end, region };
                // Neighbours in the walk's order are merged as they come
                // (about half of a country database's networks): the list
                // holds what is left, which `merge_ranges` sorts and merges.
                match ranges.last_mut() {
                    Some(last) if continues(last, &range) => last.end = end,
                    _ => ranges.push(range),
                }
            }
        })
        .map_err(|reason| GeoError::Tree {
            path: path.to_path_buf(),
            reason,
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if ranges.is_empty() {
            return Err(GeoError::Empty {
                path: path.to_path_buf(),
            });
        }
        let ranges = merge_ranges(ranges);
        let mut prefixes = Vec::new();
        let mut prefix_count = 0;
        for r in &ranges {
            prefixes.clear();
            range_to_prefixes(r.start, r.end, &mut prefixes);
            prefix_count += prefixes.len();
        }
        let schema = schemas
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, _)| s.to_string())
            .unwrap_or_default();
        Ok(Self {
            identity: GeoIdentity {
                path: path.to_path_buf(),
                database_type: reader.metadata.database_type.clone(),
                build_epoch: reader.metadata.build_epoch,
                sha256,
                schema,
                networks,
                prefixes: prefix_count,
            },
            ranges,
        })
    }

    /// Every prefix to load, with its region.
    pub fn prefixes(&self) -> impl Iterator<Item = (u128, u8, Region)> + '_ {
        self.ranges.iter().flat_map(|r| {
            let mut out = Vec::new();
            range_to_prefixes(r.start, r.end, &mut out);
            out.into_iter().map(move |(a, l)| (a, l, r.region))
        })
    }

    /// The region of one address, as the kernel would find it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Region> {
        let a = to_u128(ip);
        let i = self.ranges.partition_point(|r| r.start <= a);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (a <= r.end).then_some(r.region)
    }

    /// Prefix counts per country (or continent where there is no country).
    /// The countries the database places at least one address in.
    pub fn countries(&self) -> std::collections::BTreeSet<String> {
        // Codes first, then names: collecting a name per range into the set
        // sorted half a million strings (25 MB, at the start's peak).
        let mut codes = std::collections::BTreeSet::new();
        for r in &self.ranges {
            if r.region.country != [0, 0] {
                codes.insert(r.region.country);
            }
        }
        codes
            .into_iter()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .collect()
    }

    pub fn prefixes_per_region(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (_, _, region) in self.prefixes() {
            *counts.entry(region_label(&region)).or_default() += 1;
        }
        counts
    }
}

/// `DE`, or `EU` (continent only), for display.
pub fn region_label(region: &Region) -> String {
    if region.country != [0, 0] {
        String::from_utf8_lossy(&region.country).into_owned()
    } else if region.continent != [0, 0] {
        format!("continent:{}", String::from_utf8_lossy(&region.continent))
    } else {
        "unknown".into()
    }
}

#[cfg(test)]
mod tests;
