use std::{net::IpAddr, path::PathBuf, process::Command};

use super::{writer, *};

fn write_db(bytes: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    f
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
