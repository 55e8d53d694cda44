//! `fleet events|flows`: every node's history from NATS JetStream, printed
//! as `events` and `flows` print a node's own, with a NODE column.
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{filters::FilterArgs, flows::FlowFormat, output::Format};
use crate::{
    api::{filter::Filter, pb},
    fleet::{read, NatsArgs},
};

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Decisions of every node (or of --node) in a time window.
    Events(FleetEventsArgs),
    /// Flows of every node (or of --node) in a time window, per node.
    Flows(FleetFlowsArgs),
    /// A verifiable evidence bundle of every node (or of --node) from the
    /// stream: each node's records with its own hash chain and the
    /// checkpoints its key signed (`verify` checks each node).
    Export(FleetExportArgs),
}

/// What both read: where, when, whose, which.
#[derive(Debug, Args)]
pub struct Window {
    /// Start of the window: RFC 3339, a UTC date or date and time
    /// (2026-12-01, "2026-12-01 22:47"), Unix seconds (0: the beginning),
    /// or a duration before now (1h, 30m, 7d).
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// End of the window, in any form --since takes (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this node (as its daemon's --node; repeatable).
    #[arg(long, value_parser = crate::fleet::node_name)]
    pub node: Vec<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
}

#[derive(Debug, Args)]
pub struct FleetEventsArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub window: Window,
}

#[derive(Debug, Args)]
pub struct FleetFlowsArgs {
    /// Group by (comma-separated), within each node: cgroup, pod, process,
    /// country, continent, destination, port, protocol, verdict, policy,
    /// name, cloud.
    #[arg(long, value_delimiter = ',')]
    pub group_by: Vec<String>,
    /// count (largest first), first_seen, last_seen, destination.
    #[arg(long, default_value = "count")]
    pub sort: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: FlowFormat,
    #[command(flatten)]
    pub window: Window,
}

#[derive(Debug, Args)]
pub struct FleetExportArgs {
    /// The bundle to write (a tar file).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Replace an existing file at --out.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub window: Window,
}

pub fn run(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    super::block_on(async move {
        match cmd {
            FleetCommand::Events(args) => events(args).await,
            FleetCommand::Flows(args) => flows(args).await,
            FleetCommand::Export(args) => export(args).await,
        }
    })
}

/// The window in Unix ns, the compiled filter, and the start checked.
fn prepare(w: &Window) -> anyhow::Result<(i64, i64, Filter)> {
    if w.nats.nats_url.is_none() {
        anyhow::bail!("--nats-url is required: the NATS servers the daemons publish to");
    }
    w.nats.check_files()?;
    let (since, until) = crate::store::time::parse_window(
        &w.since,
        w.until.as_deref().unwrap_or(""),
        crate::store::now_nanos(),
    )
    .map_err(|(field, why)| anyhow::anyhow!("--{field}: {why}"))?;
    let filter = Filter::compile(w.filter.to_pb())
        .map_err(|s| anyhow::anyhow!("{}", s.message().replacen("filter.", "filter ", 1)))?;
    Ok((since, until, filter))
}

fn wanted(nodes: &[String], node: &str) -> bool {
    nodes.is_empty() || nodes.iter().any(|n| n == node)
}

async fn events(args: FleetEventsArgs) -> anyhow::Result<ExitCode> {
    let w = &args.window;
    let (since, until, filter) = prepare(w)?;
    let subject = read::subject_filter(
        &w.nats.nats_subject_prefix,
        &w.node,
        &read::Kind::Events {
            verdicts: &w.filter.verdict,
        },
    );
    let mut found: Vec<pb::Event> = Vec::new();
    read::read(&w.nats, subject, since, &mut |payload, content_type| {
        let e: pb::Event = crate::fleet::decode(content_type, payload)
            .map_err(|why| anyhow::anyhow!("a message that is no Event ({why})"))?;
        if e.unix_nanos >= since
            && e.unix_nanos < until
            && wanted(&w.node, &e.node)
            && filter.matches(&crate::events::Event::from(e.clone()))
        {
            found.push(e);
        }
        Ok(())
    })
    .await?;
    // Nodes publish at their own pace: time order across them.
    found.sort_by(|a, b| (a.unix_nanos, &a.node, a.seq).cmp(&(b.unix_nanos, &b.node, b.seq)));
    let mut printer = super::output::Printer::with_node(args.output);
    for e in found.into_iter().take(w.limit as usize) {
        printer.event(e);
    }
    Ok(ExitCode::SUCCESS)
}

async fn flows(args: FleetFlowsArgs) -> anyhow::Result<ExitCode> {
    let w = &args.window;
    let (since, until, filter) = prepare(w)?;
    if filter.by_process() {
        anyhow::bail!(
            "fleet flows: --pid and --uid need each node's events (flows do not keep them): use `fleet events`"
        );
    }
    for (i, g) in args.group_by.iter().enumerate() {
        if !crate::store::query::GROUP_FIELDS.contains(&g.as_str()) {
            anyhow::bail!(
                "--group-by[{i}]: {g:?} is not one of {}",
                crate::store::query::GROUP_FIELDS.join(", ")
            );
        }
    }
    if !crate::store::query::SORTS.contains(&args.sort.as_str()) {
        anyhow::bail!(
            "--sort: {:?} is not one of {}",
            args.sort,
            crate::store::query::SORTS.join(", ")
        );
    }
    let subject = read::subject_filter(&w.nats.nats_subject_prefix, &w.node, &read::Kind::Flows);
    // Flow rows per node, kept if the filter takes them.
    let mut by_node: std::collections::BTreeMap<String, Vec<crate::store::query::Flow>> =
        Default::default();
    // A flow minute is published after it ends: read from the minute
    // `since` falls in.
    let start = crate::store::query::bucket_of(since);
    read::read(&w.nats, subject, start, &mut |payload, content_type| {
        if let Some((node, flow)) =
            flow_of(payload, content_type, (since, until), &w.node, &filter)?
        {
            by_node.entry(node).or_default().push(flow);
        }
        Ok(())
    })
    .await?;
    // Node by node (by name), each node's rows grouped and sorted as
    // `flows` does.
    let mut rows: Vec<pb::Flow> = Vec::new();
    for (node, flows) in by_node {
        let mut grouped = crate::store::query::group(flows, &args.group_by);
        crate::store::query::sort(&mut grouped, &args.sort);
        rows.extend(grouped.into_iter().map(|f| pb::Flow {
            node: node.clone(),
            ..pb::Flow::from(f)
        }));
    }
    let total = rows.len() as u64;
    rows.truncate(w.limit as usize);
    super::flows::print(&rows, &args.group_by, args.output, total, true)?;
    Ok(ExitCode::SUCCESS)
}

/// A flow message of the window, of a wanted node, that the filter takes:
/// its node and row.
fn flow_of(
    payload: &[u8],
    content_type: Option<&str>,
    (since, until): (i64, i64),
    nodes: &[String],
    filter: &Filter,
) -> anyhow::Result<Option<(String, crate::store::query::Flow)>> {
    let f: pb::Flow = crate::fleet::decode(content_type, payload)
        .map_err(|why| anyhow::anyhow!("a message that is no Flow ({why})"))?;
    if f.last_seen_unix_nanos < since || f.first_seen_unix_nanos >= until || !wanted(nodes, &f.node)
    {
        return Ok(None);
    }
    let mut flow = crate::store::query::Flow::from(&f);
    let e = flow.as_event(&crate::events::CgroupInfo::of_path(f.cgroup_path.clone()));
    flow.pod_uid = e.pod_uid.clone();
    Ok(filter.matches(&e).then_some((f.node, flow)))
}

/// How much earlier than the window `fleet export` starts reading the
/// stream: node clocks ahead of the NATS servers', and events out of time
/// order across CPUs.
const CLOCK_MARGIN_NS: i64 = 5 * 60 * 1_000_000_000;

/// Reads each node's records (every verdict: the chain needs them all),
/// signed checkpoints and flow rows from the stream, and writes them as a
/// fleet bundle.
async fn export(args: FleetExportArgs) -> anyhow::Result<ExitCode> {
    use crate::evidence::fleet::{
        self as fleet_bundle, NodeStream, StreamCheckpoint, StreamRecord,
    };
    let started = std::time::Instant::now();
    super::export::check_out("--out", &args.out, args.force)?;
    let w = &args.window;
    let (since, until, filter) = prepare(w)?;
    let (_, recorded) = w.filter.compiled()?;
    let prefix = &w.nats.nats_subject_prefix;
    let mut nodes: std::collections::BTreeMap<String, NodeStream> = Default::default();
    let progress = super::progress::Progress::counter("messages");
    let mut read_count = 0u64;
    // Records: from before the window's start (the stream stamps a message
    // with its server's clock when it arrives; a node's clock ahead of it
    // must not lose the window's first records) to the end of the stream
    // (the chain is carried past the window to the next signed checkpoint).
    let read_from = since.saturating_sub(CLOCK_MARGIN_NS);
    let subject = read::subject_filter(prefix, &w.node, &read::Kind::Events { verdicts: &[] });
    read::read(&w.nats, subject, read_from, &mut |payload, content_type| {
        let e: pb::Event = crate::fleet::decode(content_type, payload)
            .map_err(|why| anyhow::anyhow!("a message that is no Event ({why})"))?;
        read_count += 1;
        progress.show(read_count, 0);
        if !wanted(&w.node, &e.node) {
            return Ok(());
        }
        let prev = crate::store::chain::decode32(&e.chain_prev).ok_or_else(|| {
            anyhow::anyhow!(
                "node {}: record seq {} carries no chain hash (chain_prev): it was published by a daemon older than fleet export, whose records cannot be verified from the stream; export them on the node (`egress-monitor export`), or leave the node out with --node",
                e.node,
                e.seq
            )
        })?;
        let node = e.node.clone();
        let seq = i64::try_from(e.seq).unwrap_or(i64::MAX);
        nodes.entry(node).or_default().records.push(StreamRecord {
            seq,
            prev,
            event: crate::events::Event::from(e),
        });
        Ok(())
    })
    .await?;
    let subject = read::subject_filter(prefix, &w.node, &read::Kind::Checkpoints);
    let start = read_from.saturating_sub(crate::store::coverage::MAX_GAP_NANOS);
    read::read(&w.nats, subject, start, &mut |payload, _| {
        let c: crate::fleet::NodeCheckpoint = serde_json::from_slice(payload)
            .map_err(|why| anyhow::anyhow!("a message that is no checkpoint ({why})"))?;
        if wanted(&w.node, &c.node) {
            nodes
                .entry(c.node)
                .or_default()
                .checkpoints
                .push(StreamCheckpoint {
                    store_id: c.store_id,
                    public_key: c.public_key,
                    checkpoint: c.checkpoint,
                });
        }
        Ok(())
    })
    .await?;
    let subject = read::subject_filter(prefix, &w.node, &read::Kind::Flows);
    let start = crate::store::query::bucket_of(read_from);
    read::read(&w.nats, subject, start, &mut |payload, content_type| {
        if let Some((node, flow)) =
            flow_of(payload, content_type, (since, until), &w.node, &filter)?
        {
            nodes.entry(node).or_default().flows.push(flow);
        }
        Ok(())
    })
    .await?;
    progress.done();
    if nodes.is_empty() {
        anyhow::bail!(
            "the stream {} holds nothing of {} from {} on: nothing written",
            w.nats.nats_stream,
            if w.node.is_empty() {
                "any node".to_string()
            } else {
                format!("node {}", w.node.join(", "))
            },
            crate::events::rfc3339_nanos(i128::from(since))
        );
    }
    let req = fleet_bundle::Request {
        since,
        until,
        keep: &|e| filter.matches(e),
        filter: recorded,
        source: serde_json::json!({
            "stream": w.nats.nats_stream,
            "subject_prefix": prefix,
            "servers": w.nats.url(),
        }),
    };
    let (files, summaries) = fleet_bundle::build(nodes, &req)?;
    crate::evidence::bundle::write_tar(&files, &args.out)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} bytes, {} files) in {:.0} ms: the window {} .. {} of {} nodes",
        args.out.display(),
        size,
        files.len(),
        started.elapsed().as_secs_f64() * 1e3,
        crate::events::rfc3339_nanos(i128::from(since)),
        crate::events::rfc3339_nanos(i128::from(until)),
        summaries.len()
    );
    for n in &summaries {
        println!(
            "  {}: {} of {} records, {} flow rows; signed up to seq {}{}; node key {}",
            n.node,
            n.exported,
            n.in_window,
            n.flows,
            n.signed_up_to
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            if n.unsigned > 0 {
                format!(
                    " ({} records after it not signed yet: the node signs every 10 s)",
                    n.unsigned
                )
            } else {
                String::new()
            },
            n.public_key
        );
    }
    Ok(ExitCode::SUCCESS)
}
