//! Bundles from a store made here: what an export holds, and that every
//! kind of tampering makes verify fail.
use std::sync::Arc;

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use super::{
    bundle,
    summary::{cells, table_rows},
    verify,
};
use crate::{
    events::Event,
    store::{chain, query, Batch, PolicySet, PolicyVersion, Store},
};

const T0: i64 = 1_795_308_000_000_000_000;
const SEC: i64 = 1_000_000_000;

fn ev(i: i64) -> Arc<Event> {
    let us = i % 3 == 0;
    Arc::new(Event {
        time: crate::events::rfc3339_nanos(i128::from(T0 + i * SEC)),
        unix_nanos: i128::from(T0 + i * SEC),
        verdict: if us { "denied" } else { "allowed" },
        policy: "eu-only".into(),
        rule: if us { "default" } else { "country" },
        hook: "connect4",
        protocol: "tcp",
        family: "ipv4",
        dst_ip: if us { "203.0.113.2" } else { "198.51.100.2" }.into(),
        dst_port: 8080,
        country: if us { "US" } else { "DE" }.into(),
        continent: if us { "NA" } else { "EU" }.into(),
        pid: 100 + i as u32,
        tgid: 100 + i as u32,
        uid: 0,
        comm: "probe".into(),
        cgroup_id: 7,
        cgroup_path: "/llm.slice/inference".into(),
        policy_generation: 1,
        country_source: "geoip",
        ..Default::default()
    })
}

/// The container of `in_container`'s events.
const CONTAINER: &str = "e25a09fde25a09fde25a09fde25a09fde25a09fde25a09fde25a09fde25a09fd";

/// `ev(i)` from a podman container, as enrichment attributes its cgroup,
/// with what its runtime said of its image.
fn in_container(i: i64) -> Event {
    let mut e = (*ev(i)).clone();
    e.cgroup_path = format!("/libpod_parent/libpod-{CONTAINER}");
    e.attribute();
    e.image = "localhost/egress-probe:test".into();
    e
}

/// A store with events at T0 + 1 s .. T0 + n s.
fn store(n: i64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    let mut b = Batch {
        events: (1..=n).map(ev).collect(),
        ..Default::default()
    };
    b.policy_sets.push(PolicySet {
        unix_nanos: T0,
        generation: 1,
        policies: vec![PolicyVersion {
            name: "eu-only".into(),
            mode: "enforce".into(),
            file: "/etc/p.yaml".into(),
            sha256: "ab".repeat(32),
            text: "kind: EgressPolicy\n".into(),
        }],
    });
    b.geo.push((T0, "{\"sha256\":\"00\"}".into()));
    s.append(&b).unwrap();
    (dir, s)
}

/// A store with these events alone.
fn store_of(events: Vec<Arc<Event>>) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    s.append(&Batch {
        events,
        ..Default::default()
    })
    .unwrap();
    (dir, s)
}

fn export(s: &Store, key: &SigningKey, since: i64, until: i64) -> bundle::Files {
    let req = bundle::Request {
        since: T0 + since * SEC,
        until: T0 + until * SEC,
        keep: &|_| true,
        filter: serde_json::Value::Null,
        by_process: false,
        progress: None,
    };
    bundle::build(s, key, &req).unwrap().0
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// Rewrites the manifest's digests and signs again, as someone holding
/// the node key would: only the chain can then catch a record change.
fn resign(files: &mut bundle::Files, key: &SigningKey) {
    let mut m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    for (name, data) in files.iter() {
        if name != "manifest.json" && name != "manifest.sig" {
            m["files"][name] = hex::encode(Sha256::digest(data)).into();
        }
    }
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    files.insert(
        "manifest.sig".into(),
        hex::encode(key.sign(&bytes).to_bytes()).into_bytes(),
    );
    files.insert("manifest.json".into(), bytes);
}

fn lines(files: &bundle::Files) -> Vec<String> {
    String::from_utf8(files["events.jsonl"].clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn set_lines(files: &mut bundle::Files, l: &[String]) {
    let mut text = l.join("\n");
    text.push('\n');
    files.insert("events.jsonl".into(), text.into_bytes());
}

#[test]
fn export_holds_exactly_the_window_and_verifies() {
    let (_d, s) = store(30);
    let k = key();
    let files = export(&s, &k, 10, 20);
    let l = lines(&files);
    assert_eq!(l.len(), 10, "records at T0+10 s .. T0+19 s");
    let seqs: Vec<i64> = l
        .iter()
        .map(|x| {
            serde_json::from_str::<serde_json::Value>(x).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (10..20).collect::<Vec<_>>());
    let r = verify::verify(&files, Some(&k.verifying_key())).unwrap();
    assert_eq!((r.records_in_window, r.records_exported), (10, 10));
    for name in [
        "events.jsonl",
        "flows.csv",
        "chain.json",
        "counters.json",
        "geoip.json",
        "cloud_ranges.json",
        "host.json",
        "summary.md",
        "report.html",
        "manifest.json",
        "manifest.sig",
        "node.pub",
        "policies/index.json",
    ] {
        assert!(files.contains_key(name), "bundle lacks {name}");
    }
    let csv = String::from_utf8(files["flows.csv"].clone()).unwrap();
    assert!(
        csv.contains(",3,denied,") || csv.contains(",4,denied,"),
        "{csv}"
    );
    let md = String::from_utf8(files["summary.md"].clone()).unwrap();
    assert!(md.contains("| US | 0 | 3 | 0 |"), "{md}");
    assert!(md.contains("GDPR Art. 30") && md.contains("NIS2"));
}

/// The store keeps the ids it gave cgroup paths, executables, argument
/// vectors and containers across batches, but only once their batch
/// committed: a batch that failed after naming new ones leaves no id
/// behind that points at nothing, and the next batch names them again.
#[test]
fn names_given_in_a_failed_batch_are_given_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    let named = |i: i64| {
        let mut e = in_container(i);
        e.exe = "/usr/bin/probe".into();
        e.args = vec!["probe".into(), format!("--n={i}")];
        Arc::new(e)
    };
    s.append(&Batch {
        events: vec![ev(1)],
        ..Default::default()
    })
    .unwrap();
    // The second event of the next batch takes a seq already taken: the
    // batch fails after its first event named everything new.
    s.conn
        .execute_batch(
            "CREATE TEMP TABLE taken AS SELECT * FROM events WHERE seq = 1; UPDATE taken SET seq = 3; INSERT INTO events SELECT * FROM taken;",
        )
        .unwrap();
    assert!(s
        .append(&Batch {
            events: vec![named(2), named(3)],
            ..Default::default()
        })
        .is_err());
    s.conn
        .execute("DELETE FROM events WHERE seq = 3", [])
        .unwrap();
    let events = vec![named(2), named(3)];
    s.append(&Batch {
        events: events.clone(),
        ..Default::default()
    })
    .unwrap();
    let (read, _) = query::events(&s, T0, T0 + 10 * SEC, 0, 100, &|_| true).unwrap();
    assert_eq!(read.len(), 3);
    for ((_, got), want) in read[1..].iter().zip(&events) {
        assert_eq!(got, &**want);
    }
}

/// A harvested repeat waits for the store with only its flow's fields
/// (`Event::keep_flow_fields`): the flows, whole minutes and edges, and
/// the hourly sums read the same as from the whole event.
#[test]
fn a_repeat_with_only_its_flow_fields_is_stored_as_the_whole_event() {
    let whole = |i: i64| {
        let mut e = in_container(i);
        e.exe = "/usr/bin/probe".into();
        e.args = vec!["probe".into(), "--fast".into()];
        e.parent_exe = "/usr/bin/bash".into();
        e.container_name = "probe-1".into();
        e.pod_labels = [("app".to_string(), "probe".to_string())].into();
        e.dns_name = "api.example".into();
        e.dns_cname = "edge.example".into();
        e.cloud = "aws".into();
        e.cloud_region = "eu-west-1".into();
        e
    };
    let read = |strip: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("store.db")).unwrap();
        let events: Vec<Arc<Event>> = (1..=200).map(|i| Arc::new(whole(i))).collect();
        let repeats = (1..=200)
            .step_by(3)
            .map(|i| {
                let mut event = whole(i + 30);
                if strip {
                    event.keep_flow_fields();
                }
                crate::store::Repeat {
                    event,
                    count: 2,
                    packets: 5,
                    bytes: 700,
                }
            })
            .collect();
        s.append(&Batch {
            events,
            repeats,
            ..Default::default()
        })
        .unwrap();
        let mut flows = Vec::new();
        for (a, b) in [(0, 400), (30, 95), (61, 300)] {
            flows.extend(
                query::flows(&s, T0 + a * SEC, T0 + b * SEC + 17, &|_| true, false).unwrap(),
            );
        }
        let hourly: Vec<(String, i64, i64)> = s
            .conn
            .prepare("SELECT country || cloud_region || policy, count, bytes FROM flows_by_place ORDER BY 1")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (flows, hourly)
    };
    let (whole_flows, whole_hourly) = read(false);
    assert!(
        whole_flows.iter().any(|f| f.packets > 0),
        "repeats were read"
    );
    assert_eq!(read(true), (whole_flows, whole_hourly));
}

/// A container the runtime describes anew (relabelled, renamed) keeps
/// each description apart: every event reads back the one it was stored
/// with, in one batch or across batches, also past the number of
/// descriptions the store keeps at hand per container, and a description
/// seen before is not stored twice.
#[test]
fn each_description_of_a_container_is_read_back_with_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    // Twelve descriptions (more than are kept at hand), each used twice.
    let described = |i: i64| {
        let mut e = in_container(i);
        let n = (i - 1) % 12;
        e.container_name = format!("probe-{}", n % 3);
        e.pod_labels = [("rev".to_string(), (n / 3).to_string())].into();
        Arc::new(e)
    };
    let events: Vec<Arc<Event>> = (1..=24).map(described).collect();
    for batch in [&events[..5], &events[5..6], &events[6..]] {
        s.append(&Batch {
            events: batch.to_vec(),
            ..Default::default()
        })
        .unwrap();
    }
    let rows: i64 = s
        .conn
        .query_row("SELECT count(*) FROM containers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 12, "one row per description");
    let (read, _) = query::events(&s, T0, T0 + 30 * SEC, 0, 100, &|_| true).unwrap();
    assert_eq!(read.len(), 24);
    for ((_, got), want) in read.iter().zip(&events) {
        assert_eq!(got, &**want);
    }
}

/// What a runtime said of a container is stored once per answer, read
/// back on every event of the container as it was hashed, and in the
/// bundle's records; editing the stored answer is caught.
#[test]
fn a_containers_image_and_name_survive_the_store_and_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    let of_container = |i: i64| {
        let mut e = in_container(i);
        e.image_digest = "sha256:aaa5".into();
        e.container_name = "probe-1".into();
        e.pod_labels = [("app".to_string(), "probe".to_string())].into();
        Arc::new(e)
    };
    let events: Vec<Arc<Event>> = (1..=3).map(of_container).collect();
    s.append(&Batch {
        events: events.clone(),
        ..Default::default()
    })
    .unwrap();
    let rows: i64 = s
        .conn
        .query_row("SELECT count(*) FROM containers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "one answer, stored once");
    let (read, _) = query::events(&s, T0, T0 + 10 * SEC, 0, 100, &|_| true).unwrap();
    assert_eq!(read.len(), 3);
    for ((_, got), want) in read.iter().zip(&events) {
        assert_eq!(got, &**want);
        assert_eq!(got.container_id, CONTAINER);
        assert_eq!(got.runtime, "podman");
    }
    let k = key();
    let files = export(&s, &k, 0, 10);
    verify::verify(&files, Some(&k.verifying_key())).unwrap();
    let first: serde_json::Value = serde_json::from_str(&lines(&files)[0]).unwrap();
    assert_eq!(first["image"], "localhost/egress-probe:test");
    assert_eq!(first["image_digest"], "sha256:aaa5");
    assert_eq!(first["container_name"], "probe-1");
    assert_eq!(first["pod_labels"]["app"], "probe");
    s.conn
        .execute("UPDATE containers SET image = 'localhost/benign:1'", [])
        .unwrap();
    let err = query::events(&s, T0, T0 + 10 * SEC, 0, 100, &|_| true).unwrap_err();
    assert!(err.to_string().contains("record"), "{err}");
}

#[test]
fn flipping_any_byte_of_any_file_fails_verify() {
    let (_d, s) = store(12);
    let k = key();
    let files = export(&s, &k, 0, 100);
    for (name, data) in &files {
        for pos in [0, data.len() / 2, data.len().saturating_sub(2)] {
            let mut f = files.clone();
            let mut d = data.clone();
            d[pos] ^= 0x01;
            f.insert(name.clone(), d);
            let err = verify::verify(&f, Some(&k.verifying_key()))
                .expect_err(&format!("a flipped byte {pos} of {name} went unnoticed"));
            assert!(
                err.item == *name || err.item == "manifest.sig" || err.item == "node.pub",
                "{name}: {err}"
            );
        }
    }
    let mut extra = files.clone();
    extra.insert("notes.txt".into(), b"x".to_vec());
    assert_eq!(verify::verify(&extra, None).unwrap_err().item, "notes.txt");
    let other = SigningKey::from_bytes(&[9; 32]);
    assert_eq!(
        verify::verify(&files, Some(&other.verifying_key()))
            .unwrap_err()
            .item,
        "node.pub"
    );
}

#[test]
fn removed_inserted_or_reordered_records_fail_even_when_resigned() {
    let (_d, s) = store(12);
    let k = key();
    let files = export(&s, &k, 0, 100);
    let l = lines(&files);
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("removed", [&l[..4], &l[5..]].concat()),
        ("inserted", [&l[..4], &l[3..]].concat()),
        ("reordered", {
            let mut x = l.clone();
            x.swap(2, 3);
            x
        }),
        ("altered", {
            let mut x = l.clone();
            x[5] = x[5].replace("8080", "8081");
            x
        }),
    ];
    for (what, new) in cases {
        let mut f = files.clone();
        set_lines(&mut f, &new);
        resign(&mut f, &k);
        let err = verify::verify(&f, Some(&k.verifying_key()))
            .expect_err(&format!("a {what} record went unnoticed"));
        assert!(err.item.starts_with("events.jsonl"), "{what}: {err}");
        // Named for what happened: a swapped pair is not "removed".
        let said = if what == "altered" { "differs" } else { what };
        assert!(err.to_string().contains(said), "{what}: {err}");
    }
    // Dropping a record and its link from the chain breaks the chain.
    let mut f = files.clone();
    set_lines(&mut f, &[&l[..4], &l[5..]].concat());
    let mut c: serde_json::Value = serde_json::from_slice(&f["chain.json"]).unwrap();
    c["links"].as_array_mut().unwrap().remove(4);
    c["records_in_window"] = 11.into();
    c["records_exported"] = 11.into();
    f.insert("chain.json".into(), serde_json::to_vec(&c).unwrap());
    resign(&mut f, &k);
    assert_eq!(verify::verify(&f, None).unwrap_err().item, "chain.json");
}

#[test]
fn retention_removes_exactly_the_old_records_and_the_rest_still_verifies() {
    let (_d, mut s) = store(100);
    let removed = s.purge_before(T0 + 50 * SEC, "age").unwrap();
    assert_eq!(removed, 49, "records at T0+1 s .. T0+49 s");
    let (left, _) = query::events(&s, 0, i64::MAX, 0, usize::MAX, &|_| true).unwrap();
    assert_eq!(left.first().map(|e| e.0), Some(50));
    assert_eq!(left.len(), 51);
    let files = export(&s, &key(), 0, 200);
    verify::verify(&files, None).unwrap();
    let c: serde_json::Value = serde_json::from_slice(&files["counters.json"]).unwrap();
    assert_eq!(c["retention_runs_touching_window"][0]["events_removed"], 49);
}

#[test]
fn size_retention_brings_the_store_under_its_limit_oldest_first() {
    let (_d, mut s) = store(3000);
    let before = s.used_bytes().unwrap();
    let limit = before / 2;
    let r = crate::store::retention::Retention {
        max_age: None,
        max_bytes: Some(limit),
        ..Default::default()
    };
    let removed = s.enforce_retention(&r, T0).unwrap();
    assert!(removed.events_by_size > 0);
    assert!(s.used_bytes().unwrap() <= limit, "still over the limit");
    let (left, _) = query::events(&s, 0, i64::MAX, 0, usize::MAX, &|_| true).unwrap();
    assert_eq!(left.last().map(|e| e.0), Some(3000), "the newest stay");
    assert_eq!(left.first().map(|e| e.0), Some(3001 - left.len() as i64));
}

#[test]
fn flow_counts_are_exact_for_any_window() {
    let (_d, s) = store(400); // spans several minutes
    for (a, b) in [(0, 400), (30, 250), (61, 119), (59, 61), (125, 126)] {
        let (since, until) = (T0 + a * SEC, T0 + b * SEC);
        let flows = query::flows(&s, since, until, &|_| true, false).unwrap();
        let (events, _) = query::events(&s, since, until, 0, usize::MAX, &|_| true).unwrap();
        let total: u64 = flows.iter().map(|f| f.count).sum();
        assert_eq!(total, events.len() as u64, "window {a}..{b}");
        let denied: u64 = flows
            .iter()
            .filter(|f| f.verdict == "denied")
            .map(|f| f.count)
            .sum();
        assert_eq!(
            denied,
            events.iter().filter(|e| e.1.verdict == "denied").count() as u64
        );
    }
    let by_country = query::group(
        query::flows(&s, T0, T0 + 400 * SEC, &|_| true, false).unwrap(),
        &["country".to_string()],
    );
    assert_eq!(by_country.len(), 2);
}

/// A flow to a provider's range without a region reads `cloudflare`, not
/// `cloudflare:`, and still filters by provider; rows an earlier version
/// stored as `cloudflare:` read the same.
#[test]
fn a_cloud_place_without_a_region_reads_as_its_provider() {
    let (_d, mut s) = store(0);
    let mut e = (*ev(1)).clone();
    e.cloud = "cloudflare".into();
    let mut old = (*ev(2)).clone();
    old.dst_ip = "198.51.100.9".into();
    s.append(&Batch {
        events: vec![Arc::new(e), Arc::new(old)],
        ..Default::default()
    })
    .unwrap();
    s.conn
        .execute(
            "UPDATE flows SET cloud_region = 'cloudflare:' WHERE dst_ip = '198.51.100.9'",
            [],
        )
        .unwrap();
    // A whole minute: read from the flows table, not from the events.
    let flows = query::flows(&s, T0, T0 + 60 * SEC, &|_| true, false).unwrap();
    let places: Vec<&str> = flows.iter().map(|f| f.cloud_region.as_str()).collect();
    assert_eq!(places, ["cloudflare", "cloudflare"], "{flows:#?}");
    let any = crate::cloud::RegionPattern::parse("cloudflare:*").unwrap();
    for f in &flows {
        let e = f.as_event(&crate::events::CgroupInfo::of_path(f.cgroup_path.clone()));
        assert_eq!(
            (e.cloud.as_str(), e.cloud_region.as_str()),
            ("cloudflare", "")
        );
        assert!(any.matches(&e.cloud, &e.cloud_region));
    }
}

/// Flows grouped by SQL give what grouping the whole flows gives, for
/// any window (whole minutes and cut ones) and grouping, with and without
/// a filter SQL can apply.
#[test]
fn flows_grouped_in_sql_match_flows_grouped_in_memory() {
    // Events that differ in every column a grouping reads: three cgroups,
    // four processes and executables, names and cloud regions.
    let (_d, s) = store_of(
        (1..=400)
            .map(|i| {
                let mut e = (*ev(i)).clone();
                e.cgroup_path = format!("/llm.slice/inference-{}", i % 3);
                e.comm = format!("worker-{}", i % 4);
                e.exe = if i % 5 == 0 {
                    String::new()
                } else {
                    format!("/usr/bin/worker-{}", i % 4)
                };
                e.dns_name = ["", "api.example.com", "cdn.example.net"][(i % 3) as usize].into();
                if i % 2 == 0 {
                    e.cloud = "aws".into();
                    e.cloud_region = ["eu-central-1", "us-east-1"][(i % 4 / 2) as usize].into();
                }
                Arc::new(e)
            })
            .collect(),
    );
    let sort = |mut v: Vec<query::Flow>| {
        v.sort_by_key(|f| format!("{f:?}"));
        v
    };
    let none = query::FlowFilter::all();
    let denied = query::FlowFilter {
        sql: String::from("verdict IN (?)"),
        values: vec![rusqlite::types::Value::Text("denied".into())],
        columns: vec!["verdict"],
    };
    for (a, b) in [(0, 400), (30, 250), (61, 119), (59, 61)] {
        let (since, until) = (T0 + a * SEC, T0 + b * SEC);
        for by in [
            vec!["country"],
            vec!["cgroup", "verdict"],
            vec!["destination"],
            vec!["policy", "port", "protocol"],
            vec!["exe", "process"],
            vec!["name", "cloud", "continent"],
        ] {
            let by: Vec<String> = by.into_iter().map(String::from).collect();
            for (sql, keep) in [
                (&none, &(|_: &Event| true) as &dyn Fn(&Event) -> bool),
                (&denied, &|e: &Event| e.verdict == "denied"),
            ] {
                let memory =
                    query::group(query::flows(&s, since, until, keep, false).unwrap(), &by);
                let in_sql = query::flows_grouped(&s, since, until, &by, sql, keep)
                    .expect("groupable")
                    .unwrap();
                assert_eq!(
                    sort(in_sql),
                    sort(memory),
                    "window {a}..{b}, by {by:?}, {}",
                    sql.sql
                );
            }
        }
    }
    assert!(query::flows_grouped(&s, T0, T0 + SEC, &["pod".into()], &none, &|_| true).is_none());
}

/// An export from T0 to a second from now (checkpoints carry the real time).
/// Over hours, the hourly sums stand in for the flow minutes wherever
/// they keep what the grouping and the filter use: same groups, same
/// counts as grouping every flow in memory, for windows on and off the
/// hour, with harvested repeats, and after retention cut into an hour.
#[test]
fn flows_grouped_over_hours_match_flows_grouped_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    // Every 37 s for about 4 h, in two cgroups, three countries, two
    // protocols; a harvest of repeats on the side.
    let event = |i: i64| {
        let mut e = (*ev(i * 37)).clone();
        if i % 5 == 0 {
            e.country = "FR".into();
            e.continent = "EU".into();
            e.protocol = "udp";
        }
        if i % 2 == 0 {
            e.cgroup_path = "/crm.slice/connector".into();
            e.cloud = "aws".into();
            e.cloud_region = "eu-central-1".into();
        }
        if i % 4 == 1 {
            // More keys, so the streamed merge interleaves edges and minutes.
            e.dst_ip = format!("198.51.100.{}", 10 + i % 9);
        }
        if i % 11 == 3 {
            e.verdict = "would_deny";
        }
        Arc::new(e)
    };
    for chunk in (0..400).collect::<Vec<i64>>().chunks(64) {
        let events: Vec<Arc<Event>> = chunk.iter().map(|&i| event(i)).collect();
        let repeats = events
            .iter()
            .step_by(7)
            .map(|e| crate::store::Repeat {
                event: (**e).clone(),
                count: 3,
                packets: 10,
                bytes: 1000,
            })
            .collect();
        s.append(&Batch {
            events,
            repeats,
            ..Default::default()
        })
        .unwrap();
    }
    let sort = |mut v: Vec<query::Flow>| {
        v.sort_by_key(|f| format!("{f:?}"));
        v
    };
    let text = |v: &str| rusqlite::types::Value::Text(v.into());
    type Keep<'a> = &'a dyn Fn(&Event) -> bool;
    let filters: Vec<(query::FlowFilter, Keep)> = vec![
        (query::FlowFilter::all(), &|_| true),
        (
            query::FlowFilter {
                sql: "verdict IN (?)".into(),
                values: vec![text("denied")],
                columns: vec!["verdict"],
            },
            &|e| e.verdict == "denied",
        ),
        (
            query::FlowFilter {
                sql: "country IN (?, ?)".into(),
                values: vec![text("FR"), text("US")],
                columns: vec!["country"],
            },
            &|e| e.country == "FR" || e.country == "US",
        ),
        (
            query::FlowFilter {
                sql: "dst_port IN (?)".into(),
                values: vec![rusqlite::types::Value::Integer(8080)],
                columns: vec!["dst_port"],
            },
            &|e| e.dst_port == 8080,
        ),
    ];
    let check = |s: &Store, windows: &[(i64, i64)]| {
        for &(a, b) in windows {
            let (since, until) = (T0 + a * SEC, T0 + b * SEC);
            // The export's streamed flows are the query's, in the same order.
            for (_, keep) in &filters {
                let all = query::flows(s, since, until, keep, false).unwrap();
                let mut streamed = Vec::new();
                let n =
                    query::flows_each(s, since, until, keep, false, query::Rows::All, &mut |f| {
                        streamed.push(f);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(n, all.len(), "window {a}..{b}");
                assert_eq!(
                    format!("{streamed:?}"),
                    format!("{all:?}"),
                    "window {a}..{b}"
                );
                // Only the refusals: the same flows, the allowed ones
                // left out (whole, never in part).
                let mut refused = Vec::new();
                query::flows_each(
                    s,
                    since,
                    until,
                    keep,
                    false,
                    query::Rows::Refused,
                    &mut |f| {
                        refused.push(f);
                        Ok(())
                    },
                )
                .unwrap();
                let expected: Vec<_> = all.iter().filter(|f| f.verdict != "allowed").collect();
                assert_eq!(
                    format!("{refused:?}"),
                    format!("{expected:?}"),
                    "window {a}..{b}"
                );
            }
            for by in [
                vec!["country"],
                vec!["cgroup", "verdict"],
                vec!["verdict"],
                vec!["protocol", "policy"],
                vec!["cloud", "continent"],
                vec!["destination"],
            ] {
                let by: Vec<String> = by.into_iter().map(String::from).collect();
                for (filter, keep) in &filters {
                    let memory =
                        query::group(query::flows(s, since, until, keep, false).unwrap(), &by);
                    let in_sql = query::flows_grouped(s, since, until, &by, filter, keep)
                        .expect("groupable")
                        .unwrap();
                    assert!(!memory.is_empty() || filter.sql != "1", "{a}..{b} {by:?}");
                    assert_eq!(
                        sort(in_sql),
                        sort(memory),
                        "window {a}..{b}, by {by:?}, {}",
                        filter.sql
                    );
                }
            }
        }
    };
    let windows = [(0, 15_000), (100, 9_000), (1_234, 4_900), (3_000, 3_700)];
    check(&s, &windows);
    // The whole hours of a long window do come from the hourly sums.
    let by = ["country".to_string()];
    let (_, hours) =
        crate::store::rollup::grouped(&s, T0, T0 + 15_000 * SEC, &by, &query::FlowFilter::all())
            .expect("a rollup keeps countries")
            .unwrap();
    assert_eq!(hours.1 - hours.0, 3 * crate::store::rollup::HOUR);
    // Retention cuts into an hour: that hour is read from its minutes.
    s.purge_before(T0 + 5_000 * SEC, "age").unwrap();
    check(&s, &[(0, 15_000), (4_000, 9_000), (5_500, 12_000)]);
}

fn export_to_now(s: &Store, key: &SigningKey) -> anyhow::Result<bundle::Files> {
    let req = bundle::Request {
        since: T0,
        until: crate::store::now_nanos() + SEC,
        keep: &|_| true,
        filter: serde_json::Value::Null,
        by_process: false,
        progress: None,
    };
    bundle::build(s, key, &req).map(|(f, _)| f)
}

#[test]
fn records_removed_from_the_end_are_caught_by_the_head_and_the_checkpoint() {
    let k = key();
    // The head alone: the rows are gone, chain_head still names seq 30.
    let (_d, s) = store(30);
    s.conn
        .execute("DELETE FROM events WHERE seq > 25", [])
        .unwrap();
    let err = export_to_now(&s, &k).unwrap_err().to_string();
    assert!(
        err.contains("chain head is seq 30 but its last record is seq 25"),
        "{err}"
    );

    // The head rewritten too: the signed checkpoint still names seq 30.
    let (_d, mut s) = store(30);
    let cp = s.checkpoint(&k, 1, "attached").unwrap();
    assert_eq!(cp.seq, 30);
    let ok = export_to_now(&s, &k).unwrap();
    verify::verify(&ok, Some(&k.verifying_key())).unwrap();
    s.conn
        .execute_batch(
            "DELETE FROM events WHERE seq > 25;
             UPDATE chain_head SET seq = 25, hash = (SELECT hash FROM events WHERE seq = 25);",
        )
        .unwrap();
    let err = export_to_now(&s, &k).unwrap_err().to_string();
    assert!(
        err.contains("holds seq 30, but the store's last record is seq 25"),
        "{err}"
    );
}

#[test]
fn a_bundle_cut_short_of_its_checkpoint_fails_verify_even_when_resigned() {
    let k = key();
    let (_d, mut s) = store(30);
    s.checkpoint(&k, 1, "attached").unwrap();
    let mut files = export_to_now(&s, &k).unwrap();
    // Drop the last five records and links, fix every count, sign again.
    let mut l = lines(&files);
    l.truncate(25);
    set_lines(&mut files, &l);
    let mut c: serde_json::Value = serde_json::from_slice(&files["chain.json"]).unwrap();
    c["links"].as_array_mut().unwrap().truncate(25);
    c["records_in_window"] = 25.into();
    c["records_exported"] = 25.into();
    files.insert("chain.json".into(), serde_json::to_vec(&c).unwrap());
    resign(&mut files, &k);
    let err = verify::verify(&files, Some(&k.verifying_key())).unwrap_err();
    assert_eq!(err.item, "chain.json");
    assert!(err.reason.contains("end at seq 25"), "{err}");
    assert!(err.reason.contains("holds seq 30"), "{err}");

    // A checkpoint not signed by the node key is refused as such.
    let mut files = export_to_now(&s, &k).unwrap();
    let mut cps: serde_json::Value = serde_json::from_slice(&files["checkpoints.json"]).unwrap();
    cps["checkpoints"][0]["seq"] = 31.into();
    files.insert("checkpoints.json".into(), serde_json::to_vec(&cps).unwrap());
    resign(&mut files, &k);
    let err = verify::verify(&files, Some(&k.verifying_key())).unwrap_err();
    assert!(err.reason.contains("not signed by the node key"), "{err}");
}

#[test]
fn queries_refuse_rows_edited_away_from_their_hashed_record() {
    let (_d, s) = store(30);
    let all = |s: &Store| query::events(s, T0, T0 + 100 * SEC, 0, 1000, &|_| true);
    assert_eq!(all(&s).unwrap().0.len(), 30, "an untouched store answers");
    let (_, mut third) = all(&s).unwrap().0.remove(2);
    // A denial made to look allowed (only the copied column).
    s.conn
        .execute("UPDATE events SET verdict = 'allowed' WHERE seq = 3", [])
        .unwrap();
    let denied = |s: &Store| {
        query::events(s, T0, T0 + 100 * SEC, 0, 1000, &|e: &Event| {
            e.verdict == "denied"
        })
    };
    let err = denied(&s).unwrap_err().to_string();
    assert!(
        err.contains("record seq 3: the row's columns differ from its hashed record"),
        "{err}"
    );
    // A record written to match: its digest does not.
    third.verdict = "allowed";
    s.conn
        .execute(
            "UPDATE events SET record = ?1 WHERE seq = 3",
            [chain::canonical(3, &third)],
        )
        .unwrap();
    let err = all(&s).unwrap_err().to_string();
    assert!(
        err.contains("record seq 3: the hashed record differs from its digest"),
        "{err}"
    );
}

/// A signed heartbeat at T0 + `t` seconds, as run `run`'s writer makes it.
fn heartbeat(s: &Store, key: &SigningKey, t: i64, run: i64, watching: &str) {
    let cp = chain::Checkpoint {
        unix_nanos: T0 + t * SEC,
        seq: 0,
        hash: hex::encode([0u8; 32]),
        run,
        watching: watching.into(),
        signature: String::new(),
    };
    let sig = key.sign(cp.message(&s.store_id().unwrap()).as_bytes());
    s.conn
        .execute(
            "INSERT INTO checkpoints (unix_nanos, seq, hash, signature, run, watching) VALUES (?1, 0, ?2, ?3, ?4, ?5)",
            rusqlite::params![cp.unix_nanos, &[0u8; 32][..], &sig.to_bytes()[..], run, watching],
        )
        .unwrap();
}

/// Tried as an incident responder would: a window in which the daemon was
/// stopped for a while, and one in which no daemon ever ran, are not called
/// complete; the bundle says which spans were not watched and why, and
/// verify recomputes that from the signed heartbeats.
#[test]
fn a_window_no_daemon_watched_is_not_called_complete() {
    let k = key();
    let (_d, s) = store(30);
    for t in [0, 10] {
        heartbeat(&s, &k, t, 1, "attached");
    }
    heartbeat(&s, &k, 12, 1, "stopping");
    for t in [20, 30, 40] {
        heartbeat(&s, &k, t, 2, "attached");
    }
    let files = export(&s, &k, 0, 30);
    let r = verify::verify(&files, Some(&k.verifying_key())).unwrap();
    let c = r.coverage.expect("heartbeats in the bundle");
    let gaps: Vec<_> = c.unwatched().collect();
    assert_eq!(gaps.len(), 1, "{c:?}");
    assert_eq!(
        (gaps[0].since_unix_nanos, gaps[0].until_unix_nanos),
        (T0 + 12 * SEC, T0 + 20 * SEC)
    );
    assert!(gaps[0].why.contains("no daemon ran (stopped)"), "{c:?}");
    assert_eq!(c.watched_nanos, 22 * SEC);
    let md = String::from_utf8(files["summary.md"].clone()).unwrap();
    assert!(md.contains("**Not watched**"), "{md}");
    assert!(md.contains("parts of it were not watched"), "{md}");
    assert!(!md.contains("The record is complete"), "{md}");

    // The heartbeats cover [20, 30] only: a window before any daemon ran
    // has none around it.
    let (_d2, bare) = store(30);
    let md = String::from_utf8(export(&bare, &k, 0, 30)["summary.md"].clone()).unwrap();
    assert!(
        md.contains("watched 0 ms of the 30.0 s window (0.0%)"),
        "{md}"
    );
    assert!(!md.contains("The record is complete"), "{md}");

    // The coverage chain.json states must be what the heartbeats show.
    let mut forged = files.clone();
    let mut cj: serde_json::Value = serde_json::from_slice(&forged["chain.json"]).unwrap();
    cj["coverage"]["spans"] = serde_json::json!([{
        "since_unix_nanos": T0, "until_unix_nanos": T0 + 30 * SEC, "watched": true
    }]);
    cj["coverage"]["watched_nanos"] = (30 * SEC).into();
    forged.insert("chain.json".into(), serde_json::to_vec(&cj).unwrap());
    resign(&mut forged, &k);
    let err = verify::verify(&forged, Some(&k.verifying_key())).unwrap_err();
    assert!(err.reason.contains("coverage stated differs"), "{err}");
}

/// A tar file of raw entries (name, type, claimed size, data), written
/// byte by byte as a hostile tool would (no sanitising of names).
type RawEntry<'a> = (&'a str, tar::EntryType, u64, &'a [u8]);

fn raw_tar(entries: &[RawEntry<'_>]) -> tempfile::NamedTempFile {
    let mut out = Vec::new();
    for (name, kind, size, data) in entries {
        let mut h = tar::Header::new_gnu();
        let raw = &mut h.as_gnu_mut().unwrap().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_size(*size);
        h.set_mode(0o644);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), out).unwrap();
    f
}

/// Bundles crafted against `verify`: each refused with its reason before
/// anything is checked, with memory bounded by the archive's own size.
#[test]
fn crafted_archives_are_refused_with_the_reason() {
    use tar::EntryType::{Regular, Symlink};
    let cases: Vec<(Vec<RawEntry<'_>>, &str)> = vec![
        (
            vec![("evidence/../../etc/cron.d/x", Regular, 3, b"abc")],
            "not a plain file name below evidence/",
        ),
        (
            vec![("evidence//events.jsonl", Regular, 3, b"abc")],
            "not a plain file name below evidence/",
        ),
        (
            vec![("/evidence/events.jsonl", Regular, 3, b"abc")],
            "outside evidence/",
        ),
        (
            vec![("evidence/events.jsonl", Symlink, 0, b"")],
            "not a regular file",
        ),
        (
            vec![
                ("evidence/events.jsonl", Regular, 3, b"abc"),
                ("evidence/events.jsonl", Regular, 3, b"def"),
            ],
            "appears twice",
        ),
        // A tar bomb: an entry that claims 1 TiB.
        (
            vec![("evidence/events.jsonl", Regular, 1 << 40, b"abc")],
            "more than the whole archive holds",
        ),
    ];
    for (entries, want) in cases {
        let f = raw_tar(&entries);
        let err = super::archive::read_tar(f.path()).unwrap_err();
        assert!(err.to_string().contains(want), "{entries:?}: {err}");
    }
    // A bundle sent on compressed: named for what it is.
    for (head, want) in [
        (
            &b"\x1f\x8b\x08\x00rest"[..],
            "not a tar (gzip?): a bundle is a plain tar; decompress it first (gunzip)",
        ),
        (b"\xfd7zXZ\x00rest", "not a tar (xz?)"),
        (b"\x28\xb5\x2f\xfdrest", "not a tar (zstd?)"),
    ] {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), head).unwrap();
        let err = super::archive::read_tar(f.path()).unwrap_err();
        assert!(err.reason.starts_with(want), "{err}");
    }

    // A manifest that lists a file the bundle lacks (re-signed).
    let k = key();
    let (_d, s) = store(5);
    let mut files = export(&s, &k, 0, 10);
    files.remove("flows.csv");
    let m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    files.insert(
        "manifest.sig".into(),
        hex::encode(k.sign(&bytes).to_bytes()).into_bytes(),
    );
    files.insert("manifest.json".into(), bytes);
    let err = verify::verify(&files, Some(&k.verifying_key())).unwrap_err();
    assert_eq!(err.item, "flows.csv");
    assert!(
        err.reason.contains("listed in the manifest but missing"),
        "{err}"
    );
}

/// The chain head (`seq`, `prev`: the last row's hash) and the meta rows
/// a version-6 store kept beside its events.
fn finish_v6_store(c: &rusqlite::Connection, seq: i64, prev: &[u8; 32]) {
    c.execute(
        "INSERT INTO chain_head (id, seq, hash) VALUES (0, ?1, ?2)",
        rusqlite::params![seq, &prev[..]],
    )
    .unwrap();
    c.execute_batch(
        "INSERT INTO meta (key, value) VALUES ('store_id', 'ab'), ('created', '0');
         PRAGMA user_version = 6;",
    )
    .unwrap();
}

/// Row `seq` (`ev(seq)`) as version 6 wrote it (its record, its link to
/// `prev` and its cgroup path in the row); returns its event and hash.
fn insert_v6_row(c: &rusqlite::Connection, seq: i64, prev: &[u8; 32]) -> (Arc<Event>, [u8; 32]) {
    let e = ev(seq);
    let record = chain::canonical(seq, &e);
    let digest = chain::digest(&record);
    let hash = chain::link(prev, &digest);
    c.execute(
        "INSERT INTO events (seq, unix_nanos, verdict, policy, rule, hook, protocol, family, dst_ip, dst_port, country, continent, pid, tgid, uid, comm, cgroup_id, cgroup_path, policy_generation, prev_hash, digest, hash, record, country_source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
        rusqlite::params![
            seq, e.unix_nanos as i64, e.verdict, e.policy, e.rule, e.hook, e.protocol,
            e.family, e.dst_ip, e.dst_port, e.country, e.continent, e.pid, e.tgid, e.uid,
            e.comm, e.cgroup_id as i64, e.cgroup_path, e.policy_generation, &prev[..],
            &digest[..], &hash[..], record, e.country_source
        ],
    )
    .unwrap();
    (e, hash)
}

/// A store written by version 6 (every row keeps its record text, its
/// link to the row before and its cgroup path; flows keyed by path) opens
/// in this version, takes compact rows after its own, and the whole chain
/// exports and verifies, its flows intact, also once retention removed the
/// old rows and the first of the new ones.
#[test]
fn a_version_6_store_keeps_its_chain_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        // As version 6 wrote it.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(include_str!("../store/v6_tables.sql"))
            .unwrap();
        let mut prev = [0u8; 32];
        for seq in 1..=20 {
            let (e, hash) = insert_v6_row(&c, seq, &prev);
            let t = e.unix_nanos as i64;
            c.execute(
                "INSERT INTO flows (bucket, cgroup_path, comm, dst_ip, dst_port, protocol, verdict, policy, country, continent, first_seen, last_seen, count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, 1) ON CONFLICT (bucket, cgroup_path, comm, dst_ip, dst_port, protocol, verdict, policy, dns_name) DO UPDATE SET count = count + 1, last_seen = max(last_seen, excluded.last_seen)",
                rusqlite::params![
                    query::bucket_of(t), e.cgroup_path, e.comm, e.dst_ip, e.dst_port,
                    e.protocol, e.verdict, e.policy, e.country, e.continent, t
                ],
            )
            .unwrap();
            prev = hash;
        }
        finish_v6_store(&c, 20, &prev);
    }

    let mut s = Store::open(&path).unwrap();
    let version: i64 = s
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::store::schema::VERSION);
    s.append(&Batch {
        events: (21..=30).map(ev).collect(),
        ..Default::default()
    })
    .unwrap();
    let kept: Vec<(i64, i64)> = s
        .conn
        .prepare("SELECT length(record), length(prev_hash) FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        kept[..20].iter().all(|&(r, p)| r > 0 && p == 32),
        "old rows keep theirs"
    );
    assert!(
        kept[20..].iter().all(|&(r, p)| r == 0 && p == 0),
        "new rows are compact"
    );
    // Old flows and new ones under one path id; counts as the events'.
    let flows = query::flows(&s, 0, i64::MAX, &|_| true, false).unwrap();
    assert_eq!(flows.iter().map(|f| f.count).sum::<u64>(), 30);
    assert!(
        flows
            .iter()
            .all(|f| f.cgroup_path == "/llm.slice/inference"),
        "{flows:?}"
    );
    let paths: i64 = s
        .conn
        .query_row("SELECT count(*) FROM cgroup_paths", [], |r| r.get(0))
        .unwrap();
    assert_eq!(paths, 1);
    let by_id = |cond: &str| -> i64 {
        s.conn
            .query_row(
                &format!("SELECT count(*) FROM events WHERE {cond}"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        by_id("seq <= 20 AND cgroup_ref = 0 AND cgroup_path != ''"),
        20
    );
    assert_eq!(
        by_id("seq > 20 AND cgroup_ref > 0 AND cgroup_path = ''"),
        10
    );

    let k = key();
    let files = export(&s, &k, 0, 100);
    let r = verify::verify(&files, Some(&k.verifying_key())).unwrap();
    assert_eq!((r.records_in_window, r.records_exported), (30, 30));
    // Refusals come from their index, old rows and new alike.
    let (denied, _) =
        query::events_where(&s, 0, i64::MAX, 0, usize::MAX, query::Rows::Refused, &|e| {
            e.verdict == "denied"
        })
        .unwrap();
    assert_eq!(denied.len(), 10, "every third of 30");

    // Retention past the upgrade: the first row kept is a compact one.
    assert_eq!(s.purge_before(T0 + 25 * SEC, "age").unwrap(), 24);
    let files = export(&s, &k, 0, 100);
    let r = verify::verify(&files, Some(&k.verifying_key())).unwrap();
    assert_eq!((r.records_in_window, r.records_exported), (6, 6));

    // A compact row whose predecessor is removed outside retention.
    s.conn
        .execute("DELETE FROM events WHERE seq = 27", [])
        .unwrap();
    let req = bundle::Request {
        since: T0 + 27 * SEC,
        until: T0 + 100 * SEC,
        keep: &|_| true,
        filter: serde_json::Value::Null,
        by_process: false,
        progress: None,
    };
    let err = bundle::build(&s, &k, &req).unwrap_err().to_string();
    assert!(err.contains("record seq 27 is gone"), "{err}");
}

/// summary.md stays a page however large the window: the flow tables show
/// the largest 50, the timeline one line per workload, destination and
/// hour; everything is in flows.csv.
#[test]
fn the_summary_is_bounded_and_the_data_files_hold_everything() {
    // 600 denied connects to 120 addresses from one cgroup, 5 ports each.
    let (_d, s) = store_of(
        (0..600)
            .map(|i| {
                // One per second: all in one hour (00:40-00:50).
                let mut e = (*ev(i)).clone();
                e.verdict = "denied";
                e.rule = "default";
                e.country = "US".into();
                e.dst_ip = format!("203.0.113.{}", i % 120);
                e.dst_port = 8000 + (i / 120) as u16;
                Arc::new(e)
            })
            .collect(),
    );
    let k = key();
    let files = export(&s, &k, 0, 2_000);
    let md = String::from_utf8(files["summary.md"].clone()).unwrap();
    assert!(md.lines().count() < 400, "{} lines", md.lines().count());
    assert!(
        md.contains("... and 550 more flows (600 in all; the 50 largest are shown"),
        "{md}"
    );
    // 120 addresses in the one hour: 120 timeline lines, 5 flows each.
    assert_eq!(
        md.matches("denied: /llm.slice/inference to 203.0.113.")
            .count(),
        120,
        "{md}"
    );
    assert!(md.contains("(5 in 5 flows, last "), "{md}");
    let csv = String::from_utf8(files["flows.csv"].clone()).unwrap();
    assert_eq!(csv.lines().count(), 601, "every flow is in flows.csv");
}

/// summary.md tells monitor-mode flows apart by what the kernel counted
/// for them: one that sent data (its bytes), one refused at the connect
/// (one SYN, no payload: never connected), one with packets but no
/// payload (not known whether it connected); the Art. 44 account and the
/// country table add up the same; a by-process export says it has no
/// counts instead of calling everything "never connected".
#[test]
fn the_summary_says_what_monitored_flows_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    let flow = |i: i64, ip: &str| {
        let mut e = (*ev(i)).clone();
        e.verdict = "would_deny";
        e.rule = "default";
        e.country = "US".into();
        e.dst_ip = ip.into();
        e
    };
    // (address, packets, bytes) harvested after each one's event.
    let counted = [
        ("203.0.113.2", 9, 1234),
        ("203.0.113.3", 1, 0),
        ("203.0.113.4", 4, 0),
    ];
    let events = counted
        .iter()
        .enumerate()
        .map(|(i, (ip, _, _))| Arc::new(flow(i as i64 + 1, ip)))
        .collect();
    let repeats = counted
        .iter()
        .enumerate()
        .map(|(i, (ip, packets, bytes))| crate::store::Repeat {
            event: flow(i as i64 + 2, ip),
            count: 0,
            packets: *packets,
            bytes: *bytes,
        })
        .collect();
    s.append(&Batch {
        events,
        repeats,
        ..Default::default()
    })
    .unwrap();
    let k = key();
    let md = String::from_utf8(export(&s, &k, 0, 100)["summary.md"].clone()).unwrap();
    eprintln!("{md}");
    assert!(!md.contains("left the host"), "{md}");
    let what = |ip: &str| {
        super::summary::what_happened(&md, ip).unwrap_or_else(|| panic!("no row for {ip}: {md}"))
    };
    assert_eq!(
        what("203.0.113.2"),
        "not blocked (monitor), 1234 bytes sent"
    );
    assert_eq!(what("203.0.113.3"), "not blocked, never connected");
    assert_eq!(
        what("203.0.113.4"),
        "not blocked (monitor), 0 bytes sent (4 packets without payload: whether it connected is not recorded)"
    );
    assert!(
        md.contains("Of these 3 flows, 1 sent 1234 bytes of data out of the host (each a transfer to review), 1 never connected or sent nothing, 1 sent packets without data"),
        "{md}"
    );
    assert_eq!(
        table_rows(&md, "## Connections by destination country"),
        ["| US | 0 | 0 | 3 | 1234 |"]
    );

    let req = bundle::Request {
        since: T0,
        until: T0 + 100 * SEC,
        keep: &|_| true,
        filter: serde_json::Value::Null,
        by_process: true,
        progress: None,
    };
    let files = bundle::build(&s, &k, &req).unwrap().0;
    let md = String::from_utf8(files["summary.md"].clone()).unwrap();
    assert!(!md.contains("never connected"), "{md}");
    assert!(
        md.contains("not blocked (monitor), bytes not counted per process"),
        "{md}"
    );
}

/// What a Markdown reader shows of escaped text: each backslash escape
/// is the character after it.
fn shown(cell: &str) -> String {
    let mut out = String::new();
    let mut chars = cell.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// A workload (its comm and cgroup path), a policy and a baseline that name
/// themselves with Markdown cannot forge rows or headings of summary.md:
/// each is one row, its text shown literally.
#[test]
fn hostile_names_are_shown_literally_in_the_summary() {
    let comm = "x|\n# Forged heading";
    let path = "/evil|slice\r\n## Forged `path` <b>[link](http://x)</b> *em* \u{202e}";
    let policy = "p|q\n# Forged policy \\| | |";
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    let mut e = (*ev(3)).clone();
    e.comm = comm.into();
    e.cgroup_path = path.into();
    e.policy = policy.into();
    // A drift alert whose baseline and new name are hostile too.
    let mut alert = e.clone();
    alert.verdict = "drift";
    alert.rule = "baseline";
    alert.kernel_seq = 0;
    alert.kernel_cpu = 0;
    alert.drift = Some(Box::new(crate::events::Drift {
        attempt: "denied".into(),
        baseline: "b|\n# Forged baseline".into(),
        baseline_sha256: "cd".repeat(32),
        kind: "name".into(),
        known: vec!["a|b\n## Forged known".into()],
        listed: true,
        value: "x.example|\n# Forged value".into(),
    }));
    let mut b = Batch {
        events: vec![Arc::new(e), Arc::new(alert)],
        ..Default::default()
    };
    b.policy_sets.push(PolicySet {
        unix_nanos: T0,
        generation: 1,
        policies: vec![PolicyVersion {
            name: policy.into(),
            mode: "enforce".into(),
            file: "/etc/p.yaml".into(),
            sha256: "ab".repeat(32),
            text: "kind: EgressPolicy\n".into(),
        }],
    });
    s.append(&b).unwrap();
    let k = key();
    let files = export(&s, &k, 0, 10);
    verify::verify(&files, Some(&k.verifying_key())).unwrap();
    let md = String::from_utf8(files["summary.md"].clone()).unwrap();
    eprintln!("{md}");

    let headings: Vec<&str> = md.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(headings.len(), 7, "{headings:#?}");
    assert!(
        !headings.iter().any(|h| h.contains("Forged")),
        "{headings:#?}"
    );
    assert!(
        md.lines()
            .filter(|l| l.contains("Forged"))
            .all(|l| l.starts_with("| ") || l.starts_with("- ")),
        "every hostile name stays inside its row or timeline line:\n{md}"
    );

    let denied = table_rows(&md, "## Denied attempts");
    assert_eq!(denied.len(), 1, "{denied:#?}");
    let row = cells(denied[0]);
    assert_eq!(row.len(), 9, "{row:#?}");
    assert_eq!(row[3], "blocked");
    let row = [&row[..3], &row[4..]].concat();
    assert_eq!(
        row[3],
        r"/evil\|slice\\x0d\\x0a\#\# Forged \`path\` \<b\>\[link\](http://x)\</b\> \*em\* \\u{202e}"
    );
    assert_eq!(
        shown(&row[3]),
        r"/evil|slice\x0d\x0a## Forged `path` <b>[link](http://x)</b> *em* \u{202e}"
    );
    assert_eq!(row[4], r"x\|\\x0a\# Forged heading");
    assert_eq!(shown(&row[4]), r"x|\x0a# Forged heading");
    assert_eq!(shown(&row[7]), r"p|q\x0a# Forged policy \| | |");

    let drift = table_rows(&md, crate::evidence::summary::DRIFT);
    assert_eq!(drift.len(), 1, "{drift:#?}");
    let row = cells(drift[0]);
    assert_eq!(row.len(), 8, "{row:#?}");
    assert_eq!(shown(&row[2]), r"name x.example|\x0a# Forged value");
    assert_eq!(shown(&row[7]), r"a|b\x0a## Forged known");

    let policies = table_rows(&md, "## Policy record");
    assert_eq!(policies.len(), 1, "{policies:#?}");
    let row = cells(policies[0]);
    assert_eq!(row.len(), 5, "{row:#?}");
    assert_eq!(shown(&row[1]), r"p|q\x0a# Forged policy \| | |");
    assert_eq!(row[3], format!("`{}`", "ab".repeat(32)));

    let timeline: Vec<&str> = md.lines().filter(|l| l.contains("denied: ")).collect();
    assert_eq!(timeline.len(), 1, "{md}");
    assert!(
        timeline[0].contains(r"denied: /evil\|slice\\x0d\\x0a\#\# Forged"),
        "{}",
        timeline[0]
    );
    assert!(
        md.contains(r"policy set in force: p\|q\\x0a\# Forged policy \\\| \| \| (enforce)"),
        "{md}"
    );
}

/// The same hostile names in report.html are text: no tag, attribute or
/// line of theirs survives escaping; each is shown once, escaped.
#[test]
fn hostile_names_are_text_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("store.db")).unwrap();
    let mut e = (*ev(3)).clone();
    e.comm = "<script>".into();
    e.cgroup_path = "/x\"><script>alert(1)</script><b x='".into();
    e.policy = "<img src=x onerror=alert(1)>".into();
    e.dns_name = "</td></tr></table><h1>Forged</h1>".into();
    s.append(&Batch {
        events: vec![Arc::new(e)],
        ..Default::default()
    })
    .unwrap();
    let k = key();
    let files = export(&s, &k, 0, 10);
    verify::verify(&files, Some(&k.verifying_key())).unwrap();
    let html = String::from_utf8(files["report.html"].clone()).unwrap();
    for raw in ["<script", "<img", "<h1>Forged", "<b x="] {
        assert!(!html.contains(raw), "{raw} in the page:\n{html}");
    }
    assert!(
        html.contains("/x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;b x=&#39;"),
        "{html}"
    );
    assert!(html.contains("&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;h1&gt;Forged&lt;/h1&gt;"));
    assert!(!html.contains("http://") && !html.contains("https://"));
}

/// report.html's figures are the store's: attempts per country and
/// verdict (chart and table), refusals per hour summing to the store's,
/// the answer at the top, and the policies with their digests.
#[test]
fn report_figures_are_the_stores() {
    let (_d, s) = store(30);
    let k = key();
    let files = export(&s, &k, 0, 40);
    let html = String::from_utf8(files["report.html"].clone()).unwrap();
    // ev(i): every third second a denied attempt to the US, else allowed to DE.
    for (country, verdict, n) in [
        ("US", "denied", 10),
        ("DE", "allowed", 20),
        ("US", "allowed", 0),
    ] {
        let bar = format!("class=\"bar\" data-country=\"{country}\" data-verdict=\"{verdict}\" data-count=\"{n}\"");
        assert!(html.contains(&bar), "{bar}:\n{html}");
        let cell = format!("data-country=\"{country}\" data-cloud=\"-\" data-verdict=\"{verdict}\" data-count=\"{n}\"");
        assert!(html.contains(&cell), "{cell}");
    }
    let denied: u64 = html
        .split("class=\"bucket\" data-start=\"")
        .skip(1)
        .map(|g| g.split("data-denied=\"").nth(1).unwrap())
        .map(|r| r.split('"').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(denied, 10, "{html}");
    assert!(html.contains("data-left-flows=\"0\""));
    assert!(html.contains("No connection outside the allowed regions was let through. 10 attempts to leave them were blocked"));
    assert!(
        html.contains(&format!(
            "data-policy=\"eu-only\" data-sha256=\"{}\"",
            "ab".repeat(32)
        )),
        "{html}"
    );
    assert!(html.contains("data-deadline=\"notification\""));
}

#[test]
fn thousands_are_grouped() {
    use super::report::thousands;
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1234), "1,234");
    assert_eq!(thousands(1_234_567), "1,234,567");
}

/// Every character Markdown acts on is escaped; nothing else changes.
#[test]
fn markdown_escape_covers_the_active_characters() {
    use super::summary::md;
    assert_eq!(
        md("/kubepods.slice/pod-1.scope"),
        "/kubepods.slice/pod-1.scope"
    );
    assert_eq!(md(r"\|`*_[]<>#&!~$"), r"\\\|\`\*\_\[\]\<\>\#\&\!\~\$");
    assert_eq!(
        md("a\tb\u{7f}\u{85}\u{2028}c"),
        r"a\\x09b\\x7f\\x85\\u{2028}c"
    );
    assert_eq!(md("Grüße 名前"), "Grüße 名前");
}

/// A local user who made symlinks at the names export used to write (in
/// a shared directory: `<out>.partial` and `<out>.parts-PID`) cannot make
/// it write into another file: the victims stay as they were, the links
/// are left alone, and the bundle is written through a private directory.
#[test]
fn export_never_writes_through_a_symlink_made_beside_its_output() {
    use std::os::unix::fs::symlink;
    let (_d, s) = store(10);
    let k = key();
    let shared = tempfile::tempdir().unwrap();
    let victim = shared.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let victim_dir = shared.path().join("victim-dir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("events.jsonl"), "precious").unwrap();
    let out = shared.path().join("bundle.tar");
    let partial = shared.path().join("bundle.partial");
    let parts = shared
        .path()
        .join(format!("bundle.tar.parts-{}", std::process::id()));
    symlink(&victim, &partial).unwrap();
    symlink(&victim_dir, &parts).unwrap();
    let req = bundle::Request {
        since: T0,
        until: T0 + 20 * SEC,
        keep: &|_| true,
        filter: serde_json::Value::Null,
        by_process: false,
        progress: None,
    };
    bundle::export(&s, &k, &req, &out).unwrap();

    for v in [victim.clone(), victim_dir.join("events.jsonl")] {
        let now = std::fs::read(&v).unwrap();
        assert!(
            now == b"precious",
            "{} was written through a symlink: {} bytes now",
            v.display(),
            now.len()
        );
    }
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 1);
    assert_eq!(std::fs::read_link(&partial).unwrap(), victim);
    assert_eq!(std::fs::read_link(&parts).unwrap(), victim_dir);
    assert!(std::fs::symlink_metadata(&out).unwrap().is_file());
    let files = super::archive::read_tar(&out).unwrap();
    let r = verify::verify(&files, Some(&k.verifying_key())).unwrap();
    assert_eq!(r.records_exported, 10);
    // Nothing of the export is left beside the output.
    let mut names: Vec<String> = std::fs::read_dir(shared.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bundle.partial".to_string(),
            "bundle.tar".into(),
            format!("bundle.tar.parts-{}", std::process::id()),
            "victim".into(),
            "victim-dir".into()
        ]
    );
}

/// With NATS publishing (`keep_unpublished`), age retention keeps the
/// events the stream has not acknowledged; size retention (bounded) still
/// removes them, and records each one it removed as a `nats_unpublished`
/// gap.
#[test]
fn retention_keeps_unpublished_events_by_age_and_records_them_by_size() {
    use crate::store::published;
    let (_d, mut s) = store(100);
    s.set_published(published::ACKED_KEY, 40).unwrap();
    // A cursor only moves forward.
    s.set_published(published::ACKED_KEY, 10).unwrap();
    assert_eq!(s.published(published::ACKED_KEY).unwrap(), Some(40));
    let by_age = crate::store::retention::Retention {
        max_age: Some(std::time::Duration::from_secs(10)),
        keep_unpublished: true,
        ..Default::default()
    };
    // Every event is older than the limit; only the acknowledged go.
    let removed = s.enforce_retention(&by_age, T0 + 1000 * SEC).unwrap();
    assert_eq!(removed.events_by_age, 40);
    assert_eq!(s.unpublished().unwrap(), 60);
    let gaps = |s: &Store| -> i64 {
        s.conn
            .query_row(
                "SELECT coalesce(sum(count), 0) FROM gaps WHERE kind = ?1",
                [published::GAP_KIND],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(gaps(&s), 0);
    let by_size = crate::store::retention::Retention {
        max_bytes: Some(1),
        keep_unpublished: true,
        ..Default::default()
    };
    let removed = s.enforce_retention(&by_size, T0 + 1000 * SEC).unwrap();
    assert!(removed.events_by_size > 0);
    assert_eq!(gaps(&s), removed.events_by_size as i64);
    assert_eq!(s.unpublished().unwrap(), 60 - removed.events_by_size);
}

/// A node's part of the stream as its publisher sends it: every record
/// with the hash it follows, through the proto and back (as `fleet export`
/// reads it), and checkpoints signed at T0 + `t` s over the head at `seq`.
fn streamed(s: &mut Store, k: &SigningKey, checkpoints: &[(i64, i64)]) -> super::fleet::NodeStream {
    use super::fleet::{StreamCheckpoint, StreamRecord};
    let (events, _) = query::events(s, i64::MIN, i64::MAX, 0, 100_000, &|_| true).unwrap();
    let last = events.last().map(|(seq, _)| *seq).unwrap_or(0);
    let prevs: std::collections::HashMap<i64, [u8; 32]> =
        s.chain_prevs(1, last).unwrap().into_iter().collect();
    let records = events
        .into_iter()
        .map(|(seq, e)| StreamRecord {
            seq,
            prev: prevs[&seq],
            event: Event::from(crate::api::pb::Event::from(&e)),
        })
        .collect();
    let store_id = s.store_id().unwrap();
    let public_key = super::key::public_hex(&k.verifying_key());
    let checkpoints = checkpoints
        .iter()
        .map(|&(t, seq)| {
            let hash: Vec<u8> = s
                .conn
                .query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
                    r.get(0)
                })
                .unwrap();
            let c = s
                .checkpoint_at(k, 1, "attached", T0 + t * SEC, seq, chain::to32(&hash))
                .unwrap();
            StreamCheckpoint {
                store_id: store_id.clone(),
                public_key: public_key.clone(),
                checkpoint: c,
            }
        })
        .collect();
    super::fleet::NodeStream {
        records,
        checkpoints,
        flows: Vec::new(),
    }
}

fn fleet_request(since: i64, until: i64) -> super::fleet::Request<'static> {
    super::fleet::Request {
        since: T0 + since * SEC,
        until: T0 + until * SEC,
        keep: &|_| true,
        filter: serde_json::Value::Null,
        source: serde_json::json!({"stream": "EGRESS"}),
    }
}

/// Two nodes' streams: alpha (30 records, heartbeats every 10 s) and beta
/// (20 records, signed only up to seq 10).
fn two_nodes() -> (
    std::collections::BTreeMap<String, super::fleet::NodeStream>,
    [SigningKey; 2],
    Vec<tempfile::TempDir>,
) {
    let (ka, kb) = (key(), SigningKey::from_bytes(&[9; 32]));
    let (da, mut a) = store(30);
    let (db, mut b) = store(20);
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(
        "alpha".to_string(),
        streamed(&mut a, &ka, &[(10, 10), (20, 20), (30, 30)]),
    );
    nodes.insert("beta".to_string(), streamed(&mut b, &kb, &[(10, 10)]));
    (nodes, [ka, kb], vec![da, db])
}

/// Rewrites a fleet manifest's digests, as anyone can (nothing signs it):
/// only the chains and the nodes' checkpoints can then catch a change.
fn redigest(files: &mut bundle::Files) {
    let mut m: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    for (name, data) in files.iter() {
        if name != "manifest.json" {
            m["files"][name] = hex::encode(Sha256::digest(data)).into();
        }
    }
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
}

/// A fleet bundle keeps each node's chain: verify re-links both, finds
/// alpha's window signed to its end (the chain is carried past the window
/// to the next checkpoint) and beta's signed only up to seq 10, and tells
/// pinned keys from the rest.
#[test]
fn a_fleet_bundle_verifies_each_node_by_its_own_chain_and_key() {
    let (nodes, [ka, kb], _dirs) = two_nodes();
    let (files, summaries) = super::fleet::build(nodes, &fleet_request(5, 25)).unwrap();
    assert_eq!(summaries.len(), 2);
    let alpha = &summaries[0];
    assert_eq!(
        (alpha.node.as_str(), alpha.in_window, alpha.exported),
        ("alpha", 20, 20)
    );
    assert_eq!((alpha.signed_up_to, alpha.unsigned), (Some(30), 0));
    let beta = &summaries[1];
    assert_eq!(
        (beta.in_window, beta.signed_up_to, beta.unsigned),
        (16, Some(10), 10)
    );
    // Seven of alpha's records are denials (every third from seq 6).
    assert_eq!(alpha.refused_total, 7);
    let chain: serde_json::Value =
        serde_json::from_slice(&files["nodes/alpha/chain.json"]).unwrap();
    assert_eq!(chain["anchor"]["seq"], 4);
    assert_eq!(chain["links_after_window"].as_array().unwrap().len(), 6);
    let md = String::from_utf8(files["summary.md"].clone()).unwrap();
    assert!(md.contains("| alpha | 20 | 20 | 30 | 0 | 0 |"), "{md}");
    assert!(md.contains("| beta | 16 | 16 | 10 | 10 | 0 |"), "{md}");

    let r = super::fleet::verify(&files, &[ka.verifying_key(), kb.verifying_key()]).unwrap();
    let by: Vec<_> = r
        .nodes
        .iter()
        .map(|n| {
            (
                n.node.as_str(),
                n.pinned,
                n.records_exported,
                n.signed_up_to,
                n.unsigned,
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("alpha", true, 20, Some(30), 0),
            ("beta", true, 16, Some(10), 10)
        ]
    );
    let r = super::fleet::verify(&files, &[ka.verifying_key()]).unwrap();
    assert!(r.nodes[0].pinned && !r.nodes[1].pinned);
    // Through a real tar, as `verify` reads it.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fleet.tar");
    bundle::write_tar(&files, &out).unwrap();
    let back = super::archive::read_tar(&out).unwrap();
    assert!(super::fleet::is_fleet(&back));
    assert_eq!(back, files);
}

/// What someone who can write to the stream or the bundle could change is
/// caught, even with the manifest's digests made anew (nothing signs
/// them): a record changed, a chain re-linked around a changed record, the
/// window's end cut off, a node's key replaced.
#[test]
fn changes_to_a_fleet_bundle_are_caught_by_the_nodes_chains_and_checkpoints() {
    let (nodes, [ka, kb], _dirs) = two_nodes();
    let (files, _) = super::fleet::build(nodes, &fleet_request(5, 25)).unwrap();
    let keys = [ka.verifying_key(), kb.verifying_key()];
    let err = |f: &bundle::Files| super::fleet::verify(f, &keys).unwrap_err().to_string();

    // A byte changed, digests untouched.
    let mut f = files.clone();
    f.get_mut("nodes/beta/events.jsonl").unwrap()[20] ^= 1;
    assert!(err(&f).contains("SHA-256 differs"), "{}", err(&f));

    // A record's destination changed, digests made anew.
    let jsonl = String::from_utf8(files["nodes/alpha/events.jsonl"].clone()).unwrap();
    let changed = jsonl.replacen("203.0.113.2", "198.51.100.2", 1);
    let mut f = files.clone();
    f.insert(
        "nodes/alpha/events.jsonl".into(),
        changed.clone().into_bytes(),
    );
    redigest(&mut f);
    assert!(
        err(&f).contains("differs from the record the chain holds"),
        "{}",
        err(&f)
    );

    // The same with the chain re-linked from that record on: the
    // checkpoint alpha signed at seq 10 no longer matches.
    let mut chain: serde_json::Value =
        serde_json::from_slice(&files["nodes/alpha/chain.json"]).unwrap();
    let mut prev = chain::decode32(chain["anchor"]["hash"].as_str().unwrap()).unwrap();
    let mut lines = changed.lines();
    for l in chain["links"].as_array_mut().unwrap() {
        let d = chain::digest(lines.next().unwrap());
        let h = chain::link(&prev, &d);
        l["digest"] = hex::encode(d).into();
        l["hash"] = hex::encode(h).into();
        prev = h;
    }
    for l in chain["links_after_window"].as_array_mut().unwrap() {
        let d = chain::decode32(l["digest"].as_str().unwrap()).unwrap();
        let h = chain::link(&prev, &d);
        l["hash"] = hex::encode(h).into();
        prev = h;
    }
    let mut f = files.clone();
    f.insert("nodes/alpha/events.jsonl".into(), changed.into_bytes());
    f.insert(
        "nodes/alpha/chain.json".into(),
        serde_json::to_vec_pretty(&chain).unwrap(),
    );
    redigest(&mut f);
    assert!(err(&f).contains("the chain was rewritten"), "{}", err(&f));

    // The window's last ten records left out (records, links and the
    // links after the window): the checkpoint alpha signed at T0 + 20 s,
    // inside the window, names seq 20.
    let mut chain: serde_json::Value =
        serde_json::from_slice(&files["nodes/alpha/chain.json"]).unwrap();
    chain["links"].as_array_mut().unwrap().truncate(10);
    chain["links_after_window"] = serde_json::json!([]);
    chain["records_in_window"] = 10.into();
    chain["records_exported"] = 10.into();
    chain["signed_up_to_seq"] = 10.into();
    let kept: Vec<&str> = jsonl.lines().take(10).collect();
    let mut f = files.clone();
    f.insert(
        "nodes/alpha/events.jsonl".into(),
        format!("{}\n", kept.join("\n")).into_bytes(),
    );
    f.insert(
        "nodes/alpha/chain.json".into(),
        serde_json::to_vec_pretty(&chain).unwrap(),
    );
    redigest(&mut f);
    assert!(
        err(&f).contains("records were left out at the end"),
        "{}",
        err(&f)
    );

    // Beta's key swapped for another (its checkpoints no longer verify).
    let other = SigningKey::from_bytes(&[11; 32]);
    let hex_key = super::key::public_hex(&other.verifying_key());
    let mut f = files.clone();
    f.insert(
        "nodes/beta/node.pub".into(),
        format!("{hex_key}\n").into_bytes(),
    );
    let mut m: serde_json::Value = serde_json::from_slice(&f["manifest.json"]).unwrap();
    m["nodes"]["beta"]["public_key"] = hex_key.into();
    f.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&m).unwrap(),
    );
    redigest(&mut f);
    assert!(
        err(&f).contains("is not signed by the node key"),
        "{}",
        err(&f)
    );

    // A node's file the manifest does not name.
    let mut f = files.clone();
    f.insert("nodes/gamma/events.jsonl".into(), Vec::new());
    redigest(&mut f);
    assert!(
        err(&f).contains("of a node the manifest does not name"),
        "{}",
        err(&f)
    );
}

/// What the stream cannot prove is refused by name at export: records
/// missing inside the window, a node without a signed checkpoint, two
/// different records at one position.
#[test]
fn a_stream_that_cannot_prove_a_node_is_refused_at_export() {
    let (mut nodes, _, _dirs) = two_nodes();
    nodes
        .get_mut("alpha")
        .unwrap()
        .records
        .retain(|r| r.seq != 12 && r.seq != 13);
    let e = super::fleet::build(nodes, &fleet_request(5, 25))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node alpha: the stream lacks records seq 12 to 13"),
        "{e}"
    );

    let (mut nodes, _, _dirs) = two_nodes();
    nodes.get_mut("beta").unwrap().checkpoints.clear();
    let e = super::fleet::build(nodes, &fleet_request(5, 25))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("node beta: the stream holds no signed checkpoint"),
        "{e}"
    );

    let (mut nodes, _, _dirs) = two_nodes();
    let alpha = nodes.get_mut("alpha").unwrap();
    let mut twin = alpha.records[7].clone();
    twin.event.dst_port = 9;
    alpha.records.push(twin);
    let e = super::fleet::build(nodes, &fleet_request(5, 25))
        .unwrap_err()
        .to_string();
    assert!(e.contains("two different records at seq 8"), "{e}");

    // A record that says it follows another hash than the record before.
    let (mut nodes, _, _dirs) = two_nodes();
    nodes.get_mut("alpha").unwrap().records[9].prev = [1; 32];
    let e = super::fleet::build(nodes, &fleet_request(5, 25))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("record seq 10 says it follows a hash other than record seq 9's"),
        "{e}"
    );

    // The same record sent twice (a retry after the duplicate window) is
    // one record.
    let (mut nodes, _, _dirs) = two_nodes();
    let alpha = nodes.get_mut("alpha").unwrap();
    let again = alpha.records[7].clone();
    alpha.records.push(again);
    let (_, s) = super::fleet::build(nodes, &fleet_request(5, 25)).unwrap();
    assert_eq!(s[0].in_window, 20);
}

/// The publisher sends checkpoints a batch at a time, oldest first, and
/// none that signs a record the stream has not acknowledged yet.
#[test]
fn checkpoints_are_published_in_order_after_their_records() {
    let k = key();
    let (_d, mut s) = store(30);
    for (t, seq) in [(10, 10), (20, 20), (30, 30)] {
        let hash: Vec<u8> = s
            .conn
            .query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap();
        s.checkpoint_at(&k, 1, "attached", T0 + t * SEC, seq, chain::to32(&hash))
            .unwrap();
    }
    let seqs = |after: i64, acked: i64, limit: usize| -> Vec<i64> {
        s.checkpoints_to_publish(after, acked, limit)
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect()
    };
    assert_eq!(seqs(i64::MIN, 25, 512), [10, 20]);
    assert_eq!(seqs(i64::MIN, 30, 1), [10]);
    assert_eq!(seqs(T0 + 10 * SEC, 30, 512), [20, 30]);
    assert_eq!(seqs(T0 + 30 * SEC, 30, 512), Vec::<i64>::new());
}

/// A store of every kind of row: rows version 6 wrote (the record and the
/// link kept in the row, the path in it), compact rows (the path by id),
/// rows in a container, with a process (executable, arguments, parent),
/// drift alerts, a CIDR rule.
fn store_of_every_kind() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(include_str!("../store/v6_tables.sql"))
            .unwrap();
        let mut prev = [0u8; 32];
        for seq in 1..=10 {
            let (_, hash) = insert_v6_row(&c, seq, &prev);
            prev = hash;
        }
        finish_v6_store(&c, 10, &prev);
    }
    let mut s = Store::open(&path).unwrap();
    let kind = |i: i64| -> Arc<Event> {
        let mut e = match i % 5 {
            0 => in_container(i),
            _ => (*ev(i)).clone(),
        };
        if i % 4 == 0 {
            e.exe = format!("/usr/bin/probe-{}", i % 3);
            e.args = vec!["probe".into(), format!("--n={i}")];
            e.ppid = 1;
            e.parent_exe = "/usr/bin/bash".into();
        }
        if i % 7 == 0 {
            // As a record from before the field existed.
            e.country_source = "";
        }
        if i % 11 == 0 {
            e.rule = "cidr";
        }
        if i % 17 == 0 {
            // A destination of its own: first contacted here.
            e.dst_ip = format!("192.0.2.{i}");
        }
        if i % 13 == 0 {
            e.verdict = "drift";
            e.rule = "baseline";
            e.drift = Some(Box::new(crate::events::Drift {
                attempt: "allowed".into(),
                baseline: "b".into(),
                baseline_sha256: "cd".repeat(32),
                kind: "country".into(),
                known: vec!["DE".into()],
                listed: true,
                value: "US".into(),
            }));
        }
        Arc::new(e)
    };
    for batch in [11..=40, 41..=41, 42..=120] {
        let mut b = Batch {
            events: batch.clone().map(kind).collect(),
            ..Default::default()
        };
        if *batch.start() == 11 {
            // A policy whose file in the bundle has a name too long for a
            // tar header of its own.
            b.policy_sets.push(PolicySet {
                unix_nanos: T0,
                generation: 1,
                policies: vec![PolicyVersion {
                    name: format!("eu-only-{}", "x".repeat(120)),
                    mode: "enforce".into(),
                    file: "/etc/p.yaml".into(),
                    sha256: "ab".repeat(32),
                    text: "kind: EgressPolicy\n".into(),
                }],
            });
        }
        s.append(&b).unwrap();
    }
    (dir, s)
}

/// Reading records by id (an export's `record_of`) gives each row's event
/// and record exactly as the queries' `event_and_record` does, whether
/// each is read into a new event or into the strings of the one before
/// (of another kind of row).
#[test]
fn records_read_by_id_are_the_rows_records() {
    let (_d, s) = store_of_every_kind();
    // 0: `event_and_record`; 1: by id; 2: by id, into the last event.
    let read = |how: u8| -> Vec<(i64, Event, String)> {
        let columns = if how == 0 {
            query::EVENT_COLUMNS
        } else {
            query::RECORD_COLUMNS
        };
        let mut stmt = s
            .conn
            .prepare(&format!("SELECT {columns} FROM events ORDER BY seq"))
            .unwrap();
        let mut refs = query::Refs::new(&s);
        let mut rows = stmt.query([]).unwrap();
        let mut all: Vec<(i64, Event, String)> = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            let old = match (how, all.last()) {
                (2, Some(last)) => last.1.clone(),
                _ => Event::default(),
            };
            all.push(if how == 0 {
                query::event_and_record(r).unwrap()
            } else {
                query::record_of(r, &mut refs, old).unwrap()
            });
        }
        all
    };
    let by_id = read(1);
    assert_eq!(by_id.len(), 120);
    assert_eq!(by_id, read(0));
    assert_eq!(by_id, read(2));
    let kept = |cond: &str| -> i64 {
        s.conn
            .query_row(
                &format!("SELECT count(*) FROM events WHERE {cond}"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // Every kind is there.
    assert_eq!(kept("length(prev_hash) = 32 AND record != ''"), 10);
    assert!(kept("exe_ref > 0 AND args_ref > 0 AND parent_exe_ref > 0") > 0);
    assert!(kept("container_ref > 0") > 0);
    assert!(kept("drift != ''") > 0);
    assert!(kept("cgroup_ref = 0") > 0 && kept("cgroup_ref > 0") > 0);

    // An edited row is refused the same way.
    s.conn
        .execute("UPDATE events SET country = 'FR' WHERE seq = 50", [])
        .unwrap();
    let mut stmt = s
        .conn
        .prepare(&format!(
            "SELECT {} FROM events WHERE seq = 50",
            query::RECORD_COLUMNS
        ))
        .unwrap();
    let err = stmt
        .query_row([], |r| {
            query::record_of(r, &mut query::Refs::new(&s), Event::default())
        })
        .unwrap_err();
    assert!(err.to_string().contains("record seq 50"), "{err}");
}

/// The files of a tar, and where each entry's header and data are.
fn tar_layout(path: &std::path::Path) -> (bundle::Files, Vec<(String, u64, u64, u64)>) {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    let layout = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.raw_header_position(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect();
    (super::archive::read_tar(path).unwrap(), layout)
}

/// A file of a bundle without what is made at export time: the
/// manifest's time (and report.html's digest in it), report.html's.
fn timeless(name: &str, bytes: &[u8]) -> Vec<u8> {
    match name {
        "manifest.json" => {
            let mut m: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            m["created"] = "".into();
            m["files"]["report.html"] = "".into();
            serde_json::to_vec(&m).unwrap()
        }
        "report.html" => {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let (before, after) = text.split_once("; made ").unwrap();
            format!(
                "{before}{}",
                &after["2026-01-01T00:00:00.000000000Z".len()..]
            )
            .into_bytes()
        }
        "manifest.sig" => Vec::new(),
        _ => bytes.to_vec(),
    }
}

/// An export written in place is the bundle the spool files make, entry
/// for entry at the same places; where it cannot be written in place (a
/// filter, a `keep` that leaves records out) it gives way to them.
#[test]
fn an_export_written_in_place_is_the_spooled_one() {
    let (_d, s) = store_of_every_kind();
    let k = key();
    let out = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut first_seen = 0;
    let mut both =
        |since: i64, until: i64, keep: &dyn Fn(&Event) -> bool, filter: serde_json::Value| {
            n += 1;
            let req = bundle::Request {
                since: T0 + since * SEC,
                until: T0 + until * SEC,
                keep,
                filter,
                by_process: false,
                progress: None,
            };
            let (a, b) = (
                out.path().join(format!("in-place-{n}.tar")),
                out.path().join(format!("spooled-{n}.tar")),
            );
            let in_place = bundle::export_both_ways(&s, &k, &req, &a, &b).unwrap();
            if in_place.is_none() {
                return false;
            }
            let ((fa, la), (fb, lb)) = (tar_layout(&a), tar_layout(&b));
            assert_eq!(la, lb, "{since}..{until}: the entries' places");
            assert!(fa.keys().any(|n| n.len() > 100), "a long name");
            assert_eq!(
                std::fs::metadata(&a).unwrap().len(),
                std::fs::metadata(&b).unwrap().len()
            );
            assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
            for (name, bytes) in &fa {
                assert!(
                    timeless(name, bytes) == timeless(name, &fb[name]),
                    "{since}..{until}: {name} differs"
                );
            }
            verify::verify(&fa, Some(&k.verifying_key())).unwrap();
            let html = String::from_utf8(fa["report.html"].clone()).unwrap();
            first_seen = first_seen.max(html.matches("<tr data-address=\"192.0.2.").count());
            true
        };
    let all = &|_: &Event| true;
    // The whole store; from a version 6 row; from a compact row; one
    // record; none; the window past the records.
    for (since, until) in [(0, 1000), (3, 50), (25, 90), (41, 42), (0, 1), (500, 600)] {
        assert!(
            both(since, until, all, serde_json::Value::Null),
            "{since}..{until} in place"
        );
    }
    // Records left out: through the spool files.
    assert!(!both(
        0,
        1000,
        &|e: &Event| e.verdict != "denied",
        serde_json::Value::Null
    ));
    assert!(!both(
        0,
        1000,
        all,
        serde_json::json!({"verdict": ["denied"]})
    ));
    assert!(
        first_seen > 0,
        "some destinations are first contacted in a window"
    );
}

/// Flows sorted by the rank of their path (an export's) are the flows in
/// the order `flows_each` gives them, whole minutes and edges, paths in
/// rows and by id, refused ones alone or all.
#[test]
fn flows_ranked_by_path_are_the_flows_in_their_order() {
    let (_d, s) = store_of_every_kind();
    // Paths that sort around the others, one of them only in old rows.
    s.conn
        .execute(
            "UPDATE events SET cgroup_path = '/a.slice/first' WHERE seq = 4",
            [],
        )
        .unwrap();
    let read = |since: i64, until: i64, rows: query::Rows, ranked: bool| {
        let mut all = Vec::new();
        let each = if ranked {
            query::flows_each_ranked
        } else {
            query::flows_each
        };
        let n = each(&s, since, until, &|_| true, false, rows, &mut |f| {
            all.push(f);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, all.len());
        all
    };
    let mut seen = 0;
    for (since, until) in [(0, 1000), (3, 50), (4, 5), (25, 90), (61, 119), (90, 95)] {
        for rows in [query::Rows::All, query::Rows::Refused] {
            let (a, b) = (T0 + since * SEC, T0 + until * SEC);
            let plain = read(a, b, rows, false);
            assert_eq!(read(a, b, rows, true), plain, "{since}..{until} {rows:?}");
            seen += plain.len();
            if (since, until, rows) == (4, 5, query::Rows::All) {
                assert_eq!(plain[0].cgroup_path, "/a.slice/first");
            }
        }
    }
    assert!(seen > 0);
}
