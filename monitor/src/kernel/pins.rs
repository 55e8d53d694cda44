//! Pins in bpffs: how our programs and maps outlive the daemon, how an
//! earlier build's pins are retired, the lock that tells `uninstall` a
//! daemon holds a pin directory, and what the kernel says is attached now
//! (which may differ from what the daemon remembers, when someone removed
//! our pins behind its back).
use std::{
    io::Write,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
};
use monitor_common::names;

use super::{Kernel, KernelError};
use crate::state::{KernelProbe, Program, Programs};

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there.
pub fn ensure_bpffs() -> Result<(), KernelError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(KernelError::MountBpffs)?;
    let mounted = mountinfo.lines().any(|l| {
        l.split_once(" - ").is_some_and(|(left, right)| {
            right.starts_with("bpf ") && left.split_whitespace().nth(4) == Some("/sys/fs/bpf")
        })
    });
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").map_err(KernelError::MountBpffs)?;
    // SAFETY: constant, NUL-terminated arguments.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(KernelError::MountBpffs(std::io::Error::last_os_error()));
    }
    log::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

pub fn link_pin(dir: &Path, prog: &str) -> PathBuf {
    dir.join(format!("link_{prog}"))
}

/// Pinned state of an earlier build, to retire once ours is in force.
#[derive(Debug)]
pub struct OldPins {
    pub dir: PathBuf,
}

/// Removes a pin directory: unpinning the links detaches the programs
/// (nothing else holds them), unpinning the maps frees them.
pub fn remove_pins(dir: &Path) -> Result<Vec<String>, KernelError> {
    let mut removed = Vec::new();
    let io = |source| KernelError::Pins {
        path: dir.into(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .collect();
    // Links first, so nothing is judged by half-removed maps.
    entries.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
    });
    for path in entries {
        std::fs::remove_file(&path).map_err(|source| KernelError::Pins {
            path: path.clone(),
            source,
        })?;
        removed.push(path.display().to_string());
    }
    std::fs::remove_dir(dir).map_err(io)?;
    Ok(removed)
}

/// Creates (0700) `pin_base/<build id>` and lists the pin directories of
/// other builds, to retire once this build enforces.
pub fn prepare(pin_base: &Path) -> Result<(PathBuf, Vec<OldPins>), KernelError> {
    let pins = pin_base.join(super::build_id());
    std::fs::create_dir_all(&pins).map_err(|source| KernelError::Pins {
        path: pins.clone(),
        source,
    })?;
    for dir in [pin_base, pins.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| KernelError::Pins {
                path: dir.into(),
                source,
            },
        )?;
    }
    let old: Vec<OldPins> = std::fs::read_dir(pin_base)
        .map_err(|source| KernelError::Pins {
            path: pin_base.into(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && *p != pins)
        .map(|dir| OldPins { dir })
        .collect();

    Ok((pins, old))
}

/// The attach type of a cgroup hook of ours (see `foreign::ATTACH_TYPES`);
/// None for the LSM hook, which is global.
fn cgroup_attach_type(hook: &str) -> Option<u32> {
    super::foreign::ATTACH_TYPES
        .iter()
        .find(|(h, _)| *h == hook)
        .map(|(_, t)| *t)
}

/// Our program for `hook` as the kernel has it now: its pinned link, and
/// for a cgroup hook that link's program among those the kernel runs on
/// `cgroup_root` (a link detached with `bpftool link detach` stays pinned
/// but runs nowhere).
pub(crate) fn attached_now(pins: &Path, cgroup_root: &Path, hook: &'static str) -> Option<Program> {
    let link = FdLink::from(PinnedLink::from_pin(link_pin(pins, hook)).ok()?);
    let info = link.info().ok()?;
    if let Some(attach_type) = cgroup_attach_type(hook) {
        let running = super::foreign::effective_programs(cgroup_root, attach_type).ok()?;
        if !running.contains(&info.program_id()) {
            return None;
        }
    }
    Some(Program {
        hook,
        program_id: info.program_id(),
        link_id: info.id(),
    })
}

/// Reads what the kernel has now: which of our programs run on the cgroup
/// root, and the kernel's loss counter. Holds no link, so it never keeps a
/// program attached that someone removed.
pub struct Probe {
    pins: PathBuf,
    cgroup_root: PathBuf,
    expected: Vec<&'static str>,
    lost: PerCpuArray<MapData, u64>,
    dns_stats: PerCpuArray<MapData, u64>,
    flow_stats: PerCpuArray<MapData, u64>,
    flow_capacity: u32,
}

/// Every counter of a per-CPU counter array, summed over the CPUs.
fn per_cpu_sums(
    map: &PerCpuArray<MapData, u64>,
    names: &[&'static str],
) -> Vec<(&'static str, u64)> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = map
                .get(&(i as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or_default();
            (*name, n)
        })
        .collect()
}

impl Probe {
    /// One `lost` counter, all CPUs.
    fn lost(&self, index: u32) -> u64 {
        self.lost
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or_default()
    }
}

impl KernelProbe for Probe {
    fn dns_stats(&self) -> Vec<(&'static str, u64)> {
        per_cpu_sums(&self.dns_stats, &monitor_common::dns::stat::NAMES)
    }

    fn flow_stats(&self) -> Vec<(&'static str, u64)> {
        per_cpu_sums(&self.flow_stats, &monitor_common::flow_stat::NAMES)
    }

    fn flow_capacity(&self) -> u64 {
        u64::from(self.flow_capacity)
    }

    fn lost_events(&self) -> u64 {
        self.lost(monitor_common::lost::RING_FULL) + self.denials_lost()
    }

    fn denials_lost(&self) -> u64 {
        self.lost(monitor_common::lost::DENIALS_RING_FULL)
    }

    fn processes_lost(&self) -> u64 {
        self.lost(monitor_common::lost::PROCESS_FULL)
    }

    fn programs(&self) -> Programs {
        let mut out = Programs::default();
        for hook in &self.expected {
            match attached_now(&self.pins, &self.cgroup_root, hook) {
                Some(p) => out.attached.push(p),
                None => out.missing.push(hook),
            }
        }
        out
    }
}

fn pins_error(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Pins {
        path: path.into(),
        source,
    }
}

impl Kernel {
    /// A probe of what the kernel has, for the readers.
    pub fn probe(&self) -> Result<Probe, KernelError> {
        let map_error = |e| KernelError::Map {
            name: names::LOST,
            source: e,
        };
        let per_cpu = |name: &'static str| {
            let map_error = move |e| KernelError::Map { name, source: e };
            MapData::from_pin(self.pins.join(name))
                .map_err(map_error)
                .and_then(|m| {
                    PerCpuArray::try_from(aya::maps::Map::PerCpuArray(m)).map_err(map_error)
                })
        };
        let _ = map_error;
        let lost = per_cpu(names::LOST)?;
        let dns_stats = per_cpu(names::DNS_STATS)?;
        let flow_stats = per_cpu(names::FLOW_STATS)?;
        let flow_capacity = MapData::from_pin(self.pins.join(names::FLOWS))
            .and_then(|m| m.info())
            .map(|i| i.max_entries())
            .map_err(|e| KernelError::Map {
                name: names::FLOWS,
                source: e,
            })?;
        Ok(Probe {
            flow_stats,
            flow_capacity,
            pins: self.pins.clone(),
            cgroup_root: self.cgroup_root.clone(),
            expected: self.attached.iter().map(|a| a.hook).collect(),
            lost,
            dns_stats,
        })
    }

    /// Puts back what someone removed behind our back: every map pin that
    /// is gone is pinned again (so a restart still adopts these maps), and
    /// every program that no longer runs is attached and pinned again.
    /// Returns the programs it attached again.
    pub fn restore_links(&mut self) -> Result<Vec<&'static str>, KernelError> {
        let base = self.pins.parent().map(Path::to_path_buf);
        for dir in base.iter().chain(std::iter::once(&self.pins)) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(pins_error(dir))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(pins_error(dir))?;
            }
        }
        for (name, map) in &self.map_pins {
            let path = self.pins.join(name);
            if !path.exists() {
                map.pin(&path)
                    .map_err(|e| KernelError::PinMap { name, source: e })?;
                log::error!("map {name} was unpinned behind our back: pinned it again");
            }
        }
        let gone: Vec<&'static str> = self
            .attached
            .iter()
            .map(|a| a.hook)
            .filter(|h| attached_now(&self.pins, &self.cgroup_root, h).is_none())
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        let cgroup =
            std::fs::File::open(&self.cgroup_root).map_err(|source| KernelError::Cgroup {
                path: self.cgroup_root.clone(),
                source,
            })?;
        for hook in &gone {
            // A stale pin (its link detached) goes first, so the new link
            // can take its place.
            let pin = link_pin(&self.pins, hook);
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(pins_error(&pin))?;
            }
            let link = super::attach(&mut self._ebpf, hook, &cgroup)?;
            let info = link.info().map_err(|e| KernelError::Link {
                name: hook,
                source: e,
            })?;
            link.pin(&pin).map_err(|e| KernelError::Pin {
                name: hook,
                source: e,
            })?;
            if let Some(a) = self.attached.iter_mut().find(|a| a.hook == *hook) {
                a.program_id = info.program_id();
                a.link_id = info.id();
            }
        }
        Ok(gone)
    }
}

/// Held by a running daemon for its pin directory: a lock file under
/// /run/egress-monitor (bpffs holds no plain files) that `uninstall` and a
/// second daemon find from the pin directory alone.
///
/// The lock is the file's flock, which ends with the process. A daemon
/// that stops cleanly removes its file (while still holding the lock); one
/// that is killed leaves it, and its record (pin directory, state
/// directory, cgroup root) tells `status` and `uninstall` where it left its
/// programs. A taker checks, once it holds the lock, that the file it
/// locked is still the one at the path (not one removed meanwhile), so no
/// two processes ever hold two different files for one directory.
pub struct PinLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for PinLock {
    fn drop(&mut self) {
        // Removed while held: a taker that opened it meanwhile finds it
        // gone from the path once it gets the lock, and opens a new one.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One spelling per directory: absolute, the existing part with its
/// symlinks resolved, `.` and `..` and trailing slashes gone.
pub fn normalize(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut clean = PathBuf::new();
    for c in absolute.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    // Resolve the longest part that exists; keep the rest as written.
    let mut existing = clean.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return clean,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    out
}

/// Where the lock of a pin directory lives (the same for every spelling
/// of the directory).
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let dir = normalize(pin_dir);
    let digest = hex::encode(&Sha256::digest(dir.as_os_str().as_encoded_bytes())[..8]);
    Path::new(LOCK_DIR).join(format!("pins-{digest}.lock"))
}

/// Where the locks of pin directories live (a node path in Kubernetes).
pub const LOCK_DIR: &str = "/run/egress-monitor";

/// Who holds a pin directory, and where it keeps the rest.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    /// Empty in the record of `uninstall`, and of daemons before these
    /// fields.
    #[serde(default)]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub cgroup_root: PathBuf,
}

fn flock(file: &std::fs::File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn open_lock(path: &Path) -> Result<std::fs::File, KernelError> {
    let io = |source| KernelError::Pins {
        path: path.into(),
        source,
    };
    std::fs::create_dir_all(LOCK_DIR).map_err(io)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)
}

fn read_holder(path: &Path) -> Option<Holder> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Every record in the lock files: of running daemons, and of daemons
/// killed without a chance to remove theirs. (Read without touching the
/// locks, so a daemon starting meanwhile is never disturbed.)
pub fn recorded_holders() -> Vec<Holder> {
    let Ok(dir) = std::fs::read_dir(LOCK_DIR) else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lock"))
        .filter_map(|p| read_holder(&p))
        .collect()
}

/// Whether the process of a record is alive.
fn alive(h: &Holder) -> bool {
    h.pid != 0 && Path::new(&format!("/proc/{}", h.pid)).exists()
}

/// The daemons running on this machine, as their lock files say: a holder
/// whose process is alive and whose socket exists.
pub fn running_daemons() -> Vec<Holder> {
    recorded_holders()
        .into_iter()
        .filter(|h| alive(h) && !h.socket.as_os_str().is_empty() && h.socket.exists())
        .collect()
}

/// The one running daemon, or None when none runs; several are an error
/// naming them and the option (`--socket`, `--state-dir`) that picks one.
pub fn one_running_daemon(option: &str) -> Result<Option<Holder>, String> {
    let mut running = running_daemons();
    match running.len() {
        0 => Ok(None),
        1 => Ok(running.pop()),
        n => Err(format!(
            "{n} daemons run on this machine; say which with {option}: {}",
            running
                .iter()
                .map(|h| format!(
                    "pid {} (socket {}, state directory {})",
                    h.pid,
                    h.socket.display(),
                    h.state_dir.display()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Where bpffs is mounted, for finding pin directories no lock names.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Whether `dir` is a pin directory of ours: a base directory with a
/// build's subdirectory holding our CONFIG map or a link of ours.
pub fn is_pin_dir(dir: &Path) -> bool {
    let Ok(builds) = std::fs::read_dir(dir) else {
        return false;
    };
    builds.flatten().any(|b| {
        let b = b.path();
        b.is_dir()
            && (b.join(names::CONFIG).exists()
                || names::ALL_PROGRAMS.iter().any(|p| link_pin(&b, p).exists()))
    })
}

/// Pin directories of ours on this machine: those the lock files name
/// (running daemons' and killed ones'), the default one, and any
/// directory directly under /sys/fs/bpf that holds our pins. Each once,
/// with the record of its daemon when a lock file has one.
pub fn installed(default: &Path) -> Vec<(PathBuf, Option<Holder>)> {
    let mut out: Vec<(PathBuf, Option<Holder>)> = Vec::new();
    let mut add = |dir: PathBuf, holder: Option<Holder>| {
        let dir = normalize(&dir);
        if !is_pin_dir(&dir) {
            return;
        }
        match out.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, h)) => {
                if h.is_none() {
                    *h = holder;
                }
            }
            None => out.push((dir, holder)),
        }
    };
    for h in recorded_holders() {
        add(h.pin_dir.clone(), Some(h));
    }
    add(default.to_path_buf(), None);
    if let Ok(entries) = std::fs::read_dir(BPFFS) {
        for e in entries.flatten() {
            add(e.path(), None);
        }
    }
    out
}

/// Whether `file` is still the file at `path` (not one removed after we
/// opened it).
fn still_there(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Tries to take a lock whose file a stopping holder may remove meanwhile.
const LOCK_TRIES: usize = 16;

impl PinLock {
    /// Takes the lock of `record.pin_dir` for this process (recording
    /// `record`, with our pid), or says who has it.
    pub fn acquire(record: &Holder) -> Result<Self, KernelError> {
        let path = lock_path(&record.pin_dir);
        let io = |source| KernelError::Pins {
            path: path.clone(),
            source,
        };
        for _ in 0..LOCK_TRIES {
            let mut file = open_lock(&path)?;
            if !flock(&file).map_err(io)? {
                return Err(KernelError::Held(read_holder(&path).unwrap_or(Holder {
                    pin_dir: record.pin_dir.clone(),
                    ..Default::default()
                })));
            }
            if !still_there(&file, &path) {
                // Its holder stopped and removed it as we opened it.
                continue;
            }
            let holder = Holder {
                pid: std::process::id(),
                ..record.clone()
            };
            file.set_len(0).map_err(io)?;
            file.write_all(&serde_json::to_vec(&holder).unwrap_or_default())
                .map_err(io)?;
            return Ok(Self { _file: file, path });
        }
        Err(io(std::io::Error::other(format!(
            "the lock file was replaced {LOCK_TRIES} times while taking it"
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every spelling of one pin directory finds the same lock.
    #[test]
    fn the_lock_of_a_directory_does_not_depend_on_its_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("pins");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("alias");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let want = lock_path(&real);
        for spelling in [
            format!("{}/", real.display()),
            format!("{}/./", real.display()),
            format!("{}/../pins", real.display()),
            link.display().to_string(),
        ] {
            assert_eq!(lock_path(Path::new(&spelling)), want, "{spelling}");
        }
        // Not there yet: the existing part is resolved, the rest kept.
        assert_eq!(
            normalize(&link.join("later/")),
            real.canonicalize().unwrap().join("later")
        );
        assert_ne!(lock_path(&dir.path().join("other")), want);
    }
}
