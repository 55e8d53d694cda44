//! Who made an attempt: the program a process runs, its arguments (with
//! secrets redacted, see `redact`), its parent. The kernel files each
//! exec (`monitor_common::process::Entry`) and reports an entry in the
//! ring before its first decision; a decision names its process by
//! (tgid, `exec_ns`). Processes older than the programs, and entries the
//! daemon missed, are read from `/proc`.
pub mod redact;

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::Arc,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use monitor_common::process::{Entry, ARGS_TRUNCATED, UNSEEN};
use serde::{Deserialize, Serialize};

pub use redact::Redactor;

/// What an event says of its process beyond pid, uid and comm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Process {
    /// The path the exec was given (as typed: may be relative), or
    /// `/proc/PID/exe` for a process older than the daemon.
    pub exe: String,
    /// `argv`, secrets redacted; empty when arguments are not captured.
    pub args: Vec<String>,
    /// More arguments than the bytes kept (`--process-args-bytes`).
    pub args_truncated: bool,
    pub ppid: u32,
    pub parent_exe: String,
}

impl Process {
    /// An exec of `/proc/self/exe` (busybox's applets, a program re-running
    /// itself) runs the image the process had, which a forked child has
    /// from its parent: named as that, not as the link.
    fn resolve_self_exe(&mut self) {
        if self.exe == "/proc/self/exe" && !self.parent_exe.is_empty() {
            self.exe.clone_from(&self.parent_exe);
        }
    }
}

/// How processes are named.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Bytes of arguments kept (0: none), at most `ARGS_BYTES`.
    pub args_bytes: u32,
    pub redactor: Redactor,
}

impl Default for Capture {
    fn default() -> Self {
        Self {
            args_bytes: monitor_common::process::ARGS_BYTES as u32,
            redactor: Redactor::default(),
        }
    }
}

/// `/proc/PID/exe` of a process directory, empty when unreadable.
fn exe_of(dir: &Path) -> String {
    std::fs::read_link(dir.join("exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn nul_terminated(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A NUL-separated argument vector (as the kernel and /proc/PID/cmdline
/// keep it); an argument cut by the byte limit is kept as far as it goes.
fn split_args(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|c| *c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

impl Capture {
    /// A kernel entry's process, arguments redacted.
    pub fn of_entry(&self, e: &Entry) -> Process {
        let used = (e.args_len as usize).min(e.args.len());
        let args = if self.args_bytes == 0 {
            Vec::new()
        } else {
            self.redactor.redact(&split_args(&e.args[..used]))
        };
        Process {
            exe: nul_terminated(&e.exe),
            args,
            args_truncated: e.flags & ARGS_TRUNCATED != 0,
            ppid: e.ppid,
            parent_exe: nul_terminated(&e.parent_exe),
        }
    }

    /// A live process as `/proc` shows it (`root`: the procfs mount), or
    /// None when it is gone.
    pub fn of_proc(&self, root: &Path, tgid: u32) -> Option<Process> {
        let dir = root.join(tgid.to_string());
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let exe = |d: &Path| exe_of(d);
        let (args, args_truncated) = if self.args_bytes == 0 {
            (Vec::new(), false)
        } else {
            let mut raw = std::fs::read(dir.join("cmdline")).unwrap_or_default();
            let cut = raw.len() > self.args_bytes as usize;
            raw.truncate(self.args_bytes as usize);
            (self.redactor.redact(&split_args(&raw)), cut)
        };
        Some(Process {
            exe: exe(&dir),
            args,
            args_truncated,
            ppid,
            parent_exe: if ppid == 0 {
                String::new()
            } else {
                exe(&root.join(ppid.to_string()))
            },
        })
    }
}

/// Processes named at once (beyond, the oldest are forgotten: their
/// later events read the kernel's table or /proc again).
const KEPT: usize = 65_536;

/// The daemon's view of processes: what the kernel reported, what /proc
/// said of processes older than the programs.
pub struct Processes {
    capture: Capture,
    proc_root: std::path::PathBuf,
    known: HashMap<(u32, u64), Arc<Process>>,
    order: VecDeque<(u32, u64)>,
    /// The kernel's table (pinned), for entries reported before this
    /// daemon started.
    table: Option<BpfHashMap<MapData, u32, Entry>>,
}

impl Processes {
    pub fn new(capture: Capture, proc_root: &Path) -> Self {
        Self {
            capture,
            proc_root: proc_root.into(),
            known: HashMap::new(),
            order: VecDeque::new(),
            table: None,
        }
    }

    /// Reads what the kernel filed in the pinned table of `pin_dir`.
    pub fn open_table(&mut self, pin_dir: &Path) -> Result<(), String> {
        let path = pin_dir.join(monitor_common::names::PROCESSES);
        let data = MapData::from_pin(&path)
            .map_err(|e| format!("opening the process table {}: {e}", path.display()))?;
        let map = BpfHashMap::try_from(aya::maps::Map::HashMap(data))
            .map_err(|e| format!("the process table {}: {e}", path.display()))?;
        self.table = Some(map);
        Ok(())
    }

    /// Names every live process from /proc (those older than the daemon),
    /// under identity 0 (`exec_ns` unknown); returns how many.
    pub fn read_proc(&mut self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.proc_root) else {
            return 0;
        };
        let mut n = 0;
        for entry in dir.flatten() {
            let Some(tgid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(p) = self.capture.of_proc(&self.proc_root, tgid) {
                self.keep((tgid, 0), Arc::new(p));
                n += 1;
            }
        }
        n
    }

    fn keep(&mut self, key: (u32, u64), p: Arc<Process>) {
        if self.known.insert(key, p).is_none() {
            self.order.push_back(key);
            while self.order.len() > KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
    }

    /// A `kind::PROCESS` record from the ring.
    pub fn learn(&mut self, e: &Entry) {
        let p = if e.flags & UNSEEN != 0 {
            // Older than the programs: /proc names it while it lives. One
            // that has exited since (gone, or a zombie, whose /proc keeps
            // its parent but not its image) keeps what /proc said of it at
            // the daemon's start, found by `lookup`.
            match self.capture.of_proc(&self.proc_root, e.tgid) {
                Some(p) if !p.exe.is_empty() => p,
                _ => return,
            }
        } else {
            let mut p = self.capture.of_entry(e);
            // A parent older than the programs: /proc names it (it is
            // usually still there when its child's first attempt is read).
            if p.parent_exe.is_empty() && p.ppid != 0 {
                p.parent_exe = exe_of(&self.proc_root.join(p.ppid.to_string()));
            }
            p.resolve_self_exe();
            p
        };
        self.keep((e.tgid, e.exec_ns), Arc::new(p));
    }

    /// The process `tgid` whose image started at `exec_ns` (0: unknown).
    pub fn lookup(&mut self, tgid: u32, exec_ns: u64) -> Option<Arc<Process>> {
        if let Some(p) = self.known.get(&(tgid, exec_ns)) {
            return Some(p.clone());
        }
        // Reported before this daemon started: the kernel's table has it
        // while the process lives.
        if exec_ns != 0 {
            if let Some(e) = self.table.as_ref().and_then(|t| t.get(&tgid, 0).ok()) {
                if e.exec_ns == exec_ns {
                    self.learn(&e);
                    if let Some(p) = self.known.get(&(tgid, exec_ns)) {
                        return Some(p.clone());
                    }
                }
            }
        }
        if let Some(p) = self.known.get(&(tgid, 0)) {
            return Some(p.clone());
        }
        let p = Arc::new(self.capture.of_proc(&self.proc_root, tgid)?);
        self.keep((tgid, exec_ns), p.clone());
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(args: &[u8], flags: u32) -> Entry {
        let mut e = Entry {
            exec_ns: 7,
            cgroup_id: 1,
            tgid: 42,
            ppid: 41,
            uid: 0,
            gid: 0,
            args_len: args.len() as u32,
            flags,
            comm: [0; 16],
            exe: [0; monitor_common::process::EXE_BYTES],
            parent_exe: [0; monitor_common::process::EXE_BYTES],
            args: [0; monitor_common::process::ARGS_BYTES],
        };
        e.exe[..16].copy_from_slice(b"/usr/bin/python3");
        e.parent_exe[..9].copy_from_slice(b"/bin/bash");
        e.args[..args.len()].copy_from_slice(args);
        e
    }

    /// A kernel entry reads as its path, arguments (redacted), parent.
    #[test]
    fn of_entry() {
        let c = Capture::default();
        let p = c.of_entry(&entry(b"python3\0-c\0print(1)\0--token\0abc\0", 0));
        assert_eq!(p.exe, "/usr/bin/python3");
        assert_eq!(
            p.args,
            ["python3", "-c", "print(1)", "--token", "<redacted>"]
        );
        assert_eq!((p.ppid, p.parent_exe.as_str()), (41, "/bin/bash"));
        assert!(!p.args_truncated);
        let cut = c.of_entry(&entry(b"python3\0-c\0pri", ARGS_TRUNCATED));
        assert_eq!(cut.args, ["python3", "-c", "pri"]);
        assert!(cut.args_truncated);
        let none = Capture {
            args_bytes: 0,
            ..Capture::default()
        };
        assert!(none.of_entry(&entry(b"python3\0", 0)).args.is_empty());
    }

    /// busybox's shell runs an applet by exec of /proc/self/exe: the
    /// process is named by the image it had, its parent's.
    #[test]
    fn an_exec_of_proc_self_exe_is_named_as_the_image_it_runs() {
        let mut e = entry(b"nc\0-w\0two\0", 0);
        e.exe = [0; monitor_common::process::EXE_BYTES];
        e.exe[..14].copy_from_slice(b"/proc/self/exe");
        e.parent_exe = [0; monitor_common::process::EXE_BYTES];
        e.parent_exe[..12].copy_from_slice(b"/bin/busybox");
        let mut known = Processes::new(Capture::default(), Path::new("/nonexistent"));
        known.learn(&e);
        let p = known.lookup(e.tgid, e.exec_ns).expect("learned");
        assert_eq!(p.exe, "/bin/busybox");
        assert_eq!(p.args, ["nc", "-w", "two"]);
    }

    /// A process older than the programs that exited before its record
    /// was read (its /proc gone, or a zombie's without an image) is named
    /// as /proc named it at the daemon's start, not as an empty process.
    #[test]
    fn an_unseen_process_gone_before_its_record_keeps_its_name_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join("42");
        std::fs::create_dir_all(&proc_dir).unwrap();
        std::fs::write(proc_dir.join("status"), "Name:\tpython3\nPPid:\t41\n").unwrap();
        std::fs::write(proc_dir.join("cmdline"), b"python3\0-c\0x\0").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", proc_dir.join("exe")).unwrap();
        let mut known = Processes::new(Capture::default(), dir.path());
        assert_eq!(known.read_proc(), 1);
        // It exits: a zombie's /proc has its status, no image, no cmdline.
        std::fs::remove_file(proc_dir.join("exe")).unwrap();
        std::fs::write(proc_dir.join("cmdline"), b"").unwrap();
        let mut e = entry(b"", UNSEEN);
        e.exec_ns = 99;
        known.learn(&e);
        let p = known.lookup(42, 99).expect("named");
        assert_eq!(p.exe, "/usr/bin/python3");
        assert_eq!(p.args, ["python3", "-c", "x"]);
    }

    /// This test's own process, from /proc: its executable and arguments.
    #[test]
    fn of_proc_names_a_live_process() {
        let c = Capture::default();
        let p = c
            .of_proc(Path::new("/proc"), std::process::id())
            .expect("this process is alive");
        let me = std::env::current_exe().expect("current exe");
        assert_eq!(p.exe, me.display().to_string());
        assert!(!p.args.is_empty());
        assert!(p.ppid != 0 && !p.parent_exe.is_empty(), "{p:?}");
        assert!(c.of_proc(Path::new("/proc"), u32::MAX).is_none());
    }
}
