//! The EgressMonitor gRPC service.
use std::{
    path::Path,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
};

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use super::{
    backend::Backend,
    filter::Filter,
    pb::{self, egress_monitor_server::EgressMonitor, stream_events_response::Item},
};
use crate::{
    events::{rfc3339_nanos, Event},
    policy::{self, CompiledPolicy},
    state::{PolicySnapshot, View},
};

/// Events queued per client before it counts as slow and starts missing.
pub const CLIENT_QUEUE: usize = 4096;
/// Messages between a client's forwarder and its HTTP/2 stream.
const TRANSPORT_QUEUE: usize = 16;
/// History a client may ask for at once.
pub const MAX_LAST: u32 = 100_000;
/// Largest policy text CheckPolicy takes: 256 KiB. A policy people write
/// is a few kilobytes (the shipped ones are under 1 KiB), and 256 KiB still
/// holds some 15,000 CIDRs; a larger file (the daemon reads up to 16 MiB)
/// is checked where it is, with `egress-monitor policy check FILE`. The
/// limit bounds what one viewer's request costs the daemon.
pub const MAX_POLICY_TEXT: usize = 256 << 10;
/// CheckPolicy calls compiled at once, each on a blocking thread; one more
/// is refused RESOURCE_EXHAUSTED rather than queued.
pub const CHECK_POLICY_SLOTS: usize = 2;

pub struct Service {
    pub backend: Backend,
    /// The CheckPolicy calls in progress ([`CHECK_POLICY_SLOTS`]).
    pub check_slots: Arc<tokio::sync::Semaphore>,
    /// The country database in force, for Explain.
    pub geo: super::explain::GeoCache,
}

impl Service {
    pub fn new(backend: Backend) -> Self {
        Service {
            backend,
            check_slots: Arc::new(tokio::sync::Semaphore::new(CHECK_POLICY_SLOTS)),
            geo: Default::default(),
        }
    }
}

pub fn policy_pb(p: &CompiledPolicy, selected: &[String]) -> pb::Policy {
    pb::Policy {
        name: p.name.clone(),
        mode: p.mode.to_string(),
        file: p.file.clone(),
        sha256: p.sha256.clone(),
        cgroup_globs: p.cgroup_globs.clone(),
        selected_cgroups: selected.to_vec(),
        allowed_countries: p.allowed_countries.iter().cloned().collect(),
        denied_countries: p.denied_countries.iter().cloned().collect(),
        allow_cidrs: p.allow_cidrs.len() as u32,
        deny_cidrs: p.deny_cidrs.len() as u32,
        region_rules: p.region_rules.len() as u32,
        pods: p.pods.iter().cloned().collect(),
        systemd_units: p.unit_globs.clone(),
        baseline_file: p
            .baseline
            .as_ref()
            .map(|b| b.path.clone())
            .unwrap_or_default(),
        baseline_name: p
            .baseline
            .as_ref()
            .map(|b| b.name.clone())
            .unwrap_or_default(),
        baseline_sha256: p
            .baseline
            .as_ref()
            .map(|b| b.sha256.clone())
            .unwrap_or_default(),
    }
}

/// CheckPolicy: the text's limit, then the compile on a blocking thread in
/// one of `slots`, or RESOURCE_EXHAUSTED when none is free. A policy that
/// does not compile is an answer (`valid: false`, the error and its line),
/// not an error status.
pub async fn check_policy_text(
    slots: &Arc<tokio::sync::Semaphore>,
    req: pb::CheckPolicyRequest,
) -> Result<pb::CheckPolicyResponse, Status> {
    if req.text.trim().is_empty() {
        return Err(Status::invalid_argument(
            "text: empty; send the YAML of one or more policies",
        ));
    }
    if req.text.len() > MAX_POLICY_TEXT {
        return Err(Status::invalid_argument(format!(
            "text: {} bytes is more than the {MAX_POLICY_TEXT} bytes (256 KiB) CheckPolicy \
             takes; check a larger file where it is, with `egress-monitor policy check FILE`",
            req.text.len()
        )));
    }
    let name = if req.file_name.is_empty() {
        "policy.yaml".to_string()
    } else {
        req.file_name
    };
    // Compiling is CPU work: off the async runtime, at most
    // CHECK_POLICY_SLOTS at once, and a call beyond them is refused rather
    // than queued without bound.
    let slot = slots.clone().try_acquire_owned().map_err(|_| {
        Status::resource_exhausted(format!(
            "CheckPolicy: {CHECK_POLICY_SLOTS} checks are already running; try again shortly"
        ))
    })?;
    let text = req.text;
    let checked = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        policy::compile_text(Path::new(&name), &text)
    })
    .await
    .map_err(|e| Status::internal(format!("CheckPolicy: the check failed: {e}")))?;
    Ok(match checked {
        Ok(policies) => pb::CheckPolicyResponse {
            valid: true,
            error: String::new(),
            line: 0,
            policies: policies.iter().map(|p| policy_pb(p, &[])).collect(),
        },
        Err(e) => pb::CheckPolicyResponse {
            valid: false,
            error: e.to_string(),
            line: e.line as u32,
            policies: Vec::new(),
        },
    })
}

fn rejected_pb(s: &PolicySnapshot) -> Vec<pb::RejectedFile> {
    s.rejected_files
        .iter()
        .map(|r| pb::RejectedFile {
            file: r.file.clone(),
            error: r.error.clone(),
            previous_in_force: r.previous_in_force,
        })
        .collect()
}

fn policies_pb(s: &PolicySnapshot) -> Vec<pb::Policy> {
    s.policies
        .iter()
        .map(|p| policy_pb(&p.policy, &p.selected))
        .collect()
}

/// The status, from the view alone: never waits for a reload.
pub fn status_pb(
    view: &View,
    store: &crate::store::writer::StoreStatus,
    node_key: &str,
) -> pb::GetStatusResponse {
    let s = view.policy();
    let programs = view.kernel.programs();
    let (allowed, denied, would_deny) = view.decisions();
    let uptime = view.started.elapsed().unwrap_or_default();
    let started = view
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| rfc3339_nanos(d.as_nanos() as i128))
        .unwrap_or_default();
    pb::GetStatusResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel_release(),
        cgroup_root: s.cgroup_root.display().to_string(),
        programs: programs
            .attached
            .iter()
            .map(|a| pb::AttachedProgram {
                hook: a.hook.into(),
                program_id: a.program_id,
            })
            .collect(),
        missing_programs: programs.missing.iter().map(|h| h.to_string()).collect(),
        reattached: view.reattached.load(Ordering::Relaxed),
        policies: policies_pb(&s),
        geoip: s.geo.as_ref().map(|geo| pb::GeoDatabase {
            path: geo.path.display().to_string(),
            database_type: geo.database_type.clone(),
            schema: geo.schema.clone(),
            build_epoch: geo.build_epoch,
            build_time: rfc3339_nanos(i128::from(geo.build_epoch) * 1_000_000_000),
            sha256: geo.sha256.clone(),
            networks: geo.networks as u64,
            prefixes: geo.prefixes as u64,
        }),
        counters: Some(pb::Counters {
            allowed,
            denied,
            would_deny,
            lost_in_kernel: view.kernel.lost_events(),
            denials_lost_in_kernel: view.kernel.denials_lost(),
            processes_lost: view.kernel.processes_lost(),
            undecodable: view.counters.undecodable.load(Ordering::Relaxed),
            dropped_slow_clients: view.streams.missed.load(Ordering::Relaxed),
            stream_clients: view.streams.clients.load(Ordering::Relaxed),
            drift_alerts: view.counters.drift.load(Ordering::Relaxed),
        }),
        uptime_seconds: uptime.as_secs(),
        started_at: started,
        policy_generation: s.generation,
        rejected_files: rejected_pb(&s),
        policy_refused: s.refused.clone(),
        policy_dir: s.policy_dir.display().to_string(),
        store: Some(store_pb(store)),
        node_public_key: node_key.to_string(),
        cloud_ranges_dir: s
            .cloud_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        cloud_ranges: s
            .cloud
            .files()
            .iter()
            .map(|f| pb::CloudRangeFile {
                path: f.path.display().to_string(),
                providers: f.providers.clone(),
                sha256: f.sha256.clone(),
                date: f.date.clone(),
                ranges: f.ranges as u64,
            })
            .collect(),
        cloud_ranges_rejected: s.cloud_error.clone(),
        selector_conflicts: s.conflicts.clone(),
        policy_data_missing: s.data_missing.iter().map(ToString::to_string).collect(),
        nats: None,
        containers: view
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        dns: view
            .kernel
            .dns_stats()
            .into_iter()
            .map(|(name, count)| pb::NamedCount {
                name: name.into(),
                count,
            })
            .collect(),
        flows: [
            (
                "entries",
                view.counters.flow_entries.load(Ordering::Relaxed),
            ),
            ("capacity", view.kernel.flow_capacity()),
            (
                "harvest_interval_ms",
                view.counters.harvest_interval_ms.load(Ordering::Relaxed),
            ),
            (
                "harvest_reads_whole",
                view.counters.harvest_reads_whole.load(Ordering::Relaxed),
            ),
            (
                "harvest_reads_changed",
                view.counters.harvest_reads_changed.load(Ordering::Relaxed),
            ),
            (
                "harvest_whole_read_ms",
                view.counters.harvest_whole_read_ms.load(Ordering::Relaxed),
            ),
            (
                "harvest_whole_every_ms",
                view.counters.harvest_whole_every_ms.load(Ordering::Relaxed),
            ),
        ]
        .into_iter()
        .chain(view.kernel.flow_stats())
        .chain([("repeats", view.counters.repeats.load(Ordering::Relaxed))])
        .map(|(name, count)| pb::NamedCount {
            name: name.into(),
            count,
        })
        .collect(),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn store_pb(s: &crate::store::writer::StoreStatus) -> pb::StoreStatus {
    pb::StoreStatus {
        state: s.state.clone(),
        error: s.error.clone(),
        path: s.path.display().to_string(),
        store_id: s.store_id.clone(),
        events_stored: s.stored,
        lost_for_store: s.lost_for_store,
        pending: s.pending,
        write_errors: s.write_errors,
        chain_seq: s.chain_seq,
        chain_head: s.chain_head.clone(),
        size_bytes: s.size_bytes,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StreamEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EgressMonitor for Service {
    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let req = request.into_inner();
        if req.last > MAX_LAST {
            return Err(Status::invalid_argument(format!(
                "last: {} is more than {MAX_LAST}",
                req.last
            )));
        }
        let filter = Arc::new(Filter::compile(req.filter.unwrap_or_default())?);
        if let Some(after) = req.after_seq {
            let after = i64::try_from(after).map_err(|_| {
                Status::invalid_argument(format!("after_seq: {after} is not a store position"))
            })?;
            // The store must open now, and hold the position: a resume
            // that cannot read it, or names a position past its last
            // record (a seq of another store), is refused, not a stream
            // that stays silent.
            let store_path = self.backend.store.path.clone();
            let head = tokio::task::spawn_blocking(move || {
                super::history::open(&store_path)
                    .and_then(|s| s.head().map_err(super::history::internal))
            })
            .await
            .map_err(|e| Status::internal(format!("opening the history store: {e}")))??
            .0;
            if after > head {
                return Err(Status::out_of_range(format!(
                    "after_seq: {after} is past the store's last record ({head}); a seq of another store?"
                )));
            }
            let (tx, rx) = mpsc::channel(TRANSPORT_QUEUE);
            let streams = self.backend.view.streams.clone();
            let follow = Follow {
                store_path: self.backend.store.path.clone(),
                committed: self.backend.store.committed(),
                shutdown: self.backend.shutdown.clone(),
            };
            tokio::spawn(async move {
                streams.clients.fetch_add(1, Ordering::Relaxed);
                let _ = follow.forward(tx, filter, after, req.follow).await;
                streams.clients.fetch_sub(1, Ordering::Relaxed);
            });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let matcher = {
            let filter = filter.clone();
            Arc::new(move |e: &Event| filter.matches(e))
        };
        let sub = self
            .backend
            .outlets
            .fanout
            .subscribe(matcher, req.last as usize, CLIENT_QUEUE);
        // The subscription's queue is the client's buffer; this one only
        // hands built messages to the transport.
        let (tx, rx) = mpsc::channel(TRANSPORT_QUEUE);
        let streams = self.backend.view.streams.clone();
        let store_path = self.backend.store.path.clone();
        let shutdown = self.backend.shutdown.clone();
        let (last, follow) = (req.last as usize, req.follow);
        tokio::spawn(async move {
            streams.clients.fetch_add(1, Ordering::Relaxed);
            let _ = forward(sub, tx, last, follow, filter, store_path, shutdown).await;
            streams.clients.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let store = self.backend.store.status();
        let mut status = status_pb(&self.backend.view, &store, &self.backend.node_public_key);
        status.nats = self.backend.nats.as_ref().map(|n| n.status_pb());
        Ok(Response::new(status))
    }

    async fn list_policies(
        &self,
        _request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let s = self.backend.view.policy();
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: policies_pb(&s),
            rejected_files: rejected_pb(&s),
            policy_generation: s.generation,
            refused: s.refused.clone(),
        }))
    }

    async fn check_policy(
        &self,
        request: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        check_policy_text(&self.check_slots, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn query_events(
        &self,
        request: Request<pb::QueryEventsRequest>,
    ) -> Result<Response<pb::QueryEventsResponse>, Status> {
        let path = self.backend.store.path.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || super::history::query_events(&path, req))
            .await
            .map_err(|e| Status::internal(format!("query failed: {e}")))?
            .map(Response::new)
    }

    async fn query_flows(
        &self,
        request: Request<pb::QueryFlowsRequest>,
    ) -> Result<Response<pb::QueryFlowsResponse>, Status> {
        let path = self.backend.store.path.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || super::history::query_flows(&path, req))
            .await
            .map_err(|e| Status::internal(format!("query failed: {e}")))?
            .map(Response::new)
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        // Reading the country database is CPU work: one of the check slots.
        let _slot = self.check_slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "Explain: {CHECK_POLICY_SLOTS} checks are already running; try again shortly"
            ))
        })?;
        super::explain::explain_in_force(&self.backend, &self.geo, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn simulate_policies(
        &self,
        request: Request<pb::SimulatePoliciesRequest>,
    ) -> Result<Response<pb::SimulatePoliciesResponse>, Status> {
        // Compiling candidates and replaying a window is CPU work: one of
        // the check slots, on a blocking thread.
        let slot = self.check_slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "SimulatePolicies: {CHECK_POLICY_SLOTS} checks are already running; try again shortly"
            ))
        })?;
        let req = request.into_inner();
        let total: usize = req.candidates.iter().map(|f| f.text.len()).sum();
        if total > MAX_POLICY_TEXT {
            return Err(Status::invalid_argument(format!(
                "candidates: {total} bytes is more than the {MAX_POLICY_TEXT} bytes (256 KiB) \
                 a simulation takes"
            )));
        }
        let store = self.backend.store.path.clone();
        let cloud = self.backend.view.policy().cloud.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let candidates = super::simulate::candidates(&req.candidates)?;
            let flows = super::simulate::recorded_flows(&store, &req)?;
            Ok(super::simulate::simulate(&candidates, &cloud, &flows))
        })
        .await
        .map_err(|e| Status::internal(format!("SimulatePolicies failed: {e}")))?
        .map(Response::new)
    }

    async fn reload_policies(
        &self,
        request: Request<pb::ReloadPoliciesRequest>,
    ) -> Result<Response<pb::ReloadPoliciesResponse>, Status> {
        use crate::state::ReloadError;
        let force = request.into_inner().force;
        let r = self
            .backend
            .requests
            .reload(force)
            .await
            .map_err(|e| match e {
                ReloadError::Refused(e) => Status::failed_precondition(e),
                ReloadError::Failed(e) => Status::internal(e),
                ReloadError::Stopped(e) => Status::unavailable(e),
            })?;
        let s = &r.snapshot;
        Ok(Response::new(pb::ReloadPoliciesResponse {
            policy_generation: s.generation,
            policies: policies_pb(s),
            rejected_files: rejected_pb(s),
            changed: r.changed,
        }))
    }
}

fn event_item(e: &Event) -> Result<pb::StreamEventsResponse, Status> {
    Ok(pb::StreamEventsResponse {
        item: Some(Item::Event(pb::Event::from(e))),
    })
}

/// Older matching events from the store when memory holds fewer than asked
/// (right after a restart): up to `want`, all older than `before`.
async fn from_store(
    path: std::path::PathBuf,
    filter: Arc<Filter>,
    before: i64,
    want: usize,
) -> Vec<Event> {
    let read = tokio::task::spawn_blocking(move || {
        let store = crate::store::Store::open_read(&path)?;
        crate::store::query::last_events(&store, before, want, &|e| filter.matches(e))
    })
    .await;
    match read {
        Ok(Ok(events)) => events,
        Ok(Err(e)) => {
            log::warn!(
                "stream history from the store: {e}; the client gets only what memory holds"
            );
            Vec::new()
        }
        Err(e) => {
            log::warn!("stream history from the store failed: {e}");
            Vec::new()
        }
    }
}

/// One client's stream: history (memory, then the store when short), then
/// live events, with a gap marker before the first event after a loss.
async fn forward(
    mut sub: crate::pipeline::Subscription,
    tx: mpsc::Sender<Result<pb::StreamEventsResponse, Status>>,
    last: usize,
    follow: bool,
    filter: Arc<Filter>,
    store_path: std::path::PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ()> {
    let history = std::mem::take(&mut sub.history);
    if history.len() < last {
        let before = sub.store_before;
        for e in from_store(store_path, filter, before, last - history.len()).await {
            tx.send(event_item(&e)).await.map_err(drop)?;
        }
    }
    for e in history {
        tx.send(event_item(&e)).await.map_err(drop)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        let missed = sub.take_missed();
        if missed > 0 {
            let gap = pb::StreamEventsResponse {
                item: Some(Item::Gap(pb::Gap { missed })),
            };
            tx.send(Ok(gap)).await.map_err(drop)?;
        }
        let event = tokio::select! {
            e = sub.live.recv() => match e {
                Some(e) => Some(e),
                None => return Ok(()),
            },
            () = tx.closed() => return Ok(()),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(event) = event else {
            let _ = tx.send(Err(stopping())).await;
            return Ok(());
        };
        tx.send(event_item(&event)).await.map_err(drop)?;
    }
}

/// A stream that follows the store (`after_seq`): what it reads, and
/// what wakes it.
struct Follow {
    store_path: std::path::PathBuf,
    committed: tokio::sync::watch::Receiver<i64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Follow {
    /// Every matching stored event after `after`, each with its seq; with
    /// `follow`, then each new one as the store commits it, until the
    /// client goes or the daemon stops (the stream then ends with
    /// UNAVAILABLE, so the client knows to resume).
    async fn forward(
        mut self,
        tx: mpsc::Sender<Result<pb::StreamEventsResponse, Status>>,
        filter: Arc<Filter>,
        mut after: i64,
        follow: bool,
    ) -> Result<(), ()> {
        loop {
            // Marked seen before reading: a commit during the read wakes
            // the next round.
            self.committed.borrow_and_update();
            let (path, f) = (self.store_path.clone(), filter.clone());
            let page = tokio::task::spawn_blocking(move || {
                super::history::open(&path)
                    .and_then(|store| super::history::events_after(&store, &f, after))
            })
            .await
            .map_err(|e| Status::internal(format!("reading the history store: {e}")))
            .and_then(|r| r);
            let (events, cursor, more) = match page {
                Ok(p) => p,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return Err(());
                }
            };
            for (seq, e) in events {
                let item = pb::StreamEventsResponse {
                    item: Some(Item::Event(pb::Event {
                        seq: seq as u64,
                        ..pb::Event::from(&e)
                    })),
                };
                tx.send(Ok(item)).await.map_err(drop)?;
            }
            after = cursor;
            if more {
                continue;
            }
            if !follow {
                return Ok(());
            }
            // Stopping: the store's writer is gone, or the daemon says so.
            let stops = tokio::select! {
                changed = self.committed.changed() => changed.is_err(),
                () = tx.closed() => return Ok(()),
                _ = self.shutdown.wait_for(|s| *s) => true,
            };
            if stops {
                let _ = tx.send(Err(stopping())).await;
                return Ok(());
            }
        }
    }
}

/// How a following stream ends when the daemon stops.
fn stopping() -> Status {
    Status::unavailable("the daemon is stopping")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{fake, PolicySnapshot, Program};

    /// Status comes from the view alone: the programs the (fake) kernel has
    /// now, the refusal of the last set, the counters; no controller.
    #[test]
    fn status_reads_the_view_and_the_kernel_not_a_memory() {
        let (view, snapshots, kernel) = fake::view(PolicySnapshot {
            generation: 3,
            refused: "policy set refused: a conflict".into(),
            ..Default::default()
        });
        kernel.programs.lock().unwrap().push(Program {
            hook: "connect4",
            program_id: 7,
            link_id: 8,
        });
        kernel.lost.store(5, Ordering::Relaxed);
        view.counters.denied.store(2, Ordering::Relaxed);
        let s = status_pb(&view, &Default::default(), "key");
        assert_eq!(s.policy_generation, 3);
        assert_eq!(s.policy_refused, "policy set refused: a conflict");
        assert_eq!(s.programs.len(), 1);
        assert_eq!(s.programs[0].program_id, 7);
        let c = s.counters.unwrap();
        assert_eq!((c.denied, c.lost_in_kernel), (2, 5));
        // Someone removed the pins: the next status shows it at once.
        kernel.programs.lock().unwrap().clear();
        snapshots.send_replace(Arc::new(PolicySnapshot {
            generation: 4,
            ..Default::default()
        }));
        let s = status_pb(&view, &Default::default(), "key");
        assert!(s.programs.is_empty());
        assert_eq!((s.policy_generation, s.policy_refused.as_str()), (4, ""));
    }

    fn request(text: &str) -> pb::CheckPolicyRequest {
        pb::CheckPolicyRequest {
            text: text.into(),
            file_name: "c.yaml".into(),
        }
    }

    const POLICY: &str = "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {name: c}\nspec:\n  mode: monitor\n  selector: {cgroupPaths: [\"/a\"]}\n  allow:\n    countries: [DE]\n";

    /// CheckPolicy refuses a text over its limit naming it, refuses a call
    /// when its slots are taken (RESOURCE_EXHAUSTED, not a queue), and
    /// answers again once one is free; a bad policy is an answer.
    #[tokio::test]
    async fn check_policy_has_a_text_limit_and_refuses_when_busy() {
        let slots = Arc::new(tokio::sync::Semaphore::new(CHECK_POLICY_SLOTS));
        let big = format!("{POLICY}#{}\n", "x".repeat(MAX_POLICY_TEXT));
        let e = check_policy_text(&slots, request(&big)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with(&format!(
                "text: {} bytes is more than the 262144 bytes (256 KiB) CheckPolicy takes",
                big.len()
            )),
            "{}",
            e.message()
        );
        let r = check_policy_text(&slots, request(POLICY)).await.unwrap();
        assert!(r.valid, "{}", r.error);
        let held: Vec<_> = (0..CHECK_POLICY_SLOTS)
            .map(|_| slots.clone().try_acquire_owned().unwrap())
            .collect();
        let e = check_policy_text(&slots, request(POLICY))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "CheckPolicy: 2 checks are already running; try again shortly"
        );
        drop(held);
        let r = check_policy_text(&slots, request(&POLICY.replace("[DE]", "&a [DE]")))
            .await
            .unwrap();
        assert!(!r.valid);
        assert_eq!(r.line, 8);
        assert!(
            r.error
                .starts_with("c.yaml:8: anchors and aliases are not accepted in a policy: line 8"),
            "{}",
            r.error
        );
        assert_eq!(
            slots.available_permits(),
            CHECK_POLICY_SLOTS,
            "every slot given back"
        );
    }
}
