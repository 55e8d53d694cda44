//! The kernel's decision cache and flow counters against the real daemon:
//! a cached decision never outlives a policy switch, repeats are counted
//! exactly (attempts, packets and the bytes a receiver got), counts survive
//! kill -9, a full table loses no denial and blocks nothing, and cgroups
//! outside every policy leave no trace in the table.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const EPERM: i64 = 1;
/// The sink's port: not one of the test server's.
const SINK_PORT: u16 = PORT + 40;

/// A counting receiver in the test hosts' namespace, for `seconds`.
struct Sink(std::process::Child);

impl Sink {
    fn start(env: &TestEnv, seconds: u64) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &env.netns])
            .arg(probe_bin())
            .args(["sink", &SINK_PORT.to_string(), &seconds.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the sink");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("sinking"), "the sink did not start: {line}");
        Sink(child)
    }

    /// Waits for the end of its time; what arrived.
    fn totals(self) -> Value {
        let out = self.0.wait_with_output().expect("sink");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        serde_json::from_str(text.lines().last().unwrap_or("")).expect("sink totals")
    }
}

fn reload(env: &TestEnv) {
    env.cli_ok(&["policy", "reload"]);
}

fn pins(env: &TestEnv) -> std::path::PathBuf {
    env.pin_dir().join(monitor::kernel::build_id())
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// A cached allow is not used after the switch that denies it: the first
/// connect after the reload returns is refused.
#[test]
fn a_cached_allow_becomes_a_deny_within_one_switch() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();
    for _ in 0..5 {
        assert!(env.probe("sel", &["tcp", DE_V4, &port]).ok);
    }
    let first = env.expect_event("the first DE connect", WAIT, |e| {
        s(e, "dst_ip") == DE_V4 && s(e, "verdict") == "allowed"
    });
    env.set_policy("enforce", "US");
    reload(&env);
    let p = env.probe("sel", &["tcp", DE_V4, &port]);
    assert!(
        !p.ok && p.errno == EPERM,
        "a stale cached allow let DE through after the switch: {:?}",
        p.raw
    );
    let e = env.expect_event("the denial", WAIT, |e| {
        e["tgid"].as_u64() == Some(p.pid) && s(e, "verdict") == "denied"
    });
    assert!(
        e["policy_generation"].as_u64() > first["policy_generation"].as_u64(),
        "decided under the new set: {e}"
    );
}

/// A cached would_deny of a monitor policy is not used once the policy
/// enforces: the next connect is refused.
#[test]
fn a_cached_would_deny_flips_to_enforce() {
    let mut env = TestEnv::started("monitor", "DE", &[]);
    let port = PORT.to_string();
    for _ in 0..3 {
        assert!(
            env.probe("sel", &["tcp", US_V4, &port]).ok,
            "monitor lets through"
        );
    }
    env.expect_event("would_deny", WAIT, |e| {
        s(e, "dst_ip") == US_V4 && s(e, "verdict") == "would_deny"
    });
    env.set_policy("enforce", "DE");
    reload(&env);
    let p = env.probe("sel", &["tcp", US_V4, &port]);
    assert!(!p.ok && p.errno == EPERM, "{:?}", p.raw);
    // The three monitored attempts and the refused one, each under its verdict.
    env.wait_flow_count("monitored US connects", 3, WAIT, |f| {
        s(f, "dst_ip") == US_V4 && s(f, "verdict") == "would_deny"
    });
    env.wait_flow_count("refused US connects", 1, WAIT, |f| {
        s(f, "dst_ip") == US_V4 && s(f, "verdict") == "denied"
    });
}

/// 10,000 datagrams to three destinations (IPv4 and IPv6) are three events
/// and 10,000 counted attempts; the packets and bytes counted are what the
/// receiver got; TCP connects and TCP bytes likewise.
#[test]
fn flows_count_every_attempt_and_every_byte() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let sink = Sink::start(&env, 6);
    let port = SINK_PORT.to_string();
    let spray = env.probe(
        "sel",
        &["spray", "10000", "100", &port, DE_V4, DE2_V4, DE_V6],
    );
    assert!(spray.ok, "{:?}", spray.raw);
    assert_eq!(u(&spray.raw, "sent"), 10_000);
    let loop_out = env
        .probe_command("sel", &["tcp-loop", DE_V4, &port, "20", "0"])
        .output()
        .unwrap();
    let looped: Value = serde_json::from_slice(&loop_out.stdout).unwrap();
    assert_eq!(looped["connected"], 20, "{looped}");
    let sent = env.probe("sel", &["tcp-send", DE2_V4, &port, "100000"]);
    assert!(sent.ok, "{:?}", sent.raw);
    let got = sink.totals();
    assert_eq!(
        u(&got, "datagrams"),
        10_000,
        "the sink lost datagrams: {got}"
    );

    let udp = env.wait_flow_count("datagrams", 10_000, WAIT, |f| {
        s(f, "protocol") == "udp" && f["dst_port"].as_u64() == Some(u64::from(SINK_PORT))
    });
    assert_eq!(udp.len(), 3, "one flow per destination: {udp:#?}");
    for f in &udp {
        let want = if s(f, "dst_ip") == DE_V4 { 3334 } else { 3333 };
        assert_eq!(u(f, "count"), want, "{f}");
    }
    // The packets and bytes reach the store with the harvest after them.
    let deadline = std::time::Instant::now() + WAIT;
    let (packets, bytes) = loop {
        let fs: Vec<Value> = env
            .flows(&[])
            .into_iter()
            .filter(|f| {
                s(f, "protocol") == "udp" && f["dst_port"].as_u64() == Some(u64::from(SINK_PORT))
            })
            .collect();
        let p: u64 = fs.iter().map(|f| u(f, "packets")).sum();
        let b: u64 = fs.iter().map(|f| u(f, "bytes")).sum();
        if p == 10_000 || std::time::Instant::now() > deadline {
            break (p, b);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        packets,
        u(&got, "datagrams"),
        "packets counted = datagrams received"
    );
    assert_eq!(
        bytes,
        u(&got, "udp_bytes"),
        "bytes counted = bytes received"
    );
    let udp_events = env.events_within(Duration::from_millis(500), |e| {
        s(e, "protocol") == "udp" && e["dst_port"].as_u64() == Some(u64::from(SINK_PORT))
    });
    assert_eq!(
        udp_events.len(),
        3,
        "one event per new destination, not per datagram"
    );

    env.wait_flow_count("TCP connects", 20, WAIT, |f| {
        s(f, "protocol") == "tcp"
            && s(f, "dst_ip") == DE_V4
            && f["dst_port"].as_u64() == Some(u64::from(SINK_PORT))
    });
    env.wait_flow_sum("TCP bytes", "bytes", 100_000, WAIT, |f| {
        s(f, "protocol") == "tcp" && s(f, "dst_ip") == DE2_V4
    });
    assert_eq!(u(&got, "tcp_bytes"), 100_000);
}

/// A repeat is timed when it happens (at the kernel's last clock tick, in
/// boot time), not at its flow's first decision: a flow sent to for
/// seconds is first seen when the sending began and last seen when it
/// ended, within the window the sender ran in.
#[test]
fn a_flows_last_seen_is_its_last_repeat() {
    let env = TestEnv::started("enforce", "DE", &[]);
    let sink = Sink::start(&env, 15);
    let port = SINK_PORT.to_string();
    let wall = || {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        i128::try_from(t.as_nanos()).unwrap()
    };
    let text = |unix_nanos: i128| monitor::events::rfc3339_nanos(unix_nanos);
    const SEC: i128 = 1_000_000_000;
    // 150,000 datagrams, paced by the probe: 3 s at least.
    let started = wall();
    let spray = env.probe("sel", &["spray", "150000", "100", &port, DE_V4]);
    let ended = wall();
    assert!(spray.ok, "{:?}", spray.raw);
    let ours =
        |f: &Value| s(f, "dst_ip") == DE_V4 && f["dst_port"].as_u64() == Some(u64::from(SINK_PORT));
    let flows = env.wait_flow_count("datagrams", 150_000, WAIT, ours);
    let got = sink.totals();
    assert_eq!(
        u(&got, "datagrams"),
        150_000,
        "the sink lost datagrams: {got}"
    );
    // The flow may span two minutes of the store (two rows).
    let first = flows
        .iter()
        .map(|f| s(f, "first_seen"))
        .min()
        .unwrap()
        .to_string();
    let last = flows
        .iter()
        .map(|f| s(f, "last_seen"))
        .max()
        .unwrap()
        .to_string();
    // Times have one fixed-width form, so they compare as text. A second
    // of slack: the probe starts and ends inside the window, and the
    // daemon converts boot time to wall time.
    assert!(
        text(started - SEC) <= first && first <= text(started + SEC),
        "first seen {first}, the probe ran from {} to {}",
        text(started),
        text(ended)
    );
    assert!(
        text(ended - SEC) <= last && last <= text(ended + SEC),
        "last seen {last}, the probe ran from {} to {}",
        text(started),
        text(ended)
    );
    assert!(
        ended - started >= 3 * SEC && text(started + 2 * SEC) <= last,
        "last seen {last}: not when the sending ended ({} to {})",
        text(started),
        text(ended)
    );
}

/// Counts stay in the pinned table across kill -9: what was harvested is
/// not counted twice, what was not is counted once.
#[test]
fn flow_counts_survive_kill_9() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = (PORT + 41).to_string();
    let burst = |env: &TestEnv, n: u64| {
        let out = env
            .probe_command("sel", &["tcp-loop", US_V4, &port, &n.to_string(), "0"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["eperm"], n, "{v}");
    };
    burst(&env, 3000);
    let denied =
        |f: &Value| s(f, "dst_ip") == US_V4 && f["dst_port"].as_u64() == Some(u64::from(PORT + 41));
    env.wait_flow_count("harvested before the kill", 3000, WAIT, |f| {
        denied(f) && s(f, "verdict") == "denied"
    });
    env.kill_daemon();
    // While no daemon runs, the kernel keeps deciding and counting.
    burst(&env, 2000);
    env.start_daemon(&[]);
    env.wait_flow_count("after the restart", 5000, WAIT, |f| {
        denied(f) && s(f, "verdict") == "denied"
    });
    // And no later harvest adds to it.
    std::thread::sleep(Duration::from_millis(2500));
    env.wait_flow_count("settled", 5000, WAIT, |f| {
        denied(f) && s(f, "verdict") == "denied"
    });
}

/// Between two whole reads of the flow tables (here none after the first:
/// `--flow-whole-read-interval 3600`) the harvest reads only the entries
/// the kernel listed as changed: more datagrams to destinations already
/// in the table, new flows, and a busy flow that goes on through several
/// harvests (its key is listed once per harvest, often between a
/// harvest's raise of the generation and its read of the list, and its
/// later datagrams list nothing) reach the store exactly (packets and
/// bytes as the receiver counted them), with no whole read, and the
/// table's fill in `status` stays current.
#[test]
fn between_whole_reads_the_harvest_counts_what_changed_exactly() {
    let mut env = TestEnv::started("enforce", "DE", &["--flow-whole-read-interval", "3600"]);
    let sink = Sink::start(&env, 16);
    let port = SINK_PORT.to_string();
    let udp = |f: &Value| {
        s(f, "protocol") == "udp" && f["dst_port"].as_u64() == Some(u64::from(SINK_PORT))
    };
    let reads = |env: &TestEnv| {
        let st = env.status();
        let n = |name: &str| {
            flow_count(&st, name).unwrap_or_else(|| panic!("no {name} in status: {st}"))
        };
        (n("harvest_reads_whole"), n("harvest_reads_changed"))
    };
    let first = env.probe("sel", &["spray", "1000", "100", &port, DE_V4, DE2_V4]);
    assert!(first.ok, "{:?}", first.raw);
    env.wait_flow_sum("the first datagrams", "packets", 1000, WAIT, udp);
    let (whole, changed) = reads(&env);
    assert!(whole >= 1, "the first read is whole");

    // More to both destinations and a third, from a second process (a
    // flow is per process: three new flows).
    let more = env.probe(
        "sel",
        &["spray", "2001", "100", &port, DE_V4, DE2_V4, DE_V6],
    );
    assert!(more.ok, "{:?}", more.raw);
    env.wait_flow_sum("the second datagrams", "packets", 3001, WAIT, udp);
    // A busy flow: about 50,000 datagrams a second for 4 s, one process to
    // one destination already in the table.
    let busy = env.probe("sel", &["spray", "200000", "100", &port, DE_V4]);
    assert!(busy.ok, "{:?}", busy.raw);
    let got = sink.totals();
    assert_eq!(
        u(&got, "datagrams"),
        203_001,
        "the sink lost datagrams: {got}"
    );
    let flows = env.wait_flow_sum("every datagram", "packets", 203_001, WAIT, udp);
    let bytes: u64 = flows.iter().map(|f| u(f, "bytes")).sum();
    assert_eq!(
        bytes,
        u(&got, "udp_bytes"),
        "bytes counted = bytes received"
    );
    let (whole_after, changed_after) = reads(&env);
    assert_eq!(
        whole_after, whole,
        "the changes were read without a whole read of the tables"
    );
    assert!(
        changed_after > changed,
        "reads of what changed: {changed} -> {changed_after}"
    );
    let st = env.status();
    assert_eq!(
        flow_count(&st, "entries"),
        Some(6),
        "the table's fill counts the new flows: {st}"
    );
    // One event per flow, the rest counted in the flows.
    let events = env.events_within(Duration::from_millis(500), udp);
    assert_eq!(events.len(), 6, "{events:#?}");
}

/// More changed entries than one harvest chunk (`harvest::CHUNK`, 8,192)
/// at once: 12,000 new destinations, each sent to twice while no daemon
/// runs, so the first harvest after the start finds all of them changed
/// and takes them in chunks. Every attempt, packet and byte is counted
/// once: none is left behind in the kernel's table, none counted twice.
#[test]
fn a_harvest_larger_than_a_chunk_counts_every_attempt_once() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let status = env.stop_daemon().expect("daemon was running");
    assert!(status.success(), "exit status {status}");
    const PORTS: u64 = 12_000;
    let out = env
        .probe_command(
            "sel",
            &[
                "udp-burst",
                DE_V4,
                "20000",
                &(2 * PORTS).to_string(),
                &PORTS.to_string(),
            ],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    env.start_daemon(&[]);
    let extra = [
        "--group-by",
        "destination,protocol",
        "--to-cidr",
        &format!("{DE_V4}/32"),
        "--protocol",
        "udp",
    ];
    assert_eq!(
        env.status()["counters"]["lost_in_kernel"].as_u64(),
        Some(0),
        "the ring overflowed while no daemon ran: the counts below would be short"
    );
    let ours = |f: &Value| s(f, "dst_ip") == DE_V4;
    env.wait_flow_sum_of("attempts", &extra, "count", 2 * PORTS, WAIT, ours);
    env.wait_flow_sum_of("packets", &extra, "packets", 2 * PORTS, WAIT, ours);
    // Each datagram is "burst": 5 bytes of payload.
    env.wait_flow_sum_of("bytes", &extra, "bytes", 10 * PORTS, WAIT, ours);
    // Later harvests add nothing.
    std::thread::sleep(Duration::from_millis(2500));
    env.wait_flow_sum_of("settled", &extra, "count", 2 * PORTS, WAIT, ours);
}

/// A full table: every further allowed decision is an event, each refusal
/// is kept in the refusal table (reported once, its repeats counted there);
/// no denial is lost and traffic is judged as before (nothing is blocked
/// that is allowed).
#[test]
fn a_full_flow_table_loses_no_denial_and_blocks_nothing() {
    let mut env = TestEnv::started("enforce", "DE", &["--flow-table-entries", "16"]);
    // Sixteen destinations fill it.
    let fill = env.probe("sel", &["udp-burst", DE_V4, "9000", "16", "16"]);
    assert!(fill.ok, "{:?}", fill.raw);
    env.wait_status("a full table", WAIT, |st| {
        flow_count(st, "entries") == Some(16)
    });
    let port = PORT.to_string();
    let mut pids = Vec::new();
    for _ in 0..5 {
        let p = env.probe("sel", &["tcp", US_V4, &port]);
        assert!(!p.ok && p.errno == EPERM, "{:?}", p.raw);
        pids.push(p.pid);
    }
    for pid in pids {
        env.expect_event("each denial, as an event", WAIT, |e| {
            e["tgid"].as_u64() == Some(pid) && s(e, "verdict") == "denied"
        });
    }
    let ok = env.probe("sel", &["tcp", DE_V4, &port]);
    assert!(
        ok.ok,
        "an allowed connect passes with the table full: {:?}",
        ok.raw
    );
    env.expect_event("the allowed connect", WAIT, |e| {
        e["tgid"].as_u64() == Some(ok.pid) && s(e, "verdict") == "allowed"
    });
    let st = env.status();
    let flow_stat = |name: &str| flow_count(&st, name);
    assert_eq!(
        (flow_stat("refusals_filed"), flow_stat("overflow")),
        (Some(5), Some(1)),
        "the five refusals went to the refusal table, the allowed connect overflowed: {st}"
    );
    // The five denials are in the flows too (from their events).
    env.wait_flow_count("denials", 5, WAIT, |f| {
        s(f, "dst_ip") == US_V4 && s(f, "verdict") == "denied"
    });
}

/// A cgroup outside every policy: its connections and sends leave no
/// entry in the flow table and no event.
#[test]
fn unselected_cgroups_leave_no_flow() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();
    for args in [
        vec!["tcp", US_V4, &port],
        vec!["udp", US_V4, &port],
        vec!["udp", US_V6, &port],
    ] {
        assert!(env.probe("unsel", &args).ok, "{args:?}");
    }
    let sel = env.probe("sel", &["tcp", DE_V4, &port]);
    assert!(sel.ok);
    env.expect_event("the selected connect", WAIT, |e| {
        e["tgid"].as_u64() == Some(sel.pid)
    });
    let unsel = monitor::cgroups::cgroup_id(&env.cgroup("unsel")).unwrap();
    let selected = monitor::cgroups::cgroup_id(&env.cgroup("sel")).unwrap();
    let table = monitor::pipeline::harvest::Harvest::open(&pins(&env), Vec::new())
        .expect("open the pinned flow table")
        .entries();
    assert!(
        table.iter().all(|(_, k, _)| k.cgroup_id != unsel),
        "an unselected cgroup has flow entries: {table:?}"
    );
    assert!(
        table.iter().any(|(_, k, _)| k.cgroup_id == selected),
        "the selected connect is in the table (so the check above looked at the right one)"
    );
    let about_unsel = env.events_within(Duration::from_millis(300), |e| {
        e["cgroup_id"].as_u64() == Some(unsel)
    });
    assert!(about_unsel.is_empty(), "{about_unsel:?}");
}

/// `policy simulate` replays the recorded flows against a stricter
/// candidate and lists exactly the flows the kernel then denies when that
/// candidate is loaded (the ground truth: the kernel's answers and what the
/// test hosts received); a gate's exit status 3; bad candidates named.
#[test]
fn simulate_lists_exactly_what_the_stricter_policy_then_denies() {
    let env = TestEnv::started("enforce", "DE, US", &[]);
    let port = PORT.to_string();
    let targets = [DE_V4, US_V4, US2_V4];
    for ip in targets {
        let p = env.probe("sel", &["tcp", ip, &port]);
        assert!(p.ok, "{ip} is allowed now: {:?}", p.raw);
    }
    let sel = env.rel("sel");
    env.wait_flow_count("the three allowed flows", 3, WAIT, |f| {
        f["cgroup_path"].as_str() == Some(sel.as_str()) && f["verdict"] == "allowed"
    });
    // The candidate: DE by country, and one US host by CIDR.
    let strict = env.policy(
        "eu-only",
        "enforce",
        "sel",
        "  allow:\n    countries: [DE]\n    cidrs: [203.0.113.3/32]\n",
    );
    let candidate = env.dir.path().join("candidate.yaml");
    std::fs::write(&candidate, &strict).unwrap();
    let cand = candidate.to_str().unwrap();
    let out = env.cli(&["policy", "simulate", "--since", "1h", cand, "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (u(&r, "newly_denied"), u(&r, "newly_allowed")),
        (1, 0),
        "{r}"
    );
    let changed: Vec<&str> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["dst_ip"].as_str().unwrap())
        .collect();
    assert_eq!(changed, [US_V4], "{r}");
    let c = &r["changes"][0];
    assert_eq!(
        (
            c["verdict_before"].as_str(),
            c["verdict_after"].as_str(),
            c["rule_after"].as_str()
        ),
        (Some("allowed"), Some("denied"), Some("default")),
        "{r}"
    );
    let table = env.cli(&["policy", "simulate", "--since", "1h", cand]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("3 recorded flows since 1h replayed: 2 unchanged, 1 newly denied")
            && text.contains(&format!("{US_V4}:{PORT}/tcp")),
        "{text}"
    );

    // Loaded, the kernel denies exactly what simulate listed.
    env.write_policy("p.yaml", &strict);
    reload(&env);
    let before = env.arrived_forbidden().len();
    let refused: Vec<&str> = targets
        .into_iter()
        .filter(|ip| {
            let p = env.probe("sel", &["tcp", ip, &port]);
            !p.ok && p.errno == EPERM
        })
        .collect();
    assert_eq!(refused, changed, "simulate and the kernel disagree");
    // On the US side only the host the candidate allows by CIDR received
    // a connection.
    std::thread::sleep(Duration::from_millis(200));
    let arrived = &env.arrived_forbidden()[before..];
    assert_eq!(arrived.len(), 1, "{arrived:?}");

    // Bad input: the candidate's file and line, nothing simulated.
    std::fs::write(&candidate, strict.replace("[DE]", "[UK]")).unwrap();
    let out = env.cli(&["policy", "simulate", cand]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("InvalidArgument") && err.contains("candidate.yaml:9: \"UK\""),
        "{err}"
    );
}
