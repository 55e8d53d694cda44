//! Cgroup v2: finding the mount, walking the tree, resolving selector globs
//! to cgroup ids, and ids back to paths.
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::{
    attribution,
    policy::{CompiledPolicy, Mode},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); egress-monitor needs cgroup v2")]
    NoCgroup2,
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup root {root} is not inside the cgroup2 mount {mount}")]
    OutsideMount { root: PathBuf, mount: PathBuf },
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn find_cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Io {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    parse_mountinfo(&text, "cgroup2").ok_or(CgroupError::NoCgroup2)
}

/// The first mount point of a filesystem type in mountinfo text.
pub fn parse_mountinfo(text: &str, fstype: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fs = right.split_whitespace().next()?;
        let mount = left.split_whitespace().nth(4)?;
        (fs == fstype).then(|| PathBuf::from(unescape_mountinfo(mount)))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// A cgroup's id is the inode number of its directory.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            path: path.into(),
            source,
        })
}

/// `/a/b` for `<mount>/a/b`; `/` for the mount itself.
pub fn relative(mount: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(mount).ok()?;
    Some(format!("/{}", rel.display()))
}

/// A cgroup path as a user gives it, relative to the cgroup2 mount
/// (`/kubepods.slice/x`, `kubepods.slice/x`) or in full under the mount
/// (`/sys/fs/cgroup/kubepods.slice/x`), as the path relative to `mount`.
pub fn given_path(mount: &Path, given: &str) -> Result<String, String> {
    let path = Path::new(given);
    if path.components().any(|c| {
        matches!(
            c,
            std::path::Component::ParentDir | std::path::Component::CurDir
        )
    }) {
        return Err(format!(
            "cgroup {given:?}: a cgroup path has no '.' or '..' components"
        ));
    }
    let rel = match relative(mount, path) {
        Some(rel) => rel,
        None => format!("/{}", given.trim_start_matches('/')),
    };
    match rel.trim_end_matches('/') {
        "" => Ok("/".into()),
        rel => Ok(rel.into()),
    }
}

/// Every cgroup at or below `root`, as (path relative to the mount, id).
/// Cgroups that vanish during the walk are skipped.
pub fn walk(mount: &Path, root: &Path) -> Result<Vec<(String, u64)>, CgroupError> {
    let rel = relative(mount, root).ok_or_else(|| CgroupError::OutsideMount {
        root: root.into(),
        mount: mount.into(),
    })?;
    let mut out = vec![(rel, cgroup_id(root)?)];
    let mut stack = vec![root.to_path_buf()];
    // Only a cgroup removed while the walk runs is skipped: any other
    // error (out of descriptors, a permission taken away) fails the walk,
    // and the caller keeps what it had. A walk that skipped a subtree
    // silently would select nothing there.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let failed = |path: &Path, source: std::io::Error| CgroupError::Io {
        path: path.into(),
        source,
    };
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(failed(&dir, e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if gone(&e) => break,
                Err(e) => return Err(failed(&dir, e)),
            };
            let path = entry.path();
            let ft = match entry.file_type() {
                Ok(ft) => ft,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(failed(&path, e)),
            };
            if !ft.is_dir() {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(failed(&path, e)),
            };
            if let Some(rel) = relative(mount, &path) {
                out.push((rel, meta.ino()));
            }
            stack.push(path);
        }
    }
    Ok(out)
}

/// One selected cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub path: String,
    pub policy: String,
    pub mode: Mode,
}

/// A cgroup two or more policies select: settled for this cgroup alone
/// (see [`resolve`]), reported, and never a reason to stop selecting the
/// others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub path: String,
    /// The policy that judges the cgroup.
    pub winner: String,
    /// The others that select it too, by name.
    pub losers: Vec<String>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cgroup {} is selected by policies {} and {}; {} judges it (enforce before \
             monitor, then an exact path before a glob, then the first name)",
            self.path,
            self.winner,
            self.losers.join(", "),
            self.winner
        )
    }
}

/// Which policy selects which cgroup id, the cgroups selected more than
/// once, and the watched parents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub selected: BTreeMap<u64, Selected>,
    pub conflicts: Vec<Conflict>,
    /// Cgroups under which a selector could match a cgroup made later, and
    /// the strictest mode of the policies that could (see
    /// `monitor_common::Selection::UNCLASSIFIED`): a cgroup made under one is
    /// refused (enforce) or reported (monitor) as unclassified until the
    /// daemon has classified it.
    pub watched: BTreeMap<u64, Mode>,
}

/// The directory a path glob's later matches are made in: its components
/// up to the first with a glob character; for a glob without one (an exact
/// path), its parent.
pub fn literal_dir(glob: &str) -> String {
    let glob = glob.trim_end_matches('/');
    let parts: Vec<&str> = glob.split('/').filter(|c| !c.is_empty()).collect();
    let literal = parts
        .iter()
        .take_while(|c| !c.contains(['*', '?', '[', '{', '\\']))
        .count();
    let keep = if literal == parts.len() {
        literal.saturating_sub(1)
    } else {
        literal
    };
    format!("/{}", parts[..keep].join("/"))
}

/// The watched parents of a policy set over the cgroups of a walk: for a
/// path glob, the deepest cgroup that exists at or above its literal
/// directory (see `literal_dir`); for pod selectors, the top kubepods
/// cgroups; for unit selectors, the system slices. A selected cgroup is
/// never also watched (its subtree is judged by its policy already).
fn watched_parents(
    cgroups: &[(String, u64)],
    policies: &[CompiledPolicy],
    selected: &BTreeMap<u64, Selected>,
) -> BTreeMap<u64, Mode> {
    let by_path: std::collections::HashMap<&str, u64> =
        cgroups.iter().map(|(p, id)| (p.as_str(), *id)).collect();
    let mut out: BTreeMap<u64, Mode> = BTreeMap::new();
    let mut watch = |id: u64, mode: Mode| {
        let m = out.entry(id).or_insert(mode);
        if mode == Mode::Enforce {
            *m = Mode::Enforce;
        }
    };
    let last = |p: &str| p.rsplit('/').next().unwrap_or("").to_string();
    for p in policies {
        for g in &p.cgroup_globs {
            let mut dir = literal_dir(g);
            loop {
                if let Some(id) = by_path.get(dir.as_str()) {
                    watch(*id, p.mode);
                    break;
                }
                if dir == "/" {
                    break;
                }
                dir = match dir.rfind('/') {
                    Some(0) | None => "/".into(),
                    Some(i) => dir[..i].to_string(),
                };
            }
        }
        for (path, id) in cgroups {
            let name = last(path);
            let parent = path
                .rsplit_once('/')
                .map(|(a, _)| last(a))
                .unwrap_or_default();
            let kubepods = name.starts_with("kubepods") && !parent.starts_with("kubepods");
            if (!p.pods.is_empty() && kubepods)
                || (!p.unit_globs.is_empty() && name == "system.slice")
            {
                watch(*id, p.mode);
            }
        }
    }
    out.retain(|id, _| !selected.contains_key(id));
    out
}

/// Which policy selects which cgroup id, by path glob, pod UID or systemd
/// unit (see [`CompiledPolicy::selects`]); nesting is fine (the kernel
/// takes the nearest ancestor). A cgroup that several policies select is
/// settled for itself, deterministically and toward refusing: a policy in
/// enforce mode before one in monitor mode, then one that names the path
/// exactly before a glob, then the first name. Anyone able to make a
/// cgroup two selectors match can choose which of them judges it, never
/// that none does, and every other cgroup's selection is untouched.
pub fn resolve(cgroups: &[(String, u64)], policies: &[CompiledPolicy]) -> Resolution {
    let mut out = Resolution::default();
    let by_identity = policies
        .iter()
        .any(|p| !p.pods.is_empty() || !p.unit_globs.is_empty());
    for (path, id) in cgroups {
        let attr = if by_identity {
            attribution::attribute(path)
        } else {
            attribution::Attribution::default()
        };
        let mut matching: Vec<&CompiledPolicy> =
            policies.iter().filter(|p| p.selects(path, &attr)).collect();
        matching.sort_by_key(|p| {
            (
                p.mode != Mode::Enforce,
                !p.cgroup_globs
                    .iter()
                    .any(|g| g.trim_end_matches('/') == path),
                p.name.clone(),
            )
        });
        matching.dedup_by(|a, b| a.name == b.name);
        let Some(winner) = matching.first() else {
            continue;
        };
        if matching.len() > 1 {
            out.conflicts.push(Conflict {
                path: path.clone(),
                winner: winner.name.clone(),
                losers: matching[1..].iter().map(|p| p.name.clone()).collect(),
            });
        }
        out.selected.insert(
            *id,
            Selected {
                path: path.clone(),
                policy: winner.name.clone(),
                mode: winner.mode,
            },
        );
    }
    out.watched = watched_parents(cgroups, policies, &out.selected);
    out
}

/// Resolves cgroup ids to paths with `open_by_handle_at` (a cgroup's file
/// handle is its id), caching the answers.
pub struct PathResolver {
    mount: PathBuf,
    mount_fd: Option<std::fs::File>,
    cache: HashMap<u64, String>,
}

const FILEID_KERNFS: i32 = 0xfe;
const CACHE_LIMIT: usize = 65_536;

#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

impl PathResolver {
    pub fn new(mount: &Path) -> Self {
        Self {
            mount: mount.into(),
            mount_fd: std::fs::File::open(mount).ok(),
            cache: HashMap::new(),
        }
    }

    /// Teaches the cache what a walk found.
    pub fn learn(&mut self, cgroups: &[(String, u64)]) {
        if self.cache.len() + cgroups.len() > CACHE_LIMIT {
            self.cache.clear();
        }
        for (path, id) in cgroups {
            self.cache.insert(*id, path.clone());
        }
    }

    /// The path relative to the mount, or `None` if the cgroup is gone.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        let p = self.lookup(id)?;
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(id, p.clone());
        Some(p)
    }

    fn lookup(&self, id: u64) -> Option<String> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let mount_fd = self.mount_fd.as_ref()?;
        let mut handle = KernfsHandle {
            handle_bytes: 8,
            handle_type: FILEID_KERNFS,
            id,
        };
        // SAFETY: handle is a valid file_handle with 8 bytes of payload.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_fd.as_raw_fd(),
                (&mut handle as *mut KernfsHandle).cast(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: fd was just returned to us and is owned here.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        relative(&self.mount, &link)
    }
}

/// Opens a cgroup directory for attaching programs.
pub fn open_dir(path: &Path) -> Result<std::fs::File, CgroupError> {
    std::fs::File::open(path).map_err(|source| CgroupError::Io {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    /// A cgroup given relative, without its leading slash, or as a full
    /// cgroupfs path is the same cgroup; a path with '..' is refused.
    #[test]
    fn a_cgroup_is_given_relative_or_in_full() {
        let mount = Path::new("/sys/fs/cgroup");
        for given in [
            "/llm.slice/worker",
            "llm.slice/worker",
            "/llm.slice/worker/",
            "/sys/fs/cgroup/llm.slice/worker",
        ] {
            assert_eq!(
                given_path(mount, given).as_deref(),
                Ok("/llm.slice/worker"),
                "{given}"
            );
        }
        assert_eq!(given_path(mount, "/sys/fs/cgroup").as_deref(), Ok("/"));
        assert_eq!(given_path(mount, "/").as_deref(), Ok("/"));
        let e = given_path(mount, "/llm.slice/../other").unwrap_err();
        assert!(e.contains("no '.' or '..'"), "{e}");
    }

    use super::*;

    /// A walk that cannot read the tree (here: out of descriptors) is an
    /// error, never a tree of the root alone: a rescan that took it would
    /// put a set with nothing selected in force. Run in a child process,
    /// whose descriptor limit is lowered and used up.
    #[test]
    fn a_walk_that_runs_out_of_descriptors_fails() {
        let mount = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(mount.path().join("a/b")).unwrap();
        assert_eq!(walk(mount.path(), mount.path()).unwrap().len(), 3);
        // SAFETY: the child uses up its descriptors, walks and exits
        // without returning into the test harness.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let code = (|| {
                let lim = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                // SAFETY: setrlimit from a live struct.
                if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
                    return 3;
                }
                let mut held = Vec::new();
                while let Ok(f) = std::fs::File::open("/dev/null") {
                    held.push(f);
                }
                match walk(mount.path(), mount.path()) {
                    Err(CgroupError::Io { source, .. })
                        if source.raw_os_error() == Some(libc::EMFILE) =>
                    {
                        0
                    }
                    Err(_) => 2,
                    Ok(_) => 1,
                }
            })();
            // SAFETY: leave the child without running the harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "the child did not exit: {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "1: the walk returned a tree without the cgroups it could not read; 2: another error"
        );
    }

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let text = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw
35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
36 30 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            parse_mountinfo(text, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mountinfo("40 1 0:1 / /with\\040space rw - cgroup2 c rw", "cgroup2"),
            Some(PathBuf::from("/with space"))
        );
        assert_eq!(parse_mountinfo(text, "bpf"), None);
    }

    #[test]
    fn relative_paths() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            relative(m, Path::new("/sys/fs/cgroup")).as_deref(),
            Some("/")
        );
        assert_eq!(
            relative(m, Path::new("/sys/fs/cgroup/a/b")).as_deref(),
            Some("/a/b")
        );
        assert_eq!(relative(m, Path::new("/tmp")), None);
    }

    fn policy(name: &str, mode: &str, selector: &str) -> CompiledPolicy {
        let text = format!(
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {{name: {name}}}\nspec:\n  mode: {mode}\n  selector:\n{selector}\n  allow:\n    countries: [DE]\n"
        );
        crate::policy::compile_text(Path::new("t.yaml"), &text)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn literal_dirs_of_globs() {
        assert_eq!(literal_dir("/a/b/sel"), "/a/b");
        assert_eq!(literal_dir("/a/b/sel/"), "/a/b");
        assert_eq!(literal_dir("/kubepods.slice/*/pod*"), "/kubepods.slice");
        assert_eq!(literal_dir("/a/**"), "/a");
        assert_eq!(literal_dir("/x-[ab]/c"), "/");
        assert_eq!(literal_dir("/top"), "/");
        assert_eq!(literal_dir("/"), "/");
    }

    /// A conflict is settled for its cgroup alone; watched parents are the
    /// deepest existing cgroups at or above each glob's literal directory,
    /// in the strictest mode that watches them, never a selected cgroup.
    #[test]
    fn conflicts_and_watched_parents() {
        let cgroups: Vec<(String, u64)> = [
            ("/", 1),
            ("/t", 2),
            ("/t/sel", 3),
            ("/t/other", 4),
            ("/kubepods.slice", 5),
            ("/kubepods.slice/kubepods-besteffort.slice", 6),
        ]
        .iter()
        .map(|(p, i)| (p.to_string(), *i))
        .collect();
        let a = policy("a", "monitor", "    cgroupPaths: [\"/t/sel\"]");
        let b = policy("b", "enforce", "    cgroupPaths: [\"/t/*\"]");
        let c = policy("c", "monitor", "    cgroupPaths: [\"/t/deep/er/*\"]");
        let pods = policy(
            "p",
            "enforce",
            "    pods: [\"0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0\"]",
        );
        let r = resolve(&cgroups, &[a.clone(), b.clone(), c, pods]);
        // /t/sel: b (enforce) before a (monitor, although exact).
        assert_eq!(r.selected[&3].policy, "b");
        assert_eq!(r.selected[&4].policy, "b");
        assert_eq!(
            r.conflicts,
            [Conflict {
                path: "/t/sel".into(),
                winner: "b".into(),
                losers: vec!["a".into()],
            }]
        );
        // /t: watched by a, b (literal dir) and c (deepest existing
        // ancestor of /t/deep/er), enforce wins; /kubepods.slice by p.
        assert_eq!(
            r.watched.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
            [(2, Mode::Enforce), (5, Mode::Enforce)]
        );
        // Same mode: an exact path before a glob.
        let b_monitor = policy("b", "monitor", "    cgroupPaths: [\"/t/*\"]");
        let r = resolve(&cgroups, &[b_monitor, a]);
        assert_eq!(r.selected[&3].policy, "a");
    }
}
