//! Other programs on our attach points. Cgroup programs of one attach type
//! all run and every one must allow, so a foreign program cannot undo a
//! denial of ours; it can still deny on its own, observe, or (with the
//! legacy override mode, on a cgroup below ours where nothing of ours is
//! attached) replace what the kernel runs there. Either way an operator
//! wants to know.
use std::{os::fd::AsRawFd, path::Path};

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// The cgroup attach types we use, by name.
pub const ATTACH_TYPES: [(&str, u32); 5] = [
    ("egress", 1),
    ("connect4", 10),
    ("connect6", 11),
    ("sendmsg4", 14),
    ("sendmsg6", 15),
];

/// Ids of the programs the kernel runs for `attach_type` on `cgroup`
/// (effective: its own and its ancestors').
pub fn effective_programs(cgroup: &Path, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let dir = std::fs::File::open(cgroup)?;
    let mut ids = vec![0u32; 64];
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(dir.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&attach_type.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_F_QUERY_EFFECTIVE.to_ne_bytes());
    attr[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
    attr[24..28].copy_from_slice(&(ids.len() as u32).to_ne_bytes());
    // SAFETY: bpf(2) with an initialised attribute block whose id buffer
    // outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let count = u32::from_ne_bytes([attr[24], attr[25], attr[26], attr[27]]) as usize;
    ids.truncate(count.min(ids.len()));
    Ok(ids)
}

/// A program on one of our attach points that is not ours.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Foreign {
    pub cgroup: String,
    pub hook: &'static str,
    pub program_id: u32,
}

/// Foreign programs effective on each of `cgroups` (path shown, path).
pub fn find(cgroups: &[(String, &Path)], ours: &[u32]) -> Vec<Foreign> {
    let mut out = Vec::new();
    for (shown, path) in cgroups {
        for (hook, attach_type) in ATTACH_TYPES {
            let Ok(ids) = effective_programs(path, attach_type) else {
                continue;
            };
            for id in ids.into_iter().filter(|id| !ours.contains(id)) {
                out.push(Foreign {
                    cgroup: shown.clone(),
                    hook,
                    program_id: id,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
