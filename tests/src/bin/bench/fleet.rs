//! Publishing to NATS JetStream (issue 17): how fast the daemon's
//! publisher drains a backlog into a real three-server JetStream cluster
//! on loopback (replicas 3, every message acknowledged), and the daemon
//! CPU that costs per 10k events/s.
//!
//! The daemon first records `EVENTS` new-destination events without NATS,
//! and its idle CPU is measured; then it is restarted with `--nats-url`:
//! everything it stored is its backlog, and the publisher is the only
//! work it has. Rate and CPU are taken from the first acknowledgement to
//! the last, the idle rate subtracted.
use std::time::{Duration, Instant};

use serde_json::json;

use super::{daemon::Daemon, report::Figure, report::Report, run_load, settle, Bench};

const EVENTS: u64 = 100_000;

fn head(d: &Daemon) -> i64 {
    d.status()["store"]["chain_seq"].as_i64().unwrap_or(0)
}

/// CPU seconds the cluster's servers used so far.
fn servers_cpu(cluster: &integration_tests::nats::NatsCluster) -> f64 {
    cluster
        .pids()
        .into_iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            super::daemon::cpu_of_stat(&stat).1
        })
        .sum()
}

pub fn publish(b: &mut Bench, r: &mut Report, args: &[std::ffi::OsString]) {
    // EVENTS first decisions (each to a destination of its own), at a
    // rate the ring carries without loss.
    run_load(
        b,
        "att/mon",
        &[
            "udp",
            &EVENTS.to_string(),
            "30",
            "2000000",
            "20000",
            "40000000",
        ],
    );
    let d = b.daemon.as_ref().unwrap();
    settle(d);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored = head(d);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let now = head(d);
        if now == stored {
            break;
        }
        stored = now;
    }
    let idle_cpu = {
        let c0 = d.cpu_seconds();
        std::thread::sleep(Duration::from_secs(3));
        (d.cpu_seconds() - c0) / 3.0
    };
    b.daemon.take().unwrap().stop();

    let cluster = integration_tests::nats::NatsCluster::start();
    let mut with_nats: Vec<std::ffi::OsString> = args.to_vec();
    with_nats.extend([
        "--nats-url".into(),
        cluster.url().into(),
        "--node".into(),
        "bench".into(),
    ]);
    let argv: Vec<&std::ffi::OsStr> = with_nats.iter().map(|a| a.as_os_str()).collect();
    b.daemon = Some(Daemon::start(
        &integration_tests::daemon_bin(),
        &argv,
        b.env.socket(),
    ));
    let d = b.daemon.as_ref().unwrap();
    let acked = |d: &Daemon| d.status()["nats"]["acked_seq"].as_i64().unwrap_or(0);
    // Every message acknowledged: events, and the flow rows and
    // checkpoints published between their batches.
    let messages = |d: &Daemon| d.status()["nats"]["published"].as_f64().unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(600);
    // From the first acknowledgement (the connection and the stream's
    // creation are not the publisher's rate) to the last.
    let (mut first, mut t0, mut cpu0, mut servers0, mut messages0) =
        (0, Instant::now(), 0.0, 0.0, 0.0);
    while Instant::now() < deadline {
        let a = acked(d);
        if a > 0 {
            (first, t0, cpu0, servers0, messages0) = (
                a,
                Instant::now(),
                d.cpu_seconds(),
                servers_cpu(&cluster),
                messages(d),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let target = head(d);
    // EGRESS_MONITOR_BENCH_PERF=DIR: where the publisher's time goes.
    let perf = super::perf_record(d, "nats-publish", 4.0);
    let mut last = first;
    while Instant::now() < deadline && last < target {
        std::thread::sleep(Duration::from_millis(50));
        last = acked(d);
    }
    let secs = t0.elapsed().as_secs_f64().max(0.001);
    let other_messages = (messages(d) - messages0 - (last - first) as f64).max(0.0);
    if let Some(mut p) = perf {
        let _ = p.wait();
    }
    let cpu = ((d.cpu_seconds() - cpu0) / secs - idle_cpu).max(0.0);
    // What the three servers took meanwhile: on 2 cores, the goal's rate
    // needs the servers' share to fit beside the daemon's.
    let servers = (servers_cpu(&cluster) - servers0) / secs;
    let published = (last - first).max(0) as f64;
    let rate = published / secs;
    let per_10k = cpu * 100.0 / (rate / 10_000.0).max(1e-9);
    let drained = last >= target;
    // A publisher that stalled says why in its log (and `status`): kept
    // with the row, for the next run to be read.
    let why: Vec<String> = if drained {
        Vec::new()
    } else {
        let log = d.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("NATS")).collect();
        let tail = lines[lines.len().saturating_sub(8)..]
            .iter()
            .map(|l| l.to_string())
            .collect();
        eprintln!("bench: NATS publishing did not drain; the daemon's last NATS lines:");
        for l in &tail {
            eprintln!("bench:   {l}");
        }
        tail
    };
    r.raw["nats_publish"] = json!({
        "stalled_log": why,
        "stored": target,
        "published_measured": published,
        "flows_and_checkpoints_meanwhile": other_messages,
        "seconds": secs,
        "rate": rate,
        "daemon_cpu": cpu,
        "servers_cpu": servers,
        "idle_cpu": idle_cpu,
        "drained": drained,
    });
    r.fig(Figure::new(
        "NATS publish rate: a backlog into a 3-server JetStream cluster on loopback (replicas 3, acknowledged, up to 2 x 512 in flight)",
        format!(
            "{rate:.0} events/s ({published:.0} events in {secs:.1} s{}, and {other_messages:.0} flow rows and checkpoints between their batches: {:.0} messages/s; CPU meanwhile: the 3 servers {:.0}%, the daemon {:.0}% (its idle subtracted) of one core, of the machine's {}%)",
            if drained { "" } else { ", NOT drained in 600 s" },
            (published + other_messages) / secs,
            servers * 100.0,
            cpu * 100.0,
            std::thread::available_parallelism().map_or(1, |n| n.get()) * 100,
        ),
        ">= 50,000 events/s",
        Some(drained && rate >= 50_000.0),
    ));
    r.fig(Figure::new(
        "daemon CPU per 10k events/s published to NATS (idle CPU subtracted; the 3 servers share the same 2 cores)",
        format!("{per_10k:.1}% of one core ({:.0}% at {rate:.0}/s)", cpu * 100.0),
        "<= 5%",
        Some(per_10k <= 5.0),
    ));
    drop(cluster);
}
