//! `egress-monitor test -- COMMAND`, against the real kernel: COMMAND runs
//! in a cgroup of its own under one policy, the report and the JUnit file
//! list every destination by verdict, the exit status tells a CI job what
//! failed, the test hosts' receivers are the ground truth, and nothing the
//! test made is left behind, also after a signal.
use std::{path::Path, process::Command, time::Duration};

use integration_tests::*;
use serde_json::Value;

/// An enforcing policy that allows DE; its own selector (a pod) is
/// replaced by the test's cgroup.
const POLICY: &str = "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: de-only}\nspec:\n  mode: enforce\n  selector: {pods: [\"1b2c3d4e-5f60-4718-9a0b-c1d2e3f40506\"]}\n  allow: {countries: [DE]}\n";

/// What `test` made that could be left behind: its pins, its cgroups under
/// the environment's root, its working directories.
fn leftovers(env: &TestEnv) -> Vec<String> {
    let mut out = Vec::new();
    for (dir, prefix) in [
        (Path::new("/sys/fs/bpf"), "egress-test-"),
        (env.cgroup_root.as_path(), "egress-test-"),
        (Path::new("/run"), "egress-monitor-test-"),
    ] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// `egress-monitor test` with the environment's database, its cgroup root
/// as the parent, the policy file, `extra` flags, and COMMAND run in the
/// workload's network namespace.
fn residency(env: &TestEnv, extra: &[&str], script: &str) -> Command {
    let policy = env.dir.path().join("residency.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut cmd = Command::new(daemon_bin());
    cmd.arg("test")
        .arg("--policy")
        .arg(&policy)
        .arg("--geoip")
        .arg(env.geoip())
        .arg("--cgroup-parent")
        .arg(&env.cgroup_root)
        .args(extra)
        .arg("--")
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", env.client_ns))
        .args(["sh", "-c", script]);
    cmd
}

/// Two probes: DE, then US, on the test port.
fn de_then_us() -> String {
    let probe = probe_bin().display().to_string();
    format!("{probe} tcp {DE_V4} {PORT} && {probe} tcp {US_V4} {PORT}")
}

fn report(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    // COMMAND's own output (the probes' JSON lines) comes first.
    let start = text.rfind("\n{\n").map_or(0, |i| i + 1);
    serde_json::from_str(&text[start..]).unwrap_or_else(|e| panic!("no JSON report ({e}): {text}"))
}

fn destination<'a>(r: &'a Value, ip: &str) -> &'a Value {
    r["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dst_ip"] == ip)
        .unwrap_or_else(|| panic!("no {ip} in {r}"))
}

/// Enforce: the US connection is refused (nothing arrives), the report
/// and the JUnit file have both destinations with the US one failing, the
/// exit status is the violation's (3), and nothing is left.
#[test]
fn a_violation_fails_the_job_with_a_report_and_junit() {
    let env = TestEnv::new();
    let junit = env.dir.path().join("junit.xml");
    let out = residency(
        &env,
        &["-o", "json", "--junit", junit.to_str().unwrap()],
        &de_then_us(),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let r = report(&out);
    assert_eq!(
        (r["policy"].as_str(), r["mode"].as_str()),
        (Some("de-only"), Some("enforce"))
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    assert_eq!(r["violations"], 1, "{r}");
    let us = destination(&r, US_V4);
    assert_eq!(
        (us["verdict"].as_str(), us["country"].as_str()),
        (Some("denied"), Some("US"))
    );
    assert_eq!(
        (us["dst_port"].as_u64(), us["protocol"].as_str()),
        (Some(u64::from(PORT)), Some("tcp"))
    );
    assert_eq!(destination(&r, DE_V4)["verdict"], "allowed");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        env.arrived_forbidden().is_empty(),
        "{:?}",
        env.arrived_forbidden()
    );
    // A real XML parser reads it: one suite, two cases, one failure.
    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, xml.etree.ElementTree as E\n\
             s = E.parse(sys.argv[1]).getroot().find('testsuite')\n\
             print(s.get('tests'), s.get('failures'), len(s.findall('testcase')), \
             [c.get('name') for c in s.findall('testcase') if c.find('failure') is not None])",
        )
        .arg(&junit)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&parsed.stdout).trim(),
        format!("2 1 2 ['{US_V4}:{PORT}/tcp']"),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let x = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(x.matches("<testcase ").count(), 2, "{x}");
    assert_eq!(x.matches("<failure ").count(), 1, "{x}");
    assert!(
        x.contains(&format!("name=\"{US_V4}:{PORT}/tcp\"")) && x.contains("type=\"denied\""),
        "{x}"
    );
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

/// Monitor: the US connection goes through (it arrives), the report says
/// would_deny and the job still fails; the table says so in words.
#[test]
fn monitor_mode_lets_through_and_still_fails_the_job() {
    let env = TestEnv::new();
    let out = residency(&env, &["--mode", "monitor"], &de_then_us())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("under policy de-only (monitor): the command exited 0")
            && text.contains("WOULD BE DENIED (monitor mode: let through): 1")
            && text.contains(&format!("{US_V4}:{PORT}/tcp"))
            && text
                .contains("residency violated: 1 destination outside what policy de-only allows"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !env.arrived_forbidden().is_empty(),
        "monitor mode lets it through"
    );
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

/// The command's own failure is its exit status; all allowed is 0.
#[test]
fn the_commands_own_failure_comes_first() {
    let env = TestEnv::new();
    let probe = probe_bin().display().to_string();
    let out = residency(&env, &[], &format!("{probe} tcp {US_V4} {PORT}; exit 7"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = residency(&env, &[], &format!("{probe} tcp {DE_V4} {PORT}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ALLOWED: 1") && !text.contains("violated"),
        "{text}"
    );
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

/// Beside a running daemon: its programs and pins are untouched, and it
/// still enforces afterwards.
#[test]
fn beside_a_daemon_nothing_of_it_is_touched() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let before = attached_programs(&env.cgroup_root);
    assert!(!before.is_empty());
    let out = residency(&env, &[], &de_then_us()).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(attached_programs(&env.cgroup_root), before);
    assert!(env.pin_dir().exists());
    let p = env.probe("sel", &["tcp", US_V4, &PORT.to_string()]);
    assert!(!p.ok && p.errno == i64::from(libc::EPERM), "{:?}", p.raw);
    env.expect_event("the daemon still judges", Duration::from_secs(10), |e| {
        s(e, "dst_ip") == US_V4 && s(e, "verdict") == "denied"
    });
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

/// SIGTERM while COMMAND runs: it is passed on, the exit status says so,
/// and nothing is left.
#[test]
fn a_signal_leaves_nothing_behind() {
    let env = TestEnv::new();
    let mut child = residency(&env, &[], "sleep 60").spawn().unwrap();
    // Bounded: until COMMAND runs in the test's cgroup (the daemon is up).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&env.cgroup_root)
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().starts_with("egress-test-")
                && std::fs::read_to_string(e.path().join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty())
        })
    {
        assert!(std::time::Instant::now() < deadline, "COMMAND never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

/// Bad input: a clear error, exit 125, nothing made.
#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let env = TestEnv::new();
    let two = env.dir.path().join("two.yaml");
    std::fs::write(
        &two,
        format!("{POLICY}---\n{}", POLICY.replace("de-only", "other")),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(daemon_bin())
            .arg("test")
            .args(args)
            .args(["--geoip", env.geoip().to_str().unwrap(), "--", "true"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, text) = run(&["--policy", two.to_str().unwrap()]);
    assert_eq!(code, Some(125), "{text}");
    assert!(
        text.contains("holds 2 policies (de-only, other): name the one to test with --policy-name"),
        "{text}"
    );
    let (code, text) = run(&["--policy", two.to_str().unwrap(), "--policy-name", "nope"]);
    assert_eq!(code, Some(125), "{text}");
    assert!(text.contains("no policy \"nope\""), "{text}");
    let broken = env.dir.path().join("broken.yaml");
    std::fs::write(&broken, "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: b}\nspec:\n  mode: enforce\n  selector: {cgroupPaths: [\"/x\"]}\n  allow: {countries: [XX]}\n").unwrap();
    let (code, text) = run(&["--policy", broken.to_str().unwrap()]);
    assert_eq!(code, Some(125), "{text}");
    assert!(
        text.contains("broken.yaml:7") && text.contains("\"XX\""),
        "{text}"
    );
    // Not root: refused, naming why.
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(daemon_bin())
        .args(["test", "--policy", two.to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{text}");
    assert!(text.contains("needs root"), "{text}");
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}

/// A COMMAND that forks and exits at once: what its child attempts later
/// is in the report (the test waits for the whole cgroup).
#[test]
fn a_child_left_running_is_waited_for() {
    let env = TestEnv::new();
    let probe = probe_bin().display().to_string();
    let out = residency(
        &env,
        &["-o", "json"],
        &format!("(sleep 0.5; {probe} tcp {US_V4} {PORT}) & exit 0"),
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&out);
    assert_eq!(
        (r["exit_code"].as_i64(), r["lingered"].as_bool()),
        (Some(0), Some(false)),
        "{r}"
    );
    assert_eq!(destination(&r, US_V4)["verdict"], "denied");
    assert!(leftovers(&env).is_empty(), "{:?}", leftovers(&env));
}
