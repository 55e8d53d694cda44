//! The write side of the daemon: the controller owns the kernel programs and
//! maps, the policy files and the cgroup selection, and keeps the kernel in
//! step with the policy directory and the cgroup tree. It runs as one task;
//! reload requests arrive as messages (`state::Request`), and every change
//! it makes is published as a new `state::PolicySnapshot` for the readers.
pub mod maps;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

pub use self::maps::build_maps;
use crate::{
    cgroups::{self, PathResolver, Selected},
    events, geo,
    kernel::{self, Kernel},
    policy::{self, CompiledPolicy, PolicyIds},
    state::{PolicyInForce, PolicySnapshot, RejectedFile, ReloadError, Request, View},
};

/// A candidate set refused as a whole (as opposed to a failure on the way).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Names the event pipeline resolves: policy ids and cgroup ids (each
/// cgroup's path and attribution worked out once and shared).
pub struct Resolver {
    pub ids: Arc<RwLock<PolicyIds>>,
    pub paths: PathResolver,
    infos: std::collections::HashMap<u64, Arc<events::CgroupInfo>>,
}

/// Cgroups whose attribution the resolver keeps at once.
const CGROUP_INFOS: usize = 65_536;

impl Resolver {
    pub fn new(ids: Arc<RwLock<PolicyIds>>, paths: PathResolver) -> Self {
        Self {
            ids,
            paths,
            infos: std::collections::HashMap::new(),
        }
    }
}

impl events::Names for Resolver {
    fn policy(&self, id: u32) -> String {
        let ids = self.ids.read().unwrap_or_else(|p| p.into_inner());
        ids.name(id)
            .map(str::to_string)
            .unwrap_or_else(|| format!("policy-{id}"))
    }
    fn cgroup(&mut self, id: u64) -> Arc<events::CgroupInfo> {
        if let Some(info) = self.infos.get(&id) {
            return info.clone();
        }
        let Some(path) = self.paths.path(id) else {
            // Not resolvable (yet, or gone): not cached, tried again next time.
            return Arc::default();
        };
        if self.infos.len() >= CGROUP_INFOS {
            self.infos.clear();
        }
        let info = Arc::new(events::CgroupInfo::of_path(path));
        self.infos.insert(id, info.clone());
        info
    }
}

/// A policy file as the controller holds it.
#[derive(Debug, Clone)]
enum FileState {
    InForce(Vec<CompiledPolicy>),
    /// Rejected; the version before (if any) stays in force.
    Rejected {
        error: String,
        previous: Option<Vec<CompiledPolicy>>,
    },
}

/// Where a store records the policy sets that took effect.
pub trait PolicyRecord: Send + Sync {
    fn policy_set(&self, policies: &[CompiledPolicy], generation: u32);
    fn kernel_lost(&self, n: u64);
}

/// What the controller needs to start.
pub struct Parts {
    pub kernel: Kernel,
    pub mount: PathBuf,
    pub root: PathBuf,
    pub policies_dir: PathBuf,
    pub ids: Arc<RwLock<PolicyIds>>,
    pub resolver: Arc<Mutex<Resolver>>,
    pub geo: geo::GeoIdentity,
    pub record: Arc<dyn PolicyRecord>,
    /// Counts reloads (ok or failed) for the metrics.
    pub on_reload: Box<dyn Fn(bool) + Send + Sync>,
}

/// Keeps the kernel in step with the policy directory and the cgroup tree.
pub struct Controller {
    parts: Parts,
    files: BTreeMap<PathBuf, FileState>,
    in_force: Vec<CompiledPolicy>,
    selection: BTreeMap<u64, Selected>,
    refused: String,
    publish: watch::Sender<Arc<PolicySnapshot>>,
    lost_reported: u64,
    /// The last failure to attach our programs again, said once.
    restore_failure: Option<String>,
}

impl Controller {
    /// A controller with nothing in force yet, and the receiver of the
    /// snapshots it will publish.
    pub fn new(parts: Parts) -> (Self, watch::Receiver<Arc<PolicySnapshot>>) {
        let (publish, rx) = watch::channel(Arc::new(PolicySnapshot::default()));
        let mut c = Self {
            parts,
            files: BTreeMap::new(),
            in_force: Vec::new(),
            selection: BTreeMap::new(),
            refused: String::new(),
            publish,
            lost_reported: 0,
            restore_failure: None,
        };
        c.publish();
        (c, rx)
    }

    pub fn kernel(&self) -> &Kernel {
        &self.parts.kernel
    }

    /// Gives the kernel back (to detach it on exit).
    pub fn into_kernel(self) -> Kernel {
        self.parts.kernel
    }

    fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot {
            generation: self.parts.kernel.policy_generation(),
            policies: self
                .in_force
                .iter()
                .map(|p| PolicyInForce {
                    policy: p.clone(),
                    selected: self
                        .selection
                        .values()
                        .filter(|s| s.policy == p.name)
                        .map(|s| s.path.clone())
                        .collect(),
                })
                .collect(),
            rejected_files: self
                .files
                .iter()
                .filter_map(|(path, state)| match state {
                    FileState::Rejected { error, previous } => Some(RejectedFile {
                        file: path.display().to_string(),
                        error: error.clone(),
                        previous_in_force: previous.is_some(),
                    }),
                    FileState::InForce(_) => None,
                })
                .collect(),
            refused: self.refused.clone(),
            selected_cgroups: self.selection.len(),
            geo: Some(self.parts.geo.clone()),
            cgroup_root: self.parts.root.clone(),
            policy_dir: self.parts.policies_dir.clone(),
        }
    }

    fn publish(&mut self) {
        let snapshot = Arc::new(self.snapshot());
        self.publish.send_replace(snapshot);
    }

    /// Re-reads the policy directory and applies what changed. A file that
    /// fails keeps its previous version in force; a set that conflicts
    /// (same name twice, one cgroup selected twice) is refused whole, and
    /// the refusal is published with the set that stays in force.
    pub fn reload(&mut self) -> Result<Arc<PolicySnapshot>, ReloadError> {
        let result = self.reload_inner();
        let rejected = self
            .files
            .values()
            .any(|f| matches!(f, FileState::Rejected { .. }));
        (self.parts.on_reload)(result.is_ok() && !rejected);
        self.refused = match &result {
            Ok(()) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        self.publish();
        result.map_err(|e| {
            let text = format!("{e:#}");
            if e.downcast_ref::<Refused>().is_some() {
                ReloadError::Refused(text)
            } else {
                ReloadError::Failed(text)
            }
        })?;
        Ok(self.publish.borrow().clone())
    }

    fn reload_inner(&mut self) -> anyhow::Result<()> {
        let dir = &self.parts.policies_dir;
        let paths = policy::policy_files(dir)
            .map_err(|e| anyhow::anyhow!("reading policy directory {}: {e}", dir.display()))?;
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
        let refused = |e: &dyn std::fmt::Display| {
            anyhow::Error::new(Refused(format!(
                "policy set refused, the policies in force stay in force: {e}"
            )))
        };
        policy::check_unique_names(&candidate).map_err(|e| refused(&e))?;
        let cgroups = cgroups::walk(&self.parts.mount, &self.parts.root)?;
        let selection = cgroups::resolve(&cgroups, &candidate).map_err(|e| refused(&e))?;
        self.apply(&candidate, &selection)?;
        self.learn_paths(&cgroups);
        self.files = files;
        self.in_force = candidate;
        self.selection = selection;
        self.parts
            .record
            .policy_set(&self.in_force, self.parts.kernel.policy_generation());
        for p in &self.in_force {
            if !self.selection.values().any(|s| s.policy == p.name) {
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

    /// Teaches the event names what a walk of the cgroup tree found.
    fn learn_paths(&self, cgroups: &[(String, u64)]) {
        self.parts
            .resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paths
            .learn(cgroups);
    }

    /// Re-walks the cgroup tree; applies when the selection changed.
    pub fn rescan(&mut self) -> anyhow::Result<()> {
        let cgroups = cgroups::walk(&self.parts.mount, &self.parts.root)?;
        self.learn_paths(&cgroups);
        let selection = match cgroups::resolve(&cgroups, &self.in_force) {
            Ok(s) => s,
            Err(e) => {
                // A new cgroup matched by two policies: keep what is in
                // force and say so.
                log::error!("cgroup rescan: {e}; the selection in force is kept");
                return Ok(());
            }
        };
        if selection != self.selection {
            let in_force = self.in_force.clone();
            self.apply(&in_force, &selection)?;
            self.selection = selection;
            self.publish();
        }
        let selected: Vec<(String, PathBuf)> = self
            .selection
            .values()
            .map(|s| {
                (
                    s.path.clone(),
                    self.parts.mount.join(s.path.trim_start_matches('/')),
                )
            })
            .collect();
        self.parts.kernel.check_foreign(&selected);
        Ok(())
    }

    fn apply(
        &mut self,
        policies: &[CompiledPolicy],
        selection: &BTreeMap<u64, Selected>,
    ) -> anyhow::Result<()> {
        let maps = {
            let mut ids = self.parts.ids.write().unwrap_or_else(|p| p.into_inner());
            build_maps(policies, selection, &mut ids)
        };
        kernel::check_capacity(&maps).map_err(|e| {
            anyhow::Error::new(Refused(format!(
                "policy set refused, the policies in force stay in force: {e}"
            )))
        })?;
        let started = Instant::now();
        let generation = self
            .parts
            .kernel
            .apply(&maps)
            .map_err(|e| anyhow::anyhow!("writing the policy set into the kernel: {e}"))?;
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

    /// The periodic work: the cgroup tree, the kernel's losses, our links.
    fn tick(&mut self, view: &View) {
        if let Err(e) = self.rescan() {
            log::error!("cgroup rescan failed: {e:#}");
        }
        let lost = self.parts.kernel.lost_events();
        if lost > self.lost_reported {
            log::warn!(
                "{} events lost in the kernel (ring buffer full), {lost} in all",
                lost - self.lost_reported
            );
            self.parts.record.kernel_lost(lost - self.lost_reported);
            self.lost_reported = lost;
        }
        match self.parts.kernel.restore_links() {
            Ok(restored) if !restored.is_empty() => {
                view.reattached
                    .fetch_add(restored.len() as u64, Ordering::Relaxed);
                log::error!(
                    "our programs {} were detached by someone else (their pins in {} were removed): attached them again; find out who (`egress-monitor uninstall` while a daemon runs refuses without --force)",
                    restored.join(", "),
                    self.parts.kernel.pin_dir().display()
                );
            }
            Ok(_) => self.restore_failure = None,
            Err(e) => {
                // Said once per cause, not at every rescan; status and the
                // metrics show it for as long as it lasts.
                let text = e.to_string();
                if self.restore_failure.as_deref() != Some(&text) {
                    log::error!(
                        "our programs are detached and attaching them again failed: {text}; enforcement is OFF until this is fixed"
                    );
                    self.restore_failure = Some(text);
                }
            }
        }
    }

    /// Serves reload requests, directory changes and the periodic rescan
    /// until `shutdown`; then hands itself back.
    pub async fn run(
        mut self,
        view: View,
        mut requests: mpsc::Receiver<Request>,
        mut changes: mpsc::Receiver<()>,
        rescan_interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut rescan = tokio::time::interval(rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(request) = requests.recv() => match request {
                    Request::Reload(reply) => {
                        let result = tokio::task::block_in_place(|| self.reload());
                        if let Err(e) = &result {
                            log::error!("{e}");
                        }
                        let _ = reply.send(result);
                    }
                },
                Some(()) = changes.recv() => {
                    log::info!("policy directory changed; reloading");
                    if let Err(e) = tokio::task::block_in_place(|| self.reload()) {
                        log::error!("{e}");
                    }
                }
                _ = rescan.tick() => tokio::task::block_in_place(|| self.tick(&view)),
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self
    }
}
