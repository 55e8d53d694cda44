//! Reading a bundle's archive into its files, refusing what a bundle never
//! holds.
use std::{io::Read, path::Path};

use super::{
    bundle::Files,
    verify::{broken, Broken},
};

/// At most this many files in a bundle (one per policy version, and a
/// dozen more).
pub const MAX_ENTRIES: usize = 100_000;

/// Reads a bundle's files (tar; plain names below `evidence/`). Memory
/// stays within the archive's own size: an entry that claims more than the
/// archive holds is refused before it is read.
pub fn read_tar(path: &Path) -> Result<Files, Broken> {
    let mut f =
        std::fs::File::open(path).map_err(|e| broken(path.display().to_string(), e.to_string()))?;
    let archive_bytes = f
        .metadata()
        .map_err(|e| broken(path.display().to_string(), e.to_string()))?
        .len();
    let mut head = Vec::with_capacity(6);
    (&mut f)
        .take(6)
        .read_to_end(&mut head)
        .map_err(|e| broken(path.display().to_string(), e.to_string()))?;
    if let Some((what, undo)) = compressed(&head) {
        return Err(broken(
            path.display().to_string(),
            format!("not a tar ({what}?): a bundle is a plain tar; decompress it first ({undo})"),
        ));
    }
    std::io::Seek::rewind(&mut f).map_err(|e| broken(path.display().to_string(), e.to_string()))?;
    let mut archive = tar::Archive::new(f);
    let mut files = Files::new();
    let entries = archive.entries().map_err(|e| {
        broken(
            path.display().to_string(),
            format!("not a tar archive: {e}"),
        )
    })?;
    for (n, entry) in entries.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(broken(
                path.display().to_string(),
                format!("more than {MAX_ENTRIES} entries: not a bundle"),
            ));
        }
        let mut entry = entry
            .map_err(|e| broken(path.display().to_string(), format!("damaged archive: {e}")))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| broken(path.display().to_string(), format!("bad entry name: {e}")))?;
        match entry.header().entry_type() {
            tar::EntryType::Regular => {}
            // A bundle unpacked and packed again by GNU tar gains entries
            // for its directories (and maybe a global header): they hold
            // no data and are not tampering, as long as they are where a
            // bundle's files are.
            tar::EntryType::Directory => {
                let dir = name.trim_end_matches('/');
                let plain = dir == "evidence"
                    || dir.strip_prefix("evidence/").is_some_and(|rel| {
                        !rel.split('/')
                            .any(|c| c.is_empty() || c == "." || c == "..")
                    });
                if !plain || entry.header().size().unwrap_or(1) != 0 {
                    return Err(broken(name, "a directory entry outside evidence/"));
                }
                continue;
            }
            tar::EntryType::XGlobalHeader => continue,
            _ => return Err(broken(name, "not a regular file")),
        }
        let Some(rel) = name.strip_prefix("evidence/") else {
            return Err(broken(name, "outside evidence/"));
        };
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || rel.contains('\\')
        {
            return Err(broken(name, "not a plain file name below evidence/"));
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > archive_bytes {
            return Err(broken(
                name,
                format!("claims {size} bytes, more than the whole archive holds ({archive_bytes})"),
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| broken(name.clone(), format!("unreadable: {e}")))?;
        if files.insert(rel.to_string(), data).is_some() {
            return Err(broken(name, "appears twice in the archive"));
        }
    }
    Ok(files)
}

/// The compression whose magic number starts `head`, and the command that
/// undoes it: a bundle sent on compressed is the usual way to get one.
fn compressed(head: &[u8]) -> Option<(&'static str, &'static str)> {
    [
        (&b"\x1f\x8b"[..], "gzip", "gunzip"),
        (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
        (b"\xfd7zXZ\x00", "xz", "unxz"),
        (b"BZh", "bzip2", "bunzip2"),
    ]
    .into_iter()
    .find(|(magic, _, _)| head.starts_with(magic))
    .map(|(_, what, undo)| (what, undo))
}
