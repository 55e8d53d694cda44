//! The flow harvest: the second way the kernel reports. A repeated
//! attempt (the same cgroup, destination, port and protocol, decided the
//! same way) is not an event; the kernel counts it in its flow table
//! (`FLOWS`, see `monitor_common::FlowEntry`), with the packets and bytes
//! the egress program passed. This reads the table on a short interval and
//! at shutdown and hands the store what each entry counted since the last
//! harvest, together with what is now harvested of it (its mark), in one
//! transaction. The counters stay in the pinned map until then, so a
//! daemon killed with SIGKILL loses none: the next one starts from the
//! marks the store kept. Entries idle for `IDLE` with nothing left to
//! harvest are removed, which keeps the table for the flows in use.
//!
//! Refusals the full flow table had no room for are counted in a table of
//! their own (`REFUSALS`), which allowed flows cannot fill; it is read the
//! same way, its entries told apart in the store by the key's pad byte
//! (`Table`).
//!
//! Most harvests read only the entries that changed: the kernel writes an
//! entry's key into `TOUCHED` at its first change after each harvest
//! (`monitor_common::harvest`, `Follow`). A whole read of both tables
//! comes at longer intervals (`whole_interval_after`), and whenever the
//! kernel's list may be incomplete: at the start, or after keys the ring
//! had no room for. Where more changed than a read by key takes (a flood),
//! whole reads are spaced by `interval_after` instead. Only a whole read
//! finds the entries that are gone and removes the idle ones.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    path::Path,
    sync::{atomic::Ordering, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use monitor_common::{
    flow_stat, harvest as gen, kind, limits, names, DecisionEvent, EventHeader, FlowEntry, FlowKey,
    DECISION_VERSION,
};

use super::Outlets;
use crate::{
    events::{boot_to_unix_offset, enrich, Names},
    store::{writer::Harvested, Mark, Repeat},
};

/// How often the flow table is read while reading it is cheap, and how
/// often a harvest that follows the kernel's changes runs.
pub const HARVEST_EVERY: Duration = Duration::from_secs(1);
/// Where every harvest reads the whole tables (pins of a build before
/// `TOUCHED`, or more changed than a harvest follows: `Read::Whole`'s
/// `load`), the time such a read spent on entries that had not changed is
/// followed by this many times as long before the next (about 190 ms for
/// 262,144 entries on the bench machine, most of it the kernel's walk of
/// the buckets): 2% of a core.
pub const HARVEST_BUDGET: u32 = 50;
/// The longest interval `HARVEST_BUDGET` may stretch that harvest to: the
/// most the store's flow counts (and `flows`, `top`) lag the kernel's.
pub const HARVEST_MOST: Duration = Duration::from_secs(10);
/// Where the harvest follows the kernel's changes (every second), the
/// whole reads that remain (entries gone, idle ones removed, and a check
/// behind the kernel's list) keep to this budget: 0.2% of a core.
pub const WHOLE_BUDGET: u32 = 500;
/// The longest `WHOLE_BUDGET` stretches the time between two whole reads.
pub const WHOLE_MOST: Duration = Duration::from_secs(3600);
/// The least time between two whole reads unless the daemon says
/// (`--flow-whole-read-interval`'s default).
pub const WHOLE_EVERY: Duration = Duration::from_secs(60);
/// The most keys a followed harvest takes (each read from both tables,
/// one lookup each, the refusal table once it holds any); more changed
/// since the last harvest and it reads the whole tables instead, spaced
/// by `interval_after`.
pub const FOLLOW_MOST: usize = CHUNK / 2;

/// The time from one pass's start to the next where every pass reads the
/// whole tables, after a pass that took `took` reading `read` entries of
/// which `unchanged` had nothing new: `HARVEST_EVERY`, or longer where
/// reading what had not changed costs more than `1/HARVEST_BUDGET` of a
/// core at that pace, up to `HARVEST_MOST`. The time spent on changes is
/// not held against the harvest: after a flood it catches up at its full
/// pace (the counts of refusals among them reach the store as soon as the
/// store takes them).
pub fn interval_after(took: Duration, read: u64, unchanged: u64) -> Duration {
    spaced(took, read, unchanged, HARVEST_BUDGET, HARVEST_MOST)
}

/// The time from a whole read's start to the next whole read where the
/// harvests between them follow the kernel's changes: `least`
/// (`--flow-whole-read-interval`), or longer where reading what had not
/// changed costs more than `1/WHOLE_BUDGET` of a core at that pace, up
/// to `WHOLE_MOST`.
pub fn whole_interval_after(
    took: Duration,
    read: u64,
    unchanged: u64,
    least: Duration,
) -> Duration {
    spaced(took, read, unchanged, WHOLE_BUDGET, WHOLE_MOST).max(least)
}

fn spaced(took: Duration, read: u64, unchanged: u64, budget: u32, most: Duration) -> Duration {
    if read == 0 {
        // No read of the tables: the pass took what an earlier read left
        // (all of it changes), or it could not start.
        return HARVEST_EVERY;
    }
    took.mul_f64(unchanged.min(read) as f64 / read as f64)
        .saturating_mul(budget)
        .clamp(HARVEST_EVERY, most)
}

/// The most entries one pass hands the store (see `Harvest::pass`).
pub const CHUNK: usize = 8192;
/// The most entries a read leaves for the chunks after it (`leftover`):
/// 6 MiB of keys and entries. Beyond it, an entry keeps its mark and its
/// counts wait in the kernel's table for the next read. In a flood every
/// entry changes, and unbounded, what a read left was most of the table
/// (up to 262,144 entries, 46 MiB): 29 MiB of the daemon's heap at its
/// peak in `bench pipeline` (heaptrack). The price: in a flood the table
/// is read once every five chunks instead of once for all of them.
pub const LEFTOVER_MOST: usize = 4 * CHUNK;
/// The most chunks one harvest makes: the flow table and the refusal table
/// at the largest `--flow-table-entries`, with room to spare.
pub const MAX_CHUNKS: usize = 2 * (limits::MAX_FLOW_ENTRIES as usize).div_ceil(CHUNK) + 2;
/// An entry unused this long, with nothing left to harvest, is removed (the
/// next attempt decides anew, with an event).
pub const IDLE: Duration = Duration::from_secs(120);
/// Longer than a hook's run from its clock read (an entry's `first_ns`) to
/// its last commit to the ring (the process record comes in between).
const SETTLE_NS: u64 = 10_000_000;

/// A kernel table of flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `FLOWS`: every decision, while it has room.
    Flows = 0,
    /// `REFUSALS`: decisions that are not "allow" `FLOWS` had no room for.
    Refusals = 1,
}

/// One pinned table of flows, opened twice.
struct Pinned {
    table: Table,
    map: HashMap<MapData, FlowKey, FlowEntry>,
    /// A second descriptor of the same map, for batched reads.
    raw: MapData,
}

impl Pinned {
    fn open(pin_dir: &Path, table: Table) -> Result<Self, String> {
        let (name, what) = match table {
            Table::Flows => (names::FLOWS, "flow table"),
            Table::Refusals => (names::REFUSALS, "refusal table"),
        };
        let path = pin_dir.join(name);
        let open = || {
            MapData::from_pin(&path)
                .map_err(|e| format!("opening the {what} {}: {e}", path.display()))
        };
        let map = HashMap::try_from(aya::maps::Map::HashMap(open()?))
            .map_err(|e| format!("the {what} {}: {e}", path.display()))?;
        Ok(Self {
            table,
            map,
            raw: open()?,
        })
    }

    /// Every entry of the table as it is now, to `each`: read in batches
    /// of 4096 entries per syscall (`BPF_MAP_LOOKUP_BATCH`), handed on
    /// batch by batch (a whole table of 262,144 entries held at once is 23
    /// MB more memory every second); where the kernel refuses batches, one
    /// entry at a time. Whether every entry was handed on: a batched read
    /// that fails midway leaves the rest unread.
    fn each(&self, each: &mut dyn FnMut(FlowKey, FlowEntry)) -> bool {
        let mut handed = false;
        let read = lookup_batch(&self.raw, &mut |k, e| {
            handed = true;
            each(k, e);
        });
        match read {
            Ok(()) => true,
            Err(e) if !handed => {
                log::warn!(
                    "batched read of the {:?} table failed ({e}); reading it entry by entry",
                    self.table
                );
                for (k, e) in self.map.iter().filter_map(Result::ok) {
                    each(k, e);
                }
                true
            }
            Err(e) => {
                log::warn!(
                    "batched read of the {:?} table failed midway ({e}): the rest is harvested next time",
                    self.table
                );
                false
            }
        }
    }
}

/// The kernel's list of the flow entries that changed (`TOUCHED`, and
/// `HARVEST`'s generation and missed keys; see `monitor_common::harvest`).
struct Follow {
    ring: RingBuf<MapData>,
    state: Array<MapData, u64>,
    /// The generation raised last.
    gen: u64,
    /// `MISSED` as read after `gen` was raised.
    missed: u64,
    /// Keys to read again at the next two harvests: those the ring gave at
    /// the last raise, and those whose counts waited for the ring. A key is
    /// written once per generation, at the entry's first change in it, and
    /// that is often between a raise and its read of the ring (a busy
    /// flow's next packet); its later changes in that generation write
    /// nothing, so the next harvest must read the entry without its key.
    /// The one after covers a hook that read the generation before a raise
    /// and added to its entry after the harvest read it.
    again: Vec<FlowKey>,
    /// `again` of the raise before.
    again_before: Vec<FlowKey>,
    /// Whether the ring holds every change since the last raise: a whole
    /// read came after the harvest (re)started following, and no key was
    /// missed since.
    armed: bool,
    /// When the next whole read is due.
    whole_due: Instant,
    /// Whether the next read is whole for load too: this one found more
    /// keys than a read by key takes, and keeps none of them.
    load_next: bool,
    /// The kernel's flow counters (`flow_stat`), for entries filed since
    /// the last whole read: the table's fill between whole reads is
    /// `entries_base` and those (an entry filed during a whole read may
    /// count twice until the next).
    stats: Option<PerCpuArray<MapData, u64>>,
    entries_base: u64,
    filed_base: u64,
}

/// What a harvest reads: the whole tables, or the entries of these keys.
enum Read {
    /// The whole tables; `load`: because more changed than the ring or a
    /// read by key takes (then whole reads are spaced as where the kernel
    /// lists no changes: `interval_after`).
    Whole {
        load: bool,
    },
    Keys(Vec<FlowKey>),
}

impl Follow {
    fn open(pin_dir: &Path) -> Result<Option<Self>, String> {
        let (ring, state) = (pin_dir.join(names::TOUCHED), pin_dir.join(names::HARVEST));
        if !ring.exists() || !state.exists() {
            // Pins of a build before them: whole reads only.
            return Ok(None);
        }
        let open = |path: &Path, what: &str| {
            MapData::from_pin(path)
                .map_err(|e| format!("opening the {what} {}: {e}", path.display()))
        };
        let ring = RingBuf::try_from(aya::maps::Map::RingBuf(open(
            &ring,
            "list of changed flows",
        )?))
        .map_err(|e| format!("the list of changed flows: {e}"))?;
        let state = Array::try_from(aya::maps::Map::Array(open(&state, "harvest generation")?))
            .map_err(|e| format!("the harvest generation: {e}"))?;
        let gen = state.get(&gen::GEN, 0).unwrap_or(0);
        let stats = MapData::from_pin(pin_dir.join(names::FLOW_STATS))
            .ok()
            .and_then(|m| PerCpuArray::try_from(aya::maps::Map::PerCpuArray(m)).ok());
        Ok(Some(Self {
            ring,
            state,
            gen,
            missed: 0,
            again: Vec::new(),
            again_before: Vec::new(),
            armed: false,
            whole_due: Instant::now(),
            load_next: false,
            stats,
            entries_base: 0,
            filed_base: 0,
        }))
    }

    /// New entries the kernel filed in FLOWS so far (`flow_stat::FILED`).
    fn filed(&self) -> Option<u64> {
        self.stat(flow_stat::FILED)
    }

    /// A kernel flow counter (`flow_stat`), summed over the CPUs.
    fn stat(&self, index: u32) -> Option<u64> {
        let per_cpu = self.stats.as_ref()?.get(&index, 0).ok()?;
        Some(per_cpu.iter().sum())
    }

    /// Raises the generation and takes the keys written under the one
    /// before; what to read: those keys (with `again`), or the whole tables
    /// where the list may be incomplete or `whole` is asked for.
    fn raise(&mut self, whole: bool) -> Read {
        // The kernel compares the low 32 bits; 0 is "not followed".
        let next = if self.gen >= u64::from(u32::MAX) {
            1
        } else {
            self.gen + 1
        };
        let raised = self.state.set(gen::GEN, next, 0).is_ok();
        if raised {
            self.gen = next;
        }
        let missed = self.state.get(&gen::MISSED, 0).ok();
        let mut taken = HashSet::new();
        while let Some(item) = self.ring.next() {
            // Beyond FOLLOW_MOST the read is whole: the rest is only
            // consumed.
            if item.len() >= size_of::<FlowKey>() && taken.len() <= FOLLOW_MOST {
                // SAFETY: the kernel writes whole `FlowKey`s (plain data).
                taken.insert(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowKey>()) });
            }
        }
        let complete = raised && self.armed && missed == Some(self.missed) && !self.load_next;
        let lost = self.armed && missed.is_some_and(|m| m != self.missed);
        self.missed = missed.unwrap_or(self.missed);
        self.armed = raised && missed.is_some();
        let before = std::mem::replace(&mut self.again_before, std::mem::take(&mut self.again));
        if taken.len() > FOLLOW_MOST {
            // More than a read by key takes (a flood): this read and the
            // next are whole, which see every change the keys would name,
            // so none is kept.
            self.again_before.clear();
            self.load_next = true;
            return Read::Whole { load: true };
        }
        let load = lost || std::mem::take(&mut self.load_next);
        let mut keys: HashSet<FlowKey> = taken.iter().copied().collect();
        keys.extend(before);
        keys.extend(self.again_before.iter().copied());
        self.again = taken.into_iter().collect();
        if keys.len() > FOLLOW_MOST {
            self.load_next = true;
            return Read::Whole { load: true };
        }
        if whole || !complete || Instant::now() >= self.whole_due {
            Read::Whole { load }
        } else {
            Read::Keys(keys.into_iter().collect())
        }
    }
}

/// An entry's mark, and the pass that last found the entry in its table.
#[derive(Clone, Copy)]
struct Marked {
    mark: Mark,
    pass: u64,
}

/// The marks by key: one per kernel entry (up to the flow table's size,
/// 262,144 with `--flow-table-entries`), each looked up once a pass. AHash,
/// seeded per process: keys are chosen by workloads (their destinations),
/// so a fixed-key hash would let one degrade the harvest.
type Marks = StdHashMap<(FlowKey, Table), Marked, ahash::RandomState>;

pub struct Harvest {
    /// `REFUSALS` (absent from the pins of a build before it), then `FLOWS`.
    tables: Vec<Pinned>,
    marks: Marks,
    /// The number of the pass under way (marks it did not touch are of
    /// entries that are gone).
    pass: u64,
    /// Whether `marks` hold what the store says was harvested; until they
    /// do, nothing is harvested (the counts wait in the kernel's table)
    /// rather than counted twice.
    marks_known: bool,
    /// Marks of entries that are gone, to remove from the store.
    gone: Vec<Vec<u8>>,
    /// Whether the last read of the tables read every entry.
    read_whole: bool,
    /// Entries the reads so far found, and of them those with nothing new
    /// to harvest (`reads_since`).
    read: (u64, u64),
    /// Entries with counts the last read found beyond its budget, up to
    /// `LEFTOVER_MOST`: the next chunks take them from here instead of
    /// reading the whole table again (a flood changes every entry; up to
    /// 32 chunks a second).
    leftover: Vec<(Table, FlowKey, FlowEntry)>,
    /// The kernel's list of changed entries, where the pins have it.
    follow: Option<Follow>,
    /// Whether the last read was of the whole tables because more changed
    /// than the kernel's list or a read by key takes.
    whole_for_load: bool,
    /// The least time between two whole reads where the harvest follows
    /// the kernel's changes (`--flow-whole-read-interval`); each whole read
    /// sets the next one's time from it and its own walk
    /// (`whole_interval_after`).
    whole_least: Duration,
}

/// The store's form of a flow key: its bytes as the kernel lays it out,
/// with the table in the pad byte (0 for `FLOWS`, as before there were two).
pub fn key_bytes(k: &FlowKey, table: Table) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(&k.cgroup_id.to_le_bytes());
    v.extend_from_slice(&k.addr);
    v.extend_from_slice(&k.port.to_le_bytes());
    v.push(k.protocol);
    v.push(table as u8);
    v.extend_from_slice(&k.tgid.to_le_bytes());
    v
}

pub fn key_of(b: &[u8]) -> Option<(FlowKey, Table)> {
    if b.len() != 32 {
        return None;
    }
    let table = match b[27] {
        0 => Table::Flows,
        1 => Table::Refusals,
        _ => return None,
    };
    let key = FlowKey {
        cgroup_id: u64::from_le_bytes(b[0..8].try_into().ok()?),
        addr: b[8..24].try_into().ok()?,
        port: u16::from_le_bytes(b[24..26].try_into().ok()?),
        protocol: b[26],
        _pad: 0,
        tgid: u32::from_le_bytes(b[28..32].try_into().ok()?),
    };
    Some((key, table))
}

/// What a complete harvest (chunks until a whole read left nothing) that
/// began at `started` (kernel boot time) holds: every count the kernel made
/// before the time returned (Unix ns). With `ring_read_from` (where the
/// pipeline's reads of the ring stood when it began), the entries that
/// wait for the ring (`Harvest::pass`) are not in it: each was first seen
/// after that less `SETTLE_NS`, and its counts after that too.
pub fn harvested_through(started: u64, ring_read_from: Option<u64>) -> i64 {
    let before = ring_read_from.map_or(started, |r| started.min(r.saturating_sub(SETTLE_NS)));
    (i128::from(before) + boot_to_unix_offset()) as i64
}

/// CLOCK_BOOTTIME now, in nanoseconds: the kernel's clock for expiries.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The record an entry would have been as an event: the enrichment of
/// events names its cgroup, policy, place and name the same way.
fn as_record(k: &FlowKey, e: &FlowEntry) -> DecisionEvent {
    DecisionEvent {
        header: EventHeader {
            kind: kind::DECISION,
            version: DECISION_VERSION,
            len: size_of::<DecisionEvent>() as u32,
        },
        boot_ns: e.last_ns,
        cgroup_id: k.cgroup_id,
        selected_cgroup_id: e.selected_cgroup_id,
        pid: 0,
        // The process the entry counts for (see `FlowKey`), named by
        // enrichment like an event's.
        tgid: k.tgid,
        uid: 0,
        gid: 0,
        policy_id: e.policy_id,
        policy_generation: e.policy_generation,
        dst_addr: k.addr,
        comm: e.comm,
        dst_port: k.port,
        country: e.country,
        continent: e.continent,
        hook: e.hook,
        family: e.family,
        protocol: k.protocol,
        verdict: e.verdict,
        rule: e.rule,
        mode: e.mode,
        cloud_region: e.cloud_region,
        name_hash: e.name_hash,
        country_source: e.country_source,
        _pad: 0,
        cpu: 0,
        seq: 0,
        exec_ns: e.exec_ns,
    }
}

impl Harvest {
    /// Opens the pinned flow tables; `marks` are what the store says was
    /// harvested before (a restart). The pins of a build without a refusal
    /// table have the flow table only.
    pub fn open(pin_dir: &Path, marks: Vec<(Vec<u8>, Mark)>) -> Result<Self, String> {
        // Refusals first: a read hands on at most a chunk, and after a flood
        // of new destinations the flow table's changes fill chunk after
        // chunk; read after them, the refusals waited until all were
        // harvested (up to 262,144 entries).
        let mut tables = Vec::with_capacity(2);
        if pin_dir.join(names::REFUSALS).exists() {
            tables.push(Pinned::open(pin_dir, Table::Refusals)?);
        }
        tables.push(Pinned::open(pin_dir, Table::Flows)?);
        let follow = Follow::open(pin_dir)?;
        let mut h = Self {
            tables,
            marks: Marks::default(),
            pass: 0,
            marks_known: false,
            read_whole: false,
            read: (0, 0),
            gone: Vec::new(),
            leftover: Vec::new(),
            follow,
            whole_for_load: false,
            whole_least: WHOLE_EVERY,
        };
        h.set_marks(marks);
        Ok(h)
    }

    /// Opens the table before the store's marks can be read: nothing is
    /// harvested until `set_marks`.
    pub fn open_waiting(pin_dir: &Path) -> Result<Self, String> {
        let mut h = Self::open(pin_dir, Vec::new())?;
        h.marks_known = false;
        Ok(h)
    }

    pub fn marks_known(&self) -> bool {
        self.marks_known
    }

    /// Whether the last read left nothing unread: a whole read of the
    /// tables (a batched read that failed midway did not), or a read of
    /// every entry the kernel listed as changed.
    pub fn read_whole(&self) -> bool {
        self.read_whole
    }

    /// Whether the harvest follows the kernel's list of changed entries
    /// (then whole reads are spaced by `whole_after`).
    pub fn follows(&self) -> bool {
        self.follow.is_some()
    }

    /// Whether the last read was of the whole tables because more changed
    /// than the kernel's list holds or a read by key takes (a flood, or
    /// thousands of new destinations a second): the next read is whole
    /// too, spaced by `interval_after`.
    pub fn whole_for_load(&self) -> bool {
        self.whole_for_load
    }

    /// The least time between two whole reads (`WHOLE_EVERY` unless set).
    pub fn whole_at_least(mut self, least: Duration) -> Self {
        self.whole_least = least;
        self
    }

    /// Entries the reads found since the last call, and of them those with
    /// nothing new to harvest: the share of a harvest's time spent reading
    /// what had not changed (`interval_after`).
    pub fn reads_since(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.read)
    }

    /// What the store says was harvested of each entry.
    pub fn set_marks(&mut self, marks: Vec<(Vec<u8>, Mark)>) {
        self.marks.clear();
        self.leftover.clear();
        if let Some(f) = &mut self.follow {
            // The first read from these marks is whole.
            f.armed = false;
        }
        for (bytes, m) in marks {
            match key_of(&bytes) {
                Some(k) => {
                    self.marks.insert(
                        k,
                        Marked {
                            mark: m,
                            pass: self.pass,
                        },
                    );
                }
                None => self.gone.push(bytes),
            }
        }
        self.marks_known = true;
    }

    /// Every table as it is now.
    pub fn entries(&self) -> Vec<(Table, FlowKey, FlowEntry)> {
        let mut out = Vec::new();
        for t in &self.tables {
            t.each(&mut |k, e| out.push((t.table, k, e)));
        }
        out
    }

    /// One chunk of a harvest: what each entry counted since its mark, for
    /// at most `budget` entries, and whether to go on (entries with counts
    /// are left, or this chunk took the last of what an earlier read left,
    /// so what changed since that read is still to be read). What is left
    /// keeps its mark, so its counts wait in the kernel's table; nothing is
    /// lost or counted twice. The budget bounds what one chunk builds: in a
    /// flood of new destinations every entry of the table changed, and each
    /// harvested one is a full event. Only a chunk that reads the tables
    /// finds the entries that are gone and removes the idle ones.
    ///
    /// With `wait_for_ring`, an entry whose process is not known yet waits
    /// (its counts in the kernel's table) until the pipeline has read the
    /// ring past the entry's first sight: the process's record is in the
    /// ring ahead of it, and a repeat named before it is read would be
    /// credited to no executable (a process that has exited since is not
    /// in `/proc` either). Without, as at shutdown, everything is taken.
    ///
    /// A read is of the entries the kernel listed as changed, unless the
    /// list may be incomplete, a whole read is due, or `whole`.
    pub fn pass<N: Names>(
        &mut self,
        outlets: &Outlets,
        names: &Mutex<N>,
        budget: usize,
        wait_for_ring: bool,
        whole: bool,
    ) -> (Harvested, bool) {
        if !self.marks_known {
            return (Harvested::default(), false);
        }
        let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock the pipeline reads the ring under.
        let ring_read_from = wait_for_ring.then(|| outlets.ring_read_from.load(Ordering::Relaxed));
        let reads = self.leftover.is_empty();
        if reads {
            self.pass += 1;
        }
        let mut out = Harvested {
            unmarks: std::mem::take(&mut self.gone),
            ..Default::default()
        };
        let mut chunk = Chunk {
            marks: &mut self.marks,
            pass: self.pass,
            budget,
            out: &mut out,
            outlets,
            names: &mut *names,
            offset: boot_to_unix_offset(),
            now: boot_ns(),
            idle: Vec::new(),
            waiting: Vec::new(),
            found: 0,
            unchanged: 0,
            ring_read_from,
        };
        if !reads {
            // Still in the read that left them (its pass stamped their
            // marks), and none of them was in a chunk before.
            let rest = self.leftover.split_off(budget.min(self.leftover.len()));
            for (table, key, e) in std::mem::replace(&mut self.leftover, rest) {
                chunk.visit((key, table), e, &mut self.leftover);
            }
            return (out, true);
        }
        let read = self
            .follow
            .as_mut()
            .map_or(Read::Whole { load: true }, |f| f.raise(whole));
        self.whole_for_load = matches!(read, Read::Whole { load: true });
        if let Read::Keys(keys) = read {
            // Each key from both tables (a key may be in either; the
            // kernel's list does not say which); the refusal table only
            // once the kernel has filed a refusal there.
            let refusals = self
                .follow
                .as_ref()
                .and_then(|f| f.stat(flow_stat::REFUSALS_FILED))
                .is_none_or(|n| n > 0);
            for key in keys {
                for t in &self.tables {
                    if t.table == Table::Refusals && !refusals {
                        continue;
                    }
                    if let Ok(e) = t.map.get(&key, 0) {
                        chunk.visit((key, t.table), e, &mut self.leftover);
                    }
                }
            }
            self.read_whole = self.leftover.is_empty();
            outlets
                .counters
                .harvest_reads_changed
                .fetch_add(1, Ordering::Relaxed);
            let waiting = std::mem::take(&mut chunk.waiting);
            if let Some(f) = &mut self.follow {
                f.again.extend(waiting.into_iter().map(|(k, _)| k));
                // The table's fill: as at the last whole read, with the
                // entries filed since (only a whole read removes any).
                if let Some(filed) = f.filed() {
                    outlets.counters.flow_entries.store(
                        f.entries_base + filed.saturating_sub(f.filed_base),
                        Ordering::Relaxed,
                    );
                }
            }
            let more = !self.leftover.is_empty();
            return (out, more);
        }
        let pass = self.pass;
        let filed_before = self.follow.as_ref().and_then(Follow::filed);
        let (mut in_flows, mut whole) = (0u64, true);
        let walk = std::time::Instant::now();
        for t in &self.tables {
            let table = t.table;
            whole &= t.each(&mut |key, e| {
                if table == Table::Flows {
                    in_flows += 1;
                }
                chunk.visit((key, table), e, &mut self.leftover);
            });
        }
        self.read_whole = whole;
        // The next whole read, whoever asked for this one (the interval,
        // the controller before a switch, a start): spaced by the walk of
        // the tables alone, as a whole read forced by a flood may take
        // seconds of chunks and waits for the store after it.
        let walked = walk.elapsed();
        let every = whole_interval_after(walked, chunk.found, chunk.unchanged, self.whole_least);
        if let Some(f) = &mut self.follow {
            f.whole_due = Instant::now() + every;
            let ms = |d: Duration| d.as_millis() as u64;
            let counters = &outlets.counters;
            counters
                .harvest_whole_read_ms
                .store(ms(walked), Ordering::Relaxed);
            counters
                .harvest_whole_every_ms
                .store(ms(every), Ordering::Relaxed);
        }
        outlets
            .counters
            .harvest_reads_whole
            .fetch_add(1, Ordering::Relaxed);
        let idle = chunk.idle;
        let waiting = std::mem::take(&mut chunk.waiting);
        self.read.0 += chunk.found;
        self.read.1 += chunk.unchanged;
        if let Some(f) = &mut self.follow {
            // Entries whose counts wait for the ring: read again next time,
            // whatever that read is. A read that failed midway leaves the
            // next read whole.
            f.again.extend(waiting.into_iter().map(|(k, _)| k));
            f.armed &= whole;
        }
        // Removed once read (not under the read's feet).
        let mut removed = 0;
        for k in idle {
            if self.remove(k.1, &k.0) {
                removed += u64::from(k.1 == Table::Flows);
                if self.marks.remove(&k).is_some() {
                    out.unmarks.push(key_bytes(&k.0, k.1));
                }
            }
        }
        // The flow table's fill against its capacity (the refusal table's
        // use shows as `refusals_filed`).
        let entries = in_flows.saturating_sub(removed);
        outlets
            .counters
            .flow_entries
            .store(entries, Ordering::Relaxed);
        if let (Some(f), Some(filed)) = (&mut self.follow, filed_before) {
            f.entries_base = entries;
            f.filed_base = filed;
        }
        // Marks no entry of this pass touched: their entries are gone (known
        // only from a whole read).
        if whole {
            self.marks.retain(|k, m| {
                let found = m.pass == pass;
                if !found {
                    out.unmarks.push(key_bytes(&k.0, k.1));
                }
                found
            });
        }
        let more = !self.leftover.is_empty();
        (out, more)
    }

    /// Removes an entry of `table`; whether it was there.
    fn remove(&mut self, table: Table, key: &FlowKey) -> bool {
        self.tables
            .iter_mut()
            .find(|t| t.table == table)
            .is_some_and(|t| t.map.remove(key).is_ok())
    }
}

/// The mark an entry's counts are taken from: its mark, unless the entry
/// was made anew since (another first sight), then none.
fn since(mark: Mark, e: &FlowEntry) -> Mark {
    if mark.first_ns == e.first_ns {
        mark
    } else {
        Mark {
            first_ns: e.first_ns,
            ..Mark::default()
        }
    }
}

/// What one chunk of a harvest hands on, and how.
struct Chunk<'a, N> {
    marks: &'a mut Marks,
    /// The pass of the read the entries come from.
    pass: u64,
    budget: usize,
    out: &'a mut Harvested,
    outlets: &'a Outlets,
    names: &'a mut N,
    offset: i128,
    now: u64,
    /// Entries with nothing to harvest, unused for `IDLE`.
    idle: Vec<(FlowKey, Table)>,
    /// Entries whose counts wait for the pipeline's read of the ring.
    waiting: Vec<(FlowKey, Table)>,
    /// Entries visited, and of them those with nothing to harvest.
    found: u64,
    unchanged: u64,
    /// Where the pipeline's reads of the ring stand, when entries whose
    /// process is not known yet wait for them (see `Harvest::pass`).
    ring_read_from: Option<u64>,
}

impl<N: Names> Chunk<'_, N> {
    /// An entry as read: its mark is stamped as found (one lookup); what it
    /// counted since is handed on, or left for a later chunk once the
    /// budget is spent.
    fn visit(
        &mut self,
        k: (FlowKey, Table),
        e: FlowEntry,
        leftover: &mut Vec<(Table, FlowKey, FlowEntry)>,
    ) {
        let before = match self.marks.get_mut(&k) {
            Some(m) => {
                m.pass = self.pass;
                since(m.mark, &e)
            }
            None => since(Mark::default(), &e),
        };
        let count = e.count.saturating_sub(before.count);
        let packets = e.packets.saturating_sub(before.packets);
        let bytes = e.bytes.saturating_sub(before.bytes);
        self.found += 1;
        if count == 0 && packets == 0 && bytes == 0 {
            self.unchanged += 1;
            if self.now.saturating_sub(e.last_ns) > IDLE.as_nanos() as u64 {
                self.idle.push(k);
            }
            return;
        }
        let (key, table) = k;
        if self.ring_read_from.is_some_and(|read| {
            e.first_ns.saturating_add(SETTLE_NS) >= read
                && key.tgid != 0
                && e.exec_ns != 0
                && self.names.process(key.tgid, e.exec_ns).is_none()
        }) {
            self.waiting.push(k);
            return;
        }
        if self.out.repeats.len() >= self.budget {
            // Beyond its bound, the entry waits in the kernel's table (its
            // mark unchanged) for the next read.
            if leftover.len() < LEFTOVER_MOST {
                leftover.push((table, key, e));
            }
            return;
        }
        let raw = as_record(&key, &e);
        let mut event = enrich(&raw, self.offset, &mut *self.names);
        self.outlets.name(&raw, &mut event);
        self.outlets.observer.repeated(&raw, &event, count);
        event.keep_flow_fields();
        self.outlets
            .counters
            .repeats
            .fetch_add(count, Ordering::Relaxed);
        self.out.repeats.push(Repeat {
            event,
            count,
            packets,
            bytes,
        });
        let mark = Mark {
            first_ns: e.first_ns,
            count: e.count,
            packets: e.packets,
            bytes: e.bytes,
        };
        self.out.marks.push((key_bytes(&key, table), mark));
        self.marks.insert(
            k,
            Marked {
                mark,
                pass: self.pass,
            },
        );
    }
}

/// Every entry of a hash map of flows, `BATCH` per `BPF_MAP_LOOKUP_BATCH`
/// call (aya has no batch operations).
fn lookup_batch(map: &MapData, each: &mut dyn FnMut(FlowKey, FlowEntry)) -> std::io::Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const BATCH: usize = 4096;
    /// `union bpf_attr`, the `batch` member.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let fd = map.fd().as_fd().as_raw_fd();
    let mut keys = vec![FlowKey::default(); BATCH];
    let mut values = vec![FlowEntry::default(); BATCH];
    // The batch token of a hash map is a bucket index (u32).
    let (mut token_in, mut token_out) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::addr_of!(token_in) as u64
            },
            out_batch: std::ptr::addr_of_mut!(token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attribute points at buffers of BATCH keys and values
        // of the map's sizes and at the tokens, all live for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::addr_of_mut!(attr),
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let n = (attr.count as usize).min(BATCH);
        match &err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Some(_) => return Err(err.unwrap()),
        }
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            each(*k, *v);
        }
        if err.is_some() {
            return Ok(());
        }
        token_in = token_out;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::tests::{outlets, N};

    /// A pass over large tables spaces the next one out to keep within its
    /// share of a core, and never beyond the longest lag allowed.
    #[test]
    fn a_costly_pass_stretches_the_interval_to_its_budget_and_no_further() {
        let ms = Duration::from_millis;
        let idle = |took| interval_after(took, 1000, 1000);
        // Cheap passes (a small table): every second.
        assert_eq!(idle(Duration::ZERO), HARVEST_EVERY);
        assert_eq!(idle(ms(20)), HARVEST_EVERY);
        // A pass of 60 ms over entries that had not changed: 3 s apart, 2%
        // of a core.
        assert_eq!(idle(ms(60)), ms(3000));
        assert_eq!(
            idle(ms(60)).as_secs_f64() / ms(60).as_secs_f64(),
            f64::from(HARVEST_BUDGET)
        );
        // Never more than HARVEST_MOST apart, however slow a pass.
        assert_eq!(idle(ms(400)), HARVEST_MOST);
        assert_eq!(idle(Duration::from_secs(60)), HARVEST_MOST);
        // Time spent on changes does not count: a harvest catching up
        // after a flood (most entries changed) goes on every second.
        assert_eq!(interval_after(ms(400), 1000, 10), HARVEST_EVERY);
        assert_eq!(interval_after(ms(400), 1000, 500), HARVEST_MOST);
        assert_eq!(interval_after(ms(100), 1000, 500), ms(2500));
        // A pass that took only what an earlier read left (changes all), or
        // could not start: every second.
        assert_eq!(interval_after(ms(400), 0, 0), HARVEST_EVERY);
    }

    /// Where the harvest follows the kernel's changes, whole reads come
    /// every `--flow-whole-read-interval`, further apart only where one
    /// would cost more than 0.2% of a core at that pace.
    #[test]
    fn whole_reads_keep_their_interval_unless_they_cost_more() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        let whole = |took, least| whole_interval_after(took, 1000, 1000, least);
        // A small table: the interval asked for, however cheap the read.
        assert_eq!(whole(ms(1), s(60)), s(60));
        assert_eq!(whole(ms(1), s(1)), s(1));
        // 262,144 entries (190 ms): 95 s, beyond the 60 s asked for.
        assert_eq!(whole(ms(190), s(60)), ms(95_000));
        // Never further than WHOLE_MOST on cost alone, and never sooner
        // than asked.
        assert_eq!(whole(s(30), s(60)), WHOLE_MOST);
        assert_eq!(whole(s(30), s(86_400)), s(86_400));
        // Changes do not count against it (a flood's catch-up).
        assert_eq!(whole_interval_after(ms(190), 1000, 0, s(60)), s(60));
    }

    /// A read that finds more changed entries than its chunk takes holds
    /// at most `LEFTOVER_MOST` of the rest for the next chunks; the others
    /// keep their marks, so the next read finds their counts in the table.
    /// Every entry's counts are taken exactly once.
    #[test]
    fn what_a_read_leaves_is_held_up_to_its_bound_and_the_rest_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (o, _all) = outlets(dir.path());
        let mut names = N;
        let mut marks = Marks::default();
        let table: Vec<(FlowKey, FlowEntry)> = (0..LEFTOVER_MOST as u32 + 10)
            .map(|i| {
                let key = FlowKey {
                    cgroup_id: 7,
                    port: 443,
                    protocol: 17,
                    tgid: i,
                    ..Default::default()
                };
                let e = FlowEntry {
                    first_ns: 1,
                    last_ns: 2,
                    count: 2,
                    packets: 3,
                    bytes: 4,
                    ..Default::default()
                };
                (key, e)
            })
            .collect();
        let mut taken: StdHashMap<u32, u64> = StdHashMap::new();
        let mut leftover = Vec::new();
        let mut chunk = |pass: u64,
                         budget: usize,
                         from: &[(Table, FlowKey, FlowEntry)],
                         leftover: &mut Vec<_>| {
            let mut out = Harvested::default();
            let mut c = Chunk {
                marks: &mut marks,
                pass,
                budget,
                out: &mut out,
                outlets: &o,
                names: &mut names,
                offset: 0,
                now: 3,
                idle: Vec::new(),
                waiting: Vec::new(),
                found: 0,
                unchanged: 0,
                ring_read_from: None,
            };
            for &(t, k, e) in from {
                c.visit((k, t), e, leftover);
            }
            for (bytes, m) in &out.marks {
                let (k, _) = key_of(bytes).unwrap();
                *taken.entry(k.tgid).or_default() += m.count;
            }
            out.repeats.len()
        };
        let read: Vec<_> = table.iter().map(|&(k, e)| (Table::Flows, k, e)).collect();
        // The first read: one entry taken, the bound held, the rest left.
        assert_eq!(chunk(1, 1, &read, &mut leftover), 1);
        assert_eq!(leftover.len(), LEFTOVER_MOST);
        // The chunks after it take what it held.
        let held = std::mem::take(&mut leftover);
        assert_eq!(chunk(1, usize::MAX, &held, &mut leftover), LEFTOVER_MOST);
        // The next read finds the 9 it could not hold, and nothing else.
        assert_eq!(chunk(2, usize::MAX, &read, &mut leftover), 9);
        assert!(leftover.is_empty());
        assert_eq!(taken.len(), table.len(), "every entry taken");
        assert!(taken.values().all(|&c| c == 2), "each count once");
    }

    #[test]
    fn a_key_survives_the_store() {
        let k = FlowKey {
            cgroup_id: 0x0102_0304_0506_0708,
            addr: [7; 16],
            port: 8443,
            protocol: 17,
            _pad: 0,
            tgid: 0x0a0b_0c0d,
        };
        for table in [Table::Flows, Table::Refusals] {
            assert_eq!(key_of(&key_bytes(&k, table)), Some((k, table)));
        }
        // A flow-table key keeps the form stores held before the
        // refusal table existed (pad byte 0).
        assert_eq!(key_bytes(&k, Table::Flows)[27], 0);
        assert_eq!(key_of(&[1, 2, 3]), None, "a short key is refused");
        let mut unknown = key_bytes(&k, Table::Refusals);
        unknown[27] = 2;
        assert_eq!(key_of(&unknown), None, "an unknown table is refused");
    }
}
