//! Which name each cgroup resolved each address from, and the text behind
//! each name hash the kernel reports: the daemon's mirror of the kernel's
//! NAMES map, bounded.
//!
//! Two LRUs: (cgroup id, address) -> the names, and name hash -> name text.
//! Every name is held once, as an `Arc<str>` shared by the entries that
//! use it, so memory stays bounded whatever arrives: at most `addresses`
//! entries of two names and `names` texts of at most 253 bytes each. A
//! flood of distinct names evicts the least recently learned ones.
use std::{net::IpAddr, sync::Arc};

use hashlink::LruCache;
use monitor_common::dns;

use super::parse::Answer;

/// How long an address counts after an answer: the record's TTL clamped to
/// `[min_ttl_s, max_ttl_s]`, plus `grace_s` (applications cache longer
/// than the TTL). A `max_ttl_s` below `min_ttl_s` counts as `min_ttl_s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    pub min_ttl_s: u32,
    pub grace_s: u32,
    pub max_ttl_s: u32,
}

impl From<(u32, u32, u32)> for TtlPolicy {
    /// `(min_ttl_s, grace_s, max_ttl_s)`.
    fn from((min_ttl_s, grace_s, max_ttl_s): (u32, u32, u32)) -> Self {
        TtlPolicy {
            min_ttl_s,
            grace_s,
            max_ttl_s,
        }
    }
}

impl TtlPolicy {
    /// Nanoseconds an address learned with `ttl` seconds counts.
    pub fn lifetime_ns(&self, ttl: u32) -> u64 {
        let ttl = ttl
            .max(self.min_ttl_s)
            .min(self.max_ttl_s.max(self.min_ttl_s));
        (u64::from(ttl) + u64::from(self.grace_s)) * 1_000_000_000
    }
}

/// What one cgroup resolved one address from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    pub qname: Arc<str>,
    /// The end of the CNAME chain, when the question name had one.
    pub cname: Option<Arc<str>>,
    /// CLOCK_BOOTTIME nanoseconds from which the entry no longer answers.
    pub expires_ns: u64,
    pub learned_ns: u64,
}

/// Totals since the table was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Address records filed (new or refreshed).
    pub learned: u64,
    /// Live address entries pushed out to make room.
    pub evicted: u64,
    /// Address entries dropped after their expiry (found by `lookup`,
    /// `expire`, or pushed out when already expired).
    pub expired: u64,
    /// Answers not learned because the kernel would not file them either:
    /// a question name `dns::name_hashes` refuses (empty, more than
    /// `dns::MAX_LABELS` labels or 253 bytes).
    pub skipped: u64,
    /// Name texts pushed out of the hash -> text LRU.
    pub names_evicted: u64,
}

pub struct NameTable {
    addresses: LruCache<(u64, IpAddr), Learned>,
    names: LruCache<u64, Arc<str>>,
    counters: Counters,
    /// The kernel's name-hash key (see `monitor_common::dns`).
    key: u64,
}

impl NameTable {
    /// A table of at most `addresses` (cgroup, address) entries and `names`
    /// name texts (each at least 1).
    pub fn new(addresses: usize, names: usize) -> Self {
        NameTable {
            addresses: LruCache::new(addresses.max(1)),
            names: LruCache::new(names.max(1)),
            counters: Counters::default(),
            key: 0,
        }
    }

    /// The same table hashing names under `key`, as the kernel does.
    pub fn with_key(self, key: u64) -> Self {
        NameTable { key, ..self }
    }

    /// Files every address of `answer` as resolved by `cgroup_id` at
    /// `now_ns` (CLOCK_BOOTTIME), under the question name, as the kernel
    /// does. Returns how many records were filed.
    pub fn learn(
        &mut self,
        cgroup_id: u64,
        answer: &Answer,
        now_ns: u64,
        ttl: impl Into<TtlPolicy>,
    ) -> usize {
        let ttl = ttl.into();
        if answer.records.is_empty() {
            // Nothing to file, so no hash the kernel will report.
            return 0;
        }
        let Some(qname) = self.intern(&answer.qname) else {
            self.counters.skipped += 1;
            return 0;
        };
        let cname = answer
            .cname
            .as_deref()
            .map(|c| self.intern(c).unwrap_or_else(|| Arc::from(c)));
        for &(addr, record_ttl) in &answer.records {
            let key = (cgroup_id, addr.to_canonical());
            if !self.addresses.contains_key(&key)
                && self.addresses.len() >= self.addresses.capacity()
            {
                if let Some((_, old)) = self.addresses.remove_lru() {
                    if old.expires_ns <= now_ns {
                        self.counters.expired += 1;
                    } else {
                        self.counters.evicted += 1;
                    }
                }
            }
            let entry = Learned {
                qname: qname.clone(),
                cname: cname.clone(),
                expires_ns: now_ns.saturating_add(ttl.lifetime_ns(record_ttl)),
                learned_ns: now_ns,
            };
            self.addresses.insert(key, entry);
            self.counters.learned += 1;
        }
        answer.records.len()
    }

    /// The text of a name hash (`dns::name_hashes(..).full`) the kernel
    /// reported, if an answer with that name was learned and its text not
    /// yet pushed out.
    pub fn name_of(&self, hash: u64) -> Option<Arc<str>> {
        self.names.peek(&hash).cloned()
    }

    /// The question name (and CNAME target) `cgroup_id` resolved `addr`
    /// from, unless expired at `now_ns`. Marks the entry used; drops it if
    /// expired. IPv4-mapped IPv6 addresses are the IPv4 ones.
    pub fn lookup(
        &mut self,
        cgroup_id: u64,
        addr: IpAddr,
        now_ns: u64,
    ) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let key = (cgroup_id, addr.to_canonical());
        let entry = self.addresses.get(&key)?;
        if entry.expires_ns <= now_ns {
            self.addresses.remove(&key);
            self.counters.expired += 1;
            return None;
        }
        Some((entry.qname.clone(), entry.cname.clone()))
    }

    /// The entry for (`cgroup_id`, `addr`), expired or not, without marking
    /// it used.
    pub fn peek(&self, cgroup_id: u64, addr: IpAddr) -> Option<&Learned> {
        self.addresses.peek(&(cgroup_id, addr.to_canonical()))
    }

    /// Drops every address entry expired at `now_ns`; returns how many.
    /// Linear in the table's size: for a periodic sweep, not per event.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let stale: Vec<(u64, IpAddr)> = self
            .addresses
            .iter()
            .filter(|(_, e)| e.expires_ns <= now_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in &stale {
            self.addresses.remove(key);
        }
        self.counters.expired += stale.len() as u64;
        stale.len()
    }

    /// Address entries held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// Name texts held.
    pub fn names_len(&self) -> usize {
        self.names.len()
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The shared text of `name`, filed under its hash (marked used); `None`
    /// when the name has no hash. On a hash collision the newer text wins.
    fn intern(&mut self, name: &str) -> Option<Arc<str>> {
        let hash = dns::name_hashes(name.as_bytes(), self.key)?.full;
        if let Some(text) = self.names.get(&hash) {
            if **text == *name {
                return Some(text.clone());
            }
        }
        if !self.names.contains_key(&hash) && self.names.len() >= self.names.capacity() {
            self.names.remove_lru();
            self.counters.names_evicted += 1;
        }
        let text: Arc<str> = Arc::from(name);
        self.names.insert(hash, text.clone());
        Some(text)
    }
}
