//! Who made each attempt: the process identity the kernel files at exec
//! (executable, arguments, parent), attribution per process when another
//! process of the cgroup is cached for the same destination, and secrets
//! in arguments redacted before anything leaves the daemon.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use integration_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const PYTHON: &str = "/usr/bin/python3";

/// A Python script making `n` TCP connection attempts to `US_V4:port`
/// from one process, printing its pid first.
fn attempts(port: u16, n: usize) -> String {
    format!(
        "import os, socket\nprint(os.getpid(), flush=True)\nfor _ in range({n}):\n    try:\n        socket.create_connection(('{US_V4}', {port}), 2).close()\n    except OSError:\n        pass\n"
    )
}

/// Runs `program -c SCRIPT EXTRA...` in cgroup `sel`; returns its pid.
fn run_python(env: &TestEnv, program: &Path, script: &str, extra: &[&str]) -> u64 {
    let mut args = vec!["-c", script];
    args.extend_from_slice(extra);
    let out = env
        .workload_command("sel", program, &args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{} printed no pid: {out:?}", program.display()))
}

/// A copy of python3 named `evilbin`, in the cgroup where python3 was
/// already refused a destination, makes three attempts there: evilbin gets
/// an event of its own (one: its repeats are counts), `events --comm
/// evilbin` and `--exe evilbin` find it, and the flows, `--group-by exe`
/// and the bundle's summary credit evilbin's three attempts to evilbin and
/// python3's two to python3.
#[test]
fn a_renamed_copy_in_the_same_cgroup_is_credited_as_itself() {
    let mut env = TestEnv::started("enforce", "DE", &[]);
    let since = now_rfc3339();
    let port = env.fresh_port();
    let evilbin = env.dir.path().join("evilbin");
    std::fs::copy(PYTHON, &evilbin).expect("copy python3");
    let evil_path = evilbin.display().to_string();

    let py_pid = run_python(&env, Path::new(PYTHON), &attempts(port, 2), &[]);
    let py = env.expect_event("of python3", WAIT, |e| {
        e["tgid"].as_u64() == Some(py_pid) && s(e, "dst_ip") == US_V4
    });
    assert_eq!(s(&py, "verdict"), "denied", "{py}");
    assert_eq!(s(&py, "exe"), PYTHON, "{py}");
    let evil_pid = run_python(&env, &evilbin, &attempts(port, 3), &[]);
    let evil = env.expect_event("of evilbin, python3 being cached", WAIT, |e| {
        e["tgid"].as_u64() == Some(evil_pid)
    });
    assert_eq!(s(&evil, "comm"), "evilbin", "{evil}");
    assert_eq!(s(&evil, "exe"), evil_path, "{evil}");
    assert_eq!(s(&evil, "verdict"), "denied", "{evil}");
    assert_eq!(evil["dst_port"].as_u64(), Some(u64::from(port)), "{evil}");

    // Counted per process: 2 and 3, not 5 for python3.
    env.wait_flow_count("evilbin's attempts", 3, WAIT, |f| {
        s(f, "comm") == "evilbin" && s(f, "exe") == evil_path
    });
    env.wait_flow_count("python3's attempts", 2, WAIT, |f| {
        s(f, "comm") == "python3" && s(f, "dst_ip") == US_V4 && f["dst_port"] == port
    });
    let by_exe = env.flows(&["--group-by", "exe"]);
    let evil_group = by_exe
        .iter()
        .find(|f| s(f, "exe") == evil_path)
        .unwrap_or_else(|| panic!("a group of evilbin: {by_exe:#?}"));
    assert_eq!(evil_group["count"].as_u64(), Some(3), "{evil_group}");

    // One event of evilbin's, found by comm and by executable.
    for filter in [["--comm", "evilbin"], ["--exe", "evilbin"]] {
        let mut args = vec!["events", "--since", "10m", "-o", "json"];
        args.extend_from_slice(&filter);
        let stored = json_lines(&env.cli(&args));
        assert_eq!(stored.len(), 1, "events {filter:?}: {stored:#?}");
        assert_eq!(s(&stored[0], "exe"), evil_path, "{:#}", stored[0]);
        assert_eq!(stored[0]["tgid"].as_u64(), Some(evil_pid));
    }
    let python_only = json_lines(&env.cli(&[
        "events",
        "--since",
        "10m",
        "-o",
        "json",
        "--exe",
        "/usr/bin/*",
    ]));
    assert!(
        !python_only.is_empty() && python_only.iter().all(|e| s(e, "exe") == PYTHON),
        "--exe /usr/bin/* finds python3 only: {python_only:#?}"
    );

    // The table views name the executable too.
    let table = env.cli_ok(&["events", "--since", "10m", "--exe", "evilbin"]);
    eprintln!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&format!("evilbin[{evil_pid}]")) && l.contains("/evilbin")),
        "{table}"
    );
    let grouped = env.cli_ok(&["flows", "--group-by", "exe,verdict"]);
    eprintln!("{grouped}");
    assert!(
        grouped
            .lines()
            .any(|l| l.starts_with("3 ") && l.contains("/evilbin")),
        "{grouped}"
    );

    // The bundle: evilbin's event and a summary row of its own, 3 attempts.
    let bundle = export_window(&env, &since, &now_rfc3339(), "evil.tar.gz");
    let md = bundle_file(&bundle, "summary.md");
    let row = md
        .lines()
        .find(|l| l.contains(&format!("evilbin ({evil_path})")))
        .unwrap_or_else(|| panic!("a summary row of evilbin: {md}"));
    assert!(row.contains("| 3 |"), "evilbin's 3 attempts: {row}");
    let py_row = md
        .lines()
        .find(|l| l.contains(&format!("python3 ({PYTHON})")) && l.contains(&port.to_string()))
        .unwrap_or_else(|| panic!("a summary row of python3: {md}"));
    assert!(py_row.contains("| 2 |"), "python3's 2 attempts: {py_row}");
    let records = bundle_file(&bundle, "events.jsonl");
    assert_eq!(
        records
            .lines()
            .filter(|l| l.contains(&format!("\"exe\":\"{evil_path}\"")))
            .count(),
        1,
        "one record of evilbin: {records}"
    );
}

/// A process that execs, connects and exits at once (the probe, forked by
/// a shell) is named by what the kernel filed at its exec: executable,
/// arguments, parent pid and the parent's executable, on the live event
/// and the stored one. A process older than the daemon is named from /proc.
#[test]
fn a_process_that_exits_at_once_keeps_its_name() {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    // Started before the daemon: it waits for a line, then connects.
    let early_marker = format!("early-{}", env.id);
    let script = format!(
        "import socket, sys\nsys.stdin.readline()\ntry:\n    socket.create_connection(('{US_V4}', {PORT}), 2).close()\nexcept OSError:\n    pass\n"
    );
    let mut early = env
        .workload_command("sel", Path::new(PYTHON), &["-c", &script, &early_marker])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("start python3");
    env.start_daemon(&[]);

    let marker = format!("marker-{}", env.id);
    let probe = probe_bin();
    // Two commands: sh forks the probe rather than exec it.
    let line = format!("{} tcp {US_V4} {PORT} {marker}; true", probe.display());
    let out = env
        .workload_command("sel", Path::new("/bin/sh"), &["-c", &line])
        .output()
        .expect("run sh");
    assert!(out.status.success(), "sh -c {line}: {out:?}");
    let probe_pid: Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    let e = env.expect_event("of the probe run by sh", WAIT, |e| {
        e["tgid"] == probe_pid["pid"]
    });
    let probe_path = probe.display().to_string();
    assert_eq!(s(&e, "exe"), probe_path, "{e}");
    assert_eq!(
        args_of(&e),
        [
            probe_path.as_str(),
            "tcp",
            US_V4,
            &PORT.to_string(),
            &marker
        ],
        "{e}"
    );
    assert_eq!(s(&e, "parent_exe"), "/bin/sh", "{e}");
    let ppid = e["ppid"].as_u64().expect("a parent");
    assert!(ppid != 0 && Some(ppid) != probe_pid["pid"].as_u64(), "{e}");
    assert!(e.get("args_truncated").is_none(), "{e}");

    // The stored event says the same.
    let stored = env.wait_stored(
        "of the probe, by its parent",
        &["--parent", "sh"],
        WAIT,
        |r| args_of(r).contains(&marker),
    );
    let row = stored
        .iter()
        .find(|r| args_of(r).contains(&marker))
        .expect("matched above");
    eprintln!("{row}");
    assert_eq!(s(row, "exe"), probe_path, "{row}");
    assert_eq!(row["ppid"].as_u64(), Some(ppid), "{row}");

    // The early process: from /proc.
    use std::io::Write;
    early
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .expect("wake python3");
    let early_pid = u64::from(early.id());
    assert!(early.wait().expect("wait for python3").success());
    let f = env.expect_event("of the early python3", WAIT, |e| {
        e["tgid"].as_u64() == Some(early_pid)
    });
    assert!(s(&f, "exe").contains("python3"), "{f}");
    assert!(args_of(&f).contains(&early_marker), "{f}");
}

/// Real command lines with a password flag and its value, an API key, an
/// Authorization header, an AWS access key id, a JWT and a pattern added
/// by `--redact-pattern` reach the stream, the store and the bundle with
/// each secret replaced; with `--no-process-args` no argument is kept.
#[test]
fn secrets_in_arguments_never_leave_the_daemon() {
    let mut env = TestEnv::new();
    env.set_policy("enforce", "DE");
    env.start_daemon(&["--redact-pattern", "custom-[0-9]{6}"]);
    let since = now_rfc3339();
    let id = env.id.clone();
    let secrets = [
        format!("hunter2-{id}"),
        format!("k3y-{id}"),
        format!("tok-{id}"),
        "AKIAIOSFODNN7EXAMPLE".to_string(),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXNpZw".to_string(),
        "custom-123456".to_string(),
    ];
    let auth = format!("Authorization: Bearer {}", secrets[2]);
    let api_key = format!("--api-key={}", secrets[1]);
    let jwt = format!("--data={}", secrets[4]);
    let argv = [
        "--password",
        secrets[0].as_str(),
        api_key.as_str(),
        auth.as_str(),
        secrets[3].as_str(),
        jwt.as_str(),
        secrets[5].as_str(),
        "--keep",
        "visible",
    ];
    let pid = run_python(&env, Path::new(PYTHON), &attempts(PORT, 1), &argv);
    let e = env.expect_event("of the python3 with secrets", WAIT, |e| {
        e["tgid"].as_u64() == Some(pid)
    });
    let args = args_of(&e);
    assert_eq!(
        &args[3..],
        [
            "--password",
            "<redacted>",
            "--api-key=<redacted>",
            "Authorization: <redacted>",
            "<redacted>",
            "--data=<redacted>",
            "<redacted>",
            "--keep",
            "visible"
        ],
        "{e}"
    );
    let no_secret = |what: &str, text: &str| {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} holds {secret}: {text}"
            );
        }
    };
    eprintln!("{e}");
    no_secret("the live event", &e.to_string());
    let stored = env.wait_stored("with its arguments", &[], WAIT, |r| {
        args_of(r).iter().any(|a| a == "--keep")
    });
    no_secret("the stored events", &format!("{stored:?}"));
    let bundle = export_window(&env, &since, &now_rfc3339(), "secrets.tar.gz");
    let records = bundle_file(&bundle, "events.jsonl");
    assert!(records.contains("<redacted>"), "{records}");
    no_secret("the bundle's records", &records);
    no_secret("the store file", &store_text(&env));

    // No arguments at all.
    env.stop_daemon();
    env.start_daemon(&["--no-process-args"]);
    let pid = run_python(&env, Path::new(PYTHON), &attempts(PORT, 1), &["--keep"]);
    let e = env.expect_event("of the python3 without arguments", WAIT, |e| {
        e["tgid"].as_u64() == Some(pid)
    });
    assert_eq!(s(&e, "exe"), PYTHON, "{e}");
    assert!(e.get("args").is_none(), "no arguments kept: {e}");
    // Its parent (this test, older than the daemon) is named from /proc.
    let me = std::env::current_exe().unwrap().display().to_string();
    assert_eq!(s(&e, "parent_exe"), me, "{e}");
}

/// The bytes of the daemon's store files (database and write-ahead log).
fn store_text(env: &TestEnv) -> String {
    let state: PathBuf = env.dir.path().join("state");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&state).expect("state dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".db") || name.contains("store") {
            all.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    assert!(!all.is_empty(), "a store in {}", state.display());
    String::from_utf8_lossy(&all).into_owned()
}

/// A pattern that is not a regular expression, and argument byte counts
/// out of range, are refused at start with the flag named.
#[test]
fn bad_redaction_and_capture_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(daemon_bin())
            .arg("daemon")
            .arg("--state-dir")
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} is refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--redact-pattern", "(unclosed"]);
    assert!(
        e.contains("--redact-pattern \"(unclosed\" is not a regular expression"),
        "{e}"
    );
    let e = run(&["--process-args-bytes", "4096"]);
    assert!(
        e.contains("--process-args-bytes") && e.contains("4096"),
        "{e}"
    );
    let e = run(&["--process-args-bytes", "64", "--no-process-args"]);
    assert!(e.contains("cannot be used with"), "{e}");
}

/// `policy explain --pid` asks about a running process: the daemon judges
/// its cgroup and names it (executable, parent), as `--offline` does from
/// the files; a process that does not exist is a NotFound naming the pid.
#[test]
fn policy_explain_names_the_process_asked_about() {
    let env = TestEnv::started("enforce", "DE", &[]);
    let mut sleeper = env
        .workload_command("sel", Path::new("/bin/sleep"), &["30"])
        .spawn()
        .expect("sleep in the selected cgroup");
    let pid = sleeper.id().to_string();
    // nsenter execs sleep in the same process: ask once it has (bounded).
    let comm = format!("/proc/{pid}/comm");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        assert!(
            std::time::Instant::now() < deadline,
            "the workload did not exec sleep within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let sel = env.rel("sel");
    let policies = env.policy_dir().display().to_string();
    let geoip = env.geoip().display().to_string();
    for offline in [false, true] {
        let mut args = vec!["policy", "explain", US_V4, "--pid", &pid];
        if offline {
            args.extend_from_slice(&["--offline", "--policies", &policies, "--geoip", &geoip]);
        }
        let out = env.cli(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{text}");
        assert_eq!(out.status.code(), Some(3), "denied: {text}");
        assert!(text.contains(&format!("{US_V4} from {sel} (")), "{text}");
        let process = text
            .lines()
            .find(|l| l.trim_start().starts_with("process"))
            .unwrap_or_else(|| panic!("a process line: {text}"));
        assert!(
            process.contains(&format!("sleep[{pid}] ")) && process.contains("/sleep, parent "),
            "{process}"
        );
        assert!(text.contains("decision   denied"), "{text}");
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let out = env.cli(&["policy", "explain", US_V4, "--pid", &pid]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("pid {pid}: no such process")) && err.contains("NotFound"),
        "{err}"
    );
    let out = env.cli(&["policy", "explain", US_V4, "--pid", &pid, "--cgroup", &sel]);
    assert_eq!(out.status.code(), Some(2), "one of --pid and --cgroup");
}
