//! The EgressMonitor gRPC service.
use std::{
    path::Path,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
};

use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use super::{
    filter::Filter,
    pb::{self, egress_monitor_server::EgressMonitor, stream_events_response::Item},
};
use crate::{
    daemon::{Controller, DaemonState, FileState},
    events::rfc3339_nanos,
    policy::{self, CompiledPolicy},
};

/// Events queued per client before it counts as slow and starts missing.
pub const CLIENT_QUEUE: usize = 4096;
/// History a client may ask for at once.
pub const MAX_LAST: u32 = 100_000;
/// Largest policy text CheckPolicy takes.
const MAX_POLICY_TEXT: usize = 1 << 20;

pub struct Service {
    pub state: Arc<DaemonState>,
}

pub fn policy_pb(p: &CompiledPolicy, controller: Option<&Controller>) -> pb::Policy {
    let selected = controller
        .map(|c| {
            c.selection
                .values()
                .filter(|s| s.policy == p.name)
                .map(|s| s.path.clone())
                .collect()
        })
        .unwrap_or_default();
    pb::Policy {
        name: p.name.clone(),
        mode: p.mode.to_string(),
        file: p.file.clone(),
        sha256: p.sha256.clone(),
        cgroup_globs: p.cgroup_globs.clone(),
        selected_cgroups: selected,
        allowed_countries: p.allowed_countries.iter().cloned().collect(),
        denied_countries: p.denied_countries.iter().cloned().collect(),
        allow_cidrs: p.allow_cidrs.len() as u32,
        deny_cidrs: p.deny_cidrs.len() as u32,
        region_rules: p.region_rules.len() as u32,
        pods: p.pods.iter().cloned().collect(),
        systemd_units: p.unit_globs.clone(),
    }
}

fn rejected_pb(c: &Controller) -> Vec<pb::RejectedFile> {
    c.files
        .iter()
        .filter_map(|(path, state)| match state {
            FileState::Rejected { error, previous } => Some(pb::RejectedFile {
                file: path.display().to_string(),
                error: error.clone(),
                previous_in_force: previous.is_some(),
            }),
            FileState::InForce(_) => None,
        })
        .collect()
}

fn policies_pb(c: &Controller) -> Vec<pb::Policy> {
    c.in_force.iter().map(|p| policy_pb(p, Some(c))).collect()
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
        let filter = Filter::compile(req.filter.unwrap_or_default())?;
        let outlets = self.state.outlets.clone();
        // Under the history lock the pipeline neither adds to the history
        // nor publishes, so history and live stream meet without a gap or
        // a duplicate.
        let (history, mut live) = {
            let history = outlets.history.lock().unwrap_or_else(|p| p.into_inner());
            let mut matching: Vec<_> = history
                .iter()
                .rev()
                .filter(|e| filter.matches(e))
                .take(req.last as usize)
                .cloned()
                .collect();
            matching.reverse();
            (matching, outlets.live.subscribe())
        };
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let state = self.state.clone();
        let follow = req.follow;
        tokio::spawn(async move {
            state.clients.fetch_add(1, Ordering::Relaxed);
            for e in history {
                let item = Item::Event(pb::Event::from(&*e));
                if tx
                    .send(Ok(pb::StreamEventsResponse { item: Some(item) }))
                    .await
                    .is_err()
                {
                    state.clients.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
            if !follow {
                state.clients.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            let mut missed: u64 = 0;
            loop {
                let received = tokio::select! {
                    // As soon as the client has room again, tell it what it
                    // missed, before any newer event.
                    permit = tx.reserve(), if missed > 0 => {
                        let Ok(permit) = permit else { break };
                        permit.send(Ok(pb::StreamEventsResponse { item: Some(Item::Gap(pb::Gap { missed })) }));
                        missed = 0;
                        continue;
                    }
                    r = live.recv() => r,
                    () = tx.closed() => break,
                };
                let event = match received {
                    Ok(e) => e,
                    Err(RecvError::Lagged(n)) => {
                        missed += n;
                        state.dropped_slow.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                if !filter.matches(&event) {
                    continue;
                }
                if missed > 0 {
                    match tx.try_reserve() {
                        Ok(permit) => {
                            permit.send(Ok(pb::StreamEventsResponse {
                                item: Some(Item::Gap(pb::Gap { missed })),
                            }));
                            missed = 0;
                        }
                        Err(mpsc::error::TrySendError::Full(())) => {
                            // Still no room for the gap marker: missed too.
                            missed += 1;
                            state.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(mpsc::error::TrySendError::Closed(())) => break,
                    }
                }
                let item = pb::StreamEventsResponse {
                    item: Some(Item::Event(pb::Event::from(&*event))),
                };
                match tx.try_send(Ok(item)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        missed += 1;
                        state.dropped_slow.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            state.clients.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let c = self.state.controller.lock().await;
        let counters = &self.state.outlets.counters;
        let geo = &c.geo;
        let uptime = self.state.started.elapsed().unwrap_or_default();
        let started = self
            .state
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| rfc3339_nanos(d.as_nanos() as i128))
            .unwrap_or_default();
        Ok(Response::new(pb::GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: kernel_release(),
            cgroup_root: c.root.display().to_string(),
            programs: c
                .kernel
                .attached()
                .iter()
                .map(|a| pb::AttachedProgram {
                    hook: a.hook.into(),
                    program_id: a.program_id,
                })
                .collect(),
            policies: policies_pb(&c),
            geoip: Some(pb::GeoDatabase {
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
                allowed: counters.allowed.load(Ordering::Relaxed),
                denied: counters.denied.load(Ordering::Relaxed),
                would_deny: counters.would_deny.load(Ordering::Relaxed),
                lost_in_kernel: c.kernel.lost_events(),
                undecodable: counters.undecodable.load(Ordering::Relaxed),
                dropped_slow_clients: self.state.dropped_slow.load(Ordering::Relaxed),
                stream_clients: self.state.clients.load(Ordering::Relaxed),
            }),
            uptime_seconds: uptime.as_secs(),
            started_at: started,
            policy_generation: c.kernel.policy_generation(),
            rejected_files: rejected_pb(&c),
            policy_dir: c.policies_dir.display().to_string(),
            store: Some(store_pb(&self.state.store.status())),
            node_public_key: self.state.node_public_key.clone(),
        }))
    }

    async fn list_policies(
        &self,
        _request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let c = self.state.controller.lock().await;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: policies_pb(&c),
            rejected_files: rejected_pb(&c),
            policy_generation: c.kernel.policy_generation(),
        }))
    }

    async fn check_policy(
        &self,
        request: Request<pb::CheckPolicyRequest>,
    ) -> Result<Response<pb::CheckPolicyResponse>, Status> {
        let req = request.into_inner();
        if req.text.trim().is_empty() {
            return Err(Status::invalid_argument(
                "text: empty; send the YAML of one or more policies",
            ));
        }
        if req.text.len() > MAX_POLICY_TEXT {
            return Err(Status::invalid_argument(format!(
                "text: {} bytes is more than {MAX_POLICY_TEXT}",
                req.text.len()
            )));
        }
        let name = if req.file_name.is_empty() {
            "policy.yaml".to_string()
        } else {
            req.file_name
        };
        Ok(Response::new(
            match policy::compile_text(Path::new(&name), &req.text) {
                Ok(policies) => pb::CheckPolicyResponse {
                    valid: true,
                    error: String::new(),
                    line: 0,
                    policies: policies.iter().map(|p| policy_pb(p, None)).collect(),
                },
                Err(e) => pb::CheckPolicyResponse {
                    valid: false,
                    error: e.to_string(),
                    line: e.line as u32,
                    policies: Vec::new(),
                },
            },
        ))
    }

    async fn query_events(
        &self,
        request: Request<pb::QueryEventsRequest>,
    ) -> Result<Response<pb::QueryEventsResponse>, Status> {
        let path = self.state.store.path.clone();
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
        let path = self.state.store.path.clone();
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || super::history::query_flows(&path, req))
            .await
            .map_err(|e| Status::internal(format!("query failed: {e}")))?
            .map(Response::new)
    }

    async fn reload_policies(
        &self,
        _request: Request<pb::ReloadPoliciesRequest>,
    ) -> Result<Response<pb::ReloadPoliciesResponse>, Status> {
        let mut c = self.state.controller.lock().await;
        tokio::task::block_in_place(|| c.reload_policies())
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(pb::ReloadPoliciesResponse {
            policy_generation: c.kernel.policy_generation(),
            policies: policies_pb(&c),
            rejected_files: rejected_pb(&c),
        }))
    }
}
