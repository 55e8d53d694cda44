//! `egress-monitor top`: a live view of a node in the terminal. Every
//! interval it reads the daemon's status (rates by verdict, losses, the
//! store) and the flows of the last minute (top destinations and
//! workloads, repeats included); the live event stream gives the latest
//! refusals and drift alerts. Keys choose filters the daemon applies.
pub mod model;
pub mod view;

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use clap::Args;
use tokio::sync::mpsc;

use self::model::{Filters, Latest, Rates, Row, VERDICTS};
use crate::api::{
    client::{connect, status_error, ConnectArgs},
    pb::{self, egress_monitor_client::EgressMonitorClient, stream_events_response::Item},
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between updates.
    #[arg(long, default_value_t = 1.0, value_parser = interval)]
    pub interval: f64,
    /// Seconds of flows the top lists count.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub window: u64,
    /// Rows in each top list.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rows: u32,
    #[command(flatten)]
    pub filter: super::filters::FilterArgs,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (0.2..=60.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0.2 and 60 seconds"))
    }
}

type Client = EgressMonitorClient<tonic::transport::Channel>;

/// What the keys ask for.
enum Key {
    Quit,
    Pause,
    Verdict,
    Policy,
    Workload,
}

/// Reads keys on a thread of its own (crossterm's reads block).
fn keys() -> mpsc::Receiver<Key> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || loop {
        let Ok(Event::Key(k)) = event::read() else {
            continue;
        };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let key = match k.code {
            KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
            KeyCode::Char(' ') => Key::Pause,
            KeyCode::Char('v') => Key::Verdict,
            KeyCode::Char('p') => Key::Policy,
            KeyCode::Char('w') => Key::Workload,
            _ => continue,
        };
        if tx.blocking_send(key).is_err() {
            return;
        }
    });
    rx
}

/// The live stream of `filter` into `tx`, until it ends or `tx` closes.
fn stream(
    mut client: Client,
    filter: pb::EventFilter,
    tx: mpsc::Sender<pb::Event>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let req = pb::StreamEventsRequest {
            filter: Some(filter),
            last: model::LATEST as u32,
            follow: true,
            after_seq: None,
        };
        let Ok(resp) = client.stream_events(req).await else {
            return;
        };
        let mut s = resp.into_inner();
        while let Ok(Some(item)) = s.message().await {
            if let Some(Item::Event(e)) = item.item {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    })
}

/// The top flows of the last `window` seconds, grouped by `group_by`.
async fn top_flows(
    client: &mut Client,
    filter: &pb::EventFilter,
    window: u64,
    rows: u32,
    group_by: &[&str],
) -> Result<Vec<pb::Flow>, tonic::Status> {
    Ok(client
        .query_flows(pb::QueryFlowsRequest {
            window: Some(pb::TimeWindow {
                since: format!("{window}s"),
                until: String::new(),
            }),
            filter: Some(filter.clone()),
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            sort: "count".into(),
            limit: rows,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .flows)
}

/// What one refresh read.
struct Reading {
    status: pb::GetStatusResponse,
    destinations: Vec<Row>,
    workloads: Vec<Row>,
}

async fn read(
    client: &mut Client,
    filter: &pb::EventFilter,
    a: &TopArgs,
) -> Result<Reading, String> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|s| status_error("GetStatus", s).to_string())?
        .into_inner();
    let w = a.window as f64;
    let dests = top_flows(
        client,
        filter,
        a.window,
        a.rows,
        &["destination", "name", "country", "cloud"],
    )
    .await
    .map_err(|s| status_error("QueryFlows", s).to_string())?;
    let works = top_flows(client, filter, a.window, a.rows, &["cgroup"])
        .await
        .map_err(|s| status_error("QueryFlows", s).to_string())?;
    Ok(Reading {
        status,
        destinations: model::destinations(&dests, w),
        workloads: model::workloads(&works, w),
    })
}

pub async fn run(a: TopArgs) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top draws on a terminal and stdout is not one; in a script use `events --follow -o json`, `flows` or `status -o json`"
        );
    }
    let base = a.filter.to_pb();
    crate::api::filter::Filter::compile(base.clone())
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut client = connect(&a.connect).await?;
    // Said before the screen is taken: a daemon that does not answer is an
    // error on the terminal, not a blank screen.
    let mut reading = read(&mut client, &base, &a)
        .await
        .map_err(anyhow::Error::msg)?;
    let target = match (&a.connect.server, &a.connect.socket) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => crate::api::client::socket_path(None)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    };
    let mut terminal = ratatui::try_init()?;
    let result = screen(&mut terminal, &mut client, &mut reading, &base, &a, &target).await;
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

async fn screen(
    terminal: &mut ratatui::DefaultTerminal,
    client: &mut Client,
    reading: &mut Reading,
    base: &pb::EventFilter,
    a: &TopArgs,
    target: &str,
) -> anyhow::Result<()> {
    let mut keys = keys();
    let mut filters = Filters::default();
    let mut latest = Latest::default();
    let mut paused = false;
    let mut error = String::new();
    let mut rates = Rates::default();
    let (tx, mut events) = mpsc::channel(1024);
    let mut streaming = stream(client.clone(), filters.apply(base), tx.clone());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(a.interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = std::time::Instant::now();
    // Redrawn at most every 100 ms when events arrive in between.
    let mut redraw = tokio::time::interval(Duration::from_millis(100));
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !paused {
                    let filter = filters.apply(base);
                    match read(client, &filter, a).await {
                        Ok(r) => {
                            let now = std::time::Instant::now();
                            rates = Rates::between(&reading.status, &r.status, now.duration_since(last).as_secs_f64());
                            last = now;
                            *reading = r;
                            error.clear();
                        }
                        Err(e) => error = e,
                    }
                    dirty = true;
                }
            }
            _ = redraw.tick() => {}
            Some(e) = events.recv() => {
                if !paused {
                    latest.push(e);
                    dirty = true;
                }
                continue;
            }
            key = keys.recv() => {
                let Some(key) = key else { return Ok(()) };
                match key {
                    Key::Quit => {
                        streaming.abort();
                        return Ok(());
                    }
                    Key::Pause => paused = !paused,
                    Key::Verdict | Key::Policy | Key::Workload => {
                        let choices: Vec<String> = match key {
                            Key::Verdict => VERDICTS.iter().map(|s| s.to_string()).collect(),
                            Key::Policy => std::iter::once(String::new())
                                .chain(reading.status.policies.iter().map(|p| p.name.clone()))
                                .collect(),
                            _ => std::iter::once(String::new())
                                .chain(reading.workloads.iter().map(|w| w.label.clone()))
                                .collect(),
                        };
                        let slot = match key {
                            Key::Verdict => &mut filters.verdict,
                            Key::Policy => &mut filters.policy,
                            _ => &mut filters.workload,
                        };
                        *slot = model::next_of(&choices, slot);
                        // The daemon filters: the stream starts over with
                        // the new filter, the lists at the next tick (now).
                        streaming.abort();
                        latest = Latest::default();
                        while events.try_recv().is_ok() {}
                        streaming = stream(client.clone(), filters.apply(base), tx.clone());
                        tick.reset_immediately();
                    }
                }
                dirty = true;
            }
        }
        if dirty {
            let describe = filters.describe();
            terminal.draw(|f| {
                view::draw(
                    f,
                    &view::Screen {
                        target,
                        status: &reading.status,
                        rates,
                        interval: a.interval,
                        window_secs: a.window,
                        filters: describe.clone(),
                        paused,
                        destinations: &reading.destinations,
                        workloads: &reading.workloads,
                        latest: &latest,
                        error: &error,
                    },
                )
            })?;
            dirty = false;
        }
    }
}
