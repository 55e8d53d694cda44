//! No denial lost in a flood: a workload that sprays new allowed
//! destinations fills the kernel's ring buffer, and its one denied connect
//! in the middle still reaches the store, the flows and the evidence
//! bundle (the last share of the ring is kept for decisions that are not
//! "allow", `monitor_common::limits::RING_RESERVE_DIVISOR`).
use std::{
    process::{Child, Stdio},
    time::Duration,
};

use integration_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
/// How long each generator sprays, and when the denied connect is made.
const FLOOD_SECS: u64 = 4;
const DENIAL_AFTER: Duration = Duration::from_secs(2);

/// The load generators, killed if the test fails before they finish.
struct Generators(Vec<Child>);

impl Generators {
    /// Two `loadgen udp` runs in cgroup `sub`, as fast as they go, each to
    /// destinations of its own (every datagram a first sight).
    fn spray(env: &TestEnv, sub: &str) -> Self {
        let secs = FLOOD_SECS.to_string();
        Generators(
            [0u32, 2_000_000]
                .iter()
                .map(|first| {
                    env.workload_command(
                        sub,
                        &loadgen_bin(),
                        &[
                            "udp",
                            "100000000",
                            &secs,
                            "2000000",
                            "0",
                            &first.to_string(),
                        ],
                    )
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("start loadgen")
                })
                .collect(),
        )
    }

    /// Waits for both; the datagrams they sent.
    fn finish(mut self) -> u64 {
        let mut sent = 0;
        for child in std::mem::take(&mut self.0) {
            let out = child.wait_with_output().expect("wait for loadgen");
            assert!(out.status.success(), "loadgen failed: {:?}", out.status);
            let v: Value = serde_json::from_slice(&out.stdout).expect("loadgen JSON");
            sent += v["ops"].as_u64().expect("loadgen ops");
        }
        sent
    }
}

impl Drop for Generators {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The daemon stopped (SIGSTOP) until dropped (SIGCONT): a reader that
/// has fallen behind, so the ring fills for certain instead of by chance.
struct Stopped(i32);

impl Stopped {
    fn new(env: &TestEnv) -> Self {
        let pid = env.daemon_pid().expect("daemon running") as i32;
        // SAFETY: plain syscall on our own child.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP the daemon"
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Test: while two generators spray allowed new destinations into a
/// ring no one reads, a denied connect made in the middle is refused,
/// reaches nobody, and is in the store (event and flow, with its
/// process and count 1) and in an exported bundle; the kernel counted
/// allowed events lost and no denial lost.
#[test]
fn a_denial_survives_a_flood_of_allowed_first_sights() {
    let mut env = flood_env();
    let since = now_rfc3339();
    let lost_before = counter(&env.status(), "lost_in_kernel");

    let stopped = Stopped::new(&env);
    let generators = Generators::spray(&env, "sel");
    std::thread::sleep(DENIAL_AFTER);
    let port = PORT.to_string();
    let denied = env.probe("sel", &["tcp", US_V4, &port]);
    assert!(
        !denied.ok && denied.errno == i64::from(libc::EPERM),
        "the connect to US is refused: {:?}",
        denied.raw
    );
    let sent = generators.finish();
    drop(stopped);

    // Ground truth: nothing reached the denied host.
    let arrived = env.arrived_forbidden();
    assert!(arrived.is_empty(), "reached the denied host: {arrived:?}");

    // The ring overflowed (the test proves nothing otherwise), and every
    // event lost was an allowed one.
    let st = env.status();
    let lost = counter(&st, "lost_in_kernel") - lost_before;
    eprintln!("flood: {sent} datagrams sent, {lost} events lost in the kernel");
    assert!(
        lost > 0,
        "the flood of {sent} datagrams never filled the ring: {st:#}"
    );
    assert_eq!(counter(&st, "denials_lost_in_kernel"), 0, "{st:#}");

    // The denial, stored with its process.
    let is_denial = |e: &Value| {
        s(e, "dst_ip") == US_V4
            && e["dst_port"].as_u64() == Some(u64::from(PORT))
            && s(e, "verdict") == "denied"
    };
    let stored = env.wait_stored(
        "the denied connect",
        &["--verdict", "denied"],
        WAIT,
        is_denial,
    );
    let event = stored.iter().find(|e| is_denial(e)).unwrap();
    assert_eq!(event["tgid"].as_u64(), Some(denied.pid), "{event:#}");
    assert_eq!(
        s(event, "exe"),
        probe_bin().display().to_string(),
        "{event:#}"
    );
    assert_eq!(s(event, "cgroup_path"), env.rel("sel"), "{event:#}");
    // One attempt, counted once (among the flood's thousands of flows).
    let flows = env.wait_flow_sum_of(
        "the denied connect",
        &["--verdict", "denied"],
        "count",
        1,
        WAIT,
        |f| is_denial(f) && s(f, "cgroup_path") == env.rel("sel"),
    );
    assert_eq!(flows.len(), 1, "{flows:#?}");

    // The bundle: its record, and no denial in the kernel's losses (the
    // controller records the kernel's losses at its next rescan).
    env.wait_log("events lost in the kernel (ring buffer full)", WAIT);
    let (bundle, counters) = exported_with_losses(&env, &since);
    let records = bundle_file(&bundle, "events.jsonl");
    let kept: Vec<Value> = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON record"))
        .filter(is_denial)
        .collect();
    assert_eq!(kept.len(), 1, "one record of the denial: {kept:#?}");
    assert_eq!(kept[0]["tgid"].as_u64(), Some(denied.pid), "{:#}", kept[0]);
    let summary = bundle_file(&bundle, "summary.md");
    let completeness = summary
        .lines()
        .find(|l| l.starts_with("Completeness:"))
        .unwrap_or_else(|| panic!("a completeness line: {summary}"));
    assert!(
        completeness.contains("; 0 of them denied, would-deny or unclassified decisions)"),
        "{completeness}"
    );
    eprintln!("{}\n{completeness}", env.cli_ok(&["status"]));
    let gaps = &counters["gaps"];
    assert_eq!(
        gaps["denials_lost_in_kernel"].as_i64(),
        Some(0),
        "{counters:#}"
    );
}

/// Test: once a flood of allowed first sights has filled the kernel's flow
/// table, a workload hammering the denied hosts (TCP and UDP, as fast as it
/// goes) while the daemon reads nothing has every refusal counted in the
/// flows: its repeats are counts in the kernel's refusal table, not an
/// event each (which would overrun the ring's reserve); none is lost.
#[test]
fn refusals_are_counted_when_allowed_flows_fill_the_flow_table() {
    let env = flood_env();
    let stopped = Stopped::new(&env);
    let generators = Generators::spray(&env, "sel");
    std::thread::sleep(DENIAL_AFTER);
    let hammer = env.hammer("sel", 1000);
    let result = env.assert_nothing_through(hammer, "a flood of allowed first sights");
    let sent = generators.finish();
    drop(stopped);

    let st = env.status();
    let flow_stat = |name: &str| {
        flow_count(&st, name).unwrap_or_else(|| panic!("no flow table count {name}: {st:#}"))
    };
    eprintln!("flood: {sent} datagrams sent; hammer: {result}");
    // The flood filled the flow table (else this proves nothing).
    assert!(flow_stat("overflow") > 0, "{st:#}");
    assert_eq!(counter(&st, "denials_lost_in_kernel"), 0, "{st:#}");
    assert_eq!(
        env.assert_refusals_counted("sel", &result),
        0,
        "each refusal counted once"
    );
    // Kept in the refusal table: the first attempt to each denied host.
    assert!(flow_stat("refusals_filed") > 0, "{st:#}");
    // The kernel's repeats are credited to the process that made them,
    // as its first attempt's event is: one flow per destination and
    // protocol, naming the probe. The daemon was stopped until the probe
    // had exited, so its process record waited in the ring while the
    // first harvest read the table; a repeat named before that record
    // was read would be a flow of no executable.
    let refused: Vec<Value> = env
        .flows(&["--verdict", "denied"])
        .into_iter()
        .filter(|f| f["cgroup_path"].as_str() == Some(env.rel("sel").as_str()))
        .collect();
    let probe = probe_bin().display().to_string();
    assert_eq!(refused.len(), 4, "two hosts, TCP and UDP: {refused:#?}");
    for f in &refused {
        assert_eq!(f["exe"].as_str(), Some(probe.as_str()), "{refused:#?}");
    }
}

/// An environment whose `sel` cgroup is enforced: loopback allowed by CIDR
/// (the generators' destinations), DE allowed, US denied; daemon running.
fn flood_env() -> TestEnv {
    let mut env = TestEnv::new();
    env.write_policy(
        "p.yaml",
        &env.policy(
            "flood",
            "enforce",
            "sel",
            "  allow:\n    countries: [DE]\n    cidrs: [\"127.0.0.0/8\"]\n",
        ),
    );
    env.start_daemon(&[]);
    env
}

/// A counter of `status -o json`; it must be there.
fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status:#}"))
}

/// Exports the window from `since` until its counters show the kernel's
/// losses (the store writes what the controller recorded within a
/// fraction of a second; bounded); the bundle and its counters.
fn exported_with_losses(env: &TestEnv, since: &str) -> (std::path::PathBuf, Value) {
    let mut last = Value::Null;
    for attempt in 0..20 {
        let bundle = export_window(
            env,
            since,
            &now_rfc3339(),
            &format!("flood-{attempt}.tar.gz"),
        );
        last = serde_json::from_str(&bundle_file(&bundle, "counters.json")).unwrap();
        if last["gaps"]["lost_in_kernel"].as_i64() > Some(0) {
            return (bundle, last);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "no bundle counted the kernel's losses: {last:#}\nlog:\n{}",
        env.log()
    );
}
