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

pub fn run(cmd: FleetCommand) -> anyhow::Result<ExitCode> {
    super::block_on(async move {
        match cmd {
            FleetCommand::Events(args) => events(args).await,
            FleetCommand::Flows(args) => flows(args).await,
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
        let f: pb::Flow = crate::fleet::decode(content_type, payload)
            .map_err(|why| anyhow::anyhow!("a message that is no Flow ({why})"))?;
        if f.last_seen_unix_nanos < since
            || f.first_seen_unix_nanos >= until
            || !wanted(&w.node, &f.node)
        {
            return Ok(());
        }
        let mut flow = crate::store::query::Flow::from(&f);
        let e = flow.as_event(&crate::events::CgroupInfo::of_path(f.cgroup_path.clone()));
        flow.pod_uid = e.pod_uid.clone();
        if filter.matches(&e) {
            by_node.entry(f.node).or_default().push(flow);
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
