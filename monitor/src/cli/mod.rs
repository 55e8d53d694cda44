//! The command line: one binary, the daemon and its client commands.
mod baseline;
pub mod daemon;
mod events;
mod export;
mod filters;
mod fleet;
mod flows;
mod output;
mod pinned;
mod policy;
use crate::progress;
mod report;
mod residency;
mod status;
mod top;
mod uninstall;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "egress-monitor",
    version,
    about = "eBPF egress monitor and enforcer: judges every outbound connection of selected cgroups against region policies"
)]
pub struct Cli {
    /// Log lines (stderr) as text, or as JSON lines for log collectors:
    /// {"time", "level", "target", "message"}, `time` as in events.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "EGRESS_MONITOR_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// One log record as a JSON line, with the events' `time` (RFC 3339, ns).
fn log_json(now_nanos: i128, level: log::Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "time": crate::events::rfc3339_nanos(now_nanos),
        "level": level.as_str(),
        "target": target,
        "message": message,
    })
    .to_string()
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs and policies and run (needs root).
    Daemon(daemon::DaemonArgs),
    /// Decisions from the daemon: recent ones, or live with --follow.
    Events(events::EventsArgs),
    /// A live view of a node in the terminal: decisions per second by
    /// verdict, top destinations and workloads, the latest denials and
    /// drift alerts, losses and the store; keys filter (v verdict, p
    /// policy, w workload), pause (space) and quit (q).
    Top(top::TopArgs),
    /// Flows from the history store: who talked to where, how often.
    Flows(flows::FlowsArgs),
    /// Write a signed evidence bundle for a time window (reads the store
    /// in --state-dir; root on the node).
    Export(export::ExportArgs),
    /// Write the auditor's report for a time window: one self-contained
    /// HTML page with charts (and a PDF through headless Chromium); reads
    /// the store in --state-dir, root on the node.
    Report(report::ReportArgs),
    /// Check an evidence bundle: signature, digests, record chain (exit 3:
    /// intact, but signed by a key you did not pin with --pubkey).
    #[command(after_help = verify::AFTER_HELP)]
    Verify(verify::VerifyArgs),
    /// The daemon's programs, policies, database and counters; with no
    /// daemon, what is still pinned and attached (exit 3: programs pinned,
    /// 4: nothing installed).
    Status(status::StatusArgs),
    /// Run COMMAND in a cgroup of its own under one policy and report every
    /// destination it reached or attempted, by verdict (a residency test
    /// for CI; root). Exit status: COMMAND's own failure, else 3 when
    /// anything was denied or would be, else 0; 125: the test could not run.
    Test(residency::TestArgs),
    /// Detach the programs and remove every pin: enforcement ends (root).
    Uninstall(uninstall::UninstallArgs),
    /// Record the destinations each workload uses as a baseline file for
    /// review, or list the flows outside one (drift; reads the store in
    /// --state-dir, root on the node).
    #[command(subcommand)]
    Baseline(baseline::BaselineCommand),
    /// Check policy files; list or reload the daemon's policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Every node's events and flows from NATS JetStream, where daemons
    /// with --nats-url publish them.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

/// Runs a client command on a small runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

pub fn run(cli: Cli) -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match cli.log_format {
        LogFormat::Text => logger.format_timestamp_millis(),
        LogFormat::Json => logger.format(|buf, record| {
            use std::io::Write;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            writeln!(
                buf,
                "{}",
                log_json(
                    now,
                    record.level(),
                    record.target(),
                    &record.args().to_string()
                )
            )
        }),
    };
    logger.init();
    if !matches!(cli.command, Command::Daemon(_)) {
        quiet_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Daemon(args) => daemon::run(args),
        Command::Events(args) => block_on(events::run(args)),
        Command::Top(args) => block_on(top::run(args)),
        Command::Status(args) => block_on(status::run(args)),
        Command::Flows(args) => block_on(flows::run(args)),
        Command::Export(args) => export::run(args),
        Command::Report(args) => report::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Uninstall(args) => uninstall::run(args),
        Command::Test(args) => residency::run(args),
        Command::Baseline(cmd) => baseline::run(cmd),
        Command::Fleet(cmd) => fleet::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Exit status of a client whose reader went: 128 + SIGPIPE, what a
/// shell reports for a tool SIGPIPE ended.
pub const EXIT_READER_GONE: i32 = 141;

/// A client whose reader went (`status | head -1`) ends quietly with
/// `EXIT_READER_GONE`, as a Unix tool does, instead of the panic println!
/// makes of EPIPE. SIGPIPE itself stays ignored (Rust's default): its
/// default action would also kill a client silently when the daemon's
/// end of the socket closes under a write, where the client has
/// something to say ("stream ended: the daemon stopped").
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout")
            && message.contains(&std::io::Error::from_raw_os_error(libc::EPIPE).to_string())
        {
            std::process::exit(EXIT_READER_GONE);
        }
        default(info);
    }));
}

pub use crate::error_text::error_chain;

#[cfg(test)]
mod tests {
    #[test]
    fn json_log_lines_carry_the_events_time() {
        let line = super::log_json(
            1_795_308_341_000_000_001,
            log::Level::Warn,
            "monitor::daemon",
            "a \"quoted\" word",
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-11-22T00:45:41.000000001Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "monitor::daemon");
        assert_eq!(v["message"], "a \"quoted\" word");
    }

    #[test]
    fn a_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let inner = format!("cannot read /x: {io}");
        let e = anyhow::Error::new(io).context(inner).context("starting");
        assert_eq!(
            super::error_chain(&e),
            "starting: cannot read /x: entity not found"
        );
        let plain = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(super::error_chain(&plain), "outer: root cause");
    }
}
