//! Reading a bundle's archive into its files, refusing what a bundle never
//! holds.
use std::{io::Read, path::Path};

use super::{
    bundle::Files,
    verify::{broken, Broken},
};

/// Reads a bundle's files (tar; names below `evidence/`).
pub fn read_tar(path: &Path) -> Result<Files, Broken> {
    let f =
        std::fs::File::open(path).map_err(|e| broken(path.display().to_string(), e.to_string()))?;
    let mut archive = tar::Archive::new(f);
    let mut files = Files::new();
    let entries = archive.entries().map_err(|e| {
        broken(
            path.display().to_string(),
            format!("not a tar archive: {e}"),
        )
    })?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| broken(path.display().to_string(), format!("damaged archive: {e}")))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| broken(path.display().to_string(), format!("bad entry name: {e}")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(broken(name, "not a regular file"));
        }
        let Some(rel) = name.strip_prefix("evidence/") else {
            return Err(broken(name, "outside evidence/"));
        };
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| broken(name.clone(), format!("unreadable: {e}")))?;
        if files.insert(rel.to_string(), data).is_some() {
            return Err(broken(name, "appears twice in the archive"));
        }
    }
    Ok(files)
}
