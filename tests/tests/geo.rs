//! The kernel's country table against the database itself: the real CC0
//! database loaded by a real daemon, connects to addresses sampled from
//! it (IPv4, IPv6 and IPv4-mapped IPv6, at range edges and in the gaps
//! between ranges) made from a dead-end namespace (loopback and a
//! blackhole default route: the hooks judge each connect, then it fails
//! with EINVAL; no packet is built), and every event's country and
//! continent compared with the database's answer for its address.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use integration_tests::{judgeable, s, DeadEnd, TestEnv};
use monitor::geo::{from_u128, to_u128, GeoDb};
use serde_json::Value;

#[test]
fn kernel_countries_equal_the_database_for_sampled_real_addresses() {
    let mut env = TestEnv::new();
    let real = std::env::var("EGRESS_MONITOR_GEOIP").expect("EGRESS_MONITOR_GEOIP");
    std::fs::copy(&real, env.geoip()).expect("copy the real database");
    let db = GeoDb::open(&env.geoip()).expect("the real database");
    // A monitor policy: every connect is judged and reported, none refused.
    env.write_policy(
        "geo.yaml",
        &env.policy("geo", "monitor", "sel", "  allow:\n    countries: [DE]\n"),
    );
    env.start_daemon(&[]);
    env.wait_log("into the kernel geo table", Duration::from_secs(60));
    let ns = DeadEnd::new(&format!("emg-{}", env.id));

    // IPv4 (first, middle, last of spread ranges, and the address after a
    // range, often in a gap), IPv6 the same, and IPv4 again as mapped IPv6
    // through an AF_INET6 socket.
    let v4_first = 0xffff_0000_0000u128;
    let v4_last = 0xffff_ffff_ffffu128;
    let (v4, v6): (Vec<_>, Vec<_>) = db
        .ranges
        .iter()
        .partition(|r| r.start >= v4_first && r.end <= v4_last);
    let mut addrs: Vec<String> = Vec::new();
    let mut pick = |ranges: &[&monitor::geo::RegionRange], n: usize, mapped: bool| {
        let step = (ranges.len() / n).max(1);
        for r in ranges.iter().step_by(step).take(n) {
            for a in [r.start, r.start + (r.end - r.start) / 2, r.end, r.end + 1] {
                let ip = from_u128(a);
                if !judgeable(ip) {
                    continue;
                }
                addrs.push(match (ip, mapped) {
                    (IpAddr::V4(v4), true) => v4.to_ipv6_mapped().to_string(),
                    _ => ip.to_string(),
                });
            }
        }
    };
    pick(&v4, 150, false);
    pick(&v6, 100, false);
    pick(&v4[7..], 40, true);
    addrs.sort();
    addrs.dedup();
    assert!(addrs.len() > 900, "only {} addresses", addrs.len());

    // In batches, so one probe's command line stays short.
    for chunk in addrs.chunks(200) {
        let mut args: Vec<&str> = vec!["connect-many", "443"];
        args.extend(chunk.iter().map(String::as_str));
        let out: Value = env.probe_in(&ns.0, "sel", &args);
        for r in out["results"].as_array().expect("results") {
            let errno = r["errno"].as_i64().unwrap();
            assert!(
                errno == libc::EINVAL as i64 || errno == libc::ENETUNREACH as i64,
                "a connect from the dead end did something else: {r}"
            );
        }
    }

    // One event per address (each is a new flow); compare each with the
    // database.
    let want: BTreeMap<u128, String> = addrs
        .iter()
        .map(|a| (to_u128(a.parse().unwrap()), a.clone()))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got: BTreeMap<u128, Value> = BTreeMap::new();
    while got.len() < want.len() && std::time::Instant::now() < deadline {
        for e in env.events_within(Duration::from_millis(500), |e| {
            s(e, "hook") == "connect4" || s(e, "hook") == "connect6"
        }) {
            if let Ok(ip) = s(&e, "dst_ip").parse::<IpAddr>() {
                got.insert(to_u128(ip), e);
            }
        }
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, _)| !got.contains_key(k))
        .map(|(_, a)| a)
        .take(10)
        .collect();
    assert!(missing.is_empty(), "no event for {missing:?}");

    let mut mismatches = Vec::new();
    let mut known = 0;
    for (key, text) in &want {
        let e = &got[key];
        let ip = from_u128(*key);
        let expected = db.lookup(ip).unwrap_or_default();
        let code = |b: [u8; 2]| {
            if b == [0, 0] {
                String::new()
            } else {
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        let theirs = (code(expected.country), code(expected.continent));
        let ours = (s(e, "country"), s(e, "continent"));
        if !theirs.0.is_empty() {
            known += 1;
        }
        if (ours.0, ours.1) != (theirs.0.as_str(), theirs.1.as_str()) {
            mismatches.push(format!("{text}: kernel {ours:?}, database {theirs:?}"));
        }
        assert_eq!(s(e, "country_source"), "geoip", "{e}");
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} addresses judged in another country than the database says: {:?}",
        mismatches.len(),
        want.len(),
        &mismatches[..mismatches.len().min(20)]
    );
    assert!(known > 600, "only {known} addresses with a country");
    eprintln!(
        "{} addresses ({} with a country) judged as the database says",
        want.len(),
        known
    );
}
