//! Who may read what the daemon keeps. The state directory holds every
//! destination, process and DNS name the workloads used (the store), the
//! node key and the policy ids: it is private to root (0700, files 0600),
//! or shared read-only with the socket's viewers (`--socket-group`: the
//! directory 0750 and the store 0640, group = that group), who may read
//! the same history over the socket anyway. The node key stays 0600
//! whatever the group. An install made before this (0755, 0644) is
//! tightened at start, and the daemon says so.
use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The daemon's state directory unless told otherwise.
pub fn default_dir() -> &'static Path {
    Path::new("/var/lib/egress-monitor")
}

/// Who may read the state directory besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// `--socket-group`.
    pub group: Option<u32>,
}

/// One file or directory whose mode was tightened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    pub was: u32,
    pub now: u32,
}

impl std::fmt::Display for Tightened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:04o} -> {:04o}",
            self.path.display(),
            self.was,
            self.now
        )
    }
}

impl Access {
    pub fn dir_mode(self) -> u32 {
        if self.group.is_some() {
            0o750
        } else {
            0o700
        }
    }

    /// The store and the other files viewers may read.
    pub fn file_mode(self) -> u32 {
        if self.group.is_some() {
            0o640
        } else {
            0o600
        }
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> anyhow::Error {
    let msg = format!("{what} {}", path.display());
    move |e| anyhow::Error::new(e).context(msg)
}

/// Sets `path` to at most `mode` (never loosens) and, with a group, to
/// that group; returns what changed.
fn restrict(path: &Path, mode: u32, group: Option<u32>) -> anyhow::Result<Option<Tightened>> {
    let meta = std::fs::symlink_metadata(path).map_err(io("reading the mode of", path))?;
    if let Some(gid) = group {
        if meta.gid() != gid {
            std::os::unix::fs::lchown(path, None, Some(gid))
                .map_err(io(&format!("chown to group {gid}"), path))?;
        }
    }
    let was = meta.permissions().mode() & 0o7777;
    let now = was & mode;
    if now == was {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(now))
        .map_err(io(&format!("chmod {now:04o}"), path))?;
    Ok(Some(Tightened {
        path: path.into(),
        was,
        now,
    }))
}

/// Creates the state directory private (or tightens the one there), and
/// every file in it; makes the store's file, so SQLite's WAL and shared
/// memory files, which take the database's mode and owner, are born with
/// it. The node key is left to `evidence::key` (a key others could read
/// is refused there, not quietly tightened: it may have been copied).
/// The API socket is left to the API (0660). Returns what was tightened.
pub fn secure(dir: &Path, access: Access) -> anyhow::Result<Vec<Tightened>> {
    std::fs::create_dir_all(dir).map_err(io("creating state directory", dir))?;
    let mut out = Vec::new();
    out.extend(restrict(dir, access.dir_mode(), access.group)?);
    let store = crate::store::path_in(dir);
    crate::private_file::create(&store, access.file_mode()).map_err(io("creating", &store))?;
    let entries = std::fs::read_dir(dir).map_err(io("reading state directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io("reading state directory", dir))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(io("reading the type of", &path))?;
        let name = entry.file_name();
        if name == std::ffi::OsStr::new(crate::evidence::key::FILE_NAME) {
            continue;
        }
        let mode = if kind.is_dir() {
            access.dir_mode()
        } else if kind.is_file() {
            access.file_mode()
        } else {
            // The socket (the API sets it), symlinks (never followed).
            continue;
        };
        out.extend(restrict(&path, mode, access.group)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// An install made with the old modes (0755, 0644) is tightened, the
    /// node key left alone, and a second pass finds nothing to do.
    #[test]
    fn an_open_state_directory_is_tightened_and_said() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = crate::store::path_in(&dir);
        for f in [
            &store,
            &dir.join("store.db-wal"),
            &dir.join("policy-ids.json"),
        ] {
            std::fs::write(f, b"").unwrap();
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let key = crate::evidence::key::path_in(&dir);
        std::fs::write(&key, b"").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let done = secure(&dir, Access { group: None }).unwrap();
        assert_eq!(done.len(), 4, "{done:?}");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&store), 0o600);
        assert_eq!(mode(&dir.join("store.db-wal")), 0o600);
        assert_eq!(mode(&key), 0o600);
        assert!(
            done[0].to_string().ends_with("state 0755 -> 0700"),
            "{}",
            done[0]
        );
        assert!(secure(&dir, Access { group: None }).unwrap().is_empty());
    }

    /// A first start makes the directory 0700 and the store 0600 before
    /// SQLite opens it; with a viewer group, 0750 and 0640.
    #[test]
    fn a_new_state_directory_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new");
        secure(&dir, Access { group: None }).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&crate::store::path_in(&dir)), 0o600);
        let gid = std::fs::metadata(&dir).unwrap().gid();
        let shared = tmp.path().join("shared");
        secure(&shared, Access { group: Some(gid) }).unwrap();
        assert_eq!(mode(&shared), 0o750);
        assert_eq!(mode(&crate::store::path_in(&shared)), 0o640);
    }
}
