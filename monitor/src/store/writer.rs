//! The daemon's store writer: the pipeline hands it every event it drains
//! (a send on a channel: the kernel drain never waits for the disk), and a
//! thread of its own appends batches every 100 ms or 2000 events in one
//! transaction each. It follows the kernel's event numbers (`seqbook`), so
//! what a killed run had read and not stored is counted by the next.
//!
//! When the store fails (disk full, I/O error, a damaged file) the writer
//! says so once in the log, marks the store `degraded` (status shows it),
//! keeps up to `MAX_PENDING` events in memory and retries with backoff,
//! reopening the file. A file that is not a database (or is corrupt) is
//! moved aside, never deleted, and a new store is started; the reset is
//! recorded as a gap. Enforcement never depends on any of this.
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{
    now_nanos, retention::Retention, seqbook::SeqBook, Batch, Gap, Mark, PolicySet, PolicyVersion,
    Repeat, Store,
};
use crate::events::Event;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const BATCH_EVENTS: usize = 2000;
/// Events held in memory while the store cannot take them: what the
/// pipeline lets wait (`BACKLOG`, twice for refusals), and at most
/// `MAX_PENDING_BYTES` of them.
pub const MAX_PENDING: usize = 2 * BACKLOG;
pub const MAX_PENDING_BYTES: usize = 2 * BACKLOG_BYTES;
/// Events waiting for a healthy store that falls behind (in the channel
/// and held by the writer) at most: beyond it, allowed decisions are shed,
/// counted and recorded as a `lost_for_store` gap, so that a flood cannot
/// grow the daemon's memory without bound. Refusals (denied, would-deny,
/// unclassified) are kept up to twice as many. An event waiting holds
/// about 3 KB (its strings, its share of the batches): at 100,000 the
/// daemon under a flood of new destinations held 372-427 MiB and, with its
/// kernel maps, was killed at the DaemonSet's former 512 MiB limit; at
/// 25,000 it holds 211-273 MiB (`bench pipeline`, docs/performance.md).
/// A flood sheds sooner (the store takes 20-40k events/s while two
/// generators share its cores); refusals still arrive by the kernel's
/// refusal counts.
pub const BACKLOG: usize = 25_000;
/// The memory (`Event::weight`) the events waiting for the store may hold
/// before allowed decisions are shed (refusals: twice). A count alone
/// bounds memory only as long as events weigh what they usually weigh
/// (about 1.3 KB by `weight` for a pod's process with a short command
/// line; malloc's rounding and the batches about double it): one with 100
/// arguments and 30 pod labels weighs about 9 KB, and 75,000 of those
/// waiting would pass the DaemonSet's 1 GiB limit. At typical weights the
/// count binds first.
pub const BACKLOG_BYTES: usize = 96 << 20;
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often the chain head is signed (and at shutdown): records removed
/// from the end of the store after a checkpoint are caught by export and
/// verify, and the checkpoints are the heartbeat coverage is read from.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// One harvest of the kernel's flow table (see `Batch`).
#[derive(Debug, Default)]
pub struct Harvested {
    pub repeats: Vec<Repeat>,
    pub marks: Vec<(Vec<u8>, Mark)>,
    pub unmarks: Vec<Vec<u8>>,
    /// Set on the last chunk of a complete harvest: every count the kernel
    /// made before this time (Unix ns) is in this harvest or an earlier
    /// one (`Handle::harvested`).
    pub through: Option<i64>,
}

/// Every count the kernel made before `t` (Unix ns) is stored
/// (`Handle::harvested`); it only moves forward.
fn stored_through(shared: &Shared, t: i64) {
    shared.harvested.send_if_modified(|v| {
        let later = t > *v;
        if later {
            *v = t;
        }
        later
    });
}

enum Msg {
    /// Events, and what they weigh together (`Event::weight`).
    Events(Vec<Arc<Event>>, usize),
    /// The kernel numbers (CPU, seq) of events shed for the backlog.
    Shed(Vec<(u32, u32)>),
    PolicySet(PolicySet),
    Geo(String),
    Cloud(String),
    Run(String),
    /// Events lost in the kernel, and how many of them were refusals.
    KernelLost(u64, u64),
    /// The kernel ring the events are numbered in (see `seqbook`).
    Epoch(String),
    /// Per CPU, the kernel's last number when the run began.
    Numbered(Vec<(u32, u32)>),
    Harvest(Harvested),
    Flush(oneshot::Sender<Result<(), String>>),
    /// A heartbeat now: what the programs watch changed.
    Checkpoint,
    Shutdown(oneshot::Sender<()>),
}

/// A queue's bound: events, and their weight (`Event::weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Load {
    events: usize,
    bytes: usize,
}

/// Of `v`, arriving while `waiting` waits for the store, what stays within
/// `backlog` in events and in bytes (allowed decisions) or twice both
/// (refusals), in order; returns the kernel numbers of the others, removed
/// from `v`, and the weight of those kept.
fn shed(v: &mut Vec<Arc<Event>>, waiting: Load, backlog: Load) -> (Vec<(u32, u32)>, usize) {
    let mut kept = waiting;
    let mut shed = Vec::new();
    v.retain(|e| {
        let w = e.weight();
        let times = if e.verdict == "allowed" { 1 } else { 2 };
        if kept.events < times * backlog.events && kept.bytes + w <= times * backlog.bytes {
            kept.events += 1;
            kept.bytes += w;
            true
        } else {
            shed.push((e.kernel_cpu, e.kernel_seq));
            false
        }
    });
    (shed, kept.bytes - waiting.bytes)
}

/// What events weigh together (`Event::weight`).
fn weight_of(v: &[Arc<Event>]) -> usize {
    v.iter().map(|e| e.weight()).sum()
}

/// What the daemon's programs watch, as `Shared::watching` holds it.
const NOT_YET: u8 = 0;
const ATTACHED: u8 = 1;
const DETACHED: u8 = 2;

/// What status shows.
#[derive(Debug, Clone, Default)]
pub struct StoreStatus {
    /// `ok` or `degraded`.
    pub state: String,
    pub error: String,
    pub path: PathBuf,
    pub store_id: String,
    pub stored: u64,
    pub lost_for_store: u64,
    /// Events and harvested flows not yet written: on their way to the
    /// writer or held by it (a degraded store holds them in memory).
    pub pending: u64,
    /// What the pending events weigh in memory (`Event::weight`).
    pub pending_bytes: u64,
    pub write_errors: u64,
    pub chain_seq: i64,
    pub chain_head: String,
    pub size_bytes: u64,
}

#[derive(Default)]
struct Shared {
    stored: AtomicU64,
    lost: AtomicU64,
    pending: AtomicU64,
    /// Events and harvested flows the writer holds, not stored yet
    /// (`Writer::held`).
    held: AtomicU64,
    /// What the events on their way to the writer weigh, and those it
    /// holds (`Event::weight`).
    pending_bytes: AtomicU64,
    held_bytes: AtomicU64,
    write_errors: AtomicU64,
    state: Mutex<(bool, String, String, i64, String)>, // degraded, error, store id, seq, head
    /// NOT_YET, ATTACHED or DETACHED: what the next heartbeat says.
    watching: std::sync::atomic::AtomicU8,
    /// The programs were found detached (and attached again) since the
    /// last heartbeat.
    lapsed: std::sync::atomic::AtomicBool,
    /// The chain head's seq after each commit, for the streams that follow
    /// the store (`StreamEvents` with `after_seq`).
    committed: tokio::sync::watch::Sender<i64>,
    /// Every count the kernel made before this time (Unix ns) is stored:
    /// the `through` of the last complete harvest, once what came before it
    /// is committed (0 before the first in this run).
    harvested: tokio::sync::watch::Sender<i64>,
}

pub struct Handle {
    pub path: PathBuf,
    tx: Mutex<mpsc::Sender<Msg>>,
    shared: Arc<Shared>,
}

impl Handle {
    /// Starts the writer thread on `path` (the store opens, or recovers, on it).
    /// With a node key the chain head is signed every `CHECKPOINT_EVERY`.
    pub fn start(
        path: PathBuf,
        retention: Retention,
        key: Option<ed25519_dalek::SigningKey>,
    ) -> Arc<Handle> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let w = Writer::new(path.clone(), retention, key, shared.clone());
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run(rx))
            .expect("spawn the store writer thread");
        Arc::new(Handle {
            path,
            tx: Mutex::new(tx),
            shared,
        })
    }

    /// The chain head's seq, changed at every commit.
    pub fn committed(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.committed.subscribe()
    }

    /// The time (Unix ns) before which every count the kernel made is
    /// stored: a flow minute that ends by then is complete in the store.
    pub fn harvested(&self) -> tokio::sync::watch::Receiver<i64> {
        self.shared.harvested.subscribe()
    }

    fn send(&self, m: Msg) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        // The writer only ends at shutdown.
        let _ = tx.send(m);
    }

    /// Whether the daemon's programs are attached (and the kernel
    /// decides and reports); the first call starts the heartbeats, a change
    /// is signed at once.
    pub fn watching(&self, attached: bool) {
        let now = if attached { ATTACHED } else { DETACHED };
        if self.shared.watching.swap(now, Ordering::Relaxed) != now {
            self.send(Msg::Checkpoint);
        }
    }

    /// The programs were found detached and attached again: the span since
    /// the last heartbeat was not watched throughout.
    pub fn lapsed(&self) {
        self.shared.lapsed.store(true, Ordering::Relaxed);
        self.send(Msg::Checkpoint);
    }

    /// Takes events as the pipeline drains them, in order; sheds allowed
    /// decisions beyond `BACKLOG` (see there).
    pub fn take(&self, mut v: Vec<Arc<Event>>) {
        let s = &self.shared;
        let waiting = Load {
            events: (s.pending.load(Ordering::Relaxed) + s.held.load(Ordering::Relaxed)) as usize,
            bytes: (s.pending_bytes.load(Ordering::Relaxed) + s.held_bytes.load(Ordering::Relaxed))
                as usize,
        };
        let backlog = Load {
            events: BACKLOG,
            bytes: BACKLOG_BYTES,
        };
        let (shed, bytes) = shed(&mut v, waiting, backlog);
        if !shed.is_empty() {
            self.shared
                .lost
                .fetch_add(shed.len() as u64, Ordering::Relaxed);
            self.send(Msg::Shed(shed));
        }
        if v.is_empty() {
            return;
        }
        self.shared
            .pending
            .fetch_add(v.len() as u64, Ordering::Relaxed);
        self.shared
            .pending_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.send(Msg::Events(v, bytes));
    }

    /// Records the policy set in force (called when one is applied).
    pub fn policy_set(&self, policies: &[crate::policy::CompiledPolicy], generation: u32) {
        let policies = policies
            .iter()
            .map(|p| PolicyVersion {
                name: p.name.clone(),
                mode: p.mode.to_string(),
                file: p.file.clone(),
                sha256: p.sha256.clone(),
                text: p.text.to_string(),
            })
            .collect();
        self.send(Msg::PolicySet(PolicySet {
            unix_nanos: now_nanos(),
            generation,
            policies,
        }));
    }

    /// Records the GeoIP database in use (JSON).
    pub fn geoip(&self, identity: String) {
        self.send(Msg::Geo(identity));
    }

    /// Records the cloud-range snapshot put in force (JSON).
    pub fn cloud_ranges(&self, identity: String) {
        self.send(Msg::Cloud(identity));
    }

    /// Records an agent start (JSON).
    pub fn agent_run(&self, info: String) {
        self.send(Msg::Run(info));
    }

    /// The kernel ring this run reads (sent before its first event): the
    /// writer picks up its numbering where the store left it, so what a
    /// killed run read and never stored is counted.
    pub fn kernel_epoch(&self, epoch: String) {
        self.send(Msg::Epoch(epoch));
    }

    /// Per CPU, the last number the kernel had given when this run
    /// began (sent once the ring was read the first time): a CPU silent
    /// since has its restart's loss counted now (`SeqBook::numbered`).
    pub fn kernel_numbered(&self, numbers: Vec<(u32, u32)>) {
        self.send(Msg::Numbered(numbers));
    }

    /// Records events the kernel could not queue.
    /// Queues what a harvest of the kernel's flow table found; it is
    /// written with the next batch, all or nothing.
    pub fn harvest(&self, h: Harvested) {
        self.shared
            .pending
            .fetch_add(h.repeats.len() as u64, Ordering::Relaxed);
        self.send(Msg::Harvest(h));
    }

    /// Whether more than `BACKLOG` events and harvested flows, or
    /// `BACKLOG_BYTES` of events, wait for the store: the periodic harvest
    /// then waits (the kernel keeps counting), so that a flood cannot grow
    /// the daemon's memory.
    pub fn behind(&self) -> bool {
        let s = &self.shared;
        let waiting = s.pending.load(Ordering::Relaxed) + s.held.load(Ordering::Relaxed);
        let bytes = s.pending_bytes.load(Ordering::Relaxed) + s.held_bytes.load(Ordering::Relaxed);
        waiting as usize > BACKLOG || bytes as usize > BACKLOG_BYTES
    }

    /// What was harvested of each kernel flow entry before (empty for a
    /// new store).
    pub fn flow_marks(&self) -> Result<Vec<(Vec<u8>, Mark)>, String> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        crate::store::Store::open_read(&self.path)
            .and_then(|s| s.flow_marks())
            .map_err(|e| e.to_string())
    }

    /// The policies of the last set recorded in force (file, text); empty
    /// for a new store.
    pub fn last_policy_set(&self) -> Result<Vec<(String, String)>, String> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        crate::store::Store::open_read(&self.path)
            .and_then(|s| s.last_policy_set())
            .map_err(|e| e.to_string())
    }

    /// `n` events lost in the kernel, `denials` of them refusals.
    pub fn kernel_lost(&self, n: u64, denials: u64) {
        self.send(Msg::KernelLost(n, denials));
    }

    /// Writes everything received so far; the error when the store is degraded.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Flush(tx));
        rx.await
            .map_err(|_| "the store writer has stopped".to_string())?
    }

    /// Writes what it was handed and stops the writer (the pipeline has
    /// handed over its last events before: the channel keeps their order).
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Shutdown(tx));
        tokio::time::timeout(timeout, rx).await.is_ok()
    }

    pub fn status(&self) -> StoreStatus {
        let s = &self.shared;
        let (degraded, error, store_id, seq, head) =
            s.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        StoreStatus {
            state: if degraded { "degraded" } else { "ok" }.into(),
            error,
            path: self.path.clone(),
            store_id,
            stored: s.stored.load(Ordering::Relaxed),
            lost_for_store: s.lost.load(Ordering::Relaxed),
            // On their way to the writer or held by it (a degraded store
            // holds them in memory): every event not yet written.
            pending: s.pending.load(Ordering::Relaxed) + s.held.load(Ordering::Relaxed),
            pending_bytes: s.pending_bytes.load(Ordering::Relaxed)
                + s.held_bytes.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            chain_seq: seq,
            chain_head: head,
            size_bytes: size(self.path.clone()) + size(wal),
        }
    }
}

struct Writer {
    path: PathBuf,
    shared: Arc<Shared>,
    store: Option<Store>,
    pending: Batch,
    retention: Retention,
    retry_at: Instant,
    backoff: Duration,
    dropped_while_degraded: u64,
    /// Allowed decisions the pipeline shed for the backlog, not recorded
    /// as a gap yet.
    shed_for_backlog: u64,
    degraded_since: i64,
    key: Option<ed25519_dalek::SigningKey>,
    next_checkpoint: Instant,
    /// This daemon run (its start), named in every heartbeat.
    run: i64,
    /// The kernel numbers seen (None until the daemon names its ring).
    seqs: Option<SeqBook>,
    /// Heartbeats made while the store could not be written.
    held: Vec<Held>,
    /// What the events held, not stored yet, weigh (`Event::weight`).
    held_bytes: usize,
    /// A batch whose commit reported a failure. SQLite can report one
    /// after the transaction's last frame reached the file (the disk
    /// filled, or an I/O error, past it): the next open then finds it
    /// committed. It is retried alone, under its name, and dropped if the
    /// store already has it, so nothing is written twice.
    inflight: Option<Batch>,
    /// Batches named so far in this run.
    batches: u64,
}

/// A heartbeat not written yet: when, over which head, what was watched.
#[derive(Debug, Clone)]
struct Held {
    unix_nanos: i64,
    seq: i64,
    head: [u8; 32],
    watching: &'static str,
}

/// Heartbeats held in memory at most: a day at one per `CHECKPOINT_EVERY`.
const MAX_HELD: usize = 8640;

impl Writer {
    fn new(
        path: PathBuf,
        retention: Retention,
        key: Option<ed25519_dalek::SigningKey>,
        shared: Arc<Shared>,
    ) -> Self {
        Writer {
            path,
            shared,
            store: None,
            pending: Batch::default(),
            retention,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(500),
            dropped_while_degraded: 0,
            shed_for_backlog: 0,
            degraded_since: 0,
            key,
            next_checkpoint: Instant::now() + CHECKPOINT_EVERY,
            run: now_nanos(),
            seqs: None,
            held: Vec::new(),
            held_bytes: 0,
            inflight: None,
            batches: 0,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        let mut next_retention = Instant::now() + Duration::from_secs(1);
        let _ = self.flush();
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Events(v, bytes)) => {
                    self.received(v, bytes);
                    if self.pending.events.len() >= BATCH_EVENTS {
                        let _ = self.flush();
                    }
                }
                Ok(Msg::Shed(numbers)) => self.shed(&numbers),
                Ok(Msg::Epoch(epoch)) => self.resume_numbers(epoch),
                Ok(Msg::Numbered(numbers)) => {
                    if let Some(book) = &mut self.seqs {
                        for (cpu, last) in numbers {
                            book.numbered(cpu, last);
                        }
                    }
                }
                Ok(Msg::KernelLost(n, denials)) => {
                    // Two kinds, each loss in one: what the reserve kept
                    // out, and the refusals that found even it full.
                    let at = now_nanos();
                    for (kind, count, detail) in [
                        ("lost_in_kernel", n.saturating_sub(denials), "the kernel ring buffer was full"),
                        ("denials_lost_in_kernel", denials, "denied, would-deny or unclassified decisions that found even the ring buffer's reserve for them full"),
                    ] {
                        if count > 0 {
                            self.pending.gaps.push(Gap {
                                unix_nanos: at,
                                kind: kind.into(),
                                count,
                                detail: detail.into(),
                            });
                        }
                    }
                }
                Ok(Msg::PolicySet(s)) => self.pending.policy_sets.push(s),
                Ok(Msg::Harvest(h)) => {
                    self.shared
                        .pending
                        .fetch_sub(h.repeats.len() as u64, Ordering::Relaxed);
                    self.pending.repeats.extend(h.repeats);
                    self.pending.marks.extend(h.marks);
                    self.pending.unmarks.extend(h.unmarks);
                    if h.through.is_some() {
                        self.pending.harvested_through =
                            self.pending.harvested_through.max(h.through);
                    }
                }
                Ok(Msg::Geo(g)) => self.pending.geo.push((now_nanos(), g)),
                Ok(Msg::Cloud(c)) => self.pending.cloud.push((now_nanos(), c)),
                Ok(Msg::Run(r)) => self.pending.runs.push((now_nanos(), r)),
                Ok(Msg::Flush(ack)) => {
                    self.retry_at = Instant::now();
                    let _ = ack.send(self.flush());
                }
                Ok(Msg::Checkpoint) => {
                    let _ = self.flush();
                    self.next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
                    self.checkpoint(false);
                }
                Ok(Msg::Shutdown(ack)) => {
                    self.retry_at = Instant::now();
                    let flushed = self.flush();
                    self.checkpoint(true);
                    match flushed {
                        Ok(()) => log::info!(
                            "store flushed: {} events stored in all",
                            self.shared.stored.load(Ordering::Relaxed)
                        ),
                        Err(e) => log::error!(
                            "store not flushed at exit, {} events not stored: {e}",
                            self.unstored()
                        ),
                    }
                    let _ = ack.send(());
                    return;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.flush();
                    return;
                }
            }
            if Instant::now() >= next_flush {
                let _ = self.flush();
                next_flush = Instant::now() + FLUSH_EVERY;
            }
            if Instant::now() >= self.next_checkpoint {
                self.next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
                self.checkpoint(false);
            }
            if self.retention.is_set() && Instant::now() >= next_retention {
                next_retention = Instant::now() + self.retention.interval();
                self.retain();
            }
            // What the pipeline and the harvest count against `BACKLOG`.
            self.shared
                .held
                .store(self.held() as u64, Ordering::Relaxed);
            if self.unstored() == 0 {
                // Exact whenever nothing is held, whatever was miscounted.
                self.held_bytes = 0;
            }
            self.shared
                .held_bytes
                .store(self.held_bytes as u64, Ordering::Relaxed);
        }
    }

    /// The heartbeat: signs the chain head with this run and what its
    /// programs watched since the last one (`stopping` at shutdown).
    /// Nothing before the programs are first attached.
    fn checkpoint(&mut self, stopping: bool) {
        use super::coverage::watching;
        let Some(key) = self.key.clone() else {
            return;
        };
        let state = self.shared.watching.load(Ordering::Relaxed);
        if state == NOT_YET {
            return;
        }
        let lapsed = self.shared.lapsed.swap(false, Ordering::Relaxed);
        let what = if lapsed || state == DETACHED {
            watching::DETACHED
        } else if stopping {
            watching::STOPPING
        } else {
            watching::ATTACHED
        };
        // The head the store holds now (nothing is appended while it fails).
        let (seq, head) = {
            let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut h = [0u8; 32];
            let _ = hex::decode_to_slice(&st.4, &mut h);
            (st.3, h)
        };
        let beat = Held {
            unix_nanos: now_nanos(),
            seq,
            head,
            watching: what,
        };
        // Heartbeats held while the store could not be written go first,
        // under the time they were made: a full disk does not make a
        // watched span look unwatched (a kill while they are held does).
        let mut due = std::mem::take(&mut self.held);
        due.push(beat);
        // A heartbeat does not wait for the backoff: a store that can be
        // written again takes its pending batch and then the heartbeats
        // now, not after a kill has lost them.
        if self.degraded() {
            self.retry_at = Instant::now();
            let _ = self.flush();
        }
        let degraded = self.degraded();
        let mut unwritten = due.len();
        if let Some(store) = self.store.as_mut().filter(|_| !degraded) {
            unwritten = 0;
            for (i, b) in due.iter().enumerate() {
                if let Err(e) =
                    store.checkpoint_at(&key, self.run, b.watching, b.unix_nanos, b.seq, b.head)
                {
                    log::warn!("checkpoint of the chain head failed (held in memory, written when the store can be): {e}");
                    unwritten = due.len() - i;
                    break;
                }
            }
        }
        let keep = due.split_off(due.len() - unwritten);
        self.hold(keep);
    }

    /// Keeps heartbeats to write later, the newest `MAX_HELD`.
    fn hold(&mut self, beats: Vec<Held>) {
        self.held = beats;
        if self.held.len() > MAX_HELD {
            let cut = self.held.len() - MAX_HELD;
            self.held.drain(..cut);
        }
    }

    fn retain(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.enforce_retention(&self.retention, now_nanos()) {
            Ok(r) if r.events_by_age + r.events_by_size > 0 => log::info!(
                "retention removed {} events older than the age limit and {} over the size limit",
                r.events_by_age,
                r.events_by_size
            ),
            Ok(_) => {}
            Err(e) => log::warn!("retention failed (will retry): {e}"),
        }
    }

    fn set_state(&self, degraded: bool, error: String) {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = degraded;
        s.1 = error;
    }

    fn degraded(&self) -> bool {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Opens the store; a damaged file is moved aside and a new one made.
    fn open(&mut self) -> Result<(), String> {
        match Store::open(&self.path) {
            Ok(s) => self.store = Some(s),
            Err(e) if e.is_corrupt() => {
                let aside = aside_path(&self.path, now_nanos());
                std::fs::rename(&self.path, &aside).map_err(|re| {
                    format!("{e}; moving it aside to {} failed: {re}", aside.display())
                })?;
                for ext in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{ext}", self.path.display()));
                    let _ = std::fs::rename(&side, format!("{}{ext}", aside.display()));
                }
                let msg = format!(
                    "{e}; the file was moved aside to {} and a new store (a new hash chain) was started",
                    aside.display()
                );
                log::error!("{msg}");
                self.set_state(false, format!("recovered: {msg}"));
                self.store = Some(Store::open(&self.path).map_err(|e| e.to_string())?);
                self.pending.gaps.push(Gap {
                    unix_nanos: now_nanos(),
                    kind: "store_reset".into(),
                    count: 0,
                    detail: msg,
                });
            }
            Err(e) => return Err(e.to_string()),
        }
        if let Some(s) = &self.store {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.2 = s.store_id().unwrap_or_default();
            if let Ok((seq, head)) = s.head() {
                st.3 = seq;
                st.4 = hex::encode(head);
                self.shared.committed.send_replace(seq);
            }
        }
        Ok(())
    }

    /// Picks up the kernel numbering of `epoch` where the store left it.
    fn resume_numbers(&mut self, epoch: String) {
        if self.store.is_none() {
            let _ = self.open();
        }
        let stored = self.store.as_ref().map(|s| s.kernel_seqs(&epoch));
        self.seqs = Some(match stored {
            Some(Ok(rows)) => SeqBook::resume(epoch, &rows),
            Some(Err(e)) => {
                log::warn!("cannot read what the store holds of the kernel's event numbers ({e}): events a killed daemon read and never stored are not counted this run");
                SeqBook::unknown(epoch)
            }
            None => {
                log::warn!("the store is not open: events a killed daemon read and never stored are not counted this run");
                SeqBook::unknown(epoch)
            }
        });
    }

    /// Turns the skips the numbers show into gaps, and puts what is now
    /// accounted for into the batch.
    fn account_numbers(&mut self) {
        if self.shed_for_backlog > 0 {
            self.pending.gaps.push(Gap {
                unix_nanos: now_nanos(),
                kind: "lost_for_store".into(),
                count: std::mem::take(&mut self.shed_for_backlog),
                detail: format!("decisions shed while the store fell behind: allowed ones beyond {BACKLOG} events or {} MiB waiting for it, refusals only beyond twice that", BACKLOG_BYTES >> 20),
            });
        }
        let Some(book) = &mut self.seqs else { return };
        if book.at_restart > 0 {
            self.pending.gaps.push(Gap {
                unix_nanos: now_nanos(),
                kind: "lost_at_restart".into(),
                count: book.at_restart,
                detail: "events the previous daemon run had read from the kernel and not stored when it ended (killed or crashed)".into(),
            });
        }
        if book.unexplained > 0 {
            self.pending.gaps.push(Gap {
                unix_nanos: now_nanos(),
                kind: "lost_in_daemon".into(),
                count: book.unexplained,
                detail:
                    "events the kernel numbered that never reached the store, with no known cause"
                        .into(),
            });
        }
        book.recorded();
        if !self.pending.is_empty() {
            self.pending.kernel_seqs = Some((book.epoch.clone(), book.rows()));
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        self.account_numbers();
        if self.store.is_none() || self.degraded() {
            if Instant::now() < self.retry_at {
                return Err(self
                    .shared
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .1
                    .clone());
            }
            if self.store.is_none() {
                if let Err(e) = self.open() {
                    return Err(self.fail(e));
                }
            }
        }
        if let Some(batch) = self.inflight.take() {
            self.append(batch)?;
        }
        if self.pending.is_empty() {
            // Nothing harvested waits to be written: what the harvest has
            // read is all stored.
            if let Some(t) = self.pending.harvested_through.take() {
                stored_through(&self.shared, t);
            }
            if self.degraded() {
                self.recovered();
            }
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.pending);
        self.batches += 1;
        batch.id = format!("{}:{}", self.run, self.batches);
        self.append(batch)?;
        if self.degraded() {
            self.recovered();
            return self.flush();
        }
        Ok(())
    }

    /// Events `Handle::take` sent, weighing `bytes`: no longer on their
    /// way, held.
    fn received(&mut self, v: Vec<Arc<Event>>, bytes: usize) {
        self.shared
            .pending
            .fetch_sub(v.len() as u64, Ordering::Relaxed);
        // What `Handle::take` added.
        self.shared
            .pending_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed);
        self.take_events(v, bytes);
    }

    /// Events from the pipeline, weighing `bytes`: numbered in the book,
    /// held for the next batch (up to `MAX_PENDING` while the store cannot
    /// take them).
    fn take_events(&mut self, v: Vec<Arc<Event>>, bytes: usize) {
        if let Some(book) = &mut self.seqs {
            for e in &v {
                book.saw(e.kernel_cpu, e.kernel_seq);
            }
        }
        let room = MAX_PENDING.saturating_sub(self.unstored());
        if v.len() <= room && self.held_bytes + bytes <= MAX_PENDING_BYTES {
            // All of them fit: no event is weighed again.
            self.held_bytes += bytes;
            self.pending.events.extend(v);
            return;
        }
        let mut kept = 0;
        for e in v {
            let w = e.weight();
            if kept < room && self.held_bytes + w <= MAX_PENDING_BYTES {
                kept += 1;
                self.held_bytes += w;
                self.pending.events.push(e);
            } else {
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
                self.dropped_while_degraded += 1;
            }
        }
    }

    /// Events the pipeline shed for the backlog: accounted for in the book
    /// (not a loss with no known cause), and a gap at the next batch.
    fn shed(&mut self, numbers: &[(u32, u32)]) {
        if let Some(book) = &mut self.seqs {
            for &(cpu, seq) in numbers {
                book.saw(cpu, seq);
            }
        }
        self.shed_for_backlog += numbers.len() as u64;
    }

    /// Events held in memory, not stored yet.
    fn unstored(&self) -> usize {
        self.pending.events.len() + self.inflight.as_ref().map_or(0, |b| b.events.len())
    }

    /// Events and harvested flows held, not stored yet (`Shared::held`).
    fn held(&self) -> usize {
        self.unstored()
            + self.pending.repeats.len()
            + self.inflight.as_ref().map_or(0, |b| b.repeats.len())
    }

    /// Writes a named batch, unless the store has it already (a commit
    /// that reported a failure and was written); on failure it is kept as
    /// `inflight` for the next try.
    fn append(&mut self, batch: Batch) -> Result<(), String> {
        let store = self.store.as_mut().expect("opened by flush");
        let result = match store.last_batch() {
            Ok(last) if last == batch.id => {
                log::warn!(
                    "store: batch {} ({} events) had been written although its commit reported a failure; it is not written again",
                    batch.id,
                    batch.events.len()
                );
                Ok(())
            }
            Ok(_) => store.append(&batch),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                let n = batch.events.len() as u64;
                if let Some(t) = batch.harvested_through {
                    stored_through(&self.shared, t);
                }
                self.shared.stored.fetch_add(n, Ordering::Relaxed);
                self.held_bytes = self.held_bytes.saturating_sub(weight_of(&batch.events));
                if let Ok((seq, head)) = store.head() {
                    let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.3 = seq;
                    st.4 = hex::encode(head);
                    self.shared.committed.send_replace(seq);
                }
                Ok(())
            }
            Err(e) => {
                self.inflight = Some(batch);
                // Reopen on the next try: a failed connection may stay
                // failed, and a new one finds a commit the failed one
                // wrote.
                self.store = None;
                Err(self.fail(e.to_string()))
            }
        }
    }

    fn recovered(&mut self) {
        let since = self.degraded_since;
        log::info!(
            "store recovered: writing again to {} ({} events could not be kept while degraded)",
            self.path.display(),
            self.dropped_while_degraded
        );
        if self.dropped_while_degraded > 0 {
            self.pending.gaps.push(Gap {
                unix_nanos: since,
                kind: "store_degraded".into(),
                count: self.dropped_while_degraded,
                detail: format!(
                    "store degraded from {} to {}; events beyond the {MAX_PENDING} (or {} MiB) held in memory were dropped",
                    crate::events::rfc3339_nanos(i128::from(since)),
                    crate::events::rfc3339_nanos(i128::from(now_nanos())),
                    MAX_PENDING_BYTES >> 20
                ),
            });
        }
        self.dropped_while_degraded = 0;
        self.backoff = Duration::from_millis(500);
        self.set_state(false, String::new());
        if !self.held.is_empty() {
            // What was watched while the store could not be written.
            self.checkpoint(false);
        }
    }

    fn fail(&mut self, e: String) -> String {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        if !self.degraded() {
            self.degraded_since = now_nanos();
            log::error!(
                "store degraded, events are held in memory (up to {MAX_PENDING}) and enforcement continues: {e}"
            );
        }
        self.set_state(true, e.clone());
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        e
    }
}

/// Where a damaged store is moved: beside it, named with the UTC time it
/// was found (`store.db.corrupt-2026-12-05T12-44-38Z`; no colons, which
/// some tools read as a host), a number after it when that name is taken.
fn aside_path(path: &std::path::Path, now: i64) -> PathBuf {
    let at = crate::events::rfc3339_nanos(i128::from(now));
    // `2026-12-05T12:44:38.123456789Z` to the second.
    let stamp = format!("{}Z", at.get(..19).unwrap_or(&at).replace(':', "-"));
    let base = format!("{}.corrupt-{stamp}", path.display());
    (1..100)
        .map(|n| {
            if n == 1 {
                PathBuf::from(&base)
            } else {
                PathBuf::from(format!("{base}-{n}"))
            }
        })
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| PathBuf::from(format!("{base}-{now}")))
}

#[cfg(test)]
mod tests {
    /// The damaged store's new name says when, readably, and never
    /// replaces an earlier one found in the same second.
    #[test]
    fn a_corrupt_store_is_named_with_a_readable_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("store.db");
        // 2026-11-22T00:45:41.5Z
        let t = 1_795_308_341_500_000_000;
        let first = super::aside_path(&db, t);
        assert_eq!(
            first.file_name().unwrap(),
            "store.db.corrupt-2026-11-22T00-45-41Z"
        );
        std::fs::write(&first, b"x").unwrap();
        assert_eq!(
            super::aside_path(&db, t).file_name().unwrap(),
            "store.db.corrupt-2026-11-22T00-45-41Z-2"
        );
    }

    use super::*;

    /// The store records the text that was compiled, even when the file
    /// changed since (a rejected new version while the old one stays in
    /// force).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_recorded_policy_text_is_the_compiled_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let v1 = "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: p}\nspec:\n  mode: enforce\n  selector:\n    cgroupPaths: [\"/x\"]\n  allow:\n    countries: [DE]\n";
        std::fs::write(&file, v1).unwrap();
        let compiled = crate::policy::compile_file(&file).unwrap();
        // The file changes (to something broken) after it was compiled.
        std::fs::write(&file, "apiVersion: [\n").unwrap();
        let path = dir.path().join("store.db");
        let handle = Handle::start(path.clone(), Retention::default(), None);
        handle.policy_set(&compiled, 1);
        handle.flush().await.unwrap();
        let store = super::super::Store::open_read(&path).unwrap();
        let text: String = store
            .conn
            .query_row("SELECT text FROM policy_versions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(text.trim_end(), v1.trim_end());
    }

    /// A complete harvest's `through` is said once what it handed the
    /// store is committed, with it or without anything to write; it never
    /// goes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_harvest_read_is_said_stored_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let handle = Handle::start(path.clone(), Retention::default(), None);
        let harvested = handle.harvested();
        assert_eq!(*harvested.borrow(), 0);
        // Counts and the watermark together.
        let event = Event {
            verdict: "allowed",
            unix_nanos: 5_000_000_000,
            dst_ip: "198.51.100.7".into(),
            dst_port: 443,
            ..Default::default()
        };
        handle.harvest(Harvested {
            repeats: vec![Repeat {
                event,
                count: 3,
                packets: 4,
                bytes: 500,
            }],
            through: Some(7_000_000_000),
            ..Default::default()
        });
        handle.flush().await.unwrap();
        assert_eq!(*harvested.borrow(), 7_000_000_000);
        let store = super::super::Store::open_read(&path).unwrap();
        let repeats: i64 = store
            .conn
            .query_row("SELECT sum(repeats) FROM flows", [], |r| r.get(0))
            .unwrap();
        assert_eq!(repeats, 3, "the counts are stored by then");
        // A pass that found nothing new: only the watermark moves.
        handle.harvest(Harvested {
            through: Some(9_000_000_000),
            ..Default::default()
        });
        handle.flush().await.unwrap();
        assert_eq!(*harvested.borrow(), 9_000_000_000);
        // An older one (a pass that began earlier) changes nothing.
        handle.harvest(Harvested {
            through: Some(8_000_000_000),
            ..Default::default()
        });
        handle.flush().await.unwrap();
        assert_eq!(*harvested.borrow(), 9_000_000_000);
    }

    fn events(n: u16) -> Vec<Arc<Event>> {
        (1..=n)
            .map(|i| {
                Arc::new(Event {
                    verdict: "allowed",
                    dst_port: i,
                    unix_nanos: i128::from(i),
                    ..Default::default()
                })
            })
            .collect()
    }

    fn stored(path: &std::path::Path) -> i64 {
        let store = super::super::Store::open_read(path).unwrap();
        store
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    fn numbered(verdicts: &[&'static str], first_seq: u32) -> Vec<Arc<Event>> {
        verdicts
            .iter()
            .zip(first_seq..)
            .map(|(v, seq)| {
                Arc::new(Event {
                    verdict: v,
                    kernel_cpu: 0,
                    kernel_seq: seq,
                    unix_nanos: i128::from(seq),
                    ..Default::default()
                })
            })
            .collect()
    }

    /// What waits for the store is weighed on its way (`Handle::take`),
    /// while the writer holds it, and is weightless once stored: nothing is
    /// left over to shed good events later.
    #[test]
    fn the_weight_waiting_returns_to_zero_once_stored() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let handle = Handle {
            path: dir.path().join("store.db"),
            tx: Mutex::new(tx),
            shared: shared.clone(),
        };
        let mut w = Writer::new(
            handle.path.clone(),
            Retention::default(),
            None,
            shared.clone(),
        );
        let v = numbered(&["allowed", "denied", "allowed"], 1);
        let weight = weight_of(&v);
        handle.take(v);
        assert_eq!(shared.pending_bytes.load(Ordering::Relaxed), weight as u64);
        let Ok(Msg::Events(v, bytes)) = rx.try_recv() else {
            panic!("the events were sent to the writer");
        };
        assert_eq!(bytes, weight);
        w.received(v, bytes);
        assert_eq!(shared.pending_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(w.held_bytes, weight);
        w.flush().unwrap();
        assert_eq!(w.held_bytes, 0);
        assert_eq!(shared.stored.load(Ordering::Relaxed), 3);
    }

    /// A writer on `path`, run by hand (no thread).
    fn writer(path: &std::path::Path) -> Writer {
        Writer::new(
            path.to_path_buf(),
            Retention::default(),
            None,
            Arc::new(Shared::default()),
        )
    }

    /// Beyond the backlog, allowed decisions are shed and refusals kept
    /// (up to twice the backlog), in order.
    #[test]
    fn a_backlog_sheds_allowed_decisions_and_keeps_refusals() {
        let mut v = numbered(
            &["allowed", "denied", "allowed", "would_deny", "allowed"],
            1,
        );
        let events = |events| Load { events, bytes: 0 };
        let ten = Load {
            events: 10,
            bytes: usize::MAX / 4,
        };
        let (none, bytes) = shed(&mut v, events(0), ten);
        assert!(none.is_empty(), "within the backlog");
        assert_eq!(v.len(), 5);
        assert_eq!(bytes, weight_of(&v), "the weight of what was kept");
        // 8 waiting: room for 2 more, refusals counted in it; 12 for
        // refusals.
        let (shed_now, _) = shed(&mut v, events(8), ten);
        assert_eq!(shed_now, [(0, 3), (0, 5)], "the allowed ones past the room");
        let verdicts: Vec<_> = v.iter().map(|e| e.verdict).collect();
        assert_eq!(verdicts, ["allowed", "denied", "would_deny"]);
        // Beyond twice the backlog even refusals go.
        let mut v = numbered(&["denied", "allowed"], 1);
        assert_eq!(shed(&mut v, events(20), ten).0, [(0, 1), (0, 2)]);
        assert!(v.is_empty());
    }

    /// The backlog is memory as well as a count: heavy events (a full
    /// argument vector, many pod labels) are shed by their weight long
    /// before their number reaches the backlog; refusals get twice the
    /// bytes too.
    #[test]
    fn heavy_events_are_shed_by_their_weight() {
        let heavy = |verdict, seq| {
            let mut e = (*numbered(&[verdict], seq)[0]).clone();
            e.args = (0..100).map(|i| format!("--argument-{i:04}")).collect();
            e.pod_labels = (0..30)
                .map(|i| (format!("app.kubernetes.io/label-{i}"), "x".repeat(60)))
                .collect();
            Arc::new(e)
        };
        let w = heavy("allowed", 1).weight();
        let light = numbered(&["allowed"], 1)[0].weight();
        assert!(w > 3 * light, "{w} vs {light}");
        // Room for 3 heavy ones in bytes, for 1,000 in number.
        let backlog = Load {
            events: 1000,
            bytes: 3 * w + w / 2,
        };
        let mut v: Vec<_> = (1..=5).map(|i| heavy("allowed", i)).collect();
        let (shed_now, kept) = shed(
            &mut v,
            Load {
                events: 0,
                bytes: 0,
            },
            backlog,
        );
        assert_eq!(shed_now, [(0, 4), (0, 5)]);
        assert_eq!((v.len(), kept), (3, 3 * w));
        // With those waiting, a denial still finds room (twice the bytes),
        // an allowed decision does not.
        let waiting = Load {
            events: 3,
            bytes: kept,
        };
        let mut v = vec![heavy("allowed", 6), heavy("denied", 7)];
        let (shed_now, _) = shed(&mut v, waiting, backlog);
        assert_eq!(shed_now, [(0, 6)]);
        assert_eq!(v[0].verdict, "denied");
    }

    /// While the store cannot take them, the writer holds at most
    /// `MAX_PENDING` events: what comes beyond is counted lost, one by one,
    /// and only what is held is weighed as held.
    #[test]
    fn what_is_held_stops_at_its_bound_and_the_rest_is_counted_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(&dir.path().join("store.db"));
        let take = |w: &mut Writer, v: Vec<Arc<Event>>| {
            let bytes = weight_of(&v);
            w.take_events(v, bytes);
        };
        let first = numbered(&vec!["allowed"; MAX_PENDING - 1], 1);
        let held = weight_of(&first);
        take(&mut w, first);
        assert_eq!(w.unstored(), MAX_PENDING - 1);
        assert_eq!(w.held_bytes, held);
        let more = numbered(&["denied"; 3], MAX_PENDING as u32);
        let one = more[0].weight();
        take(&mut w, more);
        assert_eq!(w.unstored(), MAX_PENDING);
        assert_eq!(w.held_bytes, held + one);
        assert_eq!(w.shared.lost.load(Ordering::Relaxed), 2);
        assert_eq!(w.dropped_while_degraded, 2);
    }

    /// Shed events are accounted for: one `lost_for_store` gap with their
    /// count, and no loss "with no known cause" for their numbers.
    #[test]
    fn shed_events_are_a_gap_of_their_own_not_an_unexplained_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut w = writer(&path);
        w.resume_numbers("epoch-1".into());
        let take = |w: &mut Writer, v: Vec<Arc<Event>>| {
            let bytes = weight_of(&v);
            w.take_events(v, bytes);
        };
        take(&mut w, numbered(&["allowed", "denied"], 1));
        w.shed(&[(0, 3), (0, 4)]);
        take(&mut w, numbered(&["denied"], 5));
        w.flush().unwrap();
        assert_eq!(stored(&path), 3);
        let store = super::super::Store::open_read(&path).unwrap();
        let gaps: Vec<(String, i64)> = store
            .conn
            .prepare("SELECT kind, count FROM gaps ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(gaps, [("lost_for_store".to_string(), 2)]);
    }

    /// A commit that reported a failure may have been written (SQLite can
    /// fail after the transaction's last frame is in the file): the retry
    /// finds the batch by its name and does not write it again; a batch
    /// that was not written is.
    #[test]
    fn a_batch_whose_failed_commit_was_written_is_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut w = writer(&path);
        w.pending.events = events(3);
        w.flush().unwrap();
        assert_eq!(stored(&path), 3);

        // The failed commit that was written all the same.
        let ghost = Batch {
            events: events(5),
            id: format!("{}:{}", w.run, 99),
            ..Default::default()
        };
        super::super::Store::open(&path)
            .unwrap()
            .append(&ghost)
            .unwrap();
        w.inflight = Some(ghost);
        w.store = None;
        w.pending.events = events(2);
        w.flush().unwrap();
        assert_eq!(
            stored(&path),
            3 + 5 + 2,
            "the written batch is not written again"
        );
        assert!(w.inflight.is_none());

        // A failed commit that was not written is retried.
        w.inflight = Some(Batch {
            events: events(4),
            id: format!("{}:{}", w.run, 100),
            ..Default::default()
        });
        w.store = None;
        w.flush().unwrap();
        assert_eq!(stored(&path), 3 + 5 + 2 + 4);
        assert_eq!(w.shared.stored.load(Ordering::Relaxed), 3 + 5 + 2 + 4);
    }
}
