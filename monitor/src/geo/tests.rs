use std::{net::IpAddr, path::PathBuf, process::Command};

use super::{writer, *};

fn write_db(bytes: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    f
}

fn range_of(start: u128, prefix_len: u8) -> (u128, u128) {
    let host_bits = 128 - u32::from(prefix_len);
    let size_minus_one = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (start, start | size_minus_one)
}

fn cc(region: Option<Region>) -> String {
    region
        .map(|r| region_label(&r))
        .unwrap_or_else(|| "none".into())
}

#[test]
fn reads_the_ip_location_db_schema() {
    let f = write_db(&writer::country_code_db(&[
        ("198.51.100.0/24", "DE"),
        ("203.0.113.0/24", "US"),
        ("2001:db8:de::/48", "DE"),
    ]));
    let db = GeoDb::open(f.path()).unwrap();
    assert_eq!(db.identity.schema, "country_code");
    let de = db.lookup("198.51.100.7".parse().unwrap()).unwrap();
    assert_eq!(&de.country, b"DE");
    assert_eq!(&de.continent, b"EU", "continent comes from the table");
    assert_eq!(cc(db.lookup("203.0.113.9".parse().unwrap())), "US");
    assert_eq!(cc(db.lookup("2001:db8:de::1".parse().unwrap())), "DE");
    assert_eq!(cc(db.lookup("2001:db8:df::1".parse().unwrap())), "none");
    assert_eq!(cc(db.lookup("10.0.0.1".parse().unwrap())), "none");
    // An IPv4-mapped IPv6 address is the IPv4 address.
    assert_eq!(cc(db.lookup("::ffff:198.51.100.7".parse().unwrap())), "DE");
}

#[test]
fn reads_the_geoip2_schema_with_continent_only_records() {
    let nets: Vec<(IpNetwork, writer::Value)> = vec![
        (
            "198.51.100.0/24".parse().unwrap(),
            writer::Value::geoip2_country("FR", "EU"),
        ),
        (
            "203.0.113.0/24".parse().unwrap(),
            writer::Value::map([(
                "continent",
                writer::Value::map([("code", writer::Value::str("AS"))]),
            )]),
        ),
        (
            "2001:db8::/32".parse().unwrap(),
            writer::Value::map([(
                "registered_country",
                writer::Value::map([("iso_code", writer::Value::str("JP"))]),
            )]),
        ),
    ];
    let f = write_db(&writer::build("GeoLite2-Country", &nets));
    let db = GeoDb::open(f.path()).unwrap();
    assert_eq!(db.identity.schema, "geoip2");
    assert_eq!(db.identity.database_type, "GeoLite2-Country");
    assert_eq!(cc(db.lookup("198.51.100.1".parse().unwrap())), "FR");
    assert_eq!(
        cc(db.lookup("203.0.113.1".parse().unwrap())),
        "continent:AS"
    );
    let jp = db.lookup("2001:db8::1".parse().unwrap()).unwrap();
    assert_eq!((&jp.country, &jp.continent), (b"JP", b"AS"));
}

#[test]
fn adjacent_networks_of_one_country_merge() {
    let f = write_db(&writer::country_code_db(&[
        ("198.51.100.0/25", "DE"),
        ("198.51.100.128/26", "DE"),
        ("198.51.100.192/26", "DE"),
        ("203.0.113.0/25", "DE"),
        ("203.0.113.128/25", "FR"),
    ]));
    let db = GeoDb::open(f.path()).unwrap();
    assert_eq!(db.identity.networks, 5);
    let prefixes: Vec<_> = db
        .prefixes()
        .map(|(a, l, _)| (from_u128(a).to_string(), l))
        .collect();
    assert_eq!(
        prefixes,
        vec![
            ("198.51.100.0".to_string(), 120),
            ("203.0.113.0".to_string(), 121),
            ("203.0.113.128".to_string(), 121)
        ]
    );
}

#[test]
fn range_to_prefixes_covers_exactly() {
    let cases: [(u128, u128); 5] = [
        (0, u128::MAX),
        (1, 6),
        (0xffff_0000_0000, 0xffff_ffff_ffff),
        (10, 10),
        (u128::MAX - 5, u128::MAX),
    ];
    for (start, end) in cases {
        let mut out = Vec::new();
        range_to_prefixes(start, end, &mut out);
        let mut next = start;
        for (a, l) in &out {
            assert_eq!(*a, next, "gap or overlap in {start}..={end}: {out:?}");
            let (_, last) = range_of(*a, *l);
            if last == u128::MAX {
                assert_eq!(end, u128::MAX);
                break;
            }
            next = last + 1;
        }
        if end != u128::MAX {
            assert_eq!(next, end + 1, "{start}..={end}: {out:?}");
        }
    }
    let mut out = Vec::new();
    range_to_prefixes(1, 6, &mut out);
    assert_eq!(out, vec![(1, 128), (2, 127), (4, 127), (6, 128)]);
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    let f = write_db(b"this is not an mmdb file");
    let err = GeoDb::open(f.path()).unwrap_err().to_string();
    assert!(err.contains("is not a MaxMind-format database"), "{err}");
    let err = GeoDb::open(std::path::Path::new("/nonexistent/geo.mmdb"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read GeoIP database /nonexistent/geo.mmdb"),
        "{err}"
    );
}

/// The real CC0 country database, as `cargo xtask setup` fetched it.
pub fn real_database() -> PathBuf {
    let path = std::env::var_os("EGRESS_MONITOR_GEOIP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/geoip/geo-whois-asn-country.mmdb")
        });
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask setup` first",
        path.display()
    );
    path
}

#[test]
fn real_database_agrees_with_mmdblookup() {
    let path = real_database();
    let db = GeoDb::open(&path).unwrap();
    assert_eq!(db.identity.schema, "country_code");
    assert!(db.identity.networks > 100_000, "{:?}", db.identity);
    assert!(
        db.identity.prefixes <= db.identity.networks,
        "merging added prefixes: {:?}",
        db.identity
    );
    // A spread of addresses over both families, from the merged ranges
    // themselves (first, middle and last of every 997th range).
    let mut sample: Vec<IpAddr> = Vec::new();
    for r in db.ranges.iter().step_by(997) {
        sample.push(from_u128(r.start));
        sample.push(from_u128(r.start + (r.end - r.start) / 2));
        sample.push(from_u128(r.end));
    }
    // And some addresses between ranges, that may be unknown.
    for r in db.ranges.windows(2).step_by(1999) {
        if r[0].end + 1 < r[1].start {
            sample.push(from_u128(r[0].end + 1));
        }
    }
    assert!(sample.len() > 300, "sample of {}", sample.len());
    let mut checked = 0;
    for ip in sample {
        let out = Command::new("mmdblookup")
            .arg("--file")
            .arg(&path)
            .args(["--ip", &ip.to_string(), "country_code"])
            .output()
            .expect("mmdblookup (Debian mmdb-bin) is installed by `cargo xtask setup`");
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs = text.split('"').nth(1).map(str::to_string);
        let ours = db
            .lookup(ip)
            .map(|r| String::from_utf8_lossy(&r.country).into_owned());
        assert_eq!(ours, theirs, "lookup of {ip} differs from mmdblookup");
        checked += 1;
    }
    eprintln!("cross-checked {checked} addresses against mmdblookup");
}

/// The ranges the maxminddb crate's own `within` walk gives (decoding
/// every network), merged: what `GeoDb::open` read before it walked the
/// tree itself.
fn ranges_by_within(path: &std::path::Path) -> Vec<RegionRange> {
    let bytes = std::fs::read(path).unwrap();
    let reader = maxminddb::Reader::from_source(bytes).unwrap();
    let root: IpNetwork = if reader.metadata.ip_version == 4 {
        "0.0.0.0/0".parse().unwrap()
    } else {
        "::/0".parse().unwrap()
    };
    let mut ranges = Vec::new();
    for item in reader.within::<Record>(root).unwrap() {
        let item = item.unwrap();
        if let Some((region, _)) = region_of(&item.info) {
            let (start, len) = network_to_u128(item.ip_net);
            let (start, end) = range_of(start, len);
            ranges.push(RegionRange { start, end, region });
        }
    }
    merge_ranges(ranges)
}

#[test]
fn the_tree_walk_reads_what_the_crate_reads() {
    let f = write_db(&writer::country_code_db(&[
        ("198.51.100.0/25", "DE"),
        ("198.51.100.128/25", "FR"),
        ("203.0.113.7/32", "US"),
        ("2001:db8::/33", "JP"),
        ("2001:db8:8000::/48", "DE"),
    ]));
    assert_eq!(
        GeoDb::open(f.path()).unwrap().ranges,
        ranges_by_within(f.path())
    );
    let real = real_database();
    let db = GeoDb::open(&real).unwrap();
    let theirs = ranges_by_within(&real);
    assert_eq!(db.ranges.len(), theirs.len());
    assert!(db.ranges == theirs, "the walk and the crate disagree");
}

/// Table lookups of `addrs` against the ranges' own answer.
fn check_table(db_ranges: &[RegionRange], addrs: impl Iterator<Item = u128>) -> usize {
    let mut words = vec![0u32; 8 << 20];
    let built = table::build(db_ranges, &mut words).unwrap();
    let db = GeoDb {
        identity: GeoIdentity {
            path: PathBuf::new(),
            database_type: String::new(),
            build_epoch: 0,
            sha256: String::new(),
            schema: String::new(),
            networks: 0,
            prefixes: 0,
        },
        ranges: db_ranges.to_vec(),
    };
    let mut n = 0;
    for a in addrs {
        let ip = from_u128(a);
        let ours = monitor_common::geo_table::lookup(&to_u128(ip).to_be_bytes(), |i| {
            words[..built.words].get(i as usize).copied()
        });
        assert_eq!(
            Some(ours).filter(|r| *r != Region::default()),
            db.lookup(ip),
            "table lookup of {ip}"
        );
        n += 1;
    }
    n
}

#[test]
fn table_agrees_with_the_ranges_at_every_edge() {
    let de = Region {
        country: *b"DE",
        continent: *b"EU",
    };
    let us = Region {
        country: *b"US",
        continent: *b"NA",
    };
    let m = |a: u32| 0xffff_0000_0000u128 | u128::from(a);
    let ranges = vec![
        RegionRange {
            start: m(0),
            end: m(0),
            region: us,
        },
        RegionRange {
            start: m(0x0a00_0001),
            end: m(0x0a00_00ff),
            region: de,
        },
        RegionRange {
            start: m(0x0a00_0100),
            end: m(0x0a01_0000),
            region: us,
        },
        RegionRange {
            start: m(0xffff_fffe),
            end: m(0xffff_ffff),
            region: de,
        },
        // IPv6: a /32, a /48 inside nothing, single addresses, the top.
        RegionRange {
            start: 0x2001_0db8 << 96,
            end: (0x2001_0db9 << 96) - 1,
            region: de,
        },
        RegionRange {
            start: 0x2a00_0000_0001 << 80,
            end: (0x2a00_0000_0002 << 80) - 1,
            region: us,
        },
        RegionRange {
            start: (0x2a01 << 112) | 5,
            end: (0x2a01 << 112) | 5,
            region: de,
        },
        RegionRange {
            start: u128::MAX - 2,
            end: u128::MAX,
            region: us,
        },
    ];
    let mut addrs = Vec::new();
    for r in &ranges {
        for a in [r.start, r.end] {
            addrs.extend([a.wrapping_sub(1), a, a.wrapping_add(1)]);
        }
    }
    addrs.extend([0, 1, m(0x0a00_0000), m(0x0b00_0000), 0xffff_ffff]);
    assert_eq!(check_table(&ranges, addrs.into_iter()), 53);
}

#[test]
fn a_table_too_large_for_its_slot_is_a_clear_error() {
    let path = real_database();
    let db = GeoDb::open(&path).unwrap();
    let mut words = vec![0u32; 1 << 20];
    let err = table::build(&db.ranges, &mut words).unwrap_err();
    assert_eq!(err.capacity, 1 << 20);
    assert!(err.needed > 6_000_000, "{err}");
    assert!(
        err.to_string()
            .contains("MiB) but a kernel slot holds 1048576 (4.0 MiB)"),
        "{err}"
    );
}

#[test]
fn table_agrees_with_the_real_database() {
    let path = real_database();
    let db = GeoDb::open(&path).unwrap();
    let mut addrs = Vec::new();
    for r in db.ranges.iter().step_by(7) {
        addrs.extend([
            r.start,
            r.start + (r.end - r.start) / 2,
            r.end,
            r.end.wrapping_add(1),
        ]);
    }
    // And pseudo-random addresses of both families (xorshift, fixed seed).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..100_000 {
        addrs.push(0xffff_0000_0000 | u128::from(next() as u32));
        addrs.push((0x2000u128 << 112) | (u128::from(next()) << 48) | u128::from(next() >> 16));
    }
    let n = check_table(&db.ranges, addrs.into_iter());
    assert!(n > 500_000, "{n}");
}

proptest::proptest! {
    #[test]
    fn table_agrees_with_random_ranges(
        cuts in proptest::collection::vec((0u32..8, 0u128..u128::MAX, 1u32..128), 1..40),
        probes in proptest::collection::vec(0u128..u128::MAX, 64),
    ) {
        // Random ranges in both families, of random sizes, made disjoint.
        let regions = [*b"DE", *b"US", *b"FR", *b"JP"];
        let mut ranges: Vec<RegionRange> = cuts.iter().map(|(r, a, bits)| {
            let a = if r % 2 == 0 { 0xffff_0000_0000 | (a & 0xffff_ffff) } else { *a };
            let size = (1u128 << (bits % if r % 2 == 0 { 32 } else { 127 })) - 1;
            RegionRange {
                start: a,
                end: a.saturating_add(size),
                region: Region { country: regions[(*r as usize) % 4], continent: *b"EU" },
            }
        }).collect();
        ranges.sort_by_key(|r| r.start);
        let mut disjoint: Vec<RegionRange> = Vec::new();
        for r in ranges {
            match disjoint.last() {
                Some(l) if r.start <= l.end => {}
                _ => disjoint.push(r),
            }
        }
        let merged = merge_ranges(disjoint);
        let mut addrs: Vec<u128> = probes;
        for r in &merged {
            addrs.extend([r.start, r.end, r.start.wrapping_sub(1), r.end.wrapping_add(1)]);
        }
        check_table(&merged, addrs.into_iter());
    }
}

mod hostile {
    use proptest::prelude::*;

    use super::*;

    fn small_db() -> Vec<u8> {
        writer::country_code_db(&[
            ("198.51.100.0/24", "DE"),
            ("203.0.113.0/25", "FR"),
            ("2001:db8::/32", "US"),
            ("10.0.0.0/8", "NL"),
        ])
    }

    /// Opens `bytes` as a database: it must answer (a database or an
    /// error), never panic.
    fn open(bytes: &[u8]) -> Result<GeoDb, String> {
        let f = write_db(bytes);
        std::panic::catch_unwind(|| GeoDb::open(f.path()).map_err(|e| e.to_string()))
            .unwrap_or_else(|_| panic!("GeoDb::open panicked on {} bytes", bytes.len()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Bit flips anywhere (tree, data section, metadata) and cuts at any
        /// length: a clear error or a database, never a panic or a hang.
        #[test]
        fn flipped_or_cut_databases_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8),
            cut in any::<prop::sample::Index>(),
            do_cut in any::<bool>(),
        ) {
            let mut b = small_db();
            for (at, bit) in &flips {
                let i = at.index(b.len());
                b[i] ^= 1 << bit;
            }
            if do_cut {
                b.truncate(cut.index(b.len()));
            }
            if let Err(e) = open(&b) {
                prop_assert!(!e.is_empty());
            }
        }
    }

    /// A tree whose records point back to a node above them would make the
    /// walk exponential; it is refused as not a tree.
    #[test]
    fn a_tree_whose_records_loop_back_is_refused() {
        let mut b = small_db();
        let reader = maxminddb::Reader::from_source(b.as_slice()).unwrap();
        let (nodes, size) = (
            reader.metadata.node_count as usize,
            reader.metadata.record_size,
        );
        drop(reader);
        assert!(
            matches!(size, 24 | 32),
            "the test writer's record size: {size}"
        );
        let rec = usize::from(size) / 8;
        // The root's left half is empty, its right half and both halves of
        // every other node point to node 1: a DAG with 2^128 paths.
        let mut set = |o: usize, v: usize| {
            b[o..o + rec].copy_from_slice(&(v as u32).to_be_bytes()[4 - rec..]);
        };
        set(0, nodes);
        set(rec, 1);
        for n in 1..nodes {
            set(n * 2 * rec, 1);
            set(n * 2 * rec + rec, 1);
        }
        let err = open(&b).unwrap_err();
        assert!(err.contains("search tree"), "{err}");
    }

    #[test]
    fn a_truncated_real_database_is_a_clear_error() {
        let real = std::fs::read(real_database()).unwrap();
        for keep in [0, 16, real.len() / 2, real.len() - 1] {
            let err = open(&real[..keep]).unwrap_err();
            assert!(!err.is_empty(), "cut at {keep}");
        }
    }
}
