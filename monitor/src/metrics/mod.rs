//! Prometheus metrics: what the daemon decided, lost and loaded, served in
//! the OpenMetrics text format by a small HTTP server (`--metrics-addr`).
//!
//! Decision counters are incremented in the event pipeline; everything the
//! daemon already counts elsewhere (kernel losses, policy set, database,
//! stream clients, map memory, ring buffer fill) is read when scraped.
//! Label values are bounded: verdicts, policy names and country codes.
pub mod server;
pub mod store;
pub mod system;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use monitor_common::DecisionEvent;
use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{events::Event, geo::GeoIdentity, policy::CompiledPolicy};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verdict: String,
    policy: String,
    /// ISO code, or `unknown` when the database has none.
    country: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
    mode: String,
    sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GeoLabels {
    sha256: String,
    build_time: String,
    database_type: String,
    schema: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsLabels {
    what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MissingLabels {
    policy: String,
    data: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    policy: String,
    /// `name`, `cloud region`, `cidr` or `country`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloudLabels {
    file: String,
    providers: String,
    sha256: String,
    date: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    programs: String,
}

/// What a scrape reads from the daemon, besides the counters kept here.
#[derive(Debug, Default)]
pub struct Snapshot<'a> {
    pub lost_in_kernel: u64,
    /// Of those, decisions that are not "allow".
    pub denials_lost_in_kernel: u64,
    /// Execs the kernel's process table had no room for.
    pub processes_lost: u64,
    pub undecodable: u64,
    pub missed_by_slow_clients: u64,
    pub stream_clients: u64,
    pub policy_generation: u32,
    pub policies: &'a [CompiledPolicy],
    pub selected_cgroups: usize,
    pub rejected_files: usize,
    pub geo: Option<&'a GeoIdentity>,
    /// Our programs the kernel no longer has (see `state::KernelProbe`).
    pub programs_missing: usize,
    /// The last candidate policy set was refused whole.
    pub policy_set_refused: bool,
    /// The kernel's DNS counters by name.
    pub dns: Vec<(&'static str, u64)>,
    /// DNS answers the kernel learned from that the daemon could not read.
    pub dns_unparsed: u64,
    /// The kernel's flow-table counters by name.
    pub flows: Vec<(&'static str, u64)>,
    pub flow_entries: u64,
    pub harvest_interval_ms: u64,
    /// Harvest reads: whole, changed.
    pub harvest_reads: (u64, u64),
    pub repeats: u64,
    pub cloud: Option<&'a crate::cloud::CloudRanges>,
    /// The last candidate cloud snapshot was rejected.
    pub cloud_rejected: bool,
    /// Rules in force that no loaded data can judge.
    pub data_missing: &'a [crate::policy::lint::Missing],
}

type DecisionKey = (u32, u8, [u8; 2]);

pub struct Metrics {
    registry: Mutex<Registry>,
    decisions: Family<DecisionLabels, Counter>,
    /// Counter handles by raw (policy id, verdict, country), so the hot path
    /// neither allocates label strings nor hashes them. Policy ids are never
    /// reused for another name.
    decision_cache: Mutex<HashMap<DecisionKey, Counter>>,
    lost: Counter,
    denials_lost: Counter,
    processes_lost: Counter,
    undecodable: Counter,
    missed: Counter,
    clients: Gauge,
    reloads: Family<ResultLabels, Counter>,
    rejected_files: Gauge,
    generation: Gauge,
    policy_info: Family<PolicyLabels, Gauge>,
    selected: Gauge,
    geo_info: Family<GeoLabels, Gauge>,
    geo_prefixes: Gauge,
    map_memory: Gauge,
    maps: Gauge,
    ring_size: Gauge,
    ring_used: Gauge,
    ring: Mutex<Option<system::RingFill>>,
    programs_missing: Gauge,
    set_refused: Gauge,
    data_missing: Family<MissingLabels, Gauge>,
    drift: Family<DriftLabels, Counter>,
    dns: Family<DnsLabels, Counter>,
    dns_unparsed: Counter,
    flows: Family<DnsLabels, Counter>,
    flow_entries: Gauge,
    harvest_interval: Gauge<f64, std::sync::atomic::AtomicU64>,
    harvest_reads: Family<DnsLabels, Counter>,
    repeats: Counter,
    cloud_info: Family<CloudLabels, Gauge>,
    cloud_prefixes: Gauge,
    cloud_rejected: Gauge,
    /// Serialises the read-and-sync of a scrape.
    scrape: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("egress_monitor")),
            decisions: Family::default(),
            decision_cache: Mutex::new(HashMap::new()),
            lost: Counter::default(),
            denials_lost: Counter::default(),
            processes_lost: Counter::default(),
            undecodable: Counter::default(),
            missed: Counter::default(),
            clients: Gauge::default(),
            reloads: Family::default(),
            rejected_files: Gauge::default(),
            generation: Gauge::default(),
            policy_info: Family::default(),
            selected: Gauge::default(),
            geo_info: Family::default(),
            geo_prefixes: Gauge::default(),
            map_memory: Gauge::default(),
            maps: Gauge::default(),
            ring_size: Gauge::default(),
            ring_used: Gauge::default(),
            ring: Mutex::new(None),
            programs_missing: Gauge::default(),
            set_refused: Gauge::default(),
            data_missing: Family::default(),
            drift: Family::default(),
            dns: Family::default(),
            dns_unparsed: Counter::default(),
            flows: Family::default(),
            flow_entries: Gauge::default(),
            harvest_interval: Gauge::default(),
            harvest_reads: Family::default(),
            repeats: Counter::default(),
            cloud_info: Family::default(),
            cloud_prefixes: Gauge::default(),
            cloud_rejected: Gauge::default(),
            scrape: tokio::sync::Mutex::new(()),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "decisions",
                "Decisions by verdict, deciding policy and destination country",
                m.decisions.clone(),
            );
            r.register(
                "events_lost",
                "Decision events the kernel could not queue (ring buffer full)",
                m.lost.clone(),
            );
            r.register(
                "denials_lost",
                "Of events_lost: decisions that are not allow (denied, would-deny, unclassified) that found even the ring buffer's reserve for them full",
                m.denials_lost.clone(),
            );
            r.register(
                "processes_lost",
                "Execs the kernel's process table had no room for (their events name the process from /proc, or by comm only)",
                m.processes_lost.clone(),
            );
            r.register(
                "events_undecodable",
                "Ring buffer records that did not decode",
                m.undecodable.clone(),
            );
            r.register(
                "stream_events_missed",
                "Events gRPC stream clients missed because they read too slowly",
                m.missed.clone(),
            );
            r.register(
                "stream_clients",
                "gRPC event stream clients connected",
                m.clients.clone(),
            );
            r.register(
                "policy_reloads",
                "Policy directory reloads: ok, or failed (a file rejected or the set refused)",
                m.reloads.clone(),
            );
            r.register(
                "policy_files_rejected",
                "Policy files rejected now (their previous version, if any, stays in force)",
                m.rejected_files.clone(),
            );
            r.register(
                "policy_generation",
                "Generation of the policy set in the kernel",
                m.generation.clone(),
            );
            r.register(
                "policy_info",
                "Policies in force (value 1), with mode and SHA-256 of their text",
                m.policy_info.clone(),
            );
            r.register(
                "selected_cgroups",
                "Cgroups selected by a policy",
                m.selected.clone(),
            );
            r.register(
                "geoip_info",
                "The country database in the kernel (value 1)",
                m.geo_info.clone(),
            );
            r.register(
                "geoip_prefixes",
                "Prefixes of the country database in the kernel trie",
                m.geo_prefixes.clone(),
            );
            r.register(
                "bpf_map_memory_bytes",
                "Memory charged to the BPF maps the daemon holds (memlock in fdinfo)",
                m.map_memory.clone(),
            );
            r.register("bpf_maps", "BPF maps the daemon holds", m.maps.clone());
            r.register(
                "ring_buffer_size_bytes",
                "Size of the kernel event ring buffer",
                m.ring_size.clone(),
            );
            r.register(
                "ring_buffer_used_bytes",
                "Bytes the kernel has written to the ring buffer and the daemon not yet read",
                m.ring_used.clone(),
            );
            r.register(
                "programs_missing",
                "Programs the daemon attached that the kernel no longer has (someone removed their pins); enforcement is degraded until they are attached again",
                m.programs_missing.clone(),
            );
            r.register(
                "policy_set_refused",
                "1 when the last candidate policy set was refused whole (a conflict); the previous set stays in force",
                m.set_refused.clone(),
            );
            r.register(
                "drift_alerts",
                "Drift alerts: first contacts of a workload with a destination outside its policy's baseline, by policy and kind of destination (name, cloud region, cidr, country)",
                m.drift.clone(),
            );
            r.register(
                "policy_data_missing",
                "1 for each policy in force with rules no loaded data can judge, so they match nothing: data=cloud_ranges (cloudRegions without --cloud-ranges), data=dns_resolver (domains without a trusted resolver)",
                m.data_missing.clone(),
            );
            r.register(
                "dns",
                "DNS traffic of selected cgroups as the kernel saw it: queries noted, answers read, addresses learned, and answers ignored (unsolicited, wrong_name, malformed, truncated, split, oversized, name_too_long) or read but not reported (unreported)",
                m.dns.clone(),
            );
            r.register(
                "dns_unparsed",
                "DNS answers the kernel learned from that the daemon could not read (their events name the hash only)",
                m.dns_unparsed.clone(),
            );
            r.register(
                "flow_decisions",
                "Decisions the kernel made and cached in its flow table (decided), and decisions that found the table full and were reported as events instead (overflow)",
                m.flows.clone(),
            );
            r.register(
                "flow_table_entries",
                "Flows in the kernel's flow table: as the last whole read of it found them, plus the entries the kernel filed since",
                m.flow_entries.clone(),
            );
            r.register(
                "flow_harvest_interval_seconds",
                "Time from one harvest of the kernel's flow tables to the next (the most flow counts lag): 1 s; where more changed than a harvest follows (thousands of new destinations a second) or the kernel lists no changes (pins of an earlier build), longer where a whole read of large tables would take more than 2% of a core, at most 10 s",
                m.harvest_interval.clone(),
            );
            r.register(
                "flow_harvest_reads",
                "Harvests by what they read: the whole flow tables (what=\"whole\"), or only the entries the kernel listed as changed since the harvest before (what=\"changed\")",
                m.harvest_reads.clone(),
            );
            r.register(
                "flow_repeats",
                "Attempts the kernel answered from its decision cache and counted in its flow table instead of reporting as events (harvested)",
                m.repeats.clone(),
            );
            r.register(
                "cloud_ranges_info",
                "The cloud-range files in force (value 1): file, providers, SHA-256, date",
                m.cloud_info.clone(),
            );
            r.register(
                "cloud_ranges_prefixes",
                "Cloud provider prefixes in the kernel trie",
                m.cloud_prefixes.clone(),
            );
            r.register(
                "cloud_ranges_rejected",
                "1 when the last change to the cloud-range directory was rejected (the ranges in force stay)",
                m.cloud_rejected.clone(),
            );
            let build = Family::<BuildLabels, Gauge>::default();
            build
                .get_or_create(&BuildLabels {
                    version: env!("CARGO_PKG_VERSION").into(),
                    programs: crate::kernel::build_id(),
                })
                .set(1);
            r.register(
                "build_info",
                "Agent version and build of its kernel programs (value 1)",
                build,
            );
        }
        m
    }

    /// Counts one decision; cheap after the first of its kind.
    pub fn decision(&self, raw: &DecisionEvent, event: &Event) {
        self.decisions_by(raw, event, 1);
    }

    /// Counts `n` decisions like `raw`.
    fn decisions_by(&self, raw: &DecisionEvent, event: &Event, n: u64) {
        if n == 0 {
            return;
        }
        let key = (raw.policy_id, raw.verdict, raw.country);
        let mut cache = self
            .decision_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let counter = cache.entry(key).or_insert_with(|| {
            self.decisions
                .get_or_create(&DecisionLabels {
                    verdict: event.verdict.to_string(),
                    policy: event.policy.clone(),
                    country: if event.country.is_empty() {
                        "unknown".into()
                    } else {
                        event.country.clone()
                    },
                })
                .clone()
        });
        counter.inc_by(n);
    }

    /// Counts a policy directory reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Reads the ring buffer's fill from now on.
    pub fn watch_ring(&self, ring: system::RingFill) {
        self.ring_size.set(ring.size() as i64);
        *self.ring.lock().unwrap_or_else(|p| p.into_inner()) = Some(ring);
    }

    /// Where other parts of the daemon (the flow store) add their metrics:
    /// a collector is asked for its values at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// Where a part that keeps its own metrics (the NATS publisher)
    /// registers them.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn sync_counter(counter: &Counter, source: u64) {
        let now = counter.get();
        if source > now {
            counter.inc_by(source - now);
        }
    }

    /// Brings the scrape-time values up to date.
    fn refresh(&self, s: &Snapshot) {
        Self::sync_counter(&self.lost, s.lost_in_kernel);
        Self::sync_counter(&self.denials_lost, s.denials_lost_in_kernel);
        Self::sync_counter(&self.processes_lost, s.processes_lost);
        Self::sync_counter(&self.undecodable, s.undecodable);
        Self::sync_counter(&self.missed, s.missed_by_slow_clients);
        self.clients.set(s.stream_clients as i64);
        self.generation.set(i64::from(s.policy_generation));
        self.rejected_files.set(s.rejected_files as i64);
        self.selected.set(s.selected_cgroups as i64);
        self.programs_missing.set(s.programs_missing as i64);
        self.set_refused.set(i64::from(s.policy_set_refused));
        // Each policy with a baseline has its drift series from the start
        // (at 0), so an alert on their increase sees the first one.
        for p in s.policies.iter().filter(|p| p.baseline.is_some()) {
            for kind in ["name", "cloud region", "cidr", "country"] {
                let _ = self.drift.get_or_create(&DriftLabels {
                    policy: p.name.clone(),
                    kind: kind.into(),
                });
            }
        }
        self.data_missing.clear();
        for m in s.data_missing {
            self.data_missing
                .get_or_create(&MissingLabels {
                    policy: m.policy.clone(),
                    data: m.data.to_string(),
                })
                .set(1);
        }
        for (what, n) in &s.dns {
            Self::sync_counter(
                &self.dns.get_or_create(&DnsLabels {
                    what: (*what).into(),
                }),
                *n,
            );
        }
        Self::sync_counter(&self.dns_unparsed, s.dns_unparsed);
        for (what, n) in &s.flows {
            Self::sync_counter(
                &self.flows.get_or_create(&DnsLabels {
                    what: (*what).into(),
                }),
                *n,
            );
        }
        self.flow_entries.set(s.flow_entries as i64);
        self.harvest_interval
            .set(s.harvest_interval_ms as f64 / 1000.0);
        for (what, n) in [("whole", s.harvest_reads.0), ("changed", s.harvest_reads.1)] {
            Self::sync_counter(
                &self
                    .harvest_reads
                    .get_or_create(&DnsLabels { what: what.into() }),
                n,
            );
        }
        Self::sync_counter(&self.repeats, s.repeats);
        self.cloud_info.clear();
        if let Some(c) = s.cloud {
            for f in c.files() {
                self.cloud_info
                    .get_or_create(&CloudLabels {
                        file: f.path.display().to_string(),
                        providers: f.providers.join(","),
                        sha256: f.sha256.clone(),
                        date: f.date.clone(),
                    })
                    .set(1);
            }
            self.cloud_prefixes.set(c.entries().len() as i64);
        }
        self.cloud_rejected.set(i64::from(s.cloud_rejected));
        self.policy_info.clear();
        for p in s.policies {
            self.policy_info
                .get_or_create(&PolicyLabels {
                    policy: p.name.clone(),
                    mode: p.mode.to_string(),
                    sha256: p.sha256.clone(),
                })
                .set(1);
        }
        self.geo_info.clear();
        if let Some(g) = s.geo {
            self.geo_info
                .get_or_create(&GeoLabels {
                    sha256: g.sha256.clone(),
                    build_time: crate::events::rfc3339_nanos(
                        i128::from(g.build_epoch) * 1_000_000_000,
                    ),
                    database_type: g.database_type.clone(),
                    schema: g.schema.clone(),
                })
                .set(1);
            self.geo_prefixes.set(g.prefixes as i64);
        }
        let maps = system::bpf_maps();
        self.map_memory.set(maps.memlock_bytes as i64);
        self.maps.set(maps.count as i64);
        if let Some(ring) = &*self.ring.lock().unwrap_or_else(|p| p.into_inner()) {
            self.ring_used.set(ring.used() as i64);
        }
    }

    /// Refreshes with `snapshot` and encodes everything.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.refresh(snapshot);
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = encode(&mut out, &registry) {
            log::error!("encoding metrics: {e}");
        }
        out
    }
}

impl crate::pipeline::Observer for Metrics {
    fn decision(&self, raw: &DecisionEvent, event: &Event) {
        Metrics::decision(self, raw, event);
    }

    fn repeated(&self, raw: &DecisionEvent, event: &Event, count: u64) {
        self.decisions_by(raw, event, count);
    }

    fn drift(&self, alert: &Event) {
        let kind = alert.drift.as_deref().map_or("", |d| d.kind.as_str());
        self.drift
            .get_or_create(&DriftLabels {
                policy: alert.policy.clone(),
                kind: kind.into(),
            })
            .inc();
    }
}

/// Renders the daemon's metrics now, from the read-only view: never waits
/// for a reload.
pub async fn scrape(view: &crate::state::View, metrics: &Arc<Metrics>) -> String {
    use std::sync::atomic::Ordering;
    let _one_at_a_time = metrics.scrape.lock().await;
    let s = view.policy();
    let policies: Vec<CompiledPolicy> = s.policies.iter().map(|p| p.policy.clone()).collect();
    let snapshot = Snapshot {
        lost_in_kernel: view.kernel.lost_events(),
        denials_lost_in_kernel: view.kernel.denials_lost(),
        processes_lost: view.kernel.processes_lost(),
        undecodable: view.counters.undecodable.load(Ordering::Relaxed),
        missed_by_slow_clients: view.streams.missed.load(Ordering::Relaxed),
        stream_clients: view.streams.clients.load(Ordering::Relaxed),
        policy_generation: s.generation,
        policies: &policies,
        selected_cgroups: s.selected_cgroups,
        rejected_files: s.rejected_files.len(),
        geo: s.geo.as_ref(),
        programs_missing: view.kernel.programs().missing.len(),
        policy_set_refused: !s.refused.is_empty(),
        dns: view.kernel.dns_stats(),
        dns_unparsed: view.counters.dns_unparsed.load(Ordering::Relaxed),
        flows: view.kernel.flow_stats(),
        flow_entries: view.counters.flow_entries.load(Ordering::Relaxed),
        harvest_interval_ms: view.counters.harvest_interval_ms.load(Ordering::Relaxed),
        harvest_reads: (
            view.counters.harvest_reads_whole.load(Ordering::Relaxed),
            view.counters.harvest_reads_changed.load(Ordering::Relaxed),
        ),
        repeats: view.counters.repeats.load(Ordering::Relaxed),
        cloud: Some(&s.cloud),
        cloud_rejected: !s.cloud_error.is_empty(),
        data_missing: &s.data_missing,
    };
    metrics.render(&snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(policy_id: u32, verdict: u8, country: [u8; 2]) -> DecisionEvent {
        // SAFETY: DecisionEvent is plain data; all zeroes is valid.
        let mut e: DecisionEvent = unsafe { std::mem::zeroed() };
        e.policy_id = policy_id;
        e.verdict = verdict;
        e.country = country;
        e
    }

    fn event(verdict: &'static str, policy: &str, country: &str) -> Event {
        Event {
            verdict,
            policy: policy.into(),
            country: country.into(),
            ..Default::default()
        }
    }

    #[test]
    fn decisions_are_counted_by_verdict_policy_and_country() {
        use monitor_common::verdict;
        let m = Metrics::new();
        for _ in 0..3 {
            m.decision(
                &raw(1, verdict::DENIED, *b"US"),
                &event("denied", "eu", "US"),
            );
        }
        m.decision(
            &raw(1, verdict::ALLOWED, *b"DE"),
            &event("allowed", "eu", "DE"),
        );
        m.decision(
            &raw(2, verdict::WOULD_DENY, [0, 0]),
            &event("would_deny", "w", ""),
        );
        m.reload(true);
        m.reload(false);
        m.reload(true);
        let text = m.render(&Snapshot {
            lost_in_kernel: 7,
            denials_lost_in_kernel: 5,
            processes_lost: 3,
            undecodable: 2,
            policy_generation: 4,
            ..Default::default()
        });
        for line in [
            "egress_monitor_decisions_total{verdict=\"denied\",policy=\"eu\",country=\"US\"} 3",
            "egress_monitor_decisions_total{verdict=\"allowed\",policy=\"eu\",country=\"DE\"} 1",
            "egress_monitor_decisions_total{verdict=\"would_deny\",policy=\"w\",country=\"unknown\"} 1",
            "egress_monitor_policy_reloads_total{result=\"ok\"} 2",
            "egress_monitor_policy_reloads_total{result=\"failed\"} 1",
            "egress_monitor_events_lost_total 7",
            "egress_monitor_denials_lost_total 5",
            "egress_monitor_processes_lost_total 3",
            "egress_monitor_events_undecodable_total 2",
            "egress_monitor_policy_generation 4",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // A second scrape with the same sources does not count twice.
        let again = m.render(&Snapshot {
            lost_in_kernel: 7,
            ..Default::default()
        });
        assert!(
            again.contains("egress_monitor_events_lost_total 7\n"),
            "{again}"
        );
        assert!(again.contains("egress_monitor_build_info{version=\""));
        assert!(again.ends_with("# EOF\n"));
    }
}
