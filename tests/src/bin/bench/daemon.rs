//! The daemon under benchmark: started with the real country database and
//! without `--log-events` (the suite measures the pipeline, not stdout),
//! its log kept for the figures it prints, its /proc entries read for CPU
//! and memory, its status read through the CLI.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    log: Arc<Mutex<String>>,
    pub socket: PathBuf,
    bin: PathBuf,
}

impl Daemon {
    pub fn start(bin: &Path, args: &[&std::ffi::OsStr], socket: PathBuf) -> Self {
        Self::start_in(bin, args, socket, None)
    }

    /// `start`, the daemon in the memory cgroup `mem` from its first
    /// instruction (its kernel maps are charged to it as they are made).
    pub fn start_in(
        bin: &Path,
        args: &[&std::ffi::OsStr],
        socket: PathBuf,
        mem: Option<&MemCgroup>,
    ) -> Self {
        let mut cmd = Command::new(bin);
        cmd.arg("daemon")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(mem) = mem {
            super::in_cgroup(&mut cmd, &mem.dir);
        }
        let mut child = cmd.spawn().expect("start the daemon");
        let stderr = child.stderr.take().expect("daemon stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let pid = child.id();
        let mut d = Daemon {
            child: Some(child),
            pid,
            log,
            socket,
            bin: bin.to_path_buf(),
        };
        d.wait_log(
            |l| l.contains("egress-monitor running"),
            Duration::from_secs(90),
        );
        d
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log satisfies `pred`; panics with the log otherwise.
    pub fn wait_log(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.log()) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("daemon exited ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "the daemon log never showed what was awaited; log:\n{}",
            self.log()
        );
    }

    /// `egress-monitor status -o json`.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "-o", "json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .arg("300")
            .arg(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run the CLI")
    }

    /// User + system CPU time of the daemon so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        cpu_of_stat(&stat).1
    }

    /// CPU seconds per thread name (/proc/PID/task/*/stat; the name as
    /// the kernel keeps it, 15 bytes): the store writer has its own
    /// thread, the pipeline, harvest and API share the runtime's.
    pub fn cpu_by_thread(&self) -> HashMap<String, f64> {
        let mut by: HashMap<String, f64> = HashMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return by;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let (name, secs) = cpu_of_stat(&stat);
            *by.entry(name.to_string()).or_default() += secs;
        }
        by
    }

    /// Where the daemon's resident memory is (/proc/PID/smaps): MiB per
    /// mapping name (`anonymous` for the heap and thread arenas, BPF maps
    /// and the ring buffer by their anon_inode name), largest first.
    pub fn rss_by_mapping(&self) -> String {
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", self.pid)).unwrap_or_default();
        let mut by: HashMap<String, u64> = HashMap::new();
        let mut current = String::new();
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                let name = line.split_whitespace().nth(5).unwrap_or("");
                current = match name {
                    "" | "[heap]" => "anonymous".into(),
                    n => n.rsplit('/').next().unwrap_or(n).into(),
                };
            } else if let Some(kb) = line.strip_prefix("Rss:") {
                let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                *by.entry(current.clone()).or_default() += kb;
            }
        }
        let mut by: Vec<(String, u64)> = by.into_iter().filter(|(_, kb)| *kb > 0).collect();
        by.sort_by_key(|(_, kb)| std::cmp::Reverse(*kb));
        by.iter()
            .take(4)
            .map(|(name, kb)| format!("{name} {:.0}", *kb as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A `Vm*` line of /proc/PID/status, in bytes.
    pub fn vm(&self, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The BPF maps the daemon holds, from /proc/PID/fdinfo: map id to
    /// (type, max_entries, memlock bytes), each map once.
    pub fn maps(&self) -> HashMap<u64, (u64, u64, u64)> {
        let mut maps = HashMap::new();
        let Ok(rd) = std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid)) else {
            return maps;
        };
        for e in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(ty)) = (field("map_id:"), field("map_type:")) {
                maps.insert(
                    id,
                    (
                        ty,
                        field("max_entries:").unwrap_or(0),
                        field("memlock:").unwrap_or(0),
                    ),
                );
            }
        }
        maps
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, bounded wait, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A number from the first log line containing `prefix`, the text right
/// after `after` up to the next space.
pub fn log_number(log: &str, line_has: &str, after: &str) -> Option<f64> {
    log.lines().filter(|l| l.contains(line_has)).find_map(|l| {
        let rest = &l[l.find(after)? + after.len()..];
        rest.split([' ', ')'])
            .next()?
            .trim_start_matches('(')
            .parse()
            .ok()
    })
}

/// A memory cgroup of the bench's own for the daemon: what the kernel
/// charges it, kernel maps included (kernels >= 5.11), which the pod of a
/// DaemonSet is charged. cgroup v2 where its memory controller is enabled
/// at the root, else the v1 memory hierarchy; none where neither is.
pub struct MemCgroup {
    dir: PathBuf,
    v2: bool,
}

/// What a memory cgroup is charged now, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Charge {
    pub anon: u64,
    pub kernel: u64,
    pub file: u64,
}

impl MemCgroup {
    pub fn create() -> Option<Self> {
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        // The prefix `cargo xtask` removes as a leftover of a killed run.
        let name = format!("egress-test-bench-memory-{}", std::process::id());
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(dir), Some(kind), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else {
                continue;
            };
            let root = Path::new(dir);
            let v2 = *kind == "cgroup2"
                && std::fs::read_to_string(root.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
            let v1 = *kind == "cgroup" && opts.split(',').any(|o| o == "memory");
            if v2 || v1 {
                let dir = root.join(&name);
                std::fs::create_dir(&dir).ok()?;
                return Some(Self { dir, v2 });
            }
        }
        None
    }

    fn stat(&self) -> HashMap<String, u64> {
        std::fs::read_to_string(self.dir.join("memory.stat"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// None when the kernel does not say (no kernel-memory figure).
    pub fn charge(&self) -> Option<Charge> {
        let stat = self.stat();
        if self.v2 {
            Some(Charge {
                anon: *stat.get("anon")?,
                kernel: *stat.get("kernel")?,
                file: *stat.get("file")?,
            })
        } else {
            let kernel = std::fs::read_to_string(self.dir.join("memory.kmem.usage_in_bytes"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(Charge {
                anon: *stat.get("rss")?,
                kernel,
                file: *stat.get("cache")?,
            })
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Empty once the daemon has exited; what its pinned maps still
        // hold goes to the parent.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A `/proc/.../stat` line's command name and user + system CPU seconds
/// (an unreadable line: no name, 0). The name ends at the last ')', as it
/// may hold spaces and parentheses itself.
pub fn cpu_of_stat(stat: &str) -> (&str, f64) {
    let (head, rest) = stat.rsplit_once(')').unwrap_or(("", ""));
    let name = head.split_once('(').map_or("", |(_, n)| n);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (name, (ticks(11) + ticks(12)) / hz)
}

#[cfg(test)]
mod tests {
    /// A name with spaces and a ')' of its own is read whole, and the CPU
    /// fields are counted from after it.
    #[test]
    fn a_stat_line_gives_its_name_and_cpu() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let line = "42 (tokio (rt) w) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 0 0";
        let (name, secs) = super::cpu_of_stat(line);
        assert_eq!(name, "tokio (rt) w");
        assert!((secs - 300.0 / hz).abs() < 1e-9, "{secs}");
        assert_eq!(super::cpu_of_stat(""), ("", 0.0));
    }
}
