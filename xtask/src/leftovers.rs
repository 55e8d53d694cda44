//! What an earlier, killed test run left on this machine (pins, cgroups,
//! network namespaces and links, all under the harness's own names), and
//! the lock that keeps two runs from removing each other's.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// Names the integration harness gives what it makes: cgroups, pins and
/// namespaces `emt-*`, client namespaces `emc-*`, veth links `emh*`/`emn*`;
/// the README's tour (`docs-check`): `egress-tour*`; and `egress-monitor
/// test` (its own suite): `egress-test-*`.
const PREFIXES: [&str; 4] = ["emt-", "egress-tour", "egress-test-", "emc-"];
const LINK_PREFIXES: [&str; 2] = ["emh", "emn"];
const LOCK: &str = "/run/egress-monitor-tests.lock";

/// Held while a test run goes on: a second run waits for nothing and
/// refuses, naming the lock.
pub struct RunLock(#[allow(dead_code)] File);

impl RunLock {
    pub fn acquire() -> anyhow::Result<Self> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .with_context(|| format!("opening the test-run lock {LOCK}"))?;
        match f.try_lock() {
            Ok(()) => Ok(Self(f)),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another `cargo xtask test` run holds {LOCK}: the integration tests share \
                 test addresses and the leftover cleanup would remove its cgroups; wait for it"
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {LOCK}"))
            }
        }
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// The cgroup v1 hierarchies of a hybrid host: a container's runtime
/// (the containers suite's Podman) makes its parent cgroup in each.
fn cgroup1_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup").then(|| PathBuf::from(mount))
        })
        .collect()
}

fn ours(name: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| name.starts_with(p))
}

/// Removes a cgroup subtree: its processes are ended (cgroup.kill), then
/// the directories go, deepest first.
fn remove_cgroup(dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::write(dir.join("cgroup.kill"), b"1");
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        dirs.push(d);
    }
    for d in dirs.iter().rev() {
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    if dir.exists() {
        bail!("cgroup {} could not be removed", dir.display());
    }
    Ok(())
}

/// Removes what killed runs left; says what it removed. `bin` is the
/// daemon, whose `uninstall` detaches and unpins a pin directory.
pub fn clean(bin: &Path) -> anyhow::Result<()> {
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !ours(&name, &PREFIXES[..3]) {
                continue;
            }
            let _ = Command::new(bin)
                .args(["uninstall", "--force", "--pin-dir"])
                .arg(e.path())
                .output();
            let _ = std::fs::remove_dir_all(e.path());
            removed.push(format!("pins {}", e.path().display()));
        }
    }
    for mount in cgroup2_mount().into_iter().chain(cgroup1_mounts()) {
        if let Ok(rd) = std::fs::read_dir(&mount) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if ours(&name, &PREFIXES[..3]) && e.path().is_dir() {
                    remove_cgroup(&e.path())?;
                    removed.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
    }
    let netns = Command::new("ip").args(["netns", "list"]).output()?;
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if ours(name, &PREFIXES) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            removed.push(format!("network namespace {name}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link", "show"]).output()?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        if ours(name, &LINK_PREFIXES) {
            let _ = Command::new("ip").args(["link", "del", name]).status();
            removed.push(format!("link {name}"));
        }
    }
    // The pin-directory locks of test daemons that are gone.
    if let Ok(rd) = std::fs::read_dir("/run/egress-monitor") {
        for e in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if !text.contains("/emt-") && !text.contains("/egress-tour") {
                continue;
            }
            let pid = text
                .split("\"pid\":")
                .nth(1)
                .map(|t| {
                    t.trim_start()
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                })
                .unwrap_or_default();
            if pid.is_empty() || !Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_file(e.path());
                removed.push(format!("lock file {}", e.path().display()));
            }
        }
    }
    // The containers suite's containers and images (`emt-*`,
    // `localhost/egress-probe-*`), where Podman is installed.
    if let Ok(out) = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
    {
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            if ours(name, &PREFIXES[..1]) {
                let _ = Command::new("podman").args(["rm", "-f", name]).output();
                removed.push(format!("container {name}"));
            }
        }
    }
    if let Ok(out) = Command::new("podman")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
    {
        for image in String::from_utf8_lossy(&out.stdout).lines() {
            if image.starts_with("localhost/egress-probe-") {
                let _ = Command::new("podman").args(["rmi", "-f", image]).output();
                removed.push(format!("image {image}"));
            }
        }
    }
    containerd(&mut removed);
    if !removed.is_empty() {
        eprintln!(
            "removed what an earlier test run left: {}",
            removed.join(", ")
        );
    }
    Ok(())
}

/// The containers suite's own containerd (`containerd --config
/// /tmp/<test>/containerd/config.toml`) and its shims, which a killed run
/// leaves running: ended by PID, and what they mounted below the test's
/// directory unmounted. Processes of any other containerd are left alone.
fn containerd(removed: &mut Vec<String>) {
    let ours = |arg: &str| arg.starts_with("/tmp/") && arg.contains("/containerd/");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = args.first().map(String::as_str).unwrap_or("");
        let is_runtime =
            program.ends_with("containerd") || program.ends_with("containerd-shim-runc-v2");
        if is_runtime && args.iter().any(|a| ours(a)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            removed.push(format!("{program} [{pid}]"));
        }
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| ours(m))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
    for m in mounts {
        if Command::new("umount")
            .args(["-l", m])
            .status()
            .is_ok_and(|s| s.success())
        {
            removed.push(format!("mount {m}"));
        }
    }
}
