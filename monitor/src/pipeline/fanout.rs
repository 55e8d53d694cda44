//! The in-memory history and the filtered stream subscribers.
//!
//! Each subscriber hands in its filter; the pipeline applies it before
//! queueing, so a subscriber's queue holds only what it asked for, and the
//! events it misses (its queue was full) are counted among those only: a
//! gap says how many matching events were lost, never how many the client
//! would not have received anyway.
//!
//! The lock is held only to append a batch and to register a subscriber
//! (taking a copy of the history's pointers); a new subscriber filters
//! its history outside the lock, so it never delays the kernel drain.
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::mpsc;

use crate::{events::Event, state::Streams};

/// A subscriber's filter.
pub type Filter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Arc<Event>>,
    missed: Arc<AtomicU64>,
}

struct Inner {
    history: VecDeque<Arc<Event>>,
    subscribers: Vec<Subscriber>,
}

pub struct Fanout {
    inner: Mutex<Inner>,
    history_len: usize,
    streams: Arc<Streams>,
    /// Wall clock when publishing began: everything older is in the store.
    created_nanos: i64,
}

/// What a new subscriber gets: the matching history (oldest first), the
/// live events after it, and the count of matching events it missed.
pub struct Subscription {
    pub history: Vec<Arc<Event>>,
    pub live: mpsc::Receiver<Arc<Event>>,
    pub missed: Arc<AtomicU64>,
    /// Events older than this (Unix nanoseconds) are neither in `history`
    /// nor coming live: where the store takes over, without overlap.
    pub store_before: i64,
}

impl Subscription {
    /// Matching events missed since the last call.
    pub fn take_missed(&self) -> u64 {
        self.missed.swap(0, Ordering::Relaxed)
    }
}

impl Fanout {
    pub fn new(history_len: usize, streams: Arc<Streams>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                history: VecDeque::with_capacity(history_len.min(65_536)),
                subscribers: Vec::new(),
            }),
            history_len,
            streams,
            created_nanos: crate::store::now_nanos(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to the history and queues each event for the subscribers
    /// whose filter it matches.
    pub fn publish(&self, events: impl Iterator<Item = Arc<Event>>) {
        let mut inner = self.lock();
        let Inner {
            history,
            subscribers,
        } = &mut *inner;
        for e in events {
            for s in subscribers.iter() {
                if !(s.filter)(&e) {
                    continue;
                }
                match s.tx.try_send(e.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.missed.fetch_add(1, Ordering::Relaxed);
                        self.streams.missed.fetch_add(1, Ordering::Relaxed);
                    }
                    // Gone; removed below.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            if self.history_len > 0 {
                if history.len() == self.history_len {
                    history.pop_front();
                }
                history.push_back(e);
            }
        }
        subscribers.retain(|s| !s.tx.is_closed());
    }

    /// Registers a subscriber: up to `last` matching events of the history,
    /// then every matching event published after them, exactly once.
    pub fn subscribe(&self, filter: Filter, last: usize, queue: usize) -> Subscription {
        let (tx, live) = mpsc::channel(queue.max(1));
        let missed = Arc::new(AtomicU64::new(0));
        let (copy, store_before) = {
            let mut inner = self.lock();
            let store_before = inner
                .history
                .front()
                .map_or(self.created_nanos, |e| e.unix_nanos as i64);
            let copy: Vec<Arc<Event>> = if last > 0 {
                inner.history.iter().cloned().collect()
            } else {
                Vec::new()
            };
            inner.subscribers.push(Subscriber {
                filter: filter.clone(),
                tx,
                missed: missed.clone(),
            });
            (copy, store_before)
        };
        let mut history: Vec<Arc<Event>> = copy
            .into_iter()
            .rev()
            .filter(|e| filter(e))
            .take(last)
            .collect();
        history.reverse();
        Subscription {
            history,
            live,
            missed,
            store_before,
        }
    }

    /// Subscribers registered now.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(verdict: &'static str, n: u16) -> Arc<Event> {
        Arc::new(Event {
            verdict,
            dst_port: n,
            ..Default::default()
        })
    }

    fn denied_only() -> Filter {
        Arc::new(|e: &Event| e.verdict == "denied")
    }

    #[tokio::test]
    async fn a_filtered_subscriber_misses_only_what_it_asked_for() {
        let streams = Arc::new(Streams::default());
        let f = Fanout::new(100, streams.clone());
        let mut sub = f.subscribe(denied_only(), 0, 4);
        // A flood the subscriber never asked for fills nothing.
        f.publish((0..10_000).map(|i| event("allowed", i as u16)));
        assert_eq!(sub.take_missed(), 0, "non-matching events are not a gap");
        // Six matching events into a queue of four: two missed.
        f.publish((0..6).map(|i| event("denied", i)));
        assert_eq!(sub.take_missed(), 2);
        assert_eq!(streams.missed.load(Ordering::Relaxed), 2);
        for want in 0..4 {
            let e = sub.live.recv().await.expect("queued event");
            assert_eq!((e.verdict, e.dst_port), ("denied", want));
        }
        assert!(sub.live.try_recv().is_err(), "nothing else was queued");
    }

    #[tokio::test]
    async fn history_then_live_exactly_once() {
        let f = Fanout::new(5, Arc::new(Streams::default()));
        f.publish((0..8).map(|i| event(if i % 2 == 0 { "denied" } else { "allowed" }, i)));
        let mut sub = f.subscribe(denied_only(), 10, 16);
        // The history keeps the last five (3..=7); the denied of those: 4, 6.
        let ports: Vec<u16> = sub.history.iter().map(|e| e.dst_port).collect();
        assert_eq!(ports, [4, 6]);
        f.publish([event("denied", 100), event("allowed", 101)].into_iter());
        assert_eq!(sub.live.recv().await.map(|e| e.dst_port), Some(100));
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn a_closed_subscriber_is_dropped() {
        let f = Fanout::new(0, Arc::new(Streams::default()));
        let sub = f.subscribe(denied_only(), 0, 1);
        assert_eq!(f.subscribers(), 1);
        drop(sub);
        f.publish(std::iter::once(event("denied", 1)));
        assert_eq!(f.subscribers(), 0);
    }
}
