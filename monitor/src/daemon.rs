//! The daemon's wiring: check everything, start the parts, serve, shut
//! down. The parts are the kernel (`kernel`), the controller that keeps it
//! in step with the policies (`control`), the read-only view of both
//! (`state`), the event pipeline (`pipeline`), the store, the API and the
//! metrics endpoint. Nothing here decides anything.
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    api::server::{ApiConfig, Backend},
    cgroups::{self, PathResolver},
    control::{self, Controller, PolicyRecord, Resolver},
    events,
    geo::{GeoDb, GeoIdentity},
    kernel::{self, pins::PinLock, Kernel, OldPins},
    metrics::Metrics,
    pipeline::{self, Outlets},
    policy::{self, CompiledPolicy, PolicyIds},
    state::{Requests, View},
    store::writer::Handle as StoreHandle,
};

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub policies: PathBuf,
    pub geoip: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub log_events: bool,
    /// `--require-policies`: no valid policy fails the start.
    pub require_policies: bool,
    pub ring_bytes: u32,
    /// Entries of the kernel's flow table (`--flow-table-entries`).
    pub flow_entries: u32,
    /// The least time between two whole reads of the flow tables
    /// (`--flow-whole-read-interval`; see `pipeline::harvest`).
    pub whole_read_interval: Duration,
    /// Words of each kernel country-table slot (`--geo-table-mib`).
    pub geo_words: u32,
    pub rescan_interval: Duration,
    pub history: usize,
    pub api: ApiConfig,
    /// Base directory of our pins in bpffs.
    pub pin_dir: PathBuf,
    /// Remove programs and pins on exit (development runs).
    pub detach_on_exit: bool,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Limits of the history store.
    pub retention: crate::store::retention::Retention,
    /// `--cloud-ranges`.
    pub cloud_ranges: Option<PathBuf>,
    pub dns: DnsConfig,
    /// `--dns-resolver` (else the host's resolv.conf nameservers) and
    /// `--dns-trust-loopback`.
    pub resolvers: policy::lint::Resolvers,
    /// `--nats-url` and the publishing flags: None, no publishing.
    pub nats: Option<crate::fleet::publish::PublishArgs>,
    /// `--process-args-bytes`, `--no-process-args`, `--redact-pattern`.
    pub process: crate::process::Capture,
    /// `--cri-socket`, `--container-runtime-socket`: none given, the
    /// well-known ones.
    pub container_sockets: crate::containers::Given,
}

/// How names are learned (see `monitor_common::DnsTuning`).
#[derive(Debug, Clone, Copy)]
pub struct DnsConfig {
    pub min_ttl_s: u32,
    pub grace_s: u32,
    pub max_ttl_s: u32,
    pub trust_loopback: bool,
}

/// The resolvers whose answers teach names: `--dns-resolver`, or else the
/// nameservers of the host's /etc/resolv.conf.
pub fn dns_resolvers(given: &[ipnetwork::IpNetwork]) -> Vec<ipnetwork::IpNetwork> {
    if !given.is_empty() {
        return given.to_vec();
    }
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(ipnetwork::IpNetwork::from)
        .collect()
}

impl DnsConfig {
    fn tuning(&self) -> monitor_common::DnsTuning {
        monitor_common::DnsTuning {
            min_ttl_s: self.min_ttl_s,
            grace_s: self.grace_s,
            max_ttl_s: self.max_ttl_s,
            // The kernel wrapper puts its own key and namespace in.
            key: 0,
            netns: 0,
            flags: monitor_common::dns::TUNING_ENABLED
                | if self.trust_loopback {
                    monitor_common::dns::TUNING_TRUST_LOOPBACK
                } else {
                    0
                },
        }
    }

    pub fn ttl(&self) -> crate::names::TtlPolicy {
        crate::names::TtlPolicy {
            min_ttl_s: self.min_ttl_s,
            grace_s: self.grace_s,
            max_ttl_s: self.max_ttl_s,
        }
    }
}

/// The store records the policy sets the controller puts in force.
struct StoreRecord(Arc<StoreHandle>);

impl PolicyRecord for StoreRecord {
    fn policy_set(&self, policies: &[CompiledPolicy], generation: u32) {
        self.0.policy_set(policies, generation);
    }
    fn cloud_ranges(&self, identity: String) {
        self.0.cloud_ranges(identity);
    }
    fn kernel_lost(&self, n: u64, denials: u64) {
        self.0.kernel_lost(n, denials);
    }
    fn watching(&self, attached: bool) {
        self.0.watching(attached);
    }
    fn lapsed(&self) {
        self.0.lapsed();
    }
}

/// SIGINT and SIGTERM, listened to from the first moment on, so a signal
/// during the start is handled like one later (no default death that
/// leaves programs attached).
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Effective capabilities the daemon needs, by bit number.
const NEEDED_CAPS: [(u32, &str); 3] = [
    (21, "CAP_SYS_ADMIN"),
    (12, "CAP_NET_ADMIN"),
    (39, "CAP_BPF"),
];

/// The capabilities of `NEEDED_CAPS` missing from a `CapEff` mask.
fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

fn check_privileges() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the daemon loads eBPF programs and needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); run it as root");
    }
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX);
    let missing = missing_caps(cap_eff);
    if !missing.is_empty() {
        bail!(
            "running as root but without {}: the daemon cannot load and attach its programs (a container needs them granted)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// What checking the configuration found: the cgroup places and the bound
/// listeners, carried from the check to the launch.
struct Found {
    mount: PathBuf,
    root: PathBuf,
    metrics_listener: Option<tokio::net::TcpListener>,
    api_listener: Option<tokio::net::TcpListener>,
}

/// What the start checked and found, before anything was created.
struct Checked {
    found: Found,
    db: GeoDb,
    cloud: Arc<crate::cloud::CloudRanges>,
}

/// Reads the policy directory once before anything is created, judging
/// each file as the controller will (`policy::judge_file`): with
/// `--require-policies`, no valid policy, or a valid one with rules no
/// loaded data can judge (cloud regions without cloud ranges, domains
/// without a trusted resolver), is a refusal naming every problem; without,
/// the controller warns when the set takes effect.
fn check_policies(config: &DaemonConfig, cloud: &crate::cloud::CloudRanges) -> anyhow::Result<()> {
    if !config.require_policies {
        return Ok(());
    }
    let dir = &config.policies;
    let files = policy::policy_files(dir)
        .with_context(|| format!("reading policy directory {}", dir.display()))?;
    let mut problems = Vec::new();
    let mut valid = Vec::new();
    for f in &files {
        match policy::judge_file(Some(dir), f, cloud) {
            Ok(ps) => valid.extend(ps),
            Err(e) => problems.extend(e.iter().map(ToString::to_string)),
        }
    }
    let listed = |problems: &[String]| {
        problems
            .iter()
            .map(|p| format!("\n  {p}"))
            .collect::<String>()
    };
    if valid.is_empty() {
        bail!(
            "--require-policies: no valid policy in {} ({}){}",
            dir.display(),
            if files.is_empty() {
                "no *.yaml file".to_string()
            } else {
                format!("{} file(s), none valid", files.len())
            },
            listed(&problems)
        );
    }
    let data = policy::lint::Data {
        cloud,
        resolvers: &config.resolvers,
    };
    let missing: Vec<String> = valid
        .iter()
        .flat_map(|p| {
            policy::lint::missing_data(p, &data)
                .into_iter()
                .map(move |m| format!("{}:{}: {m}", p.file, p.line))
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "--require-policies: policies in {} have rules no loaded data can judge{}",
            dir.display(),
            listed(&missing)
        );
    }
    Ok(())
}

/// Everything that can be checked without creating anything: privileges,
/// paths, the metrics port (bound now, so a taken port fails the start).
async fn validate(config: &DaemonConfig) -> anyhow::Result<Checked> {
    check_privileges()?;
    if !config.policies.is_dir() {
        bail!(
            "policy directory {} does not exist or is not a directory",
            config.policies.display()
        );
    }
    let mount = cgroups::find_cgroup2_mount()?;
    let root = config.cgroup_root.clone().unwrap_or_else(|| mount.clone());
    let root = root
        .canonicalize()
        .with_context(|| format!("cgroup root {}", root.display()))?;
    cgroups::relative(&mount, &root).with_context(|| {
        format!(
            "cgroup root {} is not inside the cgroup2 mount {}",
            root.display(),
            mount.display()
        )
    })?;
    crate::api::server::check(&config.api)?;
    let api_listener = crate::api::server::bind_tcp(&config.api).await?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(crate::metrics::server::bind(addr).await?),
        None => None,
    };
    let started = Instant::now();
    let path = config.geoip.clone();
    let db = tokio::task::spawn_blocking(move || {
        // On a terminal (`cargo xtask run`), how far the read is.
        let progress = crate::progress::Progress::counter("GeoIP networks");
        let db = GeoDb::open_with(&path, &|n| progress.show(n, 0));
        progress.done();
        db
    })
    .await
    .context("reading the GeoIP database panicked")??;
    log::info!(
        "GeoIP database {} ({}, schema {}, built {}): {} networks merged into {} prefixes in {:.0} ms",
        db.identity.path.display(),
        db.identity.database_type,
        db.identity.schema,
        events::rfc3339_nanos(i128::from(db.identity.build_epoch) * 1_000_000_000),
        db.identity.networks,
        db.identity.prefixes,
        started.elapsed().as_secs_f64() * 1e3
    );
    let cloud = match &config.cloud_ranges {
        None => crate::cloud::CloudRanges::default(),
        Some(dir) => {
            let dir = dir.clone();
            let ranges = tokio::task::spawn_blocking(move || crate::cloud::load_dir(&dir))
                .await
                .context("reading the cloud ranges panicked")?
                .context("--cloud-ranges")?;
            log::info!("cloud ranges: {}", ranges.summary());
            ranges
        }
    };
    check_policies(config, &cloud)?;
    Ok(Checked {
        found: Found {
            mount,
            root,
            metrics_listener,
            api_listener,
        },
        db,
        cloud: Arc::new(cloud),
    })
}

/// What the blocking part of the start made.
struct Booted {
    kernel: Kernel,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    old_pins: Vec<OldPins>,
    geo: GeoIdentity,
    countries: policy::lint::Countries,
    /// A signal arrived before the geo table was filled: stop now.
    cancelled: bool,
}

/// Reads the database, loads and attaches the programs, fills the geo
/// trie. Stops early (the new geo slot never switched in) when `cancel` is
/// set.
fn boot(
    config: &DaemonConfig,
    root: &Path,
    db: GeoDb,
    cancel: &AtomicBool,
) -> anyhow::Result<Booted> {
    let (mut kernel, ring, old_pins) = Kernel::load(
        root,
        config.ring_bytes,
        config.flow_entries,
        config.geo_words,
        &config.pin_dir,
        config.process.args_bytes,
    )?;
    kernel.set_dns_tuning(config.dns.tuning())?;
    let resolvers = &config.resolvers.nets;
    kernel.set_dns_resolvers(resolvers)?;
    if !config.resolvers.teach_names() {
        log::warn!("no DNS resolver to learn names from (--dns-resolver, or a nameserver in /etc/resolv.conf; one on loopback only with --dns-trust-loopback): domain rules match nothing");
    } else {
        log::info!(
            "names are learned from the resolvers {}",
            resolvers
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for a in kernel.attached() {
        log::info!(
            "{} {} (program id {}, link id {}) on {}",
            if kernel.adopted() {
                "adopted pinned"
            } else {
                "attached"
            },
            a.hook,
            a.program_id,
            a.link_id,
            root.display()
        );
    }
    let mut cancelled = false;
    if kernel.geo_loaded(&db.identity.sha256) {
        log::info!(
            "the kernel geo table already holds this database (sha256 {})",
            db.identity.sha256
        );
    } else {
        let started = Instant::now();
        match kernel.load_geo(&db.ranges, &db.identity.sha256, cancel)? {
            Some(t) => log::info!(
                "loaded {} ranges into the kernel geo table ({} chunks, {:.1} of {:.1} MiB) in {:.0} ms",
                db.ranges.len(),
                t.chunks,
                t.words as f64 / f64::from(1 << 18),
                t.capacity as f64 / f64::from(1 << 18),
                started.elapsed().as_secs_f64() * 1e3
            ),
            None => cancelled = true,
        }
    }
    Ok(Booted {
        kernel,
        ring,
        old_pins,
        geo: db.identity.clone(),
        countries: policy::lint::Countries {
            db: db.identity.path.clone(),
            present: db.countries(),
        },
        cancelled,
    })
}

/// What this daemon's lock file records for `status` and `uninstall`.
fn lock_record(config: &DaemonConfig, root: &Path) -> kernel::pins::Holder {
    kernel::pins::Holder {
        pid: std::process::id(),
        pin_dir: config.pin_dir.clone(),
        socket: config.api.socket.clone(),
        state_dir: config.state_dir.clone(),
        cgroup_root: root.to_path_buf(),
    }
}

/// The command that removes what a daemon with this pin directory left.
pub fn uninstall_command(pin_dir: &Path) -> String {
    if kernel::pins::normalize(pin_dir) == kernel::pins::normalize(default_pin_dir()) {
        "egress-monitor uninstall".into()
    } else {
        format!("egress-monitor uninstall --pin-dir {}", pin_dir.display())
    }
}

/// Ends what a stopped daemon leaves: everything with --detach-on-exit,
/// nothing otherwise (enforcement stays on, a restart adopts it).
fn leave(kernel: Kernel, config: &DaemonConfig) -> anyhow::Result<()> {
    if config.detach_on_exit {
        let removed = kernel.uninstall()?;
        // The base directory goes too when no other build's pins are left.
        let _ = std::fs::remove_dir(&config.pin_dir);
        log::info!("detached: removed {} pins", removed.len());
    } else {
        log::info!(
            "enforcement stays on: programs and maps stay pinned in {} (`{}` removes them)",
            config.pin_dir.display(),
            uninstall_command(&config.pin_dir)
        );
    }
    Ok(())
}

/// What the start made: everything checked, the store open, the programs
/// attached and the database in the kernel.
struct Started {
    found: Found,
    store: Arc<StoreHandle>,
    node_public_key: String,
    booted: Booted,
    cloud: Arc<crate::cloud::CloudRanges>,
    _lock: PinLock,
}

/// Checks everything, then creates the state, the store and the pins and
/// loads the database. None when a signal stopped it (after leaving the
/// kernel as configured).
async fn start(config: &DaemonConfig, signals: &mut Signals) -> anyhow::Result<Option<Started>> {
    let Checked { found, db, cloud } = tokio::select! {
        checked = validate(config) => checked?,
        name = signals.recv() => {
            log::info!("{name} during the start: stopping (nothing was created yet)");
            return Ok(None);
        }
    };
    let lock = PinLock::acquire(&lock_record(config, &found.root))?;
    let access = crate::statedir::Access {
        group: config.api.auth.socket_gid,
    };
    let tightened = crate::statedir::secure(&config.state_dir, access)?;
    if !tightened.is_empty() {
        log::warn!(
            "the state directory was readable by more than root{}: tightened {}",
            if access.group.is_some() {
                " and the socket group"
            } else {
                ""
            },
            tightened
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let node_key = crate::evidence::key::load_or_create(&config.state_dir)?;
    let store = StoreHandle::start(
        crate::store::path_in(&config.state_dir),
        config.retention,
        Some(node_key.clone()),
    );

    let cancel = Arc::new(AtomicBool::new(false));
    let mut boot_task = {
        let (config, root, cancel) = (config.clone(), found.root.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || boot(&config, &root, db, &cancel))
    };
    let booted = tokio::select! {
        r = &mut boot_task => r.context("the start panicked")??,
        name = signals.recv() => {
            log::info!("{name} during the start: stopping");
            cancel.store(true, Ordering::Relaxed);
            boot_task.await.context("the start panicked")??
        }
    };
    // The start's peak (the country database read, sorted and merged, the
    // kernel's table built) is freed by now.
    crate::malloc::settle_after_start();
    if booted.cancelled || cancel.load(Ordering::Relaxed) {
        store.shutdown(Duration::from_secs(5)).await;
        leave(booted.kernel, config)?;
        return Ok(None);
    }
    Ok(Some(Started {
        found,
        store,
        node_public_key: crate::evidence::key::public_hex(&node_key.verifying_key()),
        booted,
        cloud,
        _lock: lock,
    }))
}

/// The parts at work, and what stops them. A part that ended on its own
/// (its failure ends the daemon) is taken out, so it is not awaited twice.
struct Running {
    pipeline: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Tells the pipeline to read the ring a last time and end.
    stop_pipeline: Option<tokio::sync::oneshot::Sender<()>>,
    api: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    control: Option<tokio::task::JoinHandle<Controller>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    store: Arc<StoreHandle>,
    harvester: Harvester,
    /// The NATS publisher (`fleet::publish`): it stops with `shutdown`.
    nats: Option<tokio::task::JoinHandle<()>>,
    _watcher: notify::RecommendedWatcher,
    _lock: PinLock,
}

/// The flow harvest (see `pipeline::harvest`) on its interval, and once
/// more at shutdown.
struct Harvester {
    task: tokio::task::JoinHandle<()>,
    harvest: Arc<Mutex<pipeline::harvest::Harvest>>,
    outlets: Arc<Outlets>,
    names: Arc<Mutex<Resolver>>,
    store: Arc<StoreHandle>,
}

impl Harvester {
    fn start(
        pin_dir: &Path,
        store: &Arc<StoreHandle>,
        outlets: Arc<Outlets>,
        names: Arc<Mutex<Resolver>>,
        whole_every: Duration,
    ) -> anyhow::Result<Self> {
        let table = match store.flow_marks() {
            Ok(marks) => pipeline::harvest::Harvest::open(pin_dir, marks),
            Err(e) => {
                log::warn!("reading what was harvested of the kernel's flows before failed ({e}); the harvest waits until the store can be read (the counts wait in the kernel's table, none is counted twice)");
                pipeline::harvest::Harvest::open_waiting(pin_dir)
            }
        };
        let table = table
            .map_err(anyhow::Error::msg)?
            .whole_at_least(whole_every);
        let harvest = Arc::new(Mutex::new(table));
        let task = tokio::spawn({
            let (harvest, outlets, names, store) = (
                harvest.clone(),
                outlets.clone(),
                names.clone(),
                store.clone(),
            );
            async move {
                let mut waited = false;
                let mut wait = pipeline::harvest::HARVEST_EVERY;
                loop {
                    tokio::time::sleep(wait).await;
                    wait = pipeline::harvest::HARVEST_EVERY;
                    // A store that falls behind a flood: the kernel keeps
                    // counting, and the next pass reads what it counted.
                    let behind = store.behind();
                    if behind != waited {
                        if behind {
                            log::warn!("the store is behind: harvests of the kernel's flow counts wait (the kernel keeps counting)");
                        } else {
                            log::info!("the store caught up: harvesting again");
                        }
                        waited = behind;
                    }
                    if !behind {
                        // On a thread of its own: a pass over a large table
                        // is tens of milliseconds of syscalls and lookups,
                        // which would hold up the ring's drain and the API
                        // on the runtime's worker.
                        let (h, o, n, s) = (
                            harvest.clone(),
                            outlets.clone(),
                            names.clone(),
                            store.clone(),
                        );
                        let (took, next) = tokio::task::spawn_blocking(move || {
                            let t = Instant::now();
                            let done = Self::pass(&h, &o, &n, &s, false);
                            let took = t.elapsed();
                            (took, Self::next_after(&h, took, done))
                        })
                        .await
                        .unwrap_or_default();
                        wait = next.saturating_sub(took);
                        outlets.counters.harvest_interval_ms.store(
                            (wait + took).as_millis() as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
            }
        });
        Ok(Self {
            task,
            harvest,
            outlets,
            names,
            store: store.clone(),
        })
    }

    /// Harvests in chunks of `harvest::CHUNK` entries until a read of the
    /// table finds nothing more, or (unless `all`) until the store falls
    /// behind: the rest waits in the kernel's table for the next interval.
    /// One read of the table serves every chunk it has changes for. Unless
    /// `all`, an entry whose process the pipeline has not read yet waits
    /// for it too (see `Harvest::pass`). Bounded by `harvest::MAX_CHUNKS`,
    /// enough for both tables at their largest, so traffic that keeps
    /// making entries cannot hold it (at shutdown neither). Once complete
    /// (a whole read left nothing), what its reads found: entries, and of
    /// them those with nothing new; None when it stopped before.
    fn pass(
        harvest: &Mutex<pipeline::harvest::Harvest>,
        outlets: &Outlets,
        names: &Mutex<Resolver>,
        store: &StoreHandle,
        all: bool,
    ) -> Option<(u64, u64)> {
        let mut read = (0, 0);
        let started = pipeline::harvest::boot_ns();
        let ring = (!all).then(|| {
            outlets
                .ring_read_from
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        for _ in 0..pipeline::harvest::MAX_CHUNKS {
            let mut table = harvest.lock().unwrap_or_else(|p| p.into_inner());
            if !table.marks_known() {
                match store.flow_marks() {
                    Ok(marks) => {
                        log::info!("the store's flow marks are read: harvesting");
                        table.set_marks(marks);
                    }
                    Err(_) => return None,
                }
            }
            // Whole only where the kernel's list of changes may be
            // incomplete (or a whole read is due): a switch, which may come
            // with every new pod, reads what changed like the interval.
            let (mut h, more) = table.pass(outlets, names, pipeline::harvest::CHUNK, !all, false);
            let (found, unchanged) = table.reads_since();
            read = (read.0 + found, read.1 + unchanged);
            // The last chunk always comes from a read of the tables: whole
            // and leaving nothing, every count before `started` is taken.
            let complete = !more && table.read_whole();
            if complete {
                h.through = Some(pipeline::harvest::harvested_through(started, ring));
            }
            // Handed on under the lock (a send on a channel): two passes
            // at once (the interval's on its thread, the controller's or
            // the last one at shutdown) reach the store in the order their
            // marks were taken, so an older mark never overwrites a newer.
            if !(h.repeats.is_empty()
                && h.marks.is_empty()
                && h.unmarks.is_empty()
                && h.through.is_none())
            {
                store.harvest(h);
            }
            drop(table);
            if complete {
                return Some(read);
            }
            if !more || (!all && store.behind()) {
                return None;
            }
        }
        None
    }

    /// The time from a harvest's start to the next, after one that took
    /// `took` and ended `done`. A harvest that follows the kernel's list
    /// of changes runs every `HARVEST_EVERY` (its whole reads, every
    /// `--flow-whole-read-interval` or further apart, are timed by
    /// `Harvest::pass`), unless more changed than it can follow; one that
    /// reads the whole tables each time spaces itself (`interval_after`).
    /// A harvest that stopped for the store (a flood's changes still in
    /// the table) goes on in a second.
    fn next_after(
        harvest: &Mutex<pipeline::harvest::Harvest>,
        took: Duration,
        done: Option<(u64, u64)>,
    ) -> Duration {
        use pipeline::harvest::{interval_after, HARVEST_EVERY};
        let Some((read, unchanged)) = done else {
            return HARVEST_EVERY;
        };
        let table = harvest.lock().unwrap_or_else(|p| p.into_inner());
        // Every read whole (no list of changes in the pins, or more changes
        // than a read by key takes, when the list overflows meanwhile and
        // the next read is whole again): spaced by what it cost. A whole
        // read otherwise set the next whole read's time itself
        // (`Harvest::pass`).
        if !table.follows() || table.whole_for_load() {
            interval_after(took, read, unchanged)
        } else {
            HARVEST_EVERY
        }
    }

    /// A harvest pass to run from elsewhere (the controller, before a switch).
    fn pass_fn(&self) -> Box<dyn Fn() + Send + Sync> {
        let (harvest, outlets, names, store) = (
            self.harvest.clone(),
            self.outlets.clone(),
            self.names.clone(),
            self.store.clone(),
        );
        Box::new(move || {
            Self::pass(&harvest, &outlets, &names, &store, true);
        })
    }

    /// Stops the interval and harvests what is left.
    async fn finish(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = Self::pass(&self.harvest, &self.outlets, &self.names, &self.store, true);
    }
}

/// Starts the controller, the pipeline, the metrics endpoint and the API.
async fn launch(config: &DaemonConfig, started: Started) -> anyhow::Result<Running> {
    let Started {
        found:
            Found {
                mount,
                root,
                metrics_listener,
                api_listener,
            },
        store,
        node_public_key,
        booted,
        cloud,
        _lock,
    } = started;
    let Booted {
        kernel,
        ring,
        old_pins,
        geo,
        countries,
        ..
    } = booted;
    let ids = Arc::new(RwLock::new(PolicyIds::open(
        &config.state_dir.join("policy-ids.json"),
    )));
    let mut resolver = Resolver::new(ids.clone(), PathResolver::new(&mount));
    resolver.processes =
        crate::process::Processes::new(config.process.clone(), std::path::Path::new("/proc"));
    if let Err(e) = resolver.processes.open_table(kernel.pin_dir()) {
        log::warn!("processes reported before this start are named from /proc: {e}");
    }
    let older = resolver.processes.read_proc();
    log::info!("{older} running processes named from /proc");
    resolver.containers = crate::containers::Containers::find(&config.container_sockets)
        .map_err(anyhow::Error::msg)?;
    let containers_shown = resolver.containers.shown();
    let resolver = Arc::new(Mutex::new(resolver));
    let metrics = Arc::new(Metrics::new());
    metrics.register_collector(Box::new(crate::metrics::store::StoreCollector::new(
        store.clone(),
    )));
    // Before the first event is drained: the writer resumes the kernel's
    // numbering where the store left it.
    store.kernel_epoch(kernel.events_epoch().to_string());
    // Before the ring is read, so every number up to these was either in
    // it or read by the run before (see `SeqBook::numbered`).
    let numbered = kernel.event_numbers();
    let view_of_kernel = Arc::new(kernel.probe()?);
    let name_key = kernel.dns_key();
    let pin_dir = kernel.pin_dir().to_path_buf();
    let before_switch: control::BeforeSwitch = Arc::default();
    let recorded = recorded_policies(&store);
    let (mut controller, snapshots) = Controller::new(control::Parts {
        kernel,
        mount,
        root,
        policies_dir: config.policies.clone(),
        ids,
        resolver: resolver.clone(),
        geo: geo.clone(),
        countries,
        record: Arc::new(StoreRecord(store.clone())),
        on_reload: Box::new({
            let metrics = metrics.clone();
            move |ok| metrics.reload(ok)
        }),
        cloud_dir: config.cloud_ranges.clone(),
        resolvers: config.resolvers.clone(),
        cloud,
        before_switch: before_switch.clone(),
        recorded,
    });
    let mut view = View::new(snapshots, view_of_kernel);
    view.containers = containers_shown;
    store.agent_run(crate::store::agent_run_json(&node_public_key));
    store.geoip(crate::store::geo_json(&geo));
    // The programs are attached (load did it or adopted them): heartbeats
    // from here on say this run watches.
    store.watching(true);

    let mut outlets = Outlets::new(
        config.history,
        store.clone(),
        config.log_events,
        view.counters.clone(),
        view.streams.clone(),
        metrics.clone(),
        pipeline::Naming {
            ttl: config.dns.ttl(),
            key: name_key,
        },
    );
    outlets.drift = crate::pipeline::drift::Live::watching(view.policy_watch());
    let outlets = Arc::new(outlets);
    remember_drift(crate::store::path_in(&config.state_dir), outlets.clone());
    match crate::metrics::system::RingFill::map(
        std::os::fd::AsRawFd::as_raw_fd(&ring),
        config.ring_bytes,
    ) {
        Ok(fill) => metrics.watch_ring(fill),
        Err(e) => log::warn!("ring buffer fill is not reported: mapping its positions failed: {e}"),
    }
    // What the last run harvested of each flow entry, before our harvest
    // passes change it: the earlier build's table is harvested from it.
    let marks_before = if old_pins.is_empty() {
        Vec::new()
    } else {
        store.flow_marks().unwrap_or_default()
    };
    let harvester = Harvester::start(
        &pin_dir,
        &store,
        outlets.clone(),
        resolver.clone(),
        config.whole_read_interval,
    )?;
    // What the flow table counted under the decisions in force is harvested
    // before a switch makes them anew, so every count keeps its verdict.
    let _ = before_switch.set(harvester.pass_fn());
    let first = tokio::task::block_in_place(|| controller.reload());
    if let Err(e) = &first {
        log::error!("{e}");
    }
    // An earlier build's programs stay attached (a refusal from either
    // refuses) until ours judge by a complete policy set: only then are
    // they retired. Retiring them first let forbidden traffic through
    // while our maps were still empty.
    if controller.in_force_applied() {
        retire(old_pins, &outlets, &resolver, &store, marks_before)?;
    } else if !old_pins.is_empty() {
        log::error!(
            "no policy set could be put in force, so the earlier build's programs stay attached \
             and keep enforcing its last set ({}); the next start that puts a set in force retires them",
            old_pins
                .iter()
                .map(|o| o.dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (stop_pipeline, pipeline_stop) = tokio::sync::oneshot::channel();
    let pipeline = tokio::spawn(pipeline::run(
        ring,
        outlets.clone(),
        resolver,
        pipeline_stop,
        numbered,
    ));

    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let (requests_tx, requests_rx) = tokio::sync::mpsc::channel(16);
    let (watcher, changes) = policy::watch::watch(&config.policies)
        .with_context(|| format!("watching policy directory {}", config.policies.display()))?;
    let control = tokio::spawn(controller.run(
        view.clone(),
        requests_rx,
        changes,
        config.rescan_interval,
        outlets.wake.clone(),
        shutdown_rx.clone(),
    ));
    // Publishing to NATS: a task of its own that reads the store; nothing
    // above waits for it.
    let nats = config.nats.clone().map(|args| {
        let shared = crate::fleet::publish::Shared::new(args, node_public_key.clone());
        metrics.register(|r| shared.register(r));
        let task = crate::fleet::publish::spawn(
            shared.clone(),
            store.path.clone(),
            store.committed(),
            store.harvested(),
            shutdown_rx.clone(),
        );
        (shared, task)
    });
    if let Some(listener) = metrics_listener {
        spawn_metrics(listener, view.clone(), metrics)?;
    }
    let backend = Backend {
        view,
        outlets,
        store: store.clone(),
        requests: Requests(requests_tx),
        node_public_key,
        shutdown: shutdown_rx.clone(),
        nats: nats
            .as_ref()
            .map(|(shared, _)| shared.clone() as Arc<dyn crate::api::backend::NatsStatus>),
    };
    // Bound here, not in the task: once the daemon says it runs, a client
    // finds the socket.
    let unix_listener = crate::api::server::bind_unix(&config.api)?;
    let api = tokio::spawn(crate::api::server::serve(
        config.api.clone(),
        unix_listener,
        api_listener,
        backend,
        shutdown_rx,
    ));
    Ok(Running {
        nats: nats.map(|(_, task)| task),
        harvester,
        pipeline: Some(pipeline),
        stop_pipeline: Some(stop_pipeline),
        api: Some(api),
        control: Some(control),
        shutdown,
        store,
        _watcher: watcher,
        _lock,
    })
}

/// Waits for a task that may already have been taken out.
async fn join<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task.as_mut() {
        Some(t) => {
            let r = t.await;
            *task = None;
            r
        }
        None => std::future::pending().await,
    }
}

impl Running {
    /// Until a signal (None) or a part ends on its own (its error).
    async fn wait(&mut self, signals: &mut Signals) -> Option<anyhow::Error> {
        tokio::select! {
            r = join(&mut self.pipeline) => Some(match r {
                Ok(Ok(())) => anyhow::anyhow!("event pipeline ended"),
                Ok(Err(e)) => anyhow::anyhow!("event pipeline failed: {e}"),
                Err(e) => anyhow::anyhow!("event pipeline panicked: {e}"),
            }),
            r = join(&mut self.api) => Some(match r {
                Ok(Ok(())) => anyhow::anyhow!("gRPC server ended"),
                Ok(Err(e)) => anyhow::anyhow!("gRPC server failed: {e:#}"),
                Err(e) => anyhow::anyhow!("gRPC server panicked: {e}"),
            }),
            r = join(&mut self.control) => Some(match r {
                Ok(_) => anyhow::anyhow!("the controller ended"),
                Err(e) => anyhow::anyhow!("the controller panicked: {e}"),
            }),
            name = signals.recv() => { log::info!("{name}: exiting"); None }
        }
    }

    /// Stops in order: the API (stream clients are told to end), the
    /// controller, the pipeline, the store's last batch; then the kernel is
    /// left as configured. Returns whether the kernel was left (a
    /// controller that panicked took it with it).
    async fn shutdown(mut self, config: &DaemonConfig) -> anyhow::Result<bool> {
        let _ = self.shutdown.send(true);
        if let Some(api) = self.api.as_mut() {
            if tokio::time::timeout(Duration::from_secs(2), api)
                .await
                .is_err()
            {
                log::warn!("the API did not stop within 2 s");
            }
        }
        let controller = match self.control.take() {
            Some(c) => c.await.ok(),
            None => None,
        };
        // The ring is read a last time, and what it held is written before
        // we exit: an attempt refused just before the signal (the last of
        // `egress-monitor test`'s COMMAND, whose ring goes with its pins)
        // is in the store. What arrives after stays in the pinned ring for
        // the next start.
        if let Some(p) = self.pipeline.take() {
            if let Some(stop) = self.stop_pipeline.take() {
                let _ = stop.send(());
            }
            let mut p = p;
            match tokio::time::timeout(Duration::from_secs(5), &mut p).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => log::warn!("the event pipeline's last read failed: {e}"),
                Ok(Err(e)) => log::warn!("the event pipeline panicked: {e}"),
                Err(_) => {
                    log::warn!("the event pipeline did not finish its last read within 5 s");
                    p.abort();
                }
            }
        }
        self.harvester.finish().await;
        if let Some(nats) = self.nats.take() {
            // What it had not sent waits in the store for the next start.
            if tokio::time::timeout(Duration::from_secs(2), nats)
                .await
                .is_err()
            {
                log::warn!("the NATS publisher did not stop within 2 s");
            }
        }
        if !self.store.shutdown(Duration::from_secs(10)).await {
            log::error!("the store did not finish writing within 10 s");
        }
        match controller {
            Some(c) => leave(c.into_kernel(), config).map(|()| true),
            None => Ok(false),
        }
    }
}

/// With --detach-on-exit, removes this build's pins when the daemon could
/// not hand its kernel back (a failed launch, a controller that panicked).
fn detach_by_path(config: &DaemonConfig) {
    if !config.detach_on_exit {
        return;
    }
    let dir = config.pin_dir.join(kernel::build_id());
    match kernel::remove_pins(&dir) {
        Ok(removed) => {
            let _ = std::fs::remove_dir(&config.pin_dir);
            log::info!("detached: removed {} pins", removed.len());
        }
        Err(e) => log::error!("detaching failed: {e}"),
    }
}

/// Serves Prometheus metrics from the view.
fn spawn_metrics(
    listener: tokio::net::TcpListener,
    view: View,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    log::info!(
        "Prometheus metrics at http://{}/metrics",
        listener.local_addr()?
    );
    tokio::spawn(async move {
        if let Err(e) = crate::metrics::server::serve(listener, view, metrics).await {
            log::error!("metrics server failed: {e:#}");
        }
    });
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    // Descriptors: as many as this process may have, so the API's clients
    // (capped below what is left after a reserve) never starve the walk of
    // the cgroup tree.
    match crate::api::server::raise_nofile() {
        Ok(n) if n < 2 * crate::api::server::RESERVED_DESCRIPTORS => log::warn!(
            "only {n} file descriptors (RLIMIT_NOFILE); the API takes {} connections per transport",
            crate::api::server::connection_cap()
        ),
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise RLIMIT_NOFILE to its hard limit: {e}"),
    }
    let mut signals = Signals::new()?;
    let Some(started) = start(&config, &mut signals).await? else {
        return Ok(());
    };
    let mut running = match launch(&config, started).await {
        Ok(r) => r,
        Err(e) => {
            detach_by_path(&config);
            return Err(e);
        }
    };
    log::info!(
        "egress-monitor running; policies from {}",
        config.policies.display()
    );
    let failure = running.wait(&mut signals).await;
    if !running.shutdown(&config).await? {
        detach_by_path(&config);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The last policy set the store recorded in force, by file: compiled
/// again from its recorded text (a version that fails to compile now, with
/// this build, is left out and said).
fn recorded_policies(
    store: &StoreHandle,
) -> std::collections::BTreeMap<PathBuf, Vec<crate::policy::CompiledPolicy>> {
    let mut out: std::collections::BTreeMap<PathBuf, Vec<_>> = Default::default();
    let rows = match store.last_policy_set() {
        Ok(rows) => rows,
        Err(e) => {
            log::warn!("the last policy set in force could not be read from the store: {e}");
            return out;
        }
    };
    for (file, text) in rows {
        match crate::policy::compile_recorded(Path::new(&file), &text) {
            Ok(policies) => out.entry(PathBuf::from(file)).or_default().extend(policies),
            Err(e) => log::warn!(
                "a policy recorded in force before this start no longer compiles, so it is no fallback: {e}"
            ),
        }
    }
    out
}

/// Remembers the drift alerts the store holds, so a restart does not raise
/// them again; read beside the pipeline (a store of many refusals takes a
/// moment), so an alert in the first moments after a start may repeat one
/// the last run raised.
fn remember_drift(store: PathBuf, outlets: Arc<Outlets>) {
    use crate::api::pb;
    tokio::task::spawn_blocking(move || {
        let mut token = String::new();
        let mut remembered = 0;
        // Bounded: each page moves the token on; the live check keeps at
        // most MAX_ALERTED anyway.
        for _ in 0..=crate::pipeline::drift::MAX_ALERTED / PAGE {
            let page = crate::api::history::query_events(
                &store,
                pb::QueryEventsRequest {
                    window: Some(pb::TimeWindow {
                        since: "0".into(),
                        until: String::new(),
                    }),
                    filter: Some(pb::EventFilter {
                        verdicts: vec![crate::events::DRIFT.into()],
                        ..Default::default()
                    }),
                    limit: PAGE as u32,
                    page_token: std::mem::take(&mut token),
                },
            );
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    log::warn!(
                        "the drift alerts of earlier runs could not be read, so they may be raised again: {}",
                        e.message()
                    );
                    return;
                }
            };
            let events: Vec<crate::events::Event> =
                page.events.into_iter().map(Into::into).collect();
            remembered += outlets.drift.remember(&events);
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        if remembered > 0 {
            log::info!("drift: {remembered} alerts of earlier runs remembered (not raised again)");
        }
    });
    const PAGE: usize = 10_000;
}

/// Our programs enforce now: retire an earlier build's, draining what its
/// ring buffer still holds and harvesting what its flow table counted since
/// the last run's harvest (`marks`), so every refusal it made is recorded.
fn retire(
    old_pins: Vec<OldPins>,
    outlets: &Outlets,
    resolver: &Mutex<Resolver>,
    store: &StoreHandle,
    marks: Vec<(Vec<u8>, crate::store::Mark)>,
) -> anyhow::Result<()> {
    for old in old_pins {
        let ring = aya::maps::MapData::from_pin(old.dir.join(monitor_common::names::EVENTS))
            .ok()
            .and_then(|m| aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(m)).ok());
        // Held open across the removal: the programs are detached (no
        // count changes any more) and the table is read whole after.
        let flows = pipeline::harvest::Harvest::open(&old.dir, marks.clone());
        let removed = kernel::remove_pins(&old.dir).with_context(|| {
            format!("retiring the earlier build pinned in {}", old.dir.display())
        })?;
        let drained = ring
            .map(|r| pipeline::drain_once(r, outlets, resolver))
            .unwrap_or(0);
        let counted = match flows {
            Ok(mut table) => {
                let (mut h, _) = table.pass(outlets, resolver, usize::MAX, false, true);
                // Its entries are gone with it: only the counts are kept.
                h.marks.clear();
                h.unmarks.clear();
                let n: u64 = h.repeats.iter().map(|r| r.count).sum();
                store.harvest(h);
                n.to_string()
            }
            Err(e) => {
                log::warn!(
                    "the flow table of the earlier build in {} could not be read ({e}): what it counted since the last harvest is not recorded",
                    old.dir.display()
                );
                "no".into()
            }
        };
        log::info!(
            "replaced the programs pinned in {} ({} pins removed, {drained} events drained from its ring buffer, {counted} repeated attempts harvested from its flow table)",
            old.dir.display(),
            removed.len()
        );
    }
    Ok(())
}

/// Default base directory of the pins in bpffs.
pub fn default_pin_dir() -> &'static Path {
    Path::new("/sys/fs/bpf/egress-monitor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        assert!(missing_caps(u64::MAX).is_empty());
        assert_eq!(
            missing_caps((1 << 21) | (1 << 12)),
            ["CAP_BPF"],
            "root in a container without CAP_BPF"
        );
        assert_eq!(missing_caps(0).len(), 3);
    }
}
