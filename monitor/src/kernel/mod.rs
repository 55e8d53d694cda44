//! Loading and attaching the kernel programs, and everything the daemon
//! writes into or reads from their maps.
//!
//! Policy state lives in two slots of maps (see `monitor_common::Config`):
//! the daemon fills the idle slot completely, then switches `CONFIG` with a
//! single write of one word, so no connection is ever judged by half a
//! policy set.
pub mod btf;
pub mod floor;
pub mod foreign;
pub mod lookup_bench;
pub mod offline;
pub mod pins;
pub mod sweep;
use std::{
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use self::pins::link_pin;
pub use self::pins::{ensure_bpffs, remove_pins, OldPins};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        links::{CgroupAttachMode, FdLink, PinnedLink},
        CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, Lsm,
    },
    Ebpf, EbpfLoader,
};
use monitor_common::{
    dns, geo_table, limits, names, tail, CidrRule, CloudEntry, CloudKey, Config, DnsTuning,
    DomainKey, InForce, Meta, PolicyAddr, RegionKey, RegionRule, Selection, SweepSocket,
};

/// The compiled kernel programs, built by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor.bpf.o"));

/// Programs in flight finish within microseconds; a slot is reused only
/// this long after it was switched out.
const SLOT_GRACE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "loading eBPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run as root"
    )]
    NotRoot,
    #[error("cannot mount bpffs at /sys/fs/bpf: {0}")]
    MountBpffs(std::io::Error),
    #[error("loading the eBPF object failed (does this kernel support BPF ring buffers and cgroup sock_addr hooks? Linux 5.8 or newer is needed): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning map {name} again: {source}")]
    PinMap {
        name: &'static str,
        source: aya::pin::PinError,
    },
    #[error("pinning the link of {name}: {source}")]
    Pin {
        name: &'static str,
        source: aya::pin::PinError,
    },
    #[error("the kernel country table: {0}")]
    Geo(String),
    /// The bench's floor programs (`floor`), never the daemon's.
    #[error("the bench's floor programs: {0}")]
    Floor(String),
    #[error("the socket_create LSM hook: {0}")]
    Lsm(String),
    #[error("pins {path}: {source}")]
    Pins {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the programs pinned in {pins} are attached to another cgroup (id {cgroup_id}); run `egress-monitor uninstall` or choose another --pin-dir")]
    PinnedElsewhere { pins: PathBuf, cgroup_id: u64 },
    #[error("the pin directory {} is held by a running daemon (pid {}, socket {}): stop it first, or choose another --pin-dir", .0.pin_dir.display(), .0.pid, .0.socket.display())]
    Held(pins::Holder),
    #[error("cannot read the daemon's network namespace cookie (SO_NETNS_COOKIE, Linux 5.14 or newer): {0}")]
    NetnsCookie(std::io::Error),
    #[error("cannot open cgroup {path} to attach to: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

/// A program attached to the cgroup root.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attached {
    pub hook: &'static str,
    pub program_id: u32,
    pub link_id: u32,
}

/// Everything the daemon writes for one policy set.
#[derive(Debug, Default, Clone)]
pub struct PolicyMaps {
    pub selections: Vec<(u64, Selection)>,
    /// Watched parents: 1 monitor, 2 enforce (see `Selection::UNCLASSIFIED`).
    pub watched: Vec<(u64, u8)>,
    pub region_rules: Vec<(RegionKey, RegionRule)>,
    /// (key, prefix length over policy id + address).
    pub allow_cidrs: Vec<(PolicyAddr, u32)>,
    pub deny_cidrs: Vec<(PolicyAddr, u32)>,
    pub domains: Vec<(DomainKey, RegionRule)>,
    pub cloud_rules: Vec<(CloudKey, RegionRule)>,
}

type Trie<K, V> = LpmTrie<MapData, K, V>;

struct Slots {
    /// The country table slots (`geo_table`), written through an mmap.
    geo: [MapData; 2],
    select: [HashMap<MapData, u64, Selection>; 2],
    watch: [HashMap<MapData, u64, u8>; 2],
    region_rules: [HashMap<MapData, RegionKey, RegionRule>; 2],
    allow: [Trie<PolicyAddr, CidrRule>; 2],
    deny: [Trie<PolicyAddr, CidrRule>; 2],
    domains: [HashMap<MapData, DomainKey, RegionRule>; 2],
    cloud_rules: [HashMap<MapData, CloudKey, RegionRule>; 2],
    cloud: [Trie<[u8; 16], CloudEntry>; 2],
}

pub struct Kernel {
    // Holds the map fds; the programs stay attached through their pinned
    // links, whatever happens to this process.
    _ebpf: Ebpf,
    config_map: Array<MapData, Config>,
    meta_map: Array<MapData, Meta>,
    /// How long the host slept, as the programs read it (`names::CLOCK`).
    clock: Array<MapData, u64>,
    /// What `clock` holds.
    slept_ns: u64,
    lost: PerCpuArray<MapData, u64>,
    dns_tuning: Array<MapData, DnsTuning>,
    dns_stats: PerCpuArray<MapData, u64>,
    dns_resolvers: Trie<[u8; 16], u32>,
    /// The cgroups classified (see `Selection::UNCLASSIFIED`).
    known: HashMap<MapData, u64, u8>,
    /// The name-hash key in the kernel (kept from the pins on a restart).
    dns_key: u64,
    slots: Slots,
    /// Our decoded copy of the CONFIG word last written.
    config: InForce,
    meta: Meta,
    last_switch: Instant,
    attached: Vec<Attached>,
    cgroup_root: PathBuf,
    pins: PathBuf,
    adopted: bool,
    /// The ring the kernel numbers its events in: boot id and map id.
    events_epoch: String,
    foreign: Vec<foreign::Foreign>,
    /// A descriptor of every pinned map, to pin it again if its pin is
    /// removed while we run (see `pins::restore_links`).
    map_pins: Vec<(&'static str, MapData)>,
    /// `judge_socket` and its input, for the sweep of sockets older than
    /// the policy (None where the program cannot be loaded).
    judge_socket: Option<(aya::programs::ProgramFd, Array<MapData, SweepSocket>)>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, KernelError> {
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// The object's program `name` as its type `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::Program {
            name,
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| KernelError::Program { name, source })
}

/// A descriptor of the loaded program `name` (`fd` is its `fd()`) that
/// outlives the borrow of the object.
fn owned_fd(
    name: &'static str,
    fd: Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
) -> Result<aya::programs::ProgramFd, KernelError> {
    fd.and_then(|fd| fd.try_clone().map_err(aya::programs::ProgramError::IOError))
        .map_err(|source| KernelError::Program { name, source })
}

/// Attaches `cgroup_made` to the raw tracepoint `cgroup_mkdir`, for as long
/// as this process runs (the link belongs to the loaded object).
fn watch_cgroups_made(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let name = names::PROG_CGROUP_MADE;
    let program_error = |source| KernelError::Program { name, source };
    let prog: &mut aya::programs::RawTracePoint = program(ebpf, name)?;
    prog.load().map_err(program_error)?;
    prog.attach("cgroup_mkdir").map_err(program_error)?;
    Ok(())
}

/// Loads `egress_decide` and `sender_decide` (never attached) and puts
/// them in the program array `egress` tail-calls them through: before
/// `egress` is attached, so no packet finds the array empty, and
/// `egress_decide` first, since `sender_decide` goes on to it. A restart
/// replaces each entry with the same build's program; the pinned array
/// holds them while no daemon runs.
fn load_egress_decide(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    for (index, name) in [
        (tail::DECIDE, names::PROG_EGRESS_DECIDE),
        (tail::SENDER, names::PROG_SENDER_DECIDE),
    ] {
        let prog: &mut CgroupSkb = program(ebpf, name)?;
        prog.load()
            .map_err(|source| KernelError::Program { name, source })?;
        let fd = owned_fd(name, prog.fd())?;
        let map = ebpf
            .map_mut(names::EGRESS_DECIDE)
            .ok_or(KernelError::MissingMap(names::EGRESS_DECIDE))?;
        let mut array =
            aya::maps::ProgramArray::try_from(map).map_err(map_err(names::EGRESS_DECIDE))?;
        array
            .set(index, &fd, 0)
            .map_err(map_err(names::EGRESS_DECIDE))?;
    }
    Ok(())
}

/// Loads `judge_socket` (never attached) and takes its input map.
fn load_judge_socket(
    ebpf: &mut Ebpf,
) -> Result<(aya::programs::ProgramFd, Array<MapData, SweepSocket>), KernelError> {
    let name = names::PROG_JUDGE_SOCKET;
    let prog: &mut aya::programs::SocketFilter = program(ebpf, name)?;
    prog.load()
        .map_err(|source| KernelError::Program { name, source })?;
    let fd = owned_fd(name, prog.fd())?;
    let input = take(ebpf, names::SWEEP)?;
    Ok((fd, input))
}

/// Runs a loaded program `repeat` times on a 64-byte packet
/// (`BPF_PROG_TEST_RUN`): its return value and the kernel's mean ns per run.
pub(crate) fn test_run(fd: std::os::fd::BorrowedFd, repeat: u32) -> std::io::Result<(u32, u32)> {
    let packet = [0u8; 64];
    // union bpf_attr, the `test` member.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(packet.as_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&repeat.to_ne_bytes());
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_TEST_RUN (no output
    // buffers), and `packet` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            attr.len(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((
        u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]),
        u32::from_ne_bytes([attr[36], attr[37], attr[38], attr[39]]),
    ))
}

/// An array map as its raw data (for an mmap of its values).
fn take_array(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, KernelError> {
    match ebpf.take_map(name) {
        Some(aya::maps::Map::Array(data)) => Ok(data),
        Some(_) => Err(KernelError::Map {
            name,
            source: aya::maps::MapError::InvalidName { name: name.into() },
        }),
        None => Err(KernelError::MissingMap(name)),
    }
}

/// Loads one program and attaches it to the cgroup with a link.
fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &std::fs::File,
) -> Result<FdLink, KernelError> {
    let program_error = |source| KernelError::Program { name, source };
    let program = ebpf.program_mut(name).ok_or(KernelError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    let link_error = |e| KernelError::Link { name, source: e };
    let link: FdLink = match name {
        names::PROG_EGRESS | names::PROG_INGRESS => {
            let prog: &mut CgroupSkb = program.try_into().map_err(program_error)?;
            if prog.fd().is_err() {
                prog.load().map_err(program_error)?;
            }
            let direction = if name == names::PROG_EGRESS {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            let id = prog
                .attach(cgroup.as_fd(), direction, CgroupAttachMode::Single)
                .map_err(program_error)?;
            prog.take_link(id)
                .map_err(program_error)?
                .try_into()
                .map_err(link_error)?
        }
        names::PROG_PROCESS_EXEC | names::PROG_PROCESS_EXIT => {
            // Global raw tracepoints: they file who runs what, host-wide
            // (a selected cgroup may gain any process), and cost an exec
            // or an exit, never a connection.
            let prog: &mut aya::programs::RawTracePoint =
                program.try_into().map_err(program_error)?;
            if prog.fd().is_err() {
                prog.load().map_err(program_error)?;
            }
            let tracepoint = if name == names::PROG_PROCESS_EXEC {
                "sched_process_exec"
            } else {
                "sched_process_exit"
            };
            let id = prog.attach(tracepoint).map_err(program_error)?;
            prog.take_link(id).map_err(program_error)?.into()
        }
        names::PROG_SOCKET_CREATE => {
            // Global (an LSM hook); it judges by the caller's cgroup. It
            // only runs where the BPF LSM is active.
            if let Ok(active) = std::fs::read_to_string("/sys/kernel/security/lsm") {
                if !active.split(',').any(|l| l.trim() == "bpf") {
                    return Err(KernelError::Lsm(format!(
                        "the BPF LSM is not active (active: {}); add `bpf` to the kernel's lsm= parameter",
                        active.trim()
                    )));
                }
            }
            let btf = aya::Btf::from_sys_fs().map_err(|e| KernelError::Lsm(e.to_string()))?;
            let prog: &mut Lsm = program.try_into().map_err(program_error)?;
            if prog.fd().is_err() {
                prog.load("socket_create", &btf).map_err(program_error)?;
            }
            let id = prog.attach().map_err(program_error)?;
            prog.take_link(id).map_err(program_error)?.into()
        }
        _ => {
            let prog: &mut CgroupSockAddr = program.try_into().map_err(program_error)?;
            if prog.fd().is_err() {
                prog.load().map_err(program_error)?;
            }
            let id = prog
                .attach(cgroup.as_fd(), CgroupAttachMode::Single)
                .map_err(program_error)?;
            prog.take_link(id)
                .map_err(program_error)?
                .try_into()
                .map_err(link_error)?
        }
    };
    Ok(link)
}

impl Slots {
    /// Both slots of every policy map and of the geo table.
    fn take(ebpf: &mut Ebpf) -> Result<Self, KernelError> {
        Ok(Slots {
            geo: [
                take_array(ebpf, names::GEO[0])?,
                take_array(ebpf, names::GEO[1])?,
            ],
            select: [take(ebpf, names::SELECT[0])?, take(ebpf, names::SELECT[1])?],
            watch: [take(ebpf, names::WATCH[0])?, take(ebpf, names::WATCH[1])?],
            region_rules: [
                take(ebpf, names::REGION_RULES[0])?,
                take(ebpf, names::REGION_RULES[1])?,
            ],
            allow: [
                take(ebpf, names::ALLOW_CIDRS[0])?,
                take(ebpf, names::ALLOW_CIDRS[1])?,
            ],
            deny: [
                take(ebpf, names::DENY_CIDRS[0])?,
                take(ebpf, names::DENY_CIDRS[1])?,
            ],
            domains: [
                take(ebpf, names::DOMAINS[0])?,
                take(ebpf, names::DOMAINS[1])?,
            ],
            cloud_rules: [
                take(ebpf, names::CLOUD_RULES[0])?,
                take(ebpf, names::CLOUD_RULES[1])?,
            ],
            cloud: [take(ebpf, names::CLOUD[0])?, take(ebpf, names::CLOUD[1])?],
        })
    }
}

/// The state an adopted set of pins carries: the switch word in force and
/// the meta entry, which must name the cgroup we attach to.
fn adopt_state(
    config_map: &Array<MapData, Config>,
    meta_map: &Array<MapData, Meta>,
    pins: &Path,
    root_id: u64,
) -> Result<(InForce, Meta), KernelError> {
    let meta = meta_map.get(&0, 0).map_err(map_err(names::META))?;
    if meta.cgroup_root_id != root_id {
        return Err(KernelError::PinnedElsewhere {
            pins: pins.into(),
            cgroup_id: meta.cgroup_root_id,
        });
    }
    let config = config_map.get(&0, 0).map_err(map_err(names::CONFIG))?;
    Ok((config.unpack(), meta))
}

/// CLOCK_BOOTTIME minus CLOCK_MONOTONIC now: how long the host slept. The
/// monotonic clock is read second, so the difference is never above the
/// kernel's own (a count is never put after the precise time).
fn slept_ns() -> u64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
    };
    let boot = read(libc::CLOCK_BOOTTIME);
    let monotonic = read(libc::CLOCK_MONOTONIC);
    boot.saturating_sub(monotonic)
}

/// A first start: slot 0, generation 0, no database yet.
fn fresh_state(
    config_map: &mut Array<MapData, Config>,
    meta_map: &mut Array<MapData, Meta>,
    root_id: u64,
) -> Result<(InForce, Meta), KernelError> {
    let config = InForce::default();
    let meta = Meta {
        cgroup_root_id: root_id,
        geo_sha256: [0; 32],
    };
    config_map
        .set(0, config.pack(), 0)
        .map_err(map_err(names::CONFIG))?;
    meta_map.set(0, meta, 0).map_err(map_err(names::META))?;
    Ok((config, meta))
}

/// Adopts every pinned link, attaches (and pins) every program that has
/// none, in the order of `names::ALL_PROGRAMS`.
fn attach_all(
    ebpf: &mut Ebpf,
    cgroup_root: &Path,
    pins: &Path,
    processes: bool,
) -> Result<Vec<Attached>, KernelError> {
    let cgroup = std::fs::File::open(cgroup_root).map_err(|source| KernelError::Cgroup {
        path: cgroup_root.into(),
        source,
    })?;
    let mut attached = Vec::new();
    for name in names::ALL_PROGRAMS {
        let process_program = names::PROCESS_PROGRAMS.contains(&name);
        if process_program && !processes {
            continue;
        }
        let pin = link_pin(pins, name);
        let link_info = if pin.exists() {
            // Adopt: the pinned link keeps our program attached.
            let link = FdLink::from(
                PinnedLink::from_pin(&pin).map_err(|e| KernelError::Link { name, source: e })?,
            );
            link.info()
                .map_err(|e| KernelError::Link { name, source: e })?
        } else {
            // bpf_links: the kernel always treats cgroup links as
            // multi-attach (link_create takes no mode flags), so
            // programs of other tools on this cgroup keep running, and
            // any one of them denying is a denial.
            let link = match attach(ebpf, name, &cgroup) {
                Ok(link) => link,
                Err(e) if name == names::PROG_SOCKET_CREATE => {
                    // aya appends "Verifier output: ..." even when the
                    // verifier said nothing (a refusal before it ran).
                    let text = e.to_string();
                    let text = text
                        .trim_end()
                        .strip_suffix("Verifier output:")
                        .map_or(text.as_str(), |t| t.trim_end().trim_end_matches('.'))
                        .to_string();
                    log::warn!("packet sockets (AF_PACKET) cannot be refused on this host: {text}; drop CAP_NET_RAW from workloads instead");
                    continue;
                }
                Err(e) if process_program => {
                    log::warn!("{}: {e}", PROCESSES_FROM_PROC);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let info = link
                .info()
                .map_err(|e| KernelError::Link { name, source: e })?;
            link.pin(&pin)
                .map_err(|e| KernelError::Pin { name, source: e })?;
            info
        };
        attached.push(Attached {
            hook: name,
            program_id: link_info.program_id(),
            link_id: link_info.id(),
        });
    }
    Ok(attached)
}

/// The kernel's own BTF, where the exec program's fields are found.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// What the daemon says when the kernel cannot file processes.
const PROCESSES_FROM_PROC: &str = "processes are named from /proc only (one that exits before its event is read keeps only its comm)";

/// Identifies this build's programs: pins of another build are replaced.
pub fn build_id() -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(PROGRAMS)[..8])
}

impl Kernel {
    /// Loads the programs and attaches them to `cgroup_root`, pinning maps
    /// and links under `pin_base/<build id>`. When this build's pins are
    /// already there (a restart), they are adopted: nothing is attached
    /// twice, the policy in force stays in force, and the ring buffer still
    /// holds what the programs reported while no daemon ran. Pins of other
    /// builds are returned, to be retired once this build enforces.
    pub fn load(
        cgroup_root: &Path,
        ring_bytes: u32,
        flow_entries: u32,
        geo_words: u32,
        pin_base: &Path,
        process_args_bytes: u32,
    ) -> Result<(Self, RingBuf<MapData>, Vec<OldPins>), KernelError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(KernelError::NotRoot);
        }
        ensure_bpffs()?;
        let (pins, old) = pins::prepare(pin_base)?;
        let root_id = crate::cgroups::cgroup_id(cgroup_root).map_err(|e| KernelError::Cgroup {
            path: cgroup_root.into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let adopted = link_pin(&pins, names::PROG_CONNECT4).exists();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(names::EVENTS, ring_bytes);
        loader.map_max_entries(names::FLOWS, flow_entries);
        for name in names::GEO {
            loader.map_max_entries(name, geo_words / geo_table::WORDS_PER_ELEMENT);
        }
        let map_paths: Vec<(&str, PathBuf)> =
            names::ALL_MAPS.iter().map(|m| (*m, pins.join(m))).collect();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(PROGRAMS)?;
        let map_pins = names::ALL_MAPS
            .iter()
            .map(|name| {
                MapData::from_pin(pins.join(name))
                    .map(|m| (*name, m))
                    .map_err(map_err(name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let events_epoch = map_pins
            .iter()
            .find(|(n, _)| *n == names::EVENTS)
            .and_then(|(_, m)| m.info().ok())
            .map(|info| {
                let boot =
                    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
                format!("{}/{}", boot.trim(), info.id())
            })
            .unwrap_or_default();
        let ring: RingBuf<MapData> = take(&mut ebpf, names::EVENTS)?;
        let mut config_map: Array<MapData, Config> = take(&mut ebpf, names::CONFIG)?;
        let mut meta_map: Array<MapData, Meta> = take(&mut ebpf, names::META)?;
        let (config, meta) = if adopted {
            adopt_state(&config_map, &meta_map, &pins, root_id)?
        } else {
            fresh_state(&mut config_map, &mut meta_map, root_id)?
        };
        let mut clock: Array<MapData, u64> = take(&mut ebpf, names::CLOCK)?;
        // Before any program is attached: every count is in boot time.
        let slept_ns = slept_ns();
        clock.set(0, slept_ns, 0).map_err(map_err(names::CLOCK))?;
        let slots = Slots::take(&mut ebpf)?;
        let lost = take(&mut ebpf, names::LOST)?;
        let dns_tuning = take(&mut ebpf, names::DNS_TUNING)?;
        let dns_stats = take(&mut ebpf, names::DNS_STATS)?;
        let dns_resolvers = take(&mut ebpf, names::DNS_RESOLVERS)?;
        let known = take(&mut ebpf, names::KNOWN)?;
        let dns_tuning: Array<MapData, DnsTuning> = dns_tuning;
        // Names already filed under the pinned key stay valid: keep it.
        let pinned_key = dns_tuning.get(&0, 0).map(|t| t.key).unwrap_or(0);
        let dns_key = if pinned_key != 0 {
            pinned_key
        } else {
            let mut b = [0u8; 8];
            getrandom::getrandom(&mut b)
                .map_err(|e| KernelError::Lsm(format!("random name-hash key: {e}")))?;
            u64::from_ne_bytes(b) | 1
        };
        // The exec program reads kernel structs where this kernel keeps
        // them; without their places it files nothing (and is not attached).
        let processes = match btf::process_layout(Path::new(VMLINUX_BTF), process_args_bytes) {
            Ok(layout) => {
                // Borrowed, not taken: the exec program is loaded after
                // this, and relocates against the object's descriptor.
                let map = ebpf
                    .map_mut(names::PROCESS_LAYOUT)
                    .ok_or(KernelError::MissingMap(names::PROCESS_LAYOUT))?;
                let mut map: Array<&mut MapData, monitor_common::process::Layout> =
                    Array::try_from(map).map_err(map_err(names::PROCESS_LAYOUT))?;
                map.set(0, layout, 0)
                    .map_err(map_err(names::PROCESS_LAYOUT))?;
                true
            }
            Err(e) => {
                log::warn!("{PROCESSES_FROM_PROC}: {e}");
                false
            }
        };
        load_egress_decide(&mut ebpf)?;
        let attached = attach_all(&mut ebpf, cgroup_root, &pins, processes)?;
        if let Err(e) = watch_cgroups_made(&mut ebpf) {
            log::warn!(
                "new cgroups are classified when a watched parent first refuses one of their attempts, not when they are made: {e}"
            );
        }
        let judge_socket = match load_judge_socket(&mut ebpf) {
            Ok(j) => Some(j),
            Err(e) => {
                log::warn!("connections older than a policy cannot be judged on this host (they keep running until they close): {e}");
                None
            }
        };
        Ok((
            Self {
                _ebpf: ebpf,
                config_map,
                meta_map,
                clock,
                slept_ns,
                lost,
                dns_tuning,
                dns_stats,
                dns_resolvers,
                known,
                dns_key,
                slots,
                config,
                meta,
                last_switch: Instant::now(),
                attached,
                cgroup_root: cgroup_root.into(),
                pins,
                adopted,
                events_epoch,
                foreign: Vec::new(),
                map_pins,
                judge_socket,
            },
            ring,
            old,
        ))
    }

    /// Looks for programs of others on our attach points: the cgroup root
    /// and the selected cgroups (`(shown path, path)`). Logs each one once
    /// when it appears.
    pub fn check_foreign(&mut self, selected: &[(String, PathBuf)]) {
        let mut places: Vec<(String, &Path)> = vec![(
            self.cgroup_root.display().to_string(),
            self.cgroup_root.as_path(),
        )];
        places.extend(
            selected
                .iter()
                .map(|(shown, p)| (shown.clone(), p.as_path())),
        );
        let ours: Vec<u32> = self.attached.iter().map(|a| a.program_id).collect();
        let found = foreign::find(&places, &ours);
        for f in found.iter().filter(|f| !self.foreign.contains(f)) {
            log::warn!(
                "foreign BPF program id {} runs on the {} hook of cgroup {}: it cannot undo our denials (every program must allow), but it can deny or observe on its own; check who attached it (bpftool cgroup tree)",
                f.program_id, f.hook, f.cgroup
            );
        }
        self.foreign = found;
    }

    /// Programs of others on our attach points, as last checked.
    pub fn foreign_programs(&self) -> &[foreign::Foreign] {
        &self.foreign
    }

    /// Writes where the programs read it how long the host slept, when that
    /// changed (a suspend since the last call): their counts of repeats and
    /// packets are in boot time through it (`names::CLOCK`). Called at every
    /// rescan; until then a count after a suspend is early by the sleep.
    pub fn keep_clock(&mut self) -> Result<(), KernelError> {
        let slept_ns = slept_ns();
        // Reads of the two clocks differ by a few hundred ns from call to
        // call; a sleep is seconds.
        if slept_ns.abs_diff(self.slept_ns) < 1_000_000 {
            return Ok(());
        }
        self.clock
            .set(0, slept_ns, 0)
            .map_err(map_err(names::CLOCK))?;
        self.slept_ns = slept_ns;
        Ok(())
    }

    /// Whether this start adopted pinned programs (a restart) rather than
    /// attaching new ones.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins
    }

    /// Whether the geo slot in force holds the database with this digest.
    pub fn geo_loaded(&self, sha256_hex: &str) -> bool {
        hex::encode(self.meta.geo_sha256) == sha256_hex
    }

    /// Detaches and removes everything this daemon pinned.
    pub fn uninstall(self) -> Result<Vec<String>, KernelError> {
        let pins = self.pins.clone();
        drop(self);
        remove_pins(&pins)
    }

    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    pub fn policy_generation(&self) -> u32 {
        self.config.generation
    }

    /// The ring the kernel numbers events in (`DecisionEvent::seq`): the
    /// boot and the ring map's id; empty if unknown.
    pub fn events_epoch(&self) -> &str {
        &self.events_epoch
    }

    /// Events the kernel could not put into the ring buffer, all CPUs,
    /// the refusals among them included.
    pub fn lost_events(&self) -> u64 {
        self.lost(monitor_common::lost::RING_FULL) + self.denials_lost()
    }

    /// Decisions that are not "allow" the kernel could not put into the
    /// ring buffer (even its reserve was full), all CPUs.
    pub fn denials_lost(&self) -> u64 {
        self.lost(monitor_common::lost::DENIALS_RING_FULL)
    }

    /// Per CPU, the last number the kernel gave an event
    /// (`DecisionEvent::seq`), as (CPU, number); the CPUs that numbered
    /// none are left out.
    pub fn event_numbers(&self) -> Vec<(u32, u32)> {
        self.lost
            .get(&monitor_common::lost::SEQ, 0)
            .map(|values| {
                values
                    .iter()
                    .enumerate()
                    // The kernel keeps the count in 64 bits and numbers
                    // events with its low 32.
                    .filter(|(_, &n)| n != 0)
                    .map(|(cpu, &n)| (cpu as u32, n as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One `LOST` counter, all CPUs.
    fn lost(&self, index: u32) -> u64 {
        self.lost
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or_default()
    }

    /// How the kernel learns names (see `DnsTuning`); takes effect for the
    /// next answer.
    pub fn set_dns_tuning(&mut self, tuning: DnsTuning) -> Result<(), KernelError> {
        // Loopback resolvers are trusted in the daemon's own namespace only.
        let netns = sweep::this_netns_cookie().map_err(KernelError::NetnsCookie)?;
        let tuning = DnsTuning {
            key: self.dns_key,
            netns,
            ..tuning
        };
        self.dns_tuning
            .set(0, tuning, 0)
            .map_err(map_err(names::DNS_TUNING))
    }

    /// The cgroups the kernel holds as classified (on adoption, what the
    /// last run wrote).
    pub fn known(&self) -> Vec<u64> {
        self.known.keys().filter_map(Result::ok).collect()
    }

    /// Marks cgroups as classified: under a watched parent, they are judged
    /// by their selection (none) instead of as unclassified.
    pub fn know(&mut self, ids: &[u64]) -> Result<(), KernelError> {
        for id in ids {
            self.known.insert(id, 1, 0).map_err(map_err(names::KNOWN))?;
        }
        Ok(())
    }

    /// Forgets cgroups that are gone (their ids never come back).
    pub fn forget(&mut self, ids: &[u64]) {
        for id in ids {
            let _ = self.known.remove(id);
        }
    }

    /// The name-hash key the kernel hashes names with.
    pub fn dns_key(&self) -> u64 {
        self.dns_key
    }

    /// The resolvers whose answers teach names: replaces the set in the
    /// kernel (added first, then the ones no longer listed removed, so a
    /// resolver listed before and after never drops out).
    pub fn set_dns_resolvers(&mut self, nets: &[ipnetwork::IpNetwork]) -> Result<(), KernelError> {
        if nets.len() > dns::RESOLVER_ENTRIES as usize {
            return Err(KernelError::Map {
                name: names::DNS_RESOLVERS,
                source: aya::maps::MapError::OutOfBounds {
                    index: nets.len() as u32,
                    max_entries: dns::RESOLVER_ENTRIES,
                },
            });
        }
        let wanted: Vec<Key<[u8; 16]>> = nets
            .iter()
            .map(|n| {
                let (addr, len) = crate::geo::network_to_u128(*n);
                Key::new(u32::from(len), addr.to_be_bytes())
            })
            .collect();
        for k in &wanted {
            self.dns_resolvers
                .insert(k, 1, 0)
                .map_err(map_err(names::DNS_RESOLVERS))?;
        }
        let present: Vec<Key<[u8; 16]>> = self
            .dns_resolvers
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::DNS_RESOLVERS))?;
        for k in present {
            let kept = wanted
                .iter()
                .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data());
            if !kept {
                self.dns_resolvers
                    .remove(&k)
                    .map_err(map_err(names::DNS_RESOLVERS))?;
            }
        }
        Ok(())
    }

    /// The kernel's DNS counters (`dns::stat`), all CPUs.
    pub fn dns_stats(&self) -> [u64; dns::stat::COUNT as usize] {
        let mut out = [0u64; dns::stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self
                .dns_stats
                .get(&(i as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or_default();
        }
        out
    }

    /// Loads cloud prefixes into the idle cloud slot and switches to it, in
    /// the same word as the policy set `maps` (whose cloud-region rules may
    /// name regions only this snapshot has): one switch, so no decision
    /// sees the new ranges with the old rules. Returns the policy
    /// generation now in force.
    pub fn load_cloud(
        &mut self,
        prefixes: impl Iterator<Item = (u128, u8, CloudEntry)>,
        maps: &PolicyMaps,
    ) -> Result<(usize, u32), KernelError> {
        let idle = 1 - self.config.cloud_slot as usize;
        self.wait_grace();
        let name = names::CLOUD[idle];
        clear_trie(&mut self.slots.cloud[idle], name)?;
        let mut n = 0;
        for (addr, len, entry) in prefixes {
            self.slots.cloud[idle]
                .insert(&Key::new(u32::from(len), addr.to_be_bytes()), entry, 0)
                .map_err(map_err(name))?;
            n += 1;
        }
        let policy_slot = self.fill_policy_slot(maps)?;
        let config = InForce {
            policy_slot,
            cloud_slot: idle as u32,
            generation: self.config.generation.wrapping_add(1),
            ..self.config
        };
        self.switch(config)?;
        let old = 1 - idle;
        self.wait_grace();
        // In force already: emptying the old slot is housekeeping (the next
        // load clears it again), not a reason to call the switch failed.
        if let Err(e) = clear_trie(&mut self.slots.cloud[old], names::CLOUD[old]) {
            log::warn!("emptying the cloud slot switched out: {e}");
        }
        Ok((n, config.generation))
    }

    fn wait_grace(&self) {
        let since = self.last_switch.elapsed();
        if since < SLOT_GRACE {
            std::thread::sleep(SLOT_GRACE - since);
        }
    }

    /// One write of the packed word (see `Config` for why it is atomic).
    fn switch(&mut self, config: InForce) -> Result<(), KernelError> {
        self.config_map
            .set(0, config.pack(), 0)
            .map_err(map_err(names::CONFIG))?;
        self.config = config;
        self.last_switch = Instant::now();
        Ok(())
    }

    /// Writes the country table of `ranges` into the idle geo slot (through
    /// an mmap of the map: one copy of the table, built in place) and
    /// switches to it. Returns what the table took, or None when `cancel`
    /// was set before the switch (the slot in force is left as it was).
    pub fn load_geo(
        &mut self,
        ranges: &[crate::geo::RegionRange],
        sha256_hex: &str,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Result<Option<GeoLoaded>, KernelError> {
        let idle = 1 - self.config.geo_slot as usize;
        self.wait_grace();
        let name = names::GEO[idle];
        let built = {
            let mut slot = MappedWords::new(&self.slots.geo[idle], name)?;
            crate::geo::table::build(ranges, slot.words())
                .map_err(|e| KernelError::Geo(e.to_string()))?
        };
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        let config = InForce {
            geo_slot: idle as u32,
            ..self.config
        };
        self.switch(config)?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(sha256_hex, &mut digest).unwrap_or_default();
        self.meta.geo_sha256 = digest;
        self.meta_map
            .set(0, self.meta, 0)
            .map_err(map_err(names::META))?;
        Ok(Some(GeoLoaded {
            words: built.words,
            chunks: built.chunks,
            capacity: self.geo_capacity(),
        }))
    }

    /// Judges the sockets of the selected cgroups (`(path, id)`) that exist
    /// now against the set in force, destroying those it denies (see
    /// `sweep`). None where `judge_socket` could not be loaded.
    pub fn sweep_sockets(
        &mut self,
        mount: &Path,
        selected: &[(String, u64)],
        also: &[String],
    ) -> Option<std::io::Result<sweep::Swept>> {
        let (fd, input) = self.judge_socket.as_mut()?;
        let fd = fd.as_fd();
        let input = std::cell::RefCell::new(input);
        let judge = |s: &SweepSocket| -> std::io::Result<u8> {
            input
                .borrow_mut()
                .set(0, *s, 0)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", names::SWEEP)))?;
            let (ret, _) = test_run(fd, 1)?;
            Ok((ret & 0xff) as u8)
        };
        Some(sweep::sweep(mount, selected, also, &judge))
    }

    /// Words in each geo slot.
    pub fn geo_capacity(&self) -> usize {
        self.slots.geo[0]
            .info()
            .map(|i| i.max_entries() as usize * geo_table::WORDS_PER_ELEMENT as usize)
            .unwrap_or_default()
    }

    /// Writes a whole policy set into the idle slot and switches to it.
    pub fn apply(&mut self, maps: &PolicyMaps) -> Result<u32, KernelError> {
        let idle = self.fill_policy_slot(maps)?;
        let config = InForce {
            policy_slot: idle,
            generation: self.config.generation.wrapping_add(1),
            ..self.config
        };
        self.switch(config)?;
        Ok(config.generation)
    }

    /// Fills the idle policy slot with `maps`; returns the slot.
    fn fill_policy_slot(&mut self, maps: &PolicyMaps) -> Result<u32, KernelError> {
        let idle = 1 - self.config.policy_slot as usize;
        self.wait_grace();
        let s = &mut self.slots;
        clear_hash(&mut s.select[idle], names::SELECT[idle])?;
        clear_hash(&mut s.watch[idle], names::WATCH[idle])?;
        clear_hash(&mut s.region_rules[idle], names::REGION_RULES[idle])?;
        clear_trie(&mut s.allow[idle], names::ALLOW_CIDRS[idle])?;
        clear_trie(&mut s.deny[idle], names::DENY_CIDRS[idle])?;
        clear_hash(&mut s.domains[idle], names::DOMAINS[idle])?;
        clear_hash(&mut s.cloud_rules[idle], names::CLOUD_RULES[idle])?;
        for (k, v) in &maps.domains {
            s.domains[idle]
                .insert(k, v, 0)
                .map_err(map_err(names::DOMAINS[idle]))?;
        }
        for (k, v) in &maps.cloud_rules {
            s.cloud_rules[idle]
                .insert(k, v, 0)
                .map_err(map_err(names::CLOUD_RULES[idle]))?;
        }
        for (id, sel) in &maps.selections {
            s.select[idle]
                .insert(id, sel, 0)
                .map_err(map_err(names::SELECT[idle]))?;
        }
        for (id, w) in &maps.watched {
            s.watch[idle]
                .insert(id, w, 0)
                .map_err(map_err(names::WATCH[idle]))?;
        }
        for (k, v) in &maps.region_rules {
            s.region_rules[idle]
                .insert(k, v, 0)
                .map_err(map_err(names::REGION_RULES[idle]))?;
        }
        let present = CidrRule {
            present: 1,
            _pad: [0; 3],
        };
        for (k, len) in &maps.allow_cidrs {
            s.allow[idle]
                .insert(&Key::new(*len, *k), present, 0)
                .map_err(map_err(names::ALLOW_CIDRS[idle]))?;
        }
        for (k, len) in &maps.deny_cidrs {
            s.deny[idle]
                .insert(&Key::new(*len, *k), present, 0)
                .map_err(map_err(names::DENY_CIDRS[idle]))?;
        }
        Ok(idle as u32)
    }
}

/// What a geo table load took.
#[derive(Debug, Clone, Copy)]
pub struct GeoLoaded {
    pub words: usize,
    pub chunks: usize,
    /// Words a slot holds.
    pub capacity: usize,
}

/// The values of an mmapable array map of u32 (`BPF_F_MMAPABLE`), mapped
/// shared and writable: what is written here is what the programs read.
struct MappedWords {
    ptr: *mut u32,
    words: usize,
    bytes: usize,
}

impl MappedWords {
    fn new(map: &MapData, name: &'static str) -> Result<Self, KernelError> {
        let info = map.info().map_err(map_err(name))?;
        if info.value_size() != 4 * geo_table::WORDS_PER_ELEMENT {
            return Err(KernelError::Geo(format!(
                "{name} holds values of {} bytes, not {}",
                info.value_size(),
                4 * geo_table::WORDS_PER_ELEMENT
            )));
        }
        // Array values are 8 bytes apart: elements of two words are dense.
        let words = info.max_entries() as usize * geo_table::WORDS_PER_ELEMENT as usize;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let bytes = (words * 4).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // that the map is mmapable and the length fits.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(KernelError::Geo(format!(
                "mmap of {name} ({bytes} bytes): {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self {
            ptr: ptr.cast(),
            words,
            bytes,
        })
    }

    fn words(&mut self) -> &mut [u32] {
        // SAFETY: the mapping is `words` u32 long, aligned to a page, and
        // lives as long as self; the kernel side only reads it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.words) }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

fn clear_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<(), KernelError> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for k in keys {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

fn clear_trie<K: aya::Pod, V: aya::Pod>(
    map: &mut Trie<K, V>,
    name: &'static str,
) -> Result<(), KernelError> {
    let keys: Vec<Key<K>> = map
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for k in keys {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

/// Capacity checks done before writing, so an oversized policy set is a
/// clear error rather than a half-written slot.
pub fn check_capacity(maps: &PolicyMaps) -> Result<(), String> {
    let checks = [
        (
            "selected cgroups",
            maps.selections.len(),
            limits::SELECT_ENTRIES,
        ),
        (
            "region rules",
            maps.region_rules.len(),
            limits::REGION_RULE_ENTRIES,
        ),
        ("allow CIDRs", maps.allow_cidrs.len(), limits::CIDR_ENTRIES),
        ("deny CIDRs", maps.deny_cidrs.len(), limits::CIDR_ENTRIES),
        ("domain rules", maps.domains.len(), limits::DOMAIN_ENTRIES),
        (
            "cloud-region rules",
            maps.cloud_rules.len(),
            limits::CLOUD_RULE_ENTRIES,
        ),
    ];
    for (what, n, max) in checks {
        if n > max as usize {
            return Err(format!(
                "{n} {what} exceed the kernel map capacity of {max}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The pinned maps and attached programs are exactly the maps and
    /// programs of the embedded object, so a new map cannot be left unpinned.
    #[test]
    fn name_lists_match_the_embedded_object() {
        let object = aya_obj::Object::parse(PROGRAMS).expect("parsing the embedded eBPF object");
        // Sections the compiler and aya make maps of on their own (`.rodata`,
        // `.data`, `.bss`, aya-log's `AYA_LOGS`) are not ours to pin by name.
        let maps: BTreeSet<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.') && *m != "AYA_LOGS")
            .collect();
        let programs: BTreeSet<&str> = object.programs.keys().map(String::as_str).collect();
        assert_eq!(maps, names::ALL_MAPS.into_iter().collect::<BTreeSet<_>>());
        assert_eq!(
            programs,
            names::ALL_PROGRAMS
                .into_iter()
                .chain([
                    names::PROG_JUDGE_SOCKET,
                    names::PROG_CGROUP_MADE,
                    names::PROG_EGRESS_DECIDE,
                    names::PROG_SENDER_DECIDE,
                ])
                .collect::<BTreeSet<_>>()
        );
        assert_eq!(names::ALL_MAPS.len(), maps.len(), "a map is listed twice");
        assert_eq!(
            names::ALL_PROGRAMS.len() + 4,
            programs.len(),
            "a program is listed twice"
        );
    }
}
