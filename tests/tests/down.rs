//! Answers when the daemon is down, and a private state directory: `status`
//! reads the pins, `uninstall` finds them, `events --follow` says the
//! daemon stopped and `--reconnect` resumes from the store, and no local
//! user reads the history the socket refuses them.
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use integration_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The CLI with these arguments (no --socket added).
fn run(args: &[&str]) -> std::process::Output {
    Command::new(daemon_bin())
        .args(args)
        .env_remove("EGRESS_MONITOR_SOCKET")
        .output()
        .expect("run the CLI")
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `args` as uid and gid 65534 (nobody).
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

/// One denied connect from the selected cgroup, stored by the daemon.
fn deny_and_store(env: &TestEnv) {
    assert!(!env.probe("sel", &["tcp", US_V4, &PORT.to_string()]).ok);
    env.wait_status("a denial stored", WAIT, |s| {
        s["store"]["events_stored"].as_u64().unwrap_or(0) >= 1
    });
}

/// `status` without a daemon (killed with SIGKILL, its programs left
/// pinned and attached) says what the kernel enforces and exits 3; after
/// `uninstall` it says nothing is installed and exits 4.
#[test]
fn status_without_a_daemon_reads_the_pins() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let sha = env.status()["policies"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    // A denial stored: the policy set recorded before it is stored too.
    deny_and_store(&env);
    env.kill_daemon();
    let pin_dir = env.pin_dir();
    let pins = pin_dir.to_str().unwrap();
    let out = env.cli(&["status", "--pin-dir", pins]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    let want = format!(
        "pinned in {pins}, {{}} attached to {}, last policy set generation 1 (eu-only {}), enforcing",
        env.cgroup_root.display(),
        &sha[..12]
    );
    let line = stdout.lines().next().unwrap_or("");
    assert!(line.starts_with("no daemon; "), "{stdout}");
    let (before, after) = want.split_once("{}").unwrap();
    assert!(
        line.contains(before) && line.contains(after),
        "want {want:?} in {stdout}"
    );
    // What it says attached is what the kernel runs on the cgroup root.
    let json: Value =
        serde_json::from_slice(&env.cli(&["status", "--pin-dir", pins, "-o", "json"]).stdout)
            .expect("status -o json");
    assert_eq!(json["daemon"], false, "{json:#}");
    let build = &json["pin_dirs"][0]["builds"][0];
    let mut attached: Vec<String> = build["attached"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        // The global hooks (the LSM, the process tracepoints) are not on
        // the cgroup.
        .filter(|h| !["socket_create", "process_exec", "process_exit"].contains(&h.as_str()))
        .collect();
    attached.sort();
    let mut running = attached_programs(&env.cgroup_root);
    running.sort();
    assert_eq!(attached, running, "{json:#}");
    assert_eq!(build["enforced_cgroups"], 1, "{json:#}");
    assert!(stdout.contains(&format!(
        "`egress-monitor uninstall --pin-dir {pins}` removes them"
    )));

    // Anyone but root would see no pins (0700) and be told nothing is
    // installed: refused instead, saying why.
    let bin = daemon_bin();
    for args in [
        &[
            bin.to_str().unwrap(),
            "status",
            "--socket",
            "/nonexistent/x.sock",
            "--pin-dir",
            pins,
        ][..],
        &[bin.to_str().unwrap(), "uninstall", "--pin-dir", pins][..],
    ] {
        let out = as_nobody(args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("reads the pin directories in bpffs, which only root can (they are 0700): run it as root"),
            "{stderr}"
        );
    }

    let out = env.uninstall();
    assert!(out.status.success(), "{:?}", text(&out));
    let out = env.cli(&["status", "--pin-dir", pins]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("no daemon; nothing installed:"),
        "{stdout}"
    );
}

/// `uninstall` without --pin-dir finds the pin directories daemons left:
/// several are listed and none removed; one is removed. A directory given
/// that does not exist is no "nothing to uninstall" while programs are
/// pinned elsewhere. A daemon stopped cleanly names its --pin-dir in its
/// exit hint and removes its lock file.
#[test]
fn uninstall_finds_the_pin_directories_without_being_told() {
    let mut a = TestEnv::started("enforce", "DE", &[]);
    assert!(a.stop_daemon().unwrap().success());
    assert!(
        a.log().contains(&format!(
            "(`egress-monitor uninstall --pin-dir {}` removes them)",
            a.pin_dir().display()
        )),
        "{}",
        a.log()
    );
    assert!(
        !monitor::kernel::pins::lock_path(&a.pin_dir()).exists(),
        "a cleanly stopped daemon leaves no lock file"
    );
    // Killed: its lock file stays and tells where its pins are.
    let mut b = TestEnv::started("enforce", "DE", &[]);
    b.kill_daemon();
    assert!(monitor::kernel::pins::lock_path(&b.pin_dir()).exists());

    let out = run(&["uninstall"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("2 pin directories of egress-monitor found:")
            && stderr.contains(a.pin_dir().to_str().unwrap())
            && stderr.contains(b.pin_dir().to_str().unwrap())
            && stderr.contains("say which with --pin-dir (nothing removed)"),
        "{stderr}"
    );
    assert!(a.pin_dir().exists() && b.pin_dir().exists());

    let out = run(&["uninstall", "--pin-dir", "/sys/fs/bpf/emt-not-there"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("/sys/fs/bpf/emt-not-there does not exist, but programs of egress-monitor are pinned in"),
        "{stderr}"
    );

    let out = b.uninstall();
    assert!(out.status.success(), "{:?}", text(&out));
    let out = run(&["uninstall"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("found the pins in {}", a.pin_dir().display()))
            && stdout.contains("uninstalled:"),
        "{stdout}"
    );
    assert!(!a.pin_dir().exists());
    assert_eq!(attached_programs(&a.cgroup_root), Vec::<String>::new());
}

/// `events --follow` ends with "stream ended: the daemon stopped" and a
/// non-zero status when the daemon stops.
#[test]
fn events_follow_says_the_daemon_stopped() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let mut follower = env.follow_events(&[]);
    env.wait_status("one stream client", WAIT, |s| {
        s["counters"]["stream_clients"].as_u64() == Some(1)
    });
    assert!(env.stop_daemon().unwrap().success());
    let (status, stderr) = follower.wait_exit(WAIT);
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("stream ended: the daemon stopped"),
        "{stderr}"
    );
}

/// `events --follow --reconnect` across a daemon restart prints every
/// stored event exactly once: the seqs it printed are those the store
/// holds after where it began, with denials made before, during (no
/// daemon: the kernel's ring keeps them) and after the restart.
#[test]
fn events_reconnect_across_a_restart_loses_and_repeats_nothing() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let begin = env.status()["store"]["chain_seq"].as_i64().unwrap();
    let follower = env.follow_events(&["--reconnect"]);
    env.wait_status("one stream client", WAIT, |s| {
        s["counters"]["stream_clients"].as_u64() == Some(1)
    });
    let deny = |env: &TestEnv| {
        let port = env.fresh_port().to_string();
        assert!(!env.probe("sel", &["tcp", US_V4, &port]).ok);
    };
    for _ in 0..3 {
        deny(&env);
    }
    follower.wait_lines("three events", WAIT, |l| l.len() >= 3);
    assert!(env.stop_daemon().unwrap().success());
    deny(&env);
    env.start_daemon(&[]);
    for _ in 0..3 {
        deny(&env);
    }
    let stored = || -> Vec<u64> {
        let out = env.cli(&["events", "--since", "0", "-o", "json", "--limit", "100000"]);
        json_lines(&out)
            .iter()
            .map(|e| e["seq"].as_u64().expect("stored events carry seq"))
            .filter(|s| *s as i64 > begin)
            .collect()
    };
    env.wait_status("seven denials stored after the restart", WAIT, |_| {
        stored().len() >= 7
    });
    let want = stored();
    follower.wait_lines("every stored event", WAIT, |l| l.len() >= want.len());
    // Late extras would show as more lines than the store has.
    std::thread::sleep(Duration::from_millis(500));
    let got: Vec<u64> = follower
        .lines()
        .iter()
        .map(|e| {
            e["seq"]
                .as_u64()
                .expect("a resumed stream's events carry seq")
        })
        .collect();
    assert_eq!(got, want, "stderr: {}", follower.stderr());
    // A position past the store's last record is refused, not awaited.
    let past = (want.last().unwrap() + 1000).to_string();
    let out = env.cli(&["events", "--follow", "--after-seq", &past]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "StreamEvents: OutOfRange: after_seq: {past} is past the store's last record"
        )),
        "{out:?}"
    );
    assert!(
        follower
            .stderr()
            .contains("reconnecting to resume after seq")
            && follower
                .stderr()
                .contains("stream ended: the daemon stopped"),
        "{}",
        follower.stderr()
    );
}

/// The state directory is private: an install with the old modes (0755,
/// store 0644) is tightened at start and said; the store, its WAL and the
/// key are 0600, so nobody reads them or lists the directory; an export
/// (found without --state-dir) is 0600.
#[test]
fn the_state_directory_is_private_to_root() {
    let mut env = TestEnv::new();
    let state = env.dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = state.join("store.db");
    std::fs::write(&store, b"").unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.set_policy("enforce", "DE");
    env.start_daemon(&[]);
    deny_and_store(&env);
    assert!(
        env.log().contains(&format!(
            "the state directory was readable by more than root: tightened {} 0755 -> 0700",
            state.display()
        )) && env.log().contains("store.db 0644 -> 0600"),
        "{}",
        env.log()
    );
    assert_eq!(mode(&state), 0o700);
    for f in ["store.db", "store.db-wal", "node.key", "policy-ids.json"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    let out = as_nobody(&["cat", store.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{:?}",
        text(&out)
    );
    let out = as_nobody(&["ls", state.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{:?}",
        text(&out)
    );

    // `export` finds this daemon's state directory as the clients find its
    // socket (through its lock file), unless the default one has a store.
    if Path::new("/var/lib/egress-monitor/store.db").exists() {
        panic!("a store in the default state directory /var/lib/egress-monitor: a flagless export would read it; this test needs a machine without one");
    }
    let bundle = env.dir.path().join("bundle.tar");
    let out = run(&["export", "--since", "0", "--out", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out).0.contains("records in the window"),
        "{:?}",
        text(&out)
    );
    assert_eq!(mode(&bundle), 0o600);
}

/// With a closed reader (`status | head -1`) the CLI ends quietly: no
/// panic, nothing on stderr, exit 141 (as a shell reports a tool its
/// reader left), with or without a daemon.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let pins = env.pin_dir();
    let quiet = |env: &TestEnv, args: &[&str]| {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(daemon_bin())
            .args(args)
            .arg("--socket")
            .arg(env.socket())
            .stdout(writer)
            .output()
            .expect("run the CLI");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}");
    };
    quiet(&env, &["status"]);
    env.kill_daemon();
    quiet(&env, &["status", "--pin-dir", pins.to_str().unwrap()]);
}
