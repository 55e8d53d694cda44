//! The event pipeline: drains the kernel ring buffer as it becomes readable,
//! decodes and enriches each record, and hands it on (stdout JSON lines, the
//! in-memory history, live subscribers). Nothing here waits on a consumer:
//! a slow subscriber misses events (and is told how many), the kernel drain
//! never slows down.
use std::{
    collections::VecDeque,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use aya::maps::{MapData, RingBuf};
use monitor_common::verdict;
use tokio::{io::unix::AsyncFd, sync::broadcast};

use super::{boot_to_unix_offset, decode, enrich, Event, Names};

/// Counters reported by status.
#[derive(Debug, Default)]
pub struct Counters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub would_deny: AtomicU64,
    pub undecodable: AtomicU64,
}

impl Counters {
    fn count(&self, v: u8) {
        let c = match v {
            verdict::ALLOWED => &self.allowed,
            verdict::DENIED => &self.denied,
            _ => &self.would_deny,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where decoded events go.
pub struct Outlets {
    pub counters: Counters,
    pub live: broadcast::Sender<Arc<Event>>,
    pub history: Mutex<VecDeque<Arc<Event>>>,
    pub history_len: usize,
    pub log_events: bool,
    /// Prometheus counters of decisions (and what a scrape reads).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Outlets {
    pub fn new(history_len: usize, live_capacity: usize, log_events: bool) -> Self {
        let (live, _) = broadcast::channel(live_capacity);
        Self {
            counters: Counters::default(),
            live,
            history: Mutex::new(VecDeque::with_capacity(history_len.min(65_536))),
            history_len,
            log_events,
            metrics: Arc::new(crate::metrics::Metrics::new()),
        }
    }
}

/// Decodes every record in the ring into `batch`.
fn drain_into<N: Names>(
    ring: &mut RingBuf<MapData>,
    outlets: &Outlets,
    names: &Mutex<N>,
    batch: &mut Vec<Arc<Event>>,
) {
    let offset = boot_to_unix_offset();
    let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(raw) => {
                outlets.counters.count(raw.verdict);
                let event = enrich(&raw, offset, &mut *names);
                outlets.metrics.decision(&raw, &event);
                batch.push(Arc::new(event));
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

/// Hands a batch to stdout (when asked), the history and live subscribers.
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
    // History and live stream change together, under one lock, so a new
    // subscriber sees every event exactly once.
    let mut history = outlets.history.lock().unwrap_or_else(|p| p.into_inner());
    for e in batch.drain(..) {
        if outlets.history_len > 0 {
            if history.len() == outlets.history_len {
                history.pop_front();
            }
            history.push_back(e.clone());
        }
        // No subscriber is not an error.
        let _ = outlets.live.send(e);
    }
}

/// Drains what a ring holds now (a retired build's ring); returns how many
/// events it held.
pub fn drain_once<N: Names>(
    mut ring: RingBuf<MapData>,
    outlets: &Outlets,
    names: &Mutex<N>,
) -> usize {
    let mut batch = Vec::new();
    drain_into(&mut ring, outlets, names, &mut batch);
    let n = batch.len();
    let mut stdout_ok = outlets.log_events;
    publish(outlets, &mut batch, &mut stdout_ok);
    n
}

/// Drains the ring buffer as it becomes readable, until an error.
pub async fn run<N: Names + Send>(
    ring: RingBuf<MapData>,
    outlets: Arc<Outlets>,
    names: Arc<Mutex<N>>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd,
    // so the fd stays open exactly as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let mut stdout_ok = outlets.log_events;
    let mut batch: Vec<Arc<Event>> = Vec::new();
    // Whatever the ring held before we started (a restart) comes first.
    drain_into(fd.get_mut(), &outlets, &names, &mut batch);
    publish(&outlets, &mut batch, &mut stdout_ok);
    let mut timer = tokio::time::interval(DRAIN_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // The kernel wakes us only when a batch waits (see
        // limits::WAKEUP_BYTES); the timer picks up the rest.
        let on_timer = tokio::select! {
            ready = fd.readable_mut() => {
                let mut guard = ready?;
                drain_into(guard.get_inner_mut(), &outlets, &names, &mut batch);
                guard.clear_ready();
                false
            }
            _ = timer.tick() => true,
        };
        if on_timer {
            drain_into(fd.get_mut(), &outlets, &names, &mut batch);
        }
        publish(&outlets, &mut batch, &mut stdout_ok);
    }
}

/// How long an event may wait in the ring buffer when no batch fills it.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
