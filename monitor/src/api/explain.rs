//! The Explain call: what the policies in force would do with a destination
//! from a cgroup or a pod, and why, from what the daemon has in force: its
//! policy set and selection, its country database, its cloud ranges and
//! the names the cgroup resolved. `policy explain --offline` builds the
//! same answer from files.
use std::{
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
};

use tonic::Status;

use super::{backend::Backend, pb};
use crate::{
    geo::GeoDb,
    policy::{
        explain::{explain, judging, missing_data},
        CompiledPolicy,
    },
};

/// The country database the daemon put in force, opened at the first
/// Explain that needs it (the daemon keeps only the kernel's table) and
/// kept while its file is the one in force.
#[derive(Default)]
pub struct GeoCache(Mutex<Option<Arc<GeoDb>>>);

impl GeoCache {
    /// The database whose SHA-256 is `sha256`, read from `path` when not
    /// held; FAILED_PRECONDITION when the file changed since it was loaded.
    async fn get(&self, path: &Path, sha256: &str) -> Result<Arc<GeoDb>, Status> {
        if let Some(db) = self.held(sha256) {
            return Ok(db);
        }
        let owned = path.to_path_buf();
        let db = tokio::task::spawn_blocking(move || GeoDb::open(&owned))
            .await
            .map_err(|e| Status::internal(format!("reading the country database: {e}")))?
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "the country database in force cannot be read again: {e}"
                ))
            })?;
        if db.identity.sha256 != sha256 {
            return Err(Status::failed_precondition(format!(
                "the country database {} changed since the daemon loaded it (sha256 {} in \
                 force, {} on disk): restart the daemon to put it in force, or ask \
                 `policy explain --offline`",
                path.display(),
                short(sha256),
                short(&db.identity.sha256)
            )));
        }
        let db = Arc::new(db);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(db.clone());
        Ok(db)
    }

    fn held(&self, sha256: &str) -> Option<Arc<GeoDb>> {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.as_ref()
            .filter(|db| db.identity.sha256 == sha256)
            .cloned()
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Who is asked about: a cgroup (relative to the mount) or a pod.
pub enum From {
    Cgroup(String),
    Pod(String),
}

/// A running process asked about: its cgroup (the cgroup2 line of
/// `/proc/PID/cgroup`) and how it reads (`comm[pid] exe, parent PPID exe`).
pub fn process_of_pid(proc_root: &Path, pid: u32) -> Result<(String, String), String> {
    let dir = proc_root.join(pid.to_string());
    let cgroups = std::fs::read_to_string(dir.join("cgroup"))
        .map_err(|e| format!("pid {pid}: no such process ({e})"))?;
    let cgroup = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| {
            format!(
                "pid {pid}: not in the cgroup2 hierarchy ({})",
                dir.join("cgroup").display()
            )
        })?
        .to_string();
    let (comm, p) = one_program(
        || std::fs::read_to_string(dir.join("comm")).unwrap_or_default(),
        || crate::process::Capture::default().of_proc(proc_root, pid),
    )
    .ok_or_else(|| format!("pid {pid}: no such process"))?;
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut said = format!("{}[{pid}] {}", comm.trim(), dash(&p.exe));
    if p.ppid != 0 {
        said.push_str(&format!(", parent {} {}", p.ppid, dash(&p.parent_exe)));
    }
    Ok((cgroup, said))
}

/// A process's name and what `capture` read of it, of one program: the
/// name and the executable change together at an exec, so the name is read
/// on both sides of the capture, and all is read again (up to 3 times)
/// when it changed (a process caught mid-exec read "nsenter[N]
/// /usr/bin/sleep"). None: the capture found no process.
fn one_program<T>(
    name: impl Fn() -> String,
    mut capture: impl FnMut() -> Option<T>,
) -> Option<(String, T)> {
    let mut tries = 0;
    loop {
        let before = name();
        let p = capture()?;
        let after = name();
        tries += 1;
        if before == after || tries == 3 {
            return Some((after, p));
        }
    }
}

impl From {
    /// The request's cgroup or pod, checked: exactly one, a cgroup path
    /// without '..', a pod UID as policies take it.
    pub fn parse(mount: &Path, cgroup: &str, pod_uid: &str) -> Result<Self, String> {
        match (cgroup.is_empty(), pod_uid.is_empty()) {
            (false, true) => crate::cgroups::given_path(mount, cgroup).map(From::Cgroup),
            (true, false) => crate::policy::compile::pod_uid(pod_uid).map(From::Pod),
            (true, true) => Err("give the connecting cgroup or pod".into()),
            (false, false) => Err("give the connecting cgroup or pod, not both".into()),
        }
    }

    pub fn label(&self) -> String {
        match self {
            From::Cgroup(c) => c.clone(),
            From::Pod(uid) => format!("pod {uid}"),
        }
    }
}

/// The answer for `address` from `from`, judged by `judged` (the policy
/// and what it selects), with the name the address was reached by.
#[allow(clippy::too_many_arguments)]
pub fn response(
    address: IpAddr,
    from: &From,
    judged: Option<(&CompiledPolicy, String)>,
    db: &GeoDb,
    cloud: &crate::cloud::CloudRanges,
    name: Option<(String, &str)>,
    generation: u32,
    mut warnings: Vec<String>,
) -> pb::ExplainResponse {
    let mut r = pb::ExplainResponse {
        address: address.to_string(),
        from: from.label(),
        policy_generation: generation,
        ..Default::default()
    };
    let Some((p, selected)) = judged else {
        r.warnings = warnings;
        return r;
    };
    let e = explain(
        p,
        db,
        cloud,
        address,
        name.as_ref().map(|(n, _)| n.as_str()),
    );
    warnings.extend(missing_data(p, cloud, name.is_some()));
    let (name, name_source) = name.unwrap_or_default();
    pb::ExplainResponse {
        judged: true,
        policy: e.policy,
        mode: e.mode,
        file: e.file,
        line: e.line as u32,
        selected,
        place: e.place,
        place_source: e.place_source.into(),
        cloud_region: e.cloud_region,
        name,
        name_source: name_source.into(),
        name_said: e.name_said.into(),
        verdict: e.verdict.as_str().into(),
        rule: e.rule.as_str().into(),
        why: e.why,
        warnings,
        ..r
    }
}

/// The policy in force that judges `from`: the nearest ancestor the
/// daemon selects now; for a cgroup that does not exist, the policy that
/// will select it when it is made (with a warning saying so).
fn judged_in_force<'s>(
    snapshot: &'s crate::state::PolicySnapshot,
    mount: &Path,
    from: &From,
    warnings: &mut Vec<String>,
) -> Option<(&'s CompiledPolicy, String)> {
    if let From::Cgroup(path) = from {
        let mut here = path.as_str();
        loop {
            if let Some(p) = snapshot
                .policies
                .iter()
                .find(|p| p.selected.iter().any(|s| s == here))
            {
                return Some((&p.policy, here.to_string()));
            }
            match here.rfind('/') {
                Some(0) if here.len() > 1 => here = "/",
                Some(i) if i > 0 => here = &here[..i],
                _ => break,
            }
        }
        if mount.join(path.trim_start_matches('/')).is_dir() {
            return None;
        }
        warnings.push(format!(
            "cgroup {path} does not exist now: judged as the daemon will judge it once it is made"
        ));
    }
    let in_force = snapshot.policies.iter().map(|p| &p.policy);
    match from {
        From::Cgroup(path) => judging(in_force, Some(path), None),
        From::Pod(uid) => judging(in_force, None, Some(uid)),
    }
}

/// Explain, from the daemon in force.
pub async fn explain_in_force(
    backend: &Backend,
    geo: &GeoCache,
    req: pb::ExplainRequest,
) -> Result<pb::ExplainResponse, Status> {
    let address: IpAddr = req.address.trim().parse().map_err(|_| {
        Status::invalid_argument(format!(
            "address: {:?} is not an IPv4 or IPv6 address",
            req.address
        ))
    })?;
    let mount = crate::cgroups::find_cgroup2_mount()
        .map_err(|e| Status::internal(format!("finding the cgroup2 mount: {e}")))?;
    let mut process = String::new();
    let mut req = req;
    if req.pid != 0 {
        if !req.cgroup.is_empty() || !req.pod_uid.is_empty() {
            return Err(Status::invalid_argument(
                "give the connecting process, cgroup or pod: one of them",
            ));
        }
        let (cgroup, said) =
            process_of_pid(Path::new("/proc"), req.pid).map_err(Status::not_found)?;
        req.cgroup = cgroup;
        process = said;
    }
    let from = From::parse(&mount, &req.cgroup, &req.pod_uid).map_err(Status::invalid_argument)?;
    let snapshot = backend.view.policy();
    let identity = snapshot.geo.as_ref().ok_or_else(|| {
        Status::unavailable("the daemon has not put a country database in force yet")
    })?;
    let db = geo.get(&identity.path, &identity.sha256).await?;
    let mut warnings = Vec::new();
    let judged = judged_in_force(&snapshot, &mount, &from, &mut warnings);
    let name = if !req.name.trim().is_empty() {
        Some((req.name.trim().trim_end_matches('.').to_string(), "given"))
    } else {
        learned_name(backend, &mount, &from, address)
    };
    if judged.is_none() {
        warnings.push(format!(
            "no policy in force selects {} or an ancestor: not watched",
            from.label()
        ));
    }
    let mut r = response(
        address,
        &from,
        judged,
        &db,
        &snapshot.cloud,
        name,
        snapshot.generation,
        warnings,
    );
    r.process = process;
    Ok(r)
}

/// The name the cgroup resolved `address` from, as the daemon learned it
/// from the kernel's DNS records (unexpired). Names are learned per cgroup:
/// a pod has none of its own.
fn learned_name(
    backend: &Backend,
    mount: &Path,
    from: &From,
    address: IpAddr,
) -> Option<(String, &'static str)> {
    let From::Cgroup(path) = from else {
        return None;
    };
    let id = crate::cgroups::cgroup_id(&mount.join(path.trim_start_matches('/'))).ok()?;
    let now = crate::pipeline::harvest::boot_ns();
    let mut table = backend
        .outlets
        .dns
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let (qname, _) = table.lookup(id, address, now)?;
    Some((qname.to_string(), "learned"))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::one_program;

    /// A process that execs between the reads is read again, and the name
    /// given is the one read after the executable; one that keeps changing
    /// is read at most 3 times.
    #[test]
    fn a_process_caught_mid_exec_is_read_again() {
        // The exec happens during the first capture: "nsenter" before it,
        // "sleep" from then on.
        let exec_done = Cell::new(false);
        let reads = Cell::new(0);
        let name = || if exec_done.get() { "sleep" } else { "nsenter" }.to_string();
        let capture = || {
            reads.set(reads.get() + 1);
            exec_done.set(true);
            Some("/usr/bin/sleep")
        };
        assert_eq!(
            one_program(name, capture),
            Some(("sleep".to_string(), "/usr/bin/sleep"))
        );
        assert_eq!(reads.get(), 2, "read again after the name changed");

        let n = Cell::new(0);
        let reads = Cell::new(0);
        let always_new = || {
            n.set(n.get() + 1);
            format!("p{}", n.get())
        };
        let capture = || {
            reads.set(reads.get() + 1);
            Some(())
        };
        assert!(one_program(always_new, capture).is_some());
        assert_eq!(reads.get(), 3, "bounded");

        assert_eq!(one_program(|| "x".to_string(), || None::<()>), None);
    }
}
