//! The command line: one binary, the daemon and its client commands.
mod daemon;
mod policy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "egress-monitor",
    version,
    about = "eBPF egress monitor and enforcer: judges every outbound connection of selected cgroups against region policies"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the programs and policies and run (needs root).
    Daemon(daemon::DaemonArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

pub fn run(cli: Cli) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Daemon(args) => daemon::run(args),
        Command::Policy(cmd) => policy::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
