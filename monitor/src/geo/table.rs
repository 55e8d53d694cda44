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

/// A sequence of ranges as up to three slices, one after the other.
#[derive(Clone, Copy)]
struct Chain<'a>([&'a [RegionRange]; 3]);

impl<'a> Chain<'a> {
    fn get(&self, mut i: usize) -> Option<&'a RegionRange> {
        for part in self.0 {
            if i < part.len() {
                return Some(&part[i]);
            }
            i -= part.len();
        }
        None
    }
}

/// `ranges` (sorted, disjoint) clipped to `[first, last]` (`inside`), or
/// to what lies outside it, without a copy: the ranges themselves, and the
/// at most two an edge cuts, kept in `cut`. (A copy of a country
/// database's ranges is 26 MB, at the daemon's peak memory.)
fn clip<'a>(
    ranges: &'a [RegionRange],
    first: u128,
    last: u128,
    inside: bool,
    cut: &'a mut [RegionRange; 2],
) -> Chain<'a> {
    // ranges[..a] end before `first`, ranges[b..] start after `last`; the
    // rest meet [first, last].
    let a = ranges.partition_point(|r| r.end < first);
    let b = ranges.partition_point(|r| r.start <= last).max(a);
    let meet = &ranges[a..b];
    if inside {
        let clipped = |r: &RegionRange| RegionRange {
            start: r.start.max(first),
            end: r.end.min(last),
            region: r.region,
        };
        return match meet {
            [] => Chain([&[], &[], &[]]),
            [only] => {
                cut[0] = clipped(only);
                let cut: &'a [RegionRange; 2] = cut;
                Chain([&cut[..1], &[], &[]])
            }
            [head, body @ .., tail] => {
                cut[0] = clipped(head);
                cut[1] = clipped(tail);
                let cut: &'a [RegionRange; 2] = cut;
                Chain([&cut[..1], body, &cut[1..]])
            }
        };
    }
    let mut n = 0;
    if let Some(head) = meet.first().filter(|r| r.start < first) {
        cut[n] = RegionRange {
            end: first - 1,
            ..*head
        };
        n += 1;
    }
    if let Some(tail) = meet.last().filter(|r| r.end > last) {
        cut[n] = RegionRange {
            start: last + 1,
            ..*tail
        };
        n += 1;
    }
    let cut: &'a [RegionRange; 2] = cut;
    Chain([&ranges[..a], &cut[..n], &ranges[b..]])
}

struct Builder<'a> {
    ranges: Chain<'a>,
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
        while self.ranges.get(self.cursor).is_some_and(|r| r.end < first) {
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
    let none = RegionRange {
        start: 0,
        end: 0,
        region: Default::default(),
    };
    let (mut cut4, mut cut6) = ([none; 2], [none; 2]);
    let v4 = clip(ranges, MAPPED_FIRST, MAPPED_LAST, true, &mut cut4);
    let v6 = clip(ranges, MAPPED_FIRST, MAPPED_LAST, false, &mut cut6);
    let mut b = Builder {
        ranges: v4,
        cursor: 0,
        out,
        next: CHUNKS as usize,
        chunks: 0,
    };
    b.root(V4_ROOT, MAPPED_FIRST, 32, &V4_STRIDES);
    b.ranges = v6;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What `clip` must hand the builder, made the plain way (a copy).
    fn copied(ranges: &[RegionRange], first: u128, last: u128, inside: bool) -> Vec<RegionRange> {
        let mut out = Vec::new();
        for r in ranges {
            let (s, e) = (r.start.max(first), r.end.min(last));
            if inside {
                if s <= e {
                    out.push(RegionRange {
                        start: s,
                        end: e,
                        ..*r
                    });
                }
                continue;
            }
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
        out
    }

    fn chained(c: Chain<'_>) -> Vec<RegionRange> {
        (0..).map_while(|i| c.get(i).copied()).collect()
    }

    #[test]
    fn clipping_without_a_copy_is_clipping() {
        let r = |start: u128, end: u128, c: u8| RegionRange {
            start,
            end,
            region: monitor_common::Region {
                country: [c, c],
                continent: [0, 0],
            },
        };
        let (first, last) = (100u128, 200u128);
        // Every way ranges can lie against the window: none, before,
        // across its start, inside, across its end, after, across all.
        let cases: Vec<Vec<RegionRange>> = vec![
            vec![],
            vec![r(0, 10, 1)],
            vec![r(0, 10, 1), r(300, 400, 2)],
            vec![r(50, 150, 1)],
            vec![r(150, 250, 1)],
            vec![r(50, 250, 1)],
            vec![r(100, 200, 1)],
            vec![r(0, 99, 1), r(100, 100, 2), r(201, 300, 3)],
            vec![
                r(0, 10, 1),
                r(90, 120, 2),
                r(130, 140, 3),
                r(150, 160, 4),
                r(190, 210, 5),
                r(500, 600, 6),
            ],
            vec![r(120, 130, 1), r(140, 150, 2)],
            vec![r(0, 120, 1), r(180, u128::MAX, 2)],
        ];
        for ranges in &cases {
            for inside in [true, false] {
                let mut cut = [r(0, 0, 0); 2];
                let got = chained(clip(ranges, first, last, inside, &mut cut));
                assert_eq!(
                    got,
                    copied(ranges, first, last, inside),
                    "{ranges:?} inside={inside}"
                );
            }
        }
    }
}
