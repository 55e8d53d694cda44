//! How often the country database puts a cloud region's addresses in the
//! EEA, with and without the regions' documented locations. Not a test of
//! anything: a measurement with the real data, printed.
//!
//! `cargo xtask setup && cargo test --release -p monitor cloud::measure -- --ignored --nocapture`
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnetwork::IpNetwork;

use super::{load_dir, CloudRange};
use crate::geo::{regions::group_members, GeoDb};

/// splitmix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A uniformly drawn address of `net`.
fn address_in(net: IpNetwork, rng: &mut Rng) -> IpAddr {
    match net {
        IpNetwork::V4(n) => {
            let host = 32 - u32::from(n.prefix());
            let mask = if host == 32 {
                u32::MAX
            } else {
                (1u32 << host) - 1
            };
            let bits = u32::from(n.network()) | (rng.next() as u32 & mask);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpNetwork::V6(n) => {
            let host = 128 - u32::from(n.prefix());
            let mask = if host == 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (r & mask)))
        }
    }
}

/// VmRSS of this process.
fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    unlocated: usize,
    db_eea: usize,
    after_eea: usize,
    db_wrong: usize,
    after_wrong: usize,
    doc_eea: usize,
    doc_eea_db_eea: usize,
    doc_eea_after_eea: usize,
    doc_other_db_eea: usize,
    doc_other_after_eea: usize,
}

#[test]
#[ignore = "needs .cache/cloud and .cache/geoip (cargo xtask setup); prints numbers"]
fn eea_share_with_and_without_cloud_locations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rss_before = rss_kib();
    let started = std::time::Instant::now();
    let cloud = load_dir(&root.join(".cache/cloud")).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "loaded {} ranges, {} regions, {} trie entries in {:?}, resident memory +{} KiB: {}",
        cloud.ranges().len(),
        cloud.regions().len(),
        cloud.entries().len(),
        started.elapsed(),
        rss_kib().saturating_sub(rss_before),
        cloud.summary()
    );
    let geo = GeoDb::open(&root.join(".cache/geoip/geo-whois-asn-country.mmdb"))
        .unwrap_or_else(|e| panic!("{e}"));
    let eea = group_members("EEA").expect("EEA group");
    let in_eea = |country: &[u8; 2]| eea.iter().any(|c| c.as_bytes() == country);
    type Filter = fn(&CloudRange) -> bool;
    let samples: [(&str, Filter); 4] = [
        ("aws eu-*", |r| {
            &*r.provider == "aws" && r.region.starts_with("eu-")
        }),
        ("gcp europe-*", |r| {
            &*r.provider == "gcp" && r.region.starts_with("europe-")
        }),
        ("aws us-*", |r| {
            &*r.provider == "aws" && r.region.starts_with("us-")
        }),
        ("gcp us-*", |r| {
            &*r.provider == "gcp" && r.region.starts_with("us-")
        }),
    ];
    const N: usize = 1000;
    for (label, filter) in samples {
        // One per network (a network repeats for each service).
        let mut nets: Vec<&CloudRange> = cloud.ranges().iter().filter(|r| filter(r)).collect();
        nets.dedup_by_key(|r| r.net);
        let mut rng = Rng(0x5eed);
        let mut t = Tally::default();
        for _ in 0..N {
            let range = nets[(rng.next() % nets.len() as u64) as usize];
            let addr = address_in(range.net, &mut rng);
            let documented = super::location(&range.provider, &range.region).map(|l| l.country);
            let db = geo.lookup(addr).map(|r| r.country).filter(|c| c != &[0, 0]);
            // What the kernel decides: the trie's location, else the database.
            let after = cloud
                .lookup(addr)
                .and_then(|e| e.location)
                .map(|l| l.country)
                .or(db);
            let eea_of = |c: Option<[u8; 2]>| c.is_some_and(|c| in_eea(&c));
            t.db_eea += usize::from(eea_of(db));
            t.after_eea += usize::from(eea_of(after));
            match documented {
                None => t.unlocated += 1,
                Some(d) => {
                    t.db_wrong += usize::from(db != Some(d));
                    t.after_wrong += usize::from(after != Some(d));
                    if in_eea(&d) {
                        t.doc_eea += 1;
                        t.doc_eea_db_eea += usize::from(eea_of(db));
                        t.doc_eea_after_eea += usize::from(eea_of(after));
                    } else {
                        t.doc_other_db_eea += usize::from(eea_of(db));
                        t.doc_other_after_eea += usize::from(eea_of(after));
                    }
                }
            }
        }
        let pct = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
        let located = N - t.unlocated;
        println!(
            "{label}: {} networks, {N} addresses (seed 0x5eed), {} in unlocated regions\n  \
             in the EEA: country database {:.1}%, with cloud locations {:.1}%\n  \
             country other than the documented one: database {:.1}%, with cloud locations {:.1}%\n  \
             documented in the EEA ({}): database says EEA {:.1}%, with cloud locations {:.1}%\n  \
             documented outside the EEA ({}): database says EEA {:.1}%, with cloud locations {:.1}%",
            nets.len(),
            t.unlocated,
            pct(t.db_eea, N),
            pct(t.after_eea, N),
            pct(t.db_wrong, located),
            pct(t.after_wrong, located),
            t.doc_eea,
            pct(t.doc_eea_db_eea, t.doc_eea),
            pct(t.doc_eea_after_eea, t.doc_eea),
            located - t.doc_eea,
            pct(t.doc_other_db_eea, located - t.doc_eea),
            pct(t.doc_other_after_eea, located - t.doc_eea),
        );
    }
}
