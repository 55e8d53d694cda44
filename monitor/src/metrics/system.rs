//! What the kernel tells about our BPF objects: map memory from
//! `/proc/self/fdinfo`, and the ring buffer's fill from its position pages.
use std::{collections::HashSet, os::fd::RawFd};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MapUsage {
    pub count: u64,
    pub memlock_bytes: u64,
}

/// The BPF maps this process holds a descriptor of, each counted once
/// (by map id), and the memory charged to them.
pub fn bpf_maps() -> MapUsage {
    let mut usage = MapUsage::default();
    let mut seen = HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return usage;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some((id, memlock)) = parse_map_fdinfo(&text) {
            if seen.insert(id) {
                usage.count += 1;
                usage.memlock_bytes += memlock;
            }
        }
    }
    usage
}

/// `(map_id, memlock)` of a BPF map's fdinfo; `None` for any other file.
pub fn parse_map_fdinfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().parse::<u64>().ok())?
        })
    };
    text.lines()
        .any(|l| l.starts_with("map_type:"))
        .then_some(())?;
    Some((field("map_id")?, field("memlock")?))
}

/// A read-only view of a BPF ring buffer's consumer and producer positions
/// (the first two pages of its mapping). aya's `RingBuf` does not expose
/// them; the kernel lets anyone holding the map map them read-only.
pub struct RingFill {
    pages: *mut libc::c_void,
    page: usize,
    size: u64,
}

// SAFETY: the mapping is read-only and only read with atomic loads.
unsafe impl Send for RingFill {}
// SAFETY: as above.
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the position pages of the ring buffer behind `fd` (`size` is
    /// its data size). The mapping keeps the map alive on its own.
    pub fn map(fd: RawFd, size: u32) -> std::io::Result<Self> {
        // SAFETY: no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh shared read-only mapping of two pages of a ring
        // buffer map fd; the kernel checks the range and the protection.
        let pages = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if pages == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingFill {
            pages,
            page,
            size: u64::from(size),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes written by the kernel and not yet consumed by the daemon.
    pub fn used(&self) -> u64 {
        // SAFETY: both pages are mapped for as long as self lives; each
        // starts with an 8-byte position the kernel updates atomically.
        let (consumer, producer) = unsafe {
            let c = std::sync::atomic::AtomicU64::from_ptr(self.pages.cast());
            let p = std::sync::atomic::AtomicU64::from_ptr(self.pages.byte_add(self.page).cast());
            (
                c.load(std::sync::atomic::Ordering::Acquire),
                p.load(std::sync::atomic::Ordering::Acquire),
            )
        };
        producer.saturating_sub(consumer).min(self.size)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe { libc::munmap(self.pages, 2 * self.page) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_map_fdinfo_and_ignores_other_files() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t27\nkey_size:\t0\nvalue_size:\t0\nmax_entries:\t4194304\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t4210688\nmap_id:\t731\nfrozen:\t0\n";
        assert_eq!(parse_map_fdinfo(map), Some((731, 4_210_688)));
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t18\nprog_jited:\t1\nmemlock:\t4096\nprog_id:\t55\n";
        assert_eq!(parse_map_fdinfo(prog), None);
        assert_eq!(parse_map_fdinfo("pos:\t0\nflags:\t0100002\n"), None);
    }
}
