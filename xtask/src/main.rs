//! Build orchestration: `cargo xtask setup | build | run | test | bench`.
//!
//! `setup` installs what the build and the tests need, idempotently and
//! quickly when it is all there already; every other command runs it first.
mod bench;
mod cloudip;
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
    /// Build, then run the daemon on this host: monitor mode, example policies, live decisions.
    Run {
        /// Extra arguments for `egress-monitor daemon`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every test: unit, policy files, and the privileged integration suite (root).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
        /// Only this integration suite (a file of tests/tests, e.g. `api`),
        /// all of it; unit tests are skipped.
        #[arg(long)]
        suite: Option<String>,
    },
    /// The performance suite (root): cost against the bare kernel, side by side.
    Bench {
        /// Also replace README.md's "## Performance" section with the results.
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
// TODO: pass `--cloud-ranges` to the daemon in `run` (next to `--geoip`)
// once the daemon has the flag.
pub fn cloud_ranges_dir() -> PathBuf {
    root().join(".cache/cloud")
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
        Cmd::Build => {
            setup::setup()?;
            build()
        }
        Cmd::Run { args } => {
            setup::setup()?;
            build()?;
            let bin = root().join("target/release/egress-monitor");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                eprintln!("the daemon loads eBPF programs and needs root: running it with sudo");
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            cmd.current_dir(root())
                .arg("daemon")
                .arg("--policies")
                .arg(root().join("policies"))
                .arg("--geoip")
                .arg(geoip_path())
                .arg("--cloud-ranges")
                .arg(cloud_ranges_dir())
                .arg("--state-dir")
                .arg(root().join("target/state"))
                .arg("--log-events")
                // A try-out: leave nothing attached when it stops.
                .arg("--detach-on-exit")
                .args(args);
            run(&mut cmd)
        }
        Cmd::Bench {
            readme,
            faults,
            store,
        } => {
            setup::setup()?;
            build()?;
            bench::bench(readme, faults, store)
        }
        Cmd::Test { filter, suite } => {
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
            // Privileged tests, one at a time: each creates its own cgroups,
            // network namespace and daemon, but they share test addresses.
            run(cargo()
                .env(
                    "EGRESS_MONITOR_BIN",
                    root().join("target/release/egress-monitor"),
                )
                .env("EGRESS_MONITOR_GEOIP", geoip_path())
                .env("EGRESS_MONITOR_CLOUD", cloud_ranges_dir())
                .env("EGRESS_MONITOR_VENV", setup::venv())
                .args(["test", "--release", "-p", "integration-tests"])
                .args(suite.iter().flat_map(|name| ["--test", name.as_str()]))
                // Every suite runs, so one failure does not hide another.
                .args(["--no-fail-fast", "--", "--test-threads=1"])
                .args(&filter))
        }
    }
}
