//! The store at node scale, alone (no daemon, no kernel): a day of
//! synthetic events shaped like a node's (a few hundred pod cgroups with
//! their real path lengths, thousands of destinations, 5% denied and 3%
//! would-deny), appended in the writer's batches on one thread; then the
//! bytes per event on disk, the first page of filtered `events` queries,
//! a 24 h `flows --group-by`, and `export` of the whole day through the
//! CLI. The queries run the same library code the daemon's API runs.
use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use monitor::{
    events::Event,
    store::{
        query::{self, Rows},
        Batch, Store,
    },
};
use serde_json::json;

use super::report::{Figure, Report};

const DAY_NS: i64 = 86_400 * 1_000_000_000;
/// The writer's batch (`BATCH_EVENTS`).
const BATCH: usize = 4096;

/// An event as the daemon stores it: enriched, its path attributed.
fn event(i: usize, t0: i64, n: usize) -> Event {
    let mut e = raw_event(i, t0, n);
    e.attribute();
    e
}

fn raw_event(i: usize, t0: i64, n: usize) -> Event {
    // A cheap, fixed pseudo-random stream: the same store every run.
    let h = (i as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(17);
    let pod = (h % 300) as usize;
    let dst = (h >> 12) % 20_000;
    let verdict = match (h >> 40) % 100 {
        0..=4 => "denied",
        5..=7 => "would_deny",
        _ => "allowed",
    };
    let countries = ["DE", "FR", "IE", "NL", "US", "SE", "PL", "FI"];
    let country = countries[((h >> 20) % countries.len() as u64) as usize];
    let t = t0 + (i as i64) * (DAY_NS / n as i64);
    Event {
        time: monitor::events::rfc3339_nanos(i128::from(t)),
        unix_nanos: i128::from(t),
        verdict,
        policy: if pod.is_multiple_of(2) { "eu-only" } else { "crm-connectors" }.into(),
        rule: if verdict == "allowed" { "country" } else { "default" },
        hook: if h & 1 == 0 { "connect4" } else { "sendmsg4" },
        protocol: if h & 1 == 0 { "tcp" } else { "udp" },
        family: "ipv4",
        dst_ip: format!("{}.{}.{}.{}", 3 + dst % 200, (dst >> 3) % 256, dst % 251, 1 + dst % 250),
        dst_port: if h & 1 == 0 { 443 } else { 53 },
        country: country.into(),
        continent: if country == "US" { "NA" } else { "EU" }.into(),
        pid: 1000 + (h % 5000) as u32,
        tgid: 1000 + (h % 5000) as u32,
        uid: 1000,
        comm: format!("worker-{}", pod % 20),
        cgroup_id: 10_000 + pod as u64,
        cgroup_path: format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:08x}_1b2c_4d5e_8f90_0123456789ab.slice/cri-containerd-{:064x}.scope",
            pod, pod
        ),
        policy_generation: 3,
        country_source: "geoip",
        kernel_cpu: (h % 2) as u32,
        kernel_seq: i as u32 + 1,
        ..Default::default()
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn goal(r: &mut Report, what: &str, value: String, goal: &str, met: bool) {
    r.fig(Figure::new(what, value, goal, Some(met)));
}

pub fn store_bench(r: &mut Report, n: usize, dir: &Path) {
    let state = dir.join("store-bench");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).expect("create the store bench directory");
    let path = state.join("store.db");
    let t0 = monitor::store::now_nanos() - DAY_NS - 60 * 1_000_000_000;
    eprintln!("bench: store: {n} events over a day");

    // Ingest: batches as the writer makes them, one thread.
    let mut s = Store::open(&path).expect("open the bench store");
    let mut spent = Duration::ZERO;
    let mut i = 0;
    while i < n {
        let events: Vec<Arc<Event>> = (i..(i + BATCH).min(n))
            .map(|k| Arc::new(event(k, t0, n)))
            .collect();
        i += events.len();
        let batch = Batch {
            events,
            ..Default::default()
        };
        let t = Instant::now();
        s.append(&batch).expect("append a batch");
        spent += t.elapsed();
    }
    drop(s);
    let rate = n as f64 / spent.as_secs_f64();
    // The chain's share: the canonical record and two hashes per event.
    let sample: Vec<Event> = (0..20_000).map(|k| event(k, t0, n)).collect();
    let t = Instant::now();
    let mut prev = [0u8; 32];
    for (k, e) in sample.iter().enumerate() {
        let c = monitor::store::chain::canonical(k as i64 + 1, e);
        prev = monitor::store::chain::link(&prev, &monitor::store::chain::digest(&c));
    }
    let chain_us = t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64;
    std::hint::black_box(prev);
    // The canonical form alone: the writer against the sorted map it is
    // held equal to, side by side.
    let time_of = |f: &dyn Fn(i64, &Event) -> String| {
        let t = Instant::now();
        let mut bytes = 0;
        for (k, e) in sample.iter().enumerate() {
            bytes += f(k as i64 + 1, e).len();
        }
        (
            t.elapsed().as_secs_f64() * 1e6 / sample.len() as f64,
            bytes / sample.len(),
        )
    };
    let (writer_us, record_bytes) = time_of(&monitor::store::chain::canonical);
    let (map_us, _) = time_of(&monitor::store::chain::canonical_by_value);
    goal(
        r,
        &format!("store: ingest on one core ({n} events, batches of {BATCH})"),
        format!(
            "{rate:.0} events/s ({:.2} µs per event, of which the hash chain {chain_us:.2} µs)",
            spent.as_secs_f64() * 1e6 / n as f64
        ),
        ">= 200000/s",
        rate >= 200_000.0,
    );

    // Size on disk once the WAL is folded in.
    {
        let c = rusqlite::Connection::open(&path).expect("open for checkpoint");
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
    }
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let per = bytes as f64 / n as f64;
    let tables = table_sizes(&path);
    goal(
        r,
        "store: bytes on disk per stored event",
        format!(
            "{per:.0} B ({:.0} MiB for {n}; {tables})",
            bytes as f64 / 1048576.0
        ),
        "<= 120 B",
        per <= 120.0,
    );

    // Queries: the first page, as the API pages them.
    let s = Store::open_read(&path).expect("open the bench store to read");
    let (since, until) = (t0, t0 + DAY_NS + 1);
    // As the API asks: the rows a verdict filter can match, then the rest.
    let page = |label: &str, rows: Rows, keep: &dyn Fn(&Event) -> bool, r: &mut Report| {
        let t = Instant::now();
        let (got, _) =
            query::events_where(&s, since, until, 0, 1000, rows, keep).expect("query events");
        let took = ms(t);
        goal(
            r,
            &format!("store query over {n} events: first page (1000) of events {label}"),
            format!("{took:.0} ms ({} events)", got.len()),
            "<= 100 ms",
            took <= 100.0,
        );
    };
    page("--since 1d", Rows::All, &|_| true, r);
    page(
        "--since 1d --verdict denied",
        Rows::Refused,
        &|e| e.verdict == "denied",
        r,
    );
    page(
        "--since 1d --country US",
        Rows::All,
        &|e| e.country == "US",
        r,
    );
    page(
        "--since 1d --policy crm-connectors --verdict would_deny",
        Rows::Refused,
        &|e| e.policy == "crm-connectors" && e.verdict == "would_deny",
        r,
    );
    for by in ["country", "cgroup,verdict"] {
        let t = Instant::now();
        // As the API groups with no filter: in SQL.
        let by: Vec<String> = by.split(',').map(String::from).collect();
        let none = query::FlowFilter::all();
        let groups = query::flows_grouped(&s, since, until, &by, &none, &|_| true)
            .expect("groupable in SQL")
            .expect("flows");
        let by = by.join(",");
        let took = ms(t);
        goal(
            r,
            &format!("store query over {n} events: flows --since 1d --group-by {by}"),
            format!("{took:.0} ms ({} groups)", groups.len()),
            "<= 100 ms",
            took <= 100.0,
        );
    }
    drop(s);

    // Export of the whole day through the CLI.
    monitor::evidence::key::load_or_create(&state).expect("a node key for the bench store");
    let bundle = dir.join("store-bench.tar");
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg("600")
        .arg(integration_tests::daemon_bin())
        .args([
            "export",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--out",
        ])
        .arg(&bundle)
        .arg("--state-dir")
        .arg(&state)
        // where the export's time went is logged at debug
        .env("RUST_LOG", "info,monitor::cli::export=debug")
        .output()
        .expect("run export");
    let secs = t.elapsed().as_secs_f64();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let export_rate = n as f64 / secs;
    goal(
        r,
        &format!("store: export (signed bundle) of {n} events"),
        if out.status.success() {
            format!(
                "{secs:.1} s ({export_rate:.0} events/s, {:.0} MiB; per event: {}; where the time went: {})",
                std::fs::metadata(&bundle).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0,
                bundle_bytes_per_event(&bundle, n),
                text.lines()
                    .find_map(|l| l.split_once("the export took: ").map(|(_, t)| t.trim()))
                    .unwrap_or("not reported")
            )
        } else {
            format!("failed: {}", text.trim())
        },
        ">= 500000 events/s",
        out.status.success() && export_rate >= 500_000.0,
    );
    r.fig(Figure::new(
        "store: the canonical record (what is hashed), written in key order vs through a sorted map",
        format!(
            "{writer_us:.2} µs vs {map_us:.2} µs per record ({:.1}x; {record_bytes} bytes per record, not stored)",
            map_us / writer_us.max(1e-9)
        ),
        "-",
        None,
    ));
    r.raw["store_bench"] = json!({
        "events": n,
        "ingest_per_s": rate,
        "chain_us_per_event": chain_us,
        "bytes": bytes,
        "export_s": secs,
        "export_output": text,
    });
    let _ = std::fs::remove_file(&bundle);
    if let Some(keep) = std::env::var_os("EGRESS_MONITOR_STORE_KEEP") {
        // For a closer look (a profile of a query or of export).
        let _ = std::fs::rename(&state, keep);
    }
    let _ = std::fs::remove_dir_all(&state);
}

/// Where a bundle's bytes go: its three largest files' bytes per event
/// (`tar tvf`), as "events.jsonl 808 B, ...".
fn bundle_bytes_per_event(bundle: &Path, n: usize) -> String {
    let Ok(out) = Command::new("tar").arg("tvf").arg(bundle).output() else {
        return "tar not available".into();
    };
    let mut files: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let size = f.get(2)?.parse().ok()?;
            let name = f.last()?.rsplit('/').next()?.to_string();
            Some((size, name))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files
        .iter()
        .take(3)
        .map(|(size, name)| format!("{name} {:.0} B", *size as f64 / n.max(1) as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes per table and index (`dbstat`), largest first, as "name N MiB".
fn table_sizes(path: &Path) -> String {
    let Ok(c) = rusqlite::Connection::open(path) else {
        return String::new();
    };
    let Ok(mut stmt) =
        c.prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 5")
    else {
        return "dbstat not available".into();
    };
    let rows: Vec<String> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, b)| format!("{name} {:.0} MiB", b as f64 / 1048576.0))
        .collect();
    rows.join(", ")
}

/// `bench store-query DIR TIMES`: the grouped flow queries of
/// `store_bench` over a kept store, `TIMES` each, with their times (the
/// first one's, then the median of the rest).
pub fn grouped_queries(dir: &Path, times: usize) {
    let s = Store::open_read(&dir.join("store.db")).expect("open the kept bench store");
    let (since, until): (i64, i64) = s
        .conn
        .query_row(
            "SELECT min(unix_nanos), max(unix_nanos) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the store's time span");
    for by in ["country", "cgroup,verdict"] {
        let by: Vec<String> = by.split(',').map(String::from).collect();
        let mut took = Vec::new();
        let mut groups = 0;
        for _ in 0..times.max(1) {
            let t = Instant::now();
            let none = query::FlowFilter::all();
            groups = query::flows_grouped(&s, since, until + 1, &by, &none, &|_| true)
                .expect("groupable in SQL")
                .expect("flows")
                .len();
            took.push(ms(t));
        }
        let first = took[0];
        let mut rest = took[1..].to_vec();
        rest.sort_by(f64::total_cmp);
        let median = rest.get(rest.len() / 2).copied().unwrap_or(first);
        println!(
            "--group-by {}: {groups} groups; first {first:.1} ms, median of the other {} {median:.1} ms",
            by.join(","),
            rest.len()
        );
    }
}
