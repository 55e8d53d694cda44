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
use crate::state::{KernelProbe, Program};

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

/// Reads what the kernel has now: the links pinned for our programs and the
/// kernel's loss counter. Holds no link, so it never keeps a program
/// attached that someone removed.
pub struct Probe {
    pins: PathBuf,
    expected: Vec<&'static str>,
    lost: PerCpuArray<MapData, u64>,
}

impl Probe {
    fn link(&self, hook: &'static str) -> Option<Program> {
        let link = FdLink::from(PinnedLink::from_pin(link_pin(&self.pins, hook)).ok()?);
        let info = link.info().ok()?;
        Some(Program {
            hook,
            program_id: info.program_id(),
            link_id: info.id(),
        })
    }
}

impl KernelProbe for Probe {
    fn lost_events(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|values| values.iter().sum())
            .unwrap_or_default()
    }

    fn programs(&self) -> Vec<Program> {
        self.expected.iter().filter_map(|h| self.link(h)).collect()
    }

    fn missing(&self) -> Vec<&'static str> {
        self.expected
            .iter()
            .copied()
            .filter(|h| self.link(h).is_none())
            .collect()
    }
}

impl Kernel {
    /// A probe of what the kernel has, for the readers.
    pub fn probe(&self) -> Result<Probe, KernelError> {
        let lost = MapData::from_pin(self.pins.join(names::LOST))
            .map_err(|e| KernelError::Map {
                name: names::LOST,
                source: e,
            })
            .and_then(|m| {
                PerCpuArray::try_from(aya::maps::Map::PerCpuArray(m)).map_err(|e| {
                    KernelError::Map {
                        name: names::LOST,
                        source: e,
                    }
                })
            })?;
        Ok(Probe {
            pins: self.pins.clone(),
            expected: self.attached.iter().map(|a| a.hook).collect(),
            lost,
        })
    }

    /// Attaches again every program whose pinned link is gone (someone ran
    /// `uninstall --force` or removed the pins), and pins the maps again,
    /// so a restart still adopts them. Returns the programs it restored.
    pub fn restore_links(&mut self) -> Result<Vec<&'static str>, KernelError> {
        let gone: Vec<&'static str> = self
            .attached
            .iter()
            .map(|a| a.hook)
            .filter(|h| PinnedLink::from_pin(link_pin(&self.pins, h)).is_err())
            .collect();
        if gone.is_empty() {
            return Ok(gone);
        }
        std::fs::create_dir_all(&self.pins).map_err(|source| KernelError::Pins {
            path: self.pins.clone(),
            source,
        })?;
        for (name, map) in &self.map_pins {
            let path = self.pins.join(name);
            if !path.exists() {
                map.pin(&path)
                    .map_err(|e| KernelError::Pin { name, source: e })?;
            }
        }
        let cgroup =
            std::fs::File::open(&self.cgroup_root).map_err(|source| KernelError::Cgroup {
                path: self.cgroup_root.clone(),
                source,
            })?;
        for hook in &gone {
            let link = super::attach(&mut self._ebpf, hook, &cgroup)?;
            let info = link.info().map_err(|e| KernelError::Link {
                name: hook,
                source: e,
            })?;
            link.pin(link_pin(&self.pins, hook))
                .map_err(|e| KernelError::Pin {
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
pub struct PinLock {
    file: std::fs::File,
    path: PathBuf,
}

/// Where the lock of a pin directory lives.
pub fn lock_path(pin_dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(&Sha256::digest(pin_dir.as_os_str().as_encoded_bytes())[..8]);
    Path::new(LOCK_DIR).join(format!("pins-{digest}.lock"))
}

const LOCK_DIR: &str = "/run/egress-monitor";

/// Who holds a pin directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
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

impl PinLock {
    /// Takes the lock of `pin_dir` for this process, or says who has it.
    pub fn acquire(pin_dir: &Path, socket: &Path) -> Result<Self, KernelError> {
        let path = lock_path(pin_dir);
        let mut file = open_lock(&path)?;
        let io = |source| KernelError::Pins {
            path: path.clone(),
            source,
        };
        if !flock(&file).map_err(io)? {
            return Err(KernelError::Held(read_holder(&path).unwrap_or(Holder {
                pid: 0,
                pin_dir: pin_dir.into(),
                socket: PathBuf::new(),
            })));
        }
        let holder = Holder {
            pid: std::process::id(),
            pin_dir: pin_dir.into(),
            socket: socket.into(),
        };
        file.set_len(0).map_err(io)?;
        file.write_all(&serde_json::to_vec(&holder).unwrap_or_default())
            .map_err(io)?;
        Ok(Self { file, path })
    }

    /// The daemon holding `pin_dir` now, if any.
    pub fn holder(pin_dir: &Path) -> Result<Option<Holder>, KernelError> {
        let path = lock_path(pin_dir);
        if !path.exists() {
            return Ok(None);
        }
        let file = open_lock(&path)?;
        let free = flock(&file).map_err(|source| KernelError::Pins {
            path: path.clone(),
            source,
        })?;
        Ok(if free { None } else { read_holder(&path) })
    }
}

impl Drop for PinLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}
