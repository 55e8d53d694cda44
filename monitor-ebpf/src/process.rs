//! Who connected: `sched_process_exec` files, per thread group, the
//! program a process runs (`monitor_common::process::Entry`: executable,
//! arguments, parent, uid/gid, cgroup, start) and `sched_process_exit`
//! removes it. Both are raw tracepoints (no tracefs, no kprobes); the
//! kernel structs they read are located by the daemon from this kernel's
//! BTF (`process::Layout`), and nothing is filed before it wrote them.
//!
//! The hooks never read this table on a repeat: the flow key holds the
//! tgid (a helper's register). Only a decision (a cache miss) asks
//! `identify`, which marks the entry as having decided and, the first
//! time, puts the whole entry in the ring just before the decision, so the
//! daemon names a process that exited before it read the event.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns},
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use monitor_common::{
    kind, limits, lost,
    process::{
        Entry, Layout, Record, ARGS_BYTES, ARGS_TRUNCATED, DECIDED, RECORD_VERSION, REPORTED,
        UNSEEN,
    },
    EventHeader, Verdict,
};

use crate::{below_reserve, count_lost, names_changed, ring_used, EVENTS};

/// Bounded, not LRU: an exit removes its entry, and an exec that finds
/// no room is counted (`lost::PROCESS_FULL`) instead of silently pushing
/// out a live process.
#[map]
pub static PROCESSES: HashMap<u32, Entry> = HashMap::with_max_entries(limits::PROCESS_ENTRIES, 0);
/// An entry is 1.6 KiB: built here, not on the 512-byte stack.
#[map]
static PROCESS_SCRATCH: PerCpuArray<Entry> = PerCpuArray::with_max_entries(1, 0);
#[map]
static PROCESS_LAYOUT: Array<Layout> = Array::with_max_entries(1, 0);

/// Reads the pointer-sized field at `base + offset` of a kernel struct.
#[inline(always)]
fn field_u64(base: u64, offset: u32) -> u64 {
    if base == 0 {
        return 0;
    }
    // SAFETY: a checked read of kernel memory (an error reads as 0).
    unsafe {
        bpf_probe_read_kernel(
            (base as *const u8)
                .wrapping_add(offset as usize)
                .cast::<u64>(),
        )
    }
    .unwrap_or(0)
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(ctx: RawTracePointContext) -> i32 {
    let _ = try_exec(&ctx);
    0
}

#[inline(always)]
fn try_exec(ctx: &RawTracePointContext) -> Option<()> {
    let layout = *PROCESS_LAYOUT.get(0)?;
    if layout.ready != 1 {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The image this tgid ran until now is gone: where it decided, the
    // cached decisions of its cgroup are made again, so the new image's
    // first attempts are its own (see `FlowKey`).
    // SAFETY: plain data, read at once.
    if let Some(old) = unsafe { PROCESSES.get(&tgid) } {
        if old.flags & DECIDED != 0 {
            names_changed(old.cgroup_id);
        }
    }
    let e = PROCESS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value, ours for this run.
    let e = unsafe { &mut *e };
    // SAFETY: plain helper calls.
    e.exec_ns = unsafe { bpf_ktime_get_boot_ns() };
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.tgid = tgid;
    let ids = bpf_get_current_uid_gid();
    e.uid = ids as u32;
    e.gid = (ids >> 32) as u32;
    e.flags = 0;
    e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let parent = field_u64(task, layout.task_real_parent);
    e.ppid = if parent == 0 {
        0
    } else {
        // SAFETY: as in field_u64.
        unsafe {
            bpf_probe_read_kernel(
                (parent as *const u8)
                    .wrapping_add(layout.task_tgid as usize)
                    .cast::<u32>(),
            )
        }
        .unwrap_or(0)
    };
    // The path the exec was given (`linux_binprm.filename`, argument 2).
    let bprm: u64 = ctx.arg(2);
    let filename = field_u64(bprm, layout.bprm_filename);
    e.exe[0] = 0;
    if filename != 0 {
        // SAFETY: a checked, bounded read of a kernel string.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(filename as *const u8, &mut e.exe) };
    }
    e.parent_exe[0] = 0;
    // SAFETY: plain data, copied at once.
    if let Some(p) = unsafe { PROCESSES.get(&e.ppid) } {
        // SAFETY: a bounded copy between two map values.
        let _ = unsafe { bpf_probe_read_kernel_buf(p.exe.as_ptr(), &mut e.parent_exe) };
    }
    // The new image's argument vector, on its fresh stack.
    e.args_len = 0;
    let max = if layout.args_bytes as usize > ARGS_BYTES {
        ARGS_BYTES as u64
    } else {
        layout.args_bytes as u64
    };
    let mm = field_u64(task, layout.task_mm);
    let start = field_u64(mm, layout.mm_arg_start);
    let end = field_u64(mm, layout.mm_arg_end);
    if mm != 0 && end > start && max > 0 {
        let mut n = end - start;
        if n > max {
            n = max;
            e.flags |= ARGS_TRUNCATED;
        }
        if n > 0 && n <= ARGS_BYTES as u64 {
            // SAFETY: a checked read of at most ARGS_BYTES into `args`.
            let r = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_user(
                    e.args.as_mut_ptr().cast(),
                    n as u32,
                    start as *const _,
                )
            };
            if r == 0 {
                e.args_len = n as u32;
            }
        }
    }
    if PROCESSES.insert(&tgid, e, 0).is_err() {
        count_lost(lost::PROCESS_FULL);
        // The old image must not answer for the new one.
        let _ = PROCESSES.remove(&tgid);
    }
    Some(())
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // A thread's exit leaves its process.
    if pid_tgid as u32 != tgid {
        return 0;
    }
    // SAFETY: plain data, read at once.
    if let Some(e) = unsafe { PROCESSES.get(&tgid) } {
        // A process that takes this tgid over is judged as itself.
        if e.flags & DECIDED != 0 {
            names_changed(e.cgroup_id);
        }
        let _ = PROCESSES.remove(&tgid);
    }
    0
}

/// The identity (`Entry::exec_ns`) of the process `tgid` making a
/// decision, for its flow entry and event. Marks the entry as having
/// decided and reports it once (a `kind::PROCESS` record ahead of the
/// decision). A process the exec program never saw (older than the
/// programs) gets an `UNSEEN` entry, named by the daemon from /proc.
/// Runs only on a cache miss. The record of a process whose decision is
/// `verdict` may use the ring's reserve when the decision may (it is not
/// "allow"): a refusal names its process.
#[inline(always)]
pub(crate) fn identify(tgid: u32, cgroup_id: u64, comm: &[u8; 16], verdict: u8) -> u64 {
    if tgid == 0 {
        return 0;
    }
    let p = match PROCESSES.get_ptr_mut(&tgid) {
        Some(p) => p,
        None => {
            let Some(e) = PROCESS_SCRATCH.get_ptr_mut(0) else {
                return 0;
            };
            // SAFETY: this CPU's scratch value, ours for this run.
            let e = unsafe { &mut *e };
            // SAFETY: plain helper call.
            e.exec_ns = unsafe { bpf_ktime_get_boot_ns() };
            e.cgroup_id = cgroup_id;
            e.tgid = tgid;
            e.ppid = 0;
            let ids = bpf_get_current_uid_gid();
            e.uid = ids as u32;
            e.gid = (ids >> 32) as u32;
            e.args_len = 0;
            e.flags = UNSEEN;
            e.comm = *comm;
            e.exe[0] = 0;
            e.parent_exe[0] = 0;
            // BPF_NOEXIST: an exec filing it meanwhile wins.
            if PROCESSES.insert(&tgid, e, 1).is_err() && unsafe { PROCESSES.get(&tgid) }.is_none() {
                count_lost(lost::PROCESS_FULL);
                return 0;
            }
            match PROCESSES.get_ptr_mut(&tgid) {
                Some(p) => p,
                None => return 0,
            }
        }
    };
    // SAFETY: a pointer into the map's value, valid for this run; flags
    // only gain bits (a race at worst reports the entry twice).
    unsafe {
        let flags = (*p).flags;
        (*p).flags = flags | DECIDED;
        if flags & REPORTED == 0 {
            if report(&*p, verdict != Verdict::Allowed as u8) {
                (*p).flags = flags | DECIDED | REPORTED;
            }
        }
        (*p).exec_ns
    }
}

/// Puts `e` in the ring; false when the ring is full, or filled up to the
/// reserve and `refusal` is false (counted as a lost event: the next
/// decision of the process tries again).
#[inline(always)]
fn report(e: &Entry, refusal: bool) -> bool {
    if !refusal && !below_reserve(ring_used()) {
        count_lost(lost::RING_FULL);
        return false;
    }
    let Some(mut rec) = EVENTS.reserve::<Record>(0) else {
        count_lost(lost::RING_FULL);
        return false;
    };
    let r = rec.as_mut_ptr();
    // SAFETY: the reserved record, ours until submitted; a bounded copy
    // from the map's value into it.
    unsafe {
        (*r).header = EventHeader {
            kind: kind::PROCESS,
            version: RECORD_VERSION,
            len: core::mem::size_of::<Record>() as u32,
        };
        let dst = core::slice::from_raw_parts_mut(
            core::ptr::addr_of_mut!((*r).entry).cast::<u8>(),
            core::mem::size_of::<Entry>(),
        );
        if bpf_probe_read_kernel_buf((e as *const Entry).cast(), dst).is_err() {
            rec.discard(0);
            return false;
        }
    }
    // The decision that follows wakes the daemon.
    rec.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    true
}
