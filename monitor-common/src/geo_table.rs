//! The kernel's country table: a multi-level array of 32-bit words in one
//! mmapable array map (`GEO_A`/`GEO_B`), in the DIR-24-8 family.
//!
//! - Words `V4_ROOT..V4_ROOT + 65536`: one per /16 of IPv4; words
//!   `V6_ROOT..V6_ROOT + 65536`: one per /16 of IPv6.
//! - A word is a leaf (a `Region`: two ASCII letters of country and two of
//!   continent, so bit 31 is clear; 0 is "no region") or, with `CHUNK` set,
//!   the index of the first word of a chunk of `1 << stride` words that
//!   splits its block by the next `stride` bits.
//! - IPv4 (and IPv4-mapped IPv6) strides: 16, 8, 4, 4: at most 4
//!   dependent loads. IPv6: 16, 8, 8 to /32 (most allocations), then 4-bit
//!   strides, where blocks are rare and wide chunks would be mostly
//!   copies of one word. With the CC0 country database (550,563 merged
//!   ranges) the table takes 28 MiB: 16-8-8 for IPv4 would take 12 MiB
//!   more, 8-bit IPv6 strides to /48 another 12 MiB, for one or a few
//!   loads less.
//!
//! The daemon builds the table in userspace and copies it into the idle
//! slot through an `mmap` of the map; this walk is the one both the kernel
//! and the daemon's tests run, so they cannot disagree about the layout.
use crate::Region;

/// Words per element of the array map: the kernel lays out array values
/// 8 bytes apart, so a map of u32 would leave every other word unused.
/// An element holds two words; word `i` is half `i & 1` of element `i / 2`.
pub const WORDS_PER_ELEMENT: u32 = 2;
pub type Element = [u32; WORDS_PER_ELEMENT as usize];

pub const ROOT_BITS: u32 = 16;
pub const V4_ROOT: u32 = 0;
pub const V6_ROOT: u32 = 1 << ROOT_BITS;
/// The first chunk word.
pub const CHUNKS: u32 = 2 << ROOT_BITS;
pub const CHUNK: u32 = 1 << 31;
/// Strides after the 16-bit root.
pub const V4_STRIDES: [u32; 3] = [8, 4, 4];
pub const V6_STRIDES: [u32; 26] = [
    8, 8, // to /32
    4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, // to /128
];

const fn sum(s: &[u32]) -> u32 {
    let mut i = 0;
    let mut t = 0;
    while i < s.len() {
        t += s[i];
        i += 1;
    }
    t
}

/// No stride straddles the two 64-bit halves of an address.
const fn aligned(s: &[u32]) -> bool {
    let mut i = 0;
    let mut pos = ROOT_BITS;
    while i < s.len() {
        if pos < 64 && pos + s[i] > 64 {
            return false;
        }
        pos += s[i];
        i += 1;
    }
    true
}

const _: () = {
    assert!(ROOT_BITS + sum(&V4_STRIDES) == 32);
    assert!(ROOT_BITS + sum(&V6_STRIDES) == 128);
    assert!(aligned(&V6_STRIDES));
};

/// The leaf word of a region.
#[inline(always)]
pub const fn leaf(r: Region) -> u32 {
    u32::from_le_bytes([r.country[0], r.country[1], r.continent[0], r.continent[1]])
}

/// The region of a leaf word.
#[inline(always)]
pub const fn region(word: u32) -> Region {
    let b = word.to_le_bytes();
    Region {
        country: [b[0], b[1]],
        continent: [b[2], b[3]],
    }
}

/// Word `i` of a table stored as elements (`WORDS_PER_ELEMENT`).
#[inline(always)]
pub fn word_of<'a>(i: u32, element: impl FnOnce(u32) -> Option<&'a Element>) -> Option<u32> {
    element(i / WORDS_PER_ELEMENT).map(|e| e[(i % WORDS_PER_ELEMENT) as usize])
}

/// Whether `addr` is `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_mapped(addr: &[u8; 16]) -> bool {
    u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]) == 0
        && u32::from_be_bytes([addr[8], addr[9], addr[10], addr[11]]) == 0xffff
}

/// The region of `addr` (IPv4 as `::ffff:a.b.c.d`); `read` gives the word
/// at an index (None past the end: no region; see `word_of`).
#[inline(always)]
pub fn lookup(addr: &[u8; 16], read: impl Fn(u32) -> Option<u32>) -> Region {
    let word = if is_mapped(addr) {
        let a = u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]]);
        let mut w = match read(V4_ROOT + (a >> 16)) {
            Some(w) => w,
            None => return Region::default(),
        };
        let mut pos = ROOT_BITS;
        let mut i = 0;
        while i < V4_STRIDES.len() {
            if w & CHUNK == 0 {
                break;
            }
            let s = V4_STRIDES[i];
            let bits = (a >> (32 - pos - s)) & ((1 << s) - 1);
            w = match read((w & !CHUNK) + bits) {
                Some(w) => w,
                None => return Region::default(),
            };
            pos += s;
            i += 1;
        }
        w
    } else {
        let hi = u64::from_be_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]);
        let lo = u64::from_be_bytes([
            addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
        ]);
        let mut w = match read(V6_ROOT + (hi >> 48) as u32) {
            Some(w) => w,
            None => return Region::default(),
        };
        let mut pos = ROOT_BITS;
        let mut i = 0;
        while i < V6_STRIDES.len() {
            if w & CHUNK == 0 {
                break;
            }
            let s = V6_STRIDES[i];
            let mask = (1u64 << s) - 1;
            let bits = if pos < 64 {
                (hi >> (64 - pos - s)) & mask
            } else {
                (lo >> (128 - pos - s)) & mask
            };
            w = match read((w & !CHUNK) + bits as u32) {
                Some(w) => w,
                None => return Region::default(),
            };
            pos += s;
            i += 1;
        }
        w
    };
    if word & CHUNK != 0 {
        Region::default()
    } else {
        region(word)
    }
}
