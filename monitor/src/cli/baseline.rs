//! `baseline record` and `baseline diff`: the destinations each workload
//! used, from the store, as a file for review; and the flows outside it.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::filters::FilterArgs;
use crate::{
    api::{filter::Filter, pb},
    baseline::{self, diff, record},
    store::{self, time::parse_window},
};

/// Exit status of `baseline diff` when a flow is outside the baseline.
pub const EXIT_DRIFT: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Write the destinations each workload reached in the window as a
    /// baseline file (YAML, for review): DNS names where known, else cloud
    /// regions, else countries; private and link-local ranges as CIDRs.
    Record(RecordArgs),
    /// List the flows of the window outside a baseline, per workload and
    /// new destination (exit 3 when there are any, 0 when none).
    Diff(DiffArgs),
}

/// Where the flows come from: the window, the store, the filters.
#[derive(Debug, Args)]
pub struct Source {
    /// Start of the window: RFC 3339, a UTC date or date and time
    /// (2026-12-01, "2026-12-01 22:47"), Unix seconds (0: the beginning),
    /// or a duration before now (1h, 7d).
    #[arg(long)]
    pub since: String,
    /// End of the window, in any form --since takes (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// The daemon's state directory (its store is read; needs root, works
    /// with the daemon running or stopped) [default: /var/lib/egress-monitor
    /// if it holds a store, else that of the one daemon running here].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub source: Source,
    /// The baseline file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// metadata.name of the baseline [default: the file name without its
    /// extension]. (--name is the filter on DNS names.)
    #[arg(long)]
    pub baseline_name: Option<String>,
    /// Replace an existing file at --out (refused otherwise: a baseline
    /// is reviewed by people, not a cache).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline file.
    pub file: PathBuf,
    #[command(flatten)]
    pub source: Source,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: super::output::Format,
}

pub fn run(cmd: BaselineCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BaselineCommand::Record(a) => run_record(a),
        BaselineCommand::Diff(a) => run_diff(a),
    }
}

/// The flows of the window, with the window as RFC 3339 for people and
/// the state directory read.
fn read(source: &Source) -> anyhow::Result<(Vec<pb::Flow>, String, String, PathBuf)> {
    let until = source.until.clone().unwrap_or_default();
    let (since_ns, until_ns) = parse_window(&source.since, &until, store::now_nanos())
        .map_err(|(field, why)| anyhow::anyhow!("--{field}: {why}"))?;
    let filter = source.filter.to_pb();
    Filter::compile(filter.clone()).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let state_dir = crate::api::client::state_dir(source.state_dir.as_deref())?;
    // The window as resolved once, so both ends mean the same instants
    // here and in the query.
    let since = crate::events::rfc3339_nanos(i128::from(since_ns));
    let until = crate::events::rfc3339_nanos(i128::from(until_ns));
    let window = pb::TimeWindow {
        since: since.clone(),
        until: until.clone(),
    };
    let progress = super::progress::Progress::counter("flows");
    let flows = baseline::flows(&state_dir, window, filter, &|n| progress.show(n, 0));
    progress.done();
    let flows = flows?;
    Ok((flows, since, until, state_dir))
}

fn run_record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    super::export::check_out("--out", &args.out, args.force)?;
    let name = match &args.baseline_name {
        Some(n) => n.clone(),
        None => args
            .out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .context("--out has no file name to name the baseline by; give --baseline-name")?,
    };
    let (flows, since, until, state_dir) = read(&args.source)?;
    // An empty baseline would judge nothing: every workload unlisted, every
    // diff clean. Refused, so a wrong window or filter is noticed.
    if flows.is_empty() {
        anyhow::bail!(
            "no flows in {since} .. {until}{} in the store of {}: nothing to record, {} not written",
            if args.source.filter.is_empty() { "" } else { " matching the filters" },
            state_dir.display(),
            args.out.display()
        );
    }
    let recorded = record::build(&flows);
    let header = vec![
        format!("Egress baseline: the destinations each workload reached from {since} to {until},"),
        "recorded by `egress-monitor baseline record`. Review it: each entry is a destination"
            .into(),
        "the workload is known to use; `egress-monitor baseline diff` lists any other as drift."
            .into(),
    ];
    let text = record::to_yaml(&name, &header, &recorded);
    // What is written must read back: a baseline no diff can load is no
    // baseline.
    baseline::parse(&args.out, &text).map_err(|e| {
        anyhow::anyhow!("the baseline recorded does not read back ({e}); not written")
    })?;
    std::fs::write(&args.out, &text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let dests: usize = recorded.values().map(|d| d.len()).sum();
    println!(
        "wrote {}: {}, {} from {} of {since} .. {until}",
        args.out.display(),
        counted(recorded.len(), "workload"),
        counted(dests, "destination"),
        counted(flows.len(), "flow")
    );
    Ok(ExitCode::SUCCESS)
}

fn run_diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let baseline = baseline::load(&args.file)?;
    let (flows, since, until, _) = read(&args.source)?;
    let drift = diff::diff(&baseline, &flows);
    match args.output {
        super::output::Format::Json => {
            for n in &drift.new {
                println!("{}", serde_json::to_string(n)?);
            }
            if drift.unlisted_flows > 0 {
                eprintln!("{}", unlisted(&drift));
            }
        }
        super::output::Format::Table => print_table(&drift, &baseline.name, &since, &until),
    }
    Ok(if drift.new.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DRIFT)
    })
}

fn print_table(drift: &diff::Drift, name: &str, since: &str, until: &str) {
    if drift.new.is_empty() {
        println!("no drift from baseline {name} in {since} .. {until}");
    } else {
        println!(
            "{:<34} {:<34} {:>8} {:<24} {:<30} BASELINE",
            "WORKLOAD", "NEW", "ATTEMPTS", "FIRST SEEN", "DESTINATIONS"
        );
        for n in &drift.new {
            let baseline = if n.baseline.is_empty() {
                format!("(no {} in the baseline)", n.kind)
            } else {
                n.baseline.join(", ")
            };
            let short = |t: &str| t.get(..19).map(|t| format!("{t}Z")).unwrap_or_default();
            println!(
                "{:<34} {:<34} {:>8} {:<24} {:<30} {}",
                n.workload.to_string(),
                format!("{} {}", n.kind, n.value),
                n.attempts,
                short(&n.first_seen),
                n.destinations.iter().cloned().collect::<Vec<_>>().join(" "),
                baseline
            );
        }
        println!(
            "{} outside baseline {name} in {since} .. {until}",
            counted(drift.new.len(), "new destination")
        );
    }
    if drift.unlisted_flows > 0 {
        println!("{}", unlisted(drift));
    }
}

/// The note on the flows of workloads the baseline does not list.
fn unlisted(drift: &diff::Drift) -> String {
    format!(
        "{} of {} the baseline does not list were compared to all its workloads' destinations",
        counted(drift.unlisted_flows, "flow"),
        counted(drift.unlisted_workloads, "workload")
    )
}

/// `1 flow`, `2 flows`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::BaselineCommand;
    use crate::cli::{Cli, Command};

    /// `--name` is the DNS-name filter, as in `flows` and `export`; the
    /// baseline's own name is `--baseline-name`.
    #[test]
    fn name_filters_and_baseline_name_names() {
        let cli = Cli::try_parse_from([
            "egress-monitor",
            "baseline",
            "record",
            "--since",
            "7d",
            "--out",
            "web.yaml",
            "--name",
            "*.example.com",
            "--baseline-name",
            "web-prod",
        ])
        .expect("parses");
        let Command::Baseline(BaselineCommand::Record(r)) = cli.command else {
            panic!("not baseline record: {:?}", cli.command);
        };
        assert_eq!(r.source.filter.name, ["*.example.com"]);
        assert_eq!(r.baseline_name.as_deref(), Some("web-prod"));
    }
}
