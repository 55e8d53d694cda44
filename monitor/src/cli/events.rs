use std::process::ExitCode;

use clap::Args;

use super::output::{Format, Printer};
use crate::api::{
    client::{connect, status_error, ConnectArgs},
    pb::{self, stream_events_response::Item},
};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep streaming live decisions.
    #[arg(short, long)]
    pub follow: bool,
    /// Start with the last N matching decisions [default: 20, or 0 with --follow].
    #[arg(long)]
    pub last: Option<u32>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    /// allowed, denied or would_deny (repeatable).
    #[arg(long)]
    pub verdict: Vec<String>,
    #[arg(long)]
    pub policy: Vec<String>,
    /// ISO country code of the destination (repeatable).
    #[arg(long)]
    pub country: Vec<String>,
    /// Destination inside this CIDR (repeatable).
    #[arg(long)]
    pub to_cidr: Vec<String>,
    #[arg(long)]
    pub port: Vec<u32>,
    /// tcp or udp.
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Glob over the cgroup path ('*' one level, '**' any).
    #[arg(long)]
    pub cgroup: Vec<String>,
    #[arg(long)]
    pub pid: Vec<u32>,
    #[arg(long)]
    pub comm: Vec<String>,
    #[arg(long)]
    pub uid: Vec<u32>,
    /// Kubernetes pod UID (repeatable).
    #[arg(long)]
    pub pod: Vec<String>,
    /// Read the history store from this time on (RFC 3339, or a duration
    /// before now: 2h, 30m) instead of the recent decisions in memory.
    #[arg(long, conflicts_with_all = ["follow", "last"])]
    pub since: Option<String>,
    /// End of the --since window [default: now].
    #[arg(long, requires = "since")]
    pub until: Option<String>,
    /// With --since: at most this many decisions, oldest first.
    #[arg(long, requires = "since", default_value_t = 1000)]
    pub limit: u32,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

async fn history(
    client: &mut crate::api::pb::egress_monitor_client::EgressMonitorClient<
        tonic::transport::Channel,
    >,
    filter: pb::EventFilter,
    since: String,
    until: String,
    limit: u32,
    printer: &mut Printer,
) -> anyhow::Result<ExitCode> {
    let mut token = String::new();
    let mut left = limit as usize;
    while left > 0 {
        let page = client
            .query_events(pb::QueryEventsRequest {
                window: Some(pb::TimeWindow {
                    since: since.clone(),
                    until: until.clone(),
                }),
                filter: Some(filter.clone()),
                limit: left.min(10_000) as u32,
                page_token: token,
            })
            .await
            .map_err(|s| status_error("QueryEvents", s))?
            .into_inner();
        left -= page.events.len();
        for e in page.events {
            printer.event(e);
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.connect).await?;
    let request = pb::StreamEventsRequest {
        filter: Some(pb::EventFilter {
            verdicts: args.verdict,
            policies: args.policy,
            cgroup_globs: args.cgroup,
            dst_cidrs: args.to_cidr,
            countries: args.country,
            ports: args.port,
            protocols: args.protocol,
            pids: args.pid,
            comms: args.comm,
            uids: args.uid,
            pod_uids: args.pod,
        }),
        last: args.last.unwrap_or(if args.follow { 0 } else { 20 }),
        follow: args.follow,
    };
    if let Some(since) = args.since {
        let filter = request.filter.clone().unwrap_or_default();
        let mut printer = Printer::new(args.output);
        return history(
            &mut client,
            filter,
            since,
            args.until.unwrap_or_default(),
            args.limit,
            &mut printer,
        )
        .await;
    }
    let mut stream = client
        .stream_events(request)
        .await
        .map_err(|s| status_error("StreamEvents", s))?
        .into_inner();
    let mut printer = Printer::new(args.output);
    loop {
        let next = tokio::select! {
            n = stream.message() => n,
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        match next {
            Ok(Some(msg)) => match msg.item {
                Some(Item::Event(e)) => printer.event(e),
                Some(Item::Gap(g)) => printer.gap(g.missed),
                None => {}
            },
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(s) => return Err(status_error("StreamEvents", s)),
        }
    }
}
