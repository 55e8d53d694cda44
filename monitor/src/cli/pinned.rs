//! `status` when no daemon answers: what the kernel still holds, read from
//! the pins (is enforcement on right now, without bpftool).
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use super::output::Format;
use crate::{
    api::client::{socket_path, ConnectArgs},
    kernel::{
        offline::{self, PinnedBuild},
        pins::{self, Holder},
    },
};

/// `status` exit status: no daemon, but programs of ours are pinned.
pub const EXIT_PINNED: u8 = 3;
/// `status` exit status: no daemon and nothing of ours pinned.
pub const EXIT_NOTHING: u8 = 4;

/// Refuses to answer from the pins without root: pin directories are
/// 0700, so anyone else would find none and be told nothing is installed.
pub fn need_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "{what} reads the pin directories in bpffs, which only root can (they are 0700): run it as root"
        );
    }
    Ok(())
}

/// Whether a daemon may answer: a remote server, or a unix socket that
/// takes a connection. No socket file, or one nobody listens on, is no
/// daemon; any other failure (no permission, ...) is left to the client's
/// own connect to report.
pub fn daemon_reachable(connect: &ConnectArgs) -> anyhow::Result<bool> {
    if connect.server.is_some() {
        return Ok(true);
    }
    let path = socket_path(connect.socket.as_deref())?;
    match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => Ok(true),
        Err(e) => Ok(!matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        )),
    }
}

/// The pin directories to look at: the one given (with the record of its
/// daemon, if a lock file has one), or every one found.
pub fn pin_dirs(given: Option<&Path>) -> Vec<(PathBuf, Option<Holder>)> {
    let found = pins::installed(crate::daemon::default_pin_dir());
    match given {
        Some(dir) => {
            let dir = pins::normalize(dir);
            let holder = found
                .into_iter()
                .find(|(d, _)| *d == dir)
                .and_then(|(_, h)| h);
            vec![(dir, holder)]
        }
        None => found,
    }
}

/// The last policy set the store recorded: `eu-only 1a2b3c4d5e6f, ...`.
/// The store records a set when its content changes, so a restart that
/// put the same set in force again (a new generation in the kernel) is
/// said: `recorded at generation 1`.
fn policy_set(state_dir: &Path, generation: u32) -> String {
    let store = match crate::store::Store::open_read(&crate::store::path_in(state_dir)) {
        Ok(s) => s,
        Err(e) => return format!("policies not known: {e}"),
    };
    match store.last_policy_set_members() {
        Ok(Some((g, members))) => {
            let names = members
                .iter()
                .map(|(name, sha)| format!("{name} {}", sha.get(..12).unwrap_or(sha)))
                .collect::<Vec<_>>()
                .join(", ");
            if g == generation {
                names
            } else {
                format!("{names}, recorded at generation {g}")
            }
        }
        Ok(None) => format!("no policy set recorded in {}", state_dir.display()),
        Err(e) => format!("policies not known: {e}"),
    }
}

/// One pin directory's builds, as `status` says them.
#[derive(serde::Serialize)]
struct PinDir {
    dir: PathBuf,
    /// The daemon of the lock file, gone (killed) or never recorded.
    last_daemon_pid: Option<u32>,
    state_dir: PathBuf,
    builds: Vec<Build>,
}

#[derive(serde::Serialize)]
struct Build {
    #[serde(flatten)]
    pinned: PinnedBuild,
    verdict: &'static str,
    policies: String,
}

fn line(dir: &Path, b: &Build) -> String {
    let p = &b.pinned;
    let root = match &p.cgroup_root {
        Some(r) => r.display().to_string(),
        None if p.cgroup_root_id == 0 => "an unknown cgroup".into(),
        None => format!("cgroup id {} (not found)", p.cgroup_root_id),
    };
    let mut s = format!(
        "no daemon; {} programs of build {} pinned in {}, {} attached to {root}, last policy set generation {} ({}), {}",
        p.pinned.len(),
        p.build,
        dir.display(),
        p.attached.len(),
        p.generation,
        b.policies,
        b.verdict
    );
    for u in &p.unreadable {
        s.push_str(&format!("\n  unreadable: {u}"));
    }
    s
}

/// `status` without a daemon: every pin directory's programs and the
/// policy set the kernel judges by. Exit 3 when anything is pinned, 4
/// when nothing is.
pub fn status(given: Option<&Path>, output: Format) -> anyhow::Result<ExitCode> {
    need_root("status without a daemon")?;
    let mut dirs = Vec::new();
    for (dir, holder) in pin_dirs(given) {
        if !dir.exists() {
            continue;
        }
        let state_dir = holder
            .as_ref()
            .map(|h| h.state_dir.clone())
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| crate::statedir::default_dir().to_path_buf());
        let builds = offline::read(&dir, holder.as_ref())?
            .into_iter()
            .map(|pinned| Build {
                verdict: pinned.verdict(),
                policies: policy_set(&state_dir, pinned.generation),
                pinned,
            })
            .collect();
        dirs.push(PinDir {
            dir,
            last_daemon_pid: holder.map(|h| h.pid),
            state_dir,
            builds,
        });
    }
    let pinned = dirs.iter().any(|d| !d.builds.is_empty());
    if output == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"daemon": false, "pin_dirs": dirs}))?
        );
    } else if !pinned {
        println!(
            "no daemon; nothing installed: no programs of egress-monitor are pinned ({})",
            match given {
                Some(d) => format!("{} holds none", d.display()),
                None => format!(
                    "looked in the lock files in {}, {} and {}",
                    pins::LOCK_DIR,
                    crate::daemon::default_pin_dir().display(),
                    pins::BPFFS
                ),
            }
        );
    } else {
        for d in &dirs {
            for b in &d.builds {
                println!("{}", line(&d.dir, b));
            }
            println!(
                "  `{}` removes them",
                crate::daemon::uninstall_command(&d.dir)
            );
        }
    }
    Ok(ExitCode::from(if pinned {
        EXIT_PINNED
    } else {
        EXIT_NOTHING
    }))
}
