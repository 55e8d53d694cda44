//! Builds the kernel's country table (`monitor_common::geo_table`) from
//! merged ranges, straight into the memory it is given (the mmap of the
//! idle kernel slot, or a vector in tests): no copy, no per-range
//! allocation, one pass over the ranges.
use monitor_common::geo_table::{
    leaf, CHUNK, CHUNKS, ROOT_BITS, V4_ROOT, V4_STRIDES, V6_ROOT, V6_STRIDES,
};

use super::RegionRange;

const MAPPED_FIRST: u128 = 0xffff_0000_0000;
const MAPPED_LAST: u128 = 0xffff_ffff_ffff;

/// What a build took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Built {
    /// Words written (roots and chunks).
    pub words: usize,
    pub chunks: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the country table needs {needed} words ({needed_mib:.1} MiB) but a kernel slot holds {capacity} ({capacity_mib:.1} MiB); start the daemon with a larger --geo-table-mib (after `egress-monitor uninstall`: pinned slots keep their size)")]
pub struct TableFull {
    pub needed: usize,
    pub needed_mib: f64,
    pub capacity: usize,
    pub capacity_mib: f64,
}

/// Ranges clipped to `[first, last]` (they are sorted and disjoint).
fn clip(ranges: &[RegionRange], first: u128, last: u128, inside: bool) -> Vec<RegionRange> {
    let mut out = Vec::new();
    for r in ranges {
        if inside {
            if r.end < first || r.start > last {
                continue;
            }
            out.push(RegionRange {
                start: r.start.max(first),
                end: r.end.min(last),
                region: r.region,
            });
        } else {
            if r.start < first {
                out.push(RegionRange {
                    end: r.end.min(first - 1),
                    ..*r
                });
            }
            if r.end > last {
                out.push(RegionRange {
                    start: r.start.max(last + 1),
                    ..*r
                });
            }
        }
    }
    out
}

struct Builder<'a> {
    ranges: &'a [RegionRange],
    /// The first range that ends at or after the block being looked at.
    cursor: usize,
    out: &'a mut [u32],
    next: usize,
    chunks: usize,
}

fn last_of(first: u128, host_bits: u32) -> u128 {
    if host_bits >= 128 {
        u128::MAX
    } else {
        first | ((1u128 << host_bits) - 1)
    }
}

impl Builder<'_> {
    /// The leaf word of the block `[first, last]` if one region (or none)
    /// covers all of it. Blocks are visited in address order.
    fn uniform(&mut self, first: u128, last: u128) -> Option<u32> {
        while self.cursor < self.ranges.len() && self.ranges[self.cursor].end < first {
            self.cursor += 1;
        }
        match self.ranges.get(self.cursor) {
            None => Some(0),
            Some(r) if r.start > last => Some(0),
            Some(r) if r.start <= first && r.end >= last => Some(leaf(r.region)),
            Some(_) => None,
        }
    }

    /// The word for the block of `host_bits` at `first`, split by
    /// `strides` where it is not uniform.
    fn block(&mut self, first: u128, host_bits: u32, strides: &[u32]) -> u32 {
        if let Some(w) = self.uniform(first, last_of(first, host_bits)) {
            return w;
        }
        // A single address is always uniform, so a stride is left here.
        let s = strides[0];
        let base = self.next;
        self.next += 1 << s;
        self.chunks += 1;
        let child_bits = host_bits - s;
        for i in 0..(1u128 << s) {
            let w = self.block(first | (i << child_bits), child_bits, &strides[1..]);
            if let Some(slot) = self.out.get_mut(base + i as usize) {
                *slot = w;
            }
        }
        CHUNK | base as u32
    }

    fn root(&mut self, at: u32, first: u128, host_bits: u32, strides: &[u32]) {
        let child_bits = host_bits - ROOT_BITS;
        for i in 0..(1u128 << ROOT_BITS) {
            let w = self.block(first | (i << child_bits), child_bits, strides);
            self.out[at as usize + i as usize] = w;
        }
    }
}

/// Writes the table of `ranges` (sorted, disjoint, as `GeoDb` holds them)
/// into `out`. Every word a lookup can reach is written; the rest of `out`
/// is left as it was.
pub fn build(ranges: &[RegionRange], out: &mut [u32]) -> Result<Built, TableFull> {
    let mib = |w: usize| w as f64 * 4.0 / f64::from(1 << 20);
    let capacity = out.len();
    if capacity < CHUNKS as usize {
        return Err(TableFull {
            needed: CHUNKS as usize,
            needed_mib: mib(CHUNKS as usize),
            capacity,
            capacity_mib: mib(capacity),
        });
    }
    let v4 = clip(ranges, MAPPED_FIRST, MAPPED_LAST, true);
    let v6 = clip(ranges, MAPPED_FIRST, MAPPED_LAST, false);
    let mut b = Builder {
        ranges: &v4,
        cursor: 0,
        out,
        next: CHUNKS as usize,
        chunks: 0,
    };
    b.root(V4_ROOT, MAPPED_FIRST, 32, &V4_STRIDES);
    b.ranges = &v6;
    b.cursor = 0;
    b.root(V6_ROOT, 0, 128, &V6_STRIDES);
    if b.next > capacity {
        return Err(TableFull {
            needed: b.next,
            needed_mib: mib(b.next),
            capacity,
            capacity_mib: mib(capacity),
        });
    }
    Ok(Built {
        words: b.next,
        chunks: b.chunks,
    })
}
