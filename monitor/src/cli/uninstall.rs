use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::Args;

use crate::{daemon, kernel};

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// The daemon's pin directory in bpffs [default: the one found in the
    /// lock files of /run/egress-monitor, /sys/fs/bpf/egress-monitor or
    /// elsewhere in /sys/fs/bpf; several found are listed, none removed].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// The daemon's socket, to check that it is not running [default: the
    /// one its lock file records, else
    /// /var/lib/egress-monitor/egress-monitor.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Uninstall even though a daemon answers on the socket.
    #[arg(long)]
    pub force: bool,
}

/// The pin directory to remove: the one given, or the one found; none
/// found is Ok(None), several an error listing them.
fn pick(args: &UninstallArgs) -> anyhow::Result<Option<(PathBuf, Option<PathBuf>)>> {
    let found = kernel::pins::installed(daemon::default_pin_dir());
    let socket_of = |h: &Option<kernel::pins::Holder>| {
        h.as_ref()
            .map(|h| h.socket.clone())
            .filter(|s| !s.as_os_str().is_empty())
    };
    if let Some(dir) = &args.pin_dir {
        if dir.exists() {
            let normal = kernel::pins::normalize(dir);
            let socket = found
                .iter()
                .find(|(d, _)| *d == normal)
                .and_then(|(_, h)| socket_of(h));
            return Ok(Some((dir.clone(), socket)));
        }
        // Never "nothing to uninstall" while programs of ours are pinned
        // elsewhere.
        if found.is_empty() {
            return Ok(None);
        }
        anyhow::bail!(
            "{} does not exist, but programs of egress-monitor are pinned in {}: give that with --pin-dir",
            dir.display(),
            list(&found)
        );
    }
    match found.len() {
        0 => Ok(None),
        1 => {
            let (dir, holder) = found.into_iter().next().unwrap_or_default();
            let socket = socket_of(&holder);
            println!("found the pins in {}", dir.display());
            Ok(Some((dir, socket)))
        }
        n => anyhow::bail!(
            "{n} pin directories of egress-monitor found: {}; say which with --pin-dir (nothing removed)",
            list(&found)
        ),
    }
}

fn list(found: &[(PathBuf, Option<kernel::pins::Holder>)]) -> String {
    found
        .iter()
        .map(|(d, _)| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Detaches the programs and removes every pin: enforcement ends.
pub fn run(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    super::pinned::need_root("uninstall")?;
    let Some((pin_dir, recorded_socket)) = pick(&args)? else {
        println!(
            "nothing to uninstall: no programs of egress-monitor are pinned ({})",
            match &args.pin_dir {
                Some(d) => format!("{} does not exist", d.display()),
                None => format!(
                    "looked in the lock files in {}, {} and {}",
                    kernel::pins::LOCK_DIR,
                    daemon::default_pin_dir().display(),
                    kernel::pins::BPFFS
                ),
            }
        );
        return Ok(ExitCode::SUCCESS);
    };
    let socket = args
        .socket
        .clone()
        .or(recorded_socket)
        .unwrap_or_else(|| PathBuf::from(crate::api::client::DEFAULT_SOCKET));
    // A running daemon holds its pin directory's lock, whatever its socket;
    // we hold it ourselves until the pins are gone, so no daemon starts on
    // them meanwhile.
    let record = kernel::pins::Holder {
        pin_dir: pin_dir.clone(),
        ..Default::default()
    };
    let _lock = match kernel::pins::PinLock::acquire(&record) {
        Ok(lock) => Some(lock),
        Err(kernel::KernelError::Held(holder)) if !args.force => anyhow::bail!(
            "a running daemon (pid {}, socket {}) holds {}: stop it first; with --force the pins go, and that daemon attaches its programs again within a rescan",
            holder.pid,
            holder.socket.display(),
            pin_dir.display()
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
    if !args.force && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        anyhow::bail!(
            "a daemon answers on {}: stop it first (it would keep running without programs), or pass --force",
            socket.display()
        );
    }
    let removed = remove(&pin_dir)?;
    println!(
        "uninstalled: {removed} pins removed, programs detached, {} gone",
        pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes every build's pins under `pin_dir`, then the directory.
fn remove(pin_dir: &Path) -> anyhow::Result<usize> {
    let mut removed = 0;
    for entry in
        std::fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))?
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
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(removed)
}
