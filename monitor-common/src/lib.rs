//! Plain data shared by the kernel programs and the daemon.
//!
//! Everything here crosses the kernel/userspace boundary, so every type is
//! `#[repr(C)]`, built from fixed-width integers and byte arrays, with
//! explicit padding and a compile-time size check. No `bool`, `Option` or
//! Rust enum crosses the boundary: enumerations are `u8` constants.
#![no_std]

use core::mem::size_of;

/// Names of maps and programs, shared so the daemon never spells them twice.
pub mod names {
    pub const PROG_CONNECT4: &str = "connect4";
    pub const PROG_CONNECT6: &str = "connect6";
    pub const PROG_SENDMSG4: &str = "sendmsg4";
    pub const PROG_SENDMSG6: &str = "sendmsg6";
    pub const PROGRAMS: [&str; 4] = [PROG_CONNECT4, PROG_CONNECT6, PROG_SENDMSG4, PROG_SENDMSG6];
    /// cgroup_skb egress: the backstop for packets no sock_addr hook judged.
    pub const PROG_EGRESS: &str = "egress";
    /// lsm/socket_create: refuses packet sockets in enforcing cgroups.
    pub const PROG_SOCKET_CREATE: &str = "socket_create";
    /// Every program, in attach order: the egress backstop and the socket
    /// creation hook first, so the sock_addr hooks never run without them.
    /// The socket creation hook needs the BPF LSM (`bpf` in the kernel's
    /// `lsm=` list); where it is missing the daemon runs without it and says
    /// so. A unit test of the daemon (`kernel::tests`) checks this list
    /// against the programs in the compiled object.
    pub const ALL_PROGRAMS: [&str; 6] = [
        PROG_EGRESS,
        PROG_SOCKET_CREATE,
        PROG_CONNECT4,
        PROG_CONNECT6,
        PROG_SENDMSG4,
        PROG_SENDMSG6,
    ];

    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const CONFIG: &str = "CONFIG";
    pub const META: &str = "META";
    pub const JUDGED: &str = "JUDGED";
    pub const GEO: [&str; 2] = ["GEO_A", "GEO_B"];
    pub const SELECT: [&str; 2] = ["SELECT_A", "SELECT_B"];
    pub const REGION_RULES: [&str; 2] = ["REGION_RULES_A", "REGION_RULES_B"];
    pub const ALLOW_CIDRS: [&str; 2] = ["ALLOW_CIDRS_A", "ALLOW_CIDRS_B"];
    pub const DENY_CIDRS: [&str; 2] = ["DENY_CIDRS_A", "DENY_CIDRS_B"];
    /// Every map, for pinning. A unit test of the daemon (`kernel::tests`)
    /// checks this list against the maps in the compiled object, so a new
    /// map cannot be left unpinned.
    pub const ALL_MAPS: [&str; 15] = [
        EVENTS,
        JUDGED,
        LOST,
        CONFIG,
        META,
        GEO[0],
        GEO[1],
        SELECT[0],
        SELECT[1],
        REGION_RULES[0],
        REGION_RULES[1],
        ALLOW_CIDRS[0],
        ALLOW_CIDRS[1],
        DENY_CIDRS[0],
        DENY_CIDRS[1],
    ];
}

/// Map capacities. The geo trie holds the prefixes of a country database
/// (the CC0 ip-location-db file has about a million).
pub mod limits {
    pub const GEO_ENTRIES: u32 = 2 << 20;
    pub const SELECT_ENTRIES: u32 = 16_384;
    pub const REGION_RULE_ENTRIES: u32 = 65_536;
    pub const CIDR_ENTRIES: u32 = 262_144;
    /// Deepest cgroup level the kernel walks when looking for a selected
    /// ancestor (level 0 is the hierarchy root).
    pub const MAX_CGROUP_DEPTH: u32 = 32;
    pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
    /// Unread bytes in the ring buffer past which a new event wakes the
    /// daemon; below it the daemon drains on its own timer
    /// (`events::pipeline::DRAIN_INTERVAL`).
    pub const WAKEUP_BYTES: u64 = 64 << 10;
    /// Sockets whose last decision the egress backstop remembers.
    pub const JUDGED_ENTRIES: u32 = 262_144;
}

/// Verdicts, as carried in events.
pub mod verdict {
    pub const ALLOWED: u8 = 1;
    pub const DENIED: u8 = 2;
    pub const WOULD_DENY: u8 = 3;
}

/// Which rule decided.
pub mod rule {
    pub const COUNTRY: u8 = 1;
    pub const CONTINENT: u8 = 2;
    pub const GROUP: u8 = 3;
    pub const CIDR: u8 = 4;
    pub const DEFAULT: u8 = 5;
    /// A socket type an enforcing policy does not allow (packet sockets).
    pub const SOCKET: u8 = 6;
}

/// Which hook saw the attempt.
pub mod hook {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
    /// A packet on its way out that no sock_addr hook judged (raw and ping
    /// sockets, sockets from before the policy, a socket used outside the
    /// cgroup that made it).
    pub const EGRESS: u8 = 5;
    pub const SOCK_CREATE: u8 = 6;
}

/// Policy modes, as stored in the selection map.
pub mod mode {
    pub const MONITOR: u8 = 0;
    pub const ENFORCE: u8 = 1;
}

/// Region-rule actions, as stored in the region rule map.
pub mod action {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const AF_PACKET: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Event kinds.
pub mod kind {
    pub const DECISION: u16 = 1;
}
pub const DECISION_VERSION: u16 = 1;

/// First bytes of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u16,
    pub version: u16,
    /// Length of the whole record, header included.
    pub len: u32,
}
const _: () = assert!(size_of::<EventHeader>() == 8);

/// One judged connection attempt.
///
/// Addresses are 16 bytes in network order; an IPv4 destination (from an
/// AF_INET socket or an IPv4-mapped IPv6 address) is stored as
/// `::ffff:a.b.c.d`, the form it is judged in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionEvent {
    pub header: EventHeader,
    /// CLOCK_BOOTTIME nanoseconds (bpf_ktime_get_boot_ns).
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// Cgroup id of the selected cgroup whose policy decided.
    pub selected_cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub policy_id: u32,
    /// Generation of the policy set the decision was made with.
    pub policy_generation: u32,
    pub dst_addr: [u8; 16],
    pub comm: [u8; 16],
    pub dst_port: u16,
    pub country: [u8; 2],
    pub continent: [u8; 2],
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub verdict: u8,
    pub rule: u8,
    pub mode: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<DecisionEvent>() == 104);

/// Key of the geo and CIDR tries: a prefix length and a 16-byte address
/// (IPv4 as `::ffff:a.b.c.d`, so an IPv4 /n is a /96+n). Matches the layout
/// the kernel's LPM trie expects after its `prefixlen` word.
pub type AddrBytes = [u8; 16];

/// Key of the per-policy CIDR tries: the policy id (big endian, always fully
/// matched) followed by the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyAddr {
    pub policy_id_be: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<PolicyAddr>() == 20);

/// Value of the geo trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region {
    /// ISO 3166-1 alpha-2, or zeros when the database has none.
    pub country: [u8; 2],
    /// Continent code (AF AN AS EU NA OC SA), or zeros.
    pub continent: [u8; 2],
}
const _: () = assert!(size_of::<Region>() == 4);

/// Key of the region rule map: what a policy says about one region.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionKey {
    pub policy_id: u32,
    pub region: Region,
}
const _: () = assert!(size_of::<RegionKey>() == 8);

/// Value of the region rule map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionRule {
    /// `action::ALLOW` or `action::DENY`.
    pub action: u8,
    /// `rule::COUNTRY`, `rule::CONTINENT` or `rule::GROUP`.
    pub rule: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<RegionRule>() == 4);

/// Value of the CIDR tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrRule {
    pub present: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CidrRule>() == 4);

/// Value of the selection map, keyed by cgroup id (the directory's inode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub policy_id: u32,
    /// `mode::MONITOR` or `mode::ENFORCE`.
    pub mode: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<Selection>() == 8);

/// The single entry of the CONFIG array: which of the two map slots is in
/// force. Userspace fills the idle slot, then switches with one write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Slot (0 or 1) of SELECT, REGION_RULES, ALLOW_CIDRS, DENY_CIDRS.
    pub policy_slot: u32,
    /// Slot (0 or 1) of GEO.
    pub geo_slot: u32,
    /// Increases with every policy switch; copied into events.
    pub policy_generation: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Config>() == 16);

/// Value of the JUDGED map (LRU, keyed by socket cookie): the last decision
/// about a socket, so the egress backstop passes its packets at the cost of
/// one lookup and re-judges them when the policy set or the destination
/// changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// The cgroup the decision was made for: the caller's at a sock_addr
    /// hook. A packet whose socket belongs to another cgroup (a socket
    /// handed over to a task elsewhere) is judged again.
    pub cgroup_id: u64,
    pub policy_generation: u32,
    /// A `verdict` value, or 0 when the socket's cgroup is not selected.
    pub verdict: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<Judged>() == 32);

/// The single entry of the META array: what the daemon needs to know when
/// it adopts pinned programs and maps after a restart. The kernel programs
/// never read it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Id of the cgroup the programs are attached to.
    pub cgroup_root_id: u64,
    /// SHA-256 of the country database in the geo slot in force.
    pub geo_sha256: [u8; 32],
}
const _: () = assert!(size_of::<Meta>() == 40);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C), made of integers and byte arrays, with
    // all padding explicit, so any bit pattern is valid.
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for DecisionEvent {}
    unsafe impl aya::Pod for PolicyAddr {}
    unsafe impl aya::Pod for Region {}
    unsafe impl aya::Pod for RegionKey {}
    unsafe impl aya::Pod for RegionRule {}
    unsafe impl aya::Pod for CidrRule {}
    unsafe impl aya::Pod for Selection {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for Judged {}
}
