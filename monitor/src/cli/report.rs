//! `report`: the auditor's page for a window, as HTML (and PDF).
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;

use super::{
    export::{check_out, StoreWindow},
    filters::FilterArgs,
};
use crate::{
    evidence::bundle,
    store::{self, Store},
};

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub window: StoreWindow,
    /// The page to write (HTML, self-contained: it fetches nothing).
    #[arg(long)]
    pub out: PathBuf,
    /// Also print the page to this PDF file, through headless Chromium
    /// (Debian package `chromium`).
    #[arg(long)]
    pub pdf: Option<PathBuf>,
    /// Replace existing files at --out and --pdf.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    check_out("--out", &args.out, args.force)?;
    if let Some(pdf) = &args.pdf {
        check_out("--pdf", pdf, args.force)?;
        if pdf == &args.out {
            bail!(
                "--pdf {} is the --out file; give another name",
                pdf.display()
            );
        }
    }
    let (since, until) = args.window.nanos()?;
    if until <= since {
        bail!(
            "the window {} .. {} is empty: --until must be after --since",
            crate::events::rfc3339_nanos(i128::from(since)),
            crate::events::rfc3339_nanos(i128::from(until))
        );
    }
    // Chromium is looked for before the store is read.
    let chromium = match &args.pdf {
        Some(_) => Some(find_chromium()?),
        None => None,
    };
    let (filter, recorded) = args.filter.compiled()?;
    let state_dir = args.window.state_dir()?;
    let st = Store::open_read(&store::path_in(&state_dir))?;
    let progress = super::progress::Progress::counter("flows");
    let show = |done: u64, total: u64| progress.show(done, total);
    let req = bundle::Request {
        since,
        until,
        keep: &|e| filter.matches(e),
        filter: recorded,
        by_process: filter.by_process(),
        progress: progress.on().then_some(&show as &dyn Fn(u64, u64)),
    };
    let page = bundle::report(&st, &req);
    progress.done();
    let page = page?;
    if page.records == 0 && page.flows == 0 && page.watched_nanos == 0 {
        bail!(
            "nothing to report for {} .. {}: the store in {} holds no record of it and no daemon watched any of it (is the window right?)",
            crate::events::rfc3339_nanos(i128::from(since)),
            crate::events::rfc3339_nanos(i128::from(until)),
            state_dir.display()
        );
    }
    write_new(&args.out, page.html.as_bytes(), args.force)?;
    println!(
        "wrote {} ({} bytes) in {:.0} ms: {} flows, {} records in the window {} .. {}",
        args.out.display(),
        page.html.len(),
        started.elapsed().as_secs_f64() * 1e3,
        page.flows,
        page.records,
        crate::events::rfc3339_nanos(i128::from(since)),
        crate::events::rfc3339_nanos(i128::from(until)),
    );
    if let (Some(pdf), Some(chromium)) = (&args.pdf, chromium) {
        print_pdf(&chromium, &args.out, pdf, args.force)?;
        let size = std::fs::metadata(pdf).map(|m| m.len()).unwrap_or(0);
        println!(
            "wrote {} ({size} bytes) with {}",
            pdf.display(),
            chromium.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `out` (mode 0600: the page names the node's
/// workloads and destinations): through a new file beside it, renamed
/// over it, so a reader never sees half a page.
fn write_new(out: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| -> anyhow::Result<()> {
        let mut f = crate::private_file::create_new(&tmp, 0o600)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if !force && out.exists() {
            bail!(
                "--out {} appeared meanwhile; not overwritten",
                out.display()
            );
        }
        std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The Chromium the PDF is printed with: `chromium` or
/// `chromium-browser` on PATH.
fn find_chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("--pdf needs headless Chromium, and neither chromium nor chromium-browser is on PATH: install the Debian package `chromium` (apt-get install chromium), or open the HTML page in a browser and print it to PDF")
}

/// How long Chromium may take to print the page.
const PRINT_TIMEOUT: Duration = Duration::from_secs(120);

/// Prints `html` to `pdf` with headless Chromium, in a profile directory
/// of its own (removed after), and checks a PDF came out.
fn print_pdf(chromium: &Path, html: &Path, pdf: &Path, force: bool) -> anyhow::Result<()> {
    let abs = std::fs::canonicalize(html).with_context(|| format!("reading {}", html.display()))?;
    let profile =
        std::env::temp_dir().join(format!("egress-monitor-chromium-{}", std::process::id()));
    let mut tmp = pdf.as_os_str().to_owned();
    tmp.push(format!(".partial-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::create_dir_all(&profile).with_context(|| format!("creating {}", profile.display()))?;
    let log = profile.join("stderr");
    let stderr_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new(chromium)
        .args(headless_args(&profile))
        .arg(format!("--print-to-pdf={}", tmp.display()))
        .arg("--no-pdf-header-footer")
        .arg(format!("file://{}", abs.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .with_context(|| format!("starting {}", chromium.display()))?;
    let deadline = Instant::now() + PRINT_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&profile);
    let made = std::fs::read(&tmp).unwrap_or_default();
    let result = match status {
        None => Err(anyhow::anyhow!(
            "{} did not print {} within {} s",
            chromium.display(),
            html.display(),
            PRINT_TIMEOUT.as_secs()
        )),
        Some(s) if !s.success() || !made.starts_with(b"%PDF") => Err(anyhow::anyhow!(
            "{} could not print {} to PDF ({s}): {}",
            chromium.display(),
            html.display(),
            stderr.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
        )),
        Some(_) if !force && pdf.exists() => Err(anyhow::anyhow!(
            "--pdf {} appeared meanwhile; not overwritten",
            pdf.display()
        )),
        Some(_) => std::fs::rename(&tmp, pdf).with_context(|| format!("writing {}", pdf.display())),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Chromium's flags for a page printed without a display, a sandbox (it
/// runs as root here) or a network fetch of its own.
fn headless_args(profile: &Path) -> Vec<String> {
    vec![
        "--headless".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-background-networking".into(),
        "--no-first-run".into(),
        format!("--user-data-dir={}", profile.display()),
    ]
}
