//! For `cargo xtask bench` only (the daemon never loads it): the geo
//! lookup alone, the LPM trie the programs used before against the
//! country table they use now (`monitor_common::geo_table`), each filled
//! with the same real database and run on the same addresses through
//! `BPF_PROG_TEST_RUN`. `geo_trie` and `geo_flat` look up; `geo_none` reads the addresses and does no lookup:
//! the loop's own cost, subtracted by the bench.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::{map, socket_filter},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray},
    programs::SkBuffContext,
};
use monitor_common::{geo_table, limits, Region};

/// Lookups per run.
pub const PER_RUN: u32 = 32;
/// Addresses the runs cycle through (a power of two).
pub const ADDRESSES: u32 = 1 << 16;

#[map]
static BENCH_TRIE: LpmTrie<[u8; 16], Region> = LpmTrie::with_max_entries(2 << 20, 0);
#[map]
static BENCH_TABLE: Array<geo_table::Element> = Array::with_max_entries(
    limits::GEO_TABLE_WORDS / geo_table::WORDS_PER_ELEMENT,
    BPF_F_MMAPABLE,
);
#[map]
static BENCH_ADDRS: Array<[u8; 16]> = Array::with_max_entries(ADDRESSES, 0);
#[map]
static BENCH_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
/// What the lookups found, summed, so none is optimised away.
#[map]
static BENCH_SINK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn run(lookup: impl Fn(&[u8; 16]) -> u32) -> i64 {
    let Some(cursor) = BENCH_CURSOR.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU value, this program's alone on this CPU.
    let base = unsafe { *cursor };
    unsafe { *cursor = base.wrapping_add(PER_RUN) };
    let mut acc = 0u32;
    let mut i = 0;
    while i < PER_RUN {
        if let Some(a) = BENCH_ADDRS.get((base + i) & (ADDRESSES - 1)) {
            acc = acc.wrapping_add(lookup(a));
        }
        i += 1;
    }
    if let Some(sink) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe { *sink = (*sink).wrapping_add(acc) };
    }
    0
}

#[socket_filter]
pub fn geo_none(_ctx: SkBuffContext) -> i64 {
    run(|a| u32::from(a[15]))
}

#[socket_filter]
pub fn geo_trie(_ctx: SkBuffContext) -> i64 {
    run(|a| {
        geo_table::leaf(
            BENCH_TRIE
                .get(&Key::new(128, *a))
                .copied()
                .unwrap_or_default(),
        )
    })
}

#[socket_filter]
pub fn geo_flat(_ctx: SkBuffContext) -> i64 {
    run(|a| {
        geo_table::leaf(geo_table::lookup(a, |i| {
            geo_table::word_of(i, |e| BENCH_TABLE.get(e))
        }))
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
