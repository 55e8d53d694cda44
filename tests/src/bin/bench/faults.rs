//! `bench faults [SECS]`: load and faults together. For SECS (600 by
//! default) the workload sends mixed traffic as fast as it goes (TCP
//! connects and UDP repeats to allowed loopback hosts, new destinations at
//! a steady rate, forbidden TCP and UDP attempts at a receiver that counts
//! what arrives), while the enforce policy is rewritten every second, the
//! store's disk (a tmpfs of its own) is filled and freed three times, one
//! `events --follow` client never reads and another reconnects in a loop,
//! and the daemon is killed with SIGKILL three times (the last one while
//! the disk is full) and started again.
//!
//! Afterwards, from the receiver, the store and the evidence bundle:
//! forbidden connections that got through (goal 0), forbidden attempts the
//! flows count against what the workload made (every one, beyond events
//! recorded as lost), kernel-numbered events missing from the store without
//! a gap that says so (goal 0), and whether the bundle of the whole window
//! verifies. Results: `target/bench/faults.{json,md}`.
use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use integration_tests::TestEnv;
use serde_json::{json, Value};

use crate::{
    daemon::Daemon,
    report::{Figure, Report},
};

/// The forbidden destination (denied by CIDR) and its receiver's port.
const FORBIDDEN: &str = "127.0.3.1";
const FORBIDDEN_NET: &str = "127.0.3.0/24";
const SINK_PORT: u16 = 9000;
/// Attempts per second at the forbidden destination; new destinations per
/// second (each a first decision: an event).
const FORBID_RATE: u64 = 2000;
const NEW_DST_RATE: u64 = 500;

/// The store's own small disk, unmounted on every way out.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create the state directory");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a tmpfs on {} failed", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Bytes a writer may still take.
    fn free(&self) -> u64 {
        // SAFETY: a zeroed statvfs is a valid out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path and our own out-parameter.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return 0;
        }
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Processes of this scenario, ended by PID on every way out.
#[derive(Default)]
struct Children(Mutex<Vec<Child>>);

impl Children {
    fn add(&self, c: Child) -> u32 {
        let pid = c.id();
        self.0.lock().unwrap().push(c);
        pid
    }

    /// Waits for `pid` (bounded) and returns its stdout.
    fn finish(&self, pid: u32, within: Duration) -> String {
        let child = {
            let mut all = self.0.lock().unwrap();
            let i = all.iter().position(|c| c.id() == pid).expect("our child");
            all.remove(i)
        };
        let mut child = child;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = child.wait();
        out
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for mut c in self.0.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `bin ARGS` in the client namespace, in the cgroup `sub`.
fn in_workload(env: &TestEnv, sub: &str, bin: &Path, args: &[&str]) -> Child {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", env.client_ns))
        .arg(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    super::in_cgroup(&mut cmd, &env.cgroup(sub));
    cmd.spawn().expect("start a workload")
}

fn last_json(out: &str) -> Value {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

/// The enforce and monitor policies: loopback allowed, the forbidden
/// host's /24 denied, and `bump` extra deny CIDRs (so each write is a new
/// set for the reload).
fn policies(env: &TestEnv, bump: u32) -> Vec<(String, String)> {
    let extra: Vec<String> = (0..1 + bump % 2)
        .map(|i| format!("\"10.99.{}.0/24\"", (bump + i) % 256))
        .collect();
    let body = format!(
        "  allow:\n    cidrs: [\"127.0.0.0/8\", \"::1/128\"]\n  deny:\n    cidrs: [\"{FORBIDDEN_NET}\", {}]\n",
        extra.join(", ")
    );
    [
        ("faults-enforce", "enforce", "att/enf"),
        ("faults-monitor", "monitor", "att/mon"),
    ]
    .iter()
    .map(|(name, mode, sub)| (format!("{name}.yaml"), env.policy(name, mode, sub, &body)))
    .collect()
}

fn cli(bin: &Path, socket: &Path, args: &[&str]) -> Option<Value> {
    let out = Command::new("timeout")
        .arg("10")
        .arg(bin)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn daemon_cpu_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (_, cpu) = crate::daemon::cpu_of_stat(&stat);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    (cpu, rss)
}

/// A flow of the forbidden attempts (the other loads never send to the
/// receiver's port).
fn forbidden_flow(f: &monitor::store::query::Flow) -> bool {
    f.dst_ip == FORBIDDEN && f.dst_port == SINK_PORT && f.cgroup_path.ends_with("/att/enf")
}

pub fn faults(secs: u64, geoip: &Path, loadgen: &Path, out_dir: &Path) {
    let bin = integration_tests::daemon_bin();
    let probe = integration_tests::probe_bin();
    let env = TestEnv::new();
    for sub in ["bare", "att/enf", "att/mon"] {
        std::fs::create_dir_all(env.cgroup(sub)).expect("create bench cgroup");
    }
    crate::check_routes(&env, &[FORBIDDEN, "127.0.0.1", "127.16.0.1", "127.134.0.1"]);
    let state = env.dir.path().join("state");
    let disk = Tmpfs::mount(&state, "768m");
    for (file, text) in policies(&env, 0) {
        env.write_policy(&file, &text);
    }
    let socket = state.join("egress-monitor.sock");
    let args: Vec<std::ffi::OsString> = vec![
        "--policies".into(),
        env.policy_dir().into(),
        "--geoip".into(),
        geoip.into(),
        "--cgroup-root".into(),
        env.cgroup("att").into(),
        "--state-dir".into(),
        state.clone().into(),
        "--pin-dir".into(),
        env.pin_dir().into(),
        "--rescan-interval".into(),
        "1".into(),
        "--flow-table-entries".into(),
        "262144".into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let since = monitor::store::now_nanos();
    let start_daemon = || Daemon::start(&bin, &args, socket.clone());
    let mut daemon = start_daemon();
    let daemon_pid = Arc::new(AtomicU32::new(daemon.pid));
    let st = daemon.status();
    let in_force = st["policies"].as_array().map_or(0, Vec::len);
    assert!(
        in_force == 2 && st["rejected_files"].as_array().is_some_and(Vec::is_empty),
        "the scenario's policies are not in force: {st}\n{}",
        daemon.log()
    );
    eprintln!("faults: daemon up; {secs} s of load and faults");

    let children = Arc::new(Children::default());
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let s = secs.to_string();
    let sink = children.add(in_workload(
        &env,
        "bare",
        &probe,
        &["sink", &SINK_PORT.to_string(), &(secs + 20).to_string()],
    ));
    std::thread::sleep(Duration::from_millis(300));
    let many = "4000000000";
    let loads = [
        (
            "tcp connects, allowed (repeats)",
            children.add(in_workload(&env, "att/enf", loadgen, &["tcp", many, &s])),
            "ops",
        ),
        (
            "udp datagrams, allowed (16 repeated destinations)",
            children.add(in_workload(
                &env,
                "att/enf",
                loadgen,
                &["udp", many, &s, "16", "0", "4096"],
            )),
            "ops",
        ),
        (
            "udp datagrams to new destinations (monitor)",
            children.add(in_workload(
                &env,
                "att/mon",
                loadgen,
                &[
                    "udp",
                    many,
                    &s,
                    "4000000",
                    &NEW_DST_RATE.to_string(),
                    "100000",
                ],
            )),
            "ops",
        ),
        (
            "forbidden attempts (enforce)",
            children.add(in_workload(
                &env,
                "att/enf",
                loadgen,
                &[
                    "forbid",
                    many,
                    &s,
                    FORBIDDEN,
                    &SINK_PORT.to_string(),
                    &FORBID_RATE.to_string(),
                ],
            )),
            "attempts",
        ),
    ];

    let stop = Arc::new(AtomicBool::new(false));
    // Policy reloads: a new set every second.
    let reloads = {
        let (stop, files): (_, Vec<Vec<(String, String)>>) = (
            stop.clone(),
            (0..2).map(|b| policies(&env, b + 1)).collect(),
        );
        let dir = env.policy_dir();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (file, text) in &files[(n % 2) as usize] {
                    let tmp = dir.join(format!(".{file}.tmp"));
                    std::fs::write(&tmp, text).unwrap();
                    std::fs::rename(&tmp, dir.join(file)).unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            n
        })
    };
    // The reconnecting client: follow for 2 s, drop, again.
    let reconnects = {
        let (stop, bin, socket) = (stop.clone(), bin.clone(), socket.clone());
        std::thread::spawn(move || {
            let (mut tries, mut ok, mut lines) = (0u64, 0u64, 0u64);
            let mut failures: Vec<String> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tries += 1;
                let Ok(mut c) = Command::new("timeout")
                    .args([
                        "2",
                        bin.to_str().unwrap(),
                        "events",
                        "--follow",
                        "-o",
                        "json",
                        "--socket",
                    ])
                    .arg(&socket)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                else {
                    continue;
                };
                let n = BufReader::new(c.stdout.take().unwrap()).lines().count() as u64;
                let mut err = String::new();
                let _ = c.stderr.take().unwrap().read_to_string(&mut err);
                let _ = c.wait();
                if n > 0 {
                    ok += 1;
                } else if failures.len() < 50 {
                    failures.push(format!(
                        "{:.0} s: {}",
                        t0.elapsed().as_secs_f64(),
                        err.lines().next().unwrap_or("no event in 2 s")
                    ));
                }
                lines += n;
                std::thread::sleep(Duration::from_millis(100));
            }
            (tries, ok, lines, failures)
        })
    };
    // Status every 2 s: what the store and the daemon went through.
    let polls = {
        let (stop, bin, socket, pid) = (
            stop.clone(),
            bin.clone(),
            socket.clone(),
            daemon_pid.clone(),
        );
        std::thread::spawn(move || {
            let (mut degraded_polls, mut max_pending, mut max_rss, mut polls, mut failed) =
                (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut generation = 0u64;
            while !stop.load(Ordering::Relaxed) {
                polls += 1;
                match cli(&bin, &socket, &["status", "-o", "json"]) {
                    Some(st) => {
                        if st["store"]["state"] == "degraded" {
                            degraded_polls += 1;
                        }
                        max_pending = max_pending.max(st["store"]["pending"].as_u64().unwrap_or(0));
                        generation = generation.max(st["policy_generation"].as_u64().unwrap_or(0));
                    }
                    None => failed += 1,
                }
                max_rss = max_rss.max(daemon_cpu_rss(pid.load(Ordering::Relaxed)).1);
                std::thread::sleep(Duration::from_secs(2));
            }
            json!({"polls": polls, "failed": failed, "degraded_polls": degraded_polls,
                   "max_pending": max_pending, "max_rss": max_rss, "generation": generation})
        })
    };
    // The stalled client: follows and never reads (one per daemon run).
    let stall = |children: &Children| {
        children.add(
            Command::new(&bin)
                .args(["events", "--follow", "-o", "json", "--socket"])
                .arg(&socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the stalled client"),
        )
    };
    let mut stalled = vec![stall(&children)];

    // The schedule: disk full from 10% and 40% of the run for 10% of
    // it (at most 20 s); SIGKILL at 25%, 50% and 75% (the last one in the
    // middle of the last fill).
    let at = |f: f64| t0 + Duration::from_secs_f64(secs as f64 * f);
    let hold = Duration::from_secs_f64((secs as f64 * 0.1).min(20.0));
    let mut fills: Vec<(Instant, Instant)> = [at(0.1), at(0.4), at(0.75) - hold / 2]
        .into_iter()
        .map(|t| (t, t + hold))
        .collect();
    let mut kills: Vec<Instant> = [0.25, 0.5, 0.75].iter().map(|&f| at(f)).collect();
    let filler = state.join("filler");
    // Every run's log, for a closer look (target/bench/faults-daemon.log).
    let mut logs = String::new();
    let mut filled: Option<std::fs::File> = None;
    let (mut cpu_s, mut restarts_ms, mut fill_bytes) = (0.0f64, Vec::new(), Vec::new());
    while Instant::now() < end {
        let now = Instant::now();
        if filled.is_none() && fills.first().is_some_and(|f| now >= f.0) {
            let free = disk.free();
            let f = std::fs::File::create(&filler).expect("create the filler");
            // SAFETY: our own descriptor.
            let rc =
                unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, free as i64) };
            eprintln!(
                "faults: {:.0} s: disk full ({free} bytes taken, rc {rc})",
                t0.elapsed().as_secs_f64()
            );
            fill_bytes.push(free);
            filled = Some(f);
        }
        if filled.is_some() && fills.first().is_some_and(|f| now >= f.1) {
            filled = None;
            let _ = std::fs::remove_file(&filler);
            fills.remove(0);
            eprintln!("faults: {:.0} s: disk freed", t0.elapsed().as_secs_f64());
        }
        if kills.first().is_some_and(|k| now >= *k) {
            kills.remove(0);
            cpu_s += daemon_cpu_rss(daemon.pid).0;
            logs.push_str(&daemon.log());
            daemon.kill9();
            let t = Instant::now();
            daemon = start_daemon();
            daemon_pid.store(daemon.pid, Ordering::Relaxed);
            restarts_ms.push(t.elapsed().as_secs_f64() * 1e3);
            eprintln!(
                "faults: {:.0} s: SIGKILL, running again in {:.0} ms",
                t0.elapsed().as_secs_f64(),
                restarts_ms.last().unwrap()
            );
            stalled.push(stall(&children));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(filled);
    let _ = std::fs::remove_file(&filler);
    let mut load_results = Vec::new();
    for (what, pid, key) in loads {
        let v = last_json(&children.finish(pid, Duration::from_secs(30)));
        load_results.push((what, v.clone(), key));
    }
    stop.store(true, Ordering::Relaxed);
    let reload_count = reloads.join().unwrap();
    let (tries, ok, lines, follow_failures) = reconnects.join().unwrap();
    let polled = polls.join().unwrap();
    // Harvests run every second; then SIGTERM harvests and flushes once more.
    std::thread::sleep(Duration::from_secs(3));
    let dropped_slow = cli(&bin, &socket, &["status", "-o", "json"])
        .map(|st| st["counters"]["dropped_slow_clients"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    cpu_s += daemon_cpu_rss(daemon.pid).0;
    let until = monitor::store::now_nanos();
    daemon.stop();
    logs.push_str(&daemon.log());
    let _ = std::fs::create_dir_all(out_dir);
    let _ = std::fs::write(out_dir.join("faults-daemon.log"), &logs);
    for pid in stalled {
        children.finish(pid, Duration::ZERO);
    }
    let received = last_json(&children.finish(sink, Duration::from_secs(30)));

    // What the store says.
    let store = monitor::store::Store::open_read(&state.join("store.db")).expect("open the store");
    let numbers = store.kernel_numbers(since, until).expect("kernel numbers");
    let missing: i64 = numbers.iter().map(|(_, n, _, hi)| hi - n).sum();
    let duplicates = store
        .duplicate_events(since, until)
        .expect("duplicate events");
    let caught = logs
        .matches("had been written although its commit reported a failure")
        .count();
    let lost = store.lost_by_kind(since, until).expect("gaps");
    let of = |k: &str| {
        lost.iter()
            .find(|(kind, _)| kind == k)
            .map_or(0, |(_, n)| *n)
    };
    let recorded =
        of("lost_at_restart") + of("store_degraded") + of("lost_for_store") + of("lost_in_daemon");
    let flows = monitor::store::query::flows(&store, 0, i64::MAX, &|_| true, false).expect("flows");
    let forbidden_counted: u64 = flows
        .iter()
        .filter(|f| forbidden_flow(f) && f.verdict == "denied")
        .map(|f| f.count)
        .sum();
    let forbidden_let_through: u64 = flows
        .iter()
        .filter(|f| forbidden_flow(f) && f.verdict != "denied")
        .map(|f| f.count)
        .sum();
    drop(store);

    // The bundle of the whole window, written off the store's disk.
    let bundle = env.dir.path().join("faults-bundle.tar");
    let rfc = |t: i64| monitor::events::rfc3339_nanos(i128::from(t));
    let t = Instant::now();
    let export = Command::new(&bin)
        .args([
            "export",
            "--since",
            &rfc(since),
            "--until",
            &rfc(until),
            "--out",
        ])
        .arg(&bundle)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("export");
    let export_s = t.elapsed().as_secs_f64();
    let verify = Command::new(&bin)
        .arg("verify")
        .arg(&bundle)
        .output()
        .expect("verify");
    let verify_text = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    let bundle_mb = std::fs::metadata(&bundle).map_or(0, |m| m.len()) as f64 / 1048576.0;
    // The coverage line and the unwatched spans under it.
    let watched = verify_text
        .lines()
        .skip_while(|l| !l.contains("watched"))
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(keep) = std::env::var_os("EGRESS_MONITOR_FAULTS_KEEP") {
        // For a closer look: the store as the run left it.
        let _ = std::fs::copy(state.join("store.db"), PathBuf::from(keep));
    }
    drop(disk);

    // The figures.
    let mut r = Report::new();
    let forbid = load_results
        .iter()
        .find(|(_, v, _)| v["mode"] == "forbid")
        .map(|(_, v, _)| v.clone())
        .unwrap_or(Value::Null);
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let got_through = n(&received, "accepted") + n(&received, "datagrams");
    let sender_through = n(&forbid, "tcp_connected") + n(&forbid, "udp_sent");
    r.figures.push(Figure::new(
        "faults: forbidden connections that arrived (receiver side)",
        format!(
            "{got_through} of {} attempts ({} TCP, {} UDP refused with EPERM; {} went out per the sender)",
            n(&forbid, "attempts"),
            n(&forbid, "tcp_refused"),
            n(&forbid, "udp_refused"),
            sender_through
        ),
        "0",
        Some(got_through == 0 && sender_through == 0 && n(&forbid, "attempts") > 0),
    ));
    let refused = n(&forbid, "tcp_refused") + n(&forbid, "udp_refused");
    let short = refused.saturating_sub(forbidden_counted);
    r.figures.push(Figure::new(
        "faults: forbidden attempts in the stored flows",
        format!(
            "{forbidden_counted} of {refused} refused ({short} short; {} events recorded as lost; {forbidden_let_through} counted as not denied)",
            recorded
        ),
        "every one, beyond events recorded as lost",
        Some(short as i64 <= recorded && forbidden_counted <= refused && forbidden_let_through == 0),
    ));
    r.figures.push(Figure::new(
        "faults: kernel-numbered events missing from the store without a gap",
        format!(
            "{} ({missing} missing, {recorded} recorded: {} at restart, {} store degraded, {} unexplained; {} lost in the kernel, ring full)",
            missing - recorded,
            of("lost_at_restart"),
            of("store_degraded"),
            of("lost_in_daemon"),
            of("lost_in_kernel"),
        ),
        "0",
        Some(missing == recorded && of("lost_in_daemon") == 0),
    ));
    r.figures.push(Figure::new(
        "faults: events stored twice",
        format!("{duplicates} (failed commits found written and not written again: {caught})"),
        "0",
        Some(duplicates == 0),
    ));
    r.figures.push(Figure::new(
        "faults: evidence bundle of the whole window",
        format!(
            "{} ({bundle_mb:.0} MiB, export {export_s:.1} s); {watched}",
            if export.status.success() && verify.status.success() {
                "verifies"
            } else {
                "FAILED"
            }
        ),
        "verifies",
        Some(export.status.success() && verify.status.success()),
    ));
    let mut traffic = Vec::new();
    for (what, v, key) in &load_results {
        let secs = v["elapsed_s"].as_f64().unwrap_or(0.0).max(1e-9);
        traffic.push(format!("{what}: {:.0}/s", n(v, key) as f64 / secs));
    }
    r.figures.push(Figure::new(
        "faults: traffic over the run",
        traffic.join("; "),
        "",
        None,
    ));
    r.figures.push(Figure::new(
        "faults: the faults",
        format!(
            "{reload_count} policy rewrites (generation {} at the end); disk full 3 times for {:.0} s each (store degraded in {} of {} status polls, at most {} events held in memory); SIGKILL 3 times, running again in {} ms",
            polled["generation"],
            hold.as_secs_f64(),
            polled["degraded_polls"],
            polled["polls"],
            polled["max_pending"],
            restarts_ms.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(", "),
        ),
        "",
        None,
    ));
    r.figures.push(Figure::new(
        "faults: stream clients",
        format!(
            "stalled (never reads): {dropped_slow} events dropped for it in the last run, the others unaffected; reconnecting: {ok} of {tries} follows got events ({lines} lines), {} could not connect (a daemon restarting), {} got none",
            follow_failures.iter().filter(|f| f.contains("cannot connect")).count(),
            follow_failures.iter().filter(|f| !f.contains("cannot connect")).count(),
        ),
        "",
        None,
    ));
    r.figures.push(Figure::new(
        "faults: daemon cost",
        format!(
            "{:.1}% of a core over the run, RSS at most {:.0} MiB",
            cpu_s / secs as f64 * 100.0,
            polled["max_rss"].as_u64().unwrap_or(0) as f64 / 1048576.0
        ),
        "",
        None,
    ));
    r.raw["faults"] = json!({
        "seconds": secs,
        "loads": load_results.iter().map(|(w, v, _)| json!({"what": w, "result": v})).collect::<Vec<_>>(),
        "receiver": received,
        "kernel_numbers": numbers,
        "duplicate_events": duplicates,
        "failed_commits_found_written": caught,
        "gaps": lost,
        "forbidden_counted": forbidden_counted,
        "reloads": reload_count,
        "polls": polled,
        "restarts_ms": restarts_ms,
        "fill_bytes": fill_bytes,
        "reconnects": {"tries": tries, "ok": ok, "lines": lines, "failures": follow_failures},
        "dropped_slow_clients": dropped_slow,
        "verify": verify_text,
        "export_seconds": export_s,
    });
    r.command = format!("cargo xtask bench --faults {secs}");
    r.raw["bench_seconds"] = json!(t0.elapsed().as_secs_f64());
    r.write_named(out_dir, "faults");
    drop(children);
}
