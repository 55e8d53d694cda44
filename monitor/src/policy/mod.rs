//! Policies: the YAML model, compiling, loading a directory, watching it.
pub mod baseline;
pub mod compile;
pub mod explain;
pub mod lint;
pub mod model;
pub mod simulate;
pub mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

pub use compile::{CompiledPolicy, DomainPattern};
pub use model::{Mode, PolicyError};

/// Compiles every document of a policy text that came from elsewhere than
/// a file (an API request, a test): a baseline it names is not read (the
/// daemon reads no file a request names), so `baseline` is `None`.
pub fn compile_text(file: &Path, text: &str) -> Result<Vec<CompiledPolicy>, PolicyError> {
    first_error(compile_documents(file, text, Baselines::NotRead))
}

fn first_error(
    (policies, mut errors): (Vec<CompiledPolicy>, Vec<PolicyError>),
) -> Result<Vec<CompiledPolicy>, PolicyError> {
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// Compiles a policy text the store recorded in force (the fallback for a
/// file rejected at a start): a baseline it names that cannot be read now
/// leaves it without drift alerts, said in the log, not without its rules.
pub fn compile_recorded(file: &Path, text: &str) -> Result<Vec<CompiledPolicy>, PolicyError> {
    first_error(compile_documents(file, text, Baselines::IfReadable))
}

/// What a baseline that cannot be read or checked does to its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Baselines {
    /// Fails it, like any error of the file.
    Required,
    /// Leaves it without one (warned).
    IfReadable,
    /// Not read at all.
    NotRead,
}

/// Compiles every document of one policy text: the policies that compiled,
/// and every document's error, not the first only.
fn compile_documents(
    file: &Path,
    text: &str,
    baselines: Baselines,
) -> (Vec<CompiledPolicy>, Vec<PolicyError>) {
    let docs = model::documents(text);
    if docs.is_empty() {
        let empty = PolicyError {
            file: file.display().to_string(),
            line: 1,
            reason: "no policy in file (empty or only comments)".into(),
        };
        return (Vec::new(), vec![empty]);
    }
    let is_baseline = |d: &model::Document| {
        d.text
            .lines()
            .any(|l| l.trim_end() == format!("kind: {}", baseline::KIND))
    };
    // A baseline kept beside the policies that refer to it is not a policy.
    if docs.iter().all(is_baseline) {
        return (Vec::new(), Vec::new());
    }
    let mut out = Vec::with_capacity(docs.len());
    let mut errors = Vec::new();
    for doc in &docs {
        if is_baseline(doc) {
            errors.push(PolicyError {
                file: file.display().to_string(),
                line: doc.first_line,
                reason: format!(
                    "a {} among policies: a baseline is a file of its own, which a policy names in spec.baseline",
                    baseline::KIND
                ),
            });
            continue;
        }
        match model::parse_document(file, doc)
            .and_then(|parsed| compile::compile(file, doc, parsed))
            .and_then(|mut p| match baselines {
                Baselines::NotRead => Ok(p),
                Baselines::Required => read_baseline(file, doc, &mut p).map(|()| p),
                Baselines::IfReadable => {
                    if let Err(e) = read_baseline(file, doc, &mut p) {
                        log::warn!(
                            "policy {} keeps its rules without its baseline: {e}",
                            p.name
                        );
                    }
                    Ok(p)
                }
            }) {
            Ok(p) => out.push(p),
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = check_unique_names(&out) {
        errors.push(e);
    }
    (out, errors)
}

/// Reads and checks the baseline `p` names (`spec.baseline`): relative to
/// the directory of the policy's file, and inside it (a link out of it is
/// refused unread, as for policy files).
fn read_baseline(
    file: &Path,
    doc: &model::Document,
    p: &mut CompiledPolicy,
) -> Result<(), PolicyError> {
    let Some(given) = p.source.spec.baseline.clone() else {
        return Ok(());
    };
    let at = compile::Locator { file, doc };
    let refuse = |why: String| at.err("baseline", Some(&given), format!("spec.baseline: {why}"));
    if given.trim().is_empty() || Path::new(&given).is_absolute() {
        return Err(refuse(format!(
            "{given:?} is not a file relative to the policy's directory (write it as \
             `baseline: NAME.yaml`, beside the policy)"
        )));
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let path = dir.join(&given);
    let text = read_policy(&path, Some(dir))
        .map_err(|e| refuse(format!("{}: {}", path.display(), e.reason)))?;
    let parsed = baseline::parse(&path, &text)?;
    if parsed.workloads.is_empty() {
        return Err(refuse(format!(
            "{} lists no workload, so every destination would be drift; record one with \
             `egress-monitor baseline record`",
            path.display()
        )));
    }
    p.baseline = Some(compile::BaselineText {
        given,
        path: path.display().to_string(),
        name: parsed.name,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
        text: text.into(),
    });
    Ok(())
}

/// The daemon's judgement of one policy file, shared by its reloads and
/// `policy check`: read (inside `dir` when it comes from the policy
/// directory, see [`compile_dir_file`]), every document compiled, and
/// every cloud-region pattern checked against the regions known (a typo
/// that would fail open in `deny` is an error, see `lint::cloud_patterns`).
/// Every error of the file, in document order, not the first only.
pub fn judge_file(
    dir: Option<&Path>,
    file: &Path,
    cloud: &crate::cloud::CloudRanges,
) -> Result<Vec<CompiledPolicy>, Vec<PolicyError>> {
    let text = read_policy(file, dir).map_err(|e| vec![e])?;
    let (policies, mut errors) = compile_documents(file, &text, Baselines::Required);
    errors.extend(
        policies
            .iter()
            .flat_map(|p| lint::cloud_patterns(p, cloud).0),
    );
    errors.sort_by_key(|e| e.line);
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// What the daemon warns about a policy of a set in force: selectors it can
/// never match under `root` (relative to the cgroup2 mount), policies that
/// would surprise their author, allow patterns that match no cloud region,
/// countries the database has no address in (see `lint`). Never a refusal.
pub fn warnings(
    p: &CompiledPolicy,
    root: Option<&str>,
    cloud: &crate::cloud::CloudRanges,
    countries: Option<&lint::Countries>,
) -> Vec<String> {
    lint::warnings(p, root)
        .into_iter()
        .chain(lint::cloud_patterns(p, cloud).1)
        .chain(countries.and_then(|c| lint::absent_countries(p, c)))
        .collect()
}

/// Reads and compiles one file, wherever it is (`policy check FILE`).
pub fn compile_file(file: &Path) -> Result<Vec<CompiledPolicy>, PolicyError> {
    first_error(compile_documents(
        file,
        &read_policy(file, None)?,
        Baselines::Required,
    ))
}

/// Reads and compiles one file of the policy directory `dir`, as listed by
/// [`policy_files`]: like [`compile_file`], but a file that resolves outside
/// `dir` (a link to `/etc/shadow`) is refused unread. Links inside it are
/// followed, which is what a Kubernetes ConfigMap mount is made of:
/// `name.yaml -> ..data/name.yaml`, `..data -> ..2026_01_01_00_00_00.1`.
pub fn compile_dir_file(dir: &Path, file: &Path) -> Result<Vec<CompiledPolicy>, PolicyError> {
    first_error(compile_documents(
        file,
        &read_policy(file, Some(dir))?,
        Baselines::Required,
    ))
}

/// The text of a policy file, bounded by [`MAX_FILE_BYTES`]; with `inside`,
/// only if the file opened is in that directory.
fn read_policy(file: &Path, inside: Option<&Path>) -> Result<String, PolicyError> {
    let error = |reason: String| PolicyError {
        file: file.display().to_string(),
        line: 0,
        reason,
    };
    let too_big = |len: u64| {
        error(format!(
            "{len} bytes, more than the {MAX_FILE_BYTES} a policy file may hold; not read"
        ))
    };
    // Opened first, so a dangling link or a loop fails with its reason.
    let f = std::fs::File::open(file).map_err(|e| error(format!("cannot read: {e}")))?;
    if let Some(dir) = inside {
        let dir = dir.canonicalize().map_err(|e| {
            error(format!(
                "cannot resolve the policy directory {}: {e}; not read",
                dir.display()
            ))
        })?;
        // Where the file opened really is: the kernel's name for the open
        // descriptor (no race with a link changed after opening), else the
        // path resolved now.
        use std::os::fd::AsRawFd;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .or_else(|_| file.canonicalize())
            .map_err(|e| error(format!("cannot resolve where it leads: {e}; not read")))?;
        if !real.starts_with(&dir) {
            return Err(error(format!(
                "leads to {}, outside the policy directory {}; not read (links are \
                 followed only inside it, as in a ConfigMap mount)",
                real.display(),
                dir.display()
            )));
        }
    }
    if let Ok(m) = f.metadata() {
        if m.len() > MAX_FILE_BYTES {
            return Err(too_big(m.len()));
        }
    }
    let mut bytes = Vec::new();
    // Bounded read: a file that grows after the size check (or a device
    // behind a link) stops at the limit instead of filling memory.
    {
        use std::io::Read;
        f.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| error(format!("cannot read: {e}")))?;
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| error(format!("not UTF-8 text: {e}")))
}

/// Two policies of one name are an error, naming both places.
pub fn check_unique_names(policies: &[CompiledPolicy]) -> Result<(), PolicyError> {
    let mut seen: HashMap<&str, &CompiledPolicy> = HashMap::new();
    for p in policies {
        if let Some(first) = seen.insert(&p.name, p) {
            return Err(PolicyError {
                file: p.file.clone(),
                line: p.line,
                reason: format!(
                    "policy name {:?} is also defined at {}:{}",
                    p.name, first.file, first.line
                ),
            });
        }
    }
    Ok(())
}

/// The largest policy file read: 16 MiB holds a set of about a million
/// CIDRs (200,000 take 3.2 MB), far past what people write by hand.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The most policy files a directory may hold.
pub const MAX_FILES: usize = 1000;

/// The policy files of a directory: `*.yaml` and `*.yml`, hidden names
/// skipped (a Kubernetes ConfigMap mount keeps its real files in `..data`).
/// A link that leads nowhere (dangling, or a loop) is listed, so reading it
/// fails with its reason instead of the file being skipped in silence; so is
/// one that leads outside the directory, which [`compile_dir_file`] refuses.
pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        let broken_link = !path.exists() && path.is_symlink();
        if is_yaml && !name.starts_with('.') && (path.is_file() || broken_link) {
            files.push(path);
            if files.len() > MAX_FILES {
                return Err(std::io::Error::other(format!(
                    "more than {MAX_FILES} policy files; the policies in force stay"
                )));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Stable numeric ids for policy names, as the kernel maps and events carry
/// them. An id is never reused for another name while the daemon runs.
///
/// With a file, the ids survive restarts, so events a restarted daemon
/// drains from the pinned ring buffer still name their policy.
#[derive(Debug, Default)]
pub struct PolicyIds {
    by_name: HashMap<String, u32>,
    by_id: BTreeMap<u32, String>,
    file: Option<PathBuf>,
}

impl PolicyIds {
    /// Ids kept in `file` (JSON); a missing or unreadable file starts empty.
    pub fn open(file: &Path) -> Self {
        let mut ids = PolicyIds {
            file: Some(file.to_path_buf()),
            ..Default::default()
        };
        match std::fs::read(file) {
            Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, u32>>(&bytes) {
                Ok(map) => {
                    for (name, id) in map {
                        ids.by_id.insert(id, name.clone());
                        ids.by_name.insert(name, id);
                    }
                }
                Err(e) => log::warn!("ignoring {}: {e}", file.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("ignoring {}: {e}", file.display()),
        }
        ids
    }

    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        let id = self.by_id.keys().next_back().map_or(1, |last| last + 1);
        self.by_name.insert(name.to_string(), id);
        self.by_id.insert(id, name.to_string());
        if let Some(file) = &self.file {
            let map: BTreeMap<&str, u32> =
                self.by_name.iter().map(|(n, i)| (n.as_str(), *i)).collect();
            let tmp = file.with_extension("json.tmp");
            let written = serde_json::to_vec(&map)
                .map_err(std::io::Error::from)
                .and_then(|bytes| crate::private_file::write(&tmp, &bytes))
                .and_then(|()| std::fs::rename(&tmp, file));
            if let Err(e) = written {
                log::warn!("cannot save policy ids to {}: {e}", file.display());
            }
        }
        id
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
