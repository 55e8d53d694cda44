//! The daemon as a whole: how it stops (with clients connected, during the
//! start), what it does when someone removes its pins, what status shows
//! of refused policy sets, that readers never wait for a reload, and that
//! the history survives a restart.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const EPERM: i64 = 1;

fn pins_exist(env: &TestEnv) -> bool {
    std::fs::read_dir(env.pin_dir())
        .map(|d| d.flatten().any(|e| e.path().join("link_connect4").exists()))
        .unwrap_or(false)
}

/// `--detach-on-exit` with an `events --follow` client connected: Ctrl-C
/// ends the daemon cleanly and nothing stays attached.
#[test]
fn detach_on_exit_with_a_following_client_leaves_nothing() {
    let mut env = TestEnv::started("enforce", "DE", &["--detach-on-exit"]);
    assert_eq!(
        ours(&attached_programs(&env.cgroup_root)),
        cgroup_programs().len()
    );
    let mut follower = env.spawn_follower();
    env.wait_status("one stream client", WAIT, |s| {
        s["counters"]["stream_clients"].as_u64() == Some(1)
    });
    let status = env.signal_daemon(libc::SIGINT).expect("daemon ran");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        env.log()
    );
    assert!(env.log().contains("detached: removed"), "{}", env.log());
    assert_eq!(
        ours(&attached_programs(&env.cgroup_root)),
        0,
        "programs left attached"
    );
    assert!(!env.pin_dir().exists(), "pins left behind");
}

/// SIGINT while the country database loads (right after the programs are
/// attached): the daemon says so, exits cleanly, and with
/// `--detach-on-exit` leaves no program and no pin.
#[test]
fn sigint_during_the_start_detaches() {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    // The real database: a million prefixes take a second or two to load,
    // the window this test signals in.
    let real = std::env::var("EGRESS_MONITOR_GEOIP")
        .expect("EGRESS_MONITOR_GEOIP (cargo xtask test sets it)");
    std::fs::copy(&real, env.geoip()).expect("copy the real database");
    env.spawn_daemon(&["--detach-on-exit"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pins_exist(&env) {
        assert!(
            Instant::now() < deadline,
            "programs never attached; log:\n{}",
            env.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = env.signal_daemon(libc::SIGINT).expect("daemon ran");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        env.log()
    );
    let log = env.log();
    assert!(
        log.contains("SIGINT during the start"),
        "the signal arrived while the database loaded, and the daemon says so:\n{log}"
    );
    assert!(log.contains("detached: removed"), "{log}");
    assert_eq!(
        ours(&attached_programs(&env.cgroup_root)),
        0,
        "programs left attached"
    );
    assert!(!env.pin_dir().exists(), "pins left behind");
}

/// `uninstall` finds a running daemon by its pin directory alone (whatever
/// its socket) and refuses; forced, the daemon notices, attaches its
/// programs again, says so in status, and keeps enforcing.
#[test]
fn uninstall_under_a_running_daemon_is_refused_and_repaired() {
    let env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();
    // No --socket: the daemon's is not the default one.
    let refused = Command::new(daemon_bin())
        .arg("uninstall")
        .arg("--pin-dir")
        .arg(env.pin_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "uninstall must refuse");
    let pid = env.daemon_pid().unwrap().to_string();
    assert!(
        err.contains("running daemon") && err.contains(&pid),
        "{err}"
    );
    assert_eq!(
        ours(&attached_programs(&env.cgroup_root)),
        cgroup_programs().len(),
        "nothing removed"
    );

    let forced = Command::new(daemon_bin())
        .arg("uninstall")
        .arg("--pin-dir")
        .arg(env.pin_dir())
        .arg("--force")
        .output()
        .unwrap();
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let st = env.wait_status("the programs attached again", WAIT, |s| {
        s["reattached"].as_u64().unwrap_or(0) >= 5
            && s["missing_programs"]
                .as_array()
                .is_some_and(|m| m.is_empty())
    });
    assert!(
        st["programs"].as_array().map_or(0, Vec::len) >= 5,
        "status reads the programs from the kernel: {st:#}"
    );
    assert!(
        env.log().contains("were detached by someone else"),
        "{}",
        env.log()
    );
    assert_eq!(
        ours(&attached_programs(&env.cgroup_root)),
        cgroup_programs().len(),
        "attached again"
    );
    let p = env.probe("sel", &["tcp", US_V4, &port]);
    assert!(!p.ok && p.errno == EPERM, "still enforced: {:?}", p.raw);
    assert!(env.probe("sel", &["tcp", DE_V4, &port]).ok);
    // The evidence of the last minute says the programs were detached: the
    // heartbeat signed when the tick found them gone is `detached`.
    let bundle = env.dir.path().join("b.tar");
    let export = Command::new(daemon_bin())
        .args(["export", "--since", "1m", "--out"])
        .arg(&bundle)
        .arg("--state-dir")
        .arg(env.dir.path().join("state"))
        .output()
        .unwrap();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let chain: Value = serde_json::from_str(&bundle_file(&bundle, "chain.json")).unwrap();
    let spans = chain["coverage"]["spans"].as_array().unwrap();
    assert!(
        spans.iter().any(|s| s["watched"] == false
            && s["why"]
                .as_str()
                .unwrap_or("")
                .contains("the programs were detached")),
        "{:#}",
        chain["coverage"]
    );
}

/// A policy set refused (one name twice) shows in status and `policy list`
/// (the set in force stays, with the reason), and goes once resolved.
#[test]
fn a_refused_policy_set_is_visible() {
    let mut env = TestEnv::new();
    env.write_policy(
        "a.yaml",
        &env.policy("a", "enforce", "sel", &allow_countries("DE")),
    );
    env.start_daemon(&[]);
    env.write_policy(
        "b.yaml",
        &env.policy("a", "monitor", "unsel", &allow_countries("US")),
    );
    let st = env.wait_status("the refusal", WAIT, |s| {
        s["policy_refused"]
            .as_str()
            .is_some_and(|r| r.contains("is also defined at"))
    });
    let names: Vec<&str> = st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"], "the set in force stays");
    let list = env.cli(&["policy", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("REFUSED") && text.contains("is also defined at"),
        "{text}"
    );
    std::fs::remove_file(env.policy_dir().join("b.yaml")).unwrap();
    env.wait_status("no refusal", WAIT, |s| {
        s["policy_refused"].as_str() == Some("")
    });
}

fn cidrs(n: u32) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    format!(
        "  allow:\n    countries: [DE]\n    cidrs: [{}]\n",
        list.join(", ")
    )
}

/// GetStatus and ListPolicies answer while a slow reload (a set of 200,000
/// CIDRs written again) is under way, and show the set in force before it:
/// a reader that waited for the reload would see the generation after it.
#[test]
fn readers_do_not_wait_behind_a_reload() {
    let env = TestEnv::started("enforce", "DE", &[]);
    let before = env.status()["policy_generation"].as_u64().unwrap();
    env.write_policy(
        "p.yaml",
        &env.policy("eu-only", "enforce", "sel", &cidrs(200_000)),
    );
    // The directory watch applies the big set first.
    let in_force = before + 1;
    env.wait_status("the big set in force", Duration::from_secs(60), |s| {
        s["policy_generation"].as_u64() == Some(in_force)
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut reloader = env.client().await;
        // Writes the same 200,000 CIDRs again (forced: nothing changed):
        // slow, and the only reload.
        let reload = tokio::spawn(async move {
            reloader
                .reload_policies(monitor::api::pb::ReloadPoliciesRequest { force: true })
                .await
                .map(|r| r.into_inner().policy_generation)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut reader = env.client().await;
        for _ in 0..3 {
            let s = reader
                .get_status(monitor::api::pb::GetStatusRequest {})
                .await
                .expect("status during a reload")
                .into_inner();
            let l = reader
                .list_policies(monitor::api::pb::ListPoliciesRequest {})
                .await
                .expect("list during a reload")
                .into_inner();
            assert_eq!(
                (u64::from(s.policy_generation), u64::from(l.policy_generation)),
                (in_force, in_force),
                "readers answer with the set in force, not after the reload"
            );
        }
        assert!(
            !reload.is_finished(),
            "the reload finished before the readers were done: this run proves nothing (make the set bigger)"
        );
        let reloaded = reload.await.unwrap().expect("reload");
        assert_eq!(u64::from(reloaded), in_force + 1, "the reload took effect");
    });
}

/// `events --last N` right after a restart shows the history from the
/// store (memory holds nothing yet).
#[test]
fn events_after_a_restart_come_from_the_store() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let port = PORT.to_string();
    let mut pids = Vec::new();
    // Three destinations: each a first decision, so each an event.
    for dst in [US_V4, US2_V4, US_V6] {
        let p = env.probe("sel", &["tcp", dst, &port]);
        assert!(!p.ok);
        pids.push(p.pid);
    }
    env.wait_status("three denials stored", WAIT, |s| {
        s["store"]["events_stored"].as_u64().unwrap_or(0) >= 3
    });
    assert!(env.stop_daemon().unwrap().success());
    env.start_daemon(&[]);
    let out = env.cli(&["events", "--last", "3", "-o", "json"]);
    let events: Vec<Value> = json_lines(&out);
    let got: Vec<u64> = events.iter().map(|e| e["pid"].as_u64().unwrap()).collect();
    assert_eq!(
        got, pids,
        "the last three decisions, oldest first, from the store"
    );
}

/// Client commands find a running daemon's socket without flags: through
/// the lock it holds on its pin directory (its socket here is not the
/// default one).
#[test]
fn the_cli_finds_the_running_daemon_without_flags() {
    let env = TestEnv::started("enforce", "DE", &[]);
    if std::path::Path::new(monitor::api::client::DEFAULT_SOCKET).exists() {
        eprintln!(
            "skipped: a daemon uses the default socket {} on this machine, so it is the one a flagless CLI reaches",
            monitor::api::client::DEFAULT_SOCKET
        );
        return;
    }
    let out = Command::new(daemon_bin())
        .args(["status", "-o", "json"])
        .env_remove("EGRESS_MONITOR_SOCKET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        st["cgroup_root"].as_str().map(std::path::PathBuf::from),
        Some(env.cgroup_root.clone()),
        "reached this test's daemon"
    );
}

/// `--log-format json`: every log line is one JSON object with the events'
/// `time`, a level, a target and the message.
#[test]
fn log_format_json_writes_one_object_per_line() {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    env.start_daemon(&["--log-format", "json"]);
    let log = env.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for v in &lines {
        let time = v["time"].as_str().unwrap_or("");
        assert!(time.len() == 30 && time.ends_with('Z'), "{v}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .contains(&v["level"].as_str().unwrap_or("")),
            "{v}"
        );
    }
    assert!(
        lines.iter().any(|v| v["target"] == "monitor::daemon"
            && v["level"] == "INFO"
            && v["message"]
                .as_str()
                .unwrap_or("")
                .contains("egress-monitor running")),
        "{log}"
    );
}
