use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;

use crate::{daemon, kernel};

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The daemon's pin directory in bpffs.
    #[arg(long, default_value = daemon::default_pin_dir().as_os_str())]
    pub pin_dir: PathBuf,
    /// The daemon's socket, to check that it is not running.
    #[arg(long, default_value = "/var/lib/egress-monitor/egress-monitor.sock")]
    pub socket: PathBuf,
    /// Uninstall even though a daemon answers on the socket.
    #[arg(long)]
    pub force: bool,
}

/// Detaches the programs and removes every pin: enforcement ends.
pub fn run(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    // A running daemon holds its pin directory's lock, whatever its socket;
    // we hold it ourselves until the pins are gone, so no daemon starts on
    // them meanwhile.
    let _lock = match kernel::pins::PinLock::acquire(&args.pin_dir, std::path::Path::new("")) {
        Ok(lock) => Some(lock),
        Err(kernel::KernelError::Held(holder)) if !args.force => anyhow::bail!(
            "a running daemon (pid {}, socket {}) holds {}: stop it first; with --force the pins go, and that daemon attaches its programs again within a rescan",
            holder.pid,
            holder.socket.display(),
            args.pin_dir.display()
        ),
        Err(kernel::KernelError::Held(holder)) => {
            eprintln!(
                "warning: removing the pins of a running daemon (pid {}); it will attach its programs again",
                holder.pid
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    if !args.force && std::os::unix::net::UnixStream::connect(&args.socket).is_ok() {
        anyhow::bail!(
            "a daemon answers on {}: stop it first (it would keep running without programs), or pass --force",
            args.socket.display()
        );
    }
    if !args.pin_dir.exists() {
        println!(
            "nothing to uninstall: {} does not exist",
            args.pin_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(&args.pin_dir)
        .with_context(|| format!("reading {}", args.pin_dir.display()))?
    {
        let dir = entry?.path();
        if dir.is_dir() {
            let pins = kernel::remove_pins(&dir)?;
            for p in &pins {
                println!("removed {p}");
            }
            removed += pins.len();
        }
    }
    std::fs::remove_dir(&args.pin_dir)
        .with_context(|| format!("removing {}", args.pin_dir.display()))?;
    println!(
        "uninstalled: {removed} pins removed, programs detached, {} gone",
        args.pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
