//! The floor for `cargo xtask bench`: trivial programs of the monitor's
//! types on its cgroup hooks (`monitor-ebpf/src/floor.rs`), attached to
//! a cgroup of the bench's own. The daemon never loads this object. The
//! programs stay attached while the `Floor` lives.
use std::os::fd::AsFd;

use aya::{
    programs::{links::CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr},
    Ebpf, EbpfLoader,
};

use super::KernelError;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// The sock_addr programs (connect and sendmsg, both families).
const SOCK_ADDR: [&str; 4] = [
    "floor_connect4",
    "floor_sendmsg4",
    "floor_connect6",
    "floor_sendmsg6",
];
/// The skb programs and their direction (one each way, as the monitor).
const SKB: [(&str, CgroupSkbAttachType); 2] = [
    ("floor_egress", CgroupSkbAttachType::Egress),
    ("floor_ingress", CgroupSkbAttachType::Ingress),
];

pub struct Floor {
    _ebpf: Ebpf,
}

fn err(what: &str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Floor(format!("{what}: {e}"))
}

impl Floor {
    /// Loads the trivial programs and attaches them to `cgroup` (a cgroup
    /// v2 directory).
    pub fn attach(cgroup: &std::path::Path) -> Result<Self, KernelError> {
        let dir = std::fs::File::open(cgroup).map_err(|e| err(&cgroup.display().to_string(), e))?;
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        for name in SOCK_ADDR {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| err(name, "missing"))?
                .try_into()
                .map_err(|e| err(name, e))?;
            prog.load().map_err(|e| err(name, e))?;
            prog.attach(dir.as_fd(), CgroupAttachMode::Single)
                .map_err(|e| err(name, e))?;
        }
        for (name, direction) in SKB {
            let prog: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or_else(|| err(name, "missing"))?
                .try_into()
                .map_err(|e| err(name, e))?;
            prog.load().map_err(|e| err(name, e))?;
            prog.attach(dir.as_fd(), direction, CgroupAttachMode::Single)
                .map_err(|e| err(name, e))?;
        }
        Ok(Floor { _ebpf: ebpf })
    }
}
