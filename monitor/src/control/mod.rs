//! The write side of the daemon: the controller owns the kernel programs and
//! maps, the policy files and the cgroup selection, and keeps the kernel in
//! step with the policy directory and the cgroup tree. It runs as one task;
//! reload requests arrive as messages (`state::Request`), and every change
//! it makes is published as a new `state::PolicySnapshot` for the readers.
pub mod maps;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

pub use self::maps::build_maps;
use crate::{
    cgroups::{self, PathResolver, Selected},
    cloud::CloudRanges,
    events, geo,
    kernel::{self, Kernel},
    policy::{self, CompiledPolicy, Mode, PolicyIds},
    state::{PolicyInForce, PolicySnapshot, RejectedFile, ReloadError, Reloaded, Request, View},
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
    /// The cloud snapshot in force, for region names.
    pub cloud: Arc<CloudRanges>,
    /// Who runs what (see `process`).
    pub processes: crate::process::Processes,
    /// What container runtimes say of their containers.
    pub containers: crate::containers::Containers,
}

/// Cgroups whose attribution the resolver keeps at once.
const CGROUP_INFOS: usize = 65_536;

impl Resolver {
    pub fn new(ids: Arc<RwLock<PolicyIds>>, paths: PathResolver) -> Self {
        Self {
            ids,
            paths,
            infos: std::collections::HashMap::new(),
            cloud: Arc::default(),
            processes: crate::process::Processes::new(
                crate::process::Capture::default(),
                std::path::Path::new("/proc"),
            ),
            containers: crate::containers::Containers::none(),
        }
    }
}

impl events::Names for Resolver {
    fn policy(&self, id: u32) -> String {
        if id == 0 {
            // A cgroup made under a watched parent, not yet classified.
            return "(unclassified)".into();
        }
        let ids = self.ids.read().unwrap_or_else(|p| p.into_inner());
        ids.name(id)
            .map(str::to_string)
            .unwrap_or_else(|| format!("policy-{id}"))
    }
    fn cgroup(&mut self, id: u64) -> Arc<events::CgroupInfo> {
        if let Some(info) = self.infos.get(&id) {
            // A container: what its runtime says now (`Containers` keeps
            // the answer, asks again after its refresh interval, and asks
            // again one it could not answer for, spaced out).
            if !info.container_id.is_empty() {
                let now = self
                    .containers
                    .lookup(&info.container_id, info.runtime_kind());
                let same = match (&now, &info.container) {
                    (Some(now), Some(was)) => Arc::ptr_eq(now, was),
                    (None, _) => true,
                    (Some(_), None) => false,
                };
                if let (false, Some(meta)) = (same, now) {
                    let mut answered = (**info).clone();
                    answered.container = Some(meta);
                    let answered = Arc::new(answered);
                    self.infos.insert(id, answered.clone());
                    return answered;
                }
            }
            return info.clone();
        }
        let Some(path) = self.paths.path(id) else {
            // Not resolvable (yet, or gone): not cached, tried again next time.
            return Arc::default();
        };
        if self.infos.len() >= CGROUP_INFOS {
            self.infos.clear();
        }
        let mut info = events::CgroupInfo::of_path(path);
        info.container = self
            .containers
            .lookup(&info.container_id, info.runtime_kind());
        let info = Arc::new(info);
        self.infos.insert(id, info.clone());
        info
    }
    fn cloud_region(&self, id: u32) -> Option<(String, String)> {
        self.cloud
            .region_name(id)
            .map(|(p, r)| (p.to_string(), r.to_string()))
    }
    fn process(&mut self, tgid: u32, exec_ns: u64) -> Option<Arc<crate::process::Process>> {
        self.processes.lookup(tgid, exec_ns)
    }
    fn learn_process(&mut self, entry: &monitor_common::process::Entry) {
        self.processes.learn(entry);
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
    /// `n` events lost in the kernel, `denials` of them refusals.
    fn kernel_lost(&self, n: u64, denials: u64);
    /// Whether our programs are attached (checked at every rescan).
    fn watching(&self, attached: bool);
    /// Our programs were found detached and were attached again.
    fn lapsed(&self);
    /// The cloud-range snapshot put in force (JSON: directory and files).
    fn cloud_ranges(&self, identity: String);
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
    /// The countries that database places addresses in.
    pub countries: policy::lint::Countries,
    pub record: Arc<dyn PolicyRecord>,
    /// Counts reloads (ok or failed) for the metrics.
    pub on_reload: Box<dyn Fn(bool) + Send + Sync>,
    /// The cloud-range directory (`--cloud-ranges`) and what was read from
    /// it at the start.
    pub cloud_dir: Option<PathBuf>,
    pub cloud: Arc<CloudRanges>,
    /// The resolvers names are learned from (domain rules need one).
    pub resolvers: policy::lint::Resolvers,
    /// Run just before the kernel switches to a new set (see `BeforeSwitch`).
    pub before_switch: BeforeSwitch,
    /// The policies of the last set in force before this start, by file
    /// (from the store): a file that is broken at the start keeps that
    /// version in force, as it would have without the restart.
    pub recorded: BTreeMap<PathBuf, Vec<CompiledPolicy>>,
}

/// Set once the flow harvest runs: the controller calls it just before
/// every switch, so the repeats counted under the decisions in force are
/// harvested with those decisions, not with the ones the switch makes.
pub type BeforeSwitch = Arc<std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>>;

/// Keeps the kernel in step with the policy directory and the cgroup tree.
pub struct Controller {
    parts: Parts,
    files: BTreeMap<PathBuf, FileState>,
    in_force: Vec<CompiledPolicy>,
    selection: BTreeMap<u64, Selected>,
    refused: String,
    publish: watch::Sender<Arc<PolicySnapshot>>,
    /// The kernel's lost events (all, and the refusals among them) as
    /// last recorded.
    lost_reported: u64,
    denials_lost_reported: u64,
    /// The last failure to attach our programs again, said once.
    restore_failure: Option<String>,
    /// Whether the kernel's cloud slot holds `parts.cloud`.
    cloud_loaded: bool,
    /// The cloud directory as last read (names, sizes, times).
    cloud_stamp: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
    /// Why the last candidate cloud snapshot was rejected; empty when the
    /// last read took effect.
    cloud_error: String,
    /// Whether this process has written a set into the kernel (a restart
    /// always writes its first set, whatever the pins hold).
    applied: bool,
    /// The cgroups several policies select, as last settled.
    conflicts: Vec<cgroups::Conflict>,
    /// The watched parents in force (see `cgroups::Resolution::watched`).
    watched: BTreeMap<u64, Mode>,
    /// What the kernel's KNOWN map holds: the cgroups classified.
    known: BTreeSet<u64>,
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
            denials_lost_reported: 0,
            restore_failure: None,
            cloud_loaded: false,
            cloud_stamp: Vec::new(),
            cloud_error: String::new(),
            applied: false,
            conflicts: Vec::new(),
            watched: BTreeMap::new(),
            known: BTreeSet::new(),
        };
        c.known = c.parts.kernel.known().into_iter().collect();
        c.cloud_stamp = c.cloud_dir_stamp();
        c.parts
            .resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cloud = c.parts.cloud.clone();
        c.publish();
        (c, rx)
    }

    /// Whether this process has written a complete policy set into the
    /// kernel (possibly the empty one, when the directory holds none).
    pub fn in_force_applied(&self) -> bool {
        self.applied
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
            cloud: self.parts.cloud.clone(),
            cloud_dir: self.parts.cloud_dir.clone(),
            cloud_error: self.cloud_error.clone(),
            conflicts: self.conflicts.iter().map(ToString::to_string).collect(),
            data_missing: self.data_missing(),
        }
    }

    /// The rules of the set in force that the data loaded cannot judge
    /// (see `lint::missing_data`).
    fn data_missing(&self) -> Vec<policy::lint::Missing> {
        let data = policy::lint::Data {
            cloud: &self.parts.cloud,
            resolvers: &self.parts.resolvers,
        };
        self.in_force
            .iter()
            .flat_map(|p| policy::lint::missing_data(p, &data))
            .collect()
    }

    /// What the cloud directory holds now, to notice a change.
    fn cloud_dir_stamp(&self) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
        let Some(dir) = &self.parts.cloud_dir else {
            return Vec::new();
        };
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        Some((e.path(), m.len(), m.modified().ok()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Reads the cloud directory again when it changed; a bad snapshot is
    /// rejected with its file and reason and the ranges in force stay.
    fn reload_cloud(&mut self) {
        let stamp = self.cloud_dir_stamp();
        if stamp == self.cloud_stamp {
            return;
        }
        self.cloud_stamp = stamp;
        let Some(dir) = self.parts.cloud_dir.clone() else {
            return;
        };
        log::info!("cloud range directory {} changed; reloading", dir.display());
        match crate::cloud::load_dir(&dir) {
            Err(e) => {
                log::error!("cloud ranges rejected, the ranges in force stay: {e}");
                self.cloud_error = e.to_string();
            }
            Ok(ranges) => {
                let previous = std::mem::replace(&mut self.parts.cloud, Arc::new(ranges));
                self.cloud_loaded = false;
                let (policies, selection, watched) = (
                    self.in_force.clone(),
                    self.selection.clone(),
                    self.watched.clone(),
                );
                match self.apply(&policies, &selection, &watched) {
                    Ok(()) => {
                        self.cloud_error = String::new();
                        self.parts
                            .resolver
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .cloud = self.parts.cloud.clone();
                    }
                    Err(e) => {
                        log::error!("cloud ranges could not be put in force, the ranges in force stay: {e:#}");
                        self.cloud_error = format!("{e:#}");
                        self.parts.cloud = previous;
                        self.cloud_loaded = true;
                    }
                }
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        let snapshot = Arc::new(self.snapshot());
        self.publish.send_replace(snapshot);
    }

    /// Re-reads the policy directory and applies what changed. A file that
    /// fails keeps its previous version in force; a set that conflicts
    /// (same name twice, too big for the maps) is refused whole, and
    /// the refusal is published with the set that stays in force.
    pub fn reload(&mut self) -> Result<Arc<PolicySnapshot>, ReloadError> {
        self.reload_with(false).map(|r| r.snapshot)
    }

    /// `reload`, saying whether it made a new generation. Only a changed
    /// set is a new generation (a policy's text or file, a rejected file's
    /// fallback, the selected cgroups), unless `force`.
    pub fn reload_with(&mut self, force: bool) -> Result<Reloaded, ReloadError> {
        let result = self.reload_inner(force);
        let rejected = self
            .files
            .values()
            .any(|f| matches!(f, FileState::Rejected { .. }));
        (self.parts.on_reload)(result.is_ok() && !rejected);
        self.refused = match &result {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        };
        self.publish();
        let changed = result.map_err(|e| {
            let text = format!("{e:#}");
            if e.downcast_ref::<Refused>().is_some() {
                ReloadError::Refused(text)
            } else {
                ReloadError::Failed(text)
            }
        })?;
        Ok(Reloaded {
            snapshot: self.publish.borrow().clone(),
            changed,
        })
    }

    fn reload_inner(&mut self, force: bool) -> anyhow::Result<bool> {
        let dir = &self.parts.policies_dir;
        let paths = policy::policy_files(dir)
            .map_err(|e| anyhow::anyhow!("reading policy directory {}: {e}", dir.display()))?;
        let mut files = BTreeMap::new();
        for path in paths {
            // The judgement `policy check` gives too: a cloud-region pattern
            // that matches no region fails open in `deny`, and the file is
            // rejected like one that does not compile.
            let compiled = policy::judge_file(Some(dir), &path, &self.parts.cloud).map_err(|e| {
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            let state = match compiled {
                Ok(p) => FileState::InForce(p),
                Err(e) => {
                    let (previous, whence) = match self.files.get(&path) {
                        Some(FileState::InForce(p)) => (Some(p.clone()), ""),
                        Some(FileState::Rejected { previous, .. }) => (previous.clone(), ""),
                        // Before the first set of this run: the version in
                        // force when the last run stopped.
                        None if !self.applied => (
                            self.parts.recorded.get(&path).cloned(),
                            ", as recorded in force before this start,",
                        ),
                        None => (None, ""),
                    };
                    log::error!(
                        "policy file rejected: {e}{}",
                        if previous.is_some() {
                            format!(" (its previous version{whence} stays in force)")
                        } else {
                            String::new()
                        }
                    );
                    FileState::Rejected { error: e, previous }
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
        let resolution = cgroups::resolve(&cgroups, &candidate);
        let (selection, watched) = (resolution.selected, resolution.watched);
        let same = |a: &[CompiledPolicy], b: &[CompiledPolicy]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    let baseline =
                        |p: &CompiledPolicy| p.baseline.as_ref().map(|b| b.sha256.clone());
                    (&x.name, &x.file, &x.sha256, baseline(x))
                        == (&y.name, &y.file, &y.sha256, baseline(y))
                })
        };
        if !force
            && self.applied
            && selection == self.selection
            && watched == self.watched
            && same(&candidate, &self.in_force)
        {
            self.learn_paths(&cgroups);
            self.know(&cgroups, &selection);
            self.forget_gone(&cgroups);
            self.report_conflicts(resolution.conflicts);
            self.files = files;
            log::info!(
                "policy reload: nothing changed, generation {} stays in force",
                self.parts.kernel.policy_generation()
            );
            return Ok(false);
        }
        self.know(&cgroups, &selection);
        self.apply(&candidate, &selection, &watched)?;
        self.forget_gone(&cgroups);
        self.watched = watched;
        self.applied = true;
        // From here on a file's previous version is this run's own.
        self.parts.recorded.clear();
        self.learn_paths(&cgroups);
        self.report_conflicts(resolution.conflicts);
        self.files = files;
        self.in_force = candidate;
        self.selection = selection;
        self.parts
            .record
            .policy_set(&self.in_force, self.parts.kernel.policy_generation());
        let root = cgroups::relative(&self.parts.mount, &self.parts.root);
        if self.in_force.is_empty() {
            log::warn!(
                "NO POLICY IN FORCE: no valid policy in {}; no cgroup is selected, so no \
                 connection is judged or enforced (--require-policies refuses to start like this)",
                self.parts.policies_dir.display()
            );
        }
        for m in self.data_missing() {
            log::warn!("POLICY DATA MISSING: {m} (--require-policies refuses to start like this)");
        }
        for p in &self.in_force {
            let countries = Some(&self.parts.countries);
            for w in policy::warnings(p, root.as_deref(), &self.parts.cloud, countries) {
                log::warn!("policy {} ({}:{}): {w}", p.name, p.file, p.line);
            }
            if !self.selection.values().any(|s| s.policy == p.name) {
                log::warn!(
                    "policy {} ({}) selects no cgroup yet: {:?}",
                    p.name,
                    p.file,
                    p.selector_terms()
                );
            }
        }
        Ok(true)
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

    /// Says each selector conflict once, when it appears, and keeps the
    /// current ones for `status`.
    fn report_conflicts(&mut self, conflicts: Vec<cgroups::Conflict>) {
        for c in &conflicts {
            if !self.conflicts.contains(c) {
                log::error!("selector conflict: {c}");
            }
        }
        if conflicts != self.conflicts {
            self.conflicts = conflicts;
            self.publish();
        }
    }

    /// Re-walks the cgroup tree; applies when the selection changed.
    pub fn rescan(&mut self) -> anyhow::Result<()> {
        let cgroups = cgroups::walk(&self.parts.mount, &self.parts.root)?;
        self.learn_paths(&cgroups);
        let resolution = cgroups::resolve(&cgroups, &self.in_force);
        let (selection, watched) = (resolution.selected, resolution.watched);
        self.report_conflicts(resolution.conflicts);
        // New cgroups that no policy selects are classified first (they may
        // connect now); new selections switch in; gone ones are forgotten.
        self.know(&cgroups, &selection);
        if selection != self.selection || watched != self.watched {
            let in_force = self.in_force.clone();
            self.apply(&in_force, &selection, &watched)?;
            self.selection = selection;
            self.watched = watched;
            self.publish();
        }
        self.forget_gone(&cgroups);
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

    /// Marks every cgroup of a walk that `selection` does not select as
    /// classified, before the selection switches in: a cgroup the new set
    /// selects is never marked before its selection is in force (it would
    /// pass unjudged between the two writes).
    fn know(&mut self, cgroups: &[(String, u64)], selection: &BTreeMap<u64, Selected>) {
        let new: Vec<u64> = cgroups
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| !selection.contains_key(id) && !self.known.contains(id))
            .collect();
        if new.is_empty() {
            return;
        }
        match self.parts.kernel.know(&new) {
            Ok(()) => self.known.extend(new),
            Err(e) => {
                // Those not written stay unclassified: refused under an
                // enforcing watched parent. Said, not hidden.
                log::error!(
                    "classifying {} new cgroups failed ({e}); those under a watched parent stay refused as unclassified",
                    new.len()
                );
                self.known = self.parts.kernel.known().into_iter().collect();
            }
        }
    }

    /// Forgets the classified cgroups a walk no longer finds.
    fn forget_gone(&mut self, cgroups: &[(String, u64)]) {
        let present: BTreeSet<u64> = cgroups.iter().map(|(_, id)| *id).collect();
        let gone: Vec<u64> = self.known.difference(&present).copied().collect();
        if !gone.is_empty() {
            self.parts.kernel.forget(&gone);
            for id in gone {
                self.known.remove(&id);
            }
        }
    }

    fn apply(
        &mut self,
        policies: &[CompiledPolicy],
        selection: &BTreeMap<u64, Selected>,
        watched: &BTreeMap<u64, Mode>,
    ) -> anyhow::Result<()> {
        let maps = {
            let mut ids = self.parts.ids.write().unwrap_or_else(|p| p.into_inner());
            build_maps(
                policies,
                selection,
                watched,
                &mut ids,
                &self.parts.cloud,
                self.parts.kernel.dns_key(),
            )
        };
        kernel::check_capacity(&maps).map_err(|e| {
            anyhow::Error::new(Refused(format!(
                "policy set refused, the policies in force stay in force: {e}"
            )))
        })?;
        if let Some(harvest) = self.parts.before_switch.get() {
            harvest();
        }
        let started = Instant::now();
        let generation = if self.cloud_loaded {
            self.parts
                .kernel
                .apply(&maps)
                .map_err(|e| anyhow::anyhow!("writing the policy set into the kernel: {e}"))?
        } else {
            // The cloud ranges switch in with the policy set that may name
            // their regions: one word, one switch.
            let cloud = self.parts.cloud.clone();
            let entries = cloud.entries().map(|(net, region, location)| {
                let (addr, len) = geo::network_to_u128(net);
                let (country, continent, located) = match location {
                    Some(l) => (l.country, l.continent, 1),
                    None => ([0; 2], [0; 2], 0),
                };
                (
                    addr,
                    len,
                    monitor_common::CloudEntry {
                        region,
                        country,
                        continent,
                        located,
                        _pad: [0; 3],
                    },
                )
            });
            let (n, generation) = self.parts.kernel.load_cloud(entries, &maps).map_err(|e| {
                anyhow::anyhow!("writing the cloud ranges and the policy set into the kernel: {e}")
            })?;
            self.cloud_loaded = true;
            if let Some(dir) = &self.parts.cloud_dir {
                self.parts.record.cloud_ranges(
                    serde_json::json!({"dir": dir.display().to_string(), "files": cloud.files()})
                        .to_string(),
                );
                log::info!(
                    "cloud ranges in force: {n} prefixes of {} regions ({})",
                    cloud.region_details().len(),
                    cloud.summary()
                );
            }
            generation
        };
        log::info!(
            "policy set generation {generation} in force: {} policies, {} selected cgroups, {} region rules, {} allow / {} deny CIDRs, {} domain rules, {} cloud-region rules ({:.1} ms)",
            policies.len(),
            selection.len(),
            maps.region_rules.len(),
            maps.allow_cidrs.len(),
            maps.deny_cidrs.len(),
            maps.domains.len(),
            maps.cloud_rules.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        self.sweep_selection(
            selection,
            &[],
            &format!("older than generation {generation}"),
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

    /// Judges the sockets of the selected cgroups again (see `apply`),
    /// looking for them where any process under the cgroup root lives.
    fn sweep(&mut self, why: &str) {
        let selection = self.selection.clone();
        let everywhere: Vec<String> = cgroups::walk(&self.parts.mount, &self.parts.root)
            .map(|c| c.into_iter().map(|(path, _)| path).collect())
            .unwrap_or_default();
        self.sweep_selection(&selection, &everywhere, &format!("swept after {why}"));
    }

    fn sweep_selection(
        &mut self,
        selection: &BTreeMap<u64, Selected>,
        also: &[String],
        which: &str,
    ) {
        let selected: Vec<(String, u64)> = selection
            .iter()
            .map(|(id, s)| (s.path.clone(), *id))
            .collect();
        let mount = self.parts.mount.clone();
        match self.parts.kernel.sweep_sockets(&mount, &selected, also) {
            None => {}
            Some(Ok(s)) if s.judged + s.inbound > 0 => log::info!(
                "sockets {which}: {} judged in {} network namespaces, {} destroyed, {} would be (monitor), {} could not be, {} inbound left alone",
                s.judged,
                s.namespaces,
                s.destroyed,
                s.reported,
                s.failed,
                s.inbound
            ),
            Some(Ok(_)) => {}
            Some(Err(e)) => log::warn!(
                "judging the sockets {which} failed (they are judged per packet only): {e}"
            ),
        }
    }

    /// The periodic work: the cgroup tree, the kernel's losses, our links.
    fn tick(&mut self, view: &View) {
        if let Err(e) = self.rescan() {
            log::error!("cgroup rescan failed, the selection in force stays: {e:#}");
        }
        self.reload_cloud();
        if let Err(e) = self.parts.kernel.keep_clock() {
            log::error!("the kernel's counts of repeats and packets keep the clock of before the host slept: {e}");
        }
        let lost = self.parts.kernel.lost_events();
        let denials = self.parts.kernel.denials_lost();
        if lost > self.lost_reported {
            let refused = denials.saturating_sub(self.denials_lost_reported);
            log::warn!(
                "{} events lost in the kernel (ring buffer full), {lost} in all",
                lost - self.lost_reported
            );
            if refused > 0 {
                log::error!(
                    "{refused} denied, would-deny or unclassified decisions lost in the kernel ({denials} in all): even the ring buffer's reserve for them was full; raise --ring-buffer-bytes"
                );
            }
            self.parts
                .record
                .kernel_lost(lost - self.lost_reported, refused);
            self.lost_reported = lost;
            self.denials_lost_reported = denials;
        }
        match self.parts.kernel.restore_links() {
            Ok(restored) if !restored.is_empty() => {
                self.parts.record.lapsed();
                self.parts.record.watching(true);
                self.restore_failure = None;
                view.reattached
                    .fetch_add(restored.len() as u64, Ordering::Relaxed);
                log::error!(
                    "our programs {} were detached by someone else (their pins in {} were removed): attached them again; find out who (`egress-monitor uninstall` while a daemon runs refuses without --force)",
                    restored.join(", "),
                    self.parts.kernel.pin_dir().display()
                );
            }
            Ok(_) => {
                self.parts.record.watching(true);
                self.restore_failure = None;
            }
            Err(e) => {
                self.parts.record.watching(false);
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
        wake: crate::pipeline::Wakeups,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut rescan = tokio::time::interval(rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(request) = requests.recv() => match request {
                    Request::Reload { force, reply } => {
                        let result = tokio::task::block_in_place(|| self.reload_with(force));
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
                // A cgroup the kernel could not classify: walk now.
                () = wake.unclassified.notified() => {
                    if let Err(e) = tokio::task::block_in_place(|| self.rescan()) {
                        log::error!("cgroup rescan failed, the selection in force stays: {e:#}");
                    }
                }
                // A TCP packet the backstop refused: destroy its socket.
                () = wake.refused_tcp.notified() => tokio::task::block_in_place(|| self.sweep("a refused TCP packet")),
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self
    }
}
