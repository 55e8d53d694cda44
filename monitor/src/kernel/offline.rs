//! What a pin directory holds when no daemon runs: which programs are
//! pinned and still attached, to which cgroup, and the policy set the
//! kernel judges by (its generation, and whether any policy enforces).
//! Read from the pins alone, for `status` and `uninstall` without a daemon;
//! nothing is changed.
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData};
use monitor_common::{names, Config, Meta, Selection};

use super::pins::{self, Holder};

/// One build's pins in a pin directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PinnedBuild {
    pub build: String,
    pub dir: PathBuf,
    /// Hooks with a pinned link.
    pub pinned: Vec<&'static str>,
    /// Of those, the ones the kernel runs now.
    pub attached: Vec<&'static str>,
    pub cgroup_root_id: u64,
    /// The cgroup of that id, when found.
    pub cgroup_root: Option<PathBuf>,
    pub generation: u32,
    /// Cgroups the policy set in force selects, by mode.
    pub enforced_cgroups: usize,
    pub monitored_cgroups: usize,
    /// What could not be read (the maps of an unknown build, ...).
    pub unreadable: Vec<String>,
}

impl PinnedBuild {
    /// What the kernel does with it now, in a word.
    pub fn verdict(&self) -> &'static str {
        if self.attached.is_empty() {
            "not attached (nothing is judged)"
        } else if self.enforced_cgroups > 0 {
            "enforcing"
        } else if self.monitored_cgroups > 0 {
            "monitoring only (no policy enforces)"
        } else {
            "attached, no cgroup selected"
        }
    }
}

fn map(dir: &Path, name: &'static str) -> Result<MapData, String> {
    MapData::from_pin(dir.join(name)).map_err(|e| format!("map {name}: {e}"))
}

fn config(dir: &Path) -> Result<(Config, Meta), String> {
    let config: Array<MapData, Config> =
        Array::try_from(Map::Array(map(dir, names::CONFIG)?)).map_err(|e| e.to_string())?;
    let meta: Array<MapData, Meta> =
        Array::try_from(Map::Array(map(dir, names::META)?)).map_err(|e| e.to_string())?;
    Ok((
        config
            .get(&0, 0)
            .map_err(|e| format!("map {}: {e}", names::CONFIG))?,
        meta.get(&0, 0)
            .map_err(|e| format!("map {}: {e}", names::META))?,
    ))
}

/// (enforced, monitored) cgroups in the selection slot in force.
fn selections(dir: &Path, slot: u32) -> Result<(usize, usize), String> {
    let name = names::SELECT[slot as usize & 1];
    let select: HashMap<MapData, u64, Selection> =
        HashMap::try_from(Map::HashMap(map(dir, name)?)).map_err(|e| e.to_string())?;
    let (mut enforced, mut monitored) = (0, 0);
    for item in select.iter() {
        let (_, s) = item.map_err(|e| format!("map {name}: {e}"))?;
        if s.mode == monitor_common::mode::ENFORCE {
            enforced += 1;
        } else {
            monitored += 1;
        }
    }
    Ok((enforced, monitored))
}

/// Cgroup directories looked at, at most, to name the cgroup of an id.
const CGROUP_WALK: usize = 200_000;

/// The cgroup whose id is `id`: the one a lock file recorded, else found
/// by a (bounded) walk of the cgroup2 tree.
fn cgroup_of(id: u64, recorded: Option<&Path>) -> Option<PathBuf> {
    if id == 0 {
        return None;
    }
    let is = |p: &Path| crate::cgroups::cgroup_id(p).is_ok_and(|i| i == id);
    if let Some(p) = recorded.filter(|p| is(p)) {
        return Some(p.to_path_buf());
    }
    let mount = crate::cgroups::find_cgroup2_mount().ok()?;
    let mut stack = vec![mount];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        if is(&d) {
            return Some(d);
        }
        seen += 1;
        if seen > CGROUP_WALK {
            return None;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// Every build pinned under `pin_dir` (one, but for an upgrade a killed
/// daemon left half done). An unreadable directory is an error naming it
/// (bpffs pin directories are 0700: root only).
pub fn read(pin_dir: &Path, holder: Option<&Holder>) -> anyhow::Result<Vec<PinnedBuild>> {
    use anyhow::Context;
    let entries = std::fs::read_dir(pin_dir)
        .with_context(|| format!("reading the pin directory {}", pin_dir.display()))?;
    let mut builds = Vec::new();
    for e in entries {
        let dir = e
            .with_context(|| format!("reading the pin directory {}", pin_dir.display()))?
            .path();
        if !dir.is_dir() {
            continue;
        }
        let pinned: Vec<&'static str> = names::ALL_PROGRAMS
            .iter()
            .copied()
            .filter(|h| pins::link_pin(&dir, h).exists())
            .collect();
        let mut b = PinnedBuild {
            build: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: dir.clone(),
            pinned,
            attached: Vec::new(),
            cgroup_root_id: 0,
            cgroup_root: None,
            generation: 0,
            enforced_cgroups: 0,
            monitored_cgroups: 0,
            unreadable: Vec::new(),
        };
        match config(&dir) {
            Ok((config, meta)) => {
                let in_force = config.unpack();
                b.generation = in_force.generation;
                b.cgroup_root_id = meta.cgroup_root_id;
                match selections(&dir, in_force.policy_slot) {
                    Ok((enforced, monitored)) => {
                        b.enforced_cgroups = enforced;
                        b.monitored_cgroups = monitored;
                    }
                    Err(e) => b.unreadable.push(e),
                }
            }
            Err(e) => b.unreadable.push(e),
        }
        b.cgroup_root = cgroup_of(b.cgroup_root_id, holder.map(|h| h.cgroup_root.as_path()));
        if let Some(root) = &b.cgroup_root {
            b.attached = b
                .pinned
                .iter()
                .copied()
                .filter(|h| pins::attached_now(&dir, root, h).is_some())
                .collect();
        }
        builds.push(b);
    }
    Ok(builds)
}
