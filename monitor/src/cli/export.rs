use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::Context;
use clap::Args;

use super::filters::FilterArgs;
use crate::{
    evidence::{bundle, key},
    store::{self, time::parse_window, Store},
};

/// The window of the store a command reads offline (`export`, `report`),
/// and where the store is.
#[derive(Debug, Args)]
pub struct StoreWindow {
    /// Start of the window: RFC 3339, a UTC date or date and time
    /// (2026-12-01, "2026-12-01 22:47"), Unix seconds (0: the beginning),
    /// or a duration before now (2h, 7d).
    #[arg(long)]
    pub since: String,
    /// End of the window, in any form --since takes (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// The daemon's state directory (the store, and for `export` the node
    /// key, are read from it; needs root, works with the daemon running or
    /// stopped) [default: /var/lib/egress-monitor if it holds a store, else
    /// that of the one daemon running on this machine].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl StoreWindow {
    /// The window in Unix nanoseconds, the flag named in its error.
    pub(super) fn nanos(&self) -> anyhow::Result<(i64, i64)> {
        parse_window(
            &self.since,
            self.until.as_deref().unwrap_or(""),
            store::now_nanos(),
        )
        .map_err(|(field, why)| anyhow::anyhow!("--{field}: {why}"))
    }

    pub(super) fn state_dir(&self) -> anyhow::Result<PathBuf> {
        crate::api::client::state_dir(self.state_dir.as_deref())
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub window: StoreWindow,
    /// The bundle to write (a tar file).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing file at --out (refused otherwise: a bundle is
    /// evidence, not a cache).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Refuses an --out (or other output `flag`) that would overwrite a file
/// without --force, or whose directory is missing, before the store is
/// read.
pub(super) fn check_out(flag: &str, out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    if out.is_dir() {
        anyhow::bail!("{flag} {} is a directory; give a file name", out.display());
    }
    if out.exists() && !force {
        anyhow::bail!(
            "{flag} {} exists; not overwritten (--force replaces it)",
            out.display()
        );
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !parent.is_dir() {
        anyhow::bail!(
            "{flag} {}: the directory {} does not exist",
            out.display(),
            parent.display()
        );
    }
    Ok(())
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    check_out("--out", &args.out, args.force)?;
    let (since, until) = args.window.nanos()?;
    let (filter, recorded) = args.filter.compiled()?;
    let state_dir = args.window.state_dir()?;
    let signing = key::load(&state_dir).context("the node key signs the bundle")?;
    let st = Store::open_read(&store::path_in(&state_dir))?;
    let progress = super::progress::Progress::bar("exporting records");
    let show = |done: u64, total: u64| progress.show(done, total);
    let req = bundle::Request {
        since,
        until,
        keep: &|e| filter.matches(e),
        filter: recorded,
        by_process: filter.by_process(),
        progress: progress.on().then_some(&show as &dyn Fn(u64, u64)),
    };
    let result = bundle::export(&st, &signing, &req, &args.out);
    progress.done();
    let (summary, files) = result?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} bytes, {} files) in {:.0} ms: {} of {} records in the window {} .. {}, {} flows, {} policy versions; signed by node key {}",
        args.out.display(),
        size,
        files,
        started.elapsed().as_secs_f64() * 1e3,
        summary.exported,
        summary.in_window,
        crate::events::rfc3339_nanos(i128::from(since)),
        crate::events::rfc3339_nanos(i128::from(until)),
        summary.flows,
        summary.policy_versions,
        key::public_hex(&signing.verifying_key())
    );
    log::debug!("the export took: {}", summary.took_text());
    Ok(ExitCode::SUCCESS)
}
