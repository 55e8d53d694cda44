use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Context;
use clap::Args;

use super::filters::FilterArgs;
use crate::{
    api::filter::Filter,
    evidence::{bundle, key},
    store::{self, time::parse_window, Store},
};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Start of the window: RFC 3339 or a duration before now (2h).
    #[arg(long)]
    pub since: String,
    /// End of the window [default: now].
    #[arg(long, default_value = "")]
    pub until: String,
    /// The bundle to write (a tar file).
    #[arg(long)]
    pub out: PathBuf,
    /// The daemon's state directory (the store and the node key are read
    /// from it; needs root, works with the daemon running or stopped).
    #[arg(long, default_value = crate::daemon::default_state_dir().as_os_str())]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (since, until) = parse_window(&args.since, &args.until, store::now_nanos())
        .map_err(|(field, why)| anyhow::anyhow!("--{field}: {why}"))?;
    let pbf = args.filter.to_pb();
    let filter = Filter::compile(pbf.clone()).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let recorded = if args.filter.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::to_value(&pbf)?
    };
    let signing = key::load(&args.state_dir).context("the node key signs the bundle")?;
    let st = Store::open_read(&store::path_in(&args.state_dir))?;
    let req = bundle::Request {
        since,
        until,
        keep: &|e| filter.matches(e),
        filter: recorded,
        by_process: filter.by_process(),
    };
    let (files, summary) = bundle::build(&st, &signing, &req)?;
    bundle::write_tar(&files, &args.out)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} bytes, {} files) in {:.0} ms: {} of {} records in the window {} .. {}, {} flows, {} policy versions; signed by node key {}",
        args.out.display(),
        size,
        files.len(),
        started.elapsed().as_secs_f64() * 1e3,
        summary.exported,
        summary.in_window,
        crate::events::rfc3339_nanos(i128::from(since)),
        crate::events::rfc3339_nanos(i128::from(until)),
        summary.flows,
        summary.policy_versions,
        key::public_hex(&signing.verifying_key())
    );
    Ok(ExitCode::SUCCESS)
}
