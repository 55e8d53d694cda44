//! The publisher: a task of its own that reads the node's store after the
//! last position JetStream acknowledged and publishes each event (and each
//! closed flow minute), at least once; JetStream drops the retries by
//! `Nats-Msg-Id`. Nothing else waits for it: the kernel decides, the
//! pipeline stores, and what NATS has not taken yet waits in the store (its
//! count is the backlog in `status` and the metrics).
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_nats::jetstream::{self, context::PublishAckFuture};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use super::{NatsArgs, NatsError};
use crate::{
    api::pb,
    store::{published, query, Store},
};

/// Events read and published at once; their acknowledgements are awaited
/// together. While a backlog drains, the next batch is read and sent
/// before the one before it is awaited: at most twice this many are in
/// flight.
pub const BATCH: usize = 512;
/// A flow minute is published this long after it ends at the soonest, and
/// only once the store holds every count the kernel made in it (the last
/// complete harvest after its end is stored: `writer::Handle::harvested`).
/// The harvest runs every second while its tables are small, up to
/// `HARVEST_MOST` apart, and not at all while the store is behind a flood.
pub const FLOW_SETTLE: Duration = Duration::from_secs(5);
const MINUTE: i64 = 60_000_000_000;
/// How long one acknowledgement or JetStream request may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between attempts while NATS fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The daemon's publishing flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// This node's name in subjects and message ids (dots become '_';
    /// no '*', '>' or white space) [default: the host name up to its first
    /// dot].
    #[arg(long, value_parser = super::node_name, env = "EGRESS_MONITOR_NODE")]
    pub node: Option<String>,
    /// Message encoding: the proto Event/Flow messages, or the same as JSON.
    #[arg(long, value_enum, default_value = "protobuf", requires = "nats_url")]
    pub nats_format: super::Format,
    /// When the daemon creates the stream: how long it keeps messages
    /// (1h, 30d; 0: no limit).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration, requires = "nats_url")]
    pub nats_max_age: Duration,
    /// When the daemon creates the stream: at most this many MiB (oldest
    /// removed first; 0: no limit).
    #[arg(long, default_value_t = 0, requires = "nats_url")]
    pub nats_max_mb: u64,
    /// When the daemon creates the stream: copies kept (1 to 5) [default:
    /// 3 when the server is in a cluster, else 1].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5), requires = "nats_url")]
    pub nats_replicas: Option<u8>,
    /// When the daemon creates the stream: how long JetStream remembers
    /// message ids to drop a retry (a retry after a longer outage could be
    /// stored twice).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, requires = "nats_url")]
    pub nats_duplicate_window: Duration,
}

/// What the publisher shares with `status` and the metrics.
pub struct Shared {
    args: PublishArgs,
    node: String,
    /// The node key's public half (hex), on each published checkpoint.
    public_key: String,
    state: Mutex<(String, String)>,
    /// The server's last complaint (a permissions violation).
    refused: Mutex<Option<String>>,
    acked: AtomicU64,
    flows_until: AtomicI64,
    backlog: Gauge,
    published: Counter,
}

impl Shared {
    pub fn new(args: PublishArgs, public_key: String) -> Arc<Self> {
        let node = args.node.clone().unwrap_or_else(super::default_node);
        Arc::new(Shared {
            args,
            node,
            public_key,
            state: Mutex::new(("connecting".into(), String::new())),
            refused: Mutex::new(None),
            acked: AtomicU64::new(0),
            flows_until: AtomicI64::new(0),
            backlog: Gauge::default(),
            published: Counter::default(),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Adds `egress_monitor_nats_backlog_events` and
    /// `egress_monitor_nats_published_total`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "nats_backlog_events",
            "Events stored and not yet acknowledged by NATS JetStream",
            self.backlog.clone(),
        );
        registry.register(
            "nats_published",
            "Messages (events and flow rows) NATS JetStream acknowledged since the start",
            self.published.clone(),
        );
    }

    pub fn status_pb(&self) -> pb::NatsStatus {
        let (state, error) = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        pb::NatsStatus {
            url: self.args.nats.url(),
            stream: self.args.nats.nats_stream.clone(),
            node: self.node.clone(),
            subject_prefix: self.args.nats.nats_subject_prefix.clone(),
            state,
            error,
            acked_seq: self.acked.load(Ordering::Relaxed),
            backlog_events: self.backlog.get().max(0) as u64,
            published: self.published.get(),
            flows_published_until: self.flows_until.load(Ordering::Relaxed),
        }
    }

    fn set(&self, state: &str, error: String) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (state.into(), error);
    }

    fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn js_error(&self, what: impl Into<String>, e: impl std::fmt::Display) -> NatsError {
        NatsError::JetStream {
            what: what.into(),
            reason: e.to_string(),
            refused: self.refused(),
        }
    }
}

impl crate::api::backend::NatsStatus for Shared {
    fn status_pb(&self) -> pb::NatsStatus {
        Shared::status_pb(self)
    }
}

/// Starts the publisher; it ends when `shutdown` turns true.
pub fn spawn(
    shared: Arc<Shared>,
    store_path: PathBuf,
    committed: tokio::sync::watch::Receiver<i64>,
    harvested: tokio::sync::watch::Receiver<i64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(shared, store_path, committed, harvested, shutdown))
}

async fn run(
    shared: Arc<Shared>,
    store_path: PathBuf,
    mut committed: tokio::sync::watch::Receiver<i64>,
    harvested: tokio::sync::watch::Receiver<i64>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut last_error = String::new();
    loop {
        let mut session = Session {
            shared: &shared,
            store_path: &store_path,
            harvested: &harvested,
            reached: false,
        };
        let result = session.run(&mut committed, &mut shutdown).await;
        if session.reached {
            backoff = Duration::from_secs(1);
        }
        let e = match result {
            Ok(()) => return,
            Err(e) => crate::error_text::error_chain(&e),
        };
        shared.set("error", e.clone());
        if e != last_error {
            log::error!(
                "NATS publishing: {e}; events wait in the store (backlog {}), trying again in {} s",
                shared.backlog.get(),
                backoff.as_secs()
            );
            last_error = e;
        } else {
            log::debug!("NATS publishing still fails: {e}");
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's work, from connecting to its first failure.
struct Session<'a> {
    shared: &'a Arc<Shared>,
    store_path: &'a Path,
    /// Every count the kernel made before this time (Unix ns) is stored.
    harvested: &'a tokio::sync::watch::Receiver<i64>,
    /// Connected and the stream checked: the next failure starts the
    /// backoff again from its shortest.
    reached: bool,
}

/// Runs `f` on the store on a blocking thread (SQLite must not hold up the
/// runtime's workers).
async fn on_store<T: Send + 'static>(
    store: Store,
    f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<(Store, T)> {
    tokio::task::spawn_blocking(move || {
        let r = f(&store);
        r.map(|v| (store, v))
    })
    .await
    .map_err(|e| anyhow::anyhow!("reading the store panicked: {e}"))?
}

impl Session<'_> {
    async fn run(
        &mut self,
        committed: &mut tokio::sync::watch::Receiver<i64>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let args = &shared.args;
        let path = self.store_path.to_path_buf();
        let mut store = tokio::task::spawn_blocking(move || Store::open_cursor(&path))
            .await
            .map_err(|e| anyhow::anyhow!("opening the store panicked: {e}"))??;
        // Where the stream stands, from the store, before anything is sent.
        let (s, (acked, flows_until, backlog)) = on_store(store, |s| {
            let acked = s.published(published::ACKED_KEY)?.unwrap_or(0);
            let flows = match s.published(published::FLOWS_KEY)? {
                Some(t) => t,
                None => s
                    .next_flow_minute(i64::MIN, i64::MAX)?
                    .unwrap_or_else(|| query::bucket_of(crate::store::now_nanos())),
            };
            Ok((acked, flows, s.unpublished()?))
        })
        .await?;
        store = s;
        shared.acked.store(acked.max(0) as u64, Ordering::Relaxed);
        shared.flows_until.store(flows_until, Ordering::Relaxed);
        shared.backlog.set(backlog as i64);
        shared.set("connecting", String::new());
        *shared.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let on_event = {
            let shared = shared.clone();
            move |event: async_nats::Event| {
                let shared = shared.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            log::warn!(
                                "NATS connection lost; reconnecting (events wait in the store)"
                            );
                            shared.set("disconnected", "connection lost; reconnecting".into());
                        }
                        async_nats::Event::Connected => {
                            log::info!("NATS connected");
                            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
                            if state.0 == "disconnected" {
                                *state = ("publishing".into(), String::new());
                            }
                        }
                        async_nats::Event::ServerError(e) => {
                            log::error!("NATS server error: {e}");
                            *shared.refused.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(e.to_string());
                        }
                        // Each failed reconnect attempt, and the end of a
                        // connection this publisher let go.
                        async_nats::Event::ClientError(_) | async_nats::Event::Closed => {
                            log::debug!("NATS: {event}")
                        }
                        other => log::warn!("NATS: {other}"),
                    }
                }
            }
        };
        let client = args
            .nats
            .connect(&format!("egress-monitor {}", shared.node), on_event)
            .await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ACK_TIMEOUT);
        ensure_stream(&shared, &js, &client).await?;
        self.reached = true;
        shared.set("publishing", String::new());
        log::info!(
            "publishing to NATS stream {} as {}.{}.> from store seq {} (backlog {} events)",
            args.nats.nats_stream,
            args.nats.nats_subject_prefix,
            shared.node,
            acked,
            backlog
        );
        let mut acked = acked;
        // The last event sent: acknowledged, or in `inflight`.
        let mut sent = acked;
        let mut inflight: Option<Sent> = None;
        let mut flows_until = flows_until;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                // What is in flight and not awaited is sent again by the
                // next run (JetStream drops the copies by message id).
                return Ok(());
            }
            let (s, (events, prevs)) = on_store(store, move |s| {
                let events = query::events(s, i64::MIN, i64::MAX, sent, BATCH, &|_| true)?.0;
                let prevs = match (events.first(), events.last()) {
                    (Some((first, _)), Some((last, _))) => s.chain_prevs(*first, *last)?,
                    _ => Vec::new(),
                };
                Ok((events, prevs))
            })
            .await?;
            store = s;
            let full = events.len() == BATCH;
            // This batch goes out before the one in flight is awaited, so
            // the servers store one while the other's acknowledgements come.
            let next = if events.is_empty() {
                Ok(None)
            } else {
                let (seqs, messages) = event_messages(&shared, events, prevs);
                send_batch(&shared, &js, messages.into_iter())
                    .await
                    .map(|pending| Some(Sent { seqs, pending }))
            };
            if let Some(before) = inflight.take() {
                let (s, settled) = settle(&shared, store, before, &mut acked).await?;
                store = s;
                // A failure: what follows it (this batch too) is sent
                // again by the next run.
                settled?;
            }
            match next? {
                Some(batch) if full => {
                    sent = batch.seqs.last().copied().unwrap_or(sent);
                    inflight = Some(batch);
                }
                Some(batch) => {
                    // The end of the backlog: nothing to overlap with.
                    let (s, settled) = settle(&shared, store, batch, &mut acked).await?;
                    store = s;
                    settled?;
                    sent = acked;
                }
                None => {
                    shared.backlog.set(0);
                }
            }
            // The node's signed checkpoints, once the records they name
            // are in the stream: a reader re-checks the chain against them.
            let (s, checkpoints) = on_store(store, move |s| {
                let from = s.published(published::CHECKPOINTS_KEY)?.unwrap_or(i64::MIN);
                // A store that never published has a checkpoint every
                // 10 s of its history: a batch at a time.
                let list = s.checkpoints_to_publish(from, acked, BATCH)?;
                Ok((s.store_id()?, list))
            })
            .await?;
            store = s;
            let more_checkpoints = checkpoints.1.len() == BATCH;
            if let (store_id, Some(newest)) = (&checkpoints.0, checkpoints.1.last()) {
                let newest = newest.unix_nanos;
                publish_checkpoints(&shared, &js, store_id, checkpoints.1.clone()).await?;
                let (s, ()) = on_store(store, move |s| {
                    Ok(s.set_published(published::CHECKPOINTS_KEY, newest)?)
                })
                .await?;
                store = s;
            }
            let harvested = *self.harvested.borrow();
            let (s, flows) = on_store(store, move |s| {
                due_flows(s, flows_until, crate::store::now_nanos(), harvested)
            })
            .await?;
            store = s;
            let flows_due = flows.is_some();
            if let Some((minute, rows)) = flows {
                publish_flows(&shared, &js, rows).await?;
                flows_until = minute;
                let (s, ()) = on_store(store, move |s| {
                    Ok(s.set_published(published::FLOWS_KEY, minute)?)
                })
                .await?;
                store = s;
                shared.flows_until.store(minute, Ordering::Relaxed);
            }
            if full || flows_due || more_checkpoints {
                continue;
            }
            tokio::select! {
                _ = committed.changed() => {}
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
        }
    }
}

/// Checks the stream (or makes it): its subjects must take this node's.
async fn ensure_stream(
    shared: &Shared,
    js: &jetstream::Context,
    client: &async_nats::Client,
) -> anyhow::Result<()> {
    let args = &shared.args;
    let name = &args.nats.nats_stream;
    let prefix = &args.nats.nats_subject_prefix;
    let ours = [
        super::event_subject(prefix, &shared.node, "denied"),
        super::flow_subject(prefix, &shared.node),
        super::checkpoint_subject(prefix, &shared.node),
    ];
    match js.get_stream(name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| shared.js_error(format!("reading stream {name}"), e))?;
            let subjects = &info.config.subjects;
            for subject in &ours {
                if !subjects.iter().any(|p| super::subject_matches(p, subject)) {
                    anyhow::bail!(
                        "NATS stream {name} exists with subjects [{}], which do not take {subject}: add {prefix}.> to it, or give --nats-stream or --nats-subject-prefix",
                        subjects.join(", ")
                    );
                }
            }
            Ok(())
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            let clustered = client.server_info().cluster.is_some();
            let replicas =
                args.nats_replicas
                    .map(usize::from)
                    .unwrap_or(if clustered { 3 } else { 1 });
            let config = jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                max_age: args.nats_max_age,
                max_bytes: if args.nats_max_mb == 0 {
                    -1
                } else {
                    i64::try_from(args.nats_max_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX)
                },
                num_replicas: replicas,
                duplicate_window: args.nats_duplicate_window,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            js.create_stream(config).await.map_err(|e| {
                shared.js_error(
                    format!(
                        "creating NATS stream {name} (subjects {prefix}.>, {replicas} replicas)"
                    ),
                    e,
                )
            })?;
            log::info!(
                "created NATS stream {name}: subjects {prefix}.>, {replicas} replicas, max age {}, max {} MiB",
                humantime::format_duration(args.nats_max_age),
                args.nats_max_mb
            );
            Ok(())
        }
        Err(e) => Err(shared
            .js_error(format!("looking up NATS stream {name}"), e)
            .into()),
    }
}

/// One message to send.
struct Outgoing {
    subject: String,
    /// Its `Nats-Msg-Id`.
    id: String,
    payload: Vec<u8>,
    content_type: &'static str,
}

/// Publishes in order, `BATCH` at a time, the next batch sent before the
/// acknowledgements of the one before are awaited (at most two in flight,
/// as for events: the servers store one while the other's
/// acknowledgements come). Stops at the first failure; the caller sends
/// the whole run again (JetStream drops the copies by message id). A
/// bounded number in flight, because the JetStream context holds a permit
/// for every acknowledgement not yet awaited (5,000): a closed flow minute
/// of more flows than that, sent whole before its acknowledgements were
/// awaited, waited for a permit forever, and publishing stopped without an
/// error.
async fn publish_all(
    shared: &Shared,
    js: &jetstream::Context,
    messages: Vec<Outgoing>,
) -> anyhow::Result<()> {
    let mut messages = messages.into_iter().peekable();
    let mut inflight = None;
    loop {
        let next = if messages.peek().is_some() {
            Some(send_batch(shared, js, messages.by_ref().take(BATCH)).await)
        } else {
            None
        };
        if let Some(before) = inflight.take() {
            await_batch(shared, before).await.1?;
        }
        match next {
            Some(sent) => inflight = Some(sent?),
            None => return Ok(()),
        }
    }
}

/// Sends messages in order; their acknowledgements, by message id, to be
/// awaited (`await_batch`).
async fn send_batch(
    shared: &Shared,
    js: &jetstream::Context,
    messages: impl Iterator<Item = Outgoing>,
) -> anyhow::Result<Vec<(String, PublishAckFuture)>> {
    let mut pending = Vec::with_capacity(BATCH);
    for m in messages {
        let headers = headers(&m.id, m.content_type);
        match js
            .publish_with_headers(m.subject, headers, m.payload.into())
            .await
        {
            Ok(ack) => pending.push((m.id, ack)),
            Err(e) => return Err(shared.js_error(format!("publishing {}", m.id), e).into()),
        }
    }
    Ok(pending)
}

/// Awaits acknowledgements in order: how many came in an unbroken run
/// from the first, and the first failure.
async fn await_batch(
    shared: &Shared,
    pending: Vec<(String, PublishAckFuture)>,
) -> (usize, anyhow::Result<()>) {
    let mut acked = 0;
    for (id, ack) in pending {
        if let Err(e) = ack.await {
            return (
                acked,
                Err(shared
                    .js_error(format!("acknowledgement of {id}"), e)
                    .into()),
            );
        }
        acked += 1;
        shared.published.inc();
    }
    (acked, Ok(()))
}

/// The messages of events (their store positions and events, with the
/// chain hash each follows), and their positions.
fn event_messages(
    shared: &Shared,
    events: Vec<(i64, crate::events::Event)>,
    prevs: Vec<(i64, [u8; 32])>,
) -> (Vec<i64>, Vec<Outgoing>) {
    let args = &shared.args;
    let seqs: Vec<i64> = events.iter().map(|(seq, _)| *seq).collect();
    // Both in seq order, one for one (`chain_prevs` of the same run).
    let mut prevs = prevs.into_iter().peekable();
    let messages = events
        .into_iter()
        .map(|(seq, e)| {
            let mut msg = pb::Event::from(&e);
            msg.seq = seq as u64;
            msg.node = shared.node.clone();
            while prevs.next_if(|(s, _)| *s < seq).is_some() {}
            msg.chain_prev = prevs
                .next_if(|(s, _)| *s == seq)
                .map(|(_, h)| hex::encode(h))
                .unwrap_or_default();
            let (payload, content_type) =
                super::encode(args.nats_format, &msg, super::PROTOBUF_EVENT);
            Outgoing {
                subject: super::event_subject(
                    &args.nats.nats_subject_prefix,
                    &shared.node,
                    &msg.verdict,
                ),
                id: super::event_msg_id(&shared.node, seq),
                payload,
                content_type,
            }
        })
        .collect();
    (seqs, messages)
}

/// A batch of events sent, its acknowledgements not yet awaited.
struct Sent {
    seqs: Vec<i64>,
    pending: Vec<(String, PublishAckFuture)>,
}

/// Awaits a batch's acknowledgements: `acked` follows the last one
/// acknowledged in an unbroken run from the first, and is written to the
/// store with the backlog it leaves. The error is the first failure.
async fn settle(
    shared: &Shared,
    store: Store,
    batch: Sent,
    acked: &mut i64,
) -> anyhow::Result<(Store, anyhow::Result<()>)> {
    let (n, result) = await_batch(shared, batch.pending).await;
    if n > 0 {
        *acked = batch.seqs[n - 1];
    }
    let at = *acked;
    let (store, backlog) = on_store(store, move |s| {
        s.set_published(published::ACKED_KEY, at)?;
        Ok(s.unpublished()?)
    })
    .await?;
    shared.acked.store(at.max(0) as u64, Ordering::Relaxed);
    shared.backlog.set(backlog as i64);
    Ok((store, result))
}

/// Publishes the node's signed checkpoints (JSON, with the store id and
/// the node's public key) on `PREFIX.<node>.checkpoint`.
async fn publish_checkpoints(
    shared: &Shared,
    js: &jetstream::Context,
    store_id: &str,
    list: Vec<crate::store::chain::Checkpoint>,
) -> anyhow::Result<()> {
    let args = &shared.args;
    let subject = super::checkpoint_subject(&args.nats.nats_subject_prefix, &shared.node);
    let messages = list
        .into_iter()
        .map(|checkpoint| {
            let id = super::checkpoint_msg_id(&shared.node, &checkpoint);
            let msg = super::NodeCheckpoint {
                node: shared.node.clone(),
                store_id: store_id.to_string(),
                public_key: shared.public_key.clone(),
                checkpoint,
            };
            Outgoing {
                subject: subject.clone(),
                id,
                // A struct of strings and numbers always serializes.
                payload: serde_json::to_vec(&msg).unwrap_or_default(),
                content_type: super::JSON,
            }
        })
        .collect();
    publish_all(shared, js, messages).await
}

fn headers(id: &str, content_type: &'static str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    h.insert("Content-Type", content_type);
    h
}

/// The next closed flow minute from `from` on, with its rows, or None
/// when none is due; a run of minutes without flows is skipped at once. A
/// minute is closed `FLOW_SETTLE` after its end (`now`), once every count
/// the kernel made before its end is stored (`harvested`).
fn due_flows(
    store: &Store,
    from: i64,
    now: i64,
    harvested: i64,
) -> anyhow::Result<Option<(i64, Vec<pb::Flow>)>> {
    let closed_before =
        query::bucket_of(now - FLOW_SETTLE.as_nanos() as i64).min(query::bucket_of(harvested));
    if from >= closed_before {
        return Ok(None);
    }
    let Some(minute) = store.next_flow_minute(from, closed_before)? else {
        return Ok(Some((closed_before, Vec::new())));
    };
    let mut rows = Vec::new();
    query::flows_each(
        store,
        minute,
        minute + MINUTE,
        &|_| true,
        false,
        query::Rows::All,
        &mut |f| {
            rows.push(pb::Flow::from(f));
            Ok(())
        },
    )?;
    Ok(Some((minute + MINUTE, rows)))
}

async fn publish_flows(
    shared: &Shared,
    js: &jetstream::Context,
    rows: Vec<pb::Flow>,
) -> anyhow::Result<()> {
    let args = &shared.args;
    let subject = super::flow_subject(&args.nats.nats_subject_prefix, &shared.node);
    let messages = rows
        .into_iter()
        .map(|mut f| {
            f.node = shared.node.clone();
            let (payload, content_type) = super::encode(args.nats_format, &f, super::PROTOBUF_FLOW);
            Outgoing {
                subject: subject.clone(),
                id: super::flow_msg_id(&shared.node, &f),
                payload,
                content_type,
            }
        })
        .collect();
    publish_all(shared, js, messages).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{events::Event, store::Batch};

    /// A flow minute is published only once a harvest that began after its
    /// end is stored: a minute published before would miss the kernel's
    /// counts of it for good (the stream has no second copy of a minute).
    #[test]
    fn a_flow_minute_waits_for_the_harvest_after_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("store.db")).unwrap();
        let minute = query::bucket_of(crate::store::now_nanos()) - 10 * MINUTE;
        let at = minute + 20_000_000_000;
        store
            .append(&Batch {
                events: vec![Arc::new(Event {
                    time: crate::events::rfc3339_nanos(i128::from(at)),
                    unix_nanos: i128::from(at),
                    verdict: "allowed",
                    policy: "eu-only".into(),
                    rule: "country",
                    hook: "connect4",
                    protocol: "tcp",
                    family: "ipv4",
                    dst_ip: "198.51.100.2".into(),
                    dst_port: 443,
                    country: "DE".into(),
                    continent: "EU".into(),
                    comm: "probe".into(),
                    cgroup_path: "/llm.slice/inference".into(),
                    ..Default::default()
                })],
                ..Default::default()
            })
            .unwrap();
        let now = minute + 5 * MINUTE;
        let rows_of = |harvested| {
            due_flows(&store, 0, now, harvested)
                .unwrap()
                .map(|(until, rows)| (until, rows.len()))
        };
        // No complete harvest stored in this run yet: nothing is due.
        assert_eq!(rows_of(0), None);
        // The last one stored began inside the minute: the cursor may pass
        // the empty minutes before it, not the minute itself.
        let (until, rows) = rows_of(minute + MINUTE - 1).unwrap();
        assert_eq!(rows, 0);
        assert!(until <= minute, "{until} passed the minute {minute}");
        // One that began at its end: the minute, with its flow.
        assert_eq!(rows_of(minute + MINUTE), Some((minute + MINUTE, 1)));
        // And FLOW_SETTLE still holds it right after its end.
        let (until, rows) = due_flows(&store, 0, minute + MINUTE + 1, now)
            .unwrap()
            .unwrap();
        assert!(rows.is_empty());
        assert!(until <= minute);
    }
}
