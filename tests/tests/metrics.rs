//! Prometheus metrics end to end: the daemon serves /metrics on a loopback
//! port, known traffic from probes is counted exactly, and the scrape
//! parses as the Prometheus text format.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::*;
use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;

const WAIT: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn scrape(port: u16) -> Scrape {
    let r = loopback::get(port, "/metrics");
    assert!(r.ok(), "{}", r.status);
    assert!(
        r.content_type.starts_with("application/openmetrics-text"),
        "{}",
        r.content_type
    );
    Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

/// The value of `metric` with exactly these labels among others, if any.
fn find(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| number(&x.value))
}

fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    find(s, metric, labels).unwrap_or_else(|| {
        panic!(
            "no {metric} {labels:?} in {:#?}",
            s.samples
                .iter()
                .filter(|x| x.metric == metric)
                .collect::<Vec<_>>()
        )
    })
}

/// Scrapes until `check` holds (the pipeline and the CLI are asynchronous).
fn scrape_until(port: u16, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(port);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Decisions are counted by verdict, policy and country exactly as the
/// traffic was made; reloads, rejected files, the policy set, the database
/// identity, build info, map memory, the ring buffer and stream clients are
/// reported; anything but /metrics is 404.
#[test]
fn metrics_count_known_traffic_exactly() {
    let mut env = TestEnv::new();
    std::fs::create_dir_all(env.cgroup("mon")).unwrap();
    let allow_de = "  allow:\n    countries: [DE]\n";
    env.write_policy("eu.yaml", &env.policy("eu", "enforce", "sel", allow_de));
    env.write_policy(
        "watch.yaml",
        &env.policy("watch", "monitor", "mon", allow_de),
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    env.start_daemon(&["--metrics-addr", &addr]);
    assert!(env
        .log()
        .contains(&format!("Prometheus metrics at http://{addr}/metrics")));

    let p = PORT.to_string();
    let mut pids = env.denied_then_allowed("sel", 3, 2);
    let r = env.probe("mon", &["tcp", US_V6, &p]);
    assert!(r.ok, "monitor mode lets through: {:?}", r.raw);
    pids.push(r.pid);
    // Each probe is a process of its own, so its first attempt to a
    // destination is an event and a flow entry of its own (the flows
    // suite counts the repeats of one process).
    for pid in &pids {
        env.expect_event("probe decision", WAIT, |e: &Json| {
            e["tgid"].as_u64() == Some(*pid)
        });
    }
    let decisions = "egress_monitor_decisions_total";
    // And their six flow entries, once a harvest read the table, and a
    // harvest of what changed after the first (whole) read.
    let reads = "egress_monitor_flow_harvest_reads_total";
    let s = scrape_until(
        port,
        "the six decisions, their entries and a read of what changed",
        |s| {
            s.samples
                .iter()
                .filter(|x| x.metric == decisions)
                .map(|x| number(&x.value))
                .sum::<f64>()
                == 6.0
                && find(s, "egress_monitor_flow_table_entries", &[]) == Some(6.0)
                && find(s, reads, &[("what", "changed")]).is_some_and(|n| n >= 1.0)
        },
    );
    assert_eq!(
        find(&s, "egress_monitor_flow_repeats_total", &[]),
        Some(0.0)
    );
    assert!(
        find(
            &s,
            "egress_monitor_flow_decisions_total",
            &[("what", "decided")]
        )
        .unwrap_or(0.0)
            >= 6.0,
        "six decisions made in the kernel"
    );
    assert_eq!(
        value(
            &s,
            "egress_monitor_flow_decisions_total",
            &[("what", "overflow")]
        ),
        0.0
    );
    assert_eq!(value(&s, "egress_monitor_flow_table_entries", &[]), 6.0);
    // A harvest every second; the first read whole, then what changed.
    assert_eq!(
        value(&s, "egress_monitor_flow_harvest_interval_seconds", &[]),
        1.0
    );
    // One whole read (the first) at the start: the default interval
    // between two is a minute.
    assert_eq!(value(&s, reads, &[("what", "whole")]), 1.0);
    assert_eq!(
        value(
            &s,
            decisions,
            &[("verdict", "denied"), ("policy", "eu"), ("country", "US")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            decisions,
            &[("verdict", "allowed"), ("policy", "eu"), ("country", "DE")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            decisions,
            &[
                ("verdict", "would_deny"),
                ("policy", "watch"),
                ("country", "US")
            ]
        ),
        1.0
    );
    let total: f64 = s
        .samples
        .iter()
        .filter(|x| x.metric == decisions)
        .map(|x| number(&x.value))
        .sum();
    assert_eq!(total, 6.0, "nothing else was decided");
    assert_eq!(value(&s, "egress_monitor_events_lost_total", &[]), 0.0);
    assert_eq!(
        value(&s, "egress_monitor_events_undecodable_total", &[]),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "egress_monitor_policy_reloads_total",
            &[("result", "ok")]
        ),
        1.0
    );
    assert_eq!(value(&s, "egress_monitor_policy_generation", &[]), 1.0);
    assert_eq!(value(&s, "egress_monitor_selected_cgroups", &[]), 2.0);
    for (name, mode) in [("eu", "enforce"), ("watch", "monitor")] {
        assert_eq!(
            value(
                &s,
                "egress_monitor_policy_info",
                &[("policy", name), ("mode", mode)]
            ),
            1.0
        );
    }
    // The database identity is the one status reports.
    let status = env.cli(&["status", "-o", "json"]);
    let status: Json = serde_json::from_slice(&status.stdout).expect("status JSON");
    let sha = status["geoip"]["sha256"].as_str().expect("geoip sha256");
    assert_eq!(
        value(&s, "egress_monitor_geoip_info", &[("sha256", sha)]),
        1.0
    );
    assert_eq!(
        value(&s, "egress_monitor_geoip_prefixes", &[]),
        TEST_DB.len() as f64
    );
    assert_eq!(
        value(
            &s,
            "egress_monitor_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let ring = value(&s, "egress_monitor_ring_buffer_size_bytes", &[]);
    assert_eq!(ring, 4_194_304.0);
    let used = value(&s, "egress_monitor_ring_buffer_used_bytes", &[]);
    assert!((0.0..=ring).contains(&used), "{used}");
    let memory = value(&s, "egress_monitor_bpf_map_memory_bytes", &[]);
    assert!(
        memory >= ring,
        "map memory {memory} includes the ring buffer's {ring}"
    );
    assert!(value(&s, "egress_monitor_bpf_maps", &[]) >= 5.0);
    assert_eq!(value(&s, "egress_monitor_stream_clients", &[]), 0.0);

    // A follow stream is a client while it is connected.
    let mut follower = env.spawn_follower();
    scrape_until(port, "one stream client", |s| {
        find(s, "egress_monitor_stream_clients", &[]) == Some(1.0)
    });
    let _ = follower.kill();
    let _ = follower.wait();
    scrape_until(port, "no stream client", |s| {
        find(s, "egress_monitor_stream_clients", &[]) == Some(0.0)
    });

    // A rejected file is a failed reload and stays counted as rejected.
    env.write_policy("bad.yaml", "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: bad}\nspec:\n  mode: block\n");
    env.wait_log("policy file rejected", WAIT);
    let s = scrape_until(port, "a failed reload", |s| {
        find(
            s,
            "egress_monitor_policy_reloads_total",
            &[("result", "failed")],
        ) == Some(1.0)
    });
    assert_eq!(value(&s, "egress_monitor_policy_files_rejected", &[]), 1.0);
    assert_eq!(
        value(
            &s,
            decisions,
            &[("verdict", "denied"), ("policy", "eu"), ("country", "US")]
        ),
        3.0,
        "counts do not move without traffic"
    );

    // Repeats of one process are counted in the kernel, not decided: four
    // datagrams to one destination are one decision and three repeats,
    // which reach the metrics with the next harvest (every attempt counts
    // in decisions_total, repeats included).
    let decided = |s: &Scrape| {
        find(
            s,
            "egress_monitor_flow_decisions_total",
            &[("what", "decided")],
        )
        .unwrap_or(0.0)
    };
    let before = decided(&s);
    let r = env.probe("mon", &["spray", "4", "10", &p, DE_V4]);
    assert!(r.ok, "{:?}", r.raw);
    let s = scrape_until(port, "three repeats harvested", |s| {
        find(s, "egress_monitor_flow_repeats_total", &[]) == Some(3.0)
    });
    assert_eq!(decided(&s) - before, 1.0, "one decision in the kernel");
    assert_eq!(
        value(
            &s,
            decisions,
            &[
                ("verdict", "allowed"),
                ("policy", "watch"),
                ("country", "DE")
            ]
        ),
        4.0,
        "the four sends, counted"
    );

    let status = loopback::get(port, "/").status;
    assert!(status.contains(" 404 "), "{status}");
}

/// Without --metrics-addr nothing listens; a taken address fails the start
/// with a clear error.
#[test]
fn metrics_are_off_by_default_and_a_taken_port_is_an_error() {
    let mut env = TestEnv::new();
    env.write_policy(
        "p.yaml",
        &env.policy("p", "monitor", "sel", "  allow:\n    countries: [DE]\n"),
    );
    env.start_daemon(&[]);
    assert!(!env.log().contains("Prometheus metrics at"));
    env.stop_daemon();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(daemon_bin())
        .arg("daemon")
        .arg("--policies")
        .arg(env.policy_dir())
        .arg("--geoip")
        .arg(env.geoip())
        .arg("--cgroup-root")
        .arg(&env.cgroup_root)
        .arg("--state-dir")
        .arg(env.dir.path().join("state"))
        .arg("--pin-dir")
        .arg(env.pin_dir())
        .args(["--metrics-addr", &addr])
        .output()
        .expect("run the daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("--metrics-addr {addr}")) && err.contains("in use"),
        "{err}"
    );
}

/// A cloudRegions policy and no cloud ranges, without --require-policies:
/// the daemon runs and says loudly that those rules match nothing, in the
/// log, `status` (text and JSON) and the metrics; cloud ranges with the
/// region, put in its directory, end the warning everywhere.
#[test]
fn rules_without_their_data_are_warned_in_log_status_and_metrics() {
    let mut env = TestEnv::new();
    let body = "  allow:\n    countries: [DE]\n    cloudRegions: [\"aws:eu-west-3\"]\n";
    env.write_policy("p.yaml", &env.policy("paris", "monitor", "sel", body));
    // A port of the range this suite may use.
    let port = 19481;
    env.start_daemon(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let said = "policy paris: cloudRegions aws:eu-west-3 cannot be judged: no cloud ranges are loaded (--cloud-ranges), so they match nothing";
    env.wait_log(&format!("POLICY DATA MISSING: {said}"), WAIT);
    let status = env.status();
    let missing: Vec<&str> = status["policy_data_missing"]
        .as_array()
        .unwrap_or_else(|| panic!("no policy_data_missing in {status:#}"))
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        missing.len() == 1 && missing[0].starts_with(said),
        "{missing:?}"
    );
    let text = env.cli_ok(&["status"]);
    assert!(text.contains(&format!("DATA MISSING {said}")), "{text}");
    let metric = "egress_monitor_policy_data_missing";
    let labels = [("policy", "paris"), ("data", "cloud_ranges")];
    assert_eq!(value(&scrape(port), metric, &labels), 1.0);

    // The ranges arrive (the daemon's directory is read again): judged.
    let dir = env.no_cloud_dir();
    let tmp = dir.join("aws.csv.tmp");
    std::fs::write(
        &tmp,
        "cidr,provider,region,service\n203.0.113.0/24,aws,eu-west-3,EC2\n",
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("aws.csv")).unwrap();
    env.wait_status("no data missing", WAIT, |s| {
        s["policy_data_missing"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    });
    assert!(!env.cli_ok(&["status"]).contains("DATA MISSING"));
    scrape_until(port, "no data missing", |s| {
        find(s, metric, &labels).is_none()
    });
}
