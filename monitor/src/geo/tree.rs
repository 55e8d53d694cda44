//! A walk of a MaxMind DB search tree that yields address ranges and the
//! data pointer of each, without decoding a record or allocating per
//! network: the reader decodes each distinct pointer once.
//!
//! In an IPv6 database the IPv4 networks live under `::/96` (the node the
//! format calls the IPv4 start); `::ffff:0:0/96` and `2002::/16` usually
//! point to that same node. The walk reports the IPv4 subtree once, in the
//! mapped space `::ffff:a.b.c.d` the kernel tables use, and skips the
//! aliases (as the maxminddb crate's `within` does).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use maxminddb::Metadata;

const MAPPED: u128 = 0xffff_0000_0000;

pub struct Tree<'a> {
    tree: &'a [u8],
    node_count: usize,
    record_size: u16,
    ip_version: u16,
    data_len: usize,
    ipv4_start: usize,
}

impl<'a> Tree<'a> {
    pub fn new(bytes: &'a [u8], meta: &Metadata) -> Result<Self, String> {
        let node_count = meta.node_count as usize;
        let record_size = meta.record_size;
        if !matches!(record_size, 24 | 28 | 32) {
            return Err(format!("unknown record size {record_size}"));
        }
        let tree_len = node_count * usize::from(record_size) / 4;
        if tree_len + 16 > bytes.len() {
            return Err(format!(
                "{node_count} nodes of {record_size} bits do not fit in {} bytes",
                bytes.len()
            ));
        }
        let mut t = Tree {
            tree: &bytes[..tree_len],
            node_count,
            record_size,
            ip_version: meta.ip_version,
            data_len: bytes.len() - tree_len - 16,
            ipv4_start: 0,
        };
        if t.ip_version == 6 {
            let mut node = 0;
            for _ in 0..96 {
                if node >= node_count {
                    break;
                }
                node = t.read(node, 0);
            }
            t.ipv4_start = node;
        }
        Ok(t)
    }

    fn read(&self, node: usize, side: usize) -> usize {
        let base = node * usize::from(self.record_size) / 4;
        let b = self.tree;
        match self.record_size {
            24 => {
                let o = base + side * 3;
                (usize::from(b[o]) << 16) | (usize::from(b[o + 1]) << 8) | usize::from(b[o + 2])
            }
            28 => {
                let middle = if side == 0 {
                    b[base + 3] >> 4
                } else {
                    b[base + 3] & 0x0f
                };
                let o = base + side * 4;
                (usize::from(middle) << 24)
                    | (usize::from(b[o]) << 16)
                    | (usize::from(b[o + 1]) << 8)
                    | usize::from(b[o + 2])
            }
            _ => {
                let o = base + side * 4;
                u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize
            }
        }
    }

    /// The address to look `start` up with in the database's own space.
    pub fn address_in_db(&self, start: u128) -> IpAddr {
        let v6 = Ipv6Addr::from(start);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if self.ip_version == 4 => IpAddr::V4(Ipv4Addr::from(start as u32)),
            None => IpAddr::V6(v6),
        }
    }

    /// Calls `emit(first, last, pointer)` for every network with data, in
    /// tree order (IPv4 networks in the mapped space).
    pub fn walk(&self, mut emit: impl FnMut(u128, u128, usize)) -> Result<(), String> {
        let bits: u32 = if self.ip_version == 4 { 32 } else { 128 };
        // (node, first address, depth); at most one entry per depth waits.
        let mut stack: Vec<(usize, u128, u32)> = Vec::with_capacity(130);
        stack.push((0, 0, 0));
        // A tree has two children per node: a walk that takes more steps
        // revisits nodes (a damaged or hostile file whose records point
        // back into the tree), which would take exponential time.
        let max_steps = 2 * self.node_count + 1;
        let mut steps = 0usize;
        while let Some((node, addr, depth)) = stack.pop() {
            steps += 1;
            if steps > max_steps {
                return Err(format!(
                    "the search tree revisits its nodes ({max_steps} steps for {} nodes): it is not a tree",
                    self.node_count
                ));
            }
            if node > self.node_count {
                let pointer = node - self.node_count - 16;
                if node < self.node_count + 16 || pointer >= self.data_len {
                    return Err(format!("a record points outside the data section ({node})"));
                }
                let host_bits = bits - depth;
                let last = if host_bits == 128 {
                    u128::MAX
                } else {
                    addr | ((1u128 << host_bits) - 1)
                };
                let (first, last) = if bits == 32 || (addr >> 32 == 0 && depth >= 96) {
                    // An IPv4 network (an IPv4 database, or under ::/96).
                    (addr | MAPPED, last | MAPPED)
                } else {
                    (addr, last)
                };
                emit(first, last, pointer);
                continue;
            }
            if node == self.node_count {
                continue;
            }
            // Aliases of the IPv4 subtree anywhere but at ::/96.
            if self.ipv4_start != 0 && node == self.ipv4_start && !(depth == 96 && addr == 0) {
                continue;
            }
            if depth >= bits {
                return Err(format!("the tree is deeper than {bits} bits"));
            }
            let bit = 1u128 << (bits - 1 - depth);
            // Right pushed first so the left (lower) half comes out first.
            stack.push((self.read(node, 1), addr | bit, depth + 1));
            stack.push((self.read(node, 0), addr, depth + 1));
        }
        Ok(())
    }
}
