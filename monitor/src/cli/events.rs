use std::{future::Future, process::ExitCode, time::Duration};

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
    /// Follow across daemon restarts: the stream reads from the history
    /// store, each event carries its store position (`seq` in -o json),
    /// and when the daemon stops the client connects again and resumes
    /// after the last event it printed: none is lost or printed twice.
    #[arg(long, requires = "follow", conflicts_with = "last")]
    pub reconnect: bool,
    /// Seconds --reconnect waits for a daemon to answer again before it
    /// gives up.
    #[arg(long, requires = "reconnect", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub reconnect_timeout: u64,
    /// Start after this store position (`seq`, as -o json prints it), from
    /// the history store: resumes an earlier `--follow --reconnect`.
    #[arg(long, requires = "follow", conflicts_with = "last")]
    pub after_seq: Option<u64>,
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
        after_seq: None,
    };
    if let Some(since) = args.since.clone() {
        let filter = request.filter.clone().unwrap_or_default();
        let mut printer = Printer::new(args.output);
        return history(
            &mut client,
            filter,
            since,
            args.until.clone().unwrap_or_default(),
            args.limit,
            &mut printer,
        )
        .await;
    }
    let mut printer = Printer::new(args.output);
    if args.reconnect || args.after_seq.is_some() {
        return resume(&args, client, request, &mut printer).await;
    }
    let stream = client
        .stream_events(request)
        .await
        .map_err(|s| status_error("StreamEvents", s))?
        .into_inner();
    match print_stream(stream, &mut printer, &mut 0).await? {
        End::Interrupted => Ok(ExitCode::SUCCESS),
        End::Daemon(None) if !args.follow => Ok(ExitCode::SUCCESS),
        End::Daemon(s) if args.follow => Err(anyhow::anyhow!(ended(s.as_ref()))),
        End::Daemon(s) => Err(status_error(
            "StreamEvents",
            s.unwrap_or_else(|| tonic::Status::unknown("")),
        )),
    }
}

/// How a stream ended.
enum End {
    /// Ctrl-C.
    Interrupted,
    /// The daemon ended it: cleanly (None), or with a status (stopping:
    /// UNAVAILABLE; the connection lost).
    Daemon(Option<tonic::Status>),
}

/// What `--follow` says when its stream ends.
fn ended(status: Option<&tonic::Status>) -> String {
    match status {
        None => "stream ended: the daemon stopped".into(),
        Some(s) if s.code() == tonic::Code::Unavailable => {
            format!("stream ended: the daemon stopped ({})", s.message())
        }
        Some(s) => format!(
            "stream ended: the daemon stopped or the connection broke ({:?}: {})",
            s.code(),
            s.message()
        ),
    }
}

/// Prints a stream until it ends; `last_seq` follows the store position
/// of what was printed.
async fn print_stream(
    stream: tonic::Streaming<pb::StreamEventsResponse>,
    printer: &mut Printer,
    last_seq: &mut u64,
) -> anyhow::Result<End> {
    let end = print_until_end(stream, printer, last_seq).await;
    // Before what the caller says of the end (a reconnect, an error).
    printer.flush();
    end
}

async fn print_until_end(
    mut stream: tonic::Streaming<pb::StreamEventsResponse>,
    printer: &mut Printer,
    last_seq: &mut u64,
) -> anyhow::Result<End> {
    loop {
        // What has arrived is printed before the output is flushed: a burst
        // of events is one write, and a quiet stream shows each at once.
        // (`message` keeps its progress in the stream: a poll that finds
        // nothing ready, or one ended by the interrupt, loses nothing.)
        let mut ready = std::pin::pin!(stream.message());
        let now = ready
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        let next = match now {
            std::task::Poll::Ready(n) => n,
            std::task::Poll::Pending => {
                printer.flush();
                tokio::select! {
                    n = ready => n,
                    _ = tokio::signal::ctrl_c() => return Ok(End::Interrupted),
                }
            }
        };
        match next {
            Ok(Some(msg)) => match msg.item {
                Some(Item::Event(e)) => {
                    *last_seq = (*last_seq).max(e.seq);
                    printer.event(e);
                }
                Some(Item::Gap(g)) => printer.gap(g.missed),
                None => {}
            },
            Ok(None) => return Ok(End::Daemon(None)),
            // The caller's request, refused: no restart changes that.
            Err(s) if refusal(s.code()) => return Err(status_error("StreamEvents", s)),
            Err(s) => return Ok(End::Daemon(Some(s))),
        }
    }
}

/// Codes that say the request is wrong, not that the daemon went.
fn refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::Unimplemented
            | tonic::Code::FailedPrecondition
            | tonic::Code::OutOfRange
    )
}

/// Follows the history store from `--after-seq` (or from its head now):
/// with `--reconnect`, across restarts of the daemon, resuming after the
/// last event printed.
async fn resume(
    args: &EventsArgs,
    mut client: crate::api::pb::egress_monitor_client::EgressMonitorClient<
        tonic::transport::Channel,
    >,
    mut request: pb::StreamEventsRequest,
    printer: &mut Printer,
) -> anyhow::Result<ExitCode> {
    let mut after = match args.after_seq {
        Some(n) => n,
        None => {
            let status = client
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(|s| status_error("GetStatus", s))?
                .into_inner();
            let store = status.store.ok_or_else(|| {
                anyhow::anyhow!("the daemon reports no history store, which --reconnect follows")
            })?;
            u64::try_from(store.chain_seq).unwrap_or(0)
        }
    };
    loop {
        request.after_seq = Some(after);
        let end = match client.stream_events(request.clone()).await {
            Ok(r) => print_stream(r.into_inner(), printer, &mut after).await?,
            Err(s) if refusal(s.code()) => return Err(status_error("StreamEvents", s)),
            Err(s) => End::Daemon(Some(s)),
        };
        let status = match end {
            End::Interrupted => return Ok(ExitCode::SUCCESS),
            End::Daemon(s) => s,
        };
        if !args.reconnect {
            anyhow::bail!(
                "{} (resume with --after-seq {after})",
                ended(status.as_ref())
            );
        }
        eprintln!(
            "{}; reconnecting to resume after seq {after}",
            ended(status.as_ref())
        );
        client = reconnect(&args.connect, Duration::from_secs(args.reconnect_timeout))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "no daemon answered within {} s ({e:#}); resume with --after-seq {after}",
                    args.reconnect_timeout
                )
            })?;
    }
}

/// Connects again, trying until `timeout` has passed.
async fn reconnect(
    connect: &crate::api::client::ConnectArgs,
    timeout: Duration,
) -> anyhow::Result<
    crate::api::pb::egress_monitor_client::EgressMonitorClient<tonic::transport::Channel>,
> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(100);
    loop {
        match crate::api::client::connect(connect).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() + wait > deadline => return Err(e),
            Err(_) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
                }
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}
