//! The daemon: loads the database and the programs, keeps the policy set in
//! the kernel in step with the policy directory and the cgroup tree, and
//! runs the event pipeline.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context};
use monitor_common::{PolicyAddr, RegionKey, Selection};

use crate::{
    api::server::ApiConfig,
    cgroups::{self, PathResolver, Selected},
    events::{self, pipeline::Outlets},
    geo::{self, GeoDb},
    kernel::{self, Kernel, PolicyMaps},
    policy::{self, CompiledPolicy, Mode, PolicyIds},
};

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub policies: PathBuf,
    pub geoip: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub log_events: bool,
    pub ring_bytes: u32,
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
}

/// What the API reads and drives.
pub struct DaemonState {
    pub controller: tokio::sync::Mutex<Controller>,
    pub outlets: Arc<Outlets>,
    pub started: SystemTime,
    /// Events stream clients missed because they read too slowly.
    pub dropped_slow: AtomicU64,
    pub clients: AtomicU64,
    /// The history store's writer.
    pub store: Arc<crate::store::writer::Handle>,
    /// The node's public key (hex), which signs evidence bundles.
    pub node_public_key: String,
}

/// Names the event pipeline resolves: policy ids and cgroup ids.
pub struct Resolver {
    pub ids: Arc<RwLock<PolicyIds>>,
    pub paths: PathResolver,
}

impl events::Names for Resolver {
    fn policy(&self, id: u32) -> String {
        let ids = self.ids.read().unwrap_or_else(|p| p.into_inner());
        ids.name(id)
            .map(str::to_string)
            .unwrap_or_else(|| format!("policy-{id}"))
    }
    fn cgroup(&mut self, id: u64) -> String {
        self.paths.path(id).unwrap_or_default()
    }
}

/// A policy file as the daemon holds it.
#[derive(Debug, Clone)]
pub enum FileState {
    InForce(Vec<CompiledPolicy>),
    /// Rejected; the version before (if any) stays in force.
    Rejected {
        error: String,
        previous: Option<Vec<CompiledPolicy>>,
    },
}

/// What the daemon keeps in step with the kernel.
pub struct Controller {
    pub kernel: Kernel,
    pub mount: PathBuf,
    pub root: PathBuf,
    pub policies_dir: PathBuf,
    pub files: BTreeMap<PathBuf, FileState>,
    pub in_force: Vec<CompiledPolicy>,
    pub selection: BTreeMap<u64, Selected>,
    pub ids: Arc<RwLock<PolicyIds>>,
    pub resolver: Arc<Mutex<Resolver>>,
    pub geo: geo::GeoIdentity,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where policy sets are recorded when they take effect.
    pub store: Option<Arc<crate::store::writer::Handle>>,
}

impl Controller {
    /// Re-reads the policy directory and applies what changed. A file that
    /// fails keeps its previous version in force; a set that conflicts
    /// (same name twice, one cgroup selected twice) is refused whole.
    pub fn reload_policies(&mut self) -> anyhow::Result<()> {
        let result = self.reload_policies_inner();
        let rejected = self
            .files
            .values()
            .any(|f| matches!(f, FileState::Rejected { .. }));
        self.metrics.reload(result.is_ok() && !rejected);
        result
    }

    fn reload_policies_inner(&mut self) -> anyhow::Result<()> {
        let paths = policy::policy_files(&self.policies_dir)
            .with_context(|| format!("reading policy directory {}", self.policies_dir.display()))?;
        let mut files = BTreeMap::new();
        for path in paths {
            let state = match policy::compile_file(&path) {
                Ok(p) => FileState::InForce(p),
                Err(e) => {
                    let previous = match self.files.get(&path) {
                        Some(FileState::InForce(p)) => Some(p.clone()),
                        Some(FileState::Rejected { previous, .. }) => previous.clone(),
                        None => None,
                    };
                    log::error!(
                        "policy file rejected: {e}{}",
                        if previous.is_some() {
                            " (its previous version stays in force)"
                        } else {
                            ""
                        }
                    );
                    FileState::Rejected {
                        error: e.to_string(),
                        previous,
                    }
                }
            };
            files.insert(path, state);
        }
        let candidate: Vec<CompiledPolicy> = files
            .values()
            .flat_map(|s| match s {
                FileState::InForce(p) => p.clone(),
                FileState::Rejected { previous, .. } => previous.clone().unwrap_or_default(),
            })
            .collect();
        if let Err(e) = policy::check_unique_names(&candidate) {
            bail!("policy set refused, the policies in force stay in force: {e}");
        }
        let cgroups = cgroups::walk(&self.mount, &self.root)?;
        let selection = cgroups::resolve(&cgroups, &candidate).map_err(|e| {
            anyhow::anyhow!("policy set refused, the policies in force stay in force: {e}")
        })?;
        self.apply(&candidate, &selection)?;
        self.resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paths
            .learn(&cgroups);
        self.files = files;
        self.in_force = candidate;
        self.selection = selection;
        if let Some(store) = &self.store {
            store.policy_set(&self.in_force, self.kernel.policy_generation());
        }
        for p in &self.in_force {
            let n = self
                .selection
                .values()
                .filter(|s| s.policy == p.name)
                .count();
            if n == 0 {
                log::warn!(
                    "policy {} ({}) selects no cgroup yet: {:?}",
                    p.name,
                    p.file,
                    p.selector_terms()
                );
            }
        }
        Ok(())
    }

    /// Re-walks the cgroup tree; applies when the selection changed.
    pub fn rescan(&mut self) -> anyhow::Result<()> {
        let cgroups = cgroups::walk(&self.mount, &self.root)?;
        self.resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paths
            .learn(&cgroups);
        let selection = match cgroups::resolve(&cgroups, &self.in_force) {
            Ok(s) => s,
            Err(e) => {
                // A new cgroup matched by two policies: keep what is in
                // force and say so (once per change).
                log::error!("cgroup rescan: {e}; the selection in force is kept");
                return Ok(());
            }
        };
        if selection != self.selection {
            let in_force = self.in_force.clone();
            self.apply(&in_force, &selection)?;
            self.selection = selection;
        }
        let selected: Vec<(String, PathBuf)> = self
            .selection
            .values()
            .map(|s| {
                (
                    s.path.clone(),
                    self.mount.join(s.path.trim_start_matches('/')),
                )
            })
            .collect();
        self.kernel.check_foreign(&selected);
        Ok(())
    }

    fn apply(
        &mut self,
        policies: &[CompiledPolicy],
        selection: &BTreeMap<u64, Selected>,
    ) -> anyhow::Result<()> {
        let maps = {
            let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
            build_maps(policies, selection, &mut ids)
        };
        kernel::check_capacity(&maps).map_err(|e| anyhow::anyhow!("policy set refused: {e}"))?;
        let started = Instant::now();
        let generation = self
            .kernel
            .apply(&maps)
            .context("writing the policy set into the kernel")?;
        log::info!(
            "policy set generation {generation} in force: {} policies, {} selected cgroups, {} region rules, {} allow / {} deny CIDRs ({:.1} ms)",
            policies.len(),
            selection.len(),
            maps.region_rules.len(),
            maps.allow_cidrs.len(),
            maps.deny_cidrs.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        for (id, s) in selection {
            if self.selection.get(id) != Some(s) {
                log::info!(
                    "cgroup {} (id {id}) -> policy {} ({})",
                    s.path,
                    s.policy,
                    s.mode
                );
            }
        }
        Ok(())
    }
}

/// The kernel's view of a policy set.
pub fn build_maps(
    policies: &[CompiledPolicy],
    selection: &BTreeMap<u64, Selected>,
    ids: &mut PolicyIds,
) -> PolicyMaps {
    let mut maps = PolicyMaps::default();
    for (cg, sel) in selection {
        maps.selections.push((
            *cg,
            Selection {
                policy_id: ids.id(&sel.policy),
                mode: match sel.mode {
                    Mode::Enforce => monitor_common::mode::ENFORCE,
                    Mode::Monitor => monitor_common::mode::MONITOR,
                },
                _pad: [0; 3],
            },
        ));
    }
    for p in policies {
        let policy_id = ids.id(&p.name);
        for (region, rule) in &p.region_rules {
            maps.region_rules.push((
                RegionKey {
                    policy_id,
                    region: *region,
                },
                *rule,
            ));
        }
        let cidr = |net: &ipnetwork::IpNetwork| {
            let (addr, len) = geo::network_to_u128(*net);
            (
                PolicyAddr {
                    policy_id_be: policy_id.to_be_bytes(),
                    addr: addr.to_be_bytes(),
                },
                32 + u32::from(len),
            )
        };
        maps.allow_cidrs.extend(p.allow_cidrs.iter().map(cidr));
        maps.deny_cidrs.extend(p.deny_cidrs.iter().map(cidr));
    }
    maps
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    if !config.policies.is_dir() {
        bail!(
            "policy directory {} does not exist or is not a directory",
            config.policies.display()
        );
    }
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let node_key = crate::evidence::key::load_or_create(&config.state_dir)?;
    let store = crate::store::writer::Handle::start(
        crate::store::path_in(&config.state_dir),
        config.retention,
    );
    // A taken metrics port fails the start before the kernel is touched.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(crate::metrics::server::bind(addr).await?),
        None => None,
    };
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

    let started = Instant::now();
    let db = tokio::task::block_in_place(|| GeoDb::open(&config.geoip))?;
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

    let (mut kernel, ring, old_pins) = Kernel::load(&root, config.ring_bytes, &config.pin_dir)?;
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
    if kernel.geo_loaded(&db.identity.sha256) {
        log::info!(
            "the kernel geo trie already holds this database (sha256 {})",
            db.identity.sha256
        );
    } else {
        let started = Instant::now();
        let loaded =
            tokio::task::block_in_place(|| kernel.load_geo(db.prefixes(), &db.identity.sha256))?;
        log::info!(
            "loaded {loaded} prefixes into the kernel geo trie in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }

    let ids = Arc::new(RwLock::new(PolicyIds::open(
        &config.state_dir.join("policy-ids.json"),
    )));
    let resolver = Arc::new(Mutex::new(Resolver {
        ids: ids.clone(),
        paths: PathResolver::new(&mount),
    }));
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let mut controller = Controller {
        kernel,
        mount,
        root,
        policies_dir: config.policies.clone(),
        files: BTreeMap::new(),
        in_force: Vec::new(),
        selection: BTreeMap::new(),
        ids,
        resolver: resolver.clone(),
        geo: db.identity.clone(),
        metrics: metrics.clone(),
        store: Some(store.clone()),
    };
    store.agent_run(crate::store::agent_run_json(&node_key));
    store.geoip(crate::store::geo_json(&db.identity));
    drop(db);
    if let Err(e) = controller.reload_policies() {
        log::error!("{e:#}");
    }

    let outlets = Arc::new(Outlets {
        metrics: metrics.clone(),
        ..Outlets::new(config.history, 4096, config.log_events)
    });
    match crate::metrics::system::RingFill::map(
        std::os::fd::AsRawFd::as_raw_fd(&ring),
        config.ring_bytes,
    ) {
        Ok(fill) => metrics.watch_ring(fill),
        Err(e) => log::warn!("ring buffer fill is not reported: mapping its positions failed: {e}"),
    }
    store.attach(outlets.live.subscribe());
    // Our programs enforce now: retire an earlier build's, draining what
    // its ring buffer still holds.
    for old in old_pins {
        let ring = aya::maps::MapData::from_pin(old.dir.join(monitor_common::names::EVENTS))
            .ok()
            .and_then(|m| aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(m)).ok());
        let removed = kernel::remove_pins(&old.dir).with_context(|| {
            format!("retiring the earlier build pinned in {}", old.dir.display())
        })?;
        let drained = ring
            .map(|r| events::pipeline::drain_once(r, &outlets, &resolver))
            .unwrap_or(0);
        log::info!(
            "replaced the programs pinned in {} ({} pins removed, {drained} events drained from its ring buffer)",
            old.dir.display(),
            removed.len()
        );
    }
    let pipeline = tokio::spawn(events::pipeline::run(ring, outlets.clone(), resolver));
    let state = Arc::new(DaemonState {
        controller: tokio::sync::Mutex::new(controller),
        outlets,
        started: SystemTime::now(),
        dropped_slow: AtomicU64::new(0),
        clients: AtomicU64::new(0),
        store: store.clone(),
        node_public_key: crate::evidence::key::public_hex(&node_key.verifying_key()),
    });
    if let Some(listener) = metrics_listener {
        log::info!(
            "Prometheus metrics at http://{}/metrics",
            listener.local_addr()?
        );
        let (state, metrics) = (Arc::downgrade(&state), metrics.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::server::serve(listener, state, metrics).await {
                log::error!("metrics server failed: {e:#}");
            }
        });
    }
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut api = tokio::spawn(crate::api::server::serve(
        config.api.clone(),
        state.clone(),
        shutdown_rx,
    ));
    let (_watcher, mut changes) = policy::watch::watch(&config.policies)
        .with_context(|| format!("watching policy directory {}", config.policies.display()))?;
    let mut rescan = tokio::time::interval(config.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_reported = 0u64;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    log::info!(
        "egress-monitor running; policies from {}",
        config.policies.display()
    );
    let mut pipeline = pipeline;
    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                log::info!("policy directory changed; reloading");
                let mut c = state.controller.lock().await;
                if let Err(e) = tokio::task::block_in_place(|| c.reload_policies()) {
                    log::error!("{e:#}");
                }
            }
            _ = rescan.tick() => {
                let mut c = state.controller.lock().await;
                if let Err(e) = tokio::task::block_in_place(|| c.rescan()) {
                    log::error!("cgroup rescan failed: {e:#}");
                }
                let lost = c.kernel.lost_events();
                if lost > lost_reported {
                    log::warn!("{} events lost in the kernel (ring buffer full), {lost} in all", lost - lost_reported);
                    store.kernel_lost(lost - lost_reported);
                    lost_reported = lost;
                }
            }
            result = &mut pipeline => {
                match result {
                    Ok(Ok(())) => bail!("event pipeline ended"),
                    Ok(Err(e)) => bail!("event pipeline failed: {e}"),
                    Err(e) => bail!("event pipeline panicked: {e}"),
                }
            }
            result = &mut api => {
                match result {
                    Ok(Ok(())) => bail!("gRPC server ended"),
                    Ok(Err(e)) => bail!("gRPC server failed: {e:#}"),
                    Err(e) => bail!("gRPC server panicked: {e}"),
                }
            }
            _ = tokio::signal::ctrl_c() => { log::info!("SIGINT: exiting"); break; }
            _ = sigterm.recv() => { log::info!("SIGTERM: exiting"); break; }
        }
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    // What the ring still holds stays there (it is pinned) for the next
    // start; what was drained is written before we exit.
    pipeline.abort();
    if !store.shutdown(Duration::from_secs(10)).await {
        log::error!("the store did not finish writing within 10 s");
    }
    if config.detach_on_exit {
        let state = Arc::into_inner(state).context("the API still holds the daemon state")?;
        let controller = state.controller.into_inner();
        let removed = controller.kernel.uninstall()?;
        // The base directory goes too when no other build's pins are left.
        let _ = std::fs::remove_dir(&config.pin_dir);
        log::info!("detached: removed {} pins", removed.len());
    } else {
        log::info!(
            "enforcement stays on: programs and maps stay pinned in {} (`egress-monitor uninstall` removes them)",
            config.pin_dir.display()
        );
    }
    Ok(())
}

/// Default state directory.
pub fn default_state_dir() -> &'static Path {
    Path::new("/var/lib/egress-monitor")
}

/// Default base directory of the pins in bpffs.
pub fn default_pin_dir() -> &'static Path {
    Path::new("/sys/fs/bpf/egress-monitor")
}
