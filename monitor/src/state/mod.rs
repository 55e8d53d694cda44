//! The read side of the daemon: what the API, the metrics endpoint and the
//! event pipeline may look at, never change.
//!
//! The controller (`control`) publishes a new [`PolicySnapshot`] after every
//! reload and rescan through a `watch` channel; readers take the latest one
//! without waiting for a reload in progress. Counters are atomics the
//! pipeline and the stream clients bump. What only the kernel knows (events
//! it lost, the programs attached right now) is read from the kernel at the
//! moment it is asked, through [`KernelProbe`].
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use tokio::sync::{oneshot, watch};

use crate::{geo::GeoIdentity, policy::CompiledPolicy};

/// A policy in force, with the cgroups it selects now.
#[derive(Debug, Clone)]
pub struct PolicyInForce {
    pub policy: CompiledPolicy,
    /// Paths (relative to the cgroup2 mount) of the cgroups it selects.
    pub selected: Vec<String>,
}

/// A policy file the daemon refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedFile {
    pub file: String,
    /// `file:line: reason`.
    pub error: String,
    /// Whether its previous version stays in force.
    pub previous_in_force: bool,
}

/// The policy set in force, as the controller last published it.
#[derive(Debug, Clone, Default)]
pub struct PolicySnapshot {
    pub generation: u32,
    pub policies: Vec<PolicyInForce>,
    pub rejected_files: Vec<RejectedFile>,
    /// Why the last candidate set was refused as a whole (one name twice,
    /// too big for the maps); empty
    /// when the last reload took effect.
    pub refused: String,
    pub selected_cgroups: usize,
    pub geo: Option<GeoIdentity>,
    pub cgroup_root: PathBuf,
    pub policy_dir: PathBuf,
    /// The cloud ranges in force (empty without `--cloud-ranges`), their
    /// directory, and why the last candidate snapshot was rejected.
    pub cloud: Arc<crate::cloud::CloudRanges>,
    pub cloud_dir: Option<PathBuf>,
    pub cloud_error: String,
    /// Cgroups several policies select, and which judges each (see
    /// `cgroups::resolve`).
    pub conflicts: Vec<String>,
    /// Rules of the set in force that no loaded data can judge (cloud
    /// regions without cloud ranges, domains without a trusted resolver).
    pub data_missing: Vec<crate::policy::lint::Missing>,
}

/// A program as the kernel shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub hook: &'static str,
    pub program_id: u32,
    pub link_id: u32,
}

/// What only the kernel can tell, asked at the moment it is needed.
pub trait KernelProbe: Send + Sync {
    /// Events the kernel could not queue (ring buffer full), all CPUs,
    /// the refusals among them included.
    fn lost_events(&self) -> u64;
    /// Of those, decisions that are not "allow" (denied, would-deny,
    /// unclassified): they found even the ring's reserve full.
    fn denials_lost(&self) -> u64 {
        0
    }
    /// Execs the kernel's process table had no room for, all CPUs.
    fn processes_lost(&self) -> u64 {
        0
    }
    /// Our programs as the kernel has them now (not as remembered).
    fn programs(&self) -> Programs;
    /// The kernel's DNS counters by name (`monitor_common::dns::stat`).
    fn dns_stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// The kernel's flow-table counters by name (`monitor_common::flow_stat`).
    fn flow_stats(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Entries the kernel's flow table holds at most.
    fn flow_capacity(&self) -> u64 {
        0
    }
}

/// Our programs, asked of the kernel in one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Programs {
    /// Attached and running.
    pub attached: Vec<Program>,
    /// Expected by the daemon but no longer run by the kernel.
    pub missing: Vec<&'static str>,
}

/// Decisions the pipeline has seen, by verdict, and records it could not
/// decode.
#[derive(Debug, Default)]
pub struct Counters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub would_deny: AtomicU64,
    /// Drift alerts raised (see `pipeline::drift`).
    pub drift: AtomicU64,
    pub undecodable: AtomicU64,
    /// DNS answers the kernel learned from that the daemon could not read.
    pub dns_unparsed: AtomicU64,
    /// Entries in the kernel's flow table: at the last whole read, and the
    /// entries filed since.
    pub flow_entries: AtomicU64,
    /// Milliseconds from one harvest's start to the next (0 before the
    /// first): `HARVEST_EVERY`, or `pipeline::harvest::interval_after`
    /// where the kernel lists no changes.
    pub harvest_interval_ms: AtomicU64,
    /// Harvest reads of the whole flow tables, and of the entries the
    /// kernel listed as changed (`pipeline::harvest`).
    pub harvest_reads_whole: AtomicU64,
    pub harvest_reads_changed: AtomicU64,
    /// Milliseconds the last whole read took to walk the tables, and from
    /// it to the next whole read (0 where every read is whole).
    pub harvest_whole_read_ms: AtomicU64,
    pub harvest_whole_every_ms: AtomicU64,
    /// Attempts the kernel counted in its flow table instead of reporting.
    pub repeats: AtomicU64,
}

/// The event stream clients.
#[derive(Debug, Default)]
pub struct Streams {
    /// Connected now.
    pub clients: AtomicU64,
    /// Matching events clients missed because they read too slowly.
    pub missed: AtomicU64,
}

/// Everything a reader may look at. Cheap to clone.
#[derive(Clone)]
pub struct View {
    policy: watch::Receiver<Arc<PolicySnapshot>>,
    pub counters: Arc<Counters>,
    pub streams: Arc<Streams>,
    pub kernel: Arc<dyn KernelProbe>,
    pub started: SystemTime,
    /// Links the controller found detached and attached again.
    pub reattached: Arc<AtomicU64>,
    /// Where container metadata comes from (`containers::Containers::status`).
    pub containers: Arc<std::sync::RwLock<String>>,
}

impl View {
    pub fn new(policy: watch::Receiver<Arc<PolicySnapshot>>, kernel: Arc<dyn KernelProbe>) -> Self {
        Self {
            policy,
            counters: Arc::default(),
            streams: Arc::default(),
            kernel,
            started: SystemTime::now(),
            reattached: Arc::default(),
            containers: Arc::default(),
        }
    }

    /// The policy set in force now; never waits for a reload.
    pub fn policy(&self) -> Arc<PolicySnapshot> {
        self.policy.borrow().clone()
    }

    /// The policy set in force, as it changes.
    pub fn policy_watch(&self) -> watch::Receiver<Arc<PolicySnapshot>> {
        self.policy.clone()
    }

    pub fn decisions(&self) -> (u64, u64, u64) {
        let c = &self.counters;
        (
            c.allowed.load(Ordering::Relaxed),
            c.denied.load(Ordering::Relaxed),
            c.would_deny.load(Ordering::Relaxed),
        )
    }
}

/// Why a reload did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The candidate set was refused as a whole (a conflict, too big for
    /// the maps); the set in force stays.
    #[error("{0}")]
    Refused(String),
    /// Something failed on the way (the directory, the cgroup tree, the
    /// kernel).
    #[error("{0}")]
    Failed(String),
    /// No controller answers (the daemon is stopping).
    #[error("{0}")]
    Stopped(String),
}

/// What reloading answers: the snapshot that took effect, or why nothing did.
pub type ReloadResult = Result<Reloaded, ReloadError>;

/// What a reload left in force, and whether it made a new generation.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub snapshot: Arc<PolicySnapshot>,
    pub changed: bool,
}

/// A request to the controller; the reply comes on the channel inside.
#[derive(Debug)]
pub enum Request {
    /// Re-read the policy directory now; `force` writes the set again
    /// even when nothing changed.
    Reload {
        force: bool,
        reply: oneshot::Sender<ReloadResult>,
    },
}

/// Sends requests to the controller.
#[derive(Clone, Debug)]
pub struct Requests(pub tokio::sync::mpsc::Sender<Request>);

impl Requests {
    /// Asks for a reload and waits for its outcome.
    pub async fn reload(&self, force: bool) -> ReloadResult {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Request::Reload { force, reply: tx })
            .await
            .map_err(|_| ReloadError::Stopped("the controller has stopped".into()))?;
        rx.await
            .map_err(|_| ReloadError::Stopped("the controller stopped during the reload".into()))?
    }
}

#[cfg(test)]
pub mod fake {
    //! A kernel and a controller for unit tests of the readers.
    use super::*;

    #[derive(Default)]
    pub struct FakeKernel {
        pub lost: AtomicU64,
        pub programs: std::sync::Mutex<Vec<Program>>,
    }

    impl KernelProbe for FakeKernel {
        fn lost_events(&self) -> u64 {
            self.lost.load(Ordering::Relaxed)
        }
        fn programs(&self) -> Programs {
            Programs {
                attached: self.programs.lock().unwrap().clone(),
                missing: Vec::new(),
            }
        }
    }

    /// A view over a fake kernel, and the sender its snapshots come from.
    pub fn view(
        snapshot: PolicySnapshot,
    ) -> (View, watch::Sender<Arc<PolicySnapshot>>, Arc<FakeKernel>) {
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        let kernel = Arc::new(FakeKernel::default());
        (View::new(rx, kernel.clone()), tx, kernel)
    }
}
