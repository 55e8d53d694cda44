//! `cargo xtask bench`: the cost of egress-monitor against the bare kernel,
//! measured side by side in one run.
//!
//! One daemon, with the full country database and two policies of 10,000
//! extra CIDRs each, attached to `<test cgroup>/att`; the workload (the
//! `loadgen` binary) runs in the client network namespace in one of three
//! cgroups, alternated round by round: `bare` (outside the attach point: no
//! program runs), `att/mon` (monitor policy) and `att/enf` (enforce policy).
//! Traffic goes to loopback inside the client namespace only; that
//! namespace has no default route, checked with `ip route get` first.
//!
//! Results: `target/bench/results.json` and `results.md` (printed too).
mod daemon;
mod faults;
mod fleet;
mod geo;
mod report;
mod scale;
mod stats;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use daemon::{log_number, Charge, Daemon, MemCgroup};
use integration_tests::TestEnv;
use report::{Figure, Report};
use serde_json::{json, Value};
use stats::Summary;

/// Rounds of the alternated connect-path comparison, seconds per run.
const ROUNDS: usize = 7;
const RUN_SECS: f64 = 1.0;
const EXTRA_CIDRS: usize = 10_000;
const VARIANTS: [(&str, &str); 5] = [
    ("bare", "no program"),
    // Trivial programs (allow at the first instruction) of the monitor's
    // types on the same hooks: what any program there costs.
    ("floor", "floor"),
    ("att/mon", "monitor"),
    ("att/enf", "enforce"),
    // Under the programs' root, selected by no policy.
    ("att/unsel", "unselected"),
];
/// Where `VARIANTS` has the floor.
const FLOOR: usize = 1;

struct Bench {
    /// The floor's programs, attached to the `floor` cgroup while the
    /// bench runs (dropped before the environment removes the cgroup).
    floor: Option<monitor::kernel::floor::Floor>,
    env: TestEnv,
    daemon: Option<Daemon>,
    /// The main daemon's memory cgroup (removed after the daemon stopped).
    mem: Option<MemCgroup>,
    loadgen: PathBuf,
    bpf_stats_old: Option<String>,
    follower: Option<Child>,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut f) = self.follower.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
        // SIGTERM; TestEnv's drop then uninstalls the pins (the pin
        // directory is the environment's) and removes netns and cgroups.
        self.daemon.take();
        if let Some(old) = self.bpf_stats_old.take() {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", old);
        }
    }
}

/// Events in the store-at-scale section (a day of them).
const STORE_EVENTS: usize = 1_000_000;

fn main() {
    integration_tests::require_root();
    if std::env::args().nth(1).as_deref() == Some("store-query") {
        // The grouped flow queries over a kept bench store
        // (`EGRESS_MONITOR_STORE_KEEP`), repeated: for profiling them.
        let dir = std::env::args()
            .nth(2)
            .expect("store-query DIR (a kept bench store)");
        let times = std::env::args()
            .nth(3)
            .map_or(10, |s| s.parse().expect("store-query DIR TIMES"));
        scale::grouped_queries(Path::new(&dir), times);
        return;
    }
    let geoip = PathBuf::from(
        std::env::var_os("EGRESS_MONITOR_GEOIP")
            .expect("EGRESS_MONITOR_GEOIP: the real country database (cargo xtask bench sets it)"),
    );
    let out_dir = PathBuf::from(
        std::env::var_os("EGRESS_MONITOR_BENCH_OUT").unwrap_or_else(|| "target/bench".into()),
    );
    let loadgen = std::env::var_os("EGRESS_MONITOR_LOADGEN")
        .map(PathBuf::from)
        .expect("EGRESS_MONITOR_LOADGEN: the loadgen binary (cargo xtask bench sets it)");
    let started = Instant::now();
    if std::env::args().nth(1).as_deref() == Some("geo-lookup") {
        // Only the geo lookup section (no daemon, no workload): for
        // working on the country table.
        let mut r = Report::new();
        geo::geo_lookup(&mut r, &geoip);
        println!("{}", r.markdown());
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("store") {
        // Only the store at scale (no daemon, no kernel).
        let n = std::env::args()
            .nth(2)
            .map_or(STORE_EVENTS, |s| s.parse().expect("store EVENTS"));
        let mut r = Report::new();
        let dir = tempfile::tempdir().expect("a directory for the store bench");
        scale::store_bench(&mut r, n, dir.path());
        r.command = format!("cargo xtask bench --store {n}");
        r.raw["bench_seconds"] = json!(started.elapsed().as_secs_f64());
        r.write_named(&out_dir, "store");
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("faults") {
        // Only the load-and-faults scenario.
        let secs = std::env::args()
            .nth(2)
            .map_or(600, |s| s.parse().expect("faults SECONDS"));
        faults::faults(secs, &geoip, &loadgen, &out_dir);
        return;
    }
    let since_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();

    let env = TestEnv::new();
    let mut b = Bench {
        floor: None,
        env,
        daemon: None,
        mem: MemCgroup::create(),
        loadgen,
        bpf_stats_old: None,
        follower: None,
    };
    // att/unsel: under the programs' root, selected by no policy.
    for sub in [
        "bare",
        "floor",
        "att/mon",
        "att/enf",
        "att/dns",
        "att/unsel",
    ] {
        std::fs::create_dir_all(b.env.cgroup(sub)).expect("create bench cgroup");
    }
    b.floor = Some(
        monitor::kernel::floor::Floor::attach(&b.env.cgroup("floor"))
            .expect("attach the floor's trivial programs"),
    );
    check_routes(&b.env, &["127.0.0.1", "127.1.0.1", "127.0.255.1"]);
    write_policies(&b.env, 0);

    let mut r = Report::new();
    r.raw["geoip"] = json!(geoip.display().to_string());
    r.raw["extra_cidrs_per_policy"] = json!(EXTRA_CIDRS);

    // The daemon, with the real database.
    let state = b.env.dir.path().join("state");
    let args: Vec<std::ffi::OsString> = vec![
        "--policies".into(),
        b.env.policy_dir().into(),
        "--geoip".into(),
        geoip.clone().into(),
        "--cgroup-root".into(),
        b.env.cgroup("att").into(),
        "--state-dir".into(),
        state.clone().into(),
        "--pin-dir".into(),
        b.env.pin_dir().into(),
        "--rescan-interval".into(),
        "1".into(),
        // The names workload's resolver (a test host).
        "--dns-resolver".into(),
        "198.51.100.2/32".into(),
        // Room for every destination the "new destination" runs use.
        "--flow-table-entries".into(),
        "262144".into(),
    ];
    let against_run = std::env::args().nth(1).as_deref() == Some("against");
    let mut args = args;
    // The cloud ranges a node runs with (`cargo xtask bench` sets it; else
    // the daemon's default directory, where one is installed).
    if let Some(cloud) = std::env::var_os("EGRESS_MONITOR_CLOUD") {
        args.extend(["--cloud-ranges".into(), cloud]);
    }
    if against_run {
        // Two builds take turns on the same cgroups: each daemon removes
        // its programs as it exits, so one set judges at a time.
        args.push("--detach-on-exit".into());
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let t = Instant::now();
    b.daemon = Some(Daemon::start_in(
        &integration_tests::daemon_bin(),
        &args,
        b.env.socket(),
        b.mem.as_ref(),
    ));
    let start_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!("bench: daemon up in {start_ms:.0} ms");
    std::thread::sleep(Duration::from_millis(500));
    geo_and_memory_idle(&b, &mut r, start_ms);

    if std::env::args().nth(1).as_deref() == Some("nats") {
        // Only publishing to NATS JetStream (a cluster of its own).
        let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.to_os_string()).collect();
        fleet::publish(&mut b, &mut r, &args);
        r.command = "cargo xtask bench --nats".into();
        r.raw["bench_seconds"] = json!(started.elapsed().as_secs_f64());
        r.write_named(&out_dir, "nats");
        return;
    }
    if against_run {
        // Only the cost of a repeat, this build against another's daemon.
        let other = PathBuf::from(
            std::env::args()
                .nth(2)
                .expect("bench against BIN LABEL: the other build's daemon"),
        );
        let label = std::env::args().nth(3).unwrap_or_else(|| "other".into());
        let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.to_os_string()).collect();
        against(&mut b, &mut r, &args, &other, &label);
        r.command = format!("cargo xtask bench --against {label}");
        r.raw["bench_seconds"] = json!(started.elapsed().as_secs_f64());
        r.write_named(&out_dir, "against");
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("connect") {
        // Only the connect and send paths against no program and the
        // floor: for working on the programs' cost.
        connect_path(&b, &mut r);
        r.command = "bench connect".into();
        r.raw["bench_seconds"] = json!(started.elapsed().as_secs_f64());
        r.write_named(&out_dir, "connect");
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("cost") {
        // Only the kernel decision cost per hook (bpf_stats): for working
        // on what one program run costs.
        decision_cost(&mut b, &mut r);
        r.command = "bench cost".into();
        r.raw["bench_seconds"] = json!(started.elapsed().as_secs_f64());
        r.write_named(&out_dir, "cost");
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("pipeline") {
        // Only the event pipeline and the repeated-traffic row, then the
        // store's queries of what it stored: for working on the daemon's
        // CPU (with EGRESS_MONITOR_BENCH_PERF) and memory.
        events_under_load(&b, &mut r);
        let window = pipeline(&mut b, &mut r);
        store(&b, &mut r, since_ns, window, &state);
        r.command = "bench pipeline".into();
        r.write_named(&out_dir, "pipeline");
        return;
    }
    connect_path(&b, &mut r);
    decision_cost(&mut b, &mut r);
    dns_cost(&mut b, &mut r);
    let pipeline_window = pipeline(&mut b, &mut r);
    policy_swap(&mut b, &mut r);
    store(&b, &mut r, since_ns, pipeline_window, &state);
    cloud_accuracy(&mut r, &geoip);
    geo::geo_lookup(&mut r, &geoip);
    scale::store_bench(&mut r, STORE_EVENTS, b.env.dir.path());
    let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.to_os_string()).collect();
    fleet::publish(&mut b, &mut r, &args);

    r.raw["bench_seconds"] = json!(started.elapsed().as_secs_f64());
    r.write(&out_dir);
    drop(b);
}

/// Every address the workload sends to (`addrs`) is local in the client
/// namespace, and nothing else routes at all.
fn check_routes(env: &TestEnv, addrs: &[&str]) {
    for &addr in addrs {
        let out = Command::new("ip")
            .args(["-n", &env.client_ns, "route", "get", addr])
            .output()
            .expect("ip route get");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("local ") && text.contains(" dev lo "),
            "{addr} is not local on lo in {}: {text}; refusing to send",
            env.client_ns
        );
    }
    let out = Command::new("ip")
        .args(["-n", &env.client_ns, "route", "get", "8.8.8.8"])
        .output()
        .expect("ip route get");
    assert!(
        !out.status.success(),
        "the client namespace {} has a default route; refusing to run",
        env.client_ns
    );
}

/// Two policies (monitor on att/mon, enforce on att/enf) with the EU/EEA
/// regions, loopback allowed, and EXTRA_CIDRS deny CIDRs each (private and
/// ULA ranges, nowhere near the test hosts). `bump` adds one more, for swaps.
fn write_policies(env: &TestEnv, bump: u32) {
    let mut cidrs = String::new();
    for i in 0..EXTRA_CIDRS {
        if i % 5 == 4 {
            cidrs.push_str(&format!("      - \"fd00:0:{:x}::/48\"\n", i));
        } else {
            cidrs.push_str(&format!("      - \"10.{}.{}.0/24\"\n", i >> 8, i & 255));
        }
    }
    if bump > 0 {
        cidrs.push_str(&format!("      - \"172.16.{}.0/24\"\n", bump % 256));
    }
    for (name, mode, sub) in [
        ("bench-monitor", "monitor", "att/mon"),
        ("bench-enforce", "enforce", "att/enf"),
    ] {
        let body = format!(
            "  allow:\n    groups: [EU, EEA]\n    cidrs: [\"127.0.0.0/8\", \"::1/128\"]\n  deny:\n    cidrs:\n{cidrs}"
        );
        env.write_policy(&format!("{name}.yaml"), &env.policy(name, mode, sub, &body));
    }
    // The names workload: its resolver is a test host, which the real
    // database does not place.
    env.write_policy(
        "bench-dns.yaml",
        &env.policy(
            "bench-dns",
            "enforce",
            "att/dns",
            "  allow:\n    cidrs: [\"198.51.100.0/24\"]\n",
        ),
    );
}

/// Runs the load generator in the client namespace inside `sub`.
fn loadgen(b: &Bench, sub: &str, args: &[&str]) -> Child {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", b.env.client_ns))
        .arg(&b.loadgen)
        .args(args)
        .stdout(Stdio::piped());
    in_cgroup(&mut cmd, &b.env.cgroup(sub));
    cmd.spawn().expect("start loadgen")
}

/// `cmd` starts in the cgroup at `dir` (it moves itself there between fork
/// and exec, so it never runs outside).
pub(crate) fn in_cgroup(cmd: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt;
    let procs = dir.join("cgroup.procs");
    // SAFETY: one write through std::fs between fork and exec, on a path
    // computed before the fork.
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().expect("loadgen");
    assert!(out.status.success(), "loadgen failed: {:?}", out.status);
    serde_json::from_slice(&out.stdout).expect("loadgen JSON")
}

fn run_load(b: &Bench, sub: &str, args: &[&str]) -> Value {
    finish(loadgen(b, sub, args))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn geo_and_memory_idle(b: &Bench, r: &mut Report, start_ms: f64) {
    let d = b.daemon.as_ref().unwrap();
    let log = d.log();
    let merged_ms = log_number(&log, "networks merged into", " prefixes in ");
    let prefixes = log_number(&log, "networks merged into", "networks merged into ");
    let load_ms = log_number(&log, "into the kernel geo table", " MiB) in ");
    let policy_ms = log_number(&log, "policy set generation", "cloud-region rules ");
    r.raw["daemon_log_startup"] = json!(log);
    if let (Some(m), Some(l)) = (merged_ms, load_ms) {
        r.fig(Figure::new(
            "geo: full database into kernel maps (read+merge, load)",
            format!(
                "{:.0} ms ({m:.0} + {l:.0}), {} prefixes",
                m + l,
                prefixes.unwrap_or(0.0)
            ),
            "<= 300 ms",
            Some(m + l <= 300.0),
        ));
    }
    if let Some(p) = policy_ms {
        r.fig(Figure::new(
            "policy: first policy set in force (3 policies, 2x10k CIDRs)",
            format!("{p:.1} ms"),
            "-",
            None,
        ));
    }
    r.fig(Figure::new(
        "daemon start to running",
        format!("{start_ms:.0} ms"),
        "-",
        None,
    ));
    let maps = d.maps();
    let memlock: u64 = maps.values().map(|m| m.2).sum();
    let ring = maps
        .values()
        .find(|m| m.0 == 27)
        .map(|m| m.1)
        .unwrap_or_default();
    r.raw["maps"] = json!(maps
        .iter()
        .map(|(id, m)| json!({"id": id, "type": m.0, "max_entries": m.1, "memlock": m.2}))
        .collect::<Vec<_>>());
    r.raw["ring_bytes"] = json!(ring);
    r.fig(Figure::new(
        "kernel map memory (memlock, all maps of the daemon)",
        format!("{:.1} MiB in {} maps", mib(memlock), maps.len()),
        "-",
        None,
    ));
    charge_row(
        r,
        "idle",
        b.mem.as_ref().and_then(MemCgroup::charge),
        "<= 320 MiB (the DaemonSet's request)",
        320.0,
    );
    // The goal leaves most of the 100 MiB under load (the `RSS under load`
    // row) to what waits for the store and the clients.
    let idle = mib(d.vm("VmRSS"));
    r.fig(Figure::new(
        "daemon RSS idle (the full country database and cloud ranges loaded)",
        format!(
            "{idle:.1} MiB (anonymous {:.1} MiB; peak since start {:.1} MiB)",
            mib(d.vm("RssAnon")),
            mib(d.vm("VmHWM"))
        ),
        "<= 64 MiB",
        Some(idle > 0.0 && idle <= 64.0),
    ));
}

/// What the kernel charged the daemon's memory cgroup, as a row: the
/// memory it cannot reclaim (anonymous and kernel: its maps, sockets) is
/// held against `goal_mib`, the page cache (the store's file) shown beside.
/// The bench's flags, not the DaemonSet's: a flow table 4 times the default,
/// so more kernel memory. A row without a goal where the kernel does not
/// say.
fn charge_row(r: &mut Report, when: &str, charge: Option<Charge>, goal: &str, goal_mib: f64) {
    let name = format!(
        "daemon memory charged to its cgroup, {when} (anonymous + kernel, maps included; --flow-table-entries 262144)"
    );
    match charge {
        Some(c) => {
            let held = mib(c.anon + c.kernel);
            r.fig(Figure::new(
                &name,
                format!(
                    "{held:.1} MiB (anonymous {:.1}, kernel {:.1}; page cache {:.1} more)",
                    mib(c.anon),
                    mib(c.kernel),
                    mib(c.file)
                ),
                goal,
                Some(c.kernel > 0 && held <= goal_mib),
            ))
        }
        None => r.fig(Figure::new(
            &name,
            "not measured: no memory controller with kernel memory figures".into(),
            goal,
            None,
        )),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// (1) TCP connect+accept+close and unconnected UDP sendmsg, A B C A B C.
fn connect_path(b: &Bench, r: &mut Report) {
    let secs = RUN_SECS.to_string();
    for (mode, args) in [
        ("tcp", vec!["tcp", "1000000", secs.as_str()]),
        ("udp", vec!["udp", "5000000", secs.as_str(), "256"]),
        ("quic", vec!["udp", "5000000", secs.as_str(), "4"]),
    ] {
        let mut runs: Vec<Vec<Value>> = vec![Vec::new(); VARIANTS.len()];
        for round in 0..ROUNDS {
            for (i, (sub, _)) in VARIANTS.iter().enumerate() {
                settle(b.daemon.as_ref().unwrap());
                let v = run_load(b, sub, &args);
                assert_eq!(v["errors"], 0, "{mode} in {sub} had errors: {v}");
                runs[i].push(v);
            }
            eprintln!("bench: {mode} round {}/{ROUNDS}", round + 1);
        }
        let mut raw = json!({});
        let series = |i: usize, k: &str| -> Vec<f64> { runs[i].iter().map(|v| f(v, k)).collect() };
        for (i, (_, name)) in VARIANTS.iter().enumerate() {
            raw[name] = json!({
                "rate": Summary::of(&series(i, "rate")).json(),
                "p50_ns": Summary::of(&series(i, "lat_p50_ns")).json(),
                "p99_ns": Summary::of(&series(i, "lat_p99_ns")).json(),
                "runs": runs[i],
            });
        }
        let what = match mode {
            "tcp" => "TCP connect+accept+close",
            "udp" => "UDP sendmsg (unconnected, 256 destinations)",
            _ => "UDP sendmsg (unconnected, 4 destinations, QUIC-like)",
        };
        let lat = if mode == "tcp" {
            "connect()"
        } else {
            "sendto()"
        };
        let base_rate = series(0, "rate");
        let base_p50 = series(0, "lat_p50_ns");
        let floor_rate = series(FLOOR, "rate");
        for (i, (_, name)) in VARIANTS.iter().enumerate() {
            let rate = Summary::of(&series(i, "rate"));
            let p50 = Summary::of(&series(i, "lat_p50_ns"));
            let p99 = Summary::of(&series(i, "lat_p99_ns"));
            r.fig(Figure::new(
                &format!("{what} rate, {name}"),
                format!("{:.0}/s (IQR {:.0})", rate.median, rate.iqr()),
                "-",
                None,
            ));
            r.fig(Figure::new(
                &format!("{what} {lat} latency, {name}"),
                format!(
                    "p50 {:.2} µs (IQR {:.2}), p99 {:.2} µs",
                    p50.median / 1e3,
                    p50.iqr() / 1e3,
                    p99.median / 1e3
                ),
                "-",
                None,
            ));
            if i == 0 {
                continue;
            }
            // Paired per round: variant against the bare run next to it.
            let ratios: Vec<f64> = series(i, "rate")
                .iter()
                .zip(&base_rate)
                .map(|(v, b)| v / b)
                .collect();
            let deltas: Vec<f64> = series(i, "lat_p50_ns")
                .iter()
                .zip(&base_p50)
                .map(|(v, b)| v - b)
                .collect();
            let ratio = Summary::of(&ratios);
            let delta = Summary::of(&deltas);
            raw[name]["ratio_to_bare"] = ratio.json();
            raw[name]["p50_delta_ns"] = delta.json();
            if i != FLOOR {
                // Paired per round against the floor run next to it: what
                // the monitor costs beyond any program on these hooks.
                let to_floor: Vec<f64> = series(i, "rate")
                    .iter()
                    .zip(&floor_rate)
                    .map(|(v, f)| v / f)
                    .collect();
                let to_floor = Summary::of(&to_floor);
                raw[name]["ratio_to_floor"] = to_floor.json();
                let want = if *name == "unselected" { 0.995 } else { 0.98 };
                r.fig(Figure::new(
                    &format!("{what} rate, {name} / floor"),
                    format!(
                        "{:.3} (IQR {:.3}; {:.1}% beyond the floor)",
                        to_floor.median,
                        to_floor.iqr(),
                        (1.0 - to_floor.median) * 100.0
                    ),
                    &format!(">= {want}"),
                    Some(to_floor.median >= want),
                ));
            }
            let goal = *name == "enforce" && mode != "udp";
            let want = if mode == "tcp" { 0.99 } else { 0.95 };
            r.fig(Figure::new(
                &format!("{what} rate, {name} / no program"),
                format!(
                    "{:.3} (IQR {:.3}; cost {:.1}%)",
                    ratio.median,
                    ratio.iqr(),
                    (1.0 - ratio.median) * 100.0
                ),
                &if goal {
                    format!(">= {want}")
                } else {
                    "-".into()
                },
                goal.then_some(ratio.median >= want),
            ));
            r.fig(Figure::new(
                &format!("{what} {lat} p50, {name} - no program"),
                format!(
                    "{:+.2} µs (IQR {:.2})",
                    delta.median / 1e3,
                    delta.iqr() / 1e3
                ),
                if goal && mode == "tcp" {
                    "<= 0.5 µs"
                } else {
                    "-"
                },
                (goal && mode == "tcp").then_some(delta.median <= 500.0),
            ));
        }
        r.raw[format!("connect_path_{mode}")] = raw;
    }
}

/// BPF statistics of every program the daemon attached: (hook, id) to
/// (run_time_ns, run_cnt).
fn prog_stats(d: &Daemon) -> Vec<(String, u64, u64, u64)> {
    let status = d.status();
    let mut out = Vec::new();
    for p in status["programs"].as_array().cloned().unwrap_or_default() {
        let id = p["program_id"].as_u64().unwrap_or(0);
        let hook = p["hook"].as_str().unwrap_or("?").to_string();
        let (ns, runs) = run_stats(id);
        out.push((hook, id, ns, runs));
    }
    out
}

/// (run_time_ns, run_cnt) of one program.
fn run_stats(id: u64) -> (u64, u64) {
    let o = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    )
}

/// As `prog_stats`, for the floor's programs (attached to its cgroup):
/// what a trivial program costs in the same statistics.
fn floor_stats(b: &Bench) -> Vec<(String, u64, u64, u64)> {
    let o = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(b.env.cgroup("floor"))
        .arg("-j")
        .output()
        .expect("bpftool cgroup show");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for p in v.as_array().cloned().unwrap_or_default() {
        let id = p["id"].as_u64().unwrap_or(0);
        let name = p["name"].as_str().unwrap_or("?");
        let (ns, runs) = run_stats(id);
        out.push((
            format!("{} (floor)", name.trim_start_matches("floor_")),
            id,
            ns,
            runs,
        ));
    }
    out
}

/// A decision-cost workload: label, cgroups, loadgen arguments, what the
/// sock_addr hook meets, its goal in ns.
type Workload<'a> = (&'a str, Vec<&'a str>, Vec<String>, &'a str, f64);

/// Kernel events per second while a QUIC-like sender sends 100,000
/// datagrams a second to 10 destinations: repeats are counted, not
/// reported.
fn events_under_load(b: &Bench, r: &mut Report) {
    let d = b.daemon.as_ref().unwrap();
    let decided = |d: &Daemon| -> u64 {
        let st = d.status();
        ["allowed", "denied", "would_deny", "wouldDeny"]
            .iter()
            .map(|k| st["counters"][k].as_u64().unwrap_or(0))
            .sum()
    };
    // The ten destinations are decided once, before the measured run.
    run_load(b, "att/enf", &["udp", "1000", "1", "10", "10000"]);
    settle(d);
    let before = decided(d);
    let cpu_before = d.cpu_seconds();
    let started = std::time::Instant::now();
    let v = run_load(b, "att/enf", &["udp", "300000", "3", "10", "100000"]);
    // The daemon's whole share while the sender ran (its harvests of the
    // kernel's flow counts included), per 10k decisions a second.
    let cpu = (d.cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64().max(0.001);
    settle(d);
    let events = decided(d).saturating_sub(before);
    let secs = f(&v, "elapsed_s").max(0.001);
    let per_s = events as f64 / secs;
    let rate = f(&v, "rate").max(1.0);
    let per_10k = cpu * 100.0 / (rate / 10_000.0);
    r.raw["events_under_load"] = json!({"loadgen": v, "events": events, "daemon_cpu": cpu});
    r.fig(Figure::new(
        "daemon CPU per 10k decisions/s of repeated traffic (100k datagrams/s to 10 destinations)",
        format!(
            "{per_10k:.2}% of one core ({:.1}% at {rate:.0}/s)",
            cpu * 100.0
        ),
        "<= 1%",
        Some(per_10k <= 1.0),
    ));
    r.fig(Figure::new(
        "kernel events per second, 100k datagrams/s to 10 destinations",
        format!(
            "{per_s:.1} events/s ({events} events for {:.0} datagrams at {:.0}/s)",
            f(&v, "ops"),
            f(&v, "rate")
        ),
        "<= 100",
        Some(per_s <= 100.0),
    ));
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns on the kernel's per-program statistics (restored when the bench
/// ends).
fn stats_on(b: &mut Bench) {
    if b.bpf_stats_old.is_none() {
        b.bpf_stats_old = Some(std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0\n".into()));
    }
    std::fs::write(BPF_STATS, "1").expect("enable kernel.bpf_stats_enabled");
}

/// loadgen: TCP connects to one listener at the highest rate, 1 s.
const TCP_CONNECTS: [&str; 3] = ["tcp", "200000", "1"];
/// loadgen: UDP datagrams to 4 destinations at the highest rate, 1 s.
const UDP_TO_4: [&str; 4] = ["udp", "2000000", "1", "4"];
/// A new connected UDP socket per datagram, for one second (a resolver's
/// pattern: each lookup connects a socket of its own).
const UDP_CONNECTS: [&str; 3] = ["udp-connect", "200000", "1"];

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Rounds of `against`: each build's daemon once per round.
const AGAINST_ROUNDS: usize = 5;

/// The cost of a repeat by the same process (connect4 and sendmsg4, a
/// destination already decided), this build against another build's
/// daemon (`cargo xtask bench --against REV`): the two daemons take turns,
/// round by round, on the same cgroups and policies; each round decides
/// the destinations first, then measures ns per run from the kernel's
/// statistics. The ratio is paired per round; goal: within 10%.
fn against(b: &mut Bench, r: &mut Report, args: &[std::ffi::OsString], other: &Path, label: &str) {
    stats_on(b);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let this = integration_tests::daemon_bin();
    let builds = [this.as_path(), other];
    let workloads: [(&str, &str, Vec<&str>); 2] = [
        (
            "connect4",
            "TCP connect, repeated destination",
            TCP_CONNECTS.to_vec(),
        ),
        (
            "sendmsg4",
            "UDP sendmsg to 4 destinations, max rate",
            UDP_TO_4.to_vec(),
        ),
    ];
    // [build][workload] -> ns per run, one per round.
    let mut ns = vec![vec![Vec::new(); workloads.len()]; builds.len()];
    for round in 0..AGAINST_ROUNDS {
        for (i, bin) in builds.iter().enumerate() {
            // The one before detaches as it exits (`--detach-on-exit`).
            b.daemon.take();
            b.daemon = Some(Daemon::start(bin, &args, b.env.socket()));
            for (w, (hook, _, load)) in workloads.iter().enumerate() {
                // Decided once, then only repeats.
                let mut warm = load.clone();
                warm[1] = "1000";
                run_load(b, "att/enf", &warm);
                let d = b.daemon.as_ref().unwrap();
                settle(d);
                let before = prog_stats(d);
                run_load(b, "att/enf", load);
                let after = prog_stats(b.daemon.as_ref().unwrap());
                let cost = before
                    .iter()
                    .zip(&after)
                    .find(|((h, ..), _)| h == hook)
                    .map(|((_, _, t0, c0), (_, _, t1, c1))| {
                        t1.saturating_sub(*t0) as f64 / c1.saturating_sub(*c0).max(1) as f64
                    })
                    .unwrap_or_else(|| panic!("no {hook} program in the daemon's status"));
                eprintln!(
                    "bench: against: round {round}, {}: {hook} {cost:.0} ns",
                    bin.display()
                );
                ns[i][w].push(cost);
            }
        }
    }
    b.daemon.take();
    let mut raw = Vec::new();
    for (w, (hook, what, _)) in workloads.iter().enumerate() {
        let ratios: Vec<f64> = ns[0][w].iter().zip(&ns[1][w]).map(|(a, o)| a / o).collect();
        let ratio = Summary::of(&ratios);
        let (mine, theirs) = (Summary::of(&ns[0][w]), Summary::of(&ns[1][w]));
        raw.push(
            json!({"hook": hook, "this_ns": ns[0][w], "other_ns": ns[1][w], "ratio": ratio.json()}),
        );
        r.fig(Figure::new(
            &format!("kernel decision cost of a repeat, {hook} ({what}), this build / {label}"),
            format!(
                "{:.3} (IQR {:.3}; {:.0} ns vs {:.0} ns, {AGAINST_ROUNDS} rounds)",
                ratio.median,
                ratio.iqr(),
                mine.median,
                theirs.median
            ),
            "<= 1.10",
            Some(ratio.median <= 1.10),
        ));
    }
    r.raw["against"] =
        json!({"other": other.display().to_string(), "label": label, "workloads": raw});
}

/// (2) Nanoseconds per program run from the kernel's own statistics.
fn decision_cost(b: &mut Bench, r: &mut Report) {
    stats_on(b);
    let mut raw = Vec::new();
    // (label, cgroups, loadgen args, what the sock_addr hook meets, goal ns).
    // TCP connects go to one loopback listener and the UDP workloads to a
    // few destinations: repeated destinations, answered from the decision
    // cache. "new" sends each datagram to a destination no run used (a
    // decision, an insert and an event each). Paced UDP keeps the daemon
    // idle enough that the program is not preempted by it. A "repeated"
    // load runs once unmeasured first, so what is measured is repeats
    // only (4,096 destinations sent 20,000 datagrams have a fifth of them
    // first sights otherwise).
    let new_dests = |round: u32| (1_000_000 + round * 40_000).to_string();
    let workloads: Vec<Workload> = vec![
        // The floor's trivial programs under the same statistics: what
        // the statistics and a program run cost before any of our work,
        // measured first: each row of the same load and hook says how far
        // beyond it the monitor's program is.
        (
            "TCP connect, floor cgroup",
            vec!["floor"],
            owned(&TCP_CONNECTS),
            "floor",
            f64::NAN,
        ),
        (
            "UDP sendmsg, floor cgroup, max rate",
            vec!["floor"],
            owned(&UDP_TO_4),
            "floor",
            f64::NAN,
        ),
        (
            "UDP connect, a new socket each, floor cgroup",
            vec!["floor"],
            owned(&UDP_CONNECTS),
            "floor",
            f64::NAN,
        ),
        (
            "TCP connect, max rate",
            vec!["att/mon", "att/enf"],
            owned(&TCP_CONNECTS),
            "repeated",
            300.0,
        ),
        (
            "UDP sendmsg to 4 destinations, max rate",
            vec!["att/mon", "att/enf"],
            owned(&UDP_TO_4),
            "repeated",
            300.0,
        ),
        (
            "UDP sendmsg to 4096 destinations already decided, 20k/s paced",
            vec!["att/mon", "att/enf"],
            vec![
                "udp".into(),
                "20000".into(),
                "1".into(),
                "4096".into(),
                "20000".into(),
            ],
            "repeated",
            300.0,
        ),
        (
            "UDP sendmsg, every datagram a new destination, 20k/s paced",
            vec!["att/enf"],
            vec![
                "udp".into(),
                "20000".into(),
                "1".into(),
                "20000".into(),
                "20000".into(),
                new_dests(0),
            ],
            "new",
            1000.0,
        ),
        (
            "TCP connect, unselected cgroup",
            vec!["att/unsel"],
            owned(&TCP_CONNECTS),
            "unselected",
            50.0,
        ),
        (
            "UDP sendmsg, unselected cgroup, max rate",
            vec!["att/unsel"],
            owned(&UDP_TO_4),
            "unselected",
            50.0,
        ),
        (
            "UDP connect, a new socket each, unselected cgroup",
            vec!["att/unsel"],
            owned(&UDP_CONNECTS),
            "unselected",
            50.0,
        ),
    ];
    // ns per run of the floor's program, by load (loadgen arguments) and hook.
    let mut floor: Vec<(String, String, f64)> = Vec::new();
    for (label, subs, args, kind, goal) in workloads {
        settle(b.daemon.as_ref().unwrap());
        let stats = |b: &Bench| {
            if kind == "floor" {
                floor_stats(b)
            } else {
                prog_stats(b.daemon.as_ref().unwrap())
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if kind == "repeated" {
            for sub in &subs {
                run_load(b, sub, &args);
            }
            settle(b.daemon.as_ref().unwrap());
        }
        let before = stats(b);
        for sub in &subs {
            run_load(b, sub, &args);
        }
        let after = stats(b);
        for ((hook, id, t0, c0), (_, _, t1, c1)) in before.iter().zip(&after) {
            let runs = c1.saturating_sub(*c0);
            if runs < 1000 {
                continue;
            }
            let ns = t1.saturating_sub(*t0) as f64 / runs as f64;
            raw.push(json!({"workload": label, "hook": hook, "program_id": id, "runs": runs, "ns_per_run": ns, "destinations": kind}));
            // The statistics' own cost (two clock reads per run, about
            // 60-80 ns on this VM) is in every figure; the floor's trivial
            // program under the same load shows it.
            let beyond = if kind == "floor" {
                floor.push((
                    args.join(" "),
                    hook.trim_end_matches(" (floor)").to_string(),
                    ns,
                ));
                String::new()
            } else {
                floor
                    .iter()
                    .find(|(a, h, _)| *a == args.join(" ") && h == hook)
                    .map(|(_, _, f)| format!("; {:.0} ns beyond the floor's {f:.0}", ns - f))
                    .unwrap_or_default()
            };
            // The goal is the sock_addr hook's; egress and ingress run on
            // every packet of the loopback traffic and are shown as they are.
            let sock_addr =
                (hook.starts_with("connect") || hook.starts_with("sendmsg")) && !goal.is_nan();
            r.fig(Figure::new(
                &format!("kernel decision cost, {hook} ({label})"),
                format!("{ns:.0} ns/run over {runs} runs{beyond}"),
                &if sock_addr {
                    format!("<= {goal:.0} ns")
                } else {
                    "-".into()
                },
                sock_addr.then_some(ns <= goal),
            ));
        }
    }
    events_under_load(b, r);
    if let Some(old) = b.bpf_stats_old.take() {
        let _ = std::fs::write(BPF_STATS, old);
    }
    r.raw["decision_cost"] = json!(raw);
}

struct Follower {
    lines: Arc<AtomicU64>,
    gaps: Arc<AtomicU64>,
}

/// A host the enforce policy denies (its first extra CIDR, 10.0.0.0/24);
/// not routed in the client namespace, so a refusal that failed would
/// still send nothing.
const DENIED_IN_FLOOD: &str = "10.0.0.1";

/// The row: of the refusals `loadgen forbid` (`v`) counted during the
/// flood, how many the store holds as denied attempts (events and
/// harvested repeats), once the harvest has caught up (bounded).
fn denials_in_flood(b: &Bench, r: &mut Report, v: &Value) {
    let refused = v["tcp_refused"].as_u64().unwrap_or(0) + v["udp_refused"].as_u64().unwrap_or(0);
    let counted = || -> u64 {
        b.env
            .flows(&["--verdict", "denied"])
            .iter()
            .filter(|fl| {
                fl["dst_ip"] == DENIED_IN_FLOOD
                    && fl["cgroup_path"]
                        .as_str()
                        .is_some_and(|c| c.ends_with("/att/enf"))
            })
            .map(|fl| fl["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut delivered = counted();
    while delivered < refused && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        delivered = counted();
    }
    let status = b.daemon.as_ref().unwrap().status();
    let denials_lost = status["counters"]["denials_lost_in_kernel"]
        .as_u64()
        .unwrap_or(0);
    r.raw["denials_in_flood"] = json!({"loadgen": v, "delivered": delivered,
        "denials_lost_in_kernel": denials_lost});
    r.fig(Figure::new(
        "denials delivered during a flood of allowed first sights (2 generators at their highest rate, 1 denied attempt/ms)",
        format!(
            "{delivered} of {refused} ({denials_lost} denials lost in the kernel; {} attempts not refused)",
            v["tcp_connected"].as_u64().unwrap_or(0)
                + v["udp_sent"].as_u64().unwrap_or(0)
                + v["other_errors"].as_u64().unwrap_or(0)
        ),
        "all",
        Some(refused > 0 && delivered == refused && denials_lost == 0),
    ));
}

/// (3) The event pipeline: paced steps up to as fast as both cores go, two
/// load generators in the monitored cgroup, one gRPC streaming client.
/// Returns the window (unix ns) the steps ran in.
fn pipeline(b: &mut Bench, r: &mut Report) -> (u128, u128) {
    let d = b.daemon.as_ref().unwrap();
    let mem = b.mem.as_ref();
    let mut child = Command::new(integration_tests::daemon_bin())
        .args(["events", "--follow", "-o", "json", "--socket"])
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start events --follow");
    let stdout = child.stdout.take().unwrap();
    let fol = Follower {
        lines: Arc::new(AtomicU64::new(0)),
        gaps: Arc::new(AtomicU64::new(0)),
    };
    let (lines, gaps) = (fol.lines.clone(), fol.gaps.clone());
    std::thread::spawn(move || {
        let mut rd = BufReader::with_capacity(1 << 20, stdout);
        let mut line = String::new();
        while rd.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.starts_with("{\"gap\"") {
                let missed = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["gap"]["missed"].as_u64())
                    .unwrap_or(1);
                gaps.fetch_add(missed, Ordering::Relaxed);
            } else {
                lines.fetch_add(1, Ordering::Relaxed);
            }
            line.clear();
        }
    });
    b.follower = Some(child);
    // Wait until the stream is open (status counts it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && b.daemon.as_ref().unwrap().status()["counters"]["stream_clients"].as_u64() != Some(1)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = b.daemon.as_ref().unwrap();
    let window_start = now_ns();
    let step_secs = 3.0;
    let mut steps = Vec::new();
    let mut best_zero_loss = 0.0f64;
    let mut max_step = json!({});
    for (step, target) in [10_000u64, 50_000, 100_000, 0].into_iter().enumerate() {
        settle(d);
        let s0 = d.status();
        let (l0, g0) = (
            fol.lines.load(Ordering::Relaxed),
            fol.gaps.load(Ordering::Relaxed),
        );
        let cpu0 = d.cpu_seconds();
        let threads0 = d.cpu_by_thread();
        let t0 = Instant::now();
        let per = (target / 2).to_string();
        let secs = step_secs.to_string();
        // Every datagram to a destination no run used: each one a first
        // decision and an event (the repeats of a destination would be
        // counted in the kernel, not reported). Past the flow table's
        // capacity each is an event too (overflow).
        let gens: Vec<Child> = (0..2u32)
            .map(|g| {
                let first = (20_000_000 + step as u32 * 4_000_000 + g * 2_000_000).to_string();
                loadgen(
                    b,
                    "att/mon",
                    &["udp", "100000000", &secs, "2000000", &per, &first],
                )
            })
            .collect();
        // At the highest rate, a workload of the enforced cgroup tries a
        // denied host once a millisecond meanwhile: every refusal must
        // reach the store (the ring's reserve, the kernel's refusal table).
        let forbid = (target == 0).then(|| {
            loadgen(
                b,
                "att/enf",
                &["forbid", "100000", &secs, DENIED_IN_FLOOD, "9", "1000"],
            )
        });
        let perf = perf_record(d, &format!("pipeline-{target}"), step_secs - 0.5);
        std::thread::sleep(Duration::from_secs_f64(step_secs / 2.0));
        let rss_load = d.vm("VmRSS");
        let rss_where = d.rss_by_mapping();
        let charge_load = mem.and_then(MemCgroup::charge);
        let sent: f64 = gens.into_iter().map(|g| f(&finish(g), "ops")).sum();
        let forbid = forbid.map(finish);
        if let Some(mut p) = perf {
            let _ = p.wait();
        }
        let send_s = t0.elapsed().as_secs_f64();
        // Drained: the client count stops moving (bounded).
        let mut last = u64::MAX;
        let drain_deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < drain_deadline {
            let now = fol.lines.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
            std::thread::sleep(Duration::from_millis(300));
        }
        let cpu = d.cpu_seconds() - cpu0;
        let threads = d.cpu_by_thread();
        let s1 = d.status();
        let c = |s: &Value, k: &str| s["counters"][k].as_u64().unwrap_or(0);
        let decided = (c(&s1, "allowed") + c(&s1, "would_deny"))
            .saturating_sub(c(&s0, "allowed") + c(&s0, "would_deny"));
        let lost = c(&s1, "lost_in_kernel") - c(&s0, "lost_in_kernel");
        let dropped = c(&s1, "dropped_slow_clients") - c(&s0, "dropped_slow_clients");
        let received = fol.lines.load(Ordering::Relaxed) - l0;
        let gap = fol.gaps.load(Ordering::Relaxed) - g0;
        let rate = sent / send_s.min(step_secs).max(1e-9);
        let stored = s1["store"]["events_stored"].as_u64().unwrap_or(0)
            - s0["store"]["events_stored"].as_u64().unwrap_or(0);
        let store_rate = stored as f64 / t0.elapsed().as_secs_f64();
        // Fraction of one core per 10k events/s = core-seconds per 10k
        // events the daemon decided (read from the ring and handled), not
        // per event a client happened to receive: past the client's pace
        // most are missed by it, which made the figure grow beyond the cores.
        let cpu_per_10k = if decided > 0 {
            cpu / decided as f64 * 10_000.0 * 100.0
        } else {
            f64::NAN
        };
        // The same figure per thread name, largest first: where it goes.
        let by_thread = by_thread(&threads0, &threads, |spent| {
            spent / decided.max(1) as f64 * 10_000.0 * 100.0
        });
        let zero_loss = lost == 0 && dropped == 0 && gap == 0 && received as f64 >= sent;
        if zero_loss {
            best_zero_loss = best_zero_loss.max(rate);
        }
        let step = json!({
            "target_rate": target, "sent": sent, "rate": rate, "decided": decided,
            "received_by_client": received, "lost_in_kernel": lost,
            "dropped_slow_clients": dropped, "gap_missed": gap,
            "daemon_cpu_s": cpu, "cpu_pct_per_10k": cpu_per_10k, "cpu_by_thread": by_thread,
            "rss_under_load": rss_load, "rss_where": rss_where, "zero_loss": zero_loss,
            "charge_under_load": charge_load.map(|c| json!({"anon": c.anon, "kernel": c.kernel, "file": c.file})),
            "stored": stored, "store_rate": store_rate,
            "store_pending_after": s1["store"]["pending"], "store_lost": s1["store"]["lost_for_store"],
        });
        eprintln!("bench: pipeline step {step}");
        if let Some(v) = forbid {
            denials_in_flood(b, r, &v);
        }
        if target == 0 {
            max_step = step.clone();
        }
        steps.push(step);
    }
    let window_end = now_ns();
    idle_with_full_tables(b.daemon.as_ref().unwrap(), r);
    let rate = f(&max_step, "rate");
    let lost = f(&max_step, "lost_in_kernel") + f(&max_step, "dropped_slow_clients");
    let ring = r.raw["ring_bytes"].as_u64().unwrap_or(0);
    r.fig(Figure::new(
        "events: highest rate 2 generators make (both cores), delivered to a gRPC client",
        format!(
            "{:.0}/s sent, {} received, lost in kernel {}, missed by client {}",
            rate,
            max_step["received_by_client"],
            max_step["lost_in_kernel"],
            f(&max_step, "dropped_slow_clients") + f(&max_step, "gap_missed"),
        ),
        "zero loss",
        Some(max_step["zero_loss"] == true),
    ));
    let _ = lost;
    r.fig(Figure::new(
        "events: highest paced rate with zero loss",
        format!("{best_zero_loss:.0}/s"),
        "-",
        None,
    ));
    r.fig(Figure::new(
        "events: ring buffer, wakeup",
        format!(
            "{} KiB; woken only past 64 KiB unread (BPF_RB_NO_WAKEUP/FORCE_WAKEUP), else drained every 10 ms; AsyncFd",
            ring / 1024
        ),
        "-",
        None,
    ));
    for s in &steps {
        let t = s["target_rate"].as_u64().unwrap_or(0);
        let label = if t == 0 {
            "max".to_string()
        } else {
            format!("{}k/s paced", t / 1000)
        };
        let pct = f(s, "cpu_pct_per_10k");
        r.fig(Figure::new(
            &format!(
                "daemon CPU per 10k new-destination events/s ({label}, {:.0}/s achieved)",
                f(s, "rate")
            ),
            format!(
                "{pct:.1}% of one core (by thread: {}; the store writer has its own, the drain, harvest and API share the runtime's)",
                s["cpu_by_thread"].as_str().unwrap_or("not read")
            ),
            "<= 5%",
            Some(pct <= 5.0),
        ));
    }
    r.fig(Figure::new(
        "store: ingest while the max-rate step ran (stored / elapsed)",
        format!(
            "{:.0} events/s ({} stored, {} still pending)",
            f(&max_step, "store_rate"),
            max_step["stored"],
            max_step["store_pending_after"]
        ),
        "-",
        None,
    ));
    let rss = max_step["rss_under_load"].as_u64().unwrap_or(0);
    r.fig(Figure::new(
        "daemon RSS under load (max event rate)",
        format!(
            "{:.1} MiB (MiB by mapping: {})",
            mib(rss),
            max_step["rss_where"].as_str().unwrap_or("")
        ),
        "<= 100 MiB",
        Some(rss > 0 && mib(rss) <= 100.0),
    ));
    let charge = &max_step["charge_under_load"];
    charge_row(
        r,
        "under load (max event rate)",
        charge["kernel"].as_u64().map(|kernel| Charge {
            anon: charge["anon"].as_u64().unwrap_or(0),
            kernel,
            file: charge["file"].as_u64().unwrap_or(0),
        }),
        "<= 1024 MiB (the DaemonSet's limit)",
        1024.0,
    );
    r.raw["pipeline"] = json!(steps);
    (window_start, window_end)
}

/// CPU seconds per thread name between two readings (`Daemon::cpu_by_thread`),
/// as `pct` makes them a percentage, largest first, the negligible left out:
/// "store-writer 18.0, tokio-rt-worker 12.3".
fn by_thread(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    pct: impl Fn(f64) -> f64,
) -> String {
    let mut v: Vec<(&String, f64)> = after
        .iter()
        .map(|(name, s)| (name, pct(s - before.get(name).copied().unwrap_or(0.0))))
        .filter(|(_, p)| *p >= 0.05)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .map(|(name, p)| format!("{name} {p:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The daemon with no traffic, its flow table as the floods left it (their
/// entries stay until idle for `harvest::IDLE`): what the harvest alone
/// costs a node. It reads every second what the kernel listed as changed,
/// and the whole tables a minute or more apart: the figure is the CPU of
/// 10 s without a whole read, plus the last whole read's walk of the
/// tables spread over its interval (both in `status`). Where every read
/// is whole (a build before the kernel's list), the CPU of 10 s.
fn idle_with_full_tables(d: &Daemon, r: &mut Report) {
    // First the floods' aftermath: the store writer works off what the
    // harvest held back while the store was behind (bounded: 6 windows
    // longer than the longest harvest interval).
    let writer = |d: &Daemon| {
        d.cpu_by_thread()
            .get("store-writer")
            .copied()
            .unwrap_or(0.0)
    };
    for _ in 0..6 {
        let w0 = writer(d);
        std::thread::sleep(Duration::from_secs(11));
        if writer(d) - w0 < 0.05 {
            break;
        }
    }
    let flows = |s: &Value, name: &str| integration_tests::flow_count(s, name).unwrap_or(0);
    // 10 s without a whole read in it (at most three tries).
    let mut window = None;
    for attempt in 0..3 {
        let s0 = d.status();
        let perf = (attempt == 0)
            .then(|| perf_record(d, "idle-full-tables", 9.5))
            .flatten();
        let (cpu0, threads0, t0) = (d.cpu_seconds(), d.cpu_by_thread(), Instant::now());
        std::thread::sleep(Duration::from_secs(10));
        if let Some(mut p) = perf {
            let _ = p.wait();
        }
        let secs = t0.elapsed().as_secs_f64();
        let pct = (d.cpu_seconds() - cpu0) / secs * 100.0;
        let by_thread = by_thread(&threads0, &d.cpu_by_thread(), |spent| spent / secs * 100.0);
        let s1 = d.status();
        let whole = flows(&s1, "harvest_reads_whole") - flows(&s0, "harvest_reads_whole");
        window = Some((pct, by_thread, s0, s1, whole));
        if whole == 0 {
            break;
        }
    }
    let (pct, by_thread, s0, s1, whole) = window.expect("measured");
    let changed = flows(&s1, "harvest_reads_changed") - flows(&s0, "harvest_reads_changed");
    let (walk_ms, every_ms) = (
        flows(&s1, "harvest_whole_read_ms"),
        flows(&s1, "harvest_whole_every_ms"),
    );
    let follows = every_ms > 0;
    let spread = if follows && whole == 0 {
        walk_ms as f64 / every_ms as f64 * 100.0
    } else {
        0.0
    };
    let total = pct + spread;
    r.raw["idle_full_tables"] = json!({
        "cpu_pct": total, "window_pct": pct, "whole_read_pct": spread,
        "entries": flows(&s0, "entries"), "by_thread": by_thread,
        "whole_reads_in_window": whole, "changed_reads_in_window": changed,
        "whole_read_ms": walk_ms, "whole_every_ms": every_ms,
        "harvest_interval_ms": flows(&s1, "harvest_interval_ms"),
    });
    let how = if follows {
        format!(
            "10 s of reads of what changed ({changed} reads, {whole} whole): {pct:.2}%; a whole read of {walk_ms} ms every {:.0} s: {spread:.2}%",
            every_ms as f64 / 1000.0
        )
    } else {
        format!(
            "10 s, every read whole: a harvest every {:.1} s",
            flows(&s1, "harvest_interval_ms") as f64 / 1000.0
        )
    };
    r.fig(Figure::new(
        "daemon CPU idle, the flow table as the floods left it",
        format!(
            "{total:.2}% of one core ({} entries; {how}; by thread: {by_thread})",
            flows(&s0, "entries"),
        ),
        "<= 2%",
        Some(total <= 2.0),
    ));
}

/// With EGRESS_MONITOR_BENCH_PERF=DIR: a `perf record` of the daemon for
/// `secs` (DIR/NAME.perf), to see where its time goes; wait for it. Call
/// stacks are unwound from DWARF (a release build keeps no frame pointers,
/// so `-g` alone stops at the first frame), at 499 samples a second to keep
/// the copied stacks small.
fn perf_record(d: &Daemon, name: &str, secs: f64) -> Option<Child> {
    std::env::var_os("EGRESS_MONITOR_BENCH_PERF").map(|dir| {
        Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-p",
                &d.pid.to_string(),
                "-o",
            ])
            .arg(PathBuf::from(dir).join(format!("{name}.perf")))
            .args(["--", "sleep", &secs.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start perf record")
    })
}

/// Waits (bounded) until the daemon has worked off what the last run gave
/// it (its CPU time stops growing), so one variant does not pay for another.
fn settle(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let c0 = d.cpu_seconds();
        std::thread::sleep(Duration::from_millis(300));
        if d.cpu_seconds() - c0 <= 0.03 {
            return;
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// (4) Atomic policy swap: rewrite both files, time the daemon's own
/// figure and the wall time from write to "in force".
fn policy_swap(b: &mut Bench, r: &mut Report) {
    let mut compile = Vec::new();
    let mut wall = Vec::new();
    for i in 1..=5u32 {
        let d = b.daemon.as_mut().unwrap();
        let before = d.log().matches("policy set generation").count();
        let t = Instant::now();
        write_policies(&b.env, i);
        // Two files: two switches, or one if the watcher batches them.
        d.wait_log(
            |l| l.matches("policy set generation").count() > before,
            Duration::from_secs(30),
        );
        let first = t.elapsed().as_secs_f64() * 1e3;
        std::thread::sleep(Duration::from_millis(1500));
        let log = d.log();
        let new: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("policy set generation"))
            .skip(before)
            .collect();
        // "policy set generation N in force: ... cloud-region rules (T ms)",
        // as the idle row reads it.
        for l in &new {
            if let Some(ms) = log_number(l, "policy set generation", "cloud-region rules ") {
                compile.push(ms);
            }
        }
        wall.push(first);
    }
    let c = Summary::of(&compile);
    let w = Summary::of(&wall);
    // A log line that no longer parses says so (it read "0.0 ms, n 0" for
    // a while after the line grew its domain and cloud-region counts).
    let daemon_measured = if compile.is_empty() {
        "not measured: no \"policy set generation ... (T ms)\" line of the daemon parsed"
            .to_string()
    } else {
        format!("{:.1} ms median (IQR {:.1}, n {})", c.median, c.iqr(), c.n)
    };
    r.fig(Figure::new(
        "policy swap (2 policies x 10k CIDRs, full database), daemon-measured",
        daemon_measured,
        "-",
        None,
    ));
    r.fig(Figure::new(
        "policy swap, file write to in force (includes the watcher)",
        format!("{:.0} ms median (IQR {:.0})", w.median, w.iqr()),
        "-",
        None,
    ));
    r.raw["policy_swap"] = json!({"daemon_ms": c.json(), "wall_ms": w.json()});
}

/// `f`'s result, and how far the resident memory of process `pid` rose
/// above what it was when `f` began (its high-water mark, reset first by
/// writing 5 to /proc/PID/clear_refs), in bytes.
fn peak_growth<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let kib = |field: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let before = kib("VmRSS:");
    let out = f();
    let peak = kib("VmHWM:");
    (out, peak.saturating_sub(before) * 1024)
}

fn timed(d: &Daemon, args: &[&str]) -> (f64, std::process::Output) {
    let t = Instant::now();
    let out = d.cli(args);
    (t.elapsed().as_secs_f64() * 1e3, out)
}

/// (5) The store: ingest during the pipeline steps, then queries and an
/// export over everything the run stored.
fn store(b: &Bench, r: &mut Report, since: u128, window: (u128, u128), state: &Path) {
    let d = b.daemon.as_ref().unwrap();
    // Wait (bounded) for the writer to catch up.
    let t = Instant::now();
    let mut st = d.status();
    while t.elapsed() < Duration::from_secs(120) && st["store"]["pending"].as_u64().unwrap_or(0) > 0
    {
        std::thread::sleep(Duration::from_millis(200));
        st = d.status();
    }
    let stored = st["store"]["events_stored"].as_u64().unwrap_or(0);
    let lost_for_store = st["store"]["lost_for_store"].as_u64().unwrap_or(0);
    let size = st["store"]["size_bytes"].as_u64().unwrap_or(0);
    let pipeline_secs = (window.1 - window.0) as f64 / 1e9 + t.elapsed().as_secs_f64();
    r.raw["store_status"] = st["store"].clone();
    r.fig(Figure::new(
        "store: events stored by this run",
        format!(
            "{stored} ({:.0} MiB on disk), lost for store {lost_for_store}",
            mib(size)
        ),
        "-",
        None,
    ));
    let _ = pipeline_secs;
    let since_s = since.to_string();
    let until_s = now_ns().to_string();
    let (ms, out) = timed(
        d,
        &[
            "events", "--since", &since_s, "--until", &until_s, "--limit", "1000", "-o", "json",
        ],
    );
    let n = out.stdout.iter().filter(|&&c| c == b'\n').count();
    r.fig(Figure::new(
        &format!("store query: events --since (whole run, {stored} events), first 1000"),
        format!("{ms:.0} ms ({n} lines)"),
        "-",
        None,
    ));
    let (ms, out) = timed(
        d,
        &[
            "events",
            "--since",
            &since_s,
            "--until",
            &until_s,
            "--limit",
            "1000",
            "--verdict",
            "denied",
            "-o",
            "json",
        ],
    );
    let n = out.stdout.iter().filter(|&&c| c == b'\n').count();
    r.fig(Figure::new(
        "store query: events --since --verdict denied (filtered), first 1000",
        format!("{ms:.0} ms ({n} lines)"),
        "-",
        None,
    ));
    // `flows --since --until (whole run) EXTRA -o json`: its time and lines.
    let flows_query = |extra: &[&str]| -> (f64, usize) {
        let mut args = vec!["flows", "--since", &since_s, "--until", &until_s];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", "json"]);
        let (ms, out) = timed(d, &args);
        assert!(
            out.status.success(),
            "flows {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (ms, out.stdout.iter().filter(|&&c| c == b'\n').count())
    };
    // Grouped: the whole minutes are summed by SQL, the partial minutes at
    // the window's edges streamed into the groups; the daemon's peak
    // memory says whether it held the edges' flows instead.
    for group in ["country", "cgroup,verdict"] {
        let ((ms, n), grew) = peak_growth(d.pid, || flows_query(&["--group-by", group]));
        r.fig(Figure::new(
            &format!("store query: flows --since (whole run) --group-by {group}, and the daemon's peak memory above its resident memory before it"),
            format!("{ms:.0} ms ({n} lines); +{:.1} MiB", mib(grew)),
            "<= 64 MiB",
            Some(mib(grew) <= 64.0),
        ));
    }
    // Not grouped, with a filter: every flow of the window is read and the
    // kept ones held; the daemon's peak memory says whether it held the
    // rest too.
    let ((ms, n), grew) = peak_growth(d.pid, || flows_query(&["--verdict", "denied"]));
    r.fig(Figure::new(
        "store query: flows --since (whole run) --verdict denied (not grouped), and the daemon's peak memory above its resident memory before it",
        format!("{ms:.0} ms ({n} lines); +{:.1} MiB", mib(grew)),
        "<= 64 MiB",
        Some(mib(grew) <= 64.0),
    ));
    // Export the pipeline window (the bulk of the stored events).
    let bundle = b.env.dir.path().join("bundle.tar");
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg("300")
        .arg(integration_tests::daemon_bin())
        .args([
            "export",
            "--since",
            &window.0.to_string(),
            "--until",
            &window.1.to_string(),
            "--out",
        ])
        .arg(&bundle)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("export");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let records = text
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let size = std::fs::metadata(&bundle).map(|m| m.len()).unwrap_or(0);
    r.raw["export"] = json!({"ms": ms, "output": text, "ok": out.status.success(), "bytes": size});
    r.fig(Figure::new(
        &format!("store: export (signed bundle) of {records} events"),
        if out.status.success() {
            format!(
                "{:.1} s ({:.0} events/s, {:.0} MiB)",
                ms / 1e3,
                records as f64 / (ms / 1e3),
                mib(size)
            )
        } else {
            format!("failed: {}", text.trim())
        },
        "1M events (scaled down here)",
        None,
    ));
}

/// How often an EU-only policy allows the addresses of cloud regions that
/// are in the EU (the providers' documented locations), with the country
/// database alone and with the cloud ranges' locations: computed from the
/// same data the kernel's tries hold (the cloud suite checks the kernel
/// agrees on a sample of 300).
fn cloud_accuracy(r: &mut Report, geoip: &Path) {
    let Some(dir) = std::env::var_os("EGRESS_MONITOR_CLOUD").map(PathBuf::from) else {
        eprintln!("bench: EGRESS_MONITOR_CLOUD not set: no cloud accuracy figure");
        return;
    };
    let cloud = match monitor::cloud::load_dir(&dir) {
        Ok(c) => c,
        Err(e) => panic!("cloud ranges {}: {e}", dir.display()),
    };
    let geo = monitor::geo::GeoDb::open(geoip).expect("the country database");
    let eu = monitor::geo::regions::group_members("EU").expect("the EU group");
    let in_eu = |c: &[u8; 2]| eu.iter().any(|m| m.as_bytes() == c);
    let mut nets: Vec<_> = cloud
        .ranges()
        .iter()
        .filter(|x| &*x.provider == "aws" || &*x.provider == "gcp")
        .filter(|x| {
            monitor::cloud::locations::location(&x.provider, &x.region)
                .is_some_and(|l| in_eu(&l.country))
        })
        .filter(|x| x.net.is_ipv4())
        .map(|x| x.net)
        .collect();
    nets.sort();
    nets.dedup();
    // Deterministic: splitmix64 from a fixed seed; one address per draw.
    let mut next = stats::splitmix(0x5eed);
    const N: usize = 2000;
    let (mut before, mut after) = (0usize, 0usize);
    for _ in 0..N {
        let net = nets[(next() % nets.len() as u64) as usize];
        let ipnetwork::IpNetwork::V4(n) = net else {
            continue;
        };
        let host = 32 - u32::from(n.prefix());
        let mask = if host == 32 {
            u32::MAX
        } else {
            (1u32 << host) - 1
        };
        let addr = std::net::IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(n.network()) | (next() as u32 & mask),
        ));
        let db = geo.lookup(addr).map(|x| x.country).filter(|c| c != &[0, 0]);
        let placed = cloud
            .lookup(addr)
            .and_then(|e| e.location)
            .map(|l| l.country)
            .or(db);
        before += usize::from(db.is_some_and(|c| in_eu(&c)));
        after += usize::from(placed.is_some_and(|c| in_eu(&c)));
    }
    let pct = |n: usize| 100.0 * n as f64 / N as f64;
    r.raw["cloud_accuracy"] = json!({
        "addresses": N, "networks": nets.len(), "seed": "0x5eed",
        "allowed_geoip_only_pct": pct(before), "allowed_with_cloud_pct": pct(after),
        "snapshot": cloud.summary(),
    });
    r.fig(Figure::new(
        "EU-region AWS/GCP addresses an EU-only policy allows: country database alone",
        format!("{:.1}% of {N}", pct(before)),
        "(before)",
        None,
    ));
    r.fig(Figure::new(
        "EU-region AWS/GCP addresses an EU-only policy allows: with cloud-range locations",
        format!("{:.1}% of {N}", pct(after)),
        "100%",
        Some(after == N),
    ));
}

/// (2b) What names cost in the kernel, from its own statistics: reading a
/// DNS answer (ingress, per packet: during a flood of answers only answers
/// arrive), noting a query (egress, per packet), and a connect judged with
/// a name the cgroup resolved just before (connect4, a hit in NAMES).
fn dns_cost(b: &mut Bench, r: &mut Report) {
    let zone = json!({"names": {"*.flood.test": [{"type": "A", "value": integration_tests::DE_V4, "ttl": 300}]}});
    let dns = b.env.dns_server(&zone);
    let path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "0\n".into());
    std::fs::write(path, "1").expect("enable kernel.bpf_stats_enabled");
    let mut raw = Vec::new();
    let port = integration_tests::PORT.to_string();
    let workloads: [(&str, Vec<&str>); 2] = [
        (
            "DNS flood, 20000 answers",
            vec!["flood", "--server", &dns.addr, "--count", "20000"],
        ),
        (
            "resolve-then-connect, 2000 rounds",
            vec![
                "resolve-connect",
                "--server",
                &dns.addr,
                "--name",
                "a.flood.test",
                "--connect-port",
                &port,
                "--rounds",
                "2000",
            ],
        ),
    ];
    for (label, args) in workloads {
        settle(b.daemon.as_ref().unwrap());
        let before = prog_stats(b.daemon.as_ref().unwrap());
        let out = b.env.dnsprobe("att/dns", &args);
        let after = prog_stats(b.daemon.as_ref().unwrap());
        for ((hook, id, t0, c0), (_, _, t1, c1)) in before.iter().zip(&after) {
            let runs = c1.saturating_sub(*c0);
            let wanted = match label.starts_with("DNS") {
                true => hook == "ingress" || hook == "egress",
                false => hook == "connect4",
            };
            if runs < 1000 || !wanted {
                continue;
            }
            let ns = t1.saturating_sub(*t0) as f64 / runs as f64;
            raw.push(json!({"workload": label, "hook": hook, "program_id": id, "runs": runs, "ns_per_run": ns, "client": out}));
            let what = match hook.as_str() {
                "ingress" => "reading DNS answers",
                "egress" => "noting DNS queries",
                _ => "a connect judged with a resolved name",
            };
            r.fig(Figure::new(
                &format!("kernel cost of names, {what}, {hook} ({label})"),
                format!("{ns:.0} ns/run over {runs} runs"),
                "-",
                None,
            ));
        }
    }
    let _ = std::fs::write(path, old);
    r.raw["dns_cost"] = json!(raw);
    drop(dns);
}
