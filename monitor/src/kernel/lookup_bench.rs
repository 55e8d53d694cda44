//! The geo lookup alone, measured in the kernel for `cargo xtask bench`:
//! the LPM trie (what the programs used before) against the country table
//! (`monitor_common::geo_table`, what they use now), both filled with the
//! same database and run on the same addresses with `BPF_PROG_TEST_RUN`
//! (the kernel times the runs itself). The daemon never loads this object.
use std::{os::fd::AsFd, time::Instant};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    programs::SocketFilter,
    Ebpf, EbpfLoader,
};
use monitor_common::Region;

use super::{KernelError, MappedWords};
use crate::geo::GeoDb;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/geo_bench.bpf.o"));

/// Must match `monitor-ebpf/src/geo_bench.rs`.
pub const PER_RUN: u32 = 32;
pub const ADDRESSES: u32 = 1 << 16;

/// The three programs: no lookup (the loop), the trie, the table.
pub const PROGRAMS: [&str; 3] = ["geo_none", "geo_trie", "geo_flat"];

pub struct LookupBench {
    ebpf: Ebpf,
    /// How long filling each took, in ms: (trie, table).
    pub fill_ms: (f64, f64),
    pub prefixes: usize,
    pub table_words: usize,
}

fn err(what: &str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Geo(format!("lookup bench: {what}: {e}"))
}

impl LookupBench {
    /// Loads the object, fills trie and table with `db`, and the address
    /// array with `addrs` (cycled to `ADDRESSES`).
    pub fn new(db: &GeoDb, addrs: &[[u8; 16]]) -> Result<Self, KernelError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        for name in PROGRAMS {
            let prog: &mut SocketFilter = ebpf
                .program_mut(name)
                .ok_or_else(|| err(name, "missing"))?
                .try_into()
                .map_err(|e| err(name, e))?;
            prog.load().map_err(|e| err(name, e))?;
        }
        set_addresses(&mut ebpf, addrs)?;
        let started = Instant::now();
        let mut trie: LpmTrie<&mut MapData, [u8; 16], Region> = ebpf
            .map_mut("BENCH_TRIE")
            .ok_or_else(|| err("BENCH_TRIE", "missing"))?
            .try_into()
            .map_err(|e| err("BENCH_TRIE", e))?;
        let mut prefixes = 0;
        for (addr, len, region) in db.prefixes() {
            trie.insert(&Key::new(u32::from(len), addr.to_be_bytes()), region, 0)
                .map_err(|e| err("BENCH_TRIE", e))?;
            prefixes += 1;
        }
        let trie_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let table = match ebpf.map("BENCH_TABLE") {
            Some(aya::maps::Map::Array(data)) => data,
            _ => return Err(err("BENCH_TABLE", "missing")),
        };
        let built = {
            let mut slot = MappedWords::new(table, "BENCH_TABLE")?;
            crate::geo::table::build(&db.ranges, slot.words()).map_err(|e| err("table", e))?
        };
        let table_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(Self {
            ebpf,
            fill_ms: (trie_ms, table_ms),
            prefixes,
            table_words: built.words,
        })
    }

    /// Replaces the addresses the runs look up.
    pub fn set_addresses(&mut self, addrs: &[[u8; 16]]) -> Result<(), KernelError> {
        set_addresses(&mut self.ebpf, addrs)
    }

    /// Runs `program` `repeat` times in the kernel; the kernel's mean ns
    /// per run.
    pub fn run(&self, program: &str, repeat: u32) -> Result<u32, KernelError> {
        let prog: &SocketFilter = self
            .ebpf
            .program(program)
            .ok_or_else(|| err(program, "missing"))?
            .try_into()
            .map_err(|e| err(program, e))?;
        let fd = prog.fd().map_err(|e| err(program, e))?;
        let (_, ns) = super::test_run(fd.as_fd(), repeat)
            .map_err(|e| err(program, format!("BPF_PROG_TEST_RUN: {e}")))?;
        Ok(ns)
    }
}

/// Fills the address array with `addrs`, cycled.
fn set_addresses(ebpf: &mut Ebpf, addrs: &[[u8; 16]]) -> Result<(), KernelError> {
    if addrs.is_empty() {
        return Err(err("addresses", "none given"));
    }
    let mut list: Array<&mut MapData, [u8; 16]> = ebpf
        .map_mut("BENCH_ADDRS")
        .ok_or_else(|| err("BENCH_ADDRS", "missing"))?
        .try_into()
        .map_err(|e| err("BENCH_ADDRS", e))?;
    for i in 0..ADDRESSES {
        list.set(i, addrs[i as usize % addrs.len()], 0)
            .map_err(|e| err("BENCH_ADDRS", e))?;
    }
    Ok(())
}
