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
    #[command(flatten)]
    pub connect: ConnectArgs,
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
