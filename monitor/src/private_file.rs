//! Files only their owner (and, where asked, a group) may read: made with
//! their mode from the first byte, whatever the umask, never through a
//! symlink. Used by the store, the policy ids and the state directory.
use std::{os::unix::fs::OpenOptionsExt, path::Path};

/// A new file at `path` with `mode`: never one that exists, and never
/// through a symlink (O_EXCL|O_NOFOLLOW), so a name someone else made
/// first cannot make us write into another file.
pub fn create_new(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates an empty file with `mode` when there is none; an existing file
/// is left as it is.
pub fn create(path: &Path, mode: u32) -> std::io::Result<()> {
    match create_new(path, mode) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path`, made 0600.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(bytes)
}
