//! How glibc's malloc holds the daemon's memory: tuned at the start of
//! every command, and once more when the daemon's start is over. A
//! variable the operator set (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_`) is left as given. Measured with `bench
//! pipeline` (docs/performance.md, "The daemon's memory at its start").

/// Whether the operator chose none of the thresholds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thresholds_ours() -> bool {
    std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none()
}

/// First in `main`, before any other thread exists.
///
/// Two arenas instead of glibc's eight per core: each thread that
/// allocates under contention gets an arena of its own, and memory freed in
/// one is kept there for it. Under a flood of events the daemon's threads
/// (the pipeline, the store writer, the API) hold hundreds of MiB that way.
/// Five pairs alternated: RSS at the maximum event rate 388-572 MiB with
/// glibc's default, 332-405 MiB with two, lower in every pair, CPU no
/// higher.
///
/// Low thresholds while the daemon starts: a block of 1 MiB or more is
/// mapped on its own and unmapped when freed, and an arena's free end is
/// handed back beyond 4 MiB. The start allocates and frees large blocks
/// (the country database's ranges, sorted and merged; the cloud ranges),
/// and with glibc's sliding thresholds, raised by those very frees, what
/// they left stayed in the second arena, out of reach even of
/// `malloc_trim` (which trims only the main arena's end): 64 MiB of
/// anonymous memory in the idle daemon, 17 MiB with these.
pub fn tune_at_start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain calls, before any other thread exists.
    unsafe {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if thresholds_ours() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        }
    }
}

/// When the daemon's start is over: the whole free pages malloc holds go
/// back to the kernel (3 MiB more of the idle daemon's memory), and the
/// thresholds rise to glibc's own ceilings (32 MiB mapped on its own, 64
/// MiB of free end kept), which a busy daemon reached anyway. Kept at 1 and
/// 4 MiB, the daemon under a flood held 302-348 MiB instead of 361-474 MiB
/// but paid 31-37% of a core per 10k new destinations/s instead of 26-31%
/// (mapping, faulting in and unmapping what the writer's batches reuse):
/// not kept.
pub fn settle_after_start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain calls; malloc locks each arena while it trims it.
    unsafe {
        libc::malloc_trim(0);
        if thresholds_ours() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}
