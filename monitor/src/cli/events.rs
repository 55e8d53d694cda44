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
    #[command(flatten)]
    pub filter: super::filters::FilterArgs,
    /// Read the history store from this time on instead of the recent
    /// decisions in memory: RFC 3339, a UTC date or date and time
    /// (2026-12-01, "2026-12-01 22:47"), Unix seconds (0: the beginning),
    /// or a duration before now (2h, 30m).
    #[arg(long, conflicts_with_all = ["follow", "last"])]
    pub since: Option<String>,
    /// End of the --since window, in any form --since takes (default: now).
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
        filter: Some(args.filter.to_pb()),
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
