//! The event pipeline: drains the kernel ring buffer as it becomes readable,
//! decodes and enriches each record, and hands it on (stdout JSON lines, the
//! in-memory history, the store, stream subscribers). Nothing here waits on
//! a consumer: a slow subscriber misses events (and is told how many of
//! the events it asked for it missed), the kernel drain never slows down.
//!
//! Depends on the events (decoding), the read-side counters (`state`) and
//! the interfaces it declares here ([`Observer`], [`Names`]); whoever wants
//! to see decisions implements them (the metrics do).
pub mod drift;
pub mod fanout;
pub mod harvest;

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use aya::maps::{MapData, RingBuf};
use monitor_common::DecisionEvent;
use tokio::io::unix::AsyncFd;

pub use self::fanout::{Fanout, Subscription};
use crate::{
    events::{boot_to_unix_offset, decode_record, enrich, Event, Names, Record},
    names::{parse_answer, NameTable, TtlPolicy},
    state::{Counters, Streams},
};

/// Told of every decoded decision, on the pipeline's thread: keep it cheap.
pub trait Observer: Send + Sync {
    fn decision(&self, raw: &DecisionEvent, event: &Event);
    /// `count` more attempts decided as `raw` was, which the kernel counted
    /// in its flow table instead of reporting (see `harvest`).
    fn repeated(&self, _raw: &DecisionEvent, _event: &Event, _count: u64) {}
    /// A drift alert the daemon raised (see `pipeline::drift`).
    fn drift(&self, _alert: &Event) {}
}

fn count(counters: &Counters, v: u8) {
    use monitor_common::verdict;
    let c = match v {
        verdict::ALLOWED => &counters.allowed,
        verdict::DENIED => &counters.denied,
        _ => &counters.would_deny,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// Where decoded events go.
pub struct Outlets {
    pub counters: Arc<Counters>,
    /// History and filtered stream subscribers.
    pub fanout: Fanout,
    /// Every event, handed to the store writer as it is drained (never
    /// through a lossy channel: what the store drops, it records).
    pub store: Arc<crate::store::writer::Handle>,
    pub log_events: bool,
    pub observer: Arc<dyn Observer>,
    /// The names the kernel learned, as text: fed by the DNS records the
    /// kernel reports, read to name each decision.
    pub dns: Mutex<NameTable>,
    /// The TTL rules the kernel was given, so the table expires as it does.
    pub ttl: TtlPolicy,
    /// What the controller acts on at once when the kernel reports it.
    pub wake: Wakeups,
    /// Drift alerts: each decision is compared to its policy's baseline.
    pub drift: drift::Live,
    /// The kernel's boot time (ns) when the last completed read of the
    /// ring began: what the kernel put in the ring before it was read.
    /// The harvest names an entry's process only once this passes the
    /// entry's first sight, because the process's record rides the ring
    /// ahead of that first sight (see `harvest::Harvest::pass`).
    pub ring_read_from: AtomicU64,
}

/// Decisions the controller acts on as soon as they are read.
#[derive(Clone, Default)]
pub struct Wakeups {
    /// A cgroup made, or a decision on an unclassified one: the controller
    /// classifies it at once instead of at its next rescan.
    pub unclassified: Arc<tokio::sync::Notify>,
    /// A TCP packet the egress backstop refused (a SYN of a socket used
    /// outside its cgroup, or in flight across a switch): the controller
    /// sweeps the selected cgroups' sockets, so the refused socket is
    /// destroyed and its `connect` fails at once instead of waiting for
    /// TCP's retries.
    pub refused_tcp: Arc<tokio::sync::Notify>,
}

/// How the kernel files names, so the daemon's table files them alike.
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    pub ttl: TtlPolicy,
    /// The kernel's name-hash key.
    pub key: u64,
}

/// Addresses and names the daemon keeps the text of.
pub const NAME_TABLE_ADDRESSES: usize = 131_072;
pub const NAME_TABLE_NAMES: usize = 32_768;

impl Outlets {
    pub fn new(
        history_len: usize,
        store: Arc<crate::store::writer::Handle>,
        log_events: bool,
        counters: Arc<Counters>,
        streams: Arc<Streams>,
        observer: Arc<dyn Observer>,
        naming: Naming,
    ) -> Self {
        Self {
            counters,
            fanout: Fanout::new(history_len, streams),
            store,
            log_events,
            observer,
            dns: Mutex::new(
                NameTable::new(NAME_TABLE_ADDRESSES, NAME_TABLE_NAMES).with_key(naming.key),
            ),
            ttl: naming.ttl,
            wake: Wakeups::default(),
            drift: drift::Live::default(),
            ring_read_from: AtomicU64::new(0),
        }
    }

    /// A read of the live ring that began at `from` (kernel boot time) is
    /// complete.
    fn ring_read(&self, from: u64) {
        self.ring_read_from.fetch_max(from, Ordering::Relaxed);
    }

    /// Files the text of a DNS answer the kernel learned from.
    fn learn(&self, raw: &monitor_common::DnsEvent) {
        let len = usize::from(raw.payload_len).min(raw.payload.len());
        match parse_answer(&raw.payload[..len]) {
            Ok(answer) => {
                let mut table = self.dns.lock().unwrap_or_else(|p| p.into_inner());
                table.learn(raw.cgroup_id, &answer, raw.boot_ns, self.ttl);
            }
            Err(e) => {
                // The kernel read it; our parser did not: events keep the
                // hash-only name below.
                let n = self.counters.dns_unparsed.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    log::warn!(
                        "a DNS answer the kernel learned from could not be read ({} so far): {e}",
                        n + 1
                    );
                }
            }
        }
    }

    /// Names a decision: the text of the name the kernel judged it with,
    /// and the CNAME target this cgroup saw for the address.
    pub(crate) fn name(&self, raw: &DecisionEvent, event: &mut Event) {
        if raw.name_hash == 0 {
            return;
        }
        let mut table = self.dns.lock().unwrap_or_else(|p| p.into_inner());
        let addr = std::net::IpAddr::from(raw.dst_addr);
        let seen = table.lookup(raw.cgroup_id, addr, raw.boot_ns);
        match table.name_of(raw.name_hash) {
            Some(name) => {
                event.dns_name = name.to_string();
                if let Some((qname, Some(cname))) = seen {
                    if *qname == *name && *cname != *name {
                        event.dns_cname = cname.to_string();
                    }
                }
            }
            // The answer's copy was lost (ring buffer full) or pushed out.
            None => event.dns_name = format!("(unreported name {:016x})", raw.name_hash),
        }
    }
}

/// What a drain reads records from: the kernel's ring buffer, or a test's.
trait Source {
    type Record<'a>: std::ops::Deref<Target = [u8]>
    where
        Self: 'a;
    fn next_record(&mut self) -> Option<Self::Record<'_>>;
}

impl Source for RingBuf<MapData> {
    type Record<'a> = aya::maps::ring_buf::RingBufItem<'a>;

    fn next_record(&mut self) -> Option<Self::Record<'_>> {
        self.next()
    }
}

/// Decodes up to `max` records of the ring into `batch`; whether it read
/// the ring to its end, and the kernel's boot time when it began.
fn drain_into<N: Names>(
    ring: &mut impl Source,
    outlets: &Outlets,
    names: &Mutex<N>,
    batch: &mut Vec<Arc<Event>>,
    max: usize,
) -> Drained {
    let from = harvest::boot_ns();
    let offset = boot_to_unix_offset();
    let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
    let mut read = 0usize;
    loop {
        if read == max {
            return Drained::More;
        }
        let Some(item) = ring.next_record() else {
            return Drained::Empty(from);
        };
        read += 1;
        match decode_record(&item) {
            Ok(Record::Dns(raw)) => outlets.learn(&raw),
            Ok(Record::CgroupMade) => outlets.wake.unclassified.notify_one(),
            Ok(Record::Process(entry)) => names.learn_process(&entry),
            Ok(Record::Decision(raw)) => {
                if raw.rule == monitor_common::Rule::Unclassified as u8 {
                    outlets.wake.unclassified.notify_one();
                }
                if raw.hook == monitor_common::Hook::Egress as u8
                    && raw.protocol == monitor_common::IPPROTO_TCP
                    && raw.verdict == monitor_common::Verdict::Denied as u8
                {
                    outlets.wake.refused_tcp.notify_one();
                }
                count(&outlets.counters, raw.verdict);
                let mut event = enrich(&raw, offset, &mut *names);
                outlets.name(&raw, &mut event);
                outlets.observer.decision(&raw, &event);
                let alert = outlets.drift.check(&event);
                batch.push(Arc::new(event));
                if let Some(alert) = alert {
                    outlets.counters.drift.fetch_add(1, Ordering::Relaxed);
                    outlets.observer.drift(&alert);
                    batch.push(Arc::new(alert));
                }
            }
            Err(e) => {
                let n = outlets.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    log::warn!("undecodable ring buffer record ({} so far): {e}", n + 1);
                }
            }
        }
    }
}

/// How a drain of the ring ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// The ring was read to its end: every record the kernel committed
    /// before this boot-clock time was read (`Outlets::ring_read`).
    Empty(u64),
    /// It stopped at its bound with records left.
    More,
}

/// The most records one drain reads before its batch is handed on. Read
/// until the ring is empty, a drain never ended while the kernel filled
/// the ring as fast as it was read (a flood on a busy node): its batch
/// grew without bound (600,000 events, 231 MiB, in a slowed daemon) while
/// the store and the clients got nothing, and the names lock it holds
/// kept the harvest out.
const MAX_DRAIN: usize = 4096;

/// How long the last drains at a stop may take: a flood may keep the ring
/// from ever being empty. What is left stays in the pinned ring for the
/// next start.
const STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands a batch to stdout (when asked), the store, the history and the
/// stream subscribers.
fn publish(outlets: &Outlets, batch: &mut Vec<Arc<Event>>, stdout_ok: &mut bool) {
    if batch.is_empty() {
        return;
    }
    if *stdout_ok {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let mut result = Ok(());
        for e in batch.iter() {
            result = serde_json::to_writer(&mut out, &**e)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result.and_then(|()| out.flush()) {
            log::error!("stopped printing events: stdout failed: {e}");
            *stdout_ok = false;
        }
    }
    outlets.store.take(batch.clone());
    outlets.fanout.publish(batch.drain(..));
}

/// Drains what a ring holds now (a retired build's ring); returns how many
/// events it held.
pub fn drain_once<N: Names>(
    mut ring: RingBuf<MapData>,
    outlets: &Outlets,
    names: &Mutex<N>,
) -> usize {
    let mut batch = Vec::new();
    // A retired ring has no program writing to it: it ends.
    drain_into(&mut ring, outlets, names, &mut batch, usize::MAX);
    // Their numbers belong to the retired ring, not to the one the store
    // follows now: kept out of its count.
    for e in &mut batch {
        if e.kernel_seq != 0 {
            let e = Arc::make_mut(e);
            e.kernel_seq = 0;
            e.kernel_cpu = 0;
        }
    }
    let n = batch.len();
    let mut stdout_ok = outlets.log_events;
    publish(outlets, &mut batch, &mut stdout_ok);
    n
}

/// One ring's reading: each step drains at most `MAX_DRAIN` records, hands
/// them on, and notes where the reads stand.
struct Reader<'a, N> {
    outlets: &'a Outlets,
    names: &'a Mutex<N>,
    batch: Vec<Arc<Event>>,
    stdout_ok: bool,
    /// Per CPU, the kernel's last number when the run began, for the store
    /// once the ring was read to its end (`SeqBook::numbered` counts on
    /// every number up to these having been read). Under a flood that
    /// comes late, never before: the start reads as every drain does,
    /// bounded, and a stop is heard meanwhile.
    numbered: Option<Vec<(u32, u32)>>,
}

impl<'a, N: Names> Reader<'a, N> {
    fn new(outlets: &'a Outlets, names: &'a Mutex<N>, numbered: Vec<(u32, u32)>) -> Self {
        Self {
            outlets,
            names,
            batch: Vec::new(),
            stdout_ok: outlets.log_events,
            numbered: Some(numbered),
        }
    }

    /// Drains, hands the batch on, and settles where the reads stand.
    fn step(&mut self, ring: &mut impl Source) -> Drained {
        let drained = drain_into(ring, self.outlets, self.names, &mut self.batch, MAX_DRAIN);
        publish(self.outlets, &mut self.batch, &mut self.stdout_ok);
        if let Drained::Empty(from) = drained {
            self.outlets.ring_read(from);
            // After the events drained before it: the writer takes them in
            // order.
            if let Some(numbers) = self.numbered.take() {
                self.outlets.store.kernel_numbered(numbers);
            }
        }
        drained
    }

    /// At a stop: what the kernel put in the ring before it is published
    /// (with `--detach-on-exit` the ring goes with the pins, and an event
    /// left in it would be lost), for at most `STOP_DRAIN`.
    fn stop(&mut self, ring: &mut impl Source) -> std::io::Result<()> {
        let until = std::time::Instant::now() + STOP_DRAIN;
        while self.step(ring) == Drained::More && std::time::Instant::now() < until {}
        Ok(())
    }
}

/// Drains the ring buffer as it becomes readable, at most `MAX_DRAIN`
/// records before each hand-on, until an error or `stop`: then for at most
/// `STOP_DRAIN` more (`Reader::stop`).
pub async fn run<N: Names + Send>(
    ring: RingBuf<MapData>,
    outlets: Arc<Outlets>,
    names: Arc<Mutex<N>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    numbered: Vec<(u32, u32)>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd,
    // so the fd stays open exactly as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    // `numbered` was read before the ring: what the kernel numbered up to
    // it and the store does not hold, this run did not read either.
    let mut reader = Reader::new(&outlets, &names, numbered);
    let mut timer = tokio::time::interval(DRAIN_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Whatever the ring held before we started (a restart) is read at once.
    let mut more = true;
    loop {
        if more {
            // The ring holds more than one drain took: read on at once,
            // after what else waits to run (the API, the harvest).
            tokio::task::yield_now().await;
            if !matches!(
                stop.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ) {
                return reader.stop(fd.get_mut());
            }
            more = reader.step(fd.get_mut()) == Drained::More;
            continue;
        }
        // The kernel wakes us only when a batch waits (see
        // limits::WAKEUP_BYTES); the timer picks up the rest.
        let drained = tokio::select! {
            _ = &mut stop => return reader.stop(fd.get_mut()),
            ready = fd.readable_mut() => {
                let mut guard = ready?;
                let drained = reader.step(guard.get_inner_mut());
                guard.clear_ready();
                drained
            }
            _ = timer.tick() => reader.step(fd.get_mut()),
        };
        more = drained == Drained::More;
    }
}

/// How long an event may wait in the ring buffer when no batch fills it.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::events::{tests::bytes, tests::sample, CgroupInfo};

    /// A ring that holds `left` copies of one record.
    struct Ring {
        record: Vec<u8>,
        left: usize,
    }

    /// A ring of `left` sample records.
    fn ring(left: usize) -> Ring {
        Ring {
            record: bytes(&sample()),
            left,
        }
    }

    impl Source for Ring {
        type Record<'a> = &'a [u8];

        fn next_record(&mut self) -> Option<&[u8]> {
            self.left = self.left.checked_sub(1)?;
            Some(&self.record)
        }
    }

    pub(crate) struct N;
    impl Names for N {
        fn policy(&self, id: u32) -> String {
            format!("p{id}")
        }
        fn cgroup(&mut self, id: u64) -> Arc<CgroupInfo> {
            Arc::new(CgroupInfo::of_path(format!("/cg{id}")))
        }
    }

    struct Silent;
    impl Observer for Silent {
        fn decision(&self, _: &DecisionEvent, _: &Event) {}
    }

    /// Outlets with a store in `dir`, and a subscriber to every event.
    pub(crate) fn outlets(dir: &std::path::Path) -> (Outlets, Subscription) {
        let store = crate::store::writer::Handle::start(
            dir.join("store.db"),
            crate::store::retention::Retention::default(),
            None,
        );
        let o = Outlets::new(
            0,
            store,
            false,
            Arc::default(),
            Arc::default(),
            Arc::new(Silent),
            Naming {
                ttl: (60, 0, 3600).into(),
                key: 0,
            },
        );
        let all = o
            .fanout
            .subscribe(Arc::new(|_: &Event| true), 0, 4 * MAX_DRAIN);
        (o, all)
    }

    fn received(s: &mut Subscription) -> usize {
        let mut n = 0;
        while s.live.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn a_full_ring_is_read_a_bounded_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (o, mut all) = outlets(dir.path());
        let names = Mutex::new(N);
        let mut reader = Reader::new(&o, &names, vec![(0, 7)]);
        // Far more than any drain may read at once.
        let mut ring = ring(100 * MAX_DRAIN);
        for round in 1..=3 {
            assert_eq!(reader.step(&mut ring), Drained::More);
            // Handed on at each step, not held until the ring is empty.
            assert_eq!(received(&mut all), MAX_DRAIN, "round {round}");
            assert!(reader.batch.is_empty());
        }
        assert_eq!(
            o.counters.would_deny.load(Ordering::Relaxed),
            3 * MAX_DRAIN as u64
        );
        // Never read to its end: nothing is claimed of what the kernel put
        // in it before, and the kernel's numbers wait.
        assert_eq!(o.ring_read_from.load(Ordering::Relaxed), 0);
        assert_eq!(reader.numbered, Some(vec![(0, 7)]));
    }

    #[test]
    fn the_kernel_numbers_go_to_the_store_once_the_ring_was_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let (o, mut all) = outlets(dir.path());
        let names = Mutex::new(N);
        let mut reader = Reader::new(&o, &names, vec![(1, 3)]);
        let mut ring = ring(MAX_DRAIN + 10);
        let before = harvest::boot_ns();
        assert_eq!(reader.step(&mut ring), Drained::More);
        assert_eq!(reader.numbered, Some(vec![(1, 3)]));
        let Drained::Empty(from) = reader.step(&mut ring) else {
            panic!("the ring was read to its end");
        };
        assert!(from >= before);
        assert_eq!(reader.numbered, None, "handed to the store");
        assert_eq!(o.ring_read_from.load(Ordering::Relaxed), from);
        assert_eq!(received(&mut all), MAX_DRAIN + 10);
        // Empty again: nothing more, and the numbers are not sent twice.
        assert!(matches!(reader.step(&mut ring), Drained::Empty(_)));
        assert_eq!(received(&mut all), 0);
    }

    #[test]
    fn a_stop_under_a_flood_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (o, mut all) = outlets(dir.path());
        let names = Mutex::new(N);
        let mut reader = Reader::new(&o, &names, Vec::new());
        // More than a stop reads in STOP_DRAIN (some 10^5 a second here;
        // read to its end this would take minutes).
        let records = 100_000_000;
        let mut ring = ring(records);
        reader.stop(&mut ring).unwrap();
        let read = records - ring.left;
        eprintln!("a stop read {read} records");
        assert!(ring.left > 0, "the stop waited for the ring to empty");
        assert!(read >= MAX_DRAIN, "a stop reads");
        assert!(received(&mut all) > 0, "and hands on what it read");
        assert!(reader.batch.is_empty());
    }
}
