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

#[test]
#[ignore = "needs .cache/cloud and .cache/geoip (cargo xtask setup); prints numbers"]
fn eea_share_with_and_without_cloud_locations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let started = std::time::Instant::now();
    let cloud = load_dir(&root.join(".cache/cloud")).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "loaded {} ranges, {} regions, {} trie entries in {:?}: {}",
        cloud.ranges().len(),
        cloud.regions().len(),
        cloud.entries().len(),
        started.elapsed(),
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
        let (mut db_eea, mut db_none, mut db_wrong, mut after_eea, mut documented_eea) =
            (0, 0, 0, 0, 0);
        for _ in 0..N {
            let range = nets[(rng.next() % nets.len() as u64) as usize];
            let addr = address_in(range.net, &mut rng);
            let documented = super::location(&range.provider, &range.region);
            let db = geo.lookup(addr).map(|r| r.country).filter(|c| c != &[0, 0]);
            match db {
                Some(c) if in_eea(&c) => db_eea += 1,
                Some(_) => {}
                None => db_none += 1,
            }
            if let (Some(d), Some(c)) = (documented, db) {
                if d.country != c {
                    db_wrong += 1;
                }
            }
            if documented.is_some_and(|d| in_eea(&d.country)) {
                documented_eea += 1;
            }
            // What the kernel decides: the trie's location, else the database.
            let after = cloud
                .lookup(addr)
                .and_then(|e| e.location)
                .map(|l| l.country)
                .or(db);
            if after.is_some_and(|c| in_eea(&c)) {
                after_eea += 1;
            }
        }
        let pct = |n: usize| 100.0 * n as f64 / N as f64;
        println!(
            "{label}: {} networks, {N} addresses (seed 0x5eed): EEA by the country database \
             {:.1}% (no country {:.1}%, country other than documented {:.1}%), EEA with cloud \
             locations {:.1}%, documented EEA {:.1}%",
            nets.len(),
            pct(db_eea),
            pct(db_none),
            pct(db_wrong),
            pct(after_eea),
            pct(documented_eea),
        );
    }
}
